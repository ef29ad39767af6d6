"""A weighted sum of normalised live metrics, with three ways to pick from it.

Each metric is normalised to 0..1 across the route so that weights compare like with
like: lower-is-better metrics (latency, ttft, price, in_flight) as value / route maximum,
throughput as 1 - value / route maximum, error rate as it is (already 0..1). The cost is
``sum(weight * normalised)``; lower is better.

Picks:
- ``best``: lowest cost first.
- ``p2c``: power of two choices (Mitzenmacher, "The Power of Two Choices in Randomized
  Load Balancing", 2001) among the *competitive* endpoints, those within 25% (or 0.05
  absolute) of the best cost. Plain p2c over a small route sends a third of the traffic
  to the second-best endpoint even when it is many times worse; restricting the draw to
  near-equals keeps p2c's herd avoidance where it matters (several hosts of the same
  quality) without paying for it where one host is clearly better.
- ``weighted``: first pick drawn with probability proportional to exp(-cost / 0.1):
  a cost 0.1 higher (10% of one full-weight metric) halves the odds.
The rest follow by cost: the failover path. Endpoints to explore go first and those being
probed go last, whatever the pick (see ``Candidate``).
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence

from policies.base import Candidate, explore_first, goodness

DEFAULT_WEIGHTS: Mapping[str, float] = {"ttft": 1.0, "error_rate": 4.0, "throughput": 0.3}
COMPETITIVE_RATIO = 1.25
COMPETITIVE_SLACK = 0.05
TEMPERATURE = 0.1


class Score:
    name = "score"

    def __init__(self, weights: Mapping[str, float] | None = None, pick: str | None = None) -> None:
        self.weights = dict(weights or DEFAULT_WEIGHTS)
        self.pick = pick or "best"
        self._w = tuple(
            self.weights.get(k, 0.0)
            for k in ("latency", "ttft", "throughput", "error_rate", "price", "in_flight")
        )

    def costs(self, candidates: Sequence[Candidate]) -> dict[str, float]:
        if not candidates:
            return {}
        w_lat, w_ttft, w_tps, w_err, w_price, w_busy = self._w
        max_lat = max(c.latency_s for c in candidates) or 1.0
        max_ttft = max(c.ttft_s for c in candidates) or 1.0
        max_tps = max(c.tokens_per_s for c in candidates) or 1.0
        max_price = max(c.price for c in candidates) or 1.0
        max_busy = max(c.in_flight for c in candidates) or 1
        out = {}
        for c in candidates:
            cost = (
                w_lat * c.latency_s / max_lat
                + w_ttft * c.ttft_s / max_ttft
                + w_tps * (1.0 - c.tokens_per_s / max_tps)
                + w_err * c.error_rate
                + w_price * c.price / max_price
                + w_busy * c.in_flight / max_busy
            )
            out[c.id] = cost
        return out

    def rank(self, candidates: Sequence[Candidate], rng: random.Random) -> list[Candidate]:
        cost = self.costs(candidates)
        ordered = sorted(candidates, key=lambda c: (cost[c.id], c.index))
        if any(c.explore or c.probing for c in ordered):
            return explore_first(ordered)
        if len(ordered) < 2 or self.pick == "best":
            return ordered
        if self.pick == "p2c":
            best = cost[ordered[0].id]
            limit = max(best * COMPETITIVE_RATIO, best + COMPETITIVE_SLACK)
            pool = [c for c in ordered if cost[c.id] <= limit]
            if len(pool) < 2:
                return ordered
            a, b = rng.sample(pool, 2)
            first = a if cost[a.id] <= cost[b.id] else b
        else:
            best = cost[ordered[0].id]
            odds = [math.exp(-(cost[c.id] - best) / TEMPERATURE) for c in ordered]
            first = rng.choices(ordered, weights=odds, k=1)[0]
        return [first, *(c for c in ordered if c is not first)]

    def scores(self, candidates: Sequence[Candidate]) -> Mapping[str, float]:
        cost = self.costs(candidates)
        return goodness({k: min(v, 1e6) for k, v in cost.items()})
