"""Live, time-decayed stats per endpoint: what each one has shown lately.

Every metric is a decayed mean: sums of samples and of weights that lose half their
weight every ``halflife_s`` of elapsed time (not every N samples), so a burst and a
trickle of the same evidence weigh alike and old evidence fades on a clock. Latency and
TTFT follow the peak rule of tower's ``load/peak_ewma.rs``: a sample above the mean
replaces it at once (trouble is believed immediately), lower samples pull it down at the
decay rate (recovery is believed slowly).

Evidence ages: ``confidence`` is 1 - 0.5**n for n recent samples, times 0.5 per half-life
since the last one (``router.state.blend`` turns it into the loads policies compare).
``waiting_since`` is when the oldest attempt still without a first token started: a host
that just went slow is noticed before its first slow answer lands.

Stats publish their changes: ``version`` moves whenever anything a ranking reads
changes, and each change is reported to the ``ChangeFeed`` that subscribed last (a
route's cached loads), so a route recomputes the endpoints that changed and no others.
"""

from __future__ import annotations

import time
from bisect import bisect_left, insort
from collections import deque
from collections.abc import Callable
from typing import Any

from router.state.clock import Clock
from router.state.recent import Recent

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
        # In locals, each field read and written once: this runs several times a request.
        total, weight = self._sum, self._weight
        if weight > 0.0:
            if decay is None:
                t = self._t
                decay = 0.5 ** ((now - t) / halflife) if now > t else 1.0
            total *= decay
            weight *= decay
            if self.peak and x * weight > total:
                total = x * weight  # peak rule: jump up to the new sample
        total += x
        weight += 1.0
        self._sum, self._weight, self._t = total, weight, now
        self.mean = total / weight

    @property
    def value(self) -> float | None:
        return self.mean


class Window:
    """The last few hundred samples, for percentiles on display and hedge thresholds.

    Two kinds of reader. An occasional one (the /health view, the page) passes a
    ``stamp`` that its owner moves whenever it adds (the stats' ``version``); the sorted
    copy is made again when asked with another one (or with none). A reader on every
    request (a hedge's ``after: p90``) calls ``quantile``: from then on the sorted copy
    follows each ``add`` (the oldest sample out, the new one in, by bisection: a few
    hundred nanoseconds) instead of a re-sort of the whole window per read.
    """

    __slots__ = ("_kept", "_sorted", "_stamp", "samples")

    def __init__(self) -> None:
        self.samples: deque[float] = deque(maxlen=_WINDOW)
        self._sorted: list[float] = []
        self._stamp: int | None = None
        self._kept = False  # _sorted follows every add

    def add(self, x: float) -> None:
        samples = self.samples
        if self._kept:
            s = self._sorted
            if len(samples) == _WINDOW:  # the oldest falls out of the window
                del s[bisect_left(s, samples[0])]
            insort(s, x)
        else:
            self._stamp = None
        samples.append(x)

    def __len__(self) -> int:
        return len(self.samples)

    def percentile(self, q: float, stamp: int | None = None) -> float | None:
        if not self.samples:
            return None
        if not self._kept and (stamp is None or stamp != self._stamp):
            self._sorted = sorted(self.samples)
            self._stamp = stamp
        s = self._sorted
        return s[min(len(s) - 1, int(q * len(s)))]

    def quantile(self, q: float) -> float | None:
        """``percentile(q)`` for a reader on every request: keeps the sorted copy."""
        if not self._kept:
            self._sorted = sorted(self.samples)
            self._kept = True
        s = self._sorted
        if not s:
            return None
        # The last at most, by a compare: min() parses its keywords (key, default) at
        # every call, about a thousand instructions (a hedged route asks on every request).
        n = len(s)
        i = int(q * n)
        return s[i if i < n else n - 1]


def confidence(sample_conf: float, last: float | None, now: float, halflife: float) -> float:
    """How far to trust an endpoint's estimates: ``sample_conf`` (1 - 0.5**n for n recent
    samples) halved for every half-life since the ``last`` one; 0 without any."""
    if last is None:
        return 0.0
    if now > last:
        return float(sample_conf * 0.5 ** ((now - last) / halflife))
    return sample_conf


class ChangeFeed:
    """Which stats changed since their subscriber last looked.

    Stats report each change to the feed that subscribed to them last (``changed``, in
    order, with repeats): a route's cached loads read and clear it before ranking. After
    a reload the new runtime's route subscribes, and the feed it replaced is marked
    ``superseded``: its owner then compares ``version``s instead. A feed that does not
    ``collect`` only takes the stats over (a route that keeps no cache).
    """

    __slots__ = ("changed", "collect", "superseded")

    def __init__(self, collect: bool = True) -> None:
        self.changed: list[EndpointStats] = []
        self.collect = collect
        self.superseded = False


