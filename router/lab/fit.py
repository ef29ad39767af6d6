"""Fitting the fleet: each endpoint's behaviour, from the attempts a trace recorded.

Per endpoint (matched by route and id, else by id in any route) the fit keeps, for each
time bucket of the trace: how often an attempt answered, failed with each HTTP status
(429s among them), timed out, could not connect, or came back broken; the empirical
distributions of TTFT (streamed answers), tokens per second (streamed requests served by
one attempt: completion tokens over latency minus TTFT), whole-answer time (non-streamed
answers) and time to a failure; and the chance that a served stream broke mid-way.
Buckets are ``width_s`` wide (the trace's span over ``MAX_BUCKETS``, at least
``MIN_WIDTH_S``: a host that slowed down mid-way through a short run is fast until then
in the lab too); a bucket with fewer than ``MIN_SAMPLES`` of some quantity borrows its
nearest neighbours' until it has enough, so drift shows where the evidence is dense and
sparse stretches lean on nearby time rather than on nothing. A prompt-cache hit's TTFT is
counted as the miss it would have been (``Fleet._cache`` fits what a hit saves).

What it cannot know, and the stated answers (docs/lab.md says more):

- An endpoint the trace never tried: the pooled behaviour of its route's endpoints, else
  of the whole trace, else ``PRIOR_TTFT_S`` and ``PRIOR_TOKENS_PER_S`` with no errors.
- An endpoint tried only a few times (a policy that avoided it): its outcome mix is
  topped up to ``MIN_SAMPLES`` attempts with its route's pooled mix, and a distribution
  it never showed (no TTFT: it never answered) is its route's.
- How long a timed-out attempt would have taken: it never answers in the lab either.
- Load: the fit is what the endpoints did at the trace's load; sending them more (another
  policy, ``--rate``) does not slow them down.
- Attempts cancelled without a verdict (a hedge that lost) are left out, so a trace of a
  hedged policy under-states its slow endpoints' TTFT tail.
"""

from __future__ import annotations

import math
import statistics
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from operator import attrgetter
from typing import Any, TypeVar

from providers.simulated.prompt_cache import CacheSettings
from router.lab.fleet import Bucket, Fitted, Quantiles
from router.lab.trace import CENSORED, HANG, HTTP, OK, Observation, Trace

MAX_BUCKETS = 48
MIN_WIDTH_S = 1.0
MIN_SAMPLES = 20
MIN_LAST = 3  # verdicts in a host's last bucket that stand for it after (``_kept_from``)
PRIOR_TTFT_S = 0.5
PRIOR_TOKENS_PER_S = 50.0

_T = TypeVar("_T")


def stable_seed(seed: int, *names: str) -> int:
    """A per-object seed that does not depend on Python's randomised string hashes."""
    return zlib.crc32("\x00".join((str(seed), *names)).encode())


