"""The one rule that turns live stats into the loads policies compare.

Each estimate (latency, TTFT, throughput, error rate) is blended towards an optimistic
prior, the best value among the route's endpoints with evidence, by the endpoint's
``confidence`` (``router.state.stats``): ``prior + confidence * (x - prior)``. So an
endpoint idle for a while drifts back into consideration. An endpoint whose confidence
is under ``EXPLORE_BELOW`` and that has nothing in flight is marked ``explore`` (tried
first, once); one under ``PROBE_BELOW`` with a request already in flight is marked
``probing`` (tried last): an endpoint whose evidence is stale gets one request at a time
until fresh evidence is in, however attractive its blended estimate looks. Explored,
never starved, never flooded. A request waiting for its first token longer than the
TTFT estimate raises the estimate to its age. The output error rate blends towards 0.

``blend`` computes that directly, for a route of a few endpoints on every request and
for ``loads``, the reference; ``router.state.loads.RouteLoads`` computes the same rule
factored for a cache (confidence = a * D), and is tested against ``loads``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from policies import Candidate
from router.state.stats import EndpointStats

EXPLORE_BELOW: Final = 0.25
PROBE_BELOW: Final = 0.5  # evidence older than about a half-life: one request at a time
_INF: Final = math.inf

# g = confidence * (x - prior) per endpoint, for latency, TTFT, throughput and errors
Gains = tuple[list[float], list[float], list[float], list[float]]
# The prior a ranking blends with: latency, TTFT, throughput, errors
Blend = tuple[float, float, float, float]


@dataclass(slots=True)
class Prior:
    """The route's best live values, the optimistic prior that stale estimates drift to.

    Each ranking blends with the prior found by the previous one and leaves the new one
    behind, so a ranking is a single pass over the route (the lag is one request).
    """

    latency_s: float = 0.0
    ttft_s: float = 0.0
    tokens_per_s: float = 0.0
    error_rate: float = 0.0


def flags(conf: float, busy: int) -> tuple[bool, bool]:
    """(explore, probing) of an endpoint with this confidence and this many in flight."""
    if conf >= PROBE_BELOW:
        return False, False
    return busy == 0 and conf < EXPLORE_BELOW, busy > 0


def blend(
    stats: Sequence[EndpointStats],
    keys: Iterable[int],
    now: float,
    prior: Prior,
    conf: list[float],
    busy: list[int],
    broken: list[float],
    gains: Gains,
) -> tuple[Blend, float]:
    """The rule for the endpoints ``keys`` of ``stats``: fills their confidence (``conf``),
    in-flight count (``busy``), blended output error rate (``broken``) and g = confidence *
    (x - prior) per metric (``gains``; 0 where x is unknown: prior + g is the estimate);
    returns the prior blended with and the least confidence; leaves the bests of endpoints
    with evidence in ``prior``. One pass of attribute reads: this runs on every request
    (its columns are the route's own, filled afresh rather than made per ranking)."""
    blend_with = (prior.latency_s, prior.ttft_s, prior.tokens_per_s, prior.error_rate)
    p_lat, p_ttft, p_tps, p_err = blend_with
    g_lat, g_ttft, g_tps, g_err = gains
    best_lat = best_ttft = best_err = least = _INF
    best_tps = 0.0
    for k in keys:
        st = stats[k]
        # stats.confidence, inlined: this is the hot loop.
        c = st.sample_conf
        last = st.last_sample
        if last is None:
            c = 0.0
        elif now > last:
            c *= 0.5 ** ((now - last) / st.halflife_s)
        conf[k] = c
        if c < least:
            least = c
        busy[k] = st.in_flight
        x = st.output_errors.mean
        broken[k] = c * x if x else 0.0
        ttft = st.ttft.mean
        since = st.waiting_since
        if since is not None and ttft is not None and now - since > ttft:
            ttft = now - since
        seen = c > 0.0
        x = st.latency.mean
        if x is not None:
            g_lat[k] = c * (x - p_lat)
            if seen and x < best_lat:
                best_lat = x
        else:
            g_lat[k] = 0.0
        if ttft is not None:
            g_ttft[k] = c * (ttft - p_ttft)
            if seen and ttft < best_ttft:
                best_ttft = ttft
        else:
            g_ttft[k] = 0.0
        x = st.tokens_per_s.mean
        if x is not None:
            g_tps[k] = c * (x - p_tps)
            if seen and x > best_tps:
                best_tps = x
        else:
            g_tps[k] = 0.0
        x = st.errors.mean
        if x is not None:
            g_err[k] = c * (x - p_err)
            if seen and x < best_err:
                best_err = x
        else:
            g_err[k] = 0.0
    # The bests left behind, infinite where no endpoint had evidence (then 0).
    prior.latency_s = 0.0 if best_lat == _INF else best_lat
    prior.ttft_s = 0.0 if best_ttft == _INF else best_ttft
    prior.tokens_per_s = best_tps
    prior.error_rate = 0.0 if best_err == _INF else best_err
    return blend_with, least


def loads(
    endpoints: Sequence[tuple[Any, EndpointStats]],
    now: float,
    prices: Sequence[tuple[float, float]],
    prior: Prior | None = None,
) -> list[Candidate]:
    """The candidates of one ranking, as plain ``Candidate`` objects: the reference.

    ``endpoints`` pairs each endpoint spec (id, index, weight) with its stats. Routes rank
    with ``RouteLoads``, which falls back to this where its cache cannot stand in, and
    whose tests compare with it. Without a ``prior`` (tests, one-off views) it first
    finds one.
    """
    if prior is None:
        prior = Prior()
        loads(endpoints, now, prices, prior)
    n = len(endpoints)
    conf, busy, broken = [0.0] * n, [0] * n, [0.0] * n
    stats = [st for _, st in endpoints]
    g_lat, g_ttft, g_tps, g_err = gains = [0.0] * n, [0.0] * n, [0.0] * n, [0.0] * n
    blend_with, _ = blend(stats, range(n), now, prior, conf, busy, broken, gains)
    p_lat, p_ttft, p_tps, p_err = blend_with
    out = []
    for k, ((spec, _), (p_in, p_out)) in enumerate(zip(endpoints, prices, strict=True)):
        explore, probing = flags(conf[k], busy[k])
        out.append(
            Candidate(
                spec.id,
                spec.index,
                spec.weight,
                p_in,
                p_out,
                p_lat + g_lat[k],
                p_ttft + g_ttft[k],
                p_tps + g_tps[k],
                p_err + g_err[k],
                busy[k],
                explore,
                probing,
                broken[k],
            )
        )
    return out


__all__ = ["EXPLORE_BELOW", "PROBE_BELOW", "Blend", "Gains", "Prior", "blend", "flags", "loads"]
