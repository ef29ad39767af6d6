"""Routing strategies: pure rankings over live loads. Imports nothing of the router's.

A strategy is one class (in a module here) plus one line in ``STRATEGIES``. Its
constructor's keyword parameters are its options in routes.yaml (``policies.<name>``):
the config validates them against the parameters' type hints and reports an
``OptionError`` the constructor raises at the option's path. A class attribute
``OPTIONS_HELP`` ({option: one line}) describes them in docs/configuration.md.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from policies.base import Candidate, Loads, OptionError, Strategy
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
    """The named strategy, made with its options (None stands for an option not given)."""
    given = {k: v for k, v in options.items() if v is not None}
    return STRATEGIES[strategy](**given)


__all__ = ["SORTS", "STRATEGIES", "Candidate", "Loads", "OptionError", "Strategy", "make"]
