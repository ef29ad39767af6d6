"""The request log on SQLite: the standard ``sqlite3`` module on one thread of its own (one
hop per batch; the loop never waits on the file), a batch in multi-row ``INSERT``s.

SQLAlchemy and Alembic cost a serving process about 30 MB of resident memory and, per
batch, a layer of adaptation between the event loop and the driver; the writer needs
neither, so it talks to the driver directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from operator import itemgetter
from typing import Any

from router.requestlog.rows import (
    ATTEMPT_COLUMNS,
    DEFAULTS,
    REQUEST_COLUMNS,
    REQUEST_SHARED,
    Record,
    Row,
    attempts_of,
)

SQLITE_BUSY_MS = 2000  # wait this long for another writer's lock before failing the batch


def use_wal(conn: Any, patient: bool = True) -> None:
    """Puts the database in WAL mode, unless it is already (the mode is kept in the file).

    The switch takes the file's exclusive lock, and SQLite answers "database is locked"
    at once, busy timeout or not, when another connection holds a lock just then: four
    writers opening one new file together saw it. So the mode is read first (most opens
    find WAL on), and a switch that meets a lock is tried again, ``patient``ly, within
    the busy timeout (this blocks the caller's thread: the writer's own, not a loop's).
    ``conn`` is a DB-API connection: ``sqlite3``'s, or SQLAlchemy's adapter of one."""
    deadline = time.monotonic() + SQLITE_BUSY_MS / 1000
    pause = 0.002
    while True:
        cursor = conn.cursor()
        try:
            cursor.execute("PRAGMA journal_mode")
            if str(cursor.fetchone()[0]).lower() == "wal":
                return
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if not patient or "locked" not in str(exc) or time.monotonic() + pause > deadline:
                raise
        finally:
            cursor.close()
        time.sleep(pause)
        pause = min(pause * 2, 0.1)


class DatabaseReplaced(RuntimeError):
    """The SQLite file open is no longer the one at its path (deleted, or replaced by a
    new one): what would be written to it would be lost with it."""


MAX_ROWS_PER_INSERT = 64  # past this, a bigger statement saves little per row


class _SQLiteInserts:
    """The multi-row ``INSERT``s of one table: a batch's rows that share their shared
    values and their width go as one statement per set bit of their number (120 = 64 +
    32 + 16 + 8), each prepared once and cached by the driver. Every row of a statement
    names the same parameters for the shared values (``?1``...), so they are bound once
    per statement; a row that leaves out its ``DEFAULTS`` has them as literals.

    ``executemany()`` runs its statement once per row, and each run opens and closes the
    table's and the index's cursors, and releases and retakes the GIL; one statement of
    many rows does that once: 7,300 fewer instructions per request and attempt pair
    (callgrind, batches of 120). ``OR FAIL``: a failed row stops the statement without
    the statement journal that undoing its earlier rows would need (the batch's
    transaction is rolled back whole anyway). The largest statement stays within
    SQLite's bound on parameters.
    """

    def __init__(
        self,
        table: str,
        shared: tuple[str, ...],
        columns: tuple[str, ...],
        max_params: int,
        offset: int = 0,
    ) -> None:
        """Rows have their values from ``offset`` on, the shared ones first."""
        self._head = f"INSERT OR FAIL INTO {table} ({', '.join(shared + columns)}) VALUES "
        self._shared = len(shared)
        self._columns = columns
        self._max_params = max_params
        self._shared_of = itemgetter(slice(offset, offset + len(shared)))
        self._own_of = itemgetter(slice(offset + len(shared), None))
        self._statements: dict[int, list[tuple[int, str]]] = {}

    def statements(self, width: int) -> list[tuple[int, str]]:
        """(rows, SQL) for rows of ``width`` values of their own, the most rows first."""
        found = self._statements.get(width)
        if found is None:
            k = self._shared
            shared = [f"?{j}" for j in range(1, k + 1)]
            defaults = [DEFAULTS[c] for c in self._columns[width:]]

            def row(i: int) -> str:
                own = [f"?{k + i * width + j}" for j in range(1, width + 1)]
                return f"({', '.join(shared + own + defaults)})"

            fits = (self._max_params - k) // width
            largest = min(MAX_ROWS_PER_INSERT, fits).bit_length() - 1
            sizes = [1 << n for n in range(largest, -1, -1)]
            found = [(n, self._head + ", ".join(map(row, range(n)))) for n in sizes]
            self._statements[width] = found
        return found

    def run(self, conn: sqlite3.Connection, rows: list[Row]) -> None:
        # Rows of one shared part and width keep their order (and so do the attempts of
        # one request, which share a width).
        for shared, own in _by_shared(rows, self._shared_of, self._own_of):
            for same in _by_width(own):
                width = len(same[0])
                done = 0
                for size, sql in self.statements(width):
                    while len(same) - done >= size:
                        values = list(shared)
                        for row in same[done : done + size]:
                            values += row  # copied in C: no bytecode per value
                        conn.execute(sql, values)
                        done += size


def _by_shared(
    rows: list[Row], shared_of: Callable[[Row], Row], own_of: Callable[[Row], Row]
) -> Iterable[tuple[Row, list[Row]]]:
    """The own parts of ``rows`` by their shared part, in order within each. A batch
    has one shared part more often than not, which is found without bytecode per row.
    A dictionary, not a sort: a shared NaN (NULL) beside text does not compare."""
    if not rows:
        return ()
    keys = list(map(shared_of, rows))
    first = keys[0]
    if all(map(first.__eq__, keys)):
        return ((first, list(map(own_of, rows))),)
    groups: dict[Row, list[Row]] = {}
    for key, row in zip(keys, rows, strict=True):
        group = groups.get(key)
        if group is None:
            groups[key] = [own_of(row)]
        else:
            group.append(own_of(row))
    return groups.items()


def _by_width(rows: list[Row]) -> Iterable[list[Row]]:
    """``rows`` by their width, in order within each (one width, most often)."""
    if len(set(map(len, rows))) == 1:
        return (rows,)
    widths: dict[int, list[Row]] = {}
    for row in rows:
        widths.setdefault(len(row), []).append(row)
    return widths.values()


# sqlite3 binds exact ints, floats and strings directly, but sends every other value,
# None included, through its adapter lookup, which for None ends in a failed
# ``__conform__`` lookup: an AttributeError raised and swallowed per NULL. An adapter
# registered for None is found by the first dictionary lookup, but that still builds a
# key tuple and calls Python: 1,400 instructions per NULL, which is why rows carry NaN
# instead (see REQUEST_COLUMNS). The adapter stays for a None that comes through all
# the same (process-wide; None still binds as NULL).
sqlite3.register_adapter(type(None), lambda value: value)

# Attempts go up to the oldest one still kept, in id order (their ``ts`` has no index:
# revision 0004), a scan that stops there. A ``ts`` written as text, which only an older
# router does (during a rolling upgrade), is compared as text: see ``_prune``.
_SQLITE_PRUNE_ATTEMPTS = (
    "DELETE FROM attempt_rows WHERE id < coalesce((SELECT id FROM attempt_rows"
    " WHERE ts >= CASE typeof(ts) WHEN 'text' THEN ?2 ELSE ?1 END ORDER BY id LIMIT 1),"
    " (SELECT max(id) + 1 FROM attempt_rows))"
)


class SQLiteStore:
    """A ``sqlite3`` connection that lives on one thread of its own.

    Every operation is one hop to that thread, with its whole transaction inside, so a
    lock held by another process (``busy_timeout``) stalls the writer, never the loop.
    """

    def __init__(self, path: str) -> None:
        self._path = path
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="request-log-sqlite")
        self._conn: sqlite3.Connection | None = None  # touched only on self._thread
        self._inserts: tuple[_SQLiteInserts, _SQLiteInserts] | None = None
        self._open = False  # the loop's view of _conn, so a connected pass costs no hop
        self._file: tuple[int, int] | None = None  # (device, inode) of the file open

    async def _call(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    async def connect(self) -> None:
        if not self._open:
            await self._call(self._connect)
            self._open = True

    async def revision(self) -> str | None:
        result: str | None = await self._call(self._revision)
        return result

    async def insert(self, records: list[Record]) -> None:
        await self._call(self._insert, records)

    async def prune(self, cutoff: float) -> tuple[int, int]:
        result: tuple[int, int] = await self._call(self._prune, cutoff)
        return result

    async def close(self) -> None:
        self._open = False
        await self._call(self._close)

    async def shutdown(self) -> None:
        await self.close()
        self._thread.shutdown(wait=False)

    def refused(self, exc: BaseException) -> bool:
        # sqlite3 raises OverflowError binding an int past 64 bits, IntegrityError for a
        # NULL in a NOT NULL column, UnicodeEncodeError for a lone surrogate, and
        # ProgrammingError "Error binding parameter" for a type it does not bind.
        if isinstance(exc, OverflowError | sqlite3.IntegrityError | sqlite3.DataError):
            return True
        if isinstance(exc, UnicodeEncodeError):
            return True
        return isinstance(exc, sqlite3.ProgrammingError) and "binding" in str(exc)

    def schema_missing(self, exc: BaseException) -> bool:
        if isinstance(exc, DatabaseReplaced):
            return True
        text = str(exc)
        return isinstance(exc, sqlite3.OperationalError) and (
            "no such table" in text or "has no column" in text
        )

    # -- on the thread ----------------------------------------------------------------

    def _connect(self) -> None:
        if self._conn is not None:
            return
        # isolation_level=None: we BEGIN ourselves; the module's implicit transactions
        # would not cover a batch as one unit.
        conn = sqlite3.connect(self._path, timeout=SQLITE_BUSY_MS / 1000, isolation_level=None)
        try:
            # WAL: readers (usage queries) never block the writer, and other processes'
            # writers queue on the lock instead of failing at once. NORMAL: safe with WAL,
            # an fsync per checkpoint rather than per batch.
            use_wal(conn)
            conn.execute("PRAGMA synchronous=NORMAL")
        except BaseException:
            conn.close()
            raise
        params = conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
        self._inserts = (
            _SQLiteInserts("requests", REQUEST_SHARED, REQUEST_COLUMNS, params, offset=1),
            _SQLiteInserts("attempt_rows", (), ATTEMPT_COLUMNS, params),
        )
        st = os.stat(self._path)
        self._file = (st.st_dev, st.st_ino)
        self._conn = conn

    def _check_file(self) -> None:
        """Raise DatabaseReplaced if the file at the path is not the one open: SQLite
        would go on writing to a deleted file. One ``stat`` per batch."""
        try:
            st = os.stat(self._path)
        except FileNotFoundError:
            raise DatabaseReplaced(f"{self._path} was deleted") from None
        if (st.st_dev, st.st_ino) != self._file:
            raise DatabaseReplaced(f"{self._path} was replaced by another file")

    def _revision(self) -> str | None:
        assert self._conn is not None
        conn = self._conn
        found = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'alembic_version'"
        ).fetchone()
        if found is None:
            return None
        rows = conn.execute("SELECT version_num FROM alembic_version").fetchall()
        return str(rows[0][0]) if len(rows) == 1 else None

    def _insert(self, records: list[Record]) -> None:
        assert self._conn is not None and self._inserts is not None
        conn = self._conn
        self._check_file()
        attempts = attempts_of(records)
        conn.execute("BEGIN IMMEDIATE")  # take the write lock now, not halfway through
        try:
            self._inserts[0].run(conn, records)
            self._inserts[1].run(conn, attempts)
            conn.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise

    def _prune(self, cutoff: float) -> tuple[int, int]:
        assert self._conn is not None
        conn = self._conn
        # An older router writes ``ts`` as SQLAlchemy's text, which sorts after every
        # number: those rows have a range of the index to themselves.
        text = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(cutoff))
        conn.execute("BEGIN IMMEDIATE")
        try:
            requests = conn.execute("DELETE FROM requests WHERE ts < ?", (cutoff,)).rowcount
            requests += conn.execute(
                "DELETE FROM requests WHERE ts >= '' AND ts < ?", (text,)
            ).rowcount
            attempts = conn.execute(_SQLITE_PRUNE_ATTEMPTS, (cutoff, text)).rowcount
            conn.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise
        return requests, attempts

    def _rollback(self) -> None:
        if self._conn is not None and self._conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("ROLLBACK")

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        self._inserts = None
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                conn.close()
