"""The request log: batched writes, usage totals, migrations, and a database that fails.

Every scenario runs on SQLite in ``tmp_path``; the same ones run on PostgreSQL when
``ROUTER_TEST_POSTGRES_URL`` is set, each test in a database of its own (created and
dropped here), so runs never see each other's rows. The writer never loads SQLAlchemy;
these tests read what it wrote through SQLAlchemy, the schema's one definition.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy.engine import make_url
from structlog.testing import capture_logs

from router.requestlog import postgres, schema, sqlite
from router.requestlog import rows as layout
from router.requestlog.records import AttemptRecord, RequestRecord, Usage
from router.requestlog.rows import NULL
from router.requestlog.schema import (
    ATTEMPT_ROWS,
    ATTEMPTS,
    METADATA,
    REQUESTS,
    make_engine,
    migrate,
)
from router.requestlog.store import HEAD, parse_target
from router.requestlog.usage import parse_time, usage
from router.requestlog.writer import RequestLog, RequestLogDisabled

T = TypeVar("T")
DAY = 86400.0
NOW = time.time()


def run(coro: Awaitable[T], timeout: float = 60.0) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


# -- databases: the ``url`` and ``pg_url`` fixtures are in conftest.py ------------------


async def scalar(url: str, sql: str) -> Any:
    engine = make_engine(url)
    try:
        async with engine.connect() as conn:
            return (await conn.execute(sa.text(sql))).scalar()
    finally:
        await engine.dispose()


# -- records --------------------------------------------------------------------------


def make_record(
    i: int,
    *,
    route: str = "demo",
    endpoint: str | None = "fast",
    key: str | None = "team-a",
    status: int = 200,
    error: str | None = None,
    started: float = NOW,
    attempts: list[AttemptRecord] | None = None,
) -> RequestRecord:
    if attempts is None:
        attempts = [AttemptRecord(route, endpoint or "fast", status, None, 12.5, ttft_ms=3.0)]
    return RequestRecord(
        request_id=f"req-{i}",
        operation="chat",
        key_name=key,
        route=route,
        endpoint=endpoint,
        status=status,
        stream=i % 2 == 0,
        started=started,
        latency_ms=100.0 + i,
        ttft_ms=20.0,
        usage=Usage(
            prompt_tokens=10 + i,
            completion_tokens=5 + i,
            reasoning_tokens=i % 3,
            cached_tokens=i % 4,
            cache_write_tokens=1,
        ),
        cost=0.001 * (i + 1),
        error=error,
        attempts=attempts,
    )


def mixed_records(n: int) -> list[RequestRecord]:
    """Two routes, three endpoints, two keys, two days, some failures and failovers."""
    records = []
    for i in range(n):
        route = "demo" if i % 3 else "other"
        endpoint = ("fast", "slow", "flaky")[i % 3]
        started = NOW - (DAY if i % 5 == 0 else 0.0)
        if i % 7 == 0:  # every endpoint failed
            rec = make_record(
                i,
                route=route,
                endpoint=None,
                status=502,
                error="AllAttemptsFailed",
                started=started,
                attempts=[
                    AttemptRecord(route, "fast", 500, "http_5xx", 5.0),
                    AttemptRecord(route, "slow", None, "timeout", 7.0),
                ],
            )
            rec.usage = None
            rec.cost = 0.0
        elif i % 4 == 0:  # failed over, then served
            rec = make_record(
                i,
                route=route,
                endpoint=endpoint,
                started=started,
                key=None,
                attempts=[
                    AttemptRecord(route, "other-ep", 503, "http_5xx", 5.0),
                    AttemptRecord(route, endpoint, 200, None, 9.0, ttft_ms=2.0),
                ],
            )
        else:
            rec = make_record(
                i,
                route=route,
                endpoint=endpoint,
                started=started,
                key="team-a" if i % 2 else "team-b",
            )
            if i % 5 == 0:  # came back 200 but broken (revision 0007)
                rec.output_error = "empty" if i % 10 else "not_json"
        records.append(rec)
    return records


# USD per million a cached token saves, per (route, endpoint); "flaky" has no cache price.
SAVINGS = {("other", "fast"): 2.7, ("demo", "slow"): 0.45}


def expected_usage(records: list[RequestRecord], group_by: str) -> dict[Any, dict[str, Any]]:
    out: dict[Any, dict[str, Any]] = {}
    for rec in records:
        key = {
            "route": rec.route,
            "endpoint": rec.endpoint,
            "key": rec.key_name,
            "day": datetime.fromtimestamp(rec.started, UTC).strftime("%Y-%m-%d"),
        }[group_by]
        g = out.setdefault(
            key,
            {
                "requests": 0,
                "errors": 0,
                "output_errors": 0,
                "prompt_tokens": 0,
                "completion_tokens": 0,
                "reasoning_tokens": 0,
                "cached_tokens": 0,
                "cache_write_tokens": 0,
                "cost": 0.0,
                "cache_saved_usd": 0.0,
            },
        )
        u = rec.usage or Usage()
        g["cache_saved_usd"] += u.cached_tokens * SAVINGS.get((rec.route, rec.endpoint), 0) / 1e6
        g["requests"] += 1
        g["errors"] += rec.status >= 400 or rec.error is not None
        g["output_errors"] += rec.output_error is not None
        g["prompt_tokens"] += u.prompt_tokens
        g["completion_tokens"] += u.completion_tokens
        g["reasoning_tokens"] += u.reasoning_tokens
        g["cached_tokens"] += u.cached_tokens
        g["cache_write_tokens"] += u.cache_write_tokens
        g["cost"] += rec.cost
    for g in out.values():
        g["cache_hit_rate"] = (
            g["cached_tokens"] / g["prompt_tokens"] if g["prompt_tokens"] else None
        )
    return out


def assert_same(got: dict[str, Any], want: dict[str, Any]) -> None:
    floats = ("cost", "cache_saved_usd", "cache_hit_rate")
    assert {k: v for k, v in got.items() if k not in ("key", *floats)} == {
        k: v for k, v in want.items() if k not in floats
    }
    assert got["cost"] == pytest.approx(want["cost"])
    assert got["cache_saved_usd"] == pytest.approx(want["cache_saved_usd"], rel=1e-6)
    if want["cache_hit_rate"] is None:
        assert got["cache_hit_rate"] is None
    else:
        assert got["cache_hit_rate"] == pytest.approx(want["cache_hit_rate"], abs=1e-6)


# -- writing and reading --------------------------------------------------------------


def test_writes_batches_and_usage_matches(url: str) -> None:
    records = mixed_records(60)

    async def scenario() -> None:
        log = RequestLog(url, batch_size=7, flush_interval_s=0.05)
        await log.start()
        assert log.migrated
        for rec in records:
            log.record(rec)
        await log.stop()
        assert (log.written, log.dropped, log.queue_depth) == (60, 0, 0)

        assert await scalar(url, "SELECT count(*) FROM requests") == 60
        n_attempts = sum(len(r.attempts) for r in records)
        assert await scalar(url, "SELECT count(*) FROM attempts") == n_attempts
        assert await scalar(url, "SELECT sum(cache_write_tokens) FROM requests") == sum(
            1 for r in records if r.usage
        )

        reader = RequestLog(url)
        await reader.start()
        engine = make_engine(url)
        try:
            since, until = datetime.fromtimestamp(NOW - 2 * DAY, UTC), datetime.now(UTC)
            for group_by in ("route", "endpoint", "key", "day"):
                got = await reader.usage(
                    since=since, until=until, group_by=group_by, savings=SAVINGS
                )
                want = expected_usage(records, group_by)
                assert got["group_by"] == group_by
                assert {g["key"] for g in got["groups"]} == set(want)
                for g in got["groups"]:
                    assert_same(g, want[g["key"]])
                assert got["total"]["requests"] == 60
                assert got["total"]["errors"] == sum(w["errors"] for w in want.values())
                assert got["total"]["prompt_tokens"] == sum(
                    r.usage.prompt_tokens for r in records if r.usage
                )
                assert got["total"]["cost"] == pytest.approx(sum(r.cost for r in records))
                assert got["total"]["cache_saved_usd"] == pytest.approx(
                    sum(w["cache_saved_usd"] for w in want.values()), rel=1e-6
                )
                assert got["total"]["cached_tokens"] == sum(
                    r.usage.cached_tokens for r in records if r.usage
                )
            days = await usage(engine, since=since, until=until, group_by="day")
            assert [g["key"] for g in days["groups"]] == sorted(g["key"] for g in days["groups"])
            # The window is half-open and excludes what is outside it.
            recent = await reader.usage(
                since=datetime.fromtimestamp(NOW - DAY / 2, UTC), until=until, group_by="route"
            )
            assert recent["total"]["requests"] == sum(1 for r in records if r.started == NOW)
            with pytest.raises(ValueError, match="group_by must be one of"):
                await reader.usage(since=since, until=until, group_by="model")
        finally:
            await reader.stop()
            await engine.dispose()

    run(scenario())


def test_full_batches_go_at_once_and_the_rest_when_due(tmp_path: Path) -> None:
    """A remainder waits for the interval (or a flush): a handful of rows in their own
    transaction would cost more per row than the rows themselves."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'log.db'}"

    async def scenario() -> None:
        log = RequestLog(url, batch_size=10, flush_interval_s=3600)
        await log.start(ready_timeout_s=60)
        try:
            assert await log.flush()  # the first pass, which writes all that waited, is over
            for i in range(25):
                log.record(make_record(i))
            while log.written < 20:
                log._drained.clear()
                await asyncio.wait_for(log._drained.wait(), 10)
            await asyncio.sleep(0.2)
            assert (log.written, log.queue_depth) == (20, 5)
            assert await log.flush(timeout_s=10)
            assert (log.written, log.queue_depth) == (25, 0)
        finally:
            await log.stop()
        assert await scalar(url, "SELECT count(*) FROM requests") == 25

    run(scenario())


