"""A route's live loads, cached so that ranking a request costs little per endpoint.

``router.state.stats.loads`` computes a ranking's loads directly from each endpoint's stats
(time-decayed means with tower's PeakEWMA peak rule, blended towards the route's best by
confidence). A route ranks on every request, so ``RouteLoads`` gives the same numbers (up
to rounding) at a fraction of the cost: with one half-life per route, an endpoint's
confidence is ``a * D``, where ``a`` changes only when a sample arrives (cached per
endpoint) and ``D = 0.5 ** ((now - t0) / halflife)`` is one factor for the whole route. A
blended estimate ``prior + conf * (x - prior)`` is then ``prior + D * g`` with
``g = a * (x - prior)`` cached too, so a ranking reads cached columns, does a multiply-add
per endpoint and metric it needs, and builds no object per endpoint. (A route of a few
endpoints keeps no cache: its stats change on about every request, so each ranking
computes its columns afresh, still building no objects.)

``RouteLoads`` keeps the cache; ``LiveLoads`` is one ranking's view of it, the ``Loads``
that policies compare, and reads the route's columns directly (its hot paths are inlined
on purpose: at a few endpoints, calls are most of the cost).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Sequence
from itertools import compress, islice
from operator import ne
from typing import Any, Final

from policies import Candidate, Loads
from policies.base import Term
from router.state.stats import EXPLORE_BELOW, PROBE_BELOW, EndpointStats, Prior

_DECAYED: Final = {"latency_s": 0, "ttft_s": 1, "tokens_per_s": 2, "error_rate": 3}
_TTFT: Final = 1
# The route-wide decay factor is measured from ``t0``; after this many half-lives ``t0``
# moves up to now and every ``a`` is recomputed, so neither factor ever nears underflow.
_REBASE_HALFLIVES: Final = 32.0
_STALE: Final = -2
_INF: Final = math.inf
# Up to this many endpoints a ranking is computed afresh from the stats (``_direct``):
# they change on about every request, and keeping the cache in step costs more than that.
DIRECT_UP_TO: Final = 4


class _Leasts:
    """The least entry of each of a few columns, kept as entries change: O(1) per change
    unless a least one itself gets worse, which costs one C-level pass when next asked."""

    __slots__ = ("_at", "_leasts", "_value", "columns")

    def __init__(self, n: int, empties: Sequence[float]) -> None:
        self.columns = [[empty] * n for empty in empties]
        self._value = list(empties)
        self._at = [_STALE] * len(empties)
        self._leasts: tuple[float, ...] | None = None

    def set(self, k: int, entries: Iterable[float]) -> None:
        """Entry ``k`` of each column."""
        self._leasts = None
        at, value = self._at, self._value
        for i, (column, entry) in enumerate(zip(self.columns, entries, strict=True)):
            column[k] = entry
            if at[i] == _STALE:
                continue
            if entry <= value[i]:
                value[i], at[i] = entry, k
            elif at[i] == k:
                at[i] = _STALE

    def leasts(self, keys: Sequence[int] | None = None) -> tuple[float, ...]:
        """Over every entry, or over ``keys`` only."""
        if keys is not None:
            return tuple(min(map(c.__getitem__, keys), default=_INF) for c in self.columns)
        found = self._leasts
        if found is None:
            at, value = self._at, self._value
            for i, column in enumerate(self.columns):
                if at[i] == _STALE:
                    value[i] = min(column, default=_INF)
                    at[i] = column.index(value[i]) if column else -1
            found = self._leasts = tuple(value)
        return found


class RouteLoads:
    """A route's live loads, kept ready to rank (see the module docstring).

    ``at`` makes one ranking's ``LiveLoads``: it first recomputes the cached values of the
    endpoints whose stats changed since the last ranking, then leaves this ranking's bests
    behind as the route's ``prior``, as ``loads`` does. Stats report their changes to the
    route that watches them (the latest to rank with them: after a reload, the new
    runtime's); a route that lost them to a newer one compares every ``version`` instead.
    Keys are positions in the route, which are the endpoints' ``index``. A route of up to
    ``direct_up_to`` endpoints keeps no cache: each ranking reads the stats afresh.
    """

    def __init__(
        self,
        specs: Sequence[Any],
        stats: Sequence[EndpointStats],
        prices: Sequence[tuple[float, float]],
        prior: Prior,
        direct_up_to: int = DIRECT_UP_TO,
    ) -> None:
        n = len(stats)
        self.direct = n <= direct_up_to
        self.prior = prior
        self.keys = range(n)
        self.handles = [
            LiveCandidate(self, k, spec.id, spec.index, spec.weight, p_in, p_out)
            for k, (spec, (p_in, p_out)) in enumerate(zip(specs, prices, strict=True))
        ]
        self.index_ordered = all(k == spec.index for k, spec in enumerate(specs))
        self.latest: LiveLoads | None = None
        self.static: dict[str, list[float]] = {
            "weight": [spec.weight for spec in specs],
            "price": [p_in + 3.0 * p_out for p_in, p_out in prices],
            "index": [spec.index for spec in specs],
        }
        self.dirty: list[EndpointStats] = []  # stats that changed since the last ranking
        self._stats = list(stats)
        self._slot = {st: k for k, st in enumerate(self._stats)}
        self._watching = False
        self._orphaned = False  # another route watches (some of) these stats now
        self._seen = [-1] * n  # the stats versions the cache reflects
        self._halflives = [0.0] * n
        self._halflife = 0.0  # shared by every endpoint; 0.0 when they differ
        self._t0 = 0.0
        self._newest = -_INF  # the latest sample time of any endpoint
        self.a = [0.0] * n  # confidence = a * 0.5 ** ((now - t0) / halflife)
        self._evidence: list[tuple[float, float] | None] = [None] * n  # (last, sample_conf)
        self._raw: list[list[float | None]] = [[None] * n for _ in _DECAYED]
        self._g: list[list[float]] = [[0.0] * n for _ in _DECAYED]
        self._g_prior: list[float | None] = [None] * len(_DECAYED)  # prior each g is for
        self._g_top: list[float | None] = [None] * len(_DECAYED)  # max(g), when known
        self.busy = [0] * n
        # a * output error rate: its estimate blends towards 0 (no prior) as evidence ages.
        self.out_errors = [0.0] * n
        # key -> (oldest start still without a token, TTFT estimate, a), for endpoints
        # with an estimate: their TTFT is raised to that wait once it is longer.
        self._waiting: dict[int, tuple[float, float, float]] = {}
        # What the prior is made of, over endpoints with evidence (a > 0): least latency,
        # TTFT of those not waiting (the others' depends on now), -throughput, errors;
        # the least TTFT estimate of those waiting, which their TTFT is at least; and
        # the least a, which says whether any endpoint's confidence is low.
        self._leasts = _Leasts(n, (_INF, _INF, 0.0, _INF, _INF, 0.0))

    def at(
        self, keys: list[int] | None, now: float, forced: Collection[int] = ()
    ) -> LiveLoads | None:
        """This ranking's loads over ``keys`` (None: the whole route), with the ``forced``
        keys to be explored; None where only ``loads`` can answer exactly: the endpoints'
        half-lives differ, or a sample is newer than ``now``."""
        if self.direct:
            return self._direct(keys, now, forced)
        if self.dirty or self._orphaned or not self._watching:
            self._catch_up(now)
        h = self._halflife
        if not h or now < self._newest:
            return None
        if not 0.0 <= now - self._t0 <= _REBASE_HALFLIVES * h:
            self._t0 = now
            for k in self.keys:
                self._refresh(k)
        # Leave this ranking's bests behind as the prior, as ``loads`` does; this ranking
        # blends with the one before. The TTFT of a request waiting longer than its
        # endpoint's estimate is that wait: it raises the estimate's g, and counts.
        prior = self.prior
        blend_with = (prior.latency_s, prior.ttft_s, prior.tokens_per_s, prior.error_rate)
        lat, ttft, neg_tps, err, waiting_least, least_a = self._leasts.leasts(keys)
        ttft_g = None
        waiting = self._waiting
        if waiting:
            p = blend_with[_TTFT]
            ttft_g = self.g(_TTFT, p).copy()
            if keys is not None:
                members = set(keys)
                waiting = {k: w for k, w in waiting.items() if k in members}
            if waiting_least < ttft:  # a waiting endpoint may have the best TTFT
                for k, (start, estimate, a) in waiting.items():
                    wait = now - start
                    if wait > estimate:
                        estimate = wait
                        ttft_g[k] = a * (wait - p)
                    if estimate < ttft and a > 0.0:
                        ttft = estimate
            else:
                for k, (start, estimate, a) in waiting.items():
                    wait = now - start
                    if wait > estimate:
                        ttft_g[k] = a * (wait - p)
        prior.latency_s = 0.0 if lat == _INF else lat
        prior.ttft_s = 0.0 if ttft == _INF else ttft
        prior.tokens_per_s = -neg_tps if neg_tps < 0.0 else 0.0
        prior.error_rate = 0.0 if err == _INF else err
        decay = 0.5 ** ((now - self._t0) / h)
        eff = {} if ttft_g is None else {_TTFT: ttft_g}
        live = LiveLoads(self, keys, now, decay, blend_with, eff, forced, least_a, False)
        self.latest = live
        return live

    def _direct(self, keys: list[int] | None, now: float, forced: Collection[int]) -> LiveLoads:
        """This ranking computed from the stats, as ``loads`` does (to rounding), with
        ``g = confidence * (x - prior)`` and a decay factor of 1."""
        if not self._watching:
            self._take_over(None)  # nothing to report: nothing cached
        prior = self.prior
        blend_with = (prior.latency_s, prior.ttft_s, prior.tokens_per_s, prior.error_rate)
        p_lat, p_ttft, p_tps, p_err = blend_with
        n = len(self._stats)
        g_lat, g_ttft, g_tps, g_err = [0.0] * n, [0.0] * n, [0.0] * n, [0.0] * n
        best_lat = best_ttft = best_err = least = _INF
        best_tps = 0.0
        confidences, busy, stats, out_errors = self.a, self.busy, self._stats, self.out_errors
        for k in self.keys if keys is None else keys:
            st = stats[k]
            last = st.last_sample
            if last is None:
                conf = 0.0
            elif now > last:
                conf = st.sample_conf * 0.5 ** ((now - last) / st.halflife)
            else:
                conf = st.sample_conf
            confidences[k] = conf
            if conf < least:
                least = conf
            busy[k] = st.in_flight
            x = st.output_errors.mean
            out_errors[k] = conf * x if x else 0.0
            ttft = st.ttft.mean
            waiting = st._waiting
            if waiting and ttft is not None:
                wait = now - next(iter(waiting.values()))
                if wait > ttft:
                    ttft = wait
            seen = conf > 0.0
            x = st.latency.mean
            if x is not None:
                g_lat[k] = conf * (x - p_lat)
                if seen and x < best_lat:
                    best_lat = x
            if ttft is not None:
                g_ttft[k] = conf * (ttft - p_ttft)
                if seen and ttft < best_ttft:
                    best_ttft = ttft
            x = st.tokens_per_s.mean
            if x is not None:
                g_tps[k] = conf * (x - p_tps)
                if seen and x > best_tps:
                    best_tps = x
            x = st.errors.mean
            if x is not None:
                g_err[k] = conf * (x - p_err)
                if seen and x < best_err:
                    best_err = x
        prior.latency_s = 0.0 if best_lat == _INF else best_lat
        prior.ttft_s = 0.0 if best_ttft == _INF else best_ttft
        prior.tokens_per_s = best_tps
        prior.error_rate = 0.0 if best_err == _INF else best_err
        eff = {0: g_lat, _TTFT: g_ttft, 2: g_tps, 3: g_err}
        live = LiveLoads(self, keys, now, 1.0, blend_with, eff, forced, least, True)
        self.latest = live
        return live

    def _take_over(self, dirty: list[EndpointStats] | None) -> None:
        """Have the stats report their changes to this route (``dirty``; None: to none),
        and not to the route of an older runtime, which then compares versions."""
        for st in self._stats:
            if st._owner is not None and st._owner is not self:
                st._owner._orphaned = True
            st._owner, st._dirty = self, dirty
        self._watching = True

    def _catch_up(self, now: float) -> None:
        """Recompute what changed; the first time, take over the stats' change reports
        (from the route of an older runtime, which then compares versions)."""
        stats = self._stats
        if not self._watching:
            self._take_over(self.dirty)
            self._t0 = now
            changed = stats
        elif self._orphaned:
            versions = [st.version for st in stats]
            if versions == self._seen:
                return
            changed = [stats[k] for k in compress(self.keys, map(ne, versions, self._seen))]
        else:
            changed = self.dirty[:]
            self.dirty.clear()  # in place: the stats hold this list
        seen, slot = self._seen, self._slot
        for st in changed:
            k = slot[st]
            if st.version != seen[k]:
                self._refresh(k)

    def _refresh(self, k: int) -> None:
        st = self._stats[k]
        self._seen[k] = st.version
        h = st.halflife
        if h != self._halflives[k]:
            self._halflives[k] = h
            distinct = set(self._halflives)
            self._halflife = distinct.pop() if len(distinct) == 1 else 0.0
        last = st.last_sample
        if last is None:
            a = 0.0
            self._evidence[k] = None
        else:
            a = st.sample_conf * 0.5 ** ((self._t0 - last) / h)
            self._evidence[k] = (last, st.sample_conf)
            if last > self._newest:
                self._newest = last
        self.a[k] = a
        ttft = st.ttft.mean
        raw = (st.latency.mean, ttft, st.tokens_per_s.mean, st.errors.mean)
        for m, x in enumerate(raw):
            self._raw[m][k] = x
            p = self._g_prior[m]
            if p is not None:
                self._g[m][k] = 0.0 if x is None else a * (x - p)
                self._g_top[m] = None
        self.busy[k] = st.in_flight
        x = st.output_errors.mean
        self.out_errors[k] = a * x if x else 0.0
        waiting = st._waiting
        waits = bool(waiting) and ttft is not None
        if waits:
            start = next(iter(waiting.values()))  # the oldest: dicts keep insertion order
            self._waiting[k] = (start, ttft, a)  # type: ignore[assignment]  # not None
        else:
            self._waiting.pop(k, None)
        lat, _, tps, err = raw
        if a > 0.0:  # confidence > 0: counts towards the prior
            entries = (
                _INF if lat is None else lat,
                _INF if ttft is None or waits else ttft,
                0.0 if tps is None else -tps,
                _INF if err is None else err,
                ttft if waits else _INF,
                a,
            )
        else:
            entries = (_INF, _INF, 0.0, _INF, _INF, a)
        self._leasts.set(k, entries)  # type: ignore[arg-type]  # waits: ttft is known

    def g(self, m: int, prior: float) -> list[float]:
        """``a * (x - prior)`` per endpoint for decayed metric ``m`` (0 where x is unknown),
        recomputed only when the prior moved."""
        if self._g_prior[m] != prior:
            self._g[m] = [
                0.0 if x is None else a * (x - prior)
                for a, x in zip(self.a, self._raw[m], strict=True)
            ]
            self._g_prior[m] = prior
            self._g_top[m] = None
        return self._g[m]

    def g_top(self, m: int) -> float:
        """max(g) of metric ``m``, for the prior ``g`` was last asked for."""
        top = self._g_top[m]
        if top is None:
            top = self._g_top[m] = max(self._g[m], default=0.0)
        return top


class LiveLoads(Loads):
    """One ranking's loads over a route's endpoints, computed a metric at a time.

    Its candidates are the route's ``LiveCandidate`` objects, made once per route: their
    numbers are those of the route's latest ranking (the pipeline uses them at once).
    Metrics are indexed by key over the whole route.
    """

    __slots__ = (
        "_decay",
        "_eff",
        "_exact",
        "_flags",
        "_forced",
        "_least_a",
        "_metrics",
        "_now",
        "_prior",
        "_route",
        "full",
        "index_ordered",
        "keys",
        "span",
    )

    def __init__(
        self,
        route: RouteLoads,
        keys: list[int] | None,
        now: float,
        decay: float,
        prior: tuple[float, float, float, float],
        eff: dict[int, list[float]],
        forced: Collection[int],
        least_a: float,
        exact: bool,
    ) -> None:
        self._route = route
        self._least_a = least_a
        self._exact = exact  # a * D is the confidence itself (a route computed directly)
        self._now = now
        self.span = len(route.handles)
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
        self._flags: tuple[Collection[int], Collection[int]] | bool | None = False

    def _g(self, m: int) -> list[float]:
        g = self._eff.get(m)
        if g is None:
            g = self._eff[m] = self._route.g(m, self._prior[m])
        return g

    def _top(self, m: int, g: list[float]) -> float:
        """max(g) over the candidates; cached by the route for its own (unraised) g."""
        if not self.full:
            return max(map(g.__getitem__, self.keys), default=0.0)
        if g is self._route._g[m]:
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
                    w /= max(map(column.__getitem__, self.keys), default=0.0) or 1.0
                columns.append((w, column))
                continue
            p = prior[m]
            g = eff.get(m)
            if g is None:
                g = eff[m] = route._g[m] if route._g_prior[m] == p else route.g(m, p)
            if normalised:  # by the largest: prior + D * max(g), as D > 0
                if not self.full:
                    top = self._top(m, g)
                elif g is route._g[m]:  # the route's own, and its cached max
                    known = route._g_top[m]
                    top = route.g_top(m) if known is None else known
                else:
                    top = max(g)
                w /= (p + d * top) or 1.0
            constant += w * p
            columns.append((w * d, g))
        return _weighted_sum(constant, columns, self.span)

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
        margin = 1.0 if exact else 1.0 + 1e-9
        if not forced and self._least_a * d >= PROBE_BELOW * margin:
            self._flags = None  # every confidence is above both thresholds
            return None
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
            if conf < PROBE_BELOW:
                if busy[k] > 0:
                    probing.add(k)
                elif conf < EXPLORE_BELOW:
                    explore.add(k)
        explore.update(forced)
        probing.difference_update(forced)
        found = self._flags = (explore, probing) if explore or probing else None
        return found

    def _confidence(self, k: int) -> float:
        """``EndpointStats.confidence``, as ``loads`` computes it."""
        evidence = self._route._evidence[k]
        if evidence is None:
            return 0.0
        last, conf = evidence
        now = self._now
        return conf * 0.5 ** ((now - last) / self._route._halflife) if now > last else conf

    def pick(self, keys: Iterable[int]) -> list[Candidate]:
        return list(map(self._route.handles.__getitem__, keys))

    def value(self, field: str, key: int) -> float:
        """One candidate's number, for ``LiveCandidate``."""
        if field == "explore" or field == "probing":
            flags = self.flags()
            return flags is not None and key in flags[field == "probing"]
        return self.metric(field)[key]


def _weighted_sum(
    constant: float, terms: Sequence[tuple[float, Sequence[float]]], n: int
) -> list[float]:
    """``constant + sum(w * column)`` per position, in one pass for up to three terms."""
    count = len(terms)
    if count == 3:
        (w1, x1), (w2, x2), (w3, x3) = terms
        return [constant + w1 * a + w2 * b + w3 * c for a, b, c in zip(x1, x2, x3)]  # noqa: B905
    if count == 2:
        (w1, x1), (w2, x2) = terms
        return [constant + w1 * a + w2 * b for a, b in zip(x1, x2)]  # noqa: B905  # same length
    if count == 1:
        ((w1, x1),) = terms
        return [constant + w1 * a for a in x1]
    total = _weighted_sum(constant, terms[:3], n) if terms else [constant] * n
    for w, x in terms[3:]:
        total = [t + w * v for t, v in zip(total, x, strict=True)]
    return total


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


__all__ = [
    "LiveCandidate",
    "LiveLoads",
    "RouteLoads",
]
