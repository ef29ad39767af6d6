"""The request log's database as the serving process sees it: the driver, and nothing more.

SQLAlchemy and Alembic cost a serving process about 30 MB of resident memory and, per
batch, a layer of adaptation between the event loop and the driver; the writer needs
neither. So the writer talks to the driver directly: SQLite through the standard
``sqlite3`` module on one thread of its own (one hop per batch; the loop never waits on
the file) in multi-row ``INSERT``s (``_SQLiteInserts``), PostgreSQL through ``asyncpg``
with a whole batch as one ``jsonb`` parameter that the server unpacks
(``jsonb_array_elements``): the router serializes it in C (``orjson``), a quarter of the
CPU of ``COPY``'s per-value encoding for the same server time, in one round trip and
without a transaction to open (one statement is atomic).

It reads the schema version with plain SQL and, when the database is not at ``HEAD``,
runs the Alembic upgrade in a child process (``python -m router.requestlog.migrations upgrade``),
so that memory is given back when the child exits. ``schema.py`` stays the one
definition of the tables, the migrations and the queries; tests keep the columns and
types here in step with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import os
import re
import sqlite3
import sys
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import chain
from operator import itemgetter
from pathlib import Path
from typing import Any, Literal, Protocol
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

import orjson

# The newest revision this version ships (a test keeps it in step with versions/).
HEAD = "0007"

# A row starts with the values that most rows of a batch have in common, then has its
# own. SQLite binds the shared ones once per statement (``_SQLiteInserts``), where a
# bound value costs its writer 250 (a number) to 800 (text, which SQLite copies)
# instructions: most requests of a batch share their route, endpoint, operation,
# stream flag, status, client key and number of attempts.
REQUEST_SHARED = ("route", "endpoint", "operation", "stream", "status", "key_name", "attempts")
REQUEST_COLUMNS = (
    "ts", "request_id", "latency_ms", "ttft_ms", "prompt_tokens", "completion_tokens", "cost",
    "attempt_duration_ms", "attempt_ttft_ms", "hedges", "reasoning_tokens", "cached_tokens",
    "cache_write_tokens", "error", "output_error",
)  # fmt: skip
# Of ``attempt_rows``: the attempts that are not a request's one attempt that served it,
# which its request's row carries (``attempt_*``, revision 0005). Few: they share nothing.
ATTEMPT_COLUMNS = (
    "ts", "request_id", "route", "endpoint", "status", "duration_ms", "ttft_ms", "reason",
    "hedged",
)  # fmt: skip
# Columns that are at these values in most rows come last, and a row may end before
# them: the values it leaves out are these (SQL for both backends). A bound value costs
# the SQLite writer about 400 instructions; leaving these seven out when they are at
# their defaults saves about 1,900 per request and attempt, writer and loop together.
DEFAULTS = {
    "hedges": "0", "reasoning_tokens": "0", "cached_tokens": "0", "cache_write_tokens": "0",
    "error": "NULL", "output_error": "NULL", "reason": "NULL", "hedged": "FALSE",
}  # fmt: skip
# Rows carry ``ts`` as Unix seconds (SQLite keeps them so, PostgreSQL converts) and NaN
# for NULL: sqlite3 binds a float NaN as NULL directly, where None takes its adapter
# path (below), and orjson writes NaN as null.
# How PostgreSQL reads each column back out of the JSON batch; a test checks these
# against the column types in ``schema.py``.
PG_TYPES = {
    "ts": "timestamptz", "request_id": "text", "key_name": "text", "route": "text",
    "endpoint": "text", "operation": "text", "stream": "boolean", "status": "integer",
    "attempts": "integer", "hedges": "integer", "latency_ms": "float8", "ttft_ms": "float8",
    "prompt_tokens": "bigint", "completion_tokens": "bigint", "reasoning_tokens": "bigint",
    "cached_tokens": "bigint", "cache_write_tokens": "bigint", "cost": "float8",
    "error": "text", "output_error": "text", "reason": "text", "duration_ms": "float8",
    "hedged": "boolean",
    "attempt_duration_ms": "float8", "attempt_ttft_ms": "float8",
}  # fmt: skip

SQLITE_BUSY_MS = 2000  # wait this long for another writer's lock before failing the batch
PG_CONNECT_TIMEOUT_S = 5.0  # asyncpg's default is 60 s: too long to notice a dead server
PG_COMMAND_TIMEOUT_S = 30.0  # a hung server fails the batch, which is then retried
MIGRATION_TIMEOUT_S = 300.0  # the child may wait on another process's migration lock

Row = tuple[Any, ...]
# A request as the writer queues it and a store takes it: one flat tuple, which the
# event loop builds in one go and keeps until it is written. Its attempt rows come first
# (``()`` for the usual request, whose one attempt its own row carries), then its row in
# REQUEST_SHARED + REQUEST_COLUMNS order. Nested tuples (a pair of parts, and the pair
# beside the attempts) cost the loop about 2 us more per request than this, measured
# side by side on one core, for what they keep alive between batches, though callgrind
# counted next to no difference.
Record = tuple[Any, ...]
_ATTEMPT_ROWS = itemgetter(0)


def _attempts_of(records: list[Record]) -> list[Row]:
    """The attempt rows of ``records``, in order."""
    return list(chain.from_iterable(map(_ATTEMPT_ROWS, records)))


_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])  # where ``router`` is importable


class MigrationFailed(RuntimeError):
    """The upgrade child exited with an error; its last line says why."""


class DatabaseReplaced(RuntimeError):
    """The SQLite file open is no longer the one at its path (deleted, or replaced by a
    new one): what would be written to it would be lost with it."""


@dataclass(frozen=True)
class Target:
    """A ``storage.url``, parsed once: which backend, where, and what must not be logged."""

    backend: Literal["sqlite", "postgresql"]
    url: str
    safe_url: str
    secrets: tuple[str, ...] = ()
    path: str = ""  # SQLite's file
    dsn: str = ""  # PostgreSQL, as libpq and asyncpg spell it
    connect_args: dict[str, str] = field(default_factory=dict)

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text


_SCHEME = re.compile(r"^(?P<scheme>[A-Za-z][\w+.-]*)://(?P<rest>.*)$", re.DOTALL)
_SQLITE = ("sqlite", "sqlite+aiosqlite")
_POSTGRES = ("postgresql", "postgres", "postgresql+asyncpg")
_USE = "use sqlite+aiosqlite:///path/to/file.db or postgresql+asyncpg://user:pw@host/db"


def parse_target(url: str) -> Target:
    """``url`` as SQLAlchemy would read it, for the two backends we write to; else ValueError."""
    match = _SCHEME.match(url.strip())
    if match is None:
        raise ValueError(f"storage.url: not a database URL ({_USE})")
    scheme, rest = match["scheme"].lower(), match["rest"]
    if scheme in _SQLITE:
        # sqlite:///relative.db and sqlite:////absolute.db: no host, the rest is the path.
        path, _, query = rest.removeprefix("/").partition("?")
        if not rest.startswith("/") or not path:
            raise ValueError(f"storage.url: a SQLite URL names a file ({_USE})")
        if path == ":memory:" or query:
            raise ValueError(
                "storage.url: an in-memory SQLite log or URL options are not supported "
                "(a file path, or storage.url: null to turn the log off)"
            )
        return Target("sqlite", url, url, path=path)
    if scheme in _POSTGRES:
        parts = urlsplit(f"postgresql://{rest}")
        query = dict(parse_qsl(parts.query))
        # SQLAlchemy's asyncpg dialect passes ?ssl= to connect(); libpq's sslmode= stays.
        connect_args = {"ssl": query.pop("ssl")} if "ssl" in query else {}
        safe = url
        secrets: tuple[str, ...] = ()
        if parts.password:
            userinfo, _, hostinfo = parts.netloc.rpartition("@")
            hidden = f"{userinfo.partition(':')[0]}:***@{hostinfo}"
            safe = url.replace(parts.netloc, hidden, 1)
            secrets = tuple({parts.password, unquote(parts.password)})
        dsn = parts._replace(query=urlencode(query)).geturl()
        return Target("postgresql", url, safe, secrets, dsn=dsn, connect_args=connect_args)
    raise ValueError(f"storage.url: {scheme}:// is not supported ({_USE})")


class Store(Protocol):
    """One connection's worth of the operations the writer needs."""

    async def connect(self) -> None: ...

    async def revision(self) -> str | None:
        """The database's Alembic revision; None without one (a fresh database)."""

    async def insert(self, records: list[Record]) -> None:
        """The records' rows in both tables, in one transaction: all or nothing."""

    async def prune(self, cutoff: float) -> tuple[int, int]:
        """Delete rows older than ``cutoff`` (Unix seconds); how many requests and
        attempt rows went. Attempt rows go by id, up to the oldest one still kept (see
        0004); the attempts that requests carry (0005) go with their requests."""

    async def close(self) -> None:
        """Drop the connection (quietly: it may already be broken); connect() reopens."""

    async def shutdown(self) -> None:
        """Close for good."""

    def refused(self, exc: BaseException) -> bool:
        """Whether ``exc`` says the database refused the rows themselves (a value a
        column cannot hold), not the write: those rows would fail again, others need not."""

    def schema_missing(self, exc: BaseException) -> bool:
        """Whether ``exc`` says the tables are not there (the database was recreated
        empty, or the file replaced): migrate again, then write."""