def test_client_text_that_no_database_stores_is_made_storable(url: str) -> None:
    """A NUL or a lone surrogate in a client-chosen name must not poison its batch."""
    odd = ["nul\x00here", "lone\ud800surrogate", "caf\u00e9", "x" * 1000]

    async def scenario() -> None:
        log = RequestLog(url, flush_interval_s=0.01)
        await log.start(ready_timeout_s=60)
        for i, route in enumerate(odd):
            rec = make_record(i, route=route)
            rec.request_id = route  # a client's x-request-id is as free as a name
            log.record(rec)
        assert await log.flush(timeout_s=30)
        await log.stop()
        assert (log.written, log.dropped) == (4, 0)
        engine = make_engine(url)
        try:
            async with engine.connect() as conn:
                rows = await conn.execute(sa.text("SELECT route FROM requests ORDER BY id"))
                routes = list(rows.scalars())
                rows = await conn.execute(sa.text("SELECT request_id FROM attempts ORDER BY id"))
                ids = list(rows.scalars())
        finally:
            await engine.dispose()
        assert routes == ["nul\ufffdhere", "lone?surrogate", "caf\u00e9", "x" * 256]
        assert ids == routes

    run(scenario())


def test_batch_size_wakes_the_writer_before_the_interval(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'log.db'}"

    async def scenario() -> None:
        log = RequestLog(url, batch_size=5, flush_interval_s=3600)
        wake = log._wake  # white box: what the writer waits on besides the interval
        for i in range(4):
            log.record(make_record(i))
        assert not wake.is_set()
        log.record(make_record(4))
        assert wake.is_set()
        await log.start()
        try:
            while log.written < 5:  # the writer runs a pass at start, then on wake-ups
                log._drained.clear()
                await asyncio.wait_for(log._drained.wait(), 10)
        finally:
            await log.stop()

    run(scenario())


def test_schema_at_head_matches_the_table_definitions(url: str) -> None:
    async def scenario() -> None:
        engine = make_engine(url)
        try:
            await migrate(engine)
            async with engine.connect() as conn:
                diff = await conn.run_sync(
                    lambda c: compare_metadata(MigrationContext.configure(c), METADATA)
                )
            assert diff == []
        finally:
            await engine.dispose()

    run(scenario())


