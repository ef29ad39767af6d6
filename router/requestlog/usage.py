"""What each route, endpoint, client key or day used and cost: ``GET /admin/usage``.

With client keys that have budgets, each key's remaining budget too (``budgets``), read
from the shared state that admissions are checked against.

One ``GROUP BY`` over the ``requests`` table of the request log, aggregated in the
database so the answer costs the same for a thousand rows or ten million (``ts`` is
indexed). The same query runs on SQLite and PostgreSQL; only "the UTC day of ``ts``"
needs a dialect-specific expression. Errors are requests that answered with a status
of 400 or more, or that ended with an error class.

SQLAlchemy is imported by the query, not by this module: the server imports
``parse_time`` on the event loop, and serving processes never load SQLAlchemy unless an
admin asks for usage (``Reader`` loads it in a thread first).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from router.state.shared import Quota, Spend

if TYPE_CHECKING:
    import sqlalchemy as sa
    from sqlalchemy.ext.asyncio import AsyncEngine

    from router.runtime import RouteRuntime

# (route, endpoint) -> USD per million a cached token saves: input minus cache_read.
CacheSavings = Mapping[tuple[str | None, str | None], float]

GROUP_BY = ("route", "endpoint", "key", "day")
_SUMMED = (
    "prompt_tokens",
    "completion_tokens",
    "reasoning_tokens",
    "cached_tokens",
    "cache_write_tokens",
)


class Reader:
    """The log as ``/admin/usage`` and the model page read it: a SQLAlchemy engine, made on
    first use in a thread (SQLAlchemy's import takes the better part of a second)."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._engine: AsyncEngine | None = None
        self._lock = asyncio.Lock()

    async def usage(self, **query: Any) -> dict[str, Any]:
        """``usage`` (below) of this log."""
        async with self._lock:
            if self._engine is None:
                self._engine = await asyncio.to_thread(_make_engine, self._url)
        return await usage(self._engine, **query)

    async def close(self) -> None:
        engine, self._engine = self._engine, None
        if engine is not None:
            await engine.dispose()


def _make_engine(url: str) -> AsyncEngine:
    from router.requestlog.schema import make_engine

    return make_engine(url)


def parse_time(value: str | None, default: datetime | float) -> datetime:
    """An ISO 8601 time or Unix seconds, as an aware UTC datetime; ``default`` if empty.

    ``default`` is a datetime or Unix seconds. A time without an offset is taken as UTC.
    """
    if value is None or not value.strip():
        if isinstance(default, datetime):
            return default if default.tzinfo else default.replace(tzinfo=UTC)
        return datetime.fromtimestamp(default, UTC)
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        if not math.isfinite(seconds):
            raise ValueError(f"{value!r} is not a time: Unix seconds must be finite")
        try:
            return datetime.fromtimestamp(seconds, UTC)
        except (OverflowError, OSError, ValueError) as exc:
            raise ValueError(f"{value!r} is out of range for a time") from exc
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError as exc:
        raise ValueError(
            f"{value!r} is not a time: use ISO 8601 (2025-01-31T12:00:00Z) or Unix seconds"
        ) from exc
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def _day(engine: AsyncEngine) -> sa.ColumnElement[Any]:
    import sqlalchemy as sa

    from router.requestlog.schema import REQUESTS

    ts = REQUESTS.c.ts
    if engine.dialect.name == "postgresql":
        return sa.func.to_char(sa.func.timezone("UTC", ts), "YYYY-MM-DD")
    if engine.dialect.name == "sqlite":
        # SQLite keeps ts as Unix seconds (schema.UnixTime, revision 0004).
        return sa.func.strftime("%Y-%m-%d", ts, "unixepoch")
    return sa.cast(sa.func.date(ts), sa.String)


def cache_savings(routes: Iterable[RouteRuntime]) -> dict[tuple[str | None, str | None], float]:
    """What a cached prompt token saves per million at each (route, endpoint), from the
    loaded config's prices: ``input - cache_read`` (nothing without a ``cache_read``)."""
    out: dict[tuple[str | None, str | None], float] = {}
    for route in routes:
        for e in route.endpoints:
            price = e.spec.price
            if price is not None and price.cache_read is not None:
                out[(route.name, e.id)] = price.input - price.cache_read
    return out


def _key(engine: AsyncEngine, group_by: str) -> sa.ColumnElement[Any]:
    from router.requestlog.schema import REQUESTS

    if group_by == "route":
        return REQUESTS.c.route
    if group_by == "endpoint":
        return REQUESTS.c.endpoint
    if group_by == "key":
        return REQUESTS.c.key_name
    if group_by == "day":
        return _day(engine)
    raise ValueError(f"group_by must be one of {', '.join(GROUP_BY)}, not {group_by!r}")


def _empty() -> dict[str, Any]:
    return {
        "requests": 0,
        "errors": 0,
        "output_errors": 0,
        **dict.fromkeys(_SUMMED, 0),
        "cost": 0.0,
        "cache_saved_usd": 0.0,
    }


def _finish(group: dict[str, Any]) -> dict[str, Any]:
    """Adds the cache-hit rate (cached over prompt tokens; None without prompt tokens)."""
    prompt = group["prompt_tokens"]
    group["cache_hit_rate"] = round(group["cached_tokens"] / prompt, 6) if prompt else None
    group["cache_saved_usd"] = round(group["cache_saved_usd"], 9)
    return group


async def usage(
    engine: AsyncEngine,
    *,
    since: datetime,
    until: datetime,
    group_by: str,
    route: str | None = None,
    savings: CacheSavings | None = None,
) -> dict[str, Any]:
    """Requests, errors, tokens and cost in ``[since, until)``, grouped, with a total;
    only of ``route`` when given (the model page's per-route figures).

    ``cache_saved_usd`` prices each (route, endpoint)'s cached tokens at ``savings``
    (``cache_savings`` of the loaded config): a price changed within the period is read
    at today's value. The database groups by (key, route, endpoint); the rows are folded
    per key here. Days are in order; other groups by cost, highest first. A key is
    ``None`` for rows without one (no client key configured, or no endpoint reached).
    """
    if since.tzinfo is None or until.tzinfo is None:
        raise ValueError("since and until must be aware datetimes (UTC)")
    if since > until:
        raise ValueError("since is after until")
    query = _query(engine, since, until, group_by, route)
    async with engine.connect() as conn:
        rows = (await conn.execute(query)).all()
    by_key, total = _fold(rows, savings or {})
    groups = [_finish(g) for g in by_key.values()]
    if group_by == "day":
        groups.sort(key=lambda g: str(g["key"]))
    else:
        groups.sort(key=lambda g: (-g["cost"], str(g["key"])))
    return {
        "since": since.astimezone(UTC).isoformat(),
        "until": until.astimezone(UTC).isoformat(),
        "group_by": group_by,
        "groups": groups,
        "total": _finish(total),
    }


def _query(
    engine: AsyncEngine, since: datetime, until: datetime, group_by: str, route: str | None
) -> sa.Select[Any]:
    """The totals per (key, route, endpoint) in ``[since, until)``, summed by the database."""
    import sqlalchemy as sa

    from router.requestlog.schema import REQUESTS

    key = _key(engine, group_by).label("key")
    c = REQUESTS.c
    failed = sa.or_(c.status >= 400, c.error.is_not(None))
    query = (
        sa.select(
            key,
            c.route.label("at_route"),
            c.endpoint.label("at_endpoint"),
            sa.func.count().label("requests"),
            sa.func.coalesce(sa.func.sum(sa.case((failed, 1), else_=0)), 0).label("errors"),
            sa.func.count(c.output_error).label("output_errors"),
            *(sa.func.coalesce(sa.func.sum(c[name]), 0).label(name) for name in _SUMMED),
            sa.func.coalesce(sa.func.sum(c.cost), 0.0).label("cost"),
        )
        .where(c.ts >= since.astimezone(UTC), c.ts < until.astimezone(UTC))
        .group_by(key, c.route, c.endpoint)
    )
    if route is not None:
        query = query.where(c.route == route)
    return query


def _fold(
    rows: Iterable[Any], saving: CacheSavings
) -> tuple[dict[Any, dict[str, Any]], dict[str, Any]]:
    """The database's rows folded per key, and the total of them all."""
    by_key: dict[Any, dict[str, Any]] = {}
    total = _empty()
    for row in rows:
        group = by_key.get(row.key)
        if group is None:
            group = by_key[row.key] = {"key": row.key, **_empty()}
        # PostgreSQL sums integers as NUMERIC: bring everything back to int and float.
        part: dict[str, Any] = {
            "requests": int(row.requests),
            "errors": int(row.errors),
            "output_errors": int(row.output_errors),
            **{name: int(getattr(row, name)) for name in _SUMMED},
            "cost": float(row.cost),
        }
        per_million = saving.get((row.at_route, row.at_endpoint), 0.0)
        part["cache_saved_usd"] = part["cached_tokens"] * per_million / 1_000_000.0
        for field, value in part.items():
            group[field] += value
            total[field] += value
    return by_key, total


def budgets(quotas: Iterable[Quota], spent: Mapping[str, Spend], now: float) -> dict[str, Any]:
    """Each budgeted key's day and month: limit, spent, remaining and when it resets.

    The spend is the shared state's (what admissions are checked against), not a sum over
    the request log: it counts every replica's requests, and is what blocks the key.
    """
    from router.state.shared import budget_windows

    _, day_end, _, month_end = budget_windows(now)
    out: dict[str, Any] = {}
    for quota in quotas:
        spend = spent.get(quota.name, Spend())
        view: dict[str, Any] = {}
        for window, limit, used, end in (
            ("day", quota.day_usd, spend.day, day_end),
            ("month", quota.month_usd, spend.month, month_end),
        ):
            if limit is None:
                continue
            view[window] = {
                "limit_usd": limit,
                "spent_usd": round(used, 6),
                "remaining_usd": round(max(0.0, limit - used), 6),
                "resets_at": datetime.fromtimestamp(end, UTC).isoformat(),
            }
        out[quota.name] = view
    return out
