"""The request log keeps writing through bad rows and a database recreated under it.

Each scenario runs on SQLite and, with ``ROUTER_TEST_POSTGRES_URL`` set, on PostgreSQL
(``url`` in conftest.py). Values a column cannot hold are the class of the first
failure (a token count past 2^63 on SQLite, past 2^31 on PostgreSQL's old ``integer``,
past 64 bits for the JSON of a batch, a NaN or infinity where NULL is not allowed);
a database without its tables is the class of the second (tables dropped, the file
deleted or replaced, the database dropped and created again).
"""

from __future__ import annotations

import asyncio
import math
import os
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from structlog.testing import capture_logs

from router.obs.metrics import Metrics
from router.requestlog.records import Usage
from router.requestlog.schema import make_engine
from router.requestlog.store import HEAD
from router.requestlog.writer import RequestLog
from tests.router.conftest import pg_admin, pg_base, run
from tests.router.test_requestlog import _alembic, make_record, scalar

INT64_MAX = 2**63 - 1


async def rows(url: str, sql: str) -> list[tuple[Any, ...]]:
    engine = make_engine(url)
    try:
        async with engine.connect() as conn:
            return [tuple(r) for r in (await conn.execute(sa.text(sql))).all()]
    finally:
        await engine.dispose()


def bad(i: int, **usage: int) -> Any:
    rec = make_record(i)
    rec.usage = Usage(**usage)
    return rec


# -- one bad row ------------------------------------------------------------------------


def test_values_no_column_holds_are_clamped_and_the_rest_of_the_batch_is_written(
    url: str,
) -> None:
    """Rows 7, 19 and 30 of a batch of 40 carry counts past what any column holds; the
    batch's other rows and every later batch are written, the three clamped, counted."""
    batch = [make_record(i) for i in range(40)]
    batch[7] = bad(7, prompt_tokens=2**63)  # one past SQLite's INTEGER
    batch[19] = bad(19, completion_tokens=2**70, cached_tokens=2**64)  # past orjson's 64 bits
    batch[30] = make_record(30)
    batch[30].latency_ms = math.inf  # NOT NULL float: orjson writes null, SQLite Inf
    batch[30].cost = math.nan
    later = [make_record(i) for i in range(40, 60)]

    async def scenario() -> RequestLog:
        with capture_logs() as logs:
            log = RequestLog(url, batch_size=40, flush_interval_s=0.05)
            await log.start(ready_timeout_s=60)
            for rec in batch:
                log.record(rec)
            assert await log.flush(timeout_s=30)
            for rec in later:
                log.record(rec)
            await log.stop()
        assert [e["outcome"] for e in logs if e["event"] == "request_log.bad_row"]
        return log

    log = run(scenario())
    assert log.bad_rows == {"clamped": 3, "dropped": 0}
    assert (log.written, log.dropped, log.state) == (60, 0, "stopped")
    assert run(scalar(url, "SELECT count(*) FROM requests")) == 60
    got = run(
        rows(
            url,
            "SELECT request_id, prompt_tokens, completion_tokens, cached_tokens, cost"
            " FROM requests WHERE request_id IN ('req-7', 'req-19') ORDER BY request_id",
        )
    )
    assert got == [
        ("req-19", 0, INT64_MAX, INT64_MAX, 0.001 * 20),
        ("req-7", INT64_MAX, 0, 0, 0.008),
    ]
    got = run(rows(url, "SELECT latency_ms, cost FROM requests WHERE request_id = 'req-30'"))
    assert got == [(0.0, 0.0)]  # not finite where NULL is not allowed: the column's zero


def test_counts_past_2_31_are_kept_exactly(url: str) -> None:
    """Counts are 64-bit on both backends (0006): no clamping below 2^63."""
    rec = bad(1, prompt_tokens=2**31, completion_tokens=2**40, reasoning_tokens=2**62)

    async def scenario() -> RequestLog:
        log = RequestLog(url)
        await log.start(ready_timeout_s=60)
        log.record(rec)
        await log.stop()
        return log

    log = run(scenario())
    assert log.bad_rows == {"clamped": 0, "dropped": 0}
    got = run(rows(url, "SELECT prompt_tokens, completion_tokens, reasoning_tokens FROM requests"))
    assert got == [(2**31, 2**40, 2**62)]


