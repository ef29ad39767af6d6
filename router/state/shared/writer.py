"""Writing ``RedisState``'s batches: what follows answers, off the request path.

A batch (``batch.Batch``: settlements, bindings, hard cooldowns) rides the next
admission: ``carry`` hands its settlements to the admission's command (the admission
script applies them first, so a concurrency slot freed by the last request is free for
the next) and puts its bindings and cooldowns on the connection just ahead of it, in the
same write. When no admission comes, a timer writes the batch alone after ``BATCH_S``
(at most twice that: the timer is not set again per request); the replies of such a
write are counted by a callback (``Sent``), not a future per command. A batch that could
not be written keeps what must not be lost (``Batch.keep``) for the next one.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

import structlog

from router.state.shared.batch import BATCH_S, CHARGE_S, Batch, Encoder, Settlement
from router.state.shared.resp import Connection, RespError

if TYPE_CHECKING:
    from router.state.shared.redis_store import RedisState

log = structlog.get_logger("router.state")

FAILURES = (RespError, OSError, TimeoutError)


class Sent:
    """The replies to one batch's commands, counted as they come; ``Writer.sent`` looks
    at them when the last one is in (Redis answers in order)."""

    __slots__ = ("batch", "commands", "done", "errors", "left", "writer")

    def __init__(self, writer: Writer, batch: Batch, commands: int) -> None:
        self.writer = writer
        self.batch = batch
        self.commands = self.left = commands
        self.errors: list[tuple[int, BaseException]] = []  # (command's index, error)
        self.done: asyncio.Future[None] | None = None  # made for ``flush`` only

    def __call__(self, reply: Any) -> None:
        if isinstance(reply, BaseException):
            self.errors.append((self.commands - self.left, reply))
        self.left -= 1
        if self.left == 0:
            self.writer.sent(self)
            if self.done is not None and not self.done.done():
                self.done.set_result(None)


class Writer:
    """The store's queue of writes and the timer that sends it when no admission does."""

    def __init__(self, store: RedisState, encoder: Encoder, delay_s: float = BATCH_S) -> None:
        self.store = store
        self.encoder = encoder
        self.delay_s = delay_s
        self.batch = Batch()
        self.waiting = False  # the batch holds something (cheaper to ask than the batch)
        self._carried = False  # an admission carried a batch since the timer was set
        self.timer: asyncio.TimerHandle | None = None
        self.late = False  # the timer is set for CHARGE_S (only charges wait)
        self._loop: asyncio.AbstractEventLoop | None = None  # the first one armed on
        self._flushing: asyncio.Future[None] | None = None

    def queued(self, delay: float | None = None) -> None:
        """Something was put in the batch: it goes with the next admission, or in
        ``delay`` (``BATCH_S``) when none comes."""
        self.waiting = bool(self.batch)
        if self.timer is None:
            self._arm(self.delay_s if delay is None else delay)
        elif self.late:  # more than charges waits now: sooner
            self.timer.cancel()
            self._arm(self.delay_s if delay is None else delay)

    def charged(self) -> None:
        """A charge of a request admitted from an allowance was put in the batch: it may
        wait ``CHARGE_S`` (the allowance's share bounds the spend meanwhile), so that a
        replica writes its charges ten times a second, not after every request."""
        self.waiting = True
        if self.timer is None:
            self._arm(CHARGE_S)
            self.late = True

    def _arm(self, delay: float) -> None:
        loop = self._loop
        if loop is None:
            try:
                loop = self._loop = asyncio.get_running_loop()
            except RuntimeError:
                return  # no loop (a test's sync use): written by the next flush
        self.timer = loop.call_later(delay, self._due)
        self.late = False

    def carry(self, proto: Connection) -> list[Settlement] | None:
        """An admission is about to leave on ``proto``: the batch's settlements go inside
        it (returned, for ``AdmitCodec``), its bindings and cooldowns just ahead of it.
        The timer stays: one timer per ``BATCH_S`` under load, not one per request."""
        batch = self.batch
        self.waiting = False
        self._carried = True
        if not (batch.binds or batch.cools or batch.owed or batch.raws):  # the usual
            settles = batch.settles
            batch.settles = []
            return settles or None
        self.batch = Batch()
        if batch.binds or batch.cools or batch.raws:
            rest = Batch()
            rest.binds, rest.cools, rest.raws = batch.binds, batch.cools, batch.raws
            self._send(proto, rest)
        return batch.items() or None

    def again(self, carried: list[Settlement]) -> None:
        """Settlements an admission carried that Redis did not apply: queued again."""
        self.batch.settles.extend(carried)
        self.queued()

    def lost(self, carried: list[Settlement]) -> None:
        """Settlements an admission carried, not known applied: their costs are kept
        (corrections are hints; a slot expires by itself)."""
        for name, _, _, _, cost in carried:
            if cost > 0:
                self.batch.owe(name, cost)
        self.waiting = bool(self.batch)
        self._retry_later()

    def _due(self) -> None:
        """The timer: when admissions carry the batches, look again later; else send on
        the open connection straight away, or connect in a task."""
        self.timer = None
        if self._carried:
            self._carried = False
            if self.waiting:
                self._arm(self.delay_s)
            return
        if not self.waiting:
            return
        store = self.store
        proto = store.client.connected()
        if proto is not None and store.breaker.allows():
            self._send(proto, self._take())
        elif self._flushing is None or self._flushing.done():
            self._flushing = asyncio.ensure_future(self.flush())

    async def flush(self) -> None:
        """Write what is queued now; returns when Redis answered (bounded by the timeout)."""
        if not self.batch:
            return
        store = self.store
        if not store.breaker.allows():
            self._retry_later()
            return
        try:
            proto = await store.client.connection()
        except asyncio.CancelledError:
            store.breaker.release()
            raise
        except FAILURES as exc:
            store.failed("write", exc)
            self._retry_later()
            return
        sent = self._send(proto, self._take())
        if sent is not None and sent.left:
            sent.done = asyncio.get_running_loop().create_future()
            with contextlib.suppress(asyncio.CancelledError):
                await sent.done

    def _retry_later(self) -> None:
        breaker = self.store.breaker
        self.queued(max(0.05, breaker.until - breaker.clock()))

    def _take(self) -> Batch:
        batch, self.batch = self.batch, Batch()
        self.waiting = False
        return batch

    def _send(self, proto: Connection, batch: Batch) -> Sent | None:
        """Send ``batch`` on ``proto`` without waiting for its replies."""
        day, _, month, _ = self.store.local.windows(self.store.clock())
        commands = self.encoder.commands(batch, self.store.settle_sha, day, month)
        sent = Sent(self, batch, len(commands))
        try:
            for command in commands:
                proto.post(command, sent)
        except ConnectionError as exc:
            self._lost(batch, exc)
            return None
        return sent

    def _lost(self, batch: Batch, exc: BaseException) -> None:
        self.store.failed("write", exc)
        self.batch.keep(batch, self.store.clock())
        self.waiting = bool(self.batch)
        self._retry_later()

    def sent(self, sent: Sent) -> None:
        """Every reply of a batch is in: note failures, and what to write again."""
        errors = sent.errors
        if not errors:  # the usual
            if self.store.breaker.open:
                self.store.recovered()
            return
        lost = next((e for _, e in errors if isinstance(e, OSError)), None)
        if lost is not None:  # the connection went (or timed out): nothing is known written
            self._lost(sent.batch, lost)
            return
        self.store.recovered()
        batch = sent.batch
        first = errors[0] if errors else None
        if (
            first is not None
            and first[0] == 0
            and (batch.settles or batch.owed)
            and "NOSCRIPT" in str(first[1])
        ):
            # Redis restarted and forgot the script: write the settlements again after
            # loading it (the rest of the batch went through).
            self.store.settle_sha = b""
            self.batch.settles.extend(batch.settles)
            for name, cost in batch.owed.items():
                self.batch.owe(name, cost)
            self._flushing = asyncio.ensure_future(self._reload_then_flush())
            return
        for _, error in errors:
            log.warning("state_write_failed", error=type(error).__name__, detail=str(error))

    async def _reload_then_flush(self) -> None:
        try:
            await self.store.load_scripts()
        except FAILURES as exc:
            self.store.failed("load", exc)
        await self.flush()

    async def close(self) -> None:
        """One last write of what is queued, bounded by the timeout."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        store = self.store
        if self.batch:
            store.breaker.success()  # one last try
            await self.flush()
        if self._flushing is not None and not self._flushing.done():
            with contextlib.suppress(asyncio.CancelledError, *FAILURES):
                await asyncio.wait_for(self._flushing, store.timeout_s * 2)
