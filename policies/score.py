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


_METRICS = ("latency", "ttft", "throughput", "error_rate", "price", "in_flight")


class Score:
    name = "score"

    def __init__(self, weights: Mapping[str, float] | None = None, pick: str | None = None) -> None:
        self.weights = dict(weights or DEFAULT_WEIGHTS)
        self.pick = pick or "best"
        w = tuple(self.weights.get(k, 0.0) for k in _METRICS)
        self._w = w
        # Only metrics with a weight are normalised: each costs a pass over the route.
        self._used = tuple(k for k, wk in zip(_METRICS, w, strict=True) if wk)

    def cost_list(self, candidates: Sequence[Candidate]) -> list[float]:
        """Costs in the candidates' order; lower is better."""
        w_lat, w_ttft, w_tps, w_err, w_price, w_busy = self._w
        used = self._used
        max_lat = (max(c.latency_s for c in candidates) or 1.0) if "latency" in used else 1.0
        max_ttft = (max(c.ttft_s for c in candidates) or 1.0) if "ttft" in used else 1.0
        max_tps = (max(c.tokens_per_s for c in candidates) or 1.0) if "throughput" in used else 1.0
        max_price = (max(c.price for c in candidates) or 1.0) if "price" in used else 1.0
        max_busy = (max(c.in_flight for c in candidates) or 1) if "in_flight" in used else 1
        k_lat, k_ttft, k_tps = w_lat / max_lat, w_ttft / max_ttft, w_tps / max_tps
        k_price, k_busy = w_price / max_price, w_busy / max_busy
        return [
            k_lat * c.latency_s
            + k_ttft * c.ttft_s
            + w_tps
            - k_tps * c.tokens_per_s
            + w_err * c.error_rate
            + (k_price * (c.price_in + 3.0 * c.price_out) if k_price else 0.0)
            + k_busy * c.in_flight
            for c in candidates
        ]

    def costs(self, candidates: Sequence[Candidate]) -> dict[str, float]:
        if not candidates:
            return {}
        return {c.id: cost for c, cost in zip(candidates, self.cost_list(candidates), strict=True)}

    def rank(self, candidates: Sequence[Candidate], rng: random.Random) -> list[Candidate]:
        if not candidates:
            return []
        costs = self.cost_list(candidates)
        keyed = sorted(zip(costs, [c.index for c in candidates], candidates, strict=True))
        ordered = [c for _, _, c in keyed]
        if any(c.explore or c.probing for c in ordered):
            return explore_first(ordered)
        if len(ordered) < 2 or self.pick == "best":
            return ordered
        best = keyed[0][0]
        if self.pick == "p2c":
            limit = max(best * COMPETITIVE_RATIO, best + COMPETITIVE_SLACK)
            pool = [k for k in keyed if k[0] <= limit]
            if len(pool) < 2:
                return ordered
            a, b = rng.sample(pool, 2)
            first = a[2] if a[0] <= b[0] else b[2]
        else:
            odds = [math.exp(-(cost - best) / TEMPERATURE) for cost, _, _ in keyed]
            odds = [o if math.isfinite(o) else 0.0 for o in odds]  # absurd loads: no chance
            first = rng.choices(ordered, weights=odds, k=1)[0] if sum(odds) > 0 else ordered[0]
        return [first, *(c for c in ordered if c is not first)]

    def scores(self, candidates: Sequence[Candidate]) -> Mapping[str, float]:
        cost = self.costs(candidates)
        return goodness({k: min(v, 1e6) for k, v in cost.items()})
