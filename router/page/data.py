"""The model page's data: ``GET /admin/stats?route=&window=1h|24h`` as one JSON document.

It joins what lives in three places: the live state of the route's endpoints (breaker,
in-flight, the loads a ranking reads and the policy's score of them), the in-memory
series (``router.obs.series`` and ``minutes``: minute buckets, recent failures, reloads)
and the request log (effective prices over 7 days, activity per day over 30 days). The request log's
figures are queried off the hot path, on this admin request, and kept for
``LOG_CACHE_S`` so that a page refreshing every few seconds costs the database one
query a minute. The format is documented in docs/page.md.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from router.obs.minutes import points, recent
from router.obs.series import SeriesBook
from router.requestlog.usage import cache_savings
from router.state.breaker import RATE_LIMITED

if TYPE_CHECKING:
    from router.runtime import Endpoint, RouteRuntime, Runtime
    from router.service import Service

WINDOWS = {"1h": (60, 1), "24h": (1440, 10)}  # window: (minutes, minutes per point)
LOG_CACHE_S = 60.0
LOG_TIMEOUT_S = 10.0
PRICING_DAYS = 7
ACTIVITY_DAYS = 30


class PageData:
    """Builds the document; owns the short cache of request-log figures."""

    def __init__(self, service: Service, book: SeriesBook) -> None:
        self.service = service
        self.book = book
        self.requestlog: Any = None  # router.requestlog.writer.RequestLog, once started
        self._cache: dict[tuple[str, str], tuple[float, dict[str, Any]]] = {}

    async def document(self, route_name: str | None, window: str) -> dict[str, Any]:
        """The page's data for one route (the first by name when None); KeyError for an
        unknown route or window, LookupError when no config is loaded."""
        runtime = self.service.runtime
        if runtime is None:
            raise LookupError("no valid configuration is loaded")
        minutes, step = WINDOWS[window]
        name = route_name or _default_route(runtime)
        route = runtime.routes[name]
        wall = time.time()
        offset = wall - runtime.clock()  # clock time -> Unix seconds
        last = int(wall) // 60
        first = last - minutes + 1  # whole points, the last one ending with this minute
        series = {}
        for e in route.endpoints:
            s = self.book.routes.get(name, {}).get(e.id)
            if s is not None:
                series[e.id] = points(s, first, last, step)
        pricing, activity = await asyncio.gather(
            self._logged(name, "pricing", route), self._logged(name, "activity", route)
        )
        return {
            "route": name,
            "routes": runtime.route_names,
            "window": window,
            "step_s": step * 60,
            "from": first * 60,
            "to": (last + 1) * 60,
            "generated_at": round(wall, 3),
            "config": {"version": runtime.config.version, "last_error": self.service.last_error},
            "policy": _policy(route),
            "now": self._now(runtime, route, wall),
            "series": series,
            "timeline": {
                e.id: _timeline(e, runtime.clock(), offset, first * 60.0) for e in route.endpoints
            },
            "reloads": [r for r in self.book.reloads if r["at"] >= first * 60],
            "failures": [f for f in reversed(self.book.failures) if f["route"] == name],
            "pricing": pricing,
            "activity": activity,
        }

    def _now(self, runtime: Runtime, route: RouteRuntime, wall: float) -> list[dict[str, Any]]:
        """Each endpoint as it stands: state, in-flight, share of the last minute, and its
        place in the policy's ranking with the loads and score terms behind it."""
        now = runtime.clock()
        usable = [e for e in route.endpoints if e.usable]
        candidates = route.candidates(usable, now) if usable else []
        strategy = route.strategy
        scores = strategy.scores(candidates) if candidates else {}
        terms_of = getattr(strategy, "terms", None)
        terms = terms_of(candidates) if terms_of is not None and candidates else {}
        loads = {c.id: c for c in candidates}
        order = sorted(scores, key=lambda i: -scores[i])
        last_minute = {
            e.id: recent(s, wall)
            for e in route.endpoints
            if (s := self.book.routes.get(route.name, {}).get(e.id)) is not None
        }
        total = sum(last_minute.values())
        out = []
        for e in route.endpoints:
            if e.usable:
                state, reason, left = e.breaker.view(now)
            else:
                state, reason, left = "disabled", e.spec.disabled_reason, None
            c = loads.get(e.id)
            price = e.spec.price
            out.append(
                {
                    "id": e.id,
                    "provider": e.spec.provider.name,
                    "model": e.spec.model,
                    "state": state,
                    "reason": reason,
                    "cooldown_left_s": None if left is None else round(left, 1),
                    "in_flight": e.stats.in_flight,
                    "share": round(last_minute.get(e.id, 0.0) / total, 4) if total else None,
                    "rank": order.index(e.id) + 1 if e.id in scores else None,
                    "score": scores.get(e.id),
                    "explore": bool(c.explore) if c is not None else False,
                    "probing": bool(c.probing) if c is not None else False,
                    "loads": None if c is None else _loads(c),
                    "terms": {k: round(v, 4) for k, v in terms.get(e.id, {}).items()},
                    "stats": e.stats.view(),
                    "price": None
                    if price is None
                    else {
                        "input": price.input,
                        "output": price.output,
                        "cache_read": price.cache_read,
                        "cache_write": price.cache_write,
                    },
                }
            )
        return out

    async def _logged(self, route: str, part: str, rt: RouteRuntime) -> dict[str, Any]:
        """Pricing or activity from the request log, cached for ``LOG_CACHE_S``."""
        key = (route, part)
        hit = self._cache.get(key)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        requestlog = self.requestlog
        if requestlog is None or not getattr(requestlog, "enabled", True):
            return {"available": False, "error": "the request log is off (storage.url is empty)"}
        until = datetime.now(UTC)
        days = PRICING_DAYS if part == "pricing" else ACTIVITY_DAYS
        since = until - timedelta(days=days)
        group_by = "endpoint" if part == "pricing" else "day"
        try:
            async with asyncio.timeout(LOG_TIMEOUT_S):
                got = await requestlog.usage(
                    since=since,
                    until=until,
                    group_by=group_by,
                    route=route,
                    savings=cache_savings([rt]),
                )
        except Exception as exc:  # the database is down, locked or slow: say so
            return {"available": False, "error": f"request log unavailable: {type(exc).__name__}"}
        if part == "pricing":
            value = {"available": True, "days": days, "endpoints": _pricing(rt, got["groups"])}
        else:
            value = {"available": True, "days": days, "per_day": _activity(since, until, got)}
        self._cache[key] = (time.monotonic() + LOG_CACHE_S, value)
        if len(self._cache) > 256:  # routes come and go with reloads: stay bounded
            self._cache.clear()
        return value


