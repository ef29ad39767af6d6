"""What a policy sees and what it returns.

A strategy ranks the available candidates for one request: ``rank(candidates, rng) ->
list``. The first is tried first; the rest, in order, are the failover path, so failover
comes free with any ranking. Strategies read only the numbers on ``Candidate`` (produced
by the router's live stats, already decayed and blended with priors) and the random source
they are given: no I/O, no clock, nothing of the router's.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(slots=True)
class Candidate:
    """One endpoint's live load, as numbers comparable across a route.

    ``latency_s``, ``ttft_s``, ``tokens_per_s`` and ``error_rate`` are effective estimates:
    observed values blended towards an optimistic prior as evidence ages. ``explore`` marks
    an endpoint with too little recent evidence and nothing in flight: strategies that use
    live stats try it first, once. ``probing`` marks one whose probe is still in flight:
    they try it last, so exploration never floods an unknown endpoint.
    """

    id: str
    index: int
    weight: float = 1.0
    price_in: float = 0.0
    price_out: float = 0.0
    latency_s: float = 0.0
    ttft_s: float = 0.0
    tokens_per_s: float = 0.0
    error_rate: float = 0.0
    in_flight: int = 0
    explore: bool = False
    probing: bool = False

    @property
    def price(self) -> float:
        """A blended price per million tokens; output usually dominates an LLM bill."""
        return self.price_in + 3.0 * self.price_out


class Strategy(Protocol):
    name: str

    def rank(self, candidates: Sequence[Candidate], rng: random.Random) -> list[Candidate]: ...

    def scores(self, candidates: Sequence[Candidate]) -> Mapping[str, float]:
        """A 0..1 goodness per candidate id (higher is better), for /health and logs."""
        ...


def by_cost(
    candidates: Sequence[Candidate], cost: Mapping[str, float], rng: random.Random
) -> list[Candidate]:
    """Sort by cost, lower first; ties broken at random so equal endpoints share load."""
    keyed = [(cost[c.id], rng.random(), c) for c in candidates]
    keyed.sort(key=lambda t: (t[0], t[1]))
    return [c for _, _, c in keyed]


def explore_first(ranked: list[Candidate]) -> list[Candidate]:
    """Endpoints to explore first, those being probed last, the rest as ranked."""
    if not any(c.explore or c.probing for c in ranked):
        return ranked
    return (
        [c for c in ranked if c.explore]
        + [c for c in ranked if not (c.explore or c.probing)]
        + [c for c in ranked if c.probing and not c.explore]
    )


def goodness(cost: Mapping[str, float]) -> dict[str, float]:
    """Map costs (lower is better) to 0..1 scores (higher is better) relative to the route."""
    if not cost:
        return {}
    worst = max(cost.values())
    if worst <= 0:
        return dict.fromkeys(cost, 1.0)
    return {k: round(1.0 - v / worst * 0.9, 3) for k, v in cost.items()}
