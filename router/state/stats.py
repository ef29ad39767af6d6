"""Live, time-decayed stats per endpoint, and the loads policies compare.

Every metric is a decayed mean: sums of samples and of weights that lose half their
weight every ``halflife_s`` of elapsed time (not every N samples), so a burst and a
trickle of the same evidence weigh alike and old evidence fades on a clock. Latency and
TTFT follow the peak rule of tower's ``load/peak_ewma.rs``: a sample above the mean
replaces it at once (trouble is believed immediately), lower samples pull it down at the
decay rate (recovery is believed slowly).

Evidence ages: ``confidence`` is 1 - 0.5**n for n recent samples, times 0.5 per half-life
since the last one. ``loads`` blends each estimate towards an optimistic prior (the best
value among the route's endpoints) by that confidence, so an endpoint idle for a while
drifts back into consideration. An endpoint whose confidence is under ``EXPLORE_BELOW``
and that has nothing in flight is marked ``explore`` (tried first, once); one under
``PROBE_BELOW`` with a request already in flight is marked ``probing`` (tried last): an
endpoint whose evidence is stale gets one request at a time until fresh evidence is in,
however attractive its blended estimate looks. Explored, never starved, never flooded.
A request waiting for its first token longer than the TTFT estimate raises the estimate
to its age, so a host that just went slow is noticed before its first slow answer lands.

``loads`` computes all that directly: it is the reference. A route ranks on every
request with the cached form of the same numbers, ``router.state.loads.RouteLoads``,
which falls back to ``loads`` where its cache cannot stand in.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from policies import Candidate
from router.state.clock import Clock

if TYPE_CHECKING:
    from router.state.loads import RouteLoads

EXPLORE_BELOW = 0.25
PROBE_BELOW = 0.5  # evidence older than about a half-life: one request at a time
_WINDOW = 512  # recent samples kept for p50/p95 display and hedge thresholds


class DecayedMean:
    """A mean whose samples lose half their weight every half-life of elapsed time."""

    __slots__ = ("_sum", "_t", "_weight", "mean", "peak")

    def __init__(self, peak: bool = False) -> None:
        self._sum = 0.0
        self._weight = 0.0
        self._t = 0.0
        self.peak = peak
        self.mean: float | None = None  # kept up to date: read on every ranking

    def add(self, x: float, now: float, halflife: float, decay: float | None = None) -> None:
        """Add a sample at ``now``; ``decay`` is the factor since the last one, when the
        caller has it already (``EndpointStats.finish`` shares one between means)."""
        if self._weight > 0.0:
            if decay is None:
                decay = 0.5 ** ((now - self._t) / halflife) if now > self._t else 1.0
            self._sum *= decay
            self._weight *= decay
            if self.peak and x * self._weight > self._sum:
                self._sum = x * self._weight  # peak rule: jump up to the new sample
        self._sum += x
        self._weight += 1.0
        self._t = now
        self.mean = self._sum / self._weight

    @property
    def value(self) -> float | None:
        return self.mean


class Window:
    """The last few hundred samples, for percentiles on display and hedge thresholds.

    Adding is a bare deque append (``samples.append``, on the hot path); the sorted copy
    percentiles read is kept for a ``stamp`` that the owner moves whenever it adds (the
    stats' ``version``), and made again when asked with another one (or with none).
    """

    __slots__ = ("_sorted", "_stamp", "samples")

    def __init__(self) -> None:
        self.samples: deque[float] = deque(maxlen=_WINDOW)
        self._sorted: list[float] = []
        self._stamp: int | None = None

    def add(self, x: float) -> None:
        self.samples.append(x)
        self._stamp = None

    def __len__(self) -> int:
        return len(self.samples)

    def percentile(self, q: float, stamp: int | None = None) -> float | None:
        if not self.samples:
            return None
        if stamp is None or stamp != self._stamp:
            self._sorted = sorted(self.samples)
            self._stamp = stamp
        s = self._sorted
        return s[min(len(s) - 1, int(q * len(s)))]


class EndpointStats:
    """What one endpoint has shown lately. Survives config reloads (same route and id).

    ``version`` changes whenever anything a ranking reads changes, and the stats put
    themselves on their route's list of changed endpoints (``RouteLoads.dirty``), so the
    route's cache recomputes those and no others.
    """

    __slots__ = (
        "_dirty",
        "_halflife",
        "_owner",
        "_token",
        "_waiting",
        "clock",
        "errors",
        "failures",
        "in_flight",
        "last_error",
        "last_sample",
        "latency",
        "latency_window",
        "output_answers",
        "output_errors",
        "output_failures",
        "requests",
        "sample_conf",
        "samples",
        "tokens_per_s",
        "tool_call_answers",
        "tool_call_failures",
        "tool_errors",
        "tps_window",
        "ttft",
        "ttft_window",
        "version",
    )

    def __init__(self, halflife_s: float = 30.0, clock: Clock = time.monotonic) -> None:
        self._halflife = halflife_s
        self.clock = clock
        self.version = 0
        self._owner: RouteLoads | None = None  # the route cache that watches these stats
        self._dirty: list[EndpointStats] | None = None  # its list of changed endpoints
        self.latency = DecayedMean(peak=True)
        self.ttft = DecayedMean(peak=True)
        self.tokens_per_s = DecayedMean()
        self.errors = DecayedMean()
        self.tool_errors = DecayedMean()
        self.output_errors = DecayedMean()  # answers that came back 200 but broken
        self.latency_window = Window()
        self.ttft_window = Window()
        self.tps_window = Window()
        self.requests = 0
        self.failures = 0
        self.tool_call_answers = 0
        self.tool_call_failures = 0
        self.output_answers = 0
        self.output_failures = 0
        self.in_flight = 0
        self.samples = 0.0  # decayed count of answers, for confidence
        self.sample_conf = 0.0  # 1 - 0.5 ** samples, kept up to date
        self.last_sample: float | None = None
        self.last_error: str | None = None
        self._waiting: dict[int, float] = {}  # attempt token -> start, until its first token
        self._token = 0

    @property
    def halflife(self) -> float:
        return self._halflife

    @halflife.setter
    def halflife(self, seconds: float) -> None:
        if seconds != self._halflife:  # a reload sets it whether or not it changed
            self._halflife = seconds
            self._touch()

    def _touch(self) -> None:
        self.version += 1
        if self._dirty is not None:
            self._dirty.append(self)

    # -- recording ------------------------------------------------------------------

    def start(self) -> int:
        """An attempt began; returns the token to pass to ``first_token``/``finish``."""
        self.in_flight += 1
        self.version += 1
        if self._dirty is not None:
            self._dirty.append(self)
        token = self._token = self._token + 1
        self._waiting[token] = self.clock()
        return token

    def first_token(self, token: int, now: float | None = None) -> None:
        started = self._waiting.pop(token, None)
        if started is not None:
            self.version += 1
            if self._dirty is not None:
                self._dirty.append(self)
            if now is None:
                now = self.clock()
            ttft = now - started
            self.ttft.add(ttft, now, self._halflife)
            self.ttft_window.samples.append(ttft)  # the version moved: percentiles re-sort

    def finish(
        self,
        token: int,
        *,
        ok: bool | None,
        latency_s: float | None = None,
        completion_tokens: int | None = None,
        generation_s: float | None = None,
        tool_calls_valid: bool | None = None,
        output_ok: bool | None = None,
        error: str | None = None,
    ) -> None:
        """An attempt ended. ``ok=None`` means it ended without a verdict (cancelled).

        ``output_ok`` judges an answer that came back 200: False when it was broken (a
        stream without its end marker, no content and no tool call, not the JSON that
        ``response_format`` asked for); None for an attempt that got no such answer."""
        self.in_flight -= 1
        self.version += 1
        if self._dirty is not None:
            self._dirty.append(self)
        self._waiting.pop(token, None)
        if ok is None:
            return
        now = self.clock()
        h = self._halflife
        # One decay factor since the last verdict, shared by every mean last updated then
        # (the error rate always is; latency and throughput unless a failure came between).
        last = self.last_sample
        decay = 0.5 ** ((now - last) / h) if last is not None and now > last else 1.0
        self.requests += 1
        self.samples = self.samples * decay + 1.0
        self.sample_conf = 1.0 - 0.5**self.samples
        self.last_sample = now
        errors = self.errors
        errors.add(0.0 if ok else 1.0, now, h, decay if errors._t == last else None)
        if output_ok is not None:
            self.output_answers += 1
            mean = self.output_errors
            if output_ok:
                mean.add(0.0, now, h, decay if mean._t == last else None)
            else:
                self.output_failures += 1
                mean.add(1.0, now, h, decay if mean._t == last else None)
        if not ok:
            self.failures += 1
            self.last_error = error
            return
        if latency_s is not None:
            mean = self.latency
            mean.add(latency_s, now, h, decay if mean._t == last else None)
            self.latency_window.samples.append(latency_s)
        if completion_tokens and generation_s and generation_s > 0:
            tps = completion_tokens / generation_s
            mean = self.tokens_per_s
            mean.add(tps, now, h, decay if mean._t == last else None)
            self.tps_window.samples.append(tps)
        if tool_calls_valid is not None:
            self.tool_call_answers += 1
            self.tool_call_failures += 0 if tool_calls_valid else 1
            self.tool_errors.add(0.0 if tool_calls_valid else 1.0, now, h)

    def forgive_errors(self) -> None:
        """The breaker closed after a good probe: the outage's errors no longer count."""
        self.errors = DecayedMean()
        self._touch()

    # -- reading --------------------------------------------------------------------

    def _decay(self, now: float) -> float:
        if self.last_sample is None or now <= self.last_sample:
            return 1.0
        return float(0.5 ** ((now - self.last_sample) / self.halflife))

    def confidence(self, now: float) -> float:
        if self.last_sample is None:
            return 0.0
        return self.sample_conf * self._decay(now)

    def ttft_percentile(self, q: float) -> float | None:
        return self.ttft_window.percentile(q, self.version)

    def ttft_window_size(self) -> int:
        return len(self.ttft_window)

    def error_rate(self) -> float:
        return self.errors.value or 0.0

    def view(self) -> dict[str, Any]:
        """The /health view of these stats (milliseconds, rounded)."""

        def ms(x: float | None) -> float | None:
            return None if x is None else round(x * 1000.0, 1)

        tps = self.tokens_per_s.value
        tool = self.tool_errors.value
        out = self.output_errors.value
        v = self.version
        return {
            "in_flight": self.in_flight,
            "requests": self.requests,
            "errors": self.failures,
            "error_rate": round(self.error_rate(), 4),
            "latency_ms": {
                "ewma": ms(self.latency.value),
                "p50": ms(self.latency_window.percentile(0.5, v)),
                "p95": ms(self.latency_window.percentile(0.95, v)),
            },
            "ttft_ms": {
                "ewma": ms(self.ttft.value),
                "p50": ms(self.ttft_window.percentile(0.5, v)),
                "p95": ms(self.ttft_window.percentile(0.95, v)),
            },
            "tokens_per_s": {
                "ewma": None if tps is None else round(tps, 1),
                "p50": _round(self.tps_window.percentile(0.5, v)),
                "p95": _round(self.tps_window.percentile(0.95, v)),
            },
            "tool_call_error_rate": round(tool, 4) if tool is not None else 0.0,
            "output_error_rate": round(out, 4) if out is not None else 0.0,
            "output_errors": self.output_failures,
            "last_error": self.last_error,
        }


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 1)


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


