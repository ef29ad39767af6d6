"""Prompt-cache affinity: when to keep a conversation where its cache is, and when to move.

A conversation resends its whole prefix every turn. The endpoint that served the last
turn holds that prefix in its cache and bills it at ``cache_read``; any other endpoint
bills it at ``input`` once, then caches it in turn. Staying is worth
``prefix_tokens * (input - cache_read)`` dollars on the next turn. Moving to the ranking's
best endpoint is worth its lead in expected wait (TTFT for a stream, latency otherwise),
on this turn and on the turns still to come, since the conversation stays where it moves.

The rule, with ``usd_per_s`` what a second of waiting is worth to the operator::

    move  iff  lead_s * usd_per_s * horizon  >  prefix_tokens * (input - cache_read) / 1e6

``horizon`` is the number of turns expected to follow: as many as the conversation has
had so far (a conversation that has lasted n turns is, as a rule of thumb, about halfway
through), at least 1. Without prices (a provider that says ``prompt_cache: true`` and an
endpoint with no ``price``) the saving cannot be valued: the conversation then stays while
its endpoint's expected wait is at most twice the best's. An unavailable bound endpoint
(cooldown, full, filtered out) is never kept: that is the breaker's call, made before this
one. Pure: no clock, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from policies.base import Candidate


@dataclass(frozen=True, slots=True)
class Stay:
    """The inputs of one decision, all from the request and the bound endpoint's price."""

    prefix_tokens: int
    price_in: float  # USD per million input tokens at the bound endpoint
    price_cache_read: float  # USD per million cached input tokens there
    turns: int  # user turns in the conversation so far
    stream: bool


def cache_saving_usd(stay: Stay) -> float:
    """What the next turn saves by finding its prefix cached."""
    return max(0.0, stay.prefix_tokens * (stay.price_in - stay.price_cache_read) / 1e6)


def keep_bound(bound: Candidate, best: Candidate, stay: Stay, usd_per_s: float) -> bool:
    """Whether the bound endpoint should serve this turn rather than the ranking's best."""
    if bound.id == best.id:
        return True
    wait_bound = bound.ttft_s if stay.stream else bound.latency_s
    wait_best = best.ttft_s if stay.stream else best.latency_s
    # An error costs a retry: roughly one more wait on the next endpoint.
    wait_bound *= 1.0 + bound.error_rate
    wait_best *= 1.0 + best.error_rate
    lead_s = wait_bound - wait_best
    if lead_s <= 0.0:
        return True
    if stay.price_in <= 0.0:
        return wait_bound <= 2.0 * wait_best
    horizon = max(1, stay.turns)
    return lead_s * usd_per_s * horizon <= cache_saving_usd(stay)
