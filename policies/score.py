"""A weighted sum of normalised live metrics, with three ways to pick from it.

Each metric is normalised to 0..1 across the route so that weights compare like with
like: lower-is-better metrics (latency, ttft, price, in_flight) as value / route maximum,
throughput as 1 - value / route maximum, error rates (``error_rate``,
``output_error_rate``) as they are (already 0..1). The cost is
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
from typing import Literal

from policies.base import (
    Candidate,
    Loads,
    OptionError,
    Term,
    as_loads,
    costs_by_id,
    explore_first,
    goodness,
    ordered,
)

Metric = Literal[
    "latency", "ttft", "throughput", "error_rate", "output_error_rate", "price", "in_flight"
]
Pick = Literal["best", "p2c", "weighted"]

DEFAULT_WEIGHTS: Mapping[str, float] = {"ttft": 1.0, "error_rate": 4.0, "throughput": 0.3}
COMPETITIVE_RATIO = 1.25
COMPETITIVE_SLACK = 0.05
TEMPERATURE = 0.1

# Each weight's Candidate field, and whether it is normalised by the route maximum.
_METRICS = {
    "latency": ("latency_s", True),
    "ttft": ("ttft_s", True),
    "throughput": ("tokens_per_s", True),
    "error_rate": ("error_rate", False),
    "output_error_rate": ("output_error_rate", False),
    "price": ("price", True),
    "in_flight": ("in_flight", True),
}


class Score:
    name = "score"
    explores = True  # endpoints with stale evidence go first, once (``Candidate``)
    OPTIONS_HELP: Mapping[str, str] = {
        "weights": "Weight of each live metric in the sum (default: ttft 1, error_rate 4, "
        "throughput 0.3).",
        "pick": "How the first is picked: `best` (the default), `p2c` among near-equals, or "
        "`weighted` by cost.",
    }

    def __init__(
        self, weights: Mapping[Metric, float] | None = None, pick: Pick | None = None
    ) -> None:
        if weights is not None:
            _check(weights)
        if pick not in (None, "best", "p2c", "weighted"):
            raise OptionError("pick", f"unknown pick {pick!r}; known: best, p2c, weighted")
        self.weights = {str(k): w for k, w in (weights or DEFAULT_WEIGHTS).items()}
        self.pick = pick or "best"
        # The cost as one weighted sum; only metrics with a weight are read (each costs a
        # pass over the route). Throughput, higher is better, counts as w * (1 - normalised).
        terms: list[Term] = []
        self._constant = 0.0
        for name, (field, norm) in _METRICS.items():
            w = self.weights.get(name, 0.0)
            if w:
                if field == "tokens_per_s":
                    self._constant, w = w, -w
                terms.append((field, w, norm))
        self._terms = tuple(terms)

    def cost_list(self, loads: Loads) -> Sequence[float]:
        """Costs indexed by key; lower is better."""
        return loads.combine(self._terms, self._constant)

    def costs(self, candidates: Sequence[Candidate]) -> dict[str, float]:
        loads = as_loads(candidates)
        return costs_by_id(loads, self.cost_list(loads)) if loads.keys else {}

    def rank(self, candidates: Sequence[Candidate], rng: random.Random) -> list[Candidate]:
        loads = as_loads(candidates)
        if not loads.keys:
            return []
        cost = loads.combine(self._terms, self._constant)
        order = ordered(loads, cost)
        if loads.flags() is not None:
            return loads.pick(explore_first(loads, order))
        size = len(order)
        if size < 2 or self.pick == "best":
            return loads.pick(order)
        best = cost[order[0]]
        if self.pick == "p2c":
            # The larger of the two, by a compare: max() parses its keywords (key,
            # default) at every call, about a thousand instructions on every request.
            limit = best * COMPETITIVE_RATIO
            slack = best + COMPETITIVE_SLACK
            if slack > limit:
                limit = slack
            size = 0
            for k in order:  # the competitive pool: a prefix of the order
                if not cost[k] <= limit:
                    break
                size += 1
            if size < 2:
                return loads.pick(order)
            # Two distinct members of the pool, uniformly; the cheaper (the first drawn on a
            # tie) goes first. Of two, that is the cheaper, unless they tie.
            if size == 2 and best < cost[order[1]]:
                return loads.pick(order)
            i = int(rng.random() * size)
            j = int(rng.random() * (size - 1))
            j += j >= i
            a, b = order[i], order[j]
            at = i if cost[a] <= cost[b] else j
        else:
            odds = [math.exp(-(cost[k] - best) / TEMPERATURE) for k in order]
            odds = [o if math.isfinite(o) else 0.0 for o in odds]  # absurd loads: no chance
            at = rng.choices(range(size), weights=odds, k=1)[0] if sum(odds) > 0 else 0
        if at:
            order.insert(0, order.pop(at))
        return loads.pick(order)

    def terms(self, candidates: Sequence[Candidate]) -> dict[str, dict[str, float]]:
        """Each candidate's cost split by weighted metric (weight x normalised value, as
        ``rank`` sums them): why an endpoint ranks where it does."""
        loads = as_loads(candidates)
        ids = [c.id for c in loads.pick(loads.keys)]
        out: dict[str, dict[str, float]] = {i: {} for i in ids}
        for name, (field, norm) in _METRICS.items():
            w = self.weights.get(name, 0.0)
            if not w:
                continue
            column = loads.metric(field)
            values = [column[k] for k in loads.keys]
            top = (max(values, default=0.0) or 1.0) if norm else 1.0
            for i, v in zip(ids, values, strict=True):
                x = v / top
                out[i][name] = w * (1.0 - x if field == "tokens_per_s" else x)
        return out

    def scores(self, candidates: Sequence[Candidate]) -> Mapping[str, float]:
        cost = self.costs(candidates)
        return goodness({k: min(v, 1e6) for k, v in cost.items()})


def _check(weights: Mapping[Metric, float]) -> None:
    for name, w in weights.items():
        if name not in _METRICS:
            raise OptionError("weights", f"unknown metric {name!r}; known: {', '.join(_METRICS)}")
        if w < 0:
            raise OptionError("weights", f"weight of {name} must be >= 0")
    if not any(weights.values()):
        raise OptionError("weights", "at least one weight must be > 0")
