"""Shared state in Redis, for several replicas (``state.url_env``).

One admission is one round trip: ``scripts.ADMIT`` checks and reserves every limit of
the key and reads the request's binding atomically. What follows an answer is queued and
written by one background task in one pipeline per batch: settlements (``scripts.SETTLE``,
all of a batch in one call), bindings, and hard cooldowns (``HSET`` into one hash, which
a replica reads whole when it (re)subscribes, and ``PUBLISH``, which reaches the other
replicas within milliseconds).

Redis itself sits behind a breaker and a short timeout on every call: a call that fails
or times out opens the breaker for 0.5 s (doubling up to 5 s while it keeps failing),
during which nothing waits on Redis; then one call probes it. Meanwhile ``on_error: open``
admits from an in-process ``MemoryState`` (each replica enforcing the limits on its own)
and ``closed`` refuses with ``StateUnavailable`` (a 503). Costs charged while Redis was
away are kept per key and written when it is back, so a budget does not forget them.

Standalone Redis (or a primary behind Sentinel): the binding keys are not in the
key's hash slot, so a Redis Cluster would refuse the admission script.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import secrets
import time
from collections.abc import Iterable
from typing import Any

import orjson
import structlog

from router.state.clock import Clock
from router.state.shared import (
    DEFAULT_LEASE_S,
    Admission,
    Quota,
    SharedState,
    Spend,
    StateUnavailable,
    Window,
    _Pending,
    feed,
)
from router.state.shared.breaker import StoreBreaker
from router.state.shared.memory import MemoryState
from router.state.shared.resp import RespClient, RespError, bulk, encode
from router.state.shared.scripts import ADMIT, SETTLE

log = structlog.get_logger("router.state")

_FAILURES = (RespError, OSError, TimeoutError)
_DAY_TTL_S = 2 * 86400  # a day's spend outlives its day a little, for /admin/usage
_MONTH_TTL_S = 32 * 86400
_TTLS = bulk(_DAY_TTL_S) + bulk(_MONTH_TTL_S)
BATCH_S = 0.002  # settlements wait this long for company: one write per batch, not per request


class RedisState(SharedState):
    mode = "redis"

    def __init__(
        self,
        url: str,
        *,
        on_error: str = "open",
        prefix: str = "router:",
        timeout_s: float = 0.25,
        lease_s: float = DEFAULT_LEASE_S,
        clock: Clock = time.time,
    ) -> None:
        super().__init__()
        self.on_error = on_error
        self.prefix = prefix
        self.timeout_s = timeout_s
        self.lease_s = lease_s
        self.clock = clock
        self.local = MemoryState(clock)
        self.breaker = StoreBreaker()
        self.replica = secrets.token_hex(6)  # tells this replica's own messages apart
        self.fallbacks = 0
        self._leases = itertools.count(1)
        self._url = url
        self._resp = RespClient(url, timeout_s=timeout_s)
        self._admit_sha = b""
        self._settle_sha = b""
        self._admit_head = b""
        self._static: dict[Quota, tuple[str, bytes]] = {}  # a key's unchanging arguments
        self._settle_keys: dict[str, tuple[str, bytes]] = {}
        self._pending = _Pending()
        self._owed: dict[str, float] = {}  # USD charged locally while Redis was away
        self._cools: dict[str, tuple[float, str]] = {}
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._channel = f"{prefix}cooldowns"

    # -- calls --------------------------------------------------------------------------

    async def _load_scripts(self) -> None:
        admit, settle = await self._resp.pipeline(
            [encode("SCRIPT", "LOAD", ADMIT), encode("SCRIPT", "LOAD", SETTLE)]
        )
        for reply in (admit, settle):
            if isinstance(reply, BaseException):
                raise reply
        self._admit_sha, self._settle_sha = admit, settle
        # EVALSHA, the script, 6 keys, then 11 arguments: 20 elements in all.
        self._admit_head = b"*20\r\n$7\r\nEVALSHA\r\n" + bulk(admit) + b"$1\r\n6\r\n"

    async def _call(self, command: bytes) -> Any:
        """One command; the client's watchdog bounds the wait by the timeout."""
        return await self._resp.call(command)

    def _failed(self, what: str, exc: BaseException) -> None:
        first = not self.breaker.open
        self.breaker.failure()
        if first:  # once per outage, not once per request
            log.warning("state_unreachable", op=what, error=type(exc).__name__, detail=str(exc))

    def _recovered(self) -> None:
        if self.breaker.open:
            log.info("state_reachable", fallbacks=self.fallbacks)
        self.breaker.success()

    async def _guarded(self, what: str, command: bytes) -> tuple[bool, Any]:
        """(done, reply) of one plain command under the breaker and the timeout."""
        if not self.breaker.allows():
            return False, None
        try:
            reply = await self._call(command)
        except asyncio.CancelledError:
            self.breaker.release()
            raise
        except _FAILURES as exc:
            self._failed(what, exc)
            return False, None
        self._recovered()
        return True, reply

    # -- admission ----------------------------------------------------------------------

    async def admit(
        self, quota: Quota | None, tokens: int = 0, binding_key: str | None = None
    ) -> Admission:
        if quota is None:
            out = Admission()
            if binding_key is not None:
                out.binding = await self.get(binding_key)
            return out
        if not self.breaker.allows():
            return self._fallback(quota, tokens, binding_key)
        lease = f"{self.replica}:{next(self._leases)}" if quota.concurrent is not None else ""
        try:
            if not self._admit_sha:
                await self._load_scripts()
            try:
                reply = await self._call(self._admit_command(quota, tokens, binding_key, lease))
            except RespError as exc:
                if not str(exc).startswith("NOSCRIPT"):
                    raise
                await self._load_scripts()  # Redis restarted and forgot them
                reply = await self._call(self._admit_command(quota, tokens, binding_key, lease))
        except asyncio.CancelledError:
            self.breaker.release()
            raise
        except _FAILURES as exc:
            self._failed("admit", exc)
            return self._fallback(quota, tokens, binding_key)
        self._recovered()
        return self._admission(reply, quota, lease)

    def _admit_command(
        self, quota: Quota, tokens: int, binding_key: str | None, lease: str
    ) -> bytes:
        """The EVALSHA of ``scripts.ADMIT``: the key's unchanging part is encoded once a
        day, so a request encodes only its binding key, tokens and slot id."""
        day, day_end, month, month_end = self.local.windows(self.clock())
        static = self._static.get(quota)
        if static is None or static[0] != day:
            if len(self._static) > 4096:  # quotas of configs reloaded away
                self._static.clear()
            p = f"{self.prefix}{{{quota.name}}}:"
            parts = (
                p + "r",
                p + "t",
                p + "c",
                f"{p}d:{day}",
                f"{p}m:{month}",
                -1 if quota.rpm is None else quota.rpm,
                -1 if quota.tpm is None else quota.tpm,
                -1 if quota.concurrent is None else quota.concurrent,
                -1 if quota.day_usd is None else quota.day_usd,
                -1 if quota.month_usd is None else quota.month_usd,
                self.lease_s,
                day_end,
                month_end,
            )
            static = self._static[quota] = (day, b"".join(bulk(x) for x in parts))
        if binding_key is None:
            binding, flag = b"$0\r\n\r\n", b"$1\r\n0\r\n"
        else:
            binding, flag = bulk(self.prefix + "b:" + binding_key), b"$1\r\n1\r\n"
        return b"".join((self._admit_head, binding, static[1], bulk(tokens), bulk(lease), flag))

    @staticmethod
    def _admission(reply: list[Any], quota: Quota, lease: str) -> Admission:
        ok, code, limit, retry_ms, req_left, req_reset, tok_left, tok_reset, reserved, bound = reply
        out = Admission(admitted=ok == 1, quota=quota, reserved=int(reserved))
        if ok == 1:
            out.lease = lease or None
        else:
            out.code = code.decode()
            out.limit = limit.decode()
            out.retry_after_s = retry_ms / 1000.0
        if quota.rpm is not None and req_left >= 0:
            out.requests = Window(quota.rpm, int(req_left), req_reset / 1000.0)
        if quota.tpm is not None and tok_left >= 0:
            out.tokens = Window(quota.tpm, int(tok_left), tok_reset / 1000.0)
        if bound is not None:
            out.binding = bound.decode()
        return out

    def _fallback(self, quota: Quota, tokens: int, binding_key: str | None) -> Admission:
        if self.on_error == "closed":
            raise StateUnavailable("the shared state store (Redis) is unreachable")
        self.fallbacks += 1
        out = self.local.admit_now(quota, tokens, binding_key)
        out.local = True
        return out

    # -- after the request --------------------------------------------------------------

    def settle(self, admission: Admission, tokens_used: int | None, cost_usd: float) -> None:
        quota = admission.quota
        if quota is None or not admission.admitted:
            return
        if admission.local:
            self.local.settle(admission, tokens_used, cost_usd)
            if cost_usd > 0 and quota.budgeted:
                self._owed[quota.name] = self._owed.get(quota.name, 0.0) + cost_usd
                self._wake.set()
            return
        delta = 0
        if quota.tpm is not None and tokens_used is not None:
            delta = tokens_used - admission.reserved
        if not quota.budgeted:
            cost_usd = 0.0
        lease, admission.lease = admission.lease, None  # settled once
        if delta or lease or cost_usd > 0:
            self._pending.settles.append((quota, delta, lease, cost_usd))
            self._wake.set()

    def bind(self, key: str, value: str, ttl_s: float) -> None:
        if self.breaker.open:
            self.local.bind(key, value, ttl_s)
        self._pending.binds[key] = (value, ttl_s)
        self._wake.set()

    def unbind(self, key: str) -> None:
        self.local.unbind(key)
        self._pending.binds[key] = (None, 0.0)
        self._wake.set()

    def cool(self, scope: str, until: float, reason: str) -> None:
        self._cools[scope] = (until, reason)
        self._pending.cools.append((scope, until, reason))
        self._wake.set()

    def cooldowns(self) -> dict[str, tuple[float, str]]:
        now = self.clock()
        for scope in [s for s, (until, _) in self._cools.items() if until <= now]:
            del self._cools[scope]
        return dict(self._cools)

    async def _flush_loop(self) -> None:
        """Writes what is queued, one pipeline per batch; retries after an outage."""
        while True:
            if not (self._pending or self._owed):
                await self._wake.wait()
                await asyncio.sleep(BATCH_S)  # let a batch gather: one write for many
            self._wake.clear()
            if self.breaker.allows():
                await self.flush()
            else:
                self._shelve(self._pending)
                self._pending = _Pending()
            if self._owed or self._pending.cools:
                await asyncio.sleep(max(0.05, self.breaker.until - self.breaker.clock()))

    def _shelve(self, pending: _Pending) -> None:
        """A batch that could not be written: keep what matters (costs, cooldowns still
        running); concurrency slots expire by themselves, corrections and bindings go."""
        for quota, _, _, cost in pending.settles:
            if cost > 0:
                self._owed[quota.name] = self._owed.get(quota.name, 0.0) + cost
        now = self.clock()
        self._pending.cools.extend(c for c in pending.cools if c[1] > now)

    async def flush(self) -> None:
        """Write everything queued now, in one round trip (bounded by the timeout)."""
        pending, self._pending = self._pending, _Pending()
        owed, self._owed = self._owed, {}
        if not (pending or owed):
            return
        commands = []
        items = [(q.name, q.tpm or 0, d, lease, cost) for q, d, lease, cost in pending.settles]
        items += [(name, 0, 0, None, cost) for name, cost in owed.items()]
        if items:
            commands.append(self._settle_command(items))
        for key, (value, ttl_s) in pending.binds.items():
            if value is None:
                commands.append(encode("DEL", self.prefix + "b:" + key))
            else:
                px = max(1, int(ttl_s * 1000))
                commands.append(encode("SET", self.prefix + "b:" + key, value, "PX", px))
        for scope, until, reason in pending.cools:
            commands.append(encode("HSET", self._channel, scope, orjson.dumps([until, reason])))
            message = orjson.dumps([self.replica, scope, until, reason])
            commands.append(encode("PUBLISH", self._channel, message))
        try:
            async with asyncio.timeout(self.timeout_s * 2):
                results = await self._resp.pipeline(commands)
                lost = next((r for r in results if isinstance(r, OSError)), None)
                if lost is not None:
                    raise lost
                if items and isinstance(results[0], RespError) and "NOSCRIPT" in str(results[0]):
                    await self._load_scripts()
                    results[0] = await self._resp.call(self._settle_command(items))
        except asyncio.CancelledError:
            self._shelve(pending)
            self._owe(owed)
            raise
        except _FAILURES as exc:
            if isinstance(exc, TimeoutError):
                self._resp.reset()
            self._failed("flush", exc)
            self._shelve(pending)
            self._owe(owed)
            return
        self._recovered()
        for result in results:
            if isinstance(result, Exception):
                log.warning("state_write_failed", error=type(result).__name__, detail=str(result))

    def _owe(self, owed: dict[str, float]) -> None:
        for name, cost in owed.items():
            self._owed[name] = self._owed.get(name, 0.0) + cost

    def _settle_command(self, items: list[tuple[str, int, int, str | None, float]]) -> bytes:
        """The EVALSHA of ``scripts.SETTLE`` for a batch of (key name, tpm, token
        correction, slot, cost); each key's names are encoded once a day."""
        day, _, month, _ = self.local.windows(self.clock())
        keys = []
        args = []
        static = self._settle_keys
        for name, tpm, delta, lease, cost in items:
            found = static.get(name)
            if found is None or found[0] != day:
                if len(static) > 4096:
                    static.clear()
                p = f"{self.prefix}{{{name}}}:"
                names = (p + "t", p + "c", f"{p}d:{day}", f"{p}m:{month}")
                found = static[name] = (day, b"".join(bulk(k) for k in names))
            keys.append(found[1])
            args.append(b"".join((bulk(tpm), bulk(delta), bulk(lease or ""), bulk(repr(cost)))))
            args.append(_TTLS)
        n = len(items)
        head = b"*%d\r\n$7\r\nEVALSHA\r\n" % (3 + 10 * n) + bulk(self._settle_sha or b"0" * 40)
        return b"".join((head, bulk(4 * n), *keys, *args))

    # -- bindings -----------------------------------------------------------------------

    async def get(self, key: str) -> str | None:
        done, value = await self._guarded("get", encode("GET", self.prefix + "b:" + key))
        if not done:
            return await self.local.get(key)
        return value.decode() if isinstance(value, bytes) else None

    async def set(self, key: str, value: str, ttl_s: float) -> None:
        px = max(1, int(ttl_s * 1000))
        command = encode("SET", self.prefix + "b:" + key, value, "PX", px)
        done, _ = await self._guarded("set", command)
        if not done:
            self.local.bind(key, value, ttl_s)

    async def delete(self, key: str) -> None:
        self.local.unbind(key)
        await self._guarded("delete", encode("DEL", self.prefix + "b:" + key))

    # -- budgets ------------------------------------------------------------------------

    async def spent(self, names: Iterable[str]) -> dict[str, Spend]:
        names = list(names)
        day, _, month, _ = self.local.windows(self.clock())
        keys = [f"{self.prefix}{{{n}}}:{w}" for n in names for w in (f"d:{day}", f"m:{month}")]
        if not keys:
            return {}
        done, values = await self._guarded("spent", encode("MGET", *keys))
        if not done:
            raise StateUnavailable("the shared state store (Redis) is unreachable")
        owed = self._owed
        return {
            n: Spend(
                float(values[2 * i] or 0) + owed.get(n, 0.0),
                float(values[2 * i + 1] or 0) + owed.get(n, 0.0),
            )
            for i, n in enumerate(names)
        }

    # -- cooldowns from other replicas --------------------------------------------------

    def _heard(self, scope: str, until: float, reason: str) -> None:
        if until <= self.clock():
            return
        known = self._cools.get(scope)
        if known is not None and known[0] >= until:
            return
        self._cools[scope] = (until, reason)
        self._announce(scope, until, reason)

    # -- life ---------------------------------------------------------------------------

    async def start(self) -> None:
        try:
            async with asyncio.timeout(self.timeout_s * 4):
                await self._load_scripts()
        except _FAILURES as exc:
            self._failed("start", exc)  # not fatal: the breaker probes again later
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._flush_loop()),
            loop.create_task(
                feed.follow(
                    self._resp,
                    self._channel,
                    self.replica,
                    self._heard,
                    clock=self.clock,
                    timeout_s=self.timeout_s,
                )
            ),
        ]

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._pending or self._owed:
            self.breaker.success()  # one last try, bounded by the timeout
            with contextlib.suppress(asyncio.CancelledError):
                await self.flush()
        self._resp.close()

    def status(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "on_error": self.on_error,
            "reachable": not self.breaker.open,
            "errors": self.breaker.failures,
            "local_admissions": self.fallbacks,
            "owed_usd": round(sum(self._owed.values()), 6),
        }
