"""Strategies that ignore live stats: listed order, rotation, weights, in-flight count."""

from __future__ import annotations

import itertools
import random
from collections.abc import Mapping, Sequence

from policies.base import Candidate, Loads, as_loads, by_cost, costs_by_id, goodness


def listed(loads: Loads) -> list[int]:
    """Keys in listed (index) order."""
    if loads.index_ordered:
        return list(loads.keys)
    return sorted(loads.keys, key=loads.metric("index").__getitem__)


class Priority:
    """The listed order: the first endpoint serves, the others are the failover path."""

    name = "priority"

    def rank(self, candidates: Sequence[Candidate], rng: random.Random) -> list[Candidate]:
        loads = as_loads(candidates)
        return loads.pick(listed(loads))

    def scores(self, candidates: Sequence[Candidate]) -> Mapping[str, float]:
        loads = as_loads(candidates)
        return goodness(costs_by_id(loads, loads.metric("index")))


class RoundRobin:
    """Rotation over the listed order; the rest of the rotation is the failover path."""

    name = "round_robin"

    def __init__(self) -> None:
        self._turn = itertools.count()

    def rank(self, candidates: Sequence[Candidate], rng: random.Random) -> list[Candidate]:
        loads = as_loads(candidates)
        order = listed(loads)
        if not order:
            return []
        start = next(self._turn) % len(order)
        return loads.pick(order[start:] + order[:start])

    def scores(self, candidates: Sequence[Candidate]) -> Mapping[str, float]:
        return dict.fromkeys((c.id for c in candidates), 1.0)


class Weighted:
    """Random, in proportion to ``weight`` (Efraimidis-Spirakis: key = u ** (1 / w)).

    Sorting by that key gives a weighted sample without replacement in one pass, so the
    failover path after the first pick is weighted too.
    """

    name = "weighted"

    def rank(self, candidates: Sequence[Candidate], rng: random.Random) -> list[Candidate]:
        loads = as_loads(candidates)
        weight = loads.metric("weight")
        keyed = [(rng.random() ** (1.0 / weight[k]), k) for k in loads.keys]
        keyed.sort(key=lambda t: t[0], reverse=True)
        return loads.pick(k for _, k in keyed)

    def scores(self, candidates: Sequence[Candidate]) -> Mapping[str, float]:
        total = sum(c.weight for c in candidates) or 1.0
        return {c.id: round(c.weight / total, 3) for c in candidates}


class LeastBusy:
    """Fewest requests in flight; ties at random."""

    name = "least_busy"

    def rank(self, candidates: Sequence[Candidate], rng: random.Random) -> list[Candidate]:
        loads = as_loads(candidates)
        return loads.pick(by_cost(loads, loads.metric("in_flight"), rng))

    def scores(self, candidates: Sequence[Candidate]) -> Mapping[str, float]:
        loads = as_loads(candidates)
        return goodness(
            {k: float(v) for k, v in costs_by_id(loads, loads.metric("in_flight")).items()}
        )