def _default_route(runtime: Runtime) -> str:
    """The first route by name that has a usable endpoint (else the first)."""
    names = runtime.route_names
    usable = [n for n in names if runtime.routes[n].usable]
    return (usable or names or [""])[0]


def _policy(route: RouteRuntime) -> dict[str, Any]:
    policy = route.policy
    strategy = route.strategy
    return {
        "name": policy.name,
        "strategy": policy.strategy,
        "weights": dict(getattr(strategy, "weights", {}) or {}),
        "pick": getattr(strategy, "pick", None),
        "hedge": None if route.hedge is None else route.hedge.model_dump(),
        "fallbacks": list(route.spec.fallbacks),
    }


def _loads(c: Any) -> dict[str, Any]:
    return {
        "ttft_ms": round(c.ttft_s * 1000.0, 1),
        "latency_ms": round(c.latency_s * 1000.0, 1),
        "tokens_per_s": round(c.tokens_per_s, 1),
        "error_rate": round(c.error_rate, 4),
        "output_error_rate": round(c.output_error_rate, 4),
        "in_flight": c.in_flight,
        "price": round(c.price, 4),
    }


def _timeline(ep: Endpoint, now: float, offset: float, start: float) -> list[dict[str, Any]]:
    """The endpoint's states from ``start`` (Unix seconds) to now, as spans. A cooldown
    whose time ran out without a probe yet shows as half-open from then on."""
    end = now + offset
    if not ep.usable:
        return [{"from": start, "to": end, "state": "disabled", "reason": ep.spec.disabled_reason}]
    changes: list[tuple[float, str, str | None]] = []
    for t, to, why, until in ep.breaker.history:
        changes.append((t + offset, to, why))
        if until is not None:
            changes.append((until + offset, "half_open", why))
    changes.sort(key=lambda c: c[0])
    spans: list[dict[str, Any]] = []
    state: str = "healthy"
    reason: str | None = None
    since = start
    for t, new, why in changes:
        if t > end:
            break
        if new == "half_open" and state != "cooldown":
            continue  # the cooldown it would end had already ended another way
        if t > since:
            spans.append(
                {"from": round(since, 3), "to": round(t, 3), "state": state, "reason": reason}
            )
        state, reason, since = new, why, max(t, start)
    spans.append({"from": round(since, 3), "to": round(end, 3), "state": state, "reason": reason})
    for t0, t1 in ep.breaker.set_asides:  # rate limits: a cooldown over whatever state
        spans = _overlay(spans, t0 + offset, min(t1 + offset, end))
    return [s for s in spans if s["to"] > start]