async def index_names(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(
                lambda c: {
                    str(ix["name"])
                    for table in sa.inspect(c).get_table_names()  # attempts: a view since 0005
                    if table in ("requests", "attempts", "attempt_rows")
                    for ix in sa.inspect(c).get_indexes(table)
                }
            )
    finally:
        await engine.dispose()


_OLD_ROW = (
    "INSERT INTO requests (ts, request_id, key_name, route, endpoint, operation, stream,"
    " status, attempts, hedges, latency_ms, ttft_ms, prompt_tokens, completion_tokens,"
    " reasoning_tokens, cached_tokens, cost, error) VALUES (:ts, 'old-1', 'team-a', 'demo',"
    " 'fast', 'chat', false, 200, 1, 0, 50.0, 10.0, 7, 3, 0, 0, 0.5, NULL)"
)
_OLD_ATTEMPT = (
    "INSERT INTO attempts (ts, request_id, route, endpoint, status, reason, duration_ms,"
    " ttft_ms, hedged) VALUES (:ts2, 'old-1', 'demo', 'fast', 200, NULL, 40.0, 10.0, false)"
)


@pytest.mark.parametrize("old", ["0001", "0002", "0003"])
def test_upgrade_from_an_old_schema_keeps_old_rows(url: str, old: str) -> None:
    """A database left by an older router is upgraded in place at start, by the child;
    on SQLite its text times become Unix seconds and read back as the same times."""
    then = datetime.now(UTC).replace(microsecond=123456) - timedelta(hours=1)

    async def scenario() -> None:
        engine = make_engine(url)
        try:
            await migrate(engine, old)
            # SQLite's rows as the old writer stored them (SQLAlchemy's text), and as
            # sqlite3 stores a datetime parameter (ISO with an offset).
            sqlite = engine.dialect.name == "sqlite"
            times = {
                "ts": then.strftime("%Y-%m-%d %H:%M:%S.%f") if sqlite else then,
                "ts2": then.isoformat(" ") if sqlite else then,
            }
            async with engine.begin() as conn:
                await conn.execute(sa.text(_OLD_ROW), times)
                await conn.execute(sa.text(_OLD_ATTEMPT), times)
        finally:
            await engine.dispose()
        assert await scalar(url, "SELECT version_num FROM alembic_version") == old
        assert "ix_attempts_ts" in await index_names(url) or old == "0001"

        log = RequestLog(url, flush_interval_s=0.05)
        await log.start(ready_timeout_s=60)
        log.record(make_record(1))
        await log.stop()
        assert log.migrated and log.upgraded and log.written == 1
        assert await scalar(url, "SELECT version_num FROM alembic_version") == HEAD
        assert await index_names(url) == {"ix_requests_ts"}
        assert await scalar(url, "SELECT count(*) FROM requests") == 2
        assert (
            await scalar(url, "SELECT cache_write_tokens FROM requests WHERE request_id = 'old-1'")
            == 0
        )
        assert (
            await scalar(url, "SELECT cache_write_tokens FROM requests WHERE request_id = 'req-1'")
            == 1
        )
        engine = make_engine(url)
        try:
            async with engine.connect() as conn:
                old_ts = (
                    sa.select(REQUESTS.c.ts, ATTEMPTS.c.ts)
                    .join_from(REQUESTS, ATTEMPTS, REQUESTS.c.request_id == ATTEMPTS.c.request_id)
                    .where(REQUESTS.c.request_id == "old-1")
                )
                assert (await conn.execute(old_ts)).one() == (then, then)
            since = then - timedelta(minutes=1)
            got = await usage(engine, since=since, until=datetime.now(UTC), group_by="day")
            assert got["total"]["requests"] == 2
        finally:
            await engine.dispose()

    run(scenario())


def _alembic(url: str, command: str, revision: str) -> None:
    """Run Alembic's ``command`` (upgrade, downgrade) on ``url`` in the migration lock."""
    from alembic import command as commands

    def go(connection: sa.Connection) -> None:
        cfg = schema.alembic_config()
        cfg.attributes["connection"] = connection
        getattr(commands, command)(cfg, revision)

    async def scenario() -> None:
        engine = make_engine(url).execution_options(router_write_lock=True)
        try:
            async with engine.begin() as conn:
                await conn.run_sync(go)
        finally:
            await engine.dispose()

    run(scenario())


def test_downgrade_to_0003_gives_the_old_times_back(url: str) -> None:
    then = datetime(2025, 1, 31, 12, 0, 0, 654321, tzinfo=UTC)

    async def write() -> None:
        log = RequestLog(url)
        await log.start(ready_timeout_s=60)
        log.record(make_record(1, started=then.timestamp()))
        await log.stop()

    run(write())
    _alembic(url, "downgrade", "0003")
    assert run(index_names(url)) == {"ix_requests_ts", "ix_attempts_ts"}
    # The attempt the request's row carried (0005) is a row of its own again.
    assert run(scalar(url, "SELECT duration_ms FROM attempts")) == 12.5
    old = sa.Table("requests", sa.MetaData(), sa.Column("ts", sa.DateTime(timezone=True)))

    async def read() -> datetime:
        engine = make_engine(url)
        try:
            async with engine.connect() as conn:
                value: datetime = (await conn.execute(sa.select(old.c.ts))).scalar_one()
                return value
        finally:
            await engine.dispose()

    assert run(read()).replace(tzinfo=UTC) == then  # SQLite's text has no offset: UTC
    _alembic(url, "upgrade", "head")
    assert run(index_names(url)) == {"ix_requests_ts"}


def _holding_the_write_lock(path: Path) -> sqlite3.Connection:
    """A connection to a new database file that holds its write lock (RESERVED): the
    moment another connection's switch to WAL meets "database is locked" at once, its
    busy timeout notwithstanding."""
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN IMMEDIATE")
    return holder


def test_the_switch_to_wal_waits_out_another_writers_lock(tmp_path: Path) -> None:
    """Four writers opening one new file together: one met the lock as another switched
    the file to WAL (a CI run's failure). The switch is tried again until the lock is
    let go."""
    path = tmp_path / "log.db"
    holder = _holding_the_write_lock(path)
    conn = sqlite3.connect(path, timeout=5, isolation_level=None, check_same_thread=False)
    asked: list[str] = []
    retried = threading.Event()

    def traced(statement: str) -> None:
        asked.append(statement)
        if asked.count("PRAGMA journal_mode") == 2:  # the first switch failed: asked again
            retried.set()

    conn.set_trace_callback(traced)
    failed: list[BaseException] = []

    def switch() -> None:
        try:
            sqlite.use_wal(conn)
        except BaseException as exc:
            failed.append(exc)

    worker = threading.Thread(target=switch)
    worker.start()
    try:
        assert retried.wait(5), f"no second try: {asked} {failed}"
    finally:
        holder.execute("ROLLBACK")
        worker.join(5)
    assert not worker.is_alive() and not failed
    conn.set_trace_callback(None)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()
    holder.close()


def test_an_impatient_switch_to_wal_fails_at_once(tmp_path: Path) -> None:
    """On an event loop's thread (SQLAlchemy's connect hook) there is no waiting."""
    holder = _holding_the_write_lock(tmp_path / "log.db")
    conn = sqlite3.connect(tmp_path / "log.db", timeout=5, isolation_level=None)
    started = time.monotonic()
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        sqlite.use_wal(conn, patient=False)
    assert time.monotonic() - started < 2
    conn.close()
    holder.execute("ROLLBACK")
    holder.close()


def test_workers_starting_together_migrate_once(url: str) -> None:
    """``--workers N`` starts N writers on one fresh database at the same moment."""

    async def scenario() -> None:
        logs = [RequestLog(url) for _ in range(4)]
        await asyncio.gather(*(log.start(ready_timeout_s=60) for log in logs))
        assert all(log.migrated for log in logs)
        for i, log in enumerate(logs):
            log.record(make_record(i))
        await asyncio.gather(*(log.stop() for log in logs))
        assert [log.written for log in logs] == [1, 1, 1, 1]
        assert await scalar(url, "SELECT count(*) FROM requests") == 4
        assert await scalar(url, "SELECT count(*) FROM alembic_version") == 1

    run(scenario())


def test_retention_prunes_old_rows_at_start(url: str) -> None:
    async def scenario() -> None:
        log = RequestLog(url, retention_days=30)
        await log.start()
        log.record(make_record(1, started=NOW - 3 * DAY))
        log.record(make_record(2))
        await log.stop()
        assert await scalar(url, "SELECT count(*) FROM attempts") == 2

        log = RequestLog(url, retention_days=1)
        await log.start()
        await log.stop()
        assert await scalar(url, "SELECT request_id FROM requests") == "req-2"
        assert await scalar(url, "SELECT count(*) FROM attempts") == 1

    run(scenario())


async def request_ids(url: str, table: str) -> list[str]:
    engine = make_engine(url)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(sa.text(f"SELECT request_id FROM {table} ORDER BY id"))
            return list(rows.scalars())
    finally:
        await engine.dispose()


def test_attempts_are_pruned_up_to_the_oldest_one_kept(url: str) -> None:
    """Attempt rows go by id (their ts has no index): never one within retention; an old
    one written after a newer one goes when a later prune gets past that one. The one
    attempt a request's row carries goes with it."""
    ages = [3, 3, 0, 3, 0]  # days, in the order written

    def failed_over(i: int, age: int) -> RequestRecord:
        return make_record(
            i,
            started=NOW - age * DAY,
            attempts=[
                AttemptRecord("demo", "slow", 503, "http_5xx", 5.0),
                AttemptRecord("demo", "fast", 200, None, 9.0),
            ],
        )

    async def scenario() -> None:
        log = RequestLog(url)
        await log.start(ready_timeout_s=60)
        for i, age in enumerate(ages):
            log.record(failed_over(i, age))
        log.record(make_record(8))
        log.record(make_record(9, started=NOW - 3 * DAY))
        await log.stop()
        assert await scalar(url, "SELECT count(*) FROM attempts") == 2 * len(ages) + 2
        log = RequestLog(url, retention_days=1)
        await log.start(ready_timeout_s=60)
        await log.stop()
        assert await request_ids(url, "requests") == ["req-2", "req-4", "req-8"]
        kept = ["req-2", "req-2", "req-3", "req-3", "req-4", "req-4"]
        assert await request_ids(url, "attempt_rows") == kept
        got = await scalar(url, "SELECT count(*) FROM attempts WHERE request_id = 'req-8'")
        assert got == 1
        assert await scalar(url, "SELECT count(*) FROM attempts") == len(kept) + 1

    run(scenario())


# What a router at revision 0004 wrote with: the same statements, into ``attempts``.
_OLD_REQUEST_COLUMNS = (
    "ts", "request_id", "key_name", "route", "endpoint", "operation", "stream", "status",
    "attempts", "latency_ms", "ttft_ms", "prompt_tokens", "completion_tokens", "cost",
    "hedges", "reasoning_tokens", "cached_tokens", "cache_write_tokens", "error",
)  # fmt: skip
_OLD_PG_INSERT = (
    f"WITH r AS ({postgres._pg_insert('requests', _OLD_REQUEST_COLUMNS, '$1')}) "
    f"{postgres._pg_insert('attempts', layout.ATTEMPT_COLUMNS, '$2')}"
)


def test_an_older_router_writes_through_the_view_and_leaves_pruning(url: str) -> None:
    """During a rolling upgrade, a router at 0004 still inserts into ``attempts``: its
    rows land in ``attempt_rows``. Its prune fails on the view and deletes nothing."""
    old_request = (NOW, "old-1", NULL, "demo", "fast", "chat", 0, 200, 2, 50.0, NULL, 7, 3, 0.5)
    old_attempts = [
        (NOW, "old-1", "demo", "slow", 503, 5.0, NULL, "http_5xx", 0),
        (NOW, "old-1", "demo", "fast", 200, 40.0, 10.0),
    ]
    target = parse_target(url)

    async def old_router() -> None:
        if target.backend == "sqlite":
            with contextlib.closing(sqlite3.connect(target.path, isolation_level=None)) as conn:
                conn.execute("BEGIN IMMEDIATE")
                sqlite._SQLiteInserts("requests", (), _OLD_REQUEST_COLUMNS, 999).run(
                    conn, [old_request]
                )
                sqlite._SQLiteInserts("attempts", (), layout.ATTEMPT_COLUMNS, 999).run(
                    conn, old_attempts
                )
                conn.execute("COMMIT")
                prune = sqlite._SQLITE_PRUNE_ATTEMPTS.replace("attempt_rows", "attempts")
                with pytest.raises(sqlite3.OperationalError, match="view"):
                    conn.execute(prune, (NOW + DAY, "9999"))
            return
        pg = await asyncpg.connect(target.dsn)
        try:
            await pg.execute(
                _OLD_PG_INSERT,
                json.dumps([old_request]).replace("NaN", "null"),
                json.dumps(old_attempts).replace("NaN", "null"),
            )
            prune = postgres._PG_PRUNE_ATTEMPTS.replace("attempt_rows", "attempts")
            with pytest.raises(asyncpg.PostgresError, match="view"):
                await pg.execute(prune, NOW + DAY)
        finally:
            await pg.close()

    async def scenario() -> None:
        log = RequestLog(url)
        await log.start(ready_timeout_s=60)
        log.record(make_record(1))
        await log.stop()
        await old_router()
        assert await request_ids(url, "attempt_rows") == ["old-1", "old-1"]
        assert await scalar(url, "SELECT count(*) FROM attempts") == 3
        got = await scalar(url, "SELECT sum(duration_ms) FROM attempts WHERE request_id = 'old-1'")
        assert got == 45.0
        assert await scalar(url, "SELECT count(*) FROM requests") == 2

    run(scenario())


def test_sqlite_prunes_text_times_an_older_router_wrote(tmp_path: Path) -> None:
    """In a rolling upgrade, an older router still writes ``ts`` as text: retention
    prunes those rows too, and an old one does not hold back the attempts' cut."""
    path = tmp_path / "log.db"
    url = f"sqlite+aiosqlite:///{path}"

    def text(t: float) -> str:
        return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")

    async def scenario() -> None:
        log = RequestLog(url)
        await log.start(ready_timeout_s=60)
        log.record(make_record(0, started=NOW - 3 * DAY))
        await log.stop()
        with contextlib.closing(sqlite3.connect(path)) as conn, conn:
            for rid, t in (("text-old", NOW - 3 * DAY), ("text-new", NOW)):
                conn.execute(
                    "INSERT INTO requests (ts, request_id, operation, stream, status, attempts,"
                    " hedges, latency_ms, prompt_tokens, completion_tokens, reasoning_tokens,"
                    " cached_tokens, cost) VALUES (?, ?, 'chat', 0, 200, 1, 0, 1.0, 0, 0, 0, 0, 0)",
                    (text(t), rid),
                )
                conn.execute(
                    "INSERT INTO attempts (ts, request_id, route, endpoint, duration_ms, hedged)"
                    " VALUES (?, ?, 'demo', 'fast', 1.0, 0)",
                    (text(t), rid),
                )
        assert await scalar(url, "SELECT count(*) FROM requests WHERE typeof(ts) = 'text'") == 2
        log = RequestLog(url, retention_days=1)
        log.record(make_record(5))
        await log.start(ready_timeout_s=60)
        await log.stop()
        assert await request_ids(url, "requests") == ["text-new", "req-5"]
        # The older router's attempt went through the view into a row of its own.
        assert await request_ids(url, "attempt_rows") == ["text-new"]
        assert sorted(await request_ids(url, "attempts")) == ["req-5", "text-new"]

    run(scenario())


def test_names_are_made_storable_once_and_kept_within_a_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Names from the configuration are cleaned once and looked up after; the cache of
    them starts over when full, and every row still gets its own name."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'log.db'}"
    monkeypatch.setattr(layout, "MAX_NAMES", 8)
    routes = [f"route-{i}" for i in range(20)] + ["nul\x00here"] * 2

    async def scenario() -> None:
        log = RequestLog(url)
        for i, route in enumerate(routes):
            log.record(make_record(i, route=route))
            assert len(log._names) <= 8 + 7  # a record has seven names at most
        await log.start(ready_timeout_s=60)
        await log.stop()
        assert log.written == len(routes)
        engine = make_engine(url)
        try:
            async with engine.connect() as conn:
                query = sa.text("SELECT r.route, a.route FROM requests r JOIN attempts a"
                                " ON a.request_id = r.request_id ORDER BY r.id")  # fmt: skip
                got = (await conn.execute(query)).all()
        finally:
            await engine.dispose()
        want = [r.replace("\x00", "\ufffd") for r in routes]
        assert got == [(r, r) for r in want]

    run(scenario())


# -- the queue and a failing database -------------------------------------------------


def test_bounded_queue_drops_the_oldest_and_counts(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'log.db'}"
    drops: list[int] = []

    async def scenario() -> None:
        log = RequestLog(url, queue_size=10, on_drop=drops.append)
        for i in range(25):  # not started: nothing drains
            log.record(make_record(i))
        assert (log.queue_depth, log.dropped, sum(drops)) == (10, 15, 15)
        await log.start()
        await log.stop()
        assert log.written == 10
        engine = make_engine(url)
        try:
            async with engine.connect() as conn:
                ids = (await conn.execute(sa.text("SELECT request_id FROM requests"))).scalars()
                assert sorted(ids) == sorted(f"req-{i}" for i in range(15, 25))
        finally:
            await engine.dispose()
        log.record(make_record(99))  # after stop: nothing will write it, so it counts
        assert log.dropped == 16

    run(scenario())


def test_logging_off_is_a_no_op() -> None:
    async def scenario() -> None:
        log = RequestLog(None)
        await log.start()
        log.record(make_record(1))
        assert (log.enabled, log.queue_depth, log.dropped, log.written) == (False, 0, 0, 0)
        with pytest.raises(RequestLogDisabled):
            await log.usage(since=datetime.now(UTC), until=datetime.now(UTC), group_by="route")
        await log.stop()

    run(scenario())


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def _record_many(log: RequestLog, records: list[RequestRecord]) -> float:
    """Record all; the slowest single call in seconds."""
    slowest = 0.0
    for rec in records:
        t = time.perf_counter()
        log.record(rec)
        slowest = max(slowest, time.perf_counter() - t)
    return slowest


def test_unreachable_server_never_blocks_or_raises_and_keeps_secrets() -> None:
    url = f"postgresql+asyncpg://router:s3cret-pw@127.0.0.1:{_closed_port()}/nowhere"

    async def scenario() -> None:
        with capture_logs() as logs:
            log = RequestLog(url, queue_size=20, flush_interval_s=0.01)
            await log.start(ready_timeout_s=10)
            assert not log.migrated
            slowest = _record_many(log, [make_record(i) for i in range(50)])
            assert slowest < 0.25  # O(1) appends; a DB round trip here would take seconds
            assert (log.queue_depth, log.dropped) == (20, 30)
            assert not await log.flush(timeout_s=0.2)
            t = time.monotonic()
            await log.stop(timeout_s=0.5)
            assert time.monotonic() - t < 5
        assert (log.written, log.dropped, log.queue_depth) == (0, 50, 0)
        events = [e["event"] for e in logs]
        assert "request_log.write_failed" in events
        assert "request_log.lost_on_stop" in events
        assert "s3cret-pw" not in repr(logs)

    run(scenario())


def test_sqlite_directory_missing_then_created(tmp_path: Path) -> None:
    folder = tmp_path / "later"
    url = f"sqlite+aiosqlite:///{folder / 'log.db'}"

    async def scenario() -> None:
        with capture_logs() as logs:
            log = RequestLog(url, flush_interval_s=0.01)
            await log.start()
            assert not log.migrated
            _record_many(log, [make_record(i) for i in range(5)])
            assert not await log.flush(timeout_s=0.1)
            folder.mkdir()
            assert await log.flush(timeout_s=30)
            await log.stop()
        assert (log.written, log.dropped) == (5, 0)
        assert await scalar(url, "SELECT count(*) FROM requests") == 5
        events = [e["event"] for e in logs]
        assert "request_log.write_failed" in events  # (info events may be filtered by LOG_LEVEL)

    run(scenario())


def test_sqlite_locked_by_another_process_delays_but_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "log.db"
    url = f"sqlite+aiosqlite:///{path}"
    monkeypatch.setattr(sqlite, "SQLITE_BUSY_MS", 20)  # give up on the lock fast: fail, retry

    async def scenario() -> None:
        with capture_logs() as logs:
            log = RequestLog(url, flush_interval_s=0.01)
            await log.start()
            assert log.migrated and await log.flush()
            other = sqlite3.connect(path, isolation_level=None)
            try:
                other.execute("BEGIN EXCLUSIVE")  # what a backup or a long query would hold
                slowest = _record_many(log, [make_record(i) for i in range(200)])
                assert slowest < 0.25  # O(1) appends; a DB round trip here would take seconds
                assert not await log.flush(timeout_s=0.3)
                assert log.written == 0
            finally:
                other.execute("ROLLBACK")
                other.close()
            assert await log.flush(timeout_s=30)
            await log.stop()
        assert (log.written, log.dropped) == (200, 0)
        failures = [e for e in logs if e["event"] == "request_log.write_failed"]
        assert failures and "locked" in failures[0]["detail"]
        assert "INSERT" not in failures[0]["detail"]  # the driver's words, not the statement

    run(scenario())


class _Proxy:
    """A TCP proxy in front of PostgreSQL that can take the database away and back."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = 0
        self.server: asyncio.Server | None = None
        self.links: set[asyncio.StreamWriter] = set()
        self.tasks: set[asyncio.Task[None]] = set()

    async def up(self) -> None:
        self.server = await asyncio.start_server(self._link, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def down(self) -> None:
        assert self.server is not None
        self.server.close()
        for w in list(self.links):
            w.transport.abort()
        await self.server.wait_closed()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def _link(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self.links |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.transport.abort()
                self.links.discard(dst)

        for t in (pipe(reader, up_writer), pipe(up_reader, writer)):
            task = asyncio.ensure_future(t)
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)


def test_postgres_goes_away_mid_run_and_comes_back(pg_url: str) -> None:
    parsed = make_url(pg_url)

    async def scenario() -> None:
        proxy = _Proxy(parsed.host or "127.0.0.1", parsed.port or 5432)
        await proxy.up()
        url = parsed.set(host="127.0.0.1", port=proxy.port).render_as_string(False)
        log = RequestLog(url, queue_size=20, flush_interval_s=0.01)
        try:
            await log.start()
            _record_many(log, [make_record(i) for i in range(10)])
            assert await log.flush(timeout_s=10)
            assert log.written == 10

            await proxy.down()
            slowest = _record_many(log, [make_record(i) for i in range(100, 130)])
            assert slowest < 0.25  # O(1) appends; a DB round trip here would take seconds
            assert not await log.flush(timeout_s=0.3)
            assert log.dropped == 10 and log.queue_depth == 20

            await proxy.up()
            assert await log.flush(timeout_s=30)
            assert (log.written, log.dropped) == (30, 10)
        finally:
            await log.stop()
            await proxy.down()
        engine = make_engine(pg_url)
        try:
            async with engine.connect() as conn:
                ids = set(
                    (await conn.execute(sa.text("SELECT request_id FROM requests"))).scalars()
                )
        finally:
            await engine.dispose()
        # The oldest of the outage were dropped; the newest twenty were kept and written.
        assert ids == {f"req-{i}" for i in [*range(10), *range(110, 130)]}

    run(scenario())


def _children() -> set[int]:
    """This process's live child processes, from /proc."""
    pids: set[int] = set()
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        with contextlib.suppress(OSError):
            pids |= {int(p) for p in (task / "children").read_text().split()}
    return pids


def test_stop_during_an_upgrade_leaves_no_child_behind(pg_url: str) -> None:
    """The upgrade child waits on another process's migration lock; stop() ends it."""

    async def scenario() -> None:
        libpq = make_url(pg_url).set(drivername="postgresql").render_as_string(False)
        holder = await asyncpg.connect(libpq)
        try:
            async with holder.transaction():
                await holder.execute("SELECT pg_advisory_xact_lock($1)", schema.MIGRATION_LOCK_KEY)
                before = _children()
                log = RequestLog(pg_url)
                await log.start(ready_timeout_s=3)
                waiting = _children() - before
                assert not log.migrated and waiting  # the child is blocked on the lock
                log.record(make_record(1))
                await log.stop(timeout_s=1)
                assert not waiting & _children()
                assert (log.written, log.dropped) == (0, 1)
        finally:
            await holder.close()
        assert await scalar(pg_url, "SELECT to_regclass('alembic_version') IS NULL")

    run(scenario())


# -- parse_time -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("2025-01-31T12:00:00Z", datetime(2025, 1, 31, 12, tzinfo=UTC)),
        ("2025-01-31T14:00:00+02:00", datetime(2025, 1, 31, 12, tzinfo=UTC)),
        ("2025-01-31T12:00:00", datetime(2025, 1, 31, 12, tzinfo=UTC)),
        ("2025-01-31", datetime(2025, 1, 31, tzinfo=UTC)),
        ("1738324800", datetime(2025, 1, 31, 12, tzinfo=UTC)),
        ("1738324800.5", datetime(2025, 1, 31, 12, 0, 0, 500000, tzinfo=UTC)),
    ],
)
def test_parse_time_accepts_iso_and_unix_seconds(text: str, want: datetime) -> None:
    assert parse_time(text, datetime.now(UTC)) == want