def loads(
    endpoints: Sequence[tuple[Any, EndpointStats]],
    now: float,
    prices: Sequence[tuple[float, float]],
    prior: Prior | None = None,
) -> list[Candidate]:
    """The candidates of one ranking, with estimates blended towards the route's best.

    ``endpoints`` pairs each endpoint spec (id, index, weight) with its stats. This is the
    direct computation, one pass of plain attribute reads: routes rank with ``RouteLoads``,
    which falls back to this where its cache cannot stand in, and whose tests compare with
    it. Without a ``prior`` (tests, one-off views) it first finds one.
    """
    if prior is None:
        prior = Prior()
        loads(endpoints, now, prices, prior)
    p_lat, p_ttft, p_tps, p_err = (
        prior.latency_s,
        prior.ttft_s,
        prior.tokens_per_s,
        prior.error_rate,
    )
    inf = math.inf
    best_lat = best_ttft = best_err = inf
    best_tps = 0.0
    out: list[Candidate] = []
    append = out.append
    for (spec, st), (p_in, p_out) in zip(endpoints, prices, strict=True):
        # EndpointStats.confidence and the oldest first-token wait, inlined: this loop
        # runs over every endpoint of the route on every request.
        last = st.last_sample
        if last is None:
            conf = 0.0
        elif now > last:
            conf = st.sample_conf * 0.5 ** ((now - last) / st.halflife)
        else:
            conf = st.sample_conf
        lat = st.latency.mean
        ttft = st.ttft.mean
        tps = st.tokens_per_s.mean
        err = st.errors.mean
        broken = st.output_errors.mean
        waiting = st._waiting
        if waiting and ttft is not None:
            wait = now - next(iter(waiting.values()))
            if wait > ttft:
                ttft = wait
        if conf > 0.0:
            if lat is not None and lat < best_lat:
                best_lat = lat
            if ttft is not None and ttft < best_ttft:
                best_ttft = ttft
            if tps is not None and tps > best_tps:
                best_tps = tps
            if err is not None and err < best_err:
                best_err = err
        keep = 1.0 - conf
        busy = st.in_flight
        append(
            Candidate(
                spec.id,
                spec.index,
                spec.weight,
                p_in,
                p_out,
                p_lat if lat is None else conf * lat + keep * p_lat,
                p_ttft if ttft is None else conf * ttft + keep * p_ttft,
                p_tps if tps is None else conf * tps + keep * p_tps,
                p_err if err is None else conf * err + keep * p_err,
                busy,
                conf < EXPLORE_BELOW and busy == 0,
                conf < PROBE_BELOW and busy > 0,
                conf * broken if broken else 0.0,
            )
        )
    prior.latency_s = 0.0 if best_lat == inf else best_lat
    prior.ttft_s = 0.0 if best_ttft == inf else best_ttft
    prior.tokens_per_s = best_tps
    prior.error_rate = 0.0 if best_err == inf else best_err
    return out


__all__ = [
    "DecayedMean",
    "EndpointStats",
    "Prior",
    "Window",
    "loads",
]