def _overlay(spans: list[dict[str, Any]], t0: float, t1: float) -> list[dict[str, Any]]:
    """``spans`` with [t0, t1) shown as a cooldown for a rate limit, where not one already."""
    if t1 <= t0:
        return spans
    out: list[dict[str, Any]] = []
    for sp in spans:
        a, b = sp["from"], sp["to"]
        if b <= t0 or a >= t1 or sp["state"] == "cooldown":
            out.append(sp)
            continue
        if a < t0:
            out.append({**sp, "to": round(t0, 3)})
        out.append(
            {
                "from": round(max(a, t0), 3),
                "to": round(min(b, t1), 3),
                "state": "cooldown",
                "reason": RATE_LIMITED,
            }
        )
        if b > t1:
            out.append({**sp, "from": round(t1, 3)})
    return out


def _pricing(route: RouteRuntime, groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per endpoint: configured prices and what tokens actually cost (USD per million).

    The log keeps a request's total cost; it is split by token kind in proportion to the
    configured prices (``router.requestlog.records.Usage.cost``), so cache hits and writes
    show in the effective input price and a price edited within the period shows as the
    mean of old and new."""
    by_id = {g["key"]: g for g in groups}
    out = []
    for e in route.endpoints:
        g = by_id.get(e.id)
        price = e.spec.price
        row: dict[str, Any] = {
            "id": e.id,
            "configured": None
            if price is None
            else {
                "input": price.input,
                "output": price.output,
                "cache_read": price.cache_read,
                "cache_write": price.cache_write,
            },
            "requests": 0,
            "tokens": None,
            "cost": 0.0,
            "effective": None,
            "cache_hit_rate": None,
            "cache_saved_usd": 0.0,
        }
        if g is not None:
            row["requests"] = g["requests"]
            row["cost"] = g["cost"]
            row["cache_hit_rate"] = g["cache_hit_rate"]
            row["cache_saved_usd"] = g["cache_saved_usd"]
            row["tokens"] = {
                k: g[k]
                for k in (
                    "prompt_tokens",
                    "completion_tokens",
                    "reasoning_tokens",
                    "cached_tokens",
                    "cache_write_tokens",
                )
            }
            row["effective"] = _effective(g, price)
        out.append(row)
    return out


def _effective(g: dict[str, Any], price: Any) -> dict[str, float | None]:
    prompt, cached = g["prompt_tokens"], min(g["cached_tokens"], g["prompt_tokens"])
    written = min(g["cache_write_tokens"], prompt - cached)
    fresh, output = prompt - cached - written, g["completion_tokens"]
    cost = g["cost"]

    def per_million(usd: float, tokens: int) -> float | None:
        return round(usd / tokens * 1e6, 4) if tokens else None

    if price is None:
        return {
            "input": None,
            "output": None,
            "cache_read": None,
            "cache_write": None,
            "blended": per_million(cost, prompt + output),
        }
    read_p = price.cache_read if price.cache_read is not None else price.input
    write_p = price.cache_write if price.cache_write is not None else price.input
    nominal = {
        "fresh": fresh * price.input,
        "cache_read": cached * read_p,
        "cache_write": written * write_p,
        "output": output * price.output,
    }
    total = sum(nominal.values())
    scale = cost * 1e6 / total if total else 0.0  # logged USD per nominal micro-USD
    usd = {k: v * scale / 1e6 for k, v in nominal.items()}
    return {
        "input": per_million(usd["fresh"] + usd["cache_read"] + usd["cache_write"], prompt),
        "output": per_million(usd["output"], output),
        "cache_read": per_million(usd["cache_read"], cached),
        "cache_write": per_million(usd["cache_write"], written),
        "blended": per_million(cost, prompt + output),
    }


def _activity(since: datetime, until: datetime, got: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per UTC day of the period, days without requests included."""
    by_day = {g["key"]: g for g in got["groups"]}
    out = []
    day = since.date()
    while day <= until.date():
        key = day.isoformat()
        g = by_day.get(key, {})
        out.append(
            {
                "day": key,
                "requests": g.get("requests", 0),
                "errors": g.get("errors", 0),
                "prompt_tokens": g.get("prompt_tokens", 0),
                "completion_tokens": g.get("completion_tokens", 0),
                "reasoning_tokens": g.get("reasoning_tokens", 0),
                "cost": round(g.get("cost", 0.0), 6),
            }
        )
        day += timedelta(days=1)
    return out
