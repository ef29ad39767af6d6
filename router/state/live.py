"""A route's view of its latest ranking's loads: the ``Loads`` that policies compare.

``LiveLoads`` reads the public columns of its ``RouteLoads`` (``router.state.loads``) a
metric at a time and builds no object per endpoint; its hot paths are inlined on purpose
(at a few endpoints, calls are most of the cost). Its candidates come two ways: ``pick``
gives the route's ``LiveCandidate`` handles (a ranking's result, made once per route),
and reading it as a sequence gives plain ``Candidate`` snapshots that keep their numbers.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Sequence
from itertools import islice
from typing import TYPE_CHECKING, Any, Final, overload

from policies import Candidate, Loads
from policies.base import Term
from router.state.blend import EXPLORE_BELOW, PROBE_BELOW, flags
from router.state.stats import confidence

if TYPE_CHECKING:
    from router.state.loads import RouteLoads

# The decayed metrics, by their position in a route's gains.
DECAYED: Final = {"latency_s": 0, "ttft_s": 1, "tokens_per_s": 2, "error_rate": 3}
TTFT: Final = 1
_DECAYED: Final = DECAYED
# a * D may be off by rounding from the confidence ``loads`` computes (where not exact)
_MARGIN: Final = 1.0 + 1e-9
_ABOVE: Final = PROBE_BELOW * _MARGIN
_SNAPSHOT: Final = (
    "latency_s",
    "ttft_s",
    "tokens_per_s",
    "error_rate",
    "output_error_rate",
    "in_flight",
)


class LiveLoads(Loads):
    """A route's loads as its latest ranking sees them, computed a metric at a time.

    A route has one, renewed by each ranking (``renew``), so it is read at once, as the
    pipeline does; so are its candidates, the route's ``LiveCandidate`` objects, made once
    per route. Metrics are indexed by key over the whole route.
    """

    __slots__ = (
        "_decay",
        "_eff",
        "_exact",
        "_flags",
        "_forced",
        "_metrics",
        "_now",
        "_prior",
        "_route",
        "full",
        "index_ordered",
        "keys",
        "span",
    )

    def __init__(self, route: RouteLoads) -> None:
        self._route = route
        self.span = len(route.handles)

    def renew(
        self,
        keys: list[int] | None,
        now: float,
        decay: float,
        prior: tuple[float, float, float, float],
        eff: dict[int, list[float]],
        forced: Collection[int],
        least_a: float,
        exact: bool,
    ) -> None:
        """This view for a new ranking: a route renews its one view rather than make one
        per ranking (a class call and an object on every request)."""
        route = self._route
        self._exact = exact  # a * D is the confidence itself (a route computed directly)
        self._now = now
        if keys is None:
            self.full = True
            self.keys: Sequence[int] = route.keys
            self.index_ordered = route.index_ordered
        else:
            self.full = False
            self.keys = keys
            self.index_ordered = route.index_ordered and all(
                map(int.__lt__, keys, islice(keys, 1, None))
            )
        self._decay = decay
        self._prior = prior
        self._forced = forced
        self._eff = eff  # g per decayed metric, as this ranking sees it (TTFT raised by waits)
        self._metrics: dict[str, Sequence[float]] = {}
        # None when every confidence is above both thresholds, as on most rankings (the
        # least a * D tells): every policy asks, so it is known here at once; else False,
        # for ``flags`` to find them when asked.
        self._flags: tuple[Collection[int], Collection[int]] | bool | None = (
            None if not forced and least_a * decay >= (PROBE_BELOW if exact else _ABOVE) else False
        )

    def _g(self, m: int) -> list[float]:
        g = self._eff.get(m)
        if g is None:
            g = self._eff[m] = self._route.g(m, self._prior[m])
        return g

    def _top(self, m: int, g: list[float]) -> float:
        """max(g) over the candidates; cached by the route for its own (unraised) g."""
        if not self.full:
            # No default= (a keyword max() parses at every call): an empty keys checked.
            keys = self.keys
            return max(map(g.__getitem__, keys)) if keys else 0.0
        if g is self._route.gains[m]:
            return self._route.g_top(m)
        return max(g)  # a full route's: not empty

    def metric(self, field: str) -> Sequence[float]:
        got = self._metrics.get(field)
        if got is None:
            m = _DECAYED.get(field)
            if m is not None:
                p, d = self._prior[m], self._decay
                got = [p + d * g for g in self._g(m)]
            elif field == "in_flight":
                got = self._route.busy
            elif field == "output_error_rate":
                d = self._decay
                got = [d * g for g in self._route.out_errors]
            else:
                got = self._route.static[field]
            self._metrics[field] = got
        return got

    def combine(self, terms: Iterable[Term], constant: float = 0.0) -> list[float]:
        # w * (prior + D * g) = w * prior + (w * D) * g: one multiply-add per endpoint.
        # (``_g`` and ``_top`` inlined: at a few endpoints, calls are most of the cost.)
        d, prior, eff, route = self._decay, self._prior, self._eff, self._route
        columns: list[tuple[float, Sequence[float]]] = []
        for field, w, normalised in terms:
            m = _DECAYED.get(field)
            if m is None:
                column = route.busy if field == "in_flight" else self.metric(field)
                if normalised:
                    keys = self.keys  # no default= for max(), as in _top
                    w /= (max(map(column.__getitem__, keys)) if keys else 0.0) or 1.0
                columns.append((w, column))
                continue
            p = prior[m]
            g = eff.get(m)
            if g is None:
                g = eff[m] = route.gains[m] if route.gains_prior[m] == p else route.g(m, p)
            if normalised:  # by the largest: prior + D * max(g), as D > 0
                if not self.full:
                    top = self._top(m, g)
                elif g is route.gains[m]:  # the route's own, and its cached max
                    known = route.gains_top[m]
                    top = route.g_top(m) if known is None else known
                else:
                    top = max(g)
                w /= (p + d * top) or 1.0
            constant += w * p
            columns.append((w * d, g))
        # constant + sum(w * column) per key: in one pass for up to three terms.
        count = len(columns)
        if count == 3:
            (w1, x1), (w2, x2), (w3, x3) = columns
            return [constant + w1 * a + w2 * b + w3 * c for a, b, c in zip(x1, x2, x3)]  # noqa: B905
        if count == 2:
            (w1, x1), (w2, x2) = columns
            return [constant + w1 * a + w2 * b for a, b in zip(x1, x2)]  # noqa: B905  # same length
        if count == 1:
            ((w1, x1),) = columns
            return [constant + w1 * a for a in x1]
        total = [constant] * self.span  # the same sums, added in the same order
        for w, x in columns:
            total = [t + w * v for t, v in zip(total, x, strict=True)]
        return total

    def largest(self, field: str) -> float:
        m = _DECAYED.get(field)
        if m is None:
            return super().largest(field)
        return self._prior[m] + self._decay * self._top(m, self._g(m))

    def flags(self) -> tuple[Collection[int], Collection[int]] | None:
        found = self._flags
        if found is not False:
            return found  # type: ignore[return-value]
        route, d, forced, exact = self._route, self._decay, self._forced, self._exact
        margin = 1.0 if exact else _MARGIN
        # Only endpoints whose a * D is under the higher threshold can be flagged. Within
        # rounding of a threshold, a * D may fall on the other side of it than ``loads``'s
        # confidence would: there, compute that one as ``loads`` does.
        a, busy = route.a, route.busy
        explore: set[int] = set()
        probing: set[int] = set()
        under = PROBE_BELOW * margin / d
        for k in [k for k in self.keys if a[k] < under]:
            conf = a[k] * d
            if not exact and (abs(conf - PROBE_BELOW) < 1e-9 or abs(conf - EXPLORE_BELOW) < 1e-9):
                conf = self._confidence(k)
            explores, probes = flags(conf, busy[k])
            if explores:
                explore.add(k)
            elif probes:
                probing.add(k)
        explore.update(forced)
        probing.difference_update(forced)
        found = self._flags = (explore, probing) if explore or probing else None
        return found

    def _confidence(self, k: int) -> float:
        """``EndpointStats.confidence``, as ``loads`` computes it."""
        evidence = self._route.evidence[k]
        if evidence is None:
            return 0.0
        last, conf = evidence
        now = self._now
        return confidence(conf, last, now, self._route.halflife)

    def pick(self, keys: Iterable[int]) -> list[Candidate]:
        """The route's handles of these keys: a ranking's result, made per route, not per
        request. Their numbers are the route's latest ranking's: read them at once."""
        return list(map(self._route.handles.__getitem__, keys))

    def snapshot(self, keys: Iterable[int]) -> list[Candidate]:
        """Plain candidates with this ranking's numbers, which never change: for whoever
        keeps them (logs, /health). Read at once too: the route's next ranking rewrites
        the columns a ranking reads."""
        handles = self._route.handles
        lat, ttft, tps, err, broken, busy = map(self.metric, _SNAPSHOT)
        found = self.flags()
        explore, probing = found if found is not None else ((), ())
        out = []
        for k in keys:
            h = handles[k]
            c = Candidate(h.id, h.index, h.weight, h.price_in, h.price_out)
            c.latency_s, c.ttft_s, c.tokens_per_s, c.error_rate = lat[k], ttft[k], tps[k], err[k]
            c.in_flight, c.output_error_rate = int(busy[k]), broken[k]
            c.explore, c.probing = k in explore, k in probing
            out.append(c)
        return out

    @overload
    def __getitem__(self, i: int) -> Candidate: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[Candidate]: ...
    def __getitem__(self, i: int | slice) -> Candidate | Sequence[Candidate]:
        if isinstance(i, slice):
            return self.snapshot(self.keys[i])
        return self.snapshot((self.keys[i],))[0]

    def __iter__(self) -> Iterator[Candidate]:
        return iter(self.snapshot(self.keys))

    def value(self, field: str, key: int) -> float:
        """One candidate's number, for ``LiveCandidate``."""
        if field == "explore" or field == "probing":
            flags = self.flags()
            return flags is not None and key in flags[field == "probing"]
        return self.metric(field)[key]