def test_parse_time_defaults_and_errors() -> None:
    default = datetime(2020, 1, 1, tzinfo=UTC)
    assert parse_time(None, default) is default
    assert parse_time("  ", default) is default
    assert parse_time(None, 1577836800) == default
    for bad in ("yesterday", "nan", "inf", "1e300", "2025-13-01"):
        with pytest.raises(ValueError, match="time"):
            parse_time(bad, default)


def test_urls_without_an_async_driver_get_one_and_bad_urls_fail_early() -> None:
    assert schema.parse_url("postgresql://u:pw@db/log").drivername == "postgresql+asyncpg"
    assert schema.parse_url("sqlite:///router.db").drivername == "sqlite+aiosqlite"
    for bad in ("not a url", "nosuchdb://host/db", "sqlite://", "sqlite:///:memory:"):
        with pytest.raises(ValueError, match=r"storage\.url"):
            RequestLog(bad)
    with pytest.raises(ValueError, match=r"storage\.url"):
        schema.make_engine("nosuchdb://host/db")


@pytest.mark.parametrize(
    ("url", "backend", "where"),
    [
        ("sqlite:///router.db", "sqlite", "router.db"),
        ("sqlite+aiosqlite:////var/lib/router/log.db", "sqlite", "/var/lib/router/log.db"),
        ("postgres://u@db:5433/log", "postgresql", "postgresql://u@db:5433/log"),
        ("postgresql+asyncpg://u:p%40ss@db/log", "postgresql", "postgresql://u:p%40ss@db/log"),
    ],
)
def test_urls_are_read_as_sqlalchemy_reads_them(url: str, backend: str, where: str) -> None:
    """The writer parses ``storage.url`` without SQLAlchemy; the child and usage with it."""
    target = parse_target(url)
    parsed = schema.parse_url(url)
    assert target.backend == backend == parsed.get_backend_name()
    assert (target.path if backend == "sqlite" else target.dsn) == where
    if backend == "sqlite":
        assert target.path == parsed.database
    assert target.safe_url == make_url(url).render_as_string(hide_password=True)


