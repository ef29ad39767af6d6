"""The affinity rule: stay where the cache is unless moving pays for re-buying it."""

from __future__ import annotations

import pytest

from policies.affinity import (
    MIN_HORIZON,
    Stay,
    Wait,
    cache_saving_usd,
    horizon,
    keep_bound,
    over_horizon,
    wait_of,
)


def same(wait: float) -> Wait:
    """A host whose cache does not shorten the wait (or not known to)."""
    return Wait(wait, wait)


def stay(prefix: int = 8000, turns: int = 1, stream: bool = True) -> Stay:
    return Stay(
        prefix_tokens=prefix, price_in=3.0, price_cache_read=0.3, turns=turns, stream=stream
    )


def test_saving_is_the_prefix_at_the_price_difference() -> None:
    assert cache_saving_usd(stay(prefix=1_000_000)) == pytest.approx(2.7)
    no_discount = Stay(
        prefix_tokens=10_000, price_in=1.0, price_cache_read=1.0, turns=1, stream=True
    )
    assert cache_saving_usd(no_discount) == 0.0


def test_an_error_costs_a_retry() -> None:
    w = wait_of(0.1, 0.3, error_rate=0.5)
    assert w.cached == pytest.approx(0.15) and w.fresh == pytest.approx(0.45)


def test_a_bound_endpoint_as_fast_as_the_best_is_kept() -> None:
    assert keep_bound(same(0.5), same(0.5), stay(), usd_per_s=1000.0)


def test_a_small_lead_does_not_pay_for_the_cache() -> None:
    # 8k tokens at 2.7 $/M = $0.0216 saved; 0.02 s a turn over 4 turns at $0.05/s = $0.004
    assert keep_bound(same(0.12), same(0.1), stay(), usd_per_s=0.05)


def test_a_large_lead_moves_the_conversation() -> None:
    # 2 s a turn over 4 turns at $0.05/s = $0.40 > $0.0216
    assert not keep_bound(same(2.1), same(0.1), stay(), usd_per_s=0.05)


def test_the_horizon_grows_with_the_conversation_from_a_floor() -> None:
    assert horizon(1) == MIN_HORIZON and horizon(3 * MIN_HORIZON) == 3 * MIN_HORIZON
    bound, best = same(0.2), same(0.1)  # 0.1 s lead = $0.005 a turn at $0.05/s
    assert keep_bound(bound, best, stay(turns=1), usd_per_s=0.05)  # 4 turns: $0.02 < $0.0216
    assert not keep_bound(bound, best, stay(turns=5), usd_per_s=0.05)  # 5 turns: $0.025


def test_over_its_horizon_a_conversation_waits_one_uncached_turn_then_cached_ones() -> None:
    assert over_horizon(Wait(cached=0.05, fresh=0.6), turns=1) == pytest.approx(0.75)
    assert over_horizon(Wait(cached=0.05, fresh=0.6), turns=10) == pytest.approx(1.05)
    # Placed by it: the quicker first answer is not the quicker conversation.
    quick_start, quick_after = Wait(cached=0.1, fresh=0.1), Wait(cached=0.03, fresh=0.2)
    assert over_horizon(quick_after, 1) < over_horizon(quick_start, 1)


def test_moving_pays_one_turn_without_the_cache() -> None:
    # The bound host answers a cached turn in 0.1 s; the other 0.05 s cached but 0.6 s
    # uncached: over 4 turns staying waits 0.4 s, moving 0.6 + 3 x 0.05 = 0.75 s.
    bound, best = Wait(cached=0.1, fresh=0.3), Wait(cached=0.05, fresh=0.6)
    assert keep_bound(bound, best, stay(prefix=0), usd_per_s=1000.0)
    # A longer future pays it back: 20 turns, 2 s staying against 1.55 s moving.
    assert not keep_bound(bound, best, stay(prefix=0, turns=20), usd_per_s=1000.0)


def test_a_bound_host_that_turned_slow_is_left_at_once() -> None:
    # Its cached turns now take 0.4 s (they took 0.03); the other host: 0.13 s uncached,
    # 0.05 cached. Even a 60k-token prefix ($0.16 to re-buy) does not hold it at turn 1.
    slowed, medium = Wait(cached=0.4, fresh=1.2), Wait(cached=0.05, fresh=0.13)
    assert not keep_bound(slowed, medium, stay(prefix=60_000, turns=1), usd_per_s=0.2)
    assert not keep_bound(slowed, medium, stay(prefix=20_000, turns=1), usd_per_s=0.05)


def test_errors_count_as_waiting() -> None:
    flaky = wait_of(1.0, 1.0, error_rate=0.9)
    assert not keep_bound(flaky, same(0.6), stay(prefix=100), 0.05)


def test_without_prices_a_conversation_stays_unless_twice_as_slow() -> None:
    unpriced = Stay(prefix_tokens=8000, price_in=0.0, price_cache_read=0.0, turns=5, stream=True)
    assert keep_bound(same(0.19), same(0.1), unpriced, usd_per_s=0.05)
    assert not keep_bound(same(0.21), same(0.1), unpriced, usd_per_s=0.05)
