"""The request log on PostgreSQL: one ``asyncpg`` connection, a whole batch as one ``jsonb``
parameter that the server unpacks (``jsonb_array_elements``).

The router serializes the batch in C (``orjson``), a quarter of the CPU of ``COPY``'s
per-value encoding for the same server time, in one round trip and without a transaction
to open (one statement is atomic).
"""

from __future__ import annotations

import asyncio
import importlib
from typing import Any

import orjson

from router.requestlog.rows import (
    ATTEMPT_COLUMNS,
    DEFAULTS,
    PG_TYPES,
    REQUEST_COLUMNS,
    REQUEST_SHARED,
    Record,
    attempts_of,
)

PG_CONNECT_TIMEOUT_S = 5.0  # asyncpg's default is 60 s: too long to notice a dead server
PG_COMMAND_TIMEOUT_S = 30.0  # a hung server fails the batch, which is then retried


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
        attempts = attempts_of(records)
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
