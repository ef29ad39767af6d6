"""Routing strategies: pure rankings over live loads. Imports nothing of the router's."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from policies.base import Candidate, Loads, Strategy
from policies.metric import Cheapest, HighestThroughput, LowestLatency, LowestTTFT
from policies.score import Score
from policies.simple import LeastBusy, Priority, RoundRobin, Weighted

STRATEGIES: Mapping[str, Callable[..., Strategy]] = {
    "priority": Priority,
    "round_robin": RoundRobin,
    "weighted": Weighted,
    "least_busy": LeastBusy,
    "lowest_latency": LowestLatency,
    "lowest_ttft": LowestTTFT,
    "highest_throughput": HighestThroughput,
    "cheapest": Cheapest,
    "score": Score,
}

# OpenRouter's provider.sort values, as the strategies that implement them.
SORTS: Mapping[str, str] = {
    "price": "cheapest",
    "latency": "lowest_latency",
    "ttft": "lowest_ttft",
    "throughput": "highest_throughput",
}


def make(strategy: str, **options: Any) -> Strategy:
    factory = STRATEGIES[strategy]
    if strategy == "score":
        return factory(weights=options.get("weights"), pick=options.get("pick"))
    return factory()


__all__ = ["SORTS", "STRATEGIES", "Candidate", "Loads", "Strategy", "make"]
