"""Strategies that rank by one live metric.

``lowest_latency`` multiplies the latency estimate by (in flight + 1), the PeakEWMA cost
of tower's ``load/peak_ewma.rs``: an endpoint already busy is expected to answer later.
``lowest_ttft`` and ``highest_throughput`` compare the metric alone (ties by in-flight),
because LLM hosts batch requests and a few extra in flight rarely move their TTFT.
Endpoints marked ``explore`` go first and ``probing`` ones last (see ``Candidate``).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence

from policies.base import Candidate, by_cost, explore_first, goodness


class _ByMetric:
    name = ""

    def __init__(self, cost: Callable[[Candidate], float]) -> None:
        self._cost = cost

    def costs(self, candidates: Sequence[Candidate]) -> dict[str, float]:
        return {c.id: self._cost(c) for c in candidates}

    def rank(self, candidates: Sequence[Candidate], rng: random.Random) -> list[Candidate]:
        return explore_first(by_cost(candidates, self.costs(candidates), rng))

    def scores(self, candidates: Sequence[Candidate]) -> Mapping[str, float]:
        return goodness({c.id: self._cost(c) for c in candidates})


class LowestLatency(_ByMetric):
    name = "lowest_latency"

    def __init__(self) -> None:
        super().__init__(lambda c: c.latency_s * (c.in_flight + 1))


class LowestTTFT(_ByMetric):
    name = "lowest_ttft"

    def __init__(self) -> None:
        # in_flight as a tie-breaker only: 1 µs per request in flight.
        super().__init__(lambda c: c.ttft_s + c.in_flight * 1e-6)


class HighestThroughput(_ByMetric):
    name = "highest_throughput"

    def __init__(self) -> None:
        super().__init__(lambda c: 1.0 / (c.tokens_per_s + 1e-9) + c.in_flight * 1e-9)


class Cheapest:
    """Price, then listed order: price is static, so no exploration is needed."""

    name = "cheapest"

    def rank(self, candidates: Sequence[Candidate], rng: random.Random) -> list[Candidate]:
        return sorted(candidates, key=lambda c: (c.price, c.index))

    def scores(self, candidates: Sequence[Candidate]) -> Mapping[str, float]:
        return goodness({c.id: c.price for c in candidates})