def _live(field: str) -> Any:
    def get(self: LiveCandidate) -> Any:
        latest = self._route.latest
        assert latest is not None  # handed out only by a ranking
        return latest.value(field, self._key)

    def refuse(self: LiveCandidate, value: Any) -> None:
        raise AttributeError(f"{field} of a live candidate comes from its route's stats")

    return property(get, refuse)


class LiveCandidate(Candidate):
    """A route endpoint as a candidate, made once per route: its live numbers are read
    from the route's latest ranking when asked (logs, /health), not built per request."""

    __slots__ = ("_key", "_route")

    def __init__(
        self,
        route: RouteLoads,
        key: int,
        id: str,  # the Candidate field's name
        index: int,
        weight: float,
        price_in: float,
        price_out: float,
    ) -> None:
        self._route = route
        self._key = key
        self.id = id
        self.index = index
        self.weight = weight
        self.price_in = price_in
        self.price_out = price_out

    latency_s = _live("latency_s")
    ttft_s = _live("ttft_s")
    tokens_per_s = _live("tokens_per_s")
    error_rate = _live("error_rate")
    in_flight = _live("in_flight")
    output_error_rate = _live("output_error_rate")
    explore = _live("explore")
    probing = _live("probing")


__all__ = ["DECAYED", "TTFT", "LiveCandidate", "LiveLoads"]