class Fleet:
    """Behaviours fitted from a trace's attempts, looked up by route and endpoint id."""

    def __init__(self, trace: Trace, seed: int) -> None:
        self.seed = seed
        self.start = trace.requests[0].ts if trace.requests else 0.0
        span = trace.span_s
        self.width_s = max(MIN_WIDTH_S, span / MAX_BUCKETS)
        self.buckets = int(span / self.width_s) + 1
        self.by_endpoint: dict[tuple[str, str], list[Observation]] = {}
        self.by_id: dict[str, list[Observation]] = {}
        self.by_route: dict[str, list[Observation]] = {}
        for obs in trace.attempts:
            self.by_endpoint.setdefault((obs.route, obs.endpoint), []).append(obs)
            self.by_id.setdefault(obs.endpoint, []).append(obs)
            self.by_route.setdefault(obs.route, []).append(obs)
        self.everything = list(trace.attempts)
        tps = [o.tokens_per_s for o in trace.attempts if o.tokens_per_s]
        self.default_tps = statistics.median(tps) if tps else PRIOR_TOKENS_PER_S

    def behaviour(self, route: str, endpoint: str) -> Fitted:
        seed = stable_seed(self.seed, "fit", route, endpoint)
        found = self.by_endpoint.get((route, endpoint)) or self.by_id.get(endpoint)
        pool = self.by_route.get(route) or self.everything
        if found:
            return self._fit(found, pool, "fitted", seed)
        if self.by_route.get(route):
            return self._fit(pool, pool, f"prior: the pooled endpoints of route {route!r}", seed)
        if self.everything:
            return self._fit(pool, pool, "prior: every endpoint of the trace, pooled", seed)
        return constant_prior(seed)

    def _fit(
        self,
        observations: Sequence[Observation],
        pool: Sequence[Observation],
        source: str,
        seed: int,
    ) -> Fitted:
        """``observations`` fitted; what they lack, taken from ``pool`` (the route's)."""
        pooled = self._buckets(pool, None, None) if pool is not observations else None
        cached_by = observations
        if pooled is not None and sum(o.outcome == OK for o in observations) < MIN_SAMPLES:
            # Too few answers to tell whether it caches (a host the policy avoided): its
            # route's hosts' caching, a stated prior, as for its outcome mix.
            cached_by = pool
        cache = self._cache(cached_by)
        shared = _shared_prefix(cached_by) if cache is not None else 0
        return Fitted(
            self._buckets(observations, pooled, cache),
            self.start,
            self.width_s,
            source=source,
            seed=seed,
            default_tokens_per_s=self.default_tps,
            cache=cache,
            shared_prefix_tokens=shared,
            summary=_summary(observations, self.buckets),
        )

    def _per_bucket(self, observations: Sequence[Observation]) -> list[list[Observation]]:
        n = self.buckets
        per: list[list[Observation]] = [[] for _ in range(n)]
        for obs in observations:
            per[self._bucket(obs)].append(obs)
        return per

    def _bucket(self, obs: Observation) -> int:
        return min(max(int((obs.ts - self.start) / self.width_s), 0), self.buckets - 1)

    def _cache(self, observations: Sequence[Observation]) -> CacheSettings | None:
        """A host that served cached prompt tokens caches. How much a hit saves is
        ``ttft_factor`` as the simulator applies it: TTFT times 1 - share * (1 - factor)
        for a cached share of the prompt. Fitted to (cached share, TTFT over its time
        bucket's median TTFT), which the host's drift does not move (``_factor``). It
        needs ``MIN_SAMPLES`` answers whose shares differ (a conversation's first turn
        and its later ones); else 1.0."""
        if not any(o.cached for o in observations):
            return None
        answered = [o for o in observations if o.outcome == OK and o.stream and o.ttft_s]
        per = self._per_bucket(answered)
        medians: dict[int, float] = {}
        xs, ys = [], []
        for o in answered:
            k = self._bucket(o)
            if k not in medians:
                medians[k] = statistics.median(m.ttft_s or 0.0 for m in _near(per, k))
            if medians[k] > 0.0 and o.ttft_s is not None:
                xs.append(o.cached_share)
                ys.append(o.ttft_s / medians[k])
        factor = 1.0
        if len(xs) >= MIN_SAMPLES and statistics.pvariance(xs) >= 0.005:
            factor = _factor(xs, ys)
        return CacheSettings(ttft_factor=factor)

    def _buckets(
        self,
        observations: Sequence[Observation],
        pooled: Sequence[Bucket] | None,
        cache: CacheSettings | None,
    ) -> list[Bucket]:
        """Per bucket: the outcome mix and the distributions. A cache hit's TTFT is
        counted as the miss it would have been (``cache``'s factor undone): the lab
        applies the factor again to the requests it replays as hits."""
        n = self.buckets
        per = self._per_bucket(observations)
        factor = 1.0 if cache is None else cache.ttft_factor
        judged = [[o for o in b if o.outcome != CENSORED] for b in per]
        served = [[o for o in b if o.outcome == OK] for b in judged]
        streamed = [[o for o in b if o.stream] for b in served]
        failed = [[o for o in b if o.outcome not in (OK, HANG)] for b in judged]
        near = _near
        last = max((k for k in range(n) if judged[k]), default=n - 1)
        if last < n - 1 and len(judged[last]) >= MIN_LAST:
            near = _kept_from(last)
        buckets = []
        for k in range(n):
            outcomes, cumulative = _mix(near(judged, k), pooled[k] if pooled else None)
            near_streamed = near(streamed, k)
            bucket = Bucket(
                outcomes=outcomes,
                cumulative=cumulative,
                ttft=_quantiles(
                    [
                        _uncached(o.ttft_s, o.cached_share, factor)
                        for o in near_streamed
                        if o.ttft_s is not None
                    ]
                ),
                tokens_per_s=_quantiles(
                    [o.tokens_per_s for o in near(served, k, _has_tps) if o.tokens_per_s]
                ),
                whole=_quantiles([o.duration_s for o in near(served, k, _whole)]),
                fail_after=_quantiles([o.duration_s for o in near(failed, k)]),
                p_break=(
                    sum(o.broken for o in near_streamed) / len(near_streamed)
                    if near_streamed
                    else 0.0
                ),
            )
            if pooled is not None:  # a distribution never seen here: the route's
                prior = pooled[k]
                if bucket.ttft is None and bucket.whole is None:
                    bucket.ttft, bucket.whole = prior.ttft, prior.whole
                bucket.tokens_per_s = bucket.tokens_per_s or prior.tokens_per_s
                bucket.fail_after = bucket.fail_after or prior.fail_after
            buckets.append(bucket)
        return buckets