def test_a_password_never_reaches_the_safe_url_or_the_logs() -> None:
    target = parse_target("postgresql://router:s3cret%2Fpw@db:5432/log?sslmode=require")
    assert target.safe_url == "postgresql://router:***@db:5432/log?sslmode=require"
    assert (
        target.redact("auth failed for s3cret/pw and s3cret%2Fpw") == "auth failed for *** and ***"
    )
    assert parse_target("postgresql://db/log?ssl=require").connect_args == {"ssl": "require"}


def test_head_constant_matches_the_shipped_revisions() -> None:
    """``store.HEAD`` lets a start skip Alembic; it must name the newest revision."""
    from alembic.script import ScriptDirectory

    assert ScriptDirectory.from_config(schema.alembic_config()).get_current_head() == HEAD


def test_the_writers_columns_are_the_tables_columns() -> None:
    """``store`` names the columns it inserts; ``schema`` is the one definition."""
    tables = (
        (REQUESTS, layout.REQUEST_SHARED, layout.REQUEST_COLUMNS),
        (ATTEMPT_ROWS, (), layout.ATTEMPT_COLUMNS),
    )
    for table, shared, columns in tables:
        names = sorted(c.name for c in table.columns if c.name != "id")
        assert names == sorted(shared + columns)
        # A row may end before its defaulted columns: they come last.
        tail = [c for c in columns if c in layout.DEFAULTS]
        assert tail == list(columns[len(columns) - len(tail) :])
        for name in tail:
            assert table.c[name].nullable == (layout.DEFAULTS[name] == "NULL"), name
    kinds = {
        sa.String: "text",
        sa.Integer: "integer",
        sa.BigInteger: "bigint",
        sa.Float: "float8",
        sa.Boolean: "boolean",
        sa.DateTime: "timestamptz",
    }
    for column in [*REQUESTS.columns, *ATTEMPT_ROWS.columns]:
        if column.name != "id":
            assert layout.PG_TYPES[column.name] == kinds[type(column.type)], column.name


