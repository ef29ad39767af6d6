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
from collections.abc import Sequence
from typing import Any

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


def percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _ms(values: Sequence[float]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for name, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99)):
        v = percentile(values, q)
        out[name] = None if v is None else round(v * 1000.0, 2)
    return out


def summarise(run: Run, label: str) -> dict[str, Any]:
    outcomes = sorted(run.outcomes, key=lambda o: o.arrival)  # ties keep finishing order
    n = len(outcomes)
    ok = [o for o in outcomes if o.status == 200]
    prompt = sum(o.prompt_tokens for o in outcomes)
    cached = sum(o.cached_tokens for o in outcomes)
    attempts = sum(o.attempts for o in outcomes)
    hedges = sum(o.hedges for o in outcomes)
    tried = sum(1 for o in outcomes if o.attempts)
    cost = sum(o.cost for o in outcomes)
    served = Counter(o.endpoint for o in ok)
    endpoints = sorted(run.fleet)
    return {
        "config": label,
        "version": run.config.version,
        "requests": n,
        "success_rate": round(len(ok) / n, 6) if n else None,
        "statuses": {str(k): v for k, v in sorted(Counter(o.status for o in outcomes).items())},
        "errors": dict(sorted(Counter(o.error for o in outcomes if o.error).items())),
        "ttft_ms": _ms([o.ttft for o in ok if o.ttft is not None]),
        "latency_ms": _ms([o.latency for o in ok]),
        "cost_usd": round(cost, 6),
        "cost_per_1k_requests_usd": round(cost * 1000.0 / n, 6) if n else None,
        "prompt_tokens": prompt,
        "cached_tokens": cached,
        "cache_hit_rate": round(cached / prompt, 6) if prompt else 0.0,
        "attempts": attempts,
        # Attempts beyond each request's first that were not hedges: the retries.
        "retries": attempts - tried - hedges,
        "hedges": hedges,
        "share": {e: round(served[e] / len(ok), 6) if ok else 0.0 for e in endpoints},
        "share_over_time": _over_time(outcomes, endpoints),
        "fleet": run.fleet,
    }


def _over_time(outcomes: Sequence[Any], endpoints: Sequence[str]) -> dict[str, Any]:
    span = outcomes[-1].arrival if outcomes else 0.0
    width = _round_width(span / TIME_BUCKETS) if span > 0 else 1.0
    count = int(span / width) + 1
    totals = [0] * count
    per = {e: [0] * count for e in endpoints}
    for o in outcomes:
        if o.status != 200 or o.endpoint is None:
            continue
        k = min(int(o.arrival / width), count - 1)
        totals[k] += 1
        per[o.endpoint][k] += 1
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
