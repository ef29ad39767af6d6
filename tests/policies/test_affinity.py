"""The affinity rule: stay where the cache is unless moving pays for re-buying it."""

from __future__ import annotations

import pytest

from policies.affinity import Stay, cache_saving_usd, keep_bound
from policies.base import Candidate


def cand(id_: str, ttft: float, error_rate: float = 0.0, latency: float = 1.0) -> Candidate:
    return Candidate(id=id_, index=0, ttft_s=ttft, latency_s=latency, error_rate=error_rate)


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


def test_a_bound_endpoint_that_is_the_best_is_kept() -> None:
    a = cand("a", 0.5)
    assert keep_bound(a, a, stay(), usd_per_s=1000.0)


def test_a_small_lead_does_not_pay_for_the_cache() -> None:
    # 8k tokens at 2.7 $/M = $0.0216 saved; 0.1 s lead at $0.05/s over 1 turn = $0.005
    assert keep_bound(cand("slow", 0.2), cand("fast", 0.1), stay(), usd_per_s=0.05)


def test_a_large_lead_moves_the_conversation() -> None:
    # 2 s lead at $0.05/s = $0.10 > $0.0216
    assert not keep_bound(cand("slow", 2.1), cand("fast", 0.1), stay(), usd_per_s=0.05)


def test_the_horizon_grows_with_the_conversation() -> None:
    bound, best = cand("b", 0.3), cand("a", 0.1)  # 0.2 s lead = $0.01 a turn at $0.05/s
    assert keep_bound(bound, best, stay(turns=1), usd_per_s=0.05)
    assert not keep_bound(bound, best, stay(turns=3), usd_per_s=0.05)


def test_errors_count_as_waiting_and_non_streams_compare_latency() -> None:
    assert not keep_bound(cand("b", 1.0, error_rate=0.9), cand("a", 0.6), stay(prefix=100), 0.05)
    quick_ttft_slow_total = cand("b", 0.1, latency=9.0)
    assert not keep_bound(
        quick_ttft_slow_total, cand("a", 0.5, latency=1.0), stay(stream=False), 0.05
    )


def test_without_prices_a_conversation_stays_unless_twice_as_slow() -> None:
    unpriced = Stay(prefix_tokens=8000, price_in=0.0, price_cache_read=0.0, turns=5, stream=True)
    assert keep_bound(cand("b", 0.19), cand("a", 0.1), unpriced, usd_per_s=0.05)
    assert not keep_bound(cand("b", 0.21), cand("a", 0.1), unpriced, usd_per_s=0.05)
