"""The figures of a run, and the differences between two.

Percentiles are nearest-rank (the value at ``int(q * n)`` of the sorted samples), as the
routing benchmarks compute them, so the lab's numbers and a real run's compare directly.
TTFT is the client's: from the request's arrival to its first token, over the successful
streamed requests (failed attempts and backoff before the serving one included). Latency
is arrival to the end of the answer, over the successful requests. The cache-hit rate is
the share of prompt tokens read from a cache. An endpoint's share is the share of the
successful requests it served; over time, per arrival-time bucket.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from itertools import chain, compress
from typing import Any

from router.lab.client import Outcome
from router.lab.engine import Run

TIME_BUCKETS = 24
# Scalar figures compared side by side: (key path, lower is better).
COMPARED: tuple[tuple[str, bool], ...] = (
    ("success_rate", False),
    ("ttft_ms.p50", True),
    ("ttft_ms.p95", True),
    ("ttft_ms.p99", True),
    ("latency_ms.p50", True),
    ("latency_ms.p95", True),
    ("latency_ms.p99", True),
    ("cost_usd", True),
    ("cache_hit_rate", False),
    ("retries", True),
    ("hedges", True),
)


def _nearest_rank(ordered: Sequence[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _ms(values: list[float]) -> dict[str, float | None]:
    """p50, p95 and p99 in milliseconds, of ``values`` (sorted here, in place, once)."""
    if not values:
        return {"p50": None, "p95": None, "p99": None}
    values.sort()
    return {
        name: round(_nearest_rank(values, q) * 1000.0, 2)
        for name, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))
    }


def summarise(run: Run, label: str) -> dict[str, Any]:
    # Column by column, each summed or counted in C: a day's replay is a million outcomes,
    # and a generator per figure cost seconds of the command's time. The columns are cut
    # from the outcomes laid end to end, read once in memory order (reading a column at a
    # time visits every outcome again; a zip(*outcomes) makes a million iterators, which
    # set the garbage collector going).
    outcomes = run.outcomes  # in finishing order: no figure depends on the order
    n = len(outcomes)
    flat: list[Any] = list(chain.from_iterable(outcomes))
    width = len(Outcome._fields)
    (arrival, status, error, endpoint, ttft, latency, attempts, hedges, cost, prompt, cached) = (
        flat[i::width] for i in range(width)
    )
    del flat
    ok = [s == 200 for s in status]
    served_by = list(compress(endpoint, ok))
    ok_count = len(served_by)
    served = Counter(served_by)
    statuses = Counter(status)
    errors = Counter(error)
    errors.pop(None, None)
    endpoints = sorted(run.fleet)
    total_attempts = sum(attempts)
    total_hedges = sum(hedges)
    # fsum: exact, so the figure does not depend on the order requests finished in
    total_prompt, total_cached, total_cost = sum(prompt), sum(cached), math.fsum(cost)
    tried = n - attempts.count(0)
    return {
        "config": label,
        "version": run.config.version,
        "requests": n,
        "success_rate": round(ok_count / n, 6) if n else None,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "errors": {k: v for k, v in sorted(errors.items()) if k},
        "ttft_ms": _ms([t for t in compress(ttft, ok) if t is not None]),
        "latency_ms": _ms(list(compress(latency, ok))),
        "cost_usd": round(total_cost, 6),
        "cost_per_1k_requests_usd": round(total_cost * 1000.0 / n, 6) if n else None,
        "prompt_tokens": total_prompt,
        "cached_tokens": total_cached,
        "cache_hit_rate": round(total_cached / total_prompt, 6) if total_prompt else 0.0,
        "attempts": total_attempts,
        # Attempts beyond each request's first that were not hedges: the retries.
        "retries": total_attempts - tried - total_hedges,
        "hedges": total_hedges,
        "share": {e: round(served[e] / ok_count, 6) if ok_count else 0.0 for e in endpoints},
        "share_over_time": _over_time(arrival, served_by, compress(arrival, ok), endpoints),
        "fleet": run.fleet,
    }


def _over_time(
    arrivals: Sequence[float],
    served_by: Sequence[str | None],
    served_at: Iterable[float],
    endpoints: Sequence[str],
) -> dict[str, Any]:
    """Each endpoint's share of the successful requests per arrival-time bucket; the
    buckets span ``arrivals`` (all requests')."""
    span = max(arrivals, default=0.0)
    width = _round_width(span / TIME_BUCKETS) if span > 0 else 1.0
    count = int(span / width) + 1
    totals = [0] * count
    per = {e: [0] * count for e in endpoints}
    last = count - 1
    for at, e in zip(served_at, served_by):  # noqa: B905  # served_by: one per served
        if e is None:
            continue
        k = int(at / width)
        if k > last:
            k = last
        totals[k] += 1
        per[e][k] += 1
    return {
        "bucket_s": width,
        "start_s": [round(k * width, 3) for k in range(count)],
        "served": totals,
        "share": {
            e: [round(c / t, 4) if t else None for c, t in zip(per[e], totals, strict=True)]
            for e in endpoints
        },
    }


def _round_width(seconds: float) -> float:
    """A bucket width of 1, 2 or 5 times a power of ten, at least ``seconds``."""
    if seconds <= 0:
        return 1.0
    power = 10.0 ** math.floor(math.log10(seconds))
    for step in (1.0, 2.0, 5.0, 10.0):
        if step * power >= seconds:
            return step * power
    return 10.0 * power


def _get(summary: dict[str, Any], path: str) -> Any:
    value: Any = summary
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def compare(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """B against A: for each compared figure, both values, B - A, B / A and which is better."""
    out: dict[str, Any] = {}
    for path, lower_is_better in COMPARED:
        x, y = _get(a, path), _get(b, path)
        entry: dict[str, Any] = {"a": x, "b": y, "delta": None, "ratio": None, "better": None}
        if isinstance(x, int | float) and isinstance(y, int | float):
            entry["delta"] = round(y - x, 6)
            entry["ratio"] = round(y / x, 4) if x else None
            if y != x:
                entry["better"] = "b" if (y < x) == lower_is_better else "a"
        out[path] = entry
    shares = sorted(set(a["share"]) | set(b["share"]))
    out["share"] = {
        e: {
            "a": a["share"].get(e, 0.0),
            "b": b["share"].get(e, 0.0),
            "delta": round(b["share"].get(e, 0.0) - a["share"].get(e, 0.0), 6),
        }
        for e in shares
    }
    return out