def _mix(
    judged: Sequence[Observation], prior: Bucket | None
) -> tuple[list[tuple[str, int | None]], list[float]]:
    """The outcomes seen and their cumulative probabilities. With fewer than
    ``MIN_SAMPLES`` verdicts, too few to tell 30% from 100%, the counts are topped up to
    ``MIN_SAMPLES`` with the ``prior`` bucket's mix (the route's pooled: a stated prior),
    so one early failure is not read as a host that always fails."""
    weights: dict[tuple[str, int | None], float] = dict(
        Counter((o.outcome, o.status if o.outcome == HTTP else None) for o in judged)
    )
    evidence = len(judged)
    if prior is not None and evidence < MIN_SAMPLES:
        shares = [
            b - a for a, b in zip([0.0, *prior.cumulative[:-1]], prior.cumulative, strict=True)
        ]
        for kind, p in zip(prior.outcomes, shares, strict=True):
            weights[kind] = weights.get(kind, 0.0) + (MIN_SAMPLES - evidence) * p
    outcomes = sorted(weights, key=lambda x: (x[0] != OK, x[0], x[1] or 0)) or [(OK, None)]
    total = sum(weights.values())
    running, cumulative = 0.0, []
    for kind in outcomes:
        running += weights.get(kind, 0.0)
        cumulative.append(running / total if total else 1.0)
    cumulative[-1] = 1.0
    return outcomes, cumulative


def _has_tps(obs: Observation) -> bool:
    return obs.tokens_per_s is not None


def _whole(obs: Observation) -> bool:
    return not obs.stream


def _near(per: Sequence[list[_T]], k: int, keep: Callable[[_T], bool] | None = None) -> list[_T]:
    """Bucket ``k``'s items, with its nearest neighbours' until there are ``MIN_SAMPLES``."""
    out = [x for x in per[k] if keep is None or keep(x)]
    for d in range(1, len(per)):
        if len(out) >= MIN_SAMPLES:
            break
        for j in (k - d, k + d):
            if 0 <= j < len(per):
                out += [x for x in per[j] if keep is None or keep(x)]
    return out


def _kept_from(last: int) -> Callable[..., list[Any]]:
    """``_near``, except that a bucket after ``last`` (the host's last verdicts: the
    recorded policy stopped sending it anything) has what ``last`` showed, alone: the
    host is taken to stay as it was last seen. Borrowing from nearest neighbours would
    mix in the earlier buckets, and a host that slowed down, and was left for it, would
    come back fast."""

    def near(per: Sequence[list[_T]], k: int, keep: Callable[[_T], bool] | None = None) -> list[_T]:
        if k > last:
            own = [x for x in per[last] if keep is None or keep(x)]
            if len(own) >= MIN_LAST:
                return own
        return _near(per, k, keep)

    return near


def _quantiles(samples: list[float]) -> Quantiles | None:
    return Quantiles(samples) if samples else None