def open_store(target: Target) -> Store:
    if target.backend == "sqlite":
        return SQLiteStore(target.path)
    return PostgresStore(target.dsn, target.connect_args)


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
            conn.execute("PRAGMA journal_mode=WAL")
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
        attempts = _attempts_of(records)
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


def _pg_insert(table: str, columns: tuple[str, ...], param: str, offset: int = 0) -> str:
    """``INSERT`` of the rows in the JSON array ``param``, their values from ``offset``."""

    def value(i: int, name: str) -> str:
        field = f"(e->>{offset + i})"
        if PG_TYPES[name] == "timestamptz":
            return f"to_timestamp({field}::float8)"
        if DEFAULTS.get(name, "NULL") != "NULL":  # a row that ends before it has NULL here
            return f"coalesce({field}::{PG_TYPES[name]}, {DEFAULTS[name]})"
        return f"{field}::{PG_TYPES[name]}"

    values = ", ".join(value(i, name) for i, name in enumerate(columns))
    return (
        f"INSERT INTO {table} ({', '.join(columns)}) "
        f"SELECT {values} FROM jsonb_array_elements({param}::jsonb) AS e"
    )


# Both tables in one statement (a data-modifying CTE): atomic, one round trip.
_PG_INSERT = (
    f"WITH r AS ({_pg_insert('requests', REQUEST_SHARED + REQUEST_COLUMNS, '$1', 1)}) "
    f"{_pg_insert('attempt_rows', ATTEMPT_COLUMNS, '$2')}"
)


