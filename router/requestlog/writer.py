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
stops the log (``batches.py``). A database found without its tables (recreated empty,
the file replaced) is migrated again and written to, without a restart and without
losing the queue.

The writer talks to the driver directly (``router.requestlog.store``): the serving
process never imports SQLAlchemy. Before its first write it reads the database's schema
revision and, if that is not head, upgrades it in a child process, so a new router
upgrades an old log in place. ``usage()`` loads SQLAlchemy on first use: only admins pay.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import structlog

from router.requestlog.batches import Batches
from router.requestlog.records import RequestRecord
from router.requestlog.retention import Retention
from router.requestlog.rows import NULL, Record, entry, learn_names
from router.requestlog.store import HEAD, Store, Target, open_store, parse_target, upgrade_in_child
from router.requestlog.usage import Reader

State = str  # "starting", "ok", "failing", "stopped"

if TYPE_CHECKING:
    from router.config import StorageSection

BACKOFF_MIN_S = 0.05
BACKOFF_MAX_S = 30.0


class RequestLogDisabled(RuntimeError):
    """The request log is off (no ``storage.url``) or not started: nothing to query."""


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
        self._names: dict[str | None, Any] = {None: NULL}  # see rows.entry()
        self._batches = Batches(
            size=queue_size,
            batch_size=batch_size,
            on_drop=on_drop,
            log=self._log,
            safe_url=self.safe_url,
            redact=self._redact,
        )
        self._retention = Retention(
            retention_days, log=self._log, safe_url=self.safe_url, redact=self._redact
        )
        # The batches' queue, which record() appends to directly (one lookup less).
        self._queue: deque[Record] = self._batches.queue
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._tried = asyncio.Event()  # the first migration attempt is over
        self._drained = asyncio.Event()  # a pass of the writer ended
        self._flush_asked = 0  # flush() tickets given out ...
        self._flushed = 0  # ... and the newest one a pass has honoured
        self._started = False
        self._closed = False
        self.state: State = "starting"
        self.last_error: str | None = None  # why the last failed write failed (redacted)
        self.last_error_at: datetime | None = None
        self._reader = Reader(url) if url else None  # SQLAlchemy, for usage() only
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
        return len(self._queue) + self._batches.inflight

    @property
    def dropped(self) -> int:
        return self._batches.dropped

    @property
    def written(self) -> int:
        return self._batches.written

    @property
    def bad_rows(self) -> dict[str, int]:
        """Rows the database refused as they were: ``clamped`` and written, or ``dropped``."""
        return self._batches.bad_rows

    def health(self) -> dict[str, Any]:
        """For ``/health``: whether the log is writing, and why not."""
        return {
            "state": self.state,
            "url": self.safe_url,
            "queued": self.queue_depth,
            "written": self.written,
            "dropped": self.dropped,
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
            self._batches.drop(1)
            return
        try:
            try:
                item = entry(rec, self._names)
            except KeyError:  # a name not seen before (try costs nothing until it raises)
                learn_names(rec, self._names)
                item = entry(rec, self._names)
        except Exception:  # a malformed record must not fail the request that made it
            self._batches.drop(1)
            self._log.exception("request_log.bad_record")
            return
        queue = self._queue
        if len(queue) >= self._queue_size:
            queue.popleft()
            self._batches.drop(1)
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
        assert self._reader is not None
        return await self._reader.usage(
            since=since, until=until, group_by=group_by, route=route, savings=savings
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
            self._batches.drop(lost)
            self._log.warning("request_log.lost_on_stop", records=lost, url=self.safe_url)
        if self._store is not None and self._started:
            self._started = False  # a second stop() finds nothing to shut
            await self._store.shutdown()
        if self._reader is not None:
            await self._reader.close()

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
                await self._retention.prune_if_due(store)
                await self._batches.write(store, len(self._queue) if everything else None)
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
                    dropped=self.dropped,
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

    def _failed(self, why: str) -> None:
        self.state = "failing"
        self.last_error = why
        self.last_error_at = datetime.now(UTC)

    def _redact(self, exc: BaseException) -> str:
        assert self._target is not None
        return self._target.redact(" ".join(str(exc).split()))[:500]
