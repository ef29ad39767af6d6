"""Strategies that ignore live stats: listed order, rotation, weights, in-flight count."""

from __future__ import annotations

import itertools
import random
from collections.abc import Mapping, Sequence

from policies.base import Candidate, by_cost, goodness


class Priority:
    """The listed order: the first endpoint serves, the others are the failover path."""

    name = "priority"

    def rank(self, candidates: Sequence[Candidate], rng: random.Random) -> list[Candidate]:
        return sorted(candidates, key=lambda c: c.index)

    def scores(self, candidates: Sequence[Candidate]) -> Mapping[str, float]:
        return goodness({c.id: float(c.index) for c in candidates})


class RoundRobin:
    """Rotation over the listed order; the rest of the rotation is the failover path."""

    name = "round_robin"

    def __init__(self) -> None:
        self._turn = itertools.count()

    def rank(self, candidates: Sequence[Candidate], rng: random.Random) -> list[Candidate]:
        ordered = sorted(candidates, key=lambda c: c.index)
        if not ordered:
            return []
        start = next(self._turn) % len(ordered)
        return ordered[start:] + ordered[:start]

    def scores(self, candidates: Sequence[Candidate]) -> Mapping[str, float]:
        return dict.fromkeys((c.id for c in candidates), 1.0)


class Weighted:
    """Random, in proportion to ``weight`` (Efraimidis-Spirakis: key = u ** (1 / w)).

    Sorting by that key gives a weighted sample without replacement in one pass, so the
    failover path after the first pick is weighted too.
    """

    name = "weighted"

    def rank(self, candidates: Sequence[Candidate], rng: random.Random) -> list[Candidate]:
        keyed = [(rng.random() ** (1.0 / c.weight), c) for c in candidates]
        keyed.sort(key=lambda t: t[0], reverse=True)
        return [c for _, c in keyed]

    def scores(self, candidates: Sequence[Candidate]) -> Mapping[str, float]:
        total = sum(c.weight for c in candidates) or 1.0
        return {c.id: round(c.weight / total, 3) for c in candidates}


class LeastBusy:
    """Fewest requests in flight; ties at random."""

    name = "least_busy"

    def rank(self, candidates: Sequence[Candidate], rng: random.Random) -> list[Candidate]:
        return by_cost(candidates, {c.id: float(c.in_flight) for c in candidates}, rng)

    def scores(self, candidates: Sequence[Candidate]) -> Mapping[str, float]:
        return goodness({c.id: float(c.in_flight) for c in candidates})
