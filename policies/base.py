"""What a policy sees and what it returns.

A strategy ranks the available candidates for one request: ``rank(candidates, rng) ->
list``. The first is tried first; the rest, in order, are the failover path, so failover
comes free with any ranking. Strategies read only the numbers on ``Candidate`` (produced
by the router's live stats, already decayed and blended with priors) and the random source
they are given: no I/O, no clock, nothing of the router's.

Ranking runs on every request over every endpoint of a route, so strategies read those
numbers a whole metric at a time, through ``Loads``: a list of ``Candidate`` objects is
wrapped as one (``as_loads``), and the router hands over its own implementation, which
computes a metric (or a weighted sum of metrics) for the whole route in one pass from what
it keeps cached, and builds no object per endpoint.
"""

from __future__ import annotations

import random
from abc import abstractmethod
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import groupby, islice
from operator import attrgetter
from typing import Protocol, overload


@dataclass(slots=True)
class Candidate:
    """One endpoint's live load, as numbers comparable across a route.

    ``latency_s``, ``ttft_s``, ``tokens_per_s`` and ``error_rate`` are effective estimates:
    observed values blended towards an optimistic prior as evidence ages. ``explore`` marks
    an endpoint with too little recent evidence and nothing in flight: strategies that use
    live stats try it first, once. ``probing`` marks one whose probe is still in flight:
    they try it last, so exploration never floods an unknown endpoint.
    ``output_error_rate`` (answers that came back 200 but broken) is blended towards 0 as
    its evidence ages: a host is not held to old broken answers forever.
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
    output_error_rate: float = 0.0

    @property
    def price(self) -> float:
        """A blended price per million tokens; output usually dominates an LLM bill."""
        return self.price_in + 3.0 * self.price_out


_LOADS_TYPES: set[type] = set()  # every subclass of Loads
Term = tuple[str, float, bool]  # (field, weight, normalised by the largest) of a weighted sum


class Loads(Sequence[Candidate]):
    """The candidates of one ranking, readable a whole metric at a time.

    A metric is a sequence indexed by *key*: ``keys`` lists the candidates' keys in their
    listed order (other positions of a metric, if any, belong to no candidate). A field is
    a numeric ``Candidate`` attribute: ``latency_s``, ``ttft_s``, ``tokens_per_s``,
    ``error_rate``, ``output_error_rate``, ``in_flight``, ``weight``, ``price`` or ``index``.
    """

    __slots__ = ()
    keys: Sequence[int]
    span: int  # the length of a metric: every key is below it
    index_ordered: bool  # keys in ascending ``Candidate.index``: a stable sort breaks ties by it

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        _LOADS_TYPES.add(cls)  # for ``as_loads``: cheaper than an ABC isinstance check

    @abstractmethod
    def metric(self, field: str) -> Sequence[float]: ...

    @abstractmethod
    def combine(self, terms: Iterable[Term], constant: float = 0.0) -> Sequence[float]:
        """``constant + sum(weight * field)`` per key, over ``(field, weight, normalised)``
        terms: a normalised field is divided by its largest value (by 1 if that is 0)."""

    def largest(self, field: str) -> float:
        return max(map(self.metric(field).__getitem__, self.keys), default=0.0)

    @abstractmethod
    def flags(self) -> tuple[Collection[int], Collection[int]] | None:
        """(keys to explore, keys being probed and not explored), or None when neither."""

    @abstractmethod
    def pick(self, keys: Iterable[int]) -> list[Candidate]:
        """The candidates of these keys, in this order."""

    def __len__(self) -> int:
        return len(self.keys)

    @overload
    def __getitem__(self, i: int) -> Candidate: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[Candidate]: ...
    def __getitem__(self, i: int | slice) -> Candidate | Sequence[Candidate]:
        if isinstance(i, slice):
            return self.pick(self.keys[i])
        return self.pick((self.keys[i],))[0]

    def __iter__(self) -> Iterator[Candidate]:
        return iter(self.pick(self.keys))


_GETTERS: dict[str, Callable[[Candidate], float]] = {}


class CandidateLoads(Loads):
    """``Loads`` over ``Candidate`` objects (tests, one-off views): keys are positions."""

    __slots__ = ("_items", "index_ordered", "keys", "span")

    def __init__(self, candidates: Iterable[Candidate]) -> None:
        items = list(candidates)
        self._items = items
        self.keys, self.span = range(len(items)), len(items)
        index = [c.index for c in items]
        self.index_ordered = all(map(int.__lt__, index, islice(index, 1, None)))

    def metric(self, field: str) -> list[float]:
        get = _GETTERS.get(field)
        if get is None:
            get = _GETTERS[field] = attrgetter(field)
        return list(map(get, self._items))

    def combine(self, terms: Iterable[Term], constant: float = 0.0) -> list[float]:
        total = [constant] * len(self._items)
        for field, w, normalised in terms:
            if normalised:
                w /= self.largest(field) or 1.0
            total = [t + w * x for t, x in zip(total, self.metric(field), strict=True)]
        return total

    def flags(self) -> tuple[Collection[int], Collection[int]] | None:
        items = self._items
        explore = {k for k, c in enumerate(items) if c.explore}
        probing = {k for k, c in enumerate(items) if c.probing and not c.explore}
        return (explore, probing) if explore or probing else None

    def pick(self, keys: Iterable[int]) -> list[Candidate]:
        return list(map(self._items.__getitem__, keys))


def as_loads(candidates: Sequence[Candidate]) -> Loads:
    if type(candidates) in _LOADS_TYPES:
        return candidates  # type: ignore[return-value]  # a Loads subclass, by the check
    return CandidateLoads(candidates)


class OptionError(ValueError):
    """A strategy refuses an option it was made with (the config reports it at its path)."""

    def __init__(self, option: str, message: str) -> None:
        super().__init__(message)
        self.option = option


class Strategy(Protocol):
    name: str

    def rank(self, candidates: Sequence[Candidate], rng: random.Random) -> list[Candidate]: ...

    def scores(self, candidates: Sequence[Candidate]) -> Mapping[str, float]:
        """A 0..1 goodness per candidate id (higher is better), for /health and logs."""
        ...


def ordered(loads: Loads, cost: Sequence[float]) -> list[int]:
    """Keys by cost, lower first; ties in listed (index) order."""
    keys = loads.keys
    if not loads.index_ordered:
        index = loads.metric("index")
        return sorted(keys, key=lambda k: (cost[k], index[k]))
    if len(keys) == 2:  # what every request to a two-endpoint route asks: no sort needed
        a, b = keys
        return [b, a] if cost[b] < cost[a] else [a, b]
    return sorted(keys, key=cost.__getitem__)


def by_cost(loads: Loads, cost: Sequence[float], rng: random.Random) -> list[int]:
    """Keys by cost, lower first; ties broken at random so equal endpoints share load."""
    order = ordered(loads, cost)
    last = None
    for k in order:  # ties, if any, are neighbours now
        value = cost[k]
        if value == last:
            break
        last = value
    else:
        return order
    out: list[int] = []
    for _, group in groupby(order, key=cost.__getitem__):
        tied = list(group)
        if len(tied) > 1:
            draws = [rng.random() for _ in tied]
            tied = [k for _, k in sorted(zip(draws, tied, strict=True))]
        out += tied
    return out


def explore_first(loads: Loads, order: list[int]) -> list[int]:
    """Keys to explore first, those being probed last, the rest as ranked."""
    flags = loads.flags()
    if flags is None:
        return order
    explore, probing = flags
    if len(explore) + len(probing) > 8:  # many: one stable sort by tier is cheaper
        tier = [1] * loads.span
        for k in explore:
            tier[k] = 0
        for k in probing:
            tier[k] = 2
        return sorted(order, key=tier.__getitem__)
    return (
        [k for k in order if k in explore]
        + [k for k in order if k not in explore and k not in probing]
        + [k for k in order if k in probing]
    )


def costs_by_id(loads: Loads, cost: Sequence[float]) -> dict[str, float]:
    keys = loads.keys
    return {c.id: cost[k] for k, c in zip(keys, loads.pick(keys), strict=True)}


def goodness(cost: Mapping[str, float]) -> dict[str, float]:
    """Map costs (lower is better) to 0..1 scores (higher is better) relative to the route."""
    if not cost:
        return {}
    worst = max(cost.values())
    if worst <= 0:
        return dict.fromkeys(cost, 1.0)
    return {k: round(1.0 - v / worst * 0.9, 3) for k, v in cost.items()}
