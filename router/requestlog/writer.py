"""The durable request log: one row per request and per upstream attempt.

Requests must never wait for the database, so writing is a producer/consumer pipe in
the style of a log shipper (Fluent Bit's bounded in-memory buffer, Vector's
``when_full: drop_newest``, but dropping the *oldest*): ``record()`` turns a record into
plain row tuples and appends them to a bounded deque in O(1), never blocking or raising;
one background task drains it in batches (one transaction per batch) every
``flush_interval_s`` or as soon as ``batch_size`` records wait. A failing, slow, locked
or unreachable database only delays the writer: the batch goes back to the head of the
queue, the writer reconnects with exponential backoff, and if the queue overflows
meanwhile the oldest records are dropped and *counted* (``dropped``, ``on_drop``).
A batch the database refuses for its values is not retried as it is: the writer halves
it until it finds the rows at fault, writes the others, and writes those clamped to
what the columns hold or, failing that, drops them (``bad_rows``), so one bad row never
stops the log. A database found without its tables (recreated empty, the file replaced)
is migrated again and written to, without a restart and without losing the queue.

The writer talks to the driver directly (``router.requestlog.store``): the serving
process never imports SQLAlchemy. Before its first write it reads the database's schema
revision and, if that is not head, upgrades it in a child process, so a new router
upgrades an old log in place. ``usage()`` loads SQLAlchemy on first use: only admins pay.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import structlog

from router.requestlog.records import AttemptRecord, RequestRecord, Usage
from router.requestlog.store import (
    HEAD,
    Record,
    Row,
    Store,
    Target,
    open_store,
    parse_target,
    upgrade_in_child,
)

State = str  # "starting", "ok", "failing", "stopped"

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from router.config import StorageSection

PRUNE_EVERY_S = 3600.0
PRUNE_RETRY_S = 60.0
BACKOFF_MIN_S = 0.05
BACKOFF_MAX_S = 30.0
MAX_TEXT = 256  # client-chosen strings (request ids) are cut here
MAX_NAMES = 4096  # distinct names kept made storable (see entry())
NULL = math.nan  # a NULL as both stores bind it cheaply (see store.REQUEST_COLUMNS)

# A queued record is one flat tuple (``store.Record``) of str, int and float and the
# attempt rows, which the garbage collector stops tracking (a queue of thousands of
# dataclasses would be rescanned by every young-generation collection).
_NO_USAGE = Usage()


class RequestLogDisabled(RuntimeError):
    """The request log is off (no ``storage.url``) or not started: nothing to query."""


def _text(value: str) -> str:
    """Text made storable and cut to MAX_TEXT: a NUL (PostgreSQL) or a lone surrogate
    (any UTF-8 driver) would fail its whole batch on every retry."""
    if len(value) > MAX_TEXT:
        value = value[:MAX_TEXT]
    if "\x00" in value:
        value = value.replace("\x00", "\ufffd")
    if not value.isascii():  # O(1) for the usual ASCII string
        value = value.encode("utf-8", "replace").decode("utf-8")
    return value


def entry(rec: RequestRecord, names: dict[str | None, Any]) -> Record:
    """``rec`` as a ``store.Record``: its attempt rows, then its row; rows end before
    their ``store.DEFAULTS`` when those are all they have there.

    The usual request, served by its one attempt, is one row: it carries that attempt's
    duration and TTFT, and its other fields are the attempt's too (revision 0005). Any
    other request's attempts get rows of their own, its ``attempt_*`` fields NULL.

    This runs on the event loop for every request, so it does little more than read each
    field once: ``ts`` is the start in Unix seconds as both stores take it (attempts,
    which carry monotonic durations only, get their request's); NULL is NaN; flags go
    as 0/1, since sqlite3 sends a bool through its slow adapter path (PostgreSQL reads
    '0'/'1' as booleans). Names from the configuration (routes, endpoints, client keys,
    error classes, attempt reasons) come storable from ``names``, None as NULL: the
    same few come with every record, and a hit is a dictionary lookup instead of a call
    of ``_text``. A name not in it raises KeyError: see ``learn_names``."""
    ts = rec.started
    rid = rec.request_id
    if len(rid) > MAX_TEXT or not rid.isascii() or "\x00" in rid:
        rid = _text(rid)
    u = rec.usage or _NO_USAGE
    ttft = rec.ttft_ms
    attempts = rec.attempts
    rows: tuple[Row, ...] = ()
    a = attempts[0] if len(attempts) == 1 else None
    # The attempt served the request, unhedged, at its route, endpoint and status: the
    # request's row says all the rest of it.
    if (
        a is not None and a.reason is None and not a.hedged and a.status == rec.status
        and a.route == rec.route and a.endpoint == rec.endpoint
    ):  # fmt: skip
        attempt_ms, attempt_ttft = a.duration_ms, NULL if a.ttft_ms is None else a.ttft_ms
    else:
        attempt_ms = attempt_ttft = NULL
        rows = _attempt_rows(ts, rid, attempts, names)
    record: Record = (
        rows, names[rec.route], names[rec.endpoint], rec.operation, 1 if rec.stream else 0,
        rec.status, names[rec.key_name], len(attempts),
        ts, rid, rec.latency_ms, NULL if ttft is None else ttft, u.prompt_tokens,
        u.completion_tokens, rec.cost, attempt_ms, attempt_ttft,
    )  # fmt: skip
    # The columns at their defaults in most rows go only when they are not (DEFAULTS).
    if (
        rec.hedges or u.reasoning_tokens or u.cached_tokens or u.cache_write_tokens
        or rec.error is not None or rec.output_error is not None
    ):  # fmt: skip
        record += (
            rec.hedges, u.reasoning_tokens, u.cached_tokens, u.cache_write_tokens,
            names[rec.error], names[rec.output_error],
        )  # fmt: skip
    return record


def _attempt_rows(
    ts: float, rid: str, attempts: list[AttemptRecord], names: dict[str | None, Any]
) -> tuple[Row, ...]:
    rows: list[Row] = []
    tails = False
    for a in attempts:  # a loop, not a comprehension: no function object per record
        # An attempt's route is its own: a fallback route's attempts differ from the
        # request's.
        rows.append((
            ts, rid, names[a.route], names[a.endpoint], NULL if a.status is None else a.status,
            a.duration_ms, NULL if a.ttft_ms is None else a.ttft_ms,
        ))  # fmt: skip
        if a.reason is not None or a.hedged:
            tails = True
    if tails:  # all or none: a request's attempts share a width, and so stay in order
        rows = [
            (*row, names[a.reason], 1 if a.hedged else 0)
            for row, a in zip(rows, attempts, strict=True)
        ]
    return tuple(rows)


def learn_names(rec: RequestRecord, names: dict[str | None, Any]) -> None:
    """Add ``rec``'s names to ``names``, which starts over when full (it is a cache)."""
    if len(names) >= MAX_NAMES:
        names.clear()
    names[None] = NULL
    attempts = [name for a in rec.attempts for name in (a.route, a.endpoint, a.reason)]
    for name in (rec.key_name, rec.route, rec.endpoint, rec.error, rec.output_error, *attempts):
        if name is not None:
            names[name] = _text(name)


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
        self._target: Target | None = parse_target(url) if url else None  # ValueError now
        self.safe_url = self._target.safe_url if self._target else None
        self._store: Store | None = open_store(self._target) if self._target else None
        self._queue_size = queue_size
        self._batch_size = batch_size
        self._flush_interval = flush_interval_s
        self._retention_s = retention_days * 86400.0
        self._on_drop = on_drop
        self._names: dict[str | None, Any] = {None: NULL}  # see entry()
        self._queue: deque[Record] = deque()
        self._inflight = 0  # records taken off the queue by a write not yet committed
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._tried = asyncio.Event()  # the first migration attempt is over
        self._drained = asyncio.Event()  # a pass of the writer ended
        self._flush_asked = 0  # flush() tickets given out ...
        self._flushed = 0  # ... and the newest one a pass has honoured
        self._started = False
        self._closed = False
        self._dropped = 0
        self._written = 0
        self.bad_rows = {"clamped": 0, "dropped": 0}  # rows the database refused as they were
        self.state: State = "starting"
        self.last_error: str | None = None  # why the last failed write failed (redacted)
        self.last_error_at: datetime | None = None
        self._next_prune = 0.0
        self._reader: AsyncEngine | None = None  # SQLAlchemy, for usage() only
        self._reader_lock = asyncio.Lock()
        self.migrated = False  # the database is at head (or newer): writes may start
        self.upgraded = False  # this log ran the upgrade child to get it there
        self._newer: set[str] = set()  # revisions of a newer router found in the database

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

    def health(self) -> dict[str, Any]:
        """For ``/health``: whether the log is writing, and why not."""
        return {
            "state": self.state,
            "url": self.safe_url,
            "queued": self.queue_depth,
            "written": self._written,
            "dropped": self._dropped,
            "bad_rows": dict(self.bad_rows),
            "last_error": self.last_error,
            "last_error_at": self.last_error_at.isoformat() if self.last_error_at else None,
        }

    def record(self, rec: RequestRecord) -> None:
        """Queue ``rec`` (and its attempts) for writing: O(1), never blocks, never raises.

        Call from the event loop's thread.
        """
        if self._store is None:
            return
        if self._closed:  # nothing will ever write it
            self._drop(1)
            return
        try:
            try:
                item = entry(rec, self._names)
            except KeyError:  # a name not seen before (try costs nothing until it raises)
                learn_names(rec, self._names)
                item = entry(rec, self._names)
        except Exception:  # a malformed record must not fail the request that made it
            self._drop(1)
            self._log.exception("request_log.bad_record")
            return
        queue = self._queue
        if len(queue) >= self._queue_size:
            queue.popleft()
            self._drop(1)
        queue.append(item)
        # On reaching a batch, not past it: under load the queue stays deeper than one
        # batch while one is written, and the writer looks for more full batches anyway.
        if len(queue) == self._batch_size:
            self._wake.set()

    async def usage(
        self,
        *,
        since: datetime,
        until: datetime,
        group_by: str,
        route: str | None = None,
        savings: Mapping[tuple[str | None, str | None], float] | None = None,
    ) -> dict[str, Any]:
        """Totals from the log; see ``router.requestlog.usage.usage``."""
        if self.url is None or not self._started or self._closed:
            raise RequestLogDisabled("the request log is off (storage.url is not set)")
        async with self._reader_lock:
            if self._reader is None:
                # SQLAlchemy's import takes the better part of a second: not on the loop.
                self._reader = await asyncio.to_thread(_reader_engine, self.url)
        from router.requestlog.usage import usage

        return await usage(
            self._reader, since=since, until=until, group_by=group_by, route=route, savings=savings
        )

    # -- life cycle -------------------------------------------------------------------

    async def start(self, *, ready_timeout_s: float = 10.0) -> None:
        """Start the writer, which migrates to head, prunes, then writes.

        Waits for the first migration attempt, at most ``ready_timeout_s``; a database
        that is down does not stop the router from starting: the writer keeps trying.
        """
        if self._store is None or self._task is not None:
            return
        self._started = True
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
        # A ticket: only a pass that starts after this call can have written its records.
        self._flush_asked += 1
        ticket = self._flush_asked
        self._wake.set()
        try:
            async with asyncio.timeout(timeout_s):
                while self._flushed < ticket:
                    self._drained.clear()
                    await self._drained.wait()
        except TimeoutError:
            return False
        return True

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Flush what is queued (for at most ``timeout_s``), then close the connection.

        What could not be written in time is counted as dropped and logged.
        """
        self._closed = True
        self.state = "stopped"
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
        if self._store is not None and self._started:
            self._started = False  # a second stop() finds nothing to shut
            await self._store.shutdown()
        reader, self._reader = self._reader, None
        if reader is not None:
            await reader.dispose()

    # -- the writer -------------------------------------------------------------------

    async def _run(self) -> None:
        """Passes of writing: full batches as soon as they fill; what is left over only
        when the interval has passed, or a flush or the stop asks for it.

        Writing the few records that came in during the last write at once (what a plain
        "drain until empty" does) turned each full batch into two, and a transaction's
        fixed cost over a handful of rows cost more per row than the rows themselves.
        """
        assert self._store is not None
        store = self._store
        backoff = BACKOFF_MIN_S
        failing = False
        everything = True  # the first pass writes what waited for the start
        while True:
            ticket = self._flush_asked
            try:
                await store.connect()
                if not self.migrated:
                    await self._migrate(store)
                await self._prune_if_due(store)
                await self._drain(store, len(self._queue) if everything else None)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._tried.set()
                failing = True
                everything = True
                detail = self._redact(exc)
                self._failed(f"{type(exc).__name__}: {detail}")
                self._log.warning(
                    "request_log.write_failed",
                    url=self.safe_url,
                    error=type(exc).__name__,
                    detail=detail,
                    queued=self.queue_depth,
                    dropped=self._dropped,
                    retry_in_s=round(backoff, 3),
                )
                await store.close()  # the next try reconnects: the old one may be broken
                # What is at the other end may be another database now (recreated, the
                # file replaced): read its revision again before writing to it.
                self.migrated = False
                await self._backoff(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)
                continue
            if self.state != "stopped":
                self.state = "ok"
            if failing:
                failing = False
                self._log.info("request_log.recovered", url=self.safe_url, queued=self.queue_depth)
            backoff = BACKOFF_MIN_S
            if everything:
                self._flushed = ticket
            self._drained.set()
            if self._stop.is_set():
                if not self._queue:
                    return
                everything = True
                continue
            everything = await self._wait()

    async def _wait(self) -> bool:
        """Until a batch is full (False) or everything queued is due (True)."""
        try:
            async with asyncio.timeout(self._flush_interval):
                await self._wake.wait()
        except TimeoutError:
            return True
        finally:
            self._wake.clear()
        return self._stop.is_set() or self._flush_asked > self._flushed

    async def _backoff(self, delay: float) -> None:
        if self._stop.is_set():  # shutting down: retry briskly until stop()'s bound
            await asyncio.sleep(min(delay, 0.5))
            return
        try:
            async with asyncio.timeout(delay):
                await self._stop.wait()
        except TimeoutError:
            pass

    async def _migrate(self, store: Store) -> None:
        """Bring the database to head; Alembic runs in a child, and only when needed.

        Runs at the start and again after a failed write (the database at the other end
        may have been recreated meanwhile): then it costs one query, unless the
        database is behind."""
        assert self._target is not None
        try:
            revision = await store.revision()
            newer: list[str] = []
            if revision != HEAD and revision not in self._newer:
                newer = await upgrade_in_child(self._target)
                self.upgraded = True
                if newer:
                    self._newer.update(newer)
                    self._log.warning(
                        "request_log.newer_schema", url=self.safe_url, revisions=newer
                    )
                else:
                    self._log.info("request_log.migrated", url=self.safe_url, revision=HEAD)
        finally:
            self._tried.set()
        self.migrated = True
        self._log.info("request_log.ready", url=self.safe_url)

    async def _prune_if_due(self, store: Store) -> None:
        """Delete rows past retention; a failure is logged and retried later, not fatal."""
        now = time.monotonic()
        if now < self._next_prune:
            return
        self._next_prune = now + PRUNE_EVERY_S
        cutoff = time.time() - self._retention_s
        try:
            requests, attempts = await store.prune(cutoff)
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
        if requests or attempts:
            self._log.info(
                "request_log.pruned",
                requests=requests,
                attempts=attempts,
                before=datetime.fromtimestamp(cutoff, UTC).isoformat(),
            )

    async def _drain(self, store: Store, count: int | None) -> None:
        """Write ``count`` records from the head (None: every full batch there is)."""
        queue, size = self._queue, self._batch_size
        while queue and (len(queue) >= size if count is None else count > 0):
            n = min(len(queue), size if count is None else min(size, count))
            if count is not None:
                count -= n
            batch = [queue.popleft() for _ in range(n)]
            self._inflight = len(batch)
            try:
                # All or nothing: a batch that failed is retried whole, unless the
                # database refused its rows, which are then looked at one by one.
                await store.insert(batch)
            except Exception as exc:
                if not store.refused(exc):
                    self._requeue(batch)
                    raise
                await self._isolate(store, batch)
                continue
            except BaseException:
                self._requeue(batch)
                raise
            finally:
                self._inflight = 0
            self._written += len(batch)

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
                    self._requeue([r for p, _ in ((part, clamped), *parts) for r in p])
                    raise
                if len(part) > 1:
                    half = len(part) // 2
                    parts.extendleft([(part[half:], False), (part[:half], False)])
                elif not clamped:
                    parts.appendleft(([clamp(part[0])], True))
                else:
                    self._bad_row("dropped", exc)
                    self._drop(1)
                continue
            if clamped:
                self._bad_row("clamped", None)
            self._written += len(part)

    def _bad_row(self, outcome: str, exc: BaseException | None) -> None:
        self.bad_rows[outcome] += 1
        self._log.warning(
            "request_log.bad_row",
            outcome=outcome,
            url=self.safe_url,
            error=type(exc).__name__ if exc else None,
            detail=self._redact(exc) if exc else None,
        )

    def _failed(self, why: str) -> None:
        self.state = "failing"
        self.last_error = why
        self.last_error_at = datetime.now(UTC)

    def _requeue(self, batch: list[Record]) -> None:
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
        assert self._target is not None
        return self._target.redact(" ".join(str(exc).split()))[:500]


def _reader_engine(url: str) -> AsyncEngine:
    from router.requestlog.schema import make_engine

    return make_engine(url)
