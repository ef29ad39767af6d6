"""The request log's database as the serving process sees it: which one (``Target``), the
operations the writer needs of it (``Store``, one module per backend: ``sqlite.py``,
``postgres.py``), and the schema upgrade.

The writer talks to the driver directly: the serving process never imports SQLAlchemy.
It reads the schema version with plain SQL and, when the database is not at ``HEAD``,
runs the Alembic upgrade in a child process (``python -m router.requestlog.migrations upgrade``),
so that memory is given back when the child exits. ``schema.py`` stays the one
definition of the tables, the migrations and the queries.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

from router.requestlog.postgres import PostgresStore
from router.requestlog.rows import Record
from router.requestlog.sqlite import SQLiteStore

# The newest revision this version ships (a test keeps it in step with versions/).
HEAD = "0008"
MIGRATION_TIMEOUT_S = 300.0  # the child may wait on another process's migration lock

_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])  # where ``router`` is importable


class MigrationFailed(RuntimeError):
    """The upgrade child exited with an error; its last line says why."""


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
