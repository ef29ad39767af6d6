"""Shared state in Redis, for several replicas (``state.url_env``).

One admission is one round trip: ``scripts.ADMIT`` checks and reserves every limit of
the key and reads the request's binding atomically. What follows an answer (settlements,
bindings, hard cooldowns) is queued in a ``batch.Batch`` and leaves in the same write as
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
from router.state.shared.batch import BATCH_S, Batch, Encoder
from router.state.shared.breaker import StoreBreaker
from router.state.shared.memory import MemoryState
from router.state.shared.resp import Connection, RespClient, RespError, bulk, encode
from router.state.shared.scripts import ADMIT, SETTLE

log = structlog.get_logger("router.state")

_FAILURES = (RespError, OSError, TimeoutError)


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
        self._channel = f"{prefix}cooldowns"
        self._batch = Batch()
        self._encoder = Encoder(prefix, self._channel, self.replica)
        self._timer: asyncio.TimerHandle | None = None
        self._flushing: asyncio.Future[None] | None = None
        self._cools: dict[str, tuple[float, str]] = {}
        self._tasks: list[asyncio.Task[None]] = []

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
                # Straight on the open connection: no coroutine layers per request.
                proto = self._resp.connected() or await self._resp.connection()
                reply = await proto.send(self._admit_command(quota, tokens, binding_key, lease))
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
                self._batch.owe(quota.name, cost_usd)  # written when Redis is back
                self._queued()
            return
        delta = 0
        if quota.tpm is not None and tokens_used is not None:
            delta = tokens_used - admission.reserved
        if not quota.budgeted:
            cost_usd = 0.0
        lease, admission.lease = admission.lease, None  # settled once
        if delta or lease or cost_usd > 0:
            self._batch.settle(quota, delta, lease, cost_usd)
            self._queued()

    def bind(self, key: str, value: str, ttl_s: float) -> None:
        if self.breaker.open:
            self.local.bind(key, value, ttl_s)
        self._batch.binds[key] = (value, ttl_s)
        self._queued()

    def unbind(self, key: str) -> None:
        self.local.unbind(key)
        self._batch.binds[key] = (None, 0.0)
        self._queued()

    def cool(self, scope: str, until: float, reason: str) -> None:
        self._cools[scope] = (until, reason)
        self._batch.cools.append((scope, until, reason))
        self._queued()

    def cooldowns(self) -> dict[str, tuple[float, str]]:
        now = self.clock()
        for scope in [s for s, (until, _) in self._cools.items() if until <= now]:
            del self._cools[scope]
        return dict(self._cools)

    # -- writing batches ----------------------------------------------------------------

    def _queued(self, delay: float = BATCH_S) -> None:
        """Something waits to be written: in ``delay`` (BATCH_S), with whatever else
        came meanwhile, as one write."""
        if self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return  # no loop (a test's sync use): written by the next flush
            self._timer = loop.call_later(delay, self._due)

    def _due(self) -> None:
        """The timer: send on the open connection straight away (no task, no wake-up:
        the replies are checked as they arrive), or connect first in a task."""
        self._timer = None
        if not self._batch:
            return
        proto = self._resp.connected()
        if proto is not None and self.breaker.allows():
            self._send(proto)
        elif self._flushing is None or self._flushing.done():
            self._flushing = asyncio.ensure_future(self.flush())

    async def flush(self) -> None:
        """Write what is queued now; returns when Redis answered (bounded by the timeout)."""
        if not self._batch:
            return
        if not self.breaker.allows():
            self._queued(max(0.05, self.breaker.until - self.breaker.clock()))
            return
        try:
            proto = await self._resp.connection()
        except asyncio.CancelledError:
            self.breaker.release()
            raise
        except _FAILURES as exc:
            self._failed("write", exc)
            self._queued(max(0.05, self.breaker.until - self.breaker.clock()))
            return
        last = self._send(proto)
        with contextlib.suppress(asyncio.CancelledError, *_FAILURES):
            await last

    def _send(self, proto: Connection) -> asyncio.Future[Any]:
        """Send the batch on ``proto`` without waiting; its replies are checked when the
        last one comes (``_sent``: Redis answers in order). Returns that last one."""
        batch, self._batch = self._batch, Batch()
        day, _, month, _ = self.local.windows(self.clock())
        commands = self._encoder.commands(batch, self._settle_sha, day, month)
        try:
            futures = [proto.send(c) for c in commands]
        except ConnectionError as exc:
            self._lost(batch, exc)
            failed: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            failed.set_exception(exc)
            return failed
        futures[-1].add_done_callback(lambda _: self._sent(futures, batch))
        return futures[-1]

    def _lost(self, batch: Batch, exc: BaseException) -> None:
        self._failed("write", exc)
        self._batch.keep(batch, self.clock())
        self._queued(max(0.05, self.breaker.until - self.breaker.clock()))

    def _sent(self, futures: list[asyncio.Future[Any]], batch: Batch) -> None:
        errors = [
            fut.exception() if not fut.cancelled() else TimeoutError("cancelled") for fut in futures
        ]
        lost = next((e for e in errors if isinstance(e, OSError)), None)
        if lost is not None:  # the connection went (or timed out): nothing is known written
            self._lost(batch, lost)
            return
        self._recovered()
        first = errors[0]
        if (
            (batch.settles or batch.owed)
            and isinstance(first, RespError)
            and "NOSCRIPT" in str(first)
        ):
            # Redis restarted and forgot the script: write the settlements again after
            # loading it (the rest of the batch went through).
            self._settle_sha = b""
            self._batch.settles.extend(batch.settles)
            for name, cost in batch.owed.items():
                self._batch.owe(name, cost)
            self._flushing = asyncio.ensure_future(self._reload_then_flush())
            return
        for error in errors:
            if error is not None:
                log.warning("state_write_failed", error=type(error).__name__, detail=str(error))

    async def _reload_then_flush(self) -> None:
        try:
            await self._load_scripts()
        except _FAILURES as exc:
            self._failed("load", exc)
        await self.flush()

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
        owed = self._batch.owed
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
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._batch:
            self.breaker.success()  # one last try, bounded by the timeout
            await self.flush()
        if self._flushing is not None and not self._flushing.done():
            with contextlib.suppress(asyncio.CancelledError, *_FAILURES):
                await asyncio.wait_for(self._flushing, self.timeout_s * 2)
        self._resp.close()

    def status(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "on_error": self.on_error,
            "reachable": not self.breaker.open,
            "errors": self.breaker.failures,
            "local_admissions": self.fallbacks,
            "owed_usd": round(sum(self._batch.owed.values()), 6),
        }