# As on SQLite: up to the oldest attempt still kept, in id order (``ts`` has no index).
_PG_PRUNE_ATTEMPTS = (
    "DELETE FROM attempt_rows WHERE id < coalesce("
    "(SELECT id FROM attempt_rows WHERE ts >= to_timestamp($1::float8) ORDER BY id LIMIT 1), "
    "(SELECT max(id) + 1 FROM attempt_rows))"
)


class PostgresStore:
    """One ``asyncpg`` connection; a broken one is dropped and the next batch reconnects."""

    def __init__(self, dsn: str, connect_args: dict[str, str]) -> None:
        self._dsn = dsn
        self._connect_args = connect_args
        self._conn: Any = None  # asyncpg.Connection: asyncpg is imported on first use
        self._refused: tuple[type[BaseException], ...] = (orjson.JSONEncodeError,)
        self._missing: tuple[type[BaseException], ...] = ()

    async def connect(self) -> None:
        if self._conn is not None and not self._conn.is_closed():
            return
        # Imported off the loop (tens of ms); only PostgreSQL users pay for it.
        asyncpg = await asyncio.to_thread(importlib.import_module, "asyncpg")
        # SQLSTATE classes 22 (data exception: "integer out of range", a NUL in text)
        # and 23 (integrity: NULL in a NOT NULL column); orjson refuses ints past 64 bits.
        self._refused = (
            orjson.JSONEncodeError,
            asyncpg.DataError,
            asyncpg.IntegrityConstraintViolationError,
        )
        self._missing = (asyncpg.UndefinedTableError, asyncpg.UndefinedColumnError)
        self._conn = await asyncpg.connect(
            self._dsn,
            timeout=PG_CONNECT_TIMEOUT_S,
            command_timeout=PG_COMMAND_TIMEOUT_S,
            **self._connect_args,
        )

    async def revision(self) -> str | None:
        conn = self._conn
        if not await conn.fetchval("SELECT to_regclass('alembic_version') IS NOT NULL"):
            return None
        rows = await conn.fetch("SELECT version_num FROM alembic_version")
        return str(rows[0][0]) if len(rows) == 1 else None

    async def insert(self, records: list[Record]) -> None:
        attempts = _attempts_of(records)
        # The requests' JSON carries their attempt rows too (element 0, not read): most
        # are [], and copying the others out would cost the loop more than it saves.
        await self._conn.execute(
            _PG_INSERT, orjson.dumps(records).decode(), orjson.dumps(attempts).decode()
        )

    async def prune(self, cutoff: float) -> tuple[int, int]:
        conn = self._conn
        async with conn.transaction():
            requests = await conn.execute(
                "DELETE FROM requests WHERE ts < to_timestamp($1::float8)", cutoff
            )
            attempts = await conn.execute(_PG_PRUNE_ATTEMPTS, cutoff)
        # asyncpg returns the command tag: "DELETE <rows>".
        return int(requests.split()[-1]), int(attempts.split()[-1])

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None or conn.is_closed():
            return
        try:
            await conn.close(timeout=2.0)
        except Exception:
            conn.terminate()

    async def shutdown(self) -> None:
        await self.close()

    def refused(self, exc: BaseException) -> bool:
        return isinstance(exc, self._refused)

    def schema_missing(self, exc: BaseException) -> bool:
        return isinstance(exc, self._missing)


async def upgrade_in_child(target: Target, revision: str = "head") -> list[str]:
    """Run the Alembic upgrade in ``python -m router.requestlog.migrations``; the revisions it
    reports as newer than this version (a newer router migrated the database first).

    The URL goes on stdin, so a password never shows in ``ps``.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "router.requestlog.migrations",
        "upgrade",
        revision,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        async with asyncio.timeout(MIGRATION_TIMEOUT_S):
            out, err = await proc.communicate(target.url.encode() + b"\n")
    except BaseException:  # timed out, or the writer was cancelled: leave no child behind
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise
    if proc.returncode != 0:
        lines = err.decode("utf-8", "replace").strip().splitlines()
        why = lines[-1] if lines else f"exit status {proc.returncode}"
        raise MigrationFailed(target.redact(why))
    newer: list[str] = json.loads(out)["newer"]
    return newer