@given(st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(2100, 1, 1)))
def test_sqlite_times_round_trip_as_unix_seconds(when: datetime) -> None:
    """SQLite's ``ts`` is a REAL of Unix seconds; queries bind and read datetimes."""
    when = when.replace(tzinfo=UTC)
    unix = schema.UnixTime()
    seconds = unix.process_bind_param(when, None)
    assert seconds == when.timestamp()
    assert unix.process_result_value(seconds, None) == when


_SHARED = ("kind", "code")  # a table of attempts with two shared columns in front
_KINDS = [("demo", 200), ("demo", 200), ("other", 200), (NULL, 502)]  # NULL beside text


@given(
    rows=st.integers(min_value=0, max_value=300),
    max_params=st.integers(min_value=len(_SHARED) + len(layout.ATTEMPT_COLUMNS), max_value=2000),
)
def test_multi_row_inserts_write_any_batch_within_the_parameter_bound(
    rows: int, max_params: int
) -> None:
    """Any number of rows goes in whole, each with its shared values, in order among the
    rows that share them and their width, in statements SQLite accepts."""
    inserts = sqlite._SQLiteInserts("attempts", _SHARED, layout.ATTEMPT_COLUMNS, max_params)
    for width in (7, 9):
        statements = inserts.statements(width)
        assert all(len(_SHARED) + size * width <= max_params for size, _ in statements)
        assert statements[-1][0] == 1  # so that every remainder has a statement
    conn = sqlite3.connect(":memory:")
    conn.execute(f"CREATE TABLE attempts ({', '.join(_SHARED + layout.ATTEMPT_COLUMNS)})")
    conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, max_params)
    # Every third row with its tail (reason, hedged), the others without.
    batch: list[layout.Row] = [
        (
            *_KINDS[i % len(_KINDS)],
            *(float(i), f"r{i}", "demo", "a", 200, 1.0, NULL, *(("timeout", 1) if i % 3 else ())),
        )
        for i in range(rows)
    ]
    inserts.run(conn, batch)
    got = conn.execute("SELECT kind, code, ts, request_id, reason, hedged FROM attempts")
    got = got.fetchall()

    def kind(i: int) -> tuple[Any, ...]:
        k = _KINDS[i % len(_KINDS)]
        return (None if k[0] is NULL else k[0], k[1])

    want = [
        (*kind(i), float(i), f"r{i}", "timeout" if i % 3 else None, i % 3 and 1)
        for i in range(rows)
    ]
    assert sorted(got, key=str) == sorted(want, key=str)
    for k in {kind(i) for i in range(rows)}:
        for tail in (None, "timeout"):
            assert [r for r in got if r[:2] == k and r[4] == tail] == [
                r for r in want if r[:2] == k and r[4] == tail
            ]