async def _refuse_request_id(url: str, request_id: str) -> None:
    """A rule an operator added: rows with this request id are refused, clamped or not."""
    engine = make_engine(url)
    try:
        async with engine.begin() as conn:
            if engine.dialect.name == "sqlite":
                await conn.execute(
                    sa.text(
                        "CREATE TRIGGER refuse BEFORE INSERT ON requests"
                        f" WHEN NEW.request_id = '{request_id}'"
                        " BEGIN SELECT RAISE(ABORT, 'refused'); END"
                    )
                )
            else:
                await conn.execute(
                    sa.text(
                        "ALTER TABLE requests ADD CONSTRAINT refuse"
                        f" CHECK (request_id <> '{request_id}')"
                    )
                )
    finally:
        await engine.dispose()


def test_a_row_refused_even_clamped_is_dropped_and_counted(url: str) -> None:
    metrics: list[Metrics] = []

    async def scenario() -> RequestLog:
        log = RequestLog(url, batch_size=25, flush_interval_s=0.05)
        await log.start(ready_timeout_s=60)
        await _refuse_request_id(url, "req-12")
        for i in range(50):
            log.record(make_record(i))
        assert await log.flush(timeout_s=30)
        metrics.append(Metrics(lambda: None, log))
        await log.stop()
        return log

    log = run(scenario())
    assert log.bad_rows == {"clamped": 0, "dropped": 1}
    assert (log.written, log.dropped) == (49, 1)
    ids = {r[0] for r in run(rows(url, "SELECT request_id FROM requests"))}
    assert ids == {f"req-{i}" for i in range(50)} - {"req-12"}
    text = metrics[0].render()[0].decode()
    assert 'router_request_log_bad_rows_total{outcome="dropped"} 1.0' in text
    assert "router_request_log_dropped_total 1.0" in text


