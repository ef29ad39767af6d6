"""Databases for the request log's tests: SQLite in ``tmp_path`` always, and PostgreSQL
when ``ROUTER_TEST_POSTGRES_URL`` is set, each test in a database of its own (created
and dropped here), so runs never see each other's rows."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

T = TypeVar("T")


def run(coro: Awaitable[T], timeout: float = 60.0) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


def pg_base() -> str:
    url = os.environ.get("ROUTER_TEST_POSTGRES_URL")
    if not url:
        pytest.skip("set ROUTER_TEST_POSTGRES_URL=postgresql+asyncpg://... to run")
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+asyncpg")
    return parsed.render_as_string(hide_password=False)


async def pg_admin(base: str, statement: str) -> None:
    """Run ``statement`` outside a transaction (CREATE/DROP DATABASE)."""
    engine = create_async_engine(base, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.exec_driver_sql(statement)
    finally:
        await engine.dispose()


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for one test, dropped afterwards."""
    base = pg_base()
    name = f"router_test_{uuid.uuid4().hex[:12]}"
    run(pg_admin(base, f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(base).set(database=name).render_as_string(hide_password=False)
    finally:
        run(pg_admin(base, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'log.db'}"
    value: str = request.getfixturevalue("pg_url")
    return value
