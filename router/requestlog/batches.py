"""The writer's queue of records, and how a batch of them is written.

A batch is written all or nothing, and a failed one goes back to the head of the queue,
whose bound is kept by dropping the oldest records and counting them. A batch the
database refuses for its values is halved down to the rows at fault, which go again
clamped (``repair``) or are dropped, so one bad row never stops the log.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from router.requestlog.rows import Record
from router.requestlog.store import Store


class Batches:
    """A bounded deque of records (the event loop appends to ``queue`` itself: see
    ``RequestLog.record``) and the counts of what became of them."""

    def __init__(
        self,
        *,
        size: int,
        batch_size: int,
        on_drop: Callable[[int], None] | None,
        log: Any,
        safe_url: str | None,
        redact: Callable[[BaseException], str],
    ) -> None:
        self.queue: deque[Record] = deque()
        self._size = size
        self.batch_size = batch_size
        self._on_drop = on_drop
        self._log = log
        self._safe_url = safe_url
        self._redact = redact
        self.inflight = 0  # records taken off the queue by a write not yet committed
        self.written = 0
        self.dropped = 0
        self.bad_rows = {"clamped": 0, "dropped": 0}  # rows the database refused as they were

    async def write(self, store: Store, count: int | None) -> None:
        """Write ``count`` records from the head (None: every full batch there is)."""
        queue, size = self.queue, self.batch_size
        while queue and (len(queue) >= size if count is None else count > 0):
            n = min(len(queue), size if count is None else min(size, count))
            if count is not None:
                count -= n
            batch = [queue.popleft() for _ in range(n)]
            self.inflight = len(batch)
            try:
                # All or nothing: a batch that failed is retried whole, unless the
                # database refused its rows, which are then looked at one by one.
                await store.insert(batch)
            except Exception as exc:
                if not store.refused(exc):
                    self.requeue(batch)
                    raise
                await self._isolate(store, batch)
                continue
            except BaseException:
                self.requeue(batch)
                raise
            finally:
                self.inflight = 0
            self.written += len(batch)

    async def _isolate(self, store: Store, batch: list[Record]) -> None:
        """Write what the database takes of a ``batch`` it refused: halves, then halves
        of the half that failed, in order, down to the rows at fault (about 2 log2(n)
        statements for one bad row in n). Such a row goes again clamped (``repair``) or
        is dropped; both are counted. A failure that is not about the rows puts what is
        left back at the head of the queue and ends the pass, as for any batch."""
        from router.requestlog.repair import clamp  # rare: not loaded until needed

        # (records, clamped): a row refused alone is tried once more, clamped.
        parts: deque[tuple[list[Record], bool]] = deque()
        if len(batch) == 1:
            parts.append(([clamp(batch[0])], True))
        else:
            half = len(batch) // 2
            parts += [(batch[:half], False), (batch[half:], False)]
        while parts:
            part, clamped = parts.popleft()
            try:
                await store.insert(part)
            except BaseException as exc:
                if not (isinstance(exc, Exception) and store.refused(exc)):
                    self.requeue([r for p, _ in ((part, clamped), *parts) for r in p])
                    raise
                if len(part) > 1:
                    half = len(part) // 2
                    parts.extendleft([(part[half:], False), (part[:half], False)])
                elif not clamped:
                    parts.appendleft(([clamp(part[0])], True))
                else:
                    self._bad_row("dropped", exc)
                    self.drop(1)
                continue
            if clamped:
                self._bad_row("clamped", None)
            self.written += len(part)

    def _bad_row(self, outcome: str, exc: BaseException | None) -> None:
        self.bad_rows[outcome] += 1
        self._log.warning(
            "request_log.bad_row",
            outcome=outcome,
            url=self._safe_url,
            error=type(exc).__name__ if exc else None,
            detail=self._redact(exc) if exc else None,
        )

    def requeue(self, batch: list[Record]) -> None:
        """Put a failed batch back at the head; keep the bound by dropping the oldest."""
        queue = self.queue
        queue.extendleft(reversed(batch))
        over = len(queue) - self._size
        if over > 0:
            for _ in range(over):
                queue.popleft()
            self.drop(over)

    def drop(self, n: int) -> None:
        self.dropped += n
        if self._on_drop is not None:
            try:
                self._on_drop(n)
            except Exception:
                self._log.exception("request_log.on_drop_failed")
