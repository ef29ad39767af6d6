"""The plain counts ``Metrics.record`` adds to on the event loop: a histogram per endpoint
(bucket counts and sum), tokens and cost per endpoint, retries, failovers and hedges per
route; and the buckets and label values both it and the collectors use.
"""

from __future__ import annotations

from bisect import bisect_left

# Seconds. LLM answers span from an embedding in 50 ms to a long generation in minutes.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 8, 13, 20, 30, 60, 120, 300, 600)
# Time to first token: tens of ms for a warm cache, a minute for a deep reasoning model.
TTFT_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 20, 30, 60)
# Output tokens per second after the first token: ~10 (large models) to ~1000 (small, fast).
TPS_BUCKETS = (5, 10, 20, 30, 50, 75, 100, 150, 200, 300, 500, 1000, 2000)
STATES = ("healthy", "cooldown", "half_open", "disabled")
NONE = "none"  # the label value when a request never reached a route or endpoint
TOKEN_KINDS = ("prompt", "completion", "reasoning", "cached")
OTHER_KEY = "other"  # a client key name that is not configured now: bounded label values
# The loads a ranking compares, as gauges (seconds, tokens/s, rates, requests).
LOAD_FIELDS = ("latency_s", "ttft_s", "tokens_per_s", "error_rate", "output_error_rate")


class Histogram:
    """One series' bucket counts (not cumulative; the last is +Inf) and sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # Prometheus buckets are "less than or equal": the first bound >= value.
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value


class EndpointSeries:
    __slots__ = ("cost", "latency", "tokens", "tps", "ttft")

    def __init__(self) -> None:
        self.latency = Histogram(LATENCY_BUCKETS)
        self.ttft = Histogram(TTFT_BUCKETS)
        self.tps = Histogram(TPS_BUCKETS)
        self.tokens = [0, 0, 0, 0]  # in TOKEN_KINDS order
        self.cost = 0.0


class RouteSeries:
    __slots__ = ("failovers", "hedges", "retries")

    def __init__(self) -> None:
        self.retries = 0
        self.failovers = 0
        self.hedges = 0
