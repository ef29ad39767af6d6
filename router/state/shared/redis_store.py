"""Shared state in Redis, for several replicas (``state.url_env``).

One admission is one round trip: ``scripts.ADMIT`` checks and reserves every limit of
the key and reads the request's binding atomically. What follows an answer (settlements,
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
    make_window,
)
from router.state.shared.batch import Encoder
from router.state.shared.breaker import StoreBreaker
from router.state.shared.memory import MemoryState
from router.state.shared.resp import RespClient, RespError, bulk, encode
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
        self._admit_sha = b""
        self.settle_sha = b""
        self._admit_head = b""
        self._static: dict[Quota, tuple[str, bytes]] = {}  # a key's unchanging arguments
        self._channel = f"{prefix}cooldowns"
        self._writer = Writer(self, Encoder(prefix, self._channel, self.replica))
        self._cools: dict[str, tuple[float, str]] = {}
        self._tasks: list[asyncio.Task[None]] = []

    # -- calls --------------------------------------------------------------------------

    async def load_scripts(self) -> None:
        admit, settle = await self.client.pipeline(
            [encode("SCRIPT", "LOAD", ADMIT), encode("SCRIPT", "LOAD", SETTLE)]
        )
        for reply in (admit, settle):
            if isinstance(reply, BaseException):
                raise reply
        self._admit_sha, self.settle_sha = admit, settle
        # EVALSHA, the script, 6 keys, then 11 arguments: 20 elements in all.
        self._admit_head = b"*20\r\n$7\r\nEVALSHA\r\n" + bulk(admit) + b"$1\r\n6\r\n"

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
        if self.breaker.open and not self.breaker.allows():
            return self._fallback(quota, tokens, binding_key)
        lease = f"{self.replica}:{next(self._leases)}" if quota.concurrent is not None else ""
        try:
            if not self._admit_sha:
                await self.load_scripts()
            try:
                # Straight on the open connection: no coroutine layers per request.
                proto = self.client.connected() or await self.client.connection()
                if self._writer.waiting:
                    self._writer.ride(proto)  # settlements ahead of the admission, one write
                reply = await proto.send(self._admit_command(quota, tokens, binding_key, lease))
            except RespError as exc:
                if not str(exc).startswith("NOSCRIPT"):
                    raise
                await self.load_scripts()  # Redis restarted and forgot them
                reply = await self._call(self._admit_command(quota, tokens, binding_key, lease))
        except asyncio.CancelledError:
            self.breaker.release()
            raise
        except _FAILURES as exc:
            self.failed("admit", exc)
            return self._fallback(quota, tokens, binding_key)
        if self.breaker.open:
            self.recovered()
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
    def _admission(reply: bytes, quota: Quota, lease: str) -> Admission:
        """``scripts.ADMIT``'s answer: nine numbers and words, then ``=binding`` or ``-``."""
        ok, code, limit, retry_ms, req_left, req_reset, tok_left, tok_reset, reserved, bound = (
            reply.split(b" ", 9)
        )
        out = Admission(quota)
        if ok == b"1":
            if lease:
                out.lease = lease
            if reserved != b"0":
                out.reserved = int(reserved)
        else:
            out.admitted = False
            out.code = code.decode()
            out.limit = limit.decode()
            out.retry_after_s = int(retry_ms) / 1000.0
        if quota.rpm is not None:
            out.requests = make_window((quota.rpm, int(req_left), int(req_reset) / 1000.0))
        if quota.tpm is not None:
            out.tokens = make_window((quota.tpm, int(tok_left), int(tok_reset) / 1000.0))
        if bound[:1] == b"=":
            out.binding = bound[1:].decode()
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
                self._writer.batch.owe(quota.name, cost_usd)  # written when Redis is back
                self._writer.queued()
            return
        tpm = quota.tpm
        delta = 0 if tpm is None or tokens_used is None else tokens_used - admission.reserved
        if quota.day_usd is None and quota.month_usd is None:
            cost_usd = 0.0
        lease, admission.lease = admission.lease, None  # settled once
        if delta or lease or cost_usd > 0:
            self._writer.settle((quota.name, tpm or 0, delta, lease, cost_usd))

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

    def cooldowns(self) -> dict[str, tuple[float, str]]:
        now = self.clock()
        for scope in [s for s, (until, _) in self._cools.items() if until <= now]:
            del self._cools[scope]
        return dict(self._cools)

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
            "owed_usd": round(sum(self._writer.batch.owed.values()), 6),
        }
