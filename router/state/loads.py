"""A route's live loads, cached so that ranking a request costs little per endpoint.

``router.state.blend`` is the rule: time-decayed means (tower's PeakEWMA peak rule)
blended towards the route's best by confidence, computed directly. A route ranks on every
request, so ``RouteLoads`` gives the same numbers (up to rounding) at a fraction of the
cost: with one half-life per route, an endpoint's
confidence is ``a * D``, where ``a`` changes only when a sample arrives (cached per
endpoint) and ``D = 0.5 ** ((now - t0) / halflife)`` is one factor for the whole route. A
blended estimate ``prior + conf * (x - prior)`` is then ``prior + D * g`` with
``g = a * (x - prior)`` cached too, so a ranking reads cached columns, does a multiply-add
per endpoint and metric it needs, and builds no object per endpoint. (A route of a few
endpoints keeps no cache: its stats change on about every request, so each ranking
computes its columns afresh, still building no objects.)

``RouteLoads`` keeps the cache, up to date through the ``ChangeFeed`` it subscribes its
stats to; ``router.state.live.LiveLoads`` is its latest ranking's view of it, the
``Loads`` that policies compare, reading the route's public columns: one per route,
renewed by each ranking.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Sequence
from itertools import compress
from operator import ne
from typing import Any, Final

from router.state.blend import Gains, Prior, blend
from router.state.live import TTFT, LiveCandidate, LiveLoads
from router.state.stats import ChangeFeed, EndpointStats

_TTFT: Final = TTFT
_DECAYED_COUNT: Final = 4  # latency, TTFT, throughput, errors: the metrics blended
# The route-wide decay factor is measured from ``t0``; after this many half-lives ``t0``
# moves up to now and every ``a`` is recomputed, so neither factor ever nears underflow.
_REBASE_HALFLIVES: Final = 32.0
_STALE: Final = -2
_INF: Final = math.inf
# Up to this many endpoints a ranking is computed afresh from the stats (``at``):
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

    ``at`` renews the route's ``LiveLoads`` for one ranking: it first recomputes the cached
    values of the endpoints whose stats changed since the last ranking, then leaves this
    ranking's bests behind as the route's ``prior``, as ``blend`` does. The first ranking
    subscribes the stats to the route's ``ChangeFeed`` (after a reload, the new runtime's
    route takes them over); a route whose feed was superseded compares every ``version``
    instead.
    Keys are positions in the route, which are the endpoints' ``index``. A route of up to
    ``direct_up_to`` endpoints keeps no cache: each ranking reads the stats afresh.

    Public columns, indexed by key, that a ranking's ``LiveLoads`` reads: ``a`` (confidence
    = a * D), ``busy``, ``out_errors`` (a * output error rate), ``gains`` (g = a * (x -
    prior) per decayed metric, for the prior in ``gains_prior``), ``static`` (weight,
    price, index); ``evidence`` and ``halflife`` to compute one confidence exactly.
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
        self.latest: LiveLoads | None = None  # the view, once a ranking has renewed it
        self._view = LiveLoads(self)
        self.static: dict[str, list[float]] = {
            "weight": [spec.weight for spec in specs],
            "price": [p_in + 3.0 * p_out for p_in, p_out in prices],
            "index": [spec.index for spec in specs],
        }
        self._stats = list(stats)
        self._slot = {st: k for k, st in enumerate(self._stats)}
        self._feed: ChangeFeed | None = None  # subscribed at the first ranking
        self._seen = [-1] * n  # the stats versions the cache reflects
        self._halflives = [0.0] * n
        self.halflife = 0.0  # shared by every endpoint; 0.0 when they differ
        self._t0 = 0.0
        self._newest = -_INF  # the latest sample time of any endpoint
        self.a = [0.0] * n  # confidence = a * 0.5 ** ((now - t0) / halflife)
        self.evidence: list[tuple[float, float] | None] = [None] * n  # (last, sample_conf)
        m = _DECAYED_COUNT
        self._raw: list[list[float | None]] = [[None] * n for _ in range(m)]
        self.gains: list[list[float]] = [[0.0] * n for _ in range(m)]
        self.gains_prior: list[float | None] = [None] * m  # the prior each g is for
        self.gains_top: list[float | None] = [None] * m  # max(g), when known
        # A direct route's g per decayed metric, filled afresh by each ranking's ``blend``
        # (whose LiveLoads reads them by metric); not ``gains``, which is the cache's.
        self._fresh: Gains = ([0.0] * n, [0.0] * n, [0.0] * n, [0.0] * n)
        self._fresh_by_metric = dict(enumerate(self._fresh))
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
        keys to be explored: the route's one view, renewed (read it at once). None where
        only ``blend.loads`` can answer exactly: the endpoints' half-lives differ, or a
        sample is newer than ``now``."""
        if self.direct:
            # Computed from the stats by ``blend``, with a decay factor of 1 (here rather
            # than in a method of its own: a call less on every request).
            if self._feed is None:
                self._subscribe(ChangeFeed(collect=False))  # nothing cached: nothing to collect
            blend_with, least = blend(
                self._stats,
                self.keys if keys is None else keys,
                now,
                self.prior,
                self.a,
                self.busy,
                self.out_errors,
                self._fresh,
            )
            live = self.latest = self._view
            live.renew(keys, now, 1.0, blend_with, self._fresh_by_metric, forced, least, True)
            return live
        feed = self._feed
        if feed is None or feed.changed or feed.superseded:
            self._catch_up(now)
        h = self.halflife
        if not h or now < self._newest:
            return None
        if not 0.0 <= now - self._t0 <= _REBASE_HALFLIVES * h:
            self._t0 = now
            for k in self.keys:
                self._refresh(k)
        # Leave this ranking's bests behind as the prior, as ``blend`` does; this ranking
        # blends with the one before.
        prior = self.prior
        blend_with = (prior.latency_s, prior.ttft_s, prior.tokens_per_s, prior.error_rate)
        lat, ttft, neg_tps, err, waiting_least, least_a = self._leasts.leasts(keys)
        ttft_g = None
        if self._waiting:
            ttft_g, ttft = self._raised_ttft(keys, now, blend_with[_TTFT], waiting_least, ttft)
        prior.latency_s = 0.0 if lat == _INF else lat
        prior.ttft_s = 0.0 if ttft == _INF else ttft
        prior.tokens_per_s = -neg_tps if neg_tps < 0.0 else 0.0
        prior.error_rate = 0.0 if err == _INF else err
        decay = 0.5 ** ((now - self._t0) / h)
        eff = {} if ttft_g is None else {_TTFT: ttft_g}
        live = self.latest = self._view
        live.renew(keys, now, decay, blend_with, eff, forced, least_a, False)
        return live

    def _raised_ttft(
        self, keys: list[int] | None, now: float, p: float, waiting_least: float, best: float
    ) -> tuple[list[float], float]:
        """The TTFT gains with each request waiting longer than its endpoint's estimate
        counted at its wait, and the best TTFT with those waits counted."""
        ttft_g = self.g(_TTFT, p).copy()
        waiting = self._waiting
        if keys is not None:
            members = set(keys)
            waiting = {k: w for k, w in waiting.items() if k in members}
        if waiting_least < best:  # a waiting endpoint may have the best TTFT
            for k, (start, estimate, a) in waiting.items():
                wait = now - start
                if wait > estimate:
                    estimate = wait
                    ttft_g[k] = a * (wait - p)
                if estimate < best and a > 0.0:
                    best = estimate
        else:
            for k, (start, estimate, a) in waiting.items():
                wait = now - start
                if wait > estimate:
                    ttft_g[k] = a * (wait - p)
        return ttft_g, best

    def _subscribe(self, feed: ChangeFeed) -> None:
        """Have the stats report their changes to ``feed``, and no longer to the route
        of an older runtime (whose feed is then superseded)."""
        for st in self._stats:
            st.subscribe(feed)
        self._feed = feed

    def _catch_up(self, now: float) -> None:
        """Recompute what changed; the first time, subscribe the stats to this route."""
        stats = self._stats
        feed = self._feed
        if feed is None:
            self._subscribe(ChangeFeed())
            self._t0 = now
            changed = stats
        elif feed.superseded:
            versions = [st.version for st in stats]
            if versions == self._seen:
                return
            changed = [stats[k] for k in compress(self.keys, map(ne, versions, self._seen))]
        else:
            changed = feed.changed[:]
            feed.changed.clear()  # in place: the stats append to this list
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
            self.halflife = distinct.pop() if len(distinct) == 1 else 0.0
        last = st.last_sample
        if last is None:
            a = 0.0
            self.evidence[k] = None
        else:
            # The confidence at t0, not clamped (t0 may come before the sample): the
            # confidence at ``now`` is then a * 0.5 ** ((now - t0) / h).
            a = st.sample_conf * 0.5 ** ((self._t0 - last) / h)
            self.evidence[k] = (last, st.sample_conf)
            if last > self._newest:
                self._newest = last
        self.a[k] = a
        ttft = st.ttft.mean
        raw = (st.latency.mean, ttft, st.tokens_per_s.mean, st.errors.mean)
        for m, x in enumerate(raw):
            self._raw[m][k] = x
            p = self.gains_prior[m]
            if p is not None:
                self.gains[m][k] = 0.0 if x is None else a * (x - p)
                self.gains_top[m] = None
        self.busy[k] = st.in_flight
        x = st.output_errors.mean
        self.out_errors[k] = a * x if x else 0.0
        since = st.waiting_since
        waits = since is not None and ttft is not None
        if waits:
            self._waiting[k] = (since, ttft, a)  # type: ignore[assignment]  # not None
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
        if self.gains_prior[m] != prior:
            self.gains[m] = [
                0.0 if x is None else a * (x - prior)
                for a, x in zip(self.a, self._raw[m], strict=True)
            ]
            self.gains_prior[m] = prior
            self.gains_top[m] = None
        return self.gains[m]

    def g_top(self, m: int) -> float:
        """max(g) of metric ``m``, for the prior ``g`` was last asked for."""
        top = self.gains_top[m]
        if top is None:
            top = self.gains_top[m] = max(self.gains[m], default=0.0)
        return top


__all__ = ["DIRECT_UP_TO", "RouteLoads"]
