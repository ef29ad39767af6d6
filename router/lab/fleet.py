"""How each simulated endpoint answers: fitted from a trace, or a ``simulated`` provider.

A ``Behaviour`` decides one attempt's answer up front (``Answer``): its outcome, when its
first token (or its failure) shows, and how long the rest of the stream takes. The
virtual-time provider (``router.lab.upstream``) then plays that answer to the router's
pipeline. Two kinds:

- ``Fitted``: empirical distributions per time bucket (``router.lab.fit`` builds them):
  outcome frequencies, TTFT, tokens per second, whole-answer durations of non-streamed
  requests, failure delays, the chance a served stream breaks. Sampling is inverse-CDF
  over stored quantiles, with linear interpolation between them.
- ``Simulated``: the config's ``simulated`` provider, on the timing law of the
  simulator the service plays it with (``providers.simulated``), so a routes file of
  simulated hosts behaves in the lab as it does when served.

Each behaviour draws from its own seeded ``random.Random``, so a run is a function of the
trace, the config and the seed.
"""

from __future__ import annotations

import bisect
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from providers.simulated import SimParams
from providers.simulated.prompt_cache import CacheSettings
from router.lab.trace import BROKEN, CONNECT, HANG, HTTP, OK

BREAK = "break"  # answered, then the stream broke mid-way
_INF = float("inf")
# The simulated provider fails a request after at most this long (SimulatedProvider.send).
_SIM_FAIL_S = 0.005


@dataclass(slots=True)
class Answer:
    outcome: str  # OK, BREAK, HTTP, HANG, CONNECT, BROKEN
    first_s: float  # TTFT (OK, BREAK) or seconds until the failure shows
    rest_s: float = 0.0  # first token to the end of the stream (OK) or to the break (BREAK)
    status: int = 200
    retry_after_s: float | None = None
    gap_s: float = 0.0  # between tokens, for the idle timeout


class Behaviour(Protocol):
    source: str  # "fitted", "simulated", "prior (...)": shown in the output
    cache: CacheSettings | None
    # A prefix common to conversations that the host serves from cache to any of them
    # once another's prompt warmed it (fitted from first turns; 0: none known).
    shared_prefix_tokens: int

    def answer(self, at: float, stream: bool, tokens: int, whole: bool) -> Answer:
        """An attempt sent at trace time ``at`` for ``tokens`` output tokens; ``whole``:
        the answer is not streamed (its first byte comes after the whole generation)."""
        ...

    def describe(self) -> dict[str, object]: ...

    def done(self) -> None:
        """An answer that began (OK or BREAK) ended, however it ended."""
        ...


class Quantiles:
    """An empirical distribution kept as up to ``points`` quantiles, sampled by inverse CDF."""

    __slots__ = ("n", "values")

    def __init__(self, samples: Sequence[float], points: int = 101) -> None:
        ordered = sorted(samples)
        self.n = len(ordered)
        if self.n > points:
            last = self.n - 1
            ordered = [ordered[round(i * last / (points - 1))] for i in range(points)]
        self.values = ordered

    def sample(self, rng: random.Random) -> float:
        values = self.values
        top = len(values) - 1
        if top <= 0:
            return values[0]
        u = rng.random() * top
        i = int(u)
        low = values[i]
        return low + (u - i) * (values[i + 1] - low) if i < top else low

    def quantile(self, q: float) -> float:
        values = self.values
        return values[min(len(values) - 1, int(q * len(values)))]


@dataclass(slots=True)
class Bucket:
    """An endpoint's behaviour over one span of trace time."""

    outcomes: list[tuple[str, int | None]]  # (outcome, HTTP status)
    cumulative: list[float]  # cumulative probabilities of ``outcomes``, the last 1.0
    ttft: Quantiles | None  # seconds, streamed answers
    tokens_per_s: Quantiles | None
    whole: Quantiles | None  # seconds, non-streamed answers
    fail_after: Quantiles | None  # seconds until a failure showed
    p_break: float  # a served stream breaks