def _factor(shares: Sequence[float], ratios: Sequence[float]) -> float:
    """The ``ttft_factor`` f that best explains TTFT ratios y at cached shares x as
    y = a * (1 - (1 - f) * x) * noise, the noise multiplicative (a host's jitter is):
    least squares on logarithms, f searched in steps of 0.01 and a solved for each.
    A straight line through (x, y) weighs the slow, little-cached answers' noise most
    and misread a 0.3 host as 0.22 to 0.31 from one run to the next; this reads 0.29
    to 0.32. The shares are binned by 0.01 first, so the search costs the same for
    any number of answers."""
    n: dict[int, int] = {}
    s1: dict[int, float] = {}  # per bin: the sum of log y, and of its square
    s2: dict[int, float] = {}
    for x, y in zip(shares, ratios, strict=True):
        if y <= 0.0:
            continue
        b = round(x * 100)
        ly = math.log(y)
        n[b] = n.get(b, 0) + 1
        s1[b] = s1.get(b, 0.0) + ly
        s2[b] = s2.get(b, 0.0) + ly * ly
    total = sum(n.values())
    if not total:
        return 1.0
    best, factor = math.inf, 1.0
    for step in range(101):
        keep = 1.0 - step / 100.0  # 1 - f
        lm = {b: math.log(max(1e-9, 1.0 - keep * b / 100.0)) for b in n}
        la = sum(s1[b] - n[b] * lm[b] for b in n) / total  # log a, for this f
        sse = sum(s2[b] - 2.0 * (la + lm[b]) * s1[b] + n[b] * (la + lm[b]) ** 2 for b in n)
        if sse < best:
            best, factor = sse, step / 100.0
    return factor


def _shared_prefix(observations: Sequence[Observation]) -> int:
    """The prompt tokens a conversation's first answer on this host read from its cache:
    a prefix common to conversations (the same tools, one system prompt) that the host
    kept from the others'. The median over first answers, so a host that mostly had
    none (or a log without sessions, or too few conversations to tell) keeps none."""
    seen: set[str] = set()
    firsts: list[int] = []
    for o in sorted(observations, key=attrgetter("ts")):
        if o.outcome == OK and o.session is not None and o.session not in seen:
            seen.add(o.session)
            firsts.append(o.cached_tokens)
    return int(statistics.median(firsts)) if len(firsts) >= MIN_SAMPLES else 0


def _uncached(ttft: float, share: float, factor: float) -> float:
    """A hit's TTFT as a miss: the simulator's law, 1 - share * (1 - factor), undone."""
    return ttft / (1.0 - share * (1.0 - factor)) if share and factor < 1.0 else ttft


def _summary(observations: Sequence[Observation], buckets: int) -> dict[str, object]:
    judged = [o for o in observations if o.outcome != CENSORED]
    n = len(judged) or 1
    ttft = sorted(o.ttft_s for o in judged if o.outcome == OK and o.ttft_s is not None)
    tps = sorted(o.tokens_per_s for o in judged if o.tokens_per_s)

    def q(values: list[float], p: float, scale: float = 1.0) -> float | None:
        return (
            round(values[min(len(values) - 1, int(p * len(values)))] * scale, 1) if values else None
        )

    return {
        "attempts": len(observations),
        "censored": len(observations) - len(judged),
        "error_rate": round(sum(o.outcome != OK for o in judged) / n, 4),
        "rate_429": round(sum(o.status == 429 for o in judged) / n, 4),
        "timeout_rate": round(sum(o.outcome == HANG for o in judged) / n, 4),
        "ttft_p50_ms": q(ttft, 0.5, 1000.0),
        "ttft_p95_ms": q(ttft, 0.95, 1000.0),
        "tokens_per_s_p50": q(tps, 0.5),
        "buckets": buckets,
    }


def constant_prior(seed: int) -> Fitted:
    """No evidence at all: ``PRIOR_TTFT_S``, ``PRIOR_TOKENS_PER_S``, no errors."""
    bucket = Bucket(
        outcomes=[(OK, None)],
        cumulative=[1.0],
        ttft=Quantiles([PRIOR_TTFT_S]),
        tokens_per_s=Quantiles([PRIOR_TOKENS_PER_S]),
        whole=None,
        fail_after=None,
        p_break=0.0,
    )
    return Fitted(
        [bucket],
        0.0,
        0.0,
        source=f"prior: TTFT {PRIOR_TTFT_S * 1000:.0f} ms, {PRIOR_TOKENS_PER_S:.0f} tokens/s, "
        "no errors",
        seed=seed,
        default_tokens_per_s=PRIOR_TOKENS_PER_S,
        summary={"ttft_p50_ms": PRIOR_TTFT_S * 1000, "tokens_per_s_p50": PRIOR_TOKENS_PER_S},
    )