class EndpointStats:
    """What one endpoint has shown lately. Survives config reloads (same route and id).

    ``version`` changes whenever anything a ranking reads changes, and the change is
    reported to the subscribed ``ChangeFeed``.
    """

    __slots__ = (
        "_feed",
        "_report",
        "_token",
        "_waiting",
        "clock",
        "errors",
        "failures",
        "halflife_s",
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
        "ttft_cached",
        "ttft_fresh",
        "ttft_window",
        "version",
        "waiting_since",
    )

    def __init__(self, halflife_s: float = 30.0, clock: Clock = time.monotonic) -> None:
        # Read it freely (the blend does, per endpoint per ranking: no property call);
        # set it through ``halflife``, which reports the change to a ranking's cache.
        self.halflife_s = halflife_s
        self.clock = clock
        self.version = 0
        self._feed: ChangeFeed | None = None
        self._report: Callable[[EndpointStats], None] | None = None  # the feed's append
        self.latency = DecayedMean(peak=True)
        self.ttft = DecayedMean(peak=True)
        # TTFTs apart by whether the prompt was read from the host's cache, for affinity
        # (staying finds the prefix cached, moving pays one whole prefill); not ranked on.
        self.ttft_cached = Recent()
        self.ttft_fresh = Recent()
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
        self.waiting_since: float | None = None  # the oldest of those starts
        self._token = 0

    @property
    def halflife(self) -> float:
        return self.halflife_s

    @halflife.setter
    def halflife(self, seconds: float) -> None:
        if seconds != self.halflife_s:  # a reload sets it whether or not it changed
            self.halflife_s = seconds
            self._touch()

    def subscribe(self, feed: ChangeFeed) -> None:
        """Report changes to ``feed`` from now on, and no longer to the one before."""
        old = self._feed
        if old is not None and old is not feed:
            old.superseded = True
        self._feed = feed
        self._report = feed.changed.append if feed.collect else None

    def _touch(self) -> None:
        self.version += 1
        report = self._report
        if report is not None:
            report(self)

    # -- recording ------------------------------------------------------------------

    def start(self, now: float | None = None) -> int:
        """An attempt began (at ``now``, when the caller read the clock already); returns
        the token to pass to ``first_token``/``finish``."""
        self.in_flight += 1
        self.version += 1
        report = self._report
        if report is not None:
            report(self)
        token = self._token = self._token + 1
        if now is None:
            now = self.clock()
        self._waiting[token] = now
        if self.waiting_since is None:
            self.waiting_since = now
        return token

    def first_token(self, token: int, now: float | None = None) -> None:
        waiting = self._waiting
        started = waiting.pop(token, None)
        if started is not None:
            # The oldest start first: dicts keep insertion order.
            self.waiting_since = next(iter(waiting.values())) if waiting else None
            self.version += 1
            report = self._report
            if report is not None:
                report(self)
            if now is None:
                now = self.clock()
            ttft = now - started
            self.ttft.add(ttft, now, self.halflife_s)
            self.ttft_window.add(ttft)

    def cache_split(self, ttft: float, cached: bool) -> None:
        """A streamed answer's TTFT once its usage said whether most of the prompt was
        read from the host's cache (``cached``)."""
        (self.ttft_cached if cached else self.ttft_fresh).samples.append(ttft)

    def finish(
        self,
        token: int,
        ok: bool | None,
        latency_s: float | None = None,
        completion_tokens: int | None = None,
        generation_s: float | None = None,
        tool_calls_valid: bool | None = None,
        output_ok: bool | None = None,
        error: str | None = None,
        now: float | None = None,
    ) -> None:
        """An attempt ended (``ok=None``: without a verdict, cancelled). ``output_ok`` judges
        an answer that came back 200: False when broken (a stream without its end marker, no
        content and no tool call, not the JSON asked for); None for no such answer. ``now``:
        when, if the caller read the clock already (a lease: one reading less per attempt)."""
        self.in_flight -= 1
        self.version += 1
        report = self._report
        if report is not None:
            report(self)
        waiting = self._waiting
        if waiting.pop(token, None) is not None:  # no first token came
            self.waiting_since = next(iter(waiting.values())) if waiting else None
        if ok is None:
            return
        if now is None:
            now = self.clock()
        h = self.halflife_s
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
            if not output_ok:
                self.output_failures += 1
            mean = self.output_errors
            mean.add(0.0 if output_ok else 1.0, now, h, decay if mean._t == last else None)
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

    def confidence(self, now: float) -> float:
        return confidence(self.sample_conf, self.last_sample, now, self.halflife_s)

    def ttft_percentile(self, q: float) -> float | None:
        return self.ttft_window.quantile(q)

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


__all__ = ["ChangeFeed", "DecayedMean", "EndpointStats", "Window", "confidence"]