def test_a_database_that_goes_down_mid_isolation_keeps_the_rest_queued(tmp_path: Path) -> None:
    """The halves not yet written go back to the head of the queue, in order."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'log.db'}"

    async def scenario() -> RequestLog:
        log = RequestLog(url, batch_size=8, flush_interval_s=0.05)
        await log.start(ready_timeout_s=60)
        store: Any = log._store
        real_insert = store.insert
        calls = 0

        async def insert(records: list[Any]) -> None:
            nonlocal calls
            calls += 1
            if calls == 3:  # while the refused batch is being halved: the disk is gone
                raise OSError("disk I/O error")
            await real_insert(records)

        store.insert = insert
        batch = [make_record(i) for i in range(8)]
        batch[1] = bad(1, prompt_tokens=2**64)
        for rec in batch:
            log.record(rec)
        assert await log.flush(timeout_s=30)
        await log.stop()
        return log

    log = run(scenario())
    assert (log.written, log.dropped, log.bad_rows["clamped"]) == (8, 0, 1)
    got = run(rows(url, "SELECT request_id FROM requests ORDER BY id"))
    assert sorted(r[0] for r in got) == sorted(f"req-{i}" for i in range(8))


# -- a database recreated empty ---------------------------------------------------------


async def _drop_tables(url: str) -> None:
    engine = make_engine(url)
    try:
        async with engine.begin() as conn:
            for statement in (
                "DROP VIEW attempts",
                "DROP TABLE attempt_rows",
                "DROP TABLE requests",
                "DROP TABLE alembic_version",
            ):
                await conn.execute(sa.text(statement))
            if engine.dialect.name != "sqlite":
                await conn.execute(sa.text("DROP FUNCTION attempts_insert()"))
    finally:
        await engine.dispose()


async def _write_across(log: RequestLog, change: Any, before: int, after: int) -> None:
    for i in range(before):
        log.record(make_record(i))
    assert await log.flush(timeout_s=30)
    await change()
    for i in range(before, before + after):
        log.record(make_record(i))
    assert await log.flush(timeout_s=60)


def test_tables_dropped_under_a_running_log_are_created_again(url: str) -> None:
    async def scenario() -> tuple[RequestLog, list[dict[str, Any]]]:
        with capture_logs() as logs:
            log = RequestLog(url, flush_interval_s=0.05)
            await log.start(ready_timeout_s=60)
            await _write_across(log, lambda: _drop_tables(url), 5, 7)
            await log.stop()
        return log, logs

    log, logs = run(scenario())
    assert (log.written, log.dropped) == (12, 0)
    # The rows before the drop went with the tables; none queued after it was lost.
    assert run(scalar(url, "SELECT count(*) FROM requests")) == 7
    assert run(scalar(url, "SELECT version_num FROM alembic_version")) == HEAD
    assert [e for e in logs if e["event"] == "request_log.migrated"]


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_a_sqlite_file_deleted_or_replaced_is_set_up_again(tmp_path: Path, how: str) -> None:
    path = tmp_path / "log.db"
    url = f"sqlite+aiosqlite:///{path}"

    def swap() -> None:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        if how == "replaced":
            path.write_bytes(b"")  # an empty file: SQLite reads it as an empty database

    async def change() -> None:
        await asyncio.to_thread(swap)

    async def scenario() -> RequestLog:
        log = RequestLog(url, flush_interval_s=0.05)
        await log.start(ready_timeout_s=60)
        await _write_across(log, change, 3, 4)
        await log.stop()
        return log

    log = run(scenario())
    assert (log.written, log.dropped) == (7, 0)
    assert run(scalar(url, "SELECT count(*) FROM requests")) == 4


def test_a_postgres_database_dropped_and_created_again_is_set_up_again(pg_url: str) -> None:
    base = pg_base()
    name = sa.engine.make_url(pg_url).database

    async def recreate() -> None:
        await pg_admin(base, f'DROP DATABASE "{name}" WITH (FORCE)')
        await pg_admin(base, f'CREATE DATABASE "{name}"')

    async def scenario() -> RequestLog:
        log = RequestLog(pg_url, flush_interval_s=0.05)
        await log.start(ready_timeout_s=60)
        await _write_across(log, recreate, 3, 5)
        await log.stop()
        return log

    log = run(scenario())
    assert (log.written, log.dropped) == (8, 0)
    assert run(scalar(pg_url, "SELECT count(*) FROM requests")) == 5


def test_health_says_failing_with_the_reason_until_writes_succeed(tmp_path: Path) -> None:
    folder = tmp_path / "later"
    url = f"sqlite+aiosqlite:///{folder / 'log.db'}"

    async def scenario() -> None:
        log = RequestLog(url, flush_interval_s=0.05)
        await log.start(ready_timeout_s=5)
        log.record(make_record(1))
        view = log.health()
        assert view["state"] == "failing"
        assert "unable to open" in view["last_error"]
        assert view["queued"] == 1 and view["last_error_at"]
        os.mkdir(folder)
        for _ in range(400):  # the writer's backoff starts at 50 ms
            if log.health()["state"] == "ok":
                break
            await asyncio.sleep(0.05)
        assert await log.flush(timeout_s=10)
        assert log.health()["state"] == "ok"
        assert log.health()["queued"] == 0 and log.written == 1
        await log.stop()
        assert log.health()["state"] == "stopped"

    run(scenario())


# -- the migration that made counts 64-bit -----------------------------------------------


def test_0006_downgrade_clamps_counts_and_upgrade_widens_them_again(url: str) -> None:
    async def write(prompt: int) -> None:
        log = RequestLog(url)
        await log.start(ready_timeout_s=60)
        log.record(bad(prompt, prompt_tokens=prompt))
        await log.stop()

    run(write(2**40))
    _alembic(url, "downgrade", "0005")
    assert run(scalar(url, "SELECT version_num FROM alembic_version")) == "0005"
    # PostgreSQL's integer cannot hold 2^40: the downgrade clamps rather than fails.
    want = 2**40 if url.startswith("sqlite") else 2**31 - 1
    assert run(scalar(url, "SELECT prompt_tokens FROM requests")) == want
    _alembic(url, "upgrade", "head")
    run(write(2**41))
    assert run(scalar(url, "SELECT max(prompt_tokens) FROM requests")) == 2**41