def test_every_column_round_trips(url: str) -> None:
    """What is written is what is read back, NULLs as NULLs, through SQLAlchemy."""
    started = int(NOW) + 0.5  # whole microseconds in binary: no rounding on the way
    when = datetime.fromtimestamp(started, UTC)
    full = make_record(
        1,
        started=started,
        key="team-a",
        error="UpstreamTimeout",
        attempts=[
            AttemptRecord("other", "slow", None, "timeout", 7.0, hedged=True),
            AttemptRecord("demo", "fast", 200, None, 9.0, ttft_ms=2.5),
        ],
    )
    full.hedges = 1
    full.output_error = "not_json"
    full.session = "k:conv-\x00é"  # a client's, made storable (no NUL for PostgreSQL)
    bare = make_record(2, key=None, endpoint=None, status=502, started=started, attempts=[])
    bare.usage, bare.ttft_ms, bare.cost = None, None, 0.0
    # Served by its one attempt: the request's row carries it (revision 0005).
    plain = make_record(3, started=started)
    # One attempt too, but it is not what the row says: the client left mid-stream.
    gone = make_record(4, status=499, started=started)
    gone.attempts[0].status = 200

    async def scenario() -> None:
        log = RequestLog(url)
        await log.start(ready_timeout_s=60)
        for rec in (full, bare, plain, gone):
            log.record(rec)
        await log.stop()
        engine = make_engine(url)
        try:
            async with engine.connect() as conn:
                # Rows of a width go together (layout.DEFAULTS): order by request.
                by = (REQUESTS.c.request_id, REQUESTS.c.id)
                requests = (await conn.execute(sa.select(REQUESTS).order_by(*by))).all()
                by = (ATTEMPTS.c.request_id, ATTEMPTS.c.id)
                attempts = (await conn.execute(sa.select(ATTEMPTS).order_by(*by))).all()
        finally:
            await engine.dispose()
        u, u3, u4 = full.usage, plain.usage, gone.usage
        assert u is not None and u3 is not None and u4 is not None
        assert [tuple(r)[1:] for r in requests] == [
            (when, "req-1", "team-a", "demo", "fast", "chat",
             False, 200, 2, 1, 101.0, 20.0, u.prompt_tokens, u.completion_tokens,
             u.reasoning_tokens, u.cached_tokens, u.cache_write_tokens, full.cost,
             "UpstreamTimeout", "not_json", None, None, "k:conv-\ufffdé"),
            (when, "req-2", None, "demo", None, "chat",
             True, 502, 0, 0, 102.0, None, 0, 0, 0, 0, 0, 0.0, None, None, None, None, None),
            (when, "req-3", "team-a", "demo", "fast", "chat",
             False, 200, 1, 0, 103.0, 20.0, 13, 8, 0, 3, 1, plain.cost, None, None, 12.5, 3.0,
             None),
            (when, "req-4", "team-a", "demo", "fast", "chat",
             True, 499, 1, 0, 104.0, 20.0, 14, 9, 1, 0, 1, gone.cost, None, None, None, None,
             None),
        ]  # fmt: skip
        # The view: every attempt, the one a request's row carries with a NULL id.
        assert [(r.id is None, *tuple(r)[1:]) for r in attempts] == [
            (False, when, "req-1", "other", "slow", None, "timeout", 7.0,
             None, True),
            (False, when, "req-1", "demo", "fast", 200, None, 9.0, 2.5,
             False),
            (True, when, "req-3", "demo", "fast", 200, None, 12.5, 3.0, False),
            (False, when, "req-4", "demo", "fast", 200, None, 12.5, 3.0, False),
        ]  # fmt: skip

    run(scenario())