class Fitted:
    """An endpoint fitted from a trace: one ``Bucket`` per span of ``width_s`` from ``start``."""

    def __init__(
        self,
        buckets: Sequence[Bucket],
        start: float,
        width_s: float,
        *,
        source: str,
        seed: int,
        default_tokens_per_s: float,
        cache: CacheSettings | None = None,
        shared_prefix_tokens: int = 0,
        summary: dict[str, object] | None = None,
    ) -> None:
        self.buckets = list(buckets)
        self.shared_prefix_tokens = shared_prefix_tokens
        self.start = start
        self.width_s = width_s
        self.source = source
        self.cache = cache
        self.rng = random.Random(seed)
        self.default_tokens_per_s = default_tokens_per_s
        self.summary = summary or {}

    def describe(self) -> dict[str, object]:
        cache = self.cache
        if cache is None:
            return {"source": self.source, **self.summary}
        return {
            "source": self.source,
            **self.summary,
            "cache_ttft_factor": round(cache.ttft_factor, 2),
            "shared_prefix_tokens": self.shared_prefix_tokens,
        }

    def done(self) -> None:
        """A fitted host's load is not modelled (docs/lab.md)."""

    def answer(self, at: float, stream: bool, tokens: int, whole: bool) -> Answer:
        k = int((at - self.start) / self.width_s) if self.width_s > 0 else 0
        b = self.buckets[min(max(k, 0), len(self.buckets) - 1)]
        rng = self.rng
        outcomes = b.outcomes
        if len(outcomes) == 1:
            outcome, status = outcomes[0]
        else:
            outcome, status = outcomes[bisect.bisect_right(b.cumulative, rng.random())]
        if outcome != OK:
            delay = b.fail_after.sample(rng) if b.fail_after is not None else 0.0
            if outcome == HANG:
                delay = _INF
            return Answer(outcome, delay, status=status or 0)
        tps = (
            b.tokens_per_s.sample(rng) if b.tokens_per_s is not None else self.default_tokens_per_s
        )
        # Fitted as tokens / (latency - TTFT): the rest of the stream takes tokens / tps.
        gap = 1.0 / tps if tps > 0 else 0.0
        rest = tokens * gap
        if whole:
            if b.whole is not None and (b.ttft is None or b.tokens_per_s is None):
                return Answer(OK, b.whole.sample(rng))
            ttft = b.ttft.sample(rng) if b.ttft is not None else 0.0
            return Answer(OK, ttft + rest)
        if b.ttft is not None:
            ttft = b.ttft.sample(rng)
        else:  # only non-streamed evidence: its first byte came after the whole answer
            ttft = b.whole.sample(rng) if b.whole is not None else 0.0
        if b.p_break and rng.random() < b.p_break:
            return Answer(BREAK, ttft, rng.random() * rest, 200, None, gap)
        return Answer(OK, ttft, rest, 200, None, gap)  # by position: no kwargs dict


class Simulated:
    """A ``simulated`` provider of the config, on the simulator's own timing law.

    ``providers.simulated.core.Simulator.plan`` decides when and whether an answer comes
    and also composes what it says (words, tool calls, reasoning), which the lab has no
    use for and which costs a quarter of a replayed request. This is its timing law
    alone, drawing from a ``random.Random(seed)`` in the same order (a 500 at
    ``error_rate`` unless ``status`` is set or the host is past its ``capacity`` (a 429),
    log-normal ``jitter``, the ``tail_prob`` tail), so for the same seed it gives the
    same TTFTs and failures: a test holds the two together. The answer's length is the
    trace's, not ``tokens``.
    """

    source = "simulated"
    shared_prefix_tokens = 0  # the lab cannot see a simulated host's prompts' segments

    def __init__(self, params: SimParams, cache: CacheSettings | None = None) -> None:
        self.params = params
        self.rng = random.Random(params.seed)
        self.cache = cache
        self.busy = 0  # answers under way, against the host's ``capacity``

    def describe(self) -> dict[str, object]:
        p = self.params
        return {
            "source": self.source,
            "ttft_ms": p.ttft_ms,
            "tokens_per_s": p.tokens_per_s,
            "error_rate": p.error_rate,
            "jitter": p.jitter,
        }

    def answer(self, at: float, stream: bool, tokens: int, whole: bool) -> Answer:
        p, rng = self.params, self.rng
        status = 200
        retry_after_s = p.retry_after_s
        capacity = p.capacity
        if p.status is not None:
            status = p.status
        elif capacity is not None and self.busy >= capacity:
            status = 429  # past its capacity, as a rate-limited host
            retry_after_s = 1.0 if retry_after_s is None else retry_after_s
        elif p.error_rate and rng.random() < p.error_rate:
            status = 500
        ttft = p.ttft_ms / 1000.0
        if p.jitter:
            ttft *= math.exp(rng.gauss(0.0, p.jitter))
        if p.tail_prob and rng.random() < p.tail_prob:
            ttft = p.tail_ms / 1000.0
        # Compares, not max(): it parses its keywords (key, default) at every call, a
        # thousand instructions each (twice per attempt: 0.7% of the lab's).
        if ttft < 0.0:
            ttft = 0.0
        if p.hang:
            return Answer(HANG, _INF)
        if status != 200:  # as SimulatedProvider: a failure shows at once
            return Answer(HTTP, min(ttft, _SIM_FAIL_S), status=status, retry_after_s=retry_after_s)
        self.busy += 1  # until done()
        gap = 1.0 / p.tokens_per_s
        n = tokens if tokens >= 1 else 1
        if whole:
            return Answer(OK, ttft + gap * n)
        if p.disconnect_mid_stream:
            return Answer(BREAK, ttft, gap * (max(1, n // 2) - 1), 200, None, gap)
        return Answer(OK, ttft, gap * (n - 1), 200, None, gap)  # by position: no kwargs dict

    def done(self) -> None:
        busy = self.busy - 1
        self.busy = busy if busy > 0 else 0  # not max(): see answer()


FAILURES = (HTTP, HANG, CONNECT, BROKEN)
