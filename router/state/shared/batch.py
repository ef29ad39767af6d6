"""What follows answers, queued for Redis and written as one batch of pipelined commands.

Settlements (token corrections, concurrency releases, cost charges) ride inside the next
admission (``admit.AdmitCodec``, ``settle_parts``) or, when none comes within
``BATCH_S``, go on a timer as one EVALSHA of ``scripts.SETTLE`` for the whole batch;
bindings as SET/DEL; hard cooldowns as HSET into one hash plus a PUBLISH on the channel
of the same name (``feed.py``), ahead of the admission's command in the same write. A
batch that could not be written keeps what must not be lost: costs (per key, written
when Redis is back) and cooldowns still running; concurrency slots expire by
themselves, and corrections and bindings are hints.
"""

from __future__ import annotations

import orjson

from router.state.shared import key_base
from router.state.shared.resp import bulk, encode

MAX_RAWS = 4096
BATCH_S = 0.01  # how long a batch waits for an admission to carry it before it goes alone
CHARGE_S = 0.1  # how long charges alone wait (``Writer.charged``)
_DAY_TTL_S = 2 * 86400  # a day's spend outlives its day a little, for /admin/usage
_MONTH_TTL_S = 32 * 86400
TTLS = bulk(_DAY_TTL_S) + bulk(_MONTH_TTL_S)  # the spend keys' TTLs, after settlements

# (key name, tpm, tokens to add to its bucket, concurrency slot to free, USD to charge)
Settlement = tuple[str, int, int, str | None, float]


class Batch:
    """What waits to be written. A plain class: a new one is made per write."""

    __slots__ = ("binds", "cools", "owed", "raws", "settles")

    def __init__(self) -> None:
        self.settles: list[Settlement] = []
        self.binds: dict[str, tuple[str | None, float]] = {}
        self.cools: list[tuple[str, float, str]] = []
        self.owed: dict[str, float] = {}  # USD not yet written, per key
        self.raws: list[bytes] = []  # encoded commands (what ended allowances give back)

    def __bool__(self) -> bool:
        return bool(self.settles or self.binds or self.cools or self.owed or self.raws)

    def items(self) -> list[Settlement]:
        """The settlements, costs owed from an outage included (as settlements of cost)."""
        if not self.owed:
            return self.settles
        return self.settles + [(n, 0, 0, None, cost) for n, cost in self.owed.items()]

    def owe(self, name: str, cost: float) -> None:
        self.owed[name] = self.owed.get(name, 0.0) + cost

    def keep(self, failed: Batch, now: float) -> None:
        """What of a batch that could not be written goes into this one."""
        for name, _, _, _, cost in failed.settles:
            if cost > 0:
                self.owe(name, cost)
        for name, cost in failed.owed.items():
            self.owe(name, cost)
        self.cools.extend(c for c in failed.cools if c[1] > now)
        if len(self.raws) < MAX_RAWS:  # give-backs: worth writing late, not unbounded
            self.raws.extend(failed.raws[: MAX_RAWS - len(self.raws)])


class Encoder:
    """Encodes batches; each key's four key names are encoded once a day."""

    def __init__(self, prefix: str, channel: str, replica: str) -> None:
        self.prefix = prefix
        self.channel = channel
        self.replica = replica
        self._keys: dict[str, tuple[str, bytes]] = {}

    def commands(self, batch: Batch, settle_sha: bytes, day: str, month: str) -> list[bytes]:
        """The batch as commands; the settlement's EVALSHA first, when there is one."""
        if batch.settles and not (batch.binds or batch.cools or batch.owed or batch.raws):
            return [self.settle_command(batch.settles, settle_sha, day, month)]  # the usual
        out = []
        items = batch.items()
        if items:
            out.append(self.settle_command(items, settle_sha, day, month))
        for key, (value, ttl_s) in batch.binds.items():
            out.append(self.binding(key, value, ttl_s))
        for scope, until, reason in batch.cools:
            out.append(encode("HSET", self.channel, scope, orjson.dumps([until, reason])))
            message = orjson.dumps([self.replica, scope, until, reason])
            out.append(encode("PUBLISH", self.channel, message))
        out.extend(batch.raws)
        return out

    def binding(self, key: str, value: str | None, ttl_s: float) -> bytes:
        """The SET of a binding for ``ttl_s`` seconds, or its DEL when ``value`` is None."""
        if value is None:
            return encode("DEL", self.prefix + "b:" + key)
        px = max(1, int(ttl_s * 1000))
        return encode("SET", self.prefix + "b:" + key, value, "PX", px)

    def settle_command(
        self, items: list[Settlement], settle_sha: bytes, day: str, month: str
    ) -> bytes:
        """The EVALSHA of ``scripts.SETTLE`` for ``items``."""
        keys, args = self.settle_parts(items, day, month)
        n = len(items)
        head = b"*%d\r\n$7\r\nEVALSHA\r\n" % (5 + 5 * n) + bulk(settle_sha or b"0" * 40)
        return b"".join((head, bulk(4 * n), keys, args, TTLS))

    def settle_parts(self, items: list[Settlement], day: str, month: str) -> tuple[bytes, bytes]:
        """``items``' KEYS and ARGV as the settle function of the scripts reads them (the
        spend keys' TTLs, ``TTLS``, follow the ARGV)."""
        keys = []
        args = []
        cache = self._keys
        for name, tpm, delta, lease, cost in items:
            found = cache.get(name)
            if found is None or found[0] != day:
                found = self._key_names(name, day, month)
            keys.append(found[1])
            arg = b"%d %d %r %s" % (tpm, delta, cost, lease.encode() if lease else b"")
            args.append(b"$%d\r\n%b\r\n" % (len(arg), arg))
        if len(items) == 1:
            return keys[0], args[0]
        return b"".join(keys), b"".join(args)

    def _key_names(self, name: str, day: str, month: str) -> tuple[str, bytes]:
        """A key's four key names for settlements, encoded (once a day)."""
        if len(self._keys) > 4096:  # keys of configs reloaded away
            self._keys.clear()
        p = key_base(self.prefix, name)
        names = (p + "t", p + "c", f"{p}d:{day}", f"{p}m:{month}")
        found = self._keys[name] = (day, b"".join(bulk(k) for k in names))
        return found
