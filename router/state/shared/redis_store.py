"""Shared state in Redis, for several replicas (``state.url_env``).

One admission is one round trip: ``scripts.ADMIT`` checks and reserves every limit of
the key and reads the request's binding atomically; far from the key's limits it also
grants an allowance, which the key's next requests are admitted from here without one
(``allowance.py``). What follows an answer (settlements,
bindings, hard cooldowns) is queued (``writer.Writer``) and leaves in the same write as
the next admission, or on a short timer when none comes: under load, one write carries
many requests' worth, and no request waits for it.

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

import structlog

from router.state.clock import Clock
from router.state.shared import (
    DEFAULT_LEASE_S,
    Admission,
    Quota,
    SharedState,
    Spend,
    StateUnavailable,
    feed,
    key_base,
)
from router.state.shared.admit import AdmitCodec
from router.state.shared.allowance import ALLOWANCE_S, SLOT_HOLD_S, Allowance, Sizes, ask
from router.state.shared.batch import Encoder
from router.state.shared.breaker import StoreBreaker
from router.state.shared.memory import MemoryState
from router.state.shared.resp import RespClient, RespError, encode
from router.state.shared.scripts import ADMIT, SETTLE
from router.state.shared.writer import FAILURES as _FAILURES
from router.state.shared.writer import Writer

log = structlog.get_logger("router.state")


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
        allowances: bool = True,
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
        self.client = RespClient(url, timeout_s=timeout_s)
        self.settle_sha = b""
        self._channel = f"{prefix}cooldowns"
        encoder = self._encoder = Encoder(prefix, self._channel, self.replica)
        self._codec = AdmitCodec(prefix, lease_s, encoder)
        self._writer = Writer(self, encoder)
        self._tasks: list[asyncio.Task[None]] = []
        # Allowances (``allowance.py``): the current one per key, what the next asks for,
        # and the keys whose admission is asking now (one ask per key at a time).
        self._held: dict[str, Allowance] = {}
        self._sizes: dict[str, Sizes] = {}
        self._asking: set[str] = set()
        self.allowed = 0  # admissions from allowances, for /health
        self.allowances = allowances  # false: every admission asks Redis

    # -- calls --------------------------------------------------------------------------

    async def load_scripts(self) -> None:
        admit, settle = await self.client.pipeline(
            [encode("SCRIPT", "LOAD", ADMIT), encode("SCRIPT", "LOAD", SETTLE)]
        )
        for reply in (admit, settle):
            if isinstance(reply, BaseException):
                raise reply
        self._codec.loaded(admit)
        self.settle_sha = settle

    async def _call(self, command: bytes) -> Any:
        """One command; the client's watchdog bounds the wait by the timeout."""
        return await self.client.call(command)

    def failed(self, what: str, exc: BaseException) -> None:
        first = not self.breaker.open
        self.breaker.failure()
        if first:  # once per outage, not once per request
            log.warning("state_unreachable", op=what, error=type(exc).__name__, detail=str(exc))

    def recovered(self) -> None:
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
            self.failed(what, exc)
            return False, None
        self.recovered()
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
        name = quota.name
        held = self._held.get(name)
        if held is not None and binding_key is None:  # a binding is read from Redis
            if held.quota is quota:
                allowed = held.admit(tokens, self.clock())
                if allowed is not None:
                    self.allowed += 1
                    return allowed
            if held.quota is not quota or held.could_admit(tokens):
                self._retire(held)  # spent, expired or its key reloaded: asked anew
                held = None
            # else a request too large for any allowance: it asks Redis alone
        if self.breaker.open and not self.breaker.allows():
            return self._fallback(quota, tokens, binding_key)
        lease = f"{self.replica}:{next(self._leases)}" if quota.concurrent is not None else ""
        codec = self._codec
        carried = None
        asked = None
        allowance_id = ""
        if held is None and self.allowances and name not in self._asking:
            sizes = self._sizes.get(name)
            if sizes is None:
                sizes = self._sizes[name] = Sizes()
            asked = ask(quota, sizes, tokens)
        want = b"-"
        if asked is not None:
            self._asking.add(name)
            allowance_id = f"{self.replica}:a{next(self._leases)}"
            want = b"%d %d %d %g %s" % (*asked, SLOT_HOLD_S, allowance_id.encode())
        try:
            # Straight on the open connection: no coroutine layers per request.
            proto = self.client.proto
            if proto is None or proto.closed:
                proto = await self.client.connection()
            if not codec.sha:
                await self.load_scripts()
            writer = self._writer
            if writer.waiting:  # what the last requests left goes first, in the same call
                carried = writer.carry(proto)
            try:
                reply = await proto.send(
                    codec.command(quota, tokens, binding_key, lease, self.clock(), carried, want)
                )
            except RespError as exc:
                if not str(exc).startswith("NOSCRIPT"):
                    raise
                if carried is not None:  # not applied: the writer writes them after
                    writer.again(carried)
                    carried = None
                await self.load_scripts()  # Redis restarted and forgot them
                command = codec.command(quota, tokens, binding_key, lease, self.clock(), None, want)
                reply = await self._call(command)
        except asyncio.CancelledError:
            self.breaker.release()
            raise
        except _FAILURES as exc:
            self.failed("admit", exc)
            if carried is not None:
                self._writer.lost(carried)
            return self._fallback(quota, tokens, binding_key)
        finally:
            if asked is not None:
                self._asking.discard(name)
        if self.breaker.open:
            self.recovered()
        out = codec.answer(reply, quota, lease)
        if out.granted is not None and asked is not None:
            self._grant(quota, asked, allowance_id, out.granted)
        return out

    # -- allowances ---------------------------------------------------------------------

    def _grant(
        self, quota: Quota, asked: tuple[int, int, int], lease_id: str, granted: str
    ) -> None:
        """A new allowance for the key (one is asked only while none is held), ended by a
        timer if nothing ends it sooner."""
        allowance = Allowance(quota, asked, lease_id, granted, self.clock())
        self._held[quota.name] = allowance
        with contextlib.suppress(RuntimeError):  # no loop (a test's sync use): ends on use
            asyncio.get_running_loop().call_later(ALLOWANCE_S, self._retire, allowance)

    def _retire(self, allowance: Allowance) -> None:
        """End an allowance: what is left of it goes back in the next write (requests
        and tokens to their buckets, free slots released); its requests still in flight
        settle with Redis as any other."""
        if not allowance.current:
            return
        allowance.current = False
        quota = allowance.quota
        name = quota.name
        if self._held.get(name) is allowance:
            del self._held[name]
        sizes = self._sizes.get(name)
        if sizes is not None:
            allowance.resize(sizes, self.clock())
        batch = self._writer.batch
        p = key_base(self.prefix, name)
        if quota.rpm is not None and allowance.requests > 0:
            back = allowance.requests * 60.0 / quota.rpm
            batch.raws.append(encode("INCRBYFLOAT", p + "r", f"{-back:.6f}"))
            # The key may have expired meanwhile: the one INCRBYFLOAT then makes must not
            # outlive a minute (a longer life than the arrival time needs does no harm).
            batch.raws.append(encode("PEXPIRE", p + "r", 61_000))
        if quota.tpm is not None and allowance.tokens:
            batch.settles.append((name, quota.tpm, -allowance.tokens, None, 0.0))
        free = allowance.free
        if allowance.members:
            if free:
                batch.raws.append(encode("ZREM", p + "c", *free))
            unused = set(free)
            busy = [m for m in allowance.members if m not in unused]
            if busy:  # in flight: held as any request's slot, freed by its settlement
                until = self.clock() - allowance.shift + self.lease_s  # Redis's clock
                batch.raws.append(
                    encode("ZADD", p + "c", "XX", *(x for m in busy for x in (f"{until:.6f}", m)))
                )
            allowance.free = []
        self._writer.queued()

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
        allowance = admission.allowance
        if allowance is not None and allowance.current:
            allowance.settle(admission, tokens_used, cost_usd)
            if cost_usd > 0 and quota.budgeted:
                self._writer.batch.owe(quota.name, cost_usd)  # per key per write
                self._writer.charged()
            return
        if admission.local:
            self.local.settle(admission, tokens_used, cost_usd)
            if cost_usd > 0 and quota.budgeted:
                self._writer.batch.owe(quota.name, cost_usd)  # written when Redis is back
                self._writer.queued()
            return
        tpm = quota.tpm
        delta = 0 if tpm is None or tokens_used is None else tokens_used - admission.reserved
        if quota.day_usd is None and quota.month_usd is None:
            cost_usd = 0.0
        elif cost_usd > 0 and self._held:
            held = self._held.get(quota.name)
            if held is not None:  # all this replica spends counts against its allowance
                held.spent += cost_usd
        lease, admission.lease = admission.lease, None  # settled once
        if delta or lease or cost_usd > 0:  # queued (Writer.settle, inlined: every request)
            writer = self._writer
            writer.batch.settles.append((quota.name, tpm or 0, delta, lease, cost_usd))
            writer.waiting = True
            if writer.timer is None or writer.late:
                writer.queued()

    def bind(self, key: str, value: str, ttl_s: float) -> None:
        if self.breaker.open:
            self.local.bind(key, value, ttl_s)
        self._writer.batch.binds[key] = (value, ttl_s)
        self._writer.queued()

    def unbind(self, key: str) -> None:
        self.local.unbind(key)
        self._writer.batch.binds[key] = (None, 0.0)
        self._writer.queued()

    def cool(self, scope: str, until: float, reason: str) -> None:
        self._cools[scope] = (until, reason)
        self._writer.batch.cools.append((scope, until, reason))
        self._writer.queued()

    async def flush(self) -> None:
        """Write what is queued now; returns when Redis answered (bounded by the timeout)."""
        await self._writer.flush()

    # -- bindings -----------------------------------------------------------------------

    async def get(self, key: str) -> str | None:
        done, value = await self._guarded("get", encode("GET", self.prefix + "b:" + key))
        if not done:
            return await self.local.get(key)
        return value.decode() if isinstance(value, bytes) else None

    async def set(self, key: str, value: str, ttl_s: float) -> None:
        done, _ = await self._guarded("set", self._encoder.binding(key, value, ttl_s))
        if not done:
            self.local.bind(key, value, ttl_s)

    async def delete(self, key: str) -> None:
        self.local.unbind(key)
        await self._guarded("delete", self._encoder.binding(key, None, 0.0))

    # -- budgets ------------------------------------------------------------------------

    async def spent(self, names: Iterable[str]) -> dict[str, Spend]:
        names = list(names)
        day, _, month, _ = self.local.windows(self.clock())
        keys = [key_base(self.prefix, n) + w for n in names for w in (f"d:{day}", f"m:{month}")]
        if not keys:
            return {}
        done, values = await self._guarded("spent", encode("MGET", *keys))
        if not done:
            raise StateUnavailable("the shared state store (Redis) is unreachable")
        owed = self._writer.batch.owed
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
                await self.load_scripts()
        except _FAILURES as exc:
            self.failed("start", exc)  # not fatal: the breaker probes again later
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(
                feed.follow(
                    self.client,
                    self._channel,
                    self.replica,
                    self._heard,
                    clock=self.clock,
                    timeout_s=self.timeout_s,
                )
            ),
        ]

    async def aclose(self) -> None:
        for allowance in list(self._held.values()):
            self._retire(allowance)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._writer.close()
        self.client.close()

    def status(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "on_error": self.on_error,
            "reachable": not self.breaker.open,
            "errors": self.breaker.failures,
            "local_admissions": self.fallbacks,
            "allowances": self.allowances,
            "allowance_admissions": self.allowed,
            "owed_usd": round(sum(self._writer.batch.owed.values()), 6),
        }
