"""The request log's schema at head, and how a database gets there.

The tables below are what the writer inserts into and ``/admin/usage`` reads; Alembic
revisions in ``versions/`` are the frozen history that builds them (they never import
this module, and a test checks that the two agree). Alembic is configured from code,
not from an ``alembic.ini``, so an installed router upgrades an old database in place
wherever it runs. Several processes may start together against one database, so the
upgrade runs under a lock: a PostgreSQL advisory lock, or SQLite's ``BEGIN IMMEDIATE``.

Only the upgrade child (``python -m router.requestlog.migrations``) and ``/admin/usage`` import
this module; the serving path writes through ``store.py`` (``sqlite.py``, ``postgres.py``)
and never loads SQLAlchemy.
Indexes are the ones a query of ours uses: every index is paid for on each insert.
On SQLite, ``ts`` is Unix seconds (REAL, revision 0004), which ``UnixTime`` turns into
and out of datetimes, so queries read the same on both backends.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from router.requestlog.postgres import PG_CONNECT_TIMEOUT_S
from router.requestlog.sqlite import SQLITE_BUSY_MS, use_wal
from router.requestlog.store import HEAD

MIGRATIONS = Path(__file__).parent / "migrations"
MIGRATION_LOCK_KEY = 0x726F75746572  # b"router": PostgreSQL advisory lock around upgrades

# 64-bit ids on servers; SQLite only autoincrements an INTEGER PRIMARY KEY.
_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
# Token counts, which upstreams report: 64-bit (0006). SQLite's INTEGER always was.
_COUNT = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


class UnixTime(sa.TypeDecorator[datetime]):
    """An aware datetime kept as Unix seconds in a REAL: SQLite's ``ts`` since 0004.

    A float binds, compares and indexes for a fraction of the text that SQLAlchemy's
    ``DateTime`` stores on SQLite, and the writer has it already (``time.time()``).
    """

    impl = sa.Float
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> float | None:
        return None if value is None else value.timestamp()

    def process_result_value(self, value: float | None, dialect: Any) -> datetime | None:
        return None if value is None else datetime.fromtimestamp(value, UTC)


_TS = sa.DateTime(timezone=True).with_variant(UnixTime(), "sqlite")

# The schema at Alembic's head. Revisions never import these: they are frozen history.
METADATA = sa.MetaData()
REQUESTS = sa.Table(
    "requests",
    METADATA,
    sa.Column("id", _ID, primary_key=True, autoincrement=True),
    sa.Column("ts", _TS, nullable=False, index=True),
    sa.Column("request_id", sa.String(), nullable=False),
    sa.Column("key_name", sa.String(), nullable=True),
    sa.Column("route", sa.String(), nullable=True),
    sa.Column("endpoint", sa.String(), nullable=True),
    sa.Column("operation", sa.String(), nullable=False),
    sa.Column("stream", sa.Boolean(), nullable=False),
    sa.Column("status", sa.Integer(), nullable=False),
    sa.Column("attempts", sa.Integer(), nullable=False),
    sa.Column("hedges", sa.Integer(), nullable=False),
    sa.Column("latency_ms", sa.Float(), nullable=False),
    sa.Column("ttft_ms", sa.Float(), nullable=True),
    sa.Column("prompt_tokens", _COUNT, nullable=False),
    sa.Column("completion_tokens", _COUNT, nullable=False),
    sa.Column("reasoning_tokens", _COUNT, nullable=False),
    sa.Column("cached_tokens", _COUNT, nullable=False),
    sa.Column("cache_write_tokens", _COUNT, nullable=False, server_default="0"),
    sa.Column("cost", sa.Float(), nullable=False),
    sa.Column("error", sa.String(), nullable=True),
    # Why an answer that came back 200 was broken (0007): empty, not_json, stream_broken...
    sa.Column("output_error", sa.String(), nullable=True),
    # Set when the request's one attempt served it: that attempt has no row of its own
    # (revision 0005), and these are its figures.
    sa.Column("attempt_duration_ms", sa.Float(), nullable=True),
    sa.Column("attempt_ttft_ms", sa.Float(), nullable=True),
    # The conversation, as prompt-cache affinity named it (0008); NULL without affinity.
    sa.Column("session", sa.String(), nullable=True),
)
# The attempts that are not a request's one attempt that served it. No index on ts:
# pruned by id (sqlite.py, postgres.py), and joined to requests on (ts, request_id).
ATTEMPT_ROWS = sa.Table(
    "attempt_rows",
    METADATA,
    sa.Column("id", _ID, primary_key=True, autoincrement=True),
    sa.Column("ts", _TS, nullable=False),
    sa.Column("request_id", sa.String(), nullable=False),
    sa.Column("route", sa.String(), nullable=False),
    sa.Column("endpoint", sa.String(), nullable=False),
    sa.Column("status", sa.Integer(), nullable=True),
    sa.Column("reason", sa.String(), nullable=True),
    sa.Column("duration_ms", sa.Float(), nullable=False),
    sa.Column("ttft_ms", sa.Float(), nullable=True),
    sa.Column("hedged", sa.Boolean(), nullable=False),
)
# Every attempt, one row each, as readers query them: the view over ``attempt_rows`` and
# the requests that carry their one attempt (0005); ``id`` is NULL for the latter. Not
# in METADATA: the migrations create it, and it is never a table to create or compare.
ATTEMPTS = sa.Table(
    "attempts",
    sa.MetaData(),
    *(sa.Column(c.name, c.type, nullable=True) for c in ATTEMPT_ROWS.columns),
)


# The async driver for URLs written without one, as libpq and sqlite3 users write them.
ASYNC_DRIVERS = {
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
    "sqlite": "sqlite+aiosqlite",
}


def parse_url(url: str) -> URL:
    """``url`` as SQLAlchemy reads it, with an async driver; ValueError if unusable."""
    try:
        parsed = make_url(url)
    except sa.exc.ArgumentError as exc:
        raise ValueError(f"storage.url: {exc}") from exc
    driver = ASYNC_DRIVERS.get(parsed.drivername)
    return parsed.set(drivername=driver) if driver else parsed


def make_engine(url: str) -> AsyncEngine:
    """An async engine for ``url``; SQLite gets WAL, a busy timeout and real transactions."""
    parsed = parse_url(url)
    kwargs: dict[str, Any] = {"hide_parameters": True}  # client data stays out of errors
    if parsed.get_backend_name() != "sqlite":
        kwargs["pool_pre_ping"] = True  # a restarted server leaves dead pooled connections
    if parsed.drivername == "postgresql+asyncpg":
        kwargs["connect_args"] = {"timeout": PG_CONNECT_TIMEOUT_S}
    try:
        engine = create_async_engine(parsed, **kwargs)
    except (sa.exc.ArgumentError, sa.exc.InvalidRequestError, ImportError) as exc:
        raise ValueError(f"storage.url: {exc}") from exc
    if engine.dialect.name == "sqlite":
        _sqlite_setup(engine)
    return engine


def _sqlite_setup(engine: AsyncEngine) -> None:
    # pysqlite's own transaction handling never BEGINs before DDL, which would make a
    # migration half-apply; the SQLAlchemy recipe is to turn it off and BEGIN ourselves.
    sync_engine = engine.sync_engine

    @event.listens_for(sync_engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_MS}")
        # WAL: readers (usage queries) never block the writer, and other processes'
        # writers queue on the lock instead of failing at once. Not patient: this may
        # run on an event loop's thread, which must not sleep.
        use_wal(dbapi_conn, patient=False)
        cursor.execute("PRAGMA synchronous=NORMAL")  # safe with WAL; fsync per checkpoint
        cursor.close()

    @event.listens_for(sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get("router_write_lock", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def _current_revision(connection: Connection) -> str | None:
    """The database's revision, read with plain SQL (None: no table, or not one head)."""
    if not sa.inspect(connection).has_table("alembic_version"):
        return None
    rows = connection.execute(sa.text("SELECT version_num FROM alembic_version")).fetchall()
    return str(rows[0][0]) if len(rows) == 1 else None


def alembic_config() -> Any:
    """Alembic's configuration, from code: the migrations ship inside the package."""
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def _upgrade_sync(connection: Connection, revision: str) -> list[str]:
    if connection.dialect.name == "postgresql":
        connection.execute(
            sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY}
        )
    if revision == "head" and _current_revision(connection) == HEAD:
        return []  # up to date: the common case at every start
    from alembic import command
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    cfg = alembic_config()
    script = ScriptDirectory.from_config(cfg)
    known = {rev.revision for rev in script.walk_revisions()}
    current = MigrationContext.configure(connection).get_current_heads()
    newer = [rev for rev in current if rev not in known]
    if newer:
        return newer
    cfg.attributes["connection"] = connection
    command.upgrade(cfg, revision)
    return []


async def migrate(engine: AsyncEngine, revision: str = "head") -> list[str]:
    """Upgrade the database to ``revision`` in one transaction, under the migration lock.

    Returns the database's revisions that this version does not know: a newer router
    has migrated it (a rolling upgrade). Revisions only add, so this one still writes.
    """
    locked = engine.execution_options(router_write_lock=True)
    async with locked.begin() as conn:
        return await conn.run_sync(_upgrade_sync, revision)
