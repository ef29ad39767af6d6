"""Strategies that rank by one live metric.

``lowest_latency`` multiplies the latency estimate by (in flight + 1), the PeakEWMA cost
of tower's ``load/peak_ewma.rs``: an endpoint already busy is expected to answer later.
``lowest_ttft`` and ``highest_throughput`` compare the metric alone (ties by in-flight),
because LLM hosts batch requests and a few extra in flight rarely move their TTFT.
Endpoints marked ``explore`` go first and ``probing`` ones last (see ``Candidate``).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

from policies.base import (
    Candidate,
    Loads,
    as_loads,
    by_cost,
    costs_by_id,
    explore_first,
    goodness,
    ordered,
)


class _ByMetric:
    name = ""
    explores = True  # endpoints with stale evidence go first, once (``Candidate``)

    def costs(self, loads: Loads) -> Sequence[float]:
        raise NotImplementedError

    def rank(self, candidates: Sequence[Candidate], rng: random.Random) -> list[Candidate]:
        loads = as_loads(candidates)
        return loads.pick(explore_first(loads, by_cost(loads, self.costs(loads), rng)))

    def scores(self, candidates: Sequence[Candidate]) -> Mapping[str, float]:
        loads = as_loads(candidates)
        return goodness(costs_by_id(loads, self.costs(loads)))


class LowestLatency(_ByMetric):
    name = "lowest_latency"

    def costs(self, loads: Loads) -> list[float]:
        busy = loads.metric("in_flight")
        return [x * (b + 1) for x, b in zip(loads.metric("latency_s"), busy, strict=True)]


# in_flight as a tie-breaker only: 1 µs per request in flight.
_TTFT_THEN_BUSY = (("ttft_s", 1.0, False), ("in_flight", 1e-6, False))


class LowestTTFT(_ByMetric):
    name = "lowest_ttft"

    def costs(self, loads: Loads) -> Sequence[float]:
        return loads.combine(_TTFT_THEN_BUSY)


class HighestThroughput(_ByMetric):
    name = "highest_throughput"

    def costs(self, loads: Loads) -> list[float]:
        busy = loads.metric("in_flight")
        tps = loads.metric("tokens_per_s")
        return [1.0 / (x + 1e-9) + b * 1e-9 for x, b in zip(tps, busy, strict=True)]


class Cheapest:
    """Price, then listed order: price is static, so no exploration is needed."""

    name = "cheapest"

    def rank(self, candidates: Sequence[Candidate], rng: random.Random) -> list[Candidate]:
        loads = as_loads(candidates)
        return loads.pick(ordered(loads, loads.metric("price")))

    def scores(self, candidates: Sequence[Candidate]) -> Mapping[str, float]:
        loads = as_loads(candidates)
        return goodness(costs_by_id(loads, loads.metric("price")))