# -- the serving process and the upgrade child ----------------------------------------

_SERVE = """
import asyncio, json, sys
from router.requestlog.records import AttemptRecord, RequestRecord
from router.requestlog.writer import RequestLog

async def main():
    log = RequestLog(sys.argv[1])
    await log.start(ready_timeout_s=60)
    log.record(RequestRecord("r-1", "chat", None, route="demo", endpoint="a", status=200,
                             attempts=[AttemptRecord("demo", "a", 200, None, 1.0)]))
    await log.stop()
    loaded = sorted({m.split(".")[0] for m in sys.modules} & {"sqlalchemy", "alembic"})
    print(json.dumps({"loaded": loaded, "upgraded": log.upgraded, "written": log.written}))

asyncio.run(main())
"""


def test_the_serving_process_never_loads_sqlalchemy(url: str) -> None:
    """The upgrade runs in a child once; later starts only read the revision."""

    def serve() -> dict[str, Any]:
        out = subprocess.run(
            [sys.executable, "-c", _SERVE, url],
            capture_output=True,
            timeout=120,
            check=True,
            cwd=Path(__file__).parents[2],
        )
        # structlog's default output is stdout too: the answer is the last line.
        result: dict[str, Any] = json.loads(out.stdout.splitlines()[-1])
        return result

    first, second = serve(), serve()
    assert first == {"loaded": [], "upgraded": True, "written": 1}
    assert second == {"loaded": [], "upgraded": False, "written": 1}
    assert run(scalar(url, "SELECT count(*) FROM requests")) == 2
    assert run(scalar(url, "SELECT version_num FROM alembic_version")) == HEAD


def test_a_failed_upgrade_is_logged_and_retried(tmp_path: Path) -> None:
    """A table in the way: the child's error is logged, nothing is written, no crash."""
    path = tmp_path / "log.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE requests (whatever TEXT)")  # not ours, no alembic_version
    url = f"sqlite+aiosqlite:///{path}"

    async def scenario() -> None:
        with capture_logs() as logs:
            log = RequestLog(url, flush_interval_s=0.01)
            await log.start(ready_timeout_s=60)
            log.record(make_record(1))
            assert not await log.flush(timeout_s=0.5)
            await log.stop(timeout_s=0.5)
        assert (log.migrated, log.written, log.dropped) == (False, 0, 1)
        failures = [e for e in logs if e["event"] == "request_log.write_failed"]
        assert failures[0]["error"] == "MigrationFailed"
        assert "already exists" in failures[0]["detail"]

    run(scenario())


def test_a_newer_schema_is_reported_and_still_written(url: str) -> None:
    """A rolling upgrade: a newer router migrated first; revisions only add, so write."""

    async def scenario() -> None:
        engine = make_engine(url)
        try:
            await migrate(engine)
            async with engine.begin() as conn:
                await conn.execute(sa.text("UPDATE alembic_version SET version_num = '0999'"))
        finally:
            await engine.dispose()
        with capture_logs() as logs:
            log = RequestLog(url)
            await log.start(ready_timeout_s=60)
            log.record(make_record(1))
            await log.stop()
        assert (log.migrated, log.written) == (True, 1)
        newer = [e for e in logs if e["event"] == "request_log.newer_schema"]
        assert newer and newer[0]["revisions"] == ["0999"]
        assert await scalar(url, "SELECT version_num FROM alembic_version") == "0999"

    run(scenario())
