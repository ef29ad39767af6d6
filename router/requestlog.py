"""The durable request log: one row per request and per upstream attempt.

Requests must never wait for the database, so writing is a producer/consumer pipe in
the style of a log shipper (Fluent Bit's bounded in-memory buffer, Vector's
``when_full: drop_newest``, but dropping the *oldest*): ``record()`` appends to a bounded
deque in O(1) and never blocks or raises; one background task drains it in batches
(``executemany`` inserts, one transaction per batch) every ``flush_interval_s`` or as
soon as ``batch_size`` records wait. A failing, slow, locked or unreachable database
only delays the writer: the batch goes back to the head of the queue, the writer
retries with exponential backoff, and if the queue overflows meanwhile the oldest
records are dropped and *counted* (``dropped``, ``on_drop``), never silently.

The writer migrates the database to the schema's head before its first write
(``router.migrations.schema``), so a new router upgrades an old log in place.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from router.migrations.schema import ATTEMPTS, REQUESTS, make_engine, migrate, parse_url
from router.records import RequestRecord
from router.usage import usage

if TYPE_CHECKING:
    from router.config import StorageSection

PRUNE_EVERY_S = 3600.0
PRUNE_RETRY_S = 60.0
BACKOFF_MIN_S = 0.05
BACKOFF_MAX_S = 30.0
MAX_TEXT = 256  # client-chosen strings (request ids) are cut here


class RequestLogDisabled(RuntimeError):
    """The request log is off (no ``storage.url``) or not started: nothing to query."""


# -- rows -----------------------------------------------------------------------------


def _text(value: str | None) -> str | None:
    return value if value is None or len(value) <= MAX_TEXT else value[:MAX_TEXT]


def request_row(rec: RequestRecord) -> dict[str, Any]:
    u = rec.usage
    return {
        "ts": datetime.fromtimestamp(rec.started, UTC),
        "request_id": _text(rec.request_id) or "",
        "key_name": _text(rec.key_name),
        "route": _text(rec.route),
        "endpoint": rec.endpoint,
        "operation": rec.operation,
        "stream": rec.stream,
        "status": rec.status,
        "attempts": len(rec.attempts),
        "hedges": rec.hedges,
        "latency_ms": rec.latency_ms,
        "ttft_ms": rec.ttft_ms,
        "prompt_tokens": u.prompt_tokens if u else 0,
        "completion_tokens": u.completion_tokens if u else 0,
        "reasoning_tokens": u.reasoning_tokens if u else 0,
        "cached_tokens": u.cached_tokens if u else 0,
        "cache_write_tokens": u.cache_write_tokens if u else 0,
        "cost": rec.cost,
        "error": _text(rec.error),
    }


def attempt_rows(rec: RequestRecord) -> list[dict[str, Any]]:
    # Attempts carry monotonic durations only; they are stamped with the request's time.
    ts = datetime.fromtimestamp(rec.started, UTC)
    request_id = _text(rec.request_id) or ""
    return [
        {
            "ts": ts,
            "request_id": request_id,
            "route": a.route,
            "endpoint": a.endpoint,
            "status": a.status,
            "reason": a.reason,
            "duration_ms": a.duration_ms,
            "ttft_ms": a.ttft_ms,
            "hedged": a.hedged,
        }
        for a in rec.attempts
    ]


REQUEST_COLUMNS = (
    "ts", "request_id", "key_name", "route", "endpoint", "operation", "stream", "status",
    "attempts", "hedges", "latency_ms", "ttft_ms", "prompt_tokens", "completion_tokens",
    "reasoning_tokens", "cached_tokens", "cache_write_tokens", "cost", "error",
)  # fmt: skip
ATTEMPT_COLUMNS = (
    "ts", "request_id", "route", "endpoint", "status", "reason", "duration_ms", "ttft_ms",
    "hedged",
)  # fmt: skip
_FastInsert = tuple[str, str, Callable[[float], Any], Callable[[bool], Any]]


def _row_tuples(
    batch: list[RequestRecord], stamp: Callable[[float], Any], flag: Callable[[bool], Any]
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """The rows of a batch as tuples in REQUEST_COLUMNS / ATTEMPT_COLUMNS order."""
    requests = []
    attempts = []
    for rec in batch:
        ts = stamp(rec.started)
        rid = _text(rec.request_id) or ""
        u = rec.usage
        requests.append(
            (
                ts,
                rid,
                _text(rec.key_name),
                _text(rec.route),
                rec.endpoint,
                rec.operation,
                flag(rec.stream),
                rec.status,
                len(rec.attempts),
                rec.hedges,
                rec.latency_ms,
                rec.ttft_ms,
                u.prompt_tokens if u else 0,
                u.completion_tokens if u else 0,
                u.reasoning_tokens if u else 0,
                u.cached_tokens if u else 0,
                u.cache_write_tokens if u else 0,
                rec.cost,
                _text(rec.error),
            )
        )
        for a in rec.attempts:
            attempts.append(
                (
                    ts,
                    rid,
                    a.route,
                    a.endpoint,
                    a.status,
                    a.reason,
                    a.duration_ms,
                    a.ttft_ms,
                    flag(a.hedged),
                )
            )
    return requests, attempts


# -- the log --------------------------------------------------------------------------


class RequestLog:
    """A bounded, batched, never-blocking writer of request records (``url=None``: off)."""

    def __init__(
        self,
        url: str | None,
        *,
        queue_size: int = 10_000,
        batch_size: int = 500,
        flush_interval_s: float = 1.0,
        retention_days: float = 30.0,
        on_drop: Callable[[int], None] | None = None,
    ) -> None:
        self.url = url
        self._log = structlog.get_logger("router.requestlog")
        parsed = parse_url(url) if url else None  # ValueError now, not at start()
        self.safe_url = parsed.render_as_string(hide_password=True) if parsed else None
        self._password = parsed.password if parsed else None
        self._queue_size = queue_size
        self._batch_size = batch_size
        self._flush_interval = flush_interval_s
        self._retention = timedelta(days=retention_days)
        self._on_drop = on_drop
        self._queue: deque[RequestRecord] = deque()
        self._inflight = 0  # records taken off the queue by a write not yet committed
        self._engine: AsyncEngine | None = None
        self._fast: _FastInsert | bool | None = None  # driver-level inserts, once known
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._tried = asyncio.Event()  # the first migration attempt is over
        self._drained = asyncio.Event()
        self._closed = False
        self._dropped = 0
        self._written = 0
        self._next_prune = 0.0
        self.migrated = False

    @classmethod
    def from_config(
        cls,
        storage: StorageSection,
        *,
        url: str | None = None,
        on_drop: Callable[[int], None] | None = None,
    ) -> RequestLog:
        """From ``storage``; ``url`` (e.g. ``$ROUTER_DATABASE_URL``) overrides ``storage.url``."""
        return cls(
            url or storage.url,
            queue_size=storage.queue_size,
            batch_size=storage.batch_size,
            flush_interval_s=storage.flush_interval_s,
            retention_days=storage.retention_days,
            on_drop=on_drop,
        )

    # -- what callers see -------------------------------------------------------------

    @property
    def enabled(self) -> bool:
        return self.url is not None

    @property
    def queue_depth(self) -> int:
        return len(self._queue) + self._inflight

    @property
    def dropped(self) -> int:
        return self._dropped

    @property
    def written(self) -> int:
        return self._written

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            raise RequestLogDisabled("the request log is off (storage.url is not set)")
        return self._engine

    def record(self, rec: RequestRecord) -> None:
        """Queue ``rec`` (and its attempts) for writing: O(1), never blocks, never raises.

        The log takes ownership of ``rec``: do not change it afterwards. Call from the
        event loop's thread.
        """
        if self.url is None:
            return
        if self._closed:  # nothing will ever write it
            self._drop(1)
            return
        queue = self._queue
        if len(queue) >= self._queue_size:
            queue.popleft()
            self._drop(1)
        queue.append(rec)
        if len(queue) >= self._batch_size and not self._wake.is_set():
            self._wake.set()

    async def usage(self, *, since: datetime, until: datetime, group_by: str) -> dict[str, Any]:
        """Totals from the log; see ``router.usage.usage``."""
        return await usage(self.engine, since=since, until=until, group_by=group_by)

    # -- life cycle -------------------------------------------------------------------

    async def start(self, *, ready_timeout_s: float = 10.0) -> None:
        """Open the engine and start the writer, which migrates to head, prunes, writes.

        Waits for the first migration attempt, at most ``ready_timeout_s``; a database
        that is down does not stop the router from starting: the writer keeps trying.
        ValueError if the URL names no usable async driver.
        """
        if self.url is None or self._task is not None:
            return
        self._engine = make_engine(self.url)
        self._task = asyncio.create_task(self._run(), name="request-log-writer")
        try:
            async with asyncio.timeout(ready_timeout_s):
                await self._tried.wait()
        except TimeoutError:
            self._log.warning("request_log.not_ready", url=self.safe_url, waited_s=ready_timeout_s)

    async def flush(self, timeout_s: float = 10.0) -> bool:
        """Write everything queued now; False if that did not finish in ``timeout_s``."""
        if self._task is None or self._task.done():
            return not self._queue
        self._drained.clear()
        self._wake.set()
        try:
            async with asyncio.timeout(timeout_s):
                await self._drained.wait()
        except TimeoutError:
            return False
        return True

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Flush what is queued (for at most ``timeout_s``), then close the engine.

        What could not be written in time is counted as dropped and logged.
        """
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            self._stop.set()
            self._wake.set()
            done, _ = await asyncio.wait({task}, timeout=timeout_s)
            if not done:
                task.cancel()
                await asyncio.wait({task})
        lost = len(self._queue)
        if lost:
            self._queue.clear()
            self._drop(lost)
            self._log.warning("request_log.lost_on_stop", records=lost, url=self.safe_url)
        engine, self._engine = self._engine, None
        if engine is not None:
            await engine.dispose()

    # -- the writer -------------------------------------------------------------------

    async def _run(self) -> None:
        backoff = BACKOFF_MIN_S
        failing = False
        while True:
            try:
                if not self.migrated:
                    await self._migrate()
                await self._prune_if_due()
                await self._drain()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._tried.set()
                failing = True
                self._log.warning(
                    "request_log.write_failed",
                    url=self.safe_url,
                    error=type(exc).__name__,
                    detail=self._redact(exc),
                    queued=self.queue_depth,
                    dropped=self._dropped,
                    retry_in_s=round(backoff, 3),
                )
                await self._backoff(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)
                continue
            if failing:
                failing = False
                self._log.info("request_log.recovered", url=self.safe_url, queued=self.queue_depth)
            backoff = BACKOFF_MIN_S
            self._drained.set()
            if self._stop.is_set():
                return
            try:
                async with asyncio.timeout(self._flush_interval):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()

    async def _backoff(self, delay: float) -> None:
        if self._stop.is_set():  # shutting down: retry briskly until stop()'s bound
            await asyncio.sleep(min(delay, 0.5))
            return
        try:
            async with asyncio.timeout(delay):
                await self._stop.wait()
        except TimeoutError:
            pass

    async def _migrate(self) -> None:
        assert self._engine is not None
        try:
            newer = await migrate(self._engine)
        finally:
            self._tried.set()
        self.migrated = True
        if newer:
            self._log.warning("request_log.newer_schema", url=self.safe_url, revisions=newer)
        self._log.info("request_log.ready", url=self.safe_url)

    async def _prune_if_due(self) -> None:
        """Delete rows past retention; a failure is logged and retried later, not fatal."""
        now = time.monotonic()
        if now < self._next_prune:
            return
        assert self._engine is not None
        self._next_prune = now + PRUNE_EVERY_S
        cutoff = datetime.now(UTC) - self._retention
        try:
            async with self._engine.begin() as conn:
                gone = await conn.execute(sa.delete(REQUESTS).where(REQUESTS.c.ts < cutoff))
                gone_attempts = await conn.execute(
                    sa.delete(ATTEMPTS).where(ATTEMPTS.c.ts < cutoff)
                )
        except Exception as exc:
            # Writes go on; a prune that failed (locked, down, too slow) comes back soon.
            self._next_prune = now + PRUNE_RETRY_S
            self._log.warning(
                "request_log.prune_failed",
                url=self.safe_url,
                error=type(exc).__name__,
                detail=self._redact(exc),
                retry_in_s=PRUNE_RETRY_S,
            )
            return
        if gone.rowcount or gone_attempts.rowcount:
            self._log.info(
                "request_log.pruned",
                requests=gone.rowcount,
                attempts=gone_attempts.rowcount,
                before=cutoff.isoformat(),
            )

    async def _drain(self) -> None:
        queue = self._queue
        while queue:
            batch = [queue.popleft() for _ in range(min(len(queue), self._batch_size))]
            self._inflight = len(batch)
            try:
                await self._write(batch)
            except BaseException:
                self._requeue(batch)
                raise
            finally:
                self._inflight = 0
            self._written += len(batch)

    async def _write(self, batch: list[RequestRecord]) -> None:
        assert self._engine is not None
        fast = self._fast_insert()
        async with self._engine.begin() as conn:  # all or nothing: a failed batch is retried whole
            if fast is None:
                requests = [request_row(rec) for rec in batch]
                attempts = [row for rec in batch for row in attempt_rows(rec)]
                await conn.execute(sa.insert(REQUESTS), requests)
                if attempts:
                    await conn.execute(sa.insert(ATTEMPTS), attempts)
                return
            req_sql, att_sql, stamp, flag = fast
            req_rows, att_rows = _row_tuples(batch, stamp, flag)
            await conn.exec_driver_sql(req_sql, req_rows)
            if att_rows:
                await conn.exec_driver_sql(att_sql, att_rows)

    def _fast_insert(self) -> _FastInsert | None:
        """Driver-level INSERTs of plain tuples, for the dialects whose types we know.

        SQLAlchemy's per-parameter processing cost more CPU per request than the rest of
        the request log together; the rows' types are fixed, so the conversions SQLAlchemy
        would look up per value are done here once per column.
        """
        if self._fast is not None or self._engine is None:
            return self._fast if isinstance(self._fast, tuple) else None
        dialect = self._engine.dialect
        style = dialect.paramstyle
        if dialect.name not in ("sqlite", "postgresql") or style not in ("qmark", "numeric_dollar"):
            self._fast = False
            return None

        def sql(table: sa.Table, columns: tuple[str, ...]) -> str:
            if style == "qmark":
                marks = ", ".join("?" for _ in columns)
            else:
                marks = ", ".join(f"${i + 1}" for i in range(len(columns)))
            return f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({marks})"

        if dialect.name == "sqlite":
            # SQLAlchemy's storage format for DateTime on SQLite, and booleans as integers,
            # so rows written here read back through the same column types.
            def stamp(t: float) -> Any:
                return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")

            flag: Callable[[bool], Any] = int
        else:

            def stamp(t: float) -> Any:
                return datetime.fromtimestamp(t, UTC)

            flag = bool
        self._fast = (sql(REQUESTS, REQUEST_COLUMNS), sql(ATTEMPTS, ATTEMPT_COLUMNS), stamp, flag)
        return self._fast

    def _requeue(self, batch: list[RequestRecord]) -> None:
        """Put a failed batch back at the head; keep the bound by dropping the oldest."""
        queue = self._queue
        queue.extendleft(reversed(batch))
        over = len(queue) - self._queue_size
        if over > 0:
            for _ in range(over):
                queue.popleft()
            self._drop(over)

    def _drop(self, n: int) -> None:
        self._dropped += n
        if self._on_drop is not None:
            try:
                self._on_drop(n)
            except Exception:
                self._log.exception("request_log.on_drop_failed")

    def _redact(self, exc: BaseException) -> str:
        # The driver's own message, without SQLAlchemy's echo of the statement.
        text = str(getattr(exc, "orig", None) or exc)
        if self._password:
            text = text.replace(self._password, "***")
        return text[:500]
