"""Prompt-cache affinity: when to keep a conversation where its cache is, and when to move.

A conversation resends its whole prefix every turn. The endpoint that served the last
turn holds that prefix in its cache: it bills it at ``cache_read`` and answers sooner
(the host skips the prefill). Any other endpoint bills the prefix at ``input`` once and
answers that turn without the cache, then caches it in turn. So moving re-buys the prefix
once, ``prefix_tokens * (input - cache_read)`` dollars, and is worth it when the wait it
saves over the turns still to come, valued at ``usd_per_s`` (what a second of waiting is
worth to the operator), is more::

    stay_s = horizon * bound.cached
    move_s = best.fresh + (horizon - 1) * best.cached
    move  iff  (stay_s - move_s) * usd_per_s  >  prefix_tokens * (input - cache_read) / 1e6

``cached`` and ``fresh`` are an endpoint's expected waits for a turn whose prompt its
cache holds and for one it does not (``Wait``; TTFT for a stream, latency otherwise, each
inflated by the error rate: an error costs a retry; the caller estimates them). ``best``
is the endpoint with evidence that would serve the conversation soonest over that horizon
(``over_horizon``), as a new conversation is placed. ``horizon`` is the turns
expected from this one on: as many as the conversation has had so far (one that has
lasted n turns is, as a rule of thumb, about halfway through), and at least
``MIN_HORIZON``: an agent's conversation is a tool loop that seldom ends within a few
turns, so a young one is not judged on a one-turn future. Without prices (a provider that
says ``prompt_cache: true`` and an endpoint with no ``price``) the saving cannot be
valued: the conversation then stays while its endpoint's expected wait is at most twice
the best's. An unavailable bound endpoint (cooldown, full, filtered out) is never kept:
that is the breaker's call, made before this one. Pure: no clock, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

MIN_HORIZON = 4


@dataclass(frozen=True, slots=True)
class Stay:
    """The inputs of one decision, all from the request and the bound endpoint's price."""

    prefix_tokens: int
    price_in: float  # USD per million input tokens at the bound endpoint
    price_cache_read: float  # USD per million cached input tokens there
    turns: int  # user turns in the conversation so far
    stream: bool


@dataclass(frozen=True, slots=True)
class Wait:
    """An endpoint's expected wait for one turn, in seconds: with the prompt in its cache
    (``cached``) and without (``fresh``)."""

    cached: float
    fresh: float


def wait_of(cached_s: float, fresh_s: float, error_rate: float) -> Wait:
    """The waits of an endpoint that fails ``error_rate`` of the time: an error costs a
    retry, roughly one more wait."""
    return Wait(cached_s * (1.0 + error_rate), fresh_s * (1.0 + error_rate))


def cache_saving_usd(stay: Stay) -> float:
    """What the next turn saves by finding its prefix cached."""
    return max(0.0, stay.prefix_tokens * (stay.price_in - stay.price_cache_read) / 1e6)


def horizon(turns: int) -> int:
    """The turns expected from this one on."""
    return max(MIN_HORIZON, turns)


def over_horizon(wait: Wait, turns: int) -> float:
    """The wait of a conversation that comes to this endpoint now, over its horizon: one
    turn without the cache, the rest with it. Where a new conversation is placed (the
    least of these) and where a bound one would move to."""
    return wait.fresh + (horizon(turns) - 1) * wait.cached


def keep_bound(bound: Wait, best: Wait, stay: Stay, usd_per_s: float) -> bool:
    """Whether the bound endpoint should serve this turn rather than ``best``."""
    if stay.price_in <= 0.0:
        return bound.cached <= 2.0 * best.cached
    gain_s = horizon(stay.turns) * bound.cached - over_horizon(best, stay.turns)
    if gain_s <= 0.0:
        return True
    return gain_s * usd_per_s <= cache_saving_usd(stay)
