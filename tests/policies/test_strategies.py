"""Each strategy as a pure ranking: constant loads, a seeded ``random.Random``.

Three kinds of test, as STYLE.md asks: deterministic (fixed loads, one ranking),
statistical (many picks from a seeded source, shares within a tolerance), and a
hypothesis property (every ranking is a permutation of its input).
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import policies
from policies import Candidate, Strategy
from policies.base import as_loads
from policies.score import Score
from policies.simple import RoundRobin

LIVE = ("lowest_latency", "lowest_ttft", "highest_throughput", "score")


def ids(ranking: Sequence[Candidate]) -> list[str]:
    return [c.id for c in ranking]


def cands(*specs: dict[str, object]) -> list[Candidate]:
    """Candidates named a, b, c, ... in listed order, with the given loads."""
    return [Candidate(id=chr(ord("a") + i), index=i, **spec) for i, spec in enumerate(specs)]  # type: ignore[arg-type]


def first_shares(
    strategy: Strategy, candidates: Sequence[Candidate], n: int, seed: int = 7
) -> dict[str, float]:
    rng = random.Random(seed)
    counts = Counter(strategy.rank(candidates, rng)[0].id for _ in range(n))
    return {c.id: counts[c.id] / n for c in candidates}


# -- deterministic -----------------------------------------------------------------------


def test_priority_is_the_listed_order_whatever_the_loads() -> None:
    cs = cands(
        {"latency_s": 9.0, "in_flight": 50, "price_out": 100.0},
        {"latency_s": 0.1},
        {"latency_s": 0.2},
    )
    shuffled = [cs[2], cs[0], cs[1]]
    assert ids(policies.make("priority").rank(shuffled, random.Random(1))) == ["a", "b", "c"]


def test_round_robin_rotates_and_the_rest_is_the_failover_path() -> None:
    rr = RoundRobin()
    cs = cands({}, {}, {})
    rng = random.Random(1)
    rankings = [ids(rr.rank(cs, rng)) for _ in range(4)]
    assert rankings == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"], ["a", "b", "c"]]


def test_least_busy_ranks_by_in_flight() -> None:
    cs = cands({"in_flight": 4}, {"in_flight": 0}, {"in_flight": 2})
    assert ids(policies.make("least_busy").rank(cs, random.Random(1))) == ["b", "c", "a"]


def test_least_busy_breaks_ties_at_random_so_equals_share() -> None:
    cs = cands({"in_flight": 1}, {"in_flight": 1}, {"in_flight": 5})
    shares = first_shares(policies.make("least_busy"), cs, 4000)
    assert shares["c"] == 0.0
    assert shares["a"] == pytest.approx(0.5, abs=0.05)


def test_lowest_latency_multiplies_by_in_flight_plus_one() -> None:
    # a is faster alone (0.1 s) but has 4 in flight: 0.5 s expected; b idle at 0.3 s wins.
    cs = cands(
        {"latency_s": 0.1, "in_flight": 4}, {"latency_s": 0.3}, {"latency_s": 0.2, "in_flight": 1}
    )
    assert ids(policies.make("lowest_latency").rank(cs, random.Random(1))) == ["b", "c", "a"]


def test_lowest_ttft_ranks_by_ttft() -> None:
    cs = cands({"ttft_s": 0.45}, {"ttft_s": 0.06}, {"ttft_s": 0.08, "latency_s": 0.01})
    assert ids(policies.make("lowest_ttft").rank(cs, random.Random(1))) == ["b", "c", "a"]


def test_lowest_ttft_breaks_ties_by_in_flight() -> None:
    cs = cands({"ttft_s": 0.1, "in_flight": 3}, {"ttft_s": 0.1, "in_flight": 1})
    for seed in range(20):
        assert ids(policies.make("lowest_ttft").rank(cs, random.Random(seed))) == ["b", "a"]


def test_highest_throughput_ranks_by_tokens_per_second() -> None:
    cs = cands({"tokens_per_s": 35.0}, {"tokens_per_s": 120.0}, {"tokens_per_s": 100.0})
    assert ids(policies.make("highest_throughput").rank(cs, random.Random(1))) == ["b", "c", "a"]


def test_cheapest_ranks_by_price_then_listed_order() -> None:
    cs = cands(
        {"price_in": 3.0, "price_out": 15.0},
        {"price_in": 1.0, "price_out": 5.0},
        {"price_in": 3.0, "price_out": 15.0},
        {"price_in": 0.5, "price_out": 20.0},
    )
    # blended price: input + 3 * output -> a 48, b 16, c 48, d 60.5
    assert ids(policies.make("cheapest").rank(cs, random.Random(1))) == ["b", "a", "c", "d"]


def test_score_best_is_the_weighted_sum_of_normalised_metrics() -> None:
    score = Score(weights={"ttft": 1.0, "error_rate": 4.0}, pick="best")
    # a: fast but failing half the time; b: middling; c: slow but reliable.
    cs = cands(
        {"ttft_s": 0.06, "error_rate": 0.5},
        {"ttft_s": 0.2, "error_rate": 0.0},
        {"ttft_s": 0.45, "error_rate": 0.0},
    )
    costs = score.costs(cs)
    assert costs["a"] == pytest.approx(0.06 / 0.45 + 2.0)
    assert costs["b"] == pytest.approx(0.2 / 0.45)
    assert costs["c"] == pytest.approx(1.0)
    assert ids(score.rank(cs, random.Random(1))) == ["b", "c", "a"]


def test_score_throughput_and_price_and_in_flight_weights() -> None:
    cs = cands(
        {"tokens_per_s": 100.0, "price_out": 10.0, "in_flight": 0},
        {"tokens_per_s": 50.0, "price_out": 1.0, "in_flight": 0},
    )
    assert ids(Score(weights={"throughput": 1.0}).rank(cs, random.Random(1))) == ["a", "b"]
    assert ids(Score(weights={"price": 1.0}).rank(cs, random.Random(1))) == ["b", "a"]
    busy = cands({"in_flight": 5}, {"in_flight": 1})
    assert ids(Score(weights={"in_flight": 1.0}).rank(busy, random.Random(1))) == ["b", "a"]


@pytest.mark.parametrize("pick", ["best", "p2c", "weighted"])
def test_score_failover_path_after_the_pick_is_by_cost(pick: str) -> None:
    score = Score(weights={"ttft": 1.0}, pick=pick)
    cs = cands({"ttft_s": 0.1}, {"ttft_s": 0.101}, {"ttft_s": 0.5}, {"ttft_s": 1.0})
    rng = random.Random(3)
    for _ in range(200):
        ranking = ids(score.rank(cs, rng))
        rest = [i for i in ["a", "b", "c", "d"] if i != ranking[0]]
        assert ranking[1:] == rest


# -- exploration -------------------------------------------------------------------------


@pytest.mark.parametrize("name", LIVE)
def test_live_strategies_try_explore_first_and_probing_last(name: str) -> None:
    strategy = policies.make(name)
    cs = cands(
        {"latency_s": 0.1, "ttft_s": 0.05, "tokens_per_s": 200.0},  # the best by every metric
        {"latency_s": 0.5, "ttft_s": 0.3, "tokens_per_s": 50.0, "probing": True, "in_flight": 1},
        {"latency_s": 0.9, "ttft_s": 0.8, "tokens_per_s": 20.0, "explore": True},
        {"latency_s": 0.3, "ttft_s": 0.2, "tokens_per_s": 100.0},
    )
    for seed in range(10):
        ranking = ids(strategy.rank(cs, random.Random(seed)))
        assert ranking[0] == "c"
        assert ranking[-1] == "b"
        assert ranking[1:3] == ["a", "d"]


def test_probing_endpoint_is_still_on_the_failover_path() -> None:
    cs = cands({"ttft_s": 0.1}, {"ttft_s": 0.01, "probing": True, "in_flight": 1})
    assert ids(policies.make("lowest_ttft").rank(cs, random.Random(1))) == ["a", "b"]


@pytest.mark.parametrize("name", LIVE)
def test_many_to_explore_and_probe_keep_their_order_within_each_group(name: str) -> None:
    rng = random.Random(5)
    specs: list[dict[str, object]] = []
    for _ in range(40):
        flag = rng.choice(["explore", "probing", None, None])
        specs.append(
            {
                "latency_s": rng.uniform(0.1, 2.0),
                "ttft_s": rng.uniform(0.05, 1.0),
                "tokens_per_s": rng.uniform(20.0, 200.0),
                "in_flight": 1 if flag == "probing" else 0,
                "explore": flag == "explore",
                "probing": flag == "probing",
            }
        )
    cs = cands(*specs)
    unflagged = [replace(c, explore=False, probing=False) for c in cs]
    strategy = policies.make(name, pick="best") if name == "score" else policies.make(name)
    by_load = ids(strategy.rank(unflagged, random.Random(1)))  # no ties: no draws
    flagged = {c.id: (0 if c.explore else 2 if c.probing else 1) for c in cs}
    assert sum(tier != 1 for tier in flagged.values()) > 8  # more than a handful
    expected = sorted(by_load, key=flagged.__getitem__)
    assert ids(strategy.rank(cs, random.Random(1))) == expected


def test_a_weighted_sum_normalises_by_the_largest_value() -> None:
    cs = cands({"ttft_s": 0.2, "error_rate": 0.1}, {"ttft_s": 0.4, "error_rate": 0.0})
    total = as_loads(cs).combine((("ttft_s", 2.0, True), ("error_rate", 4.0, False)), 0.5)
    assert total == [pytest.approx(0.5 + 2.0 * 0.5 + 0.4), pytest.approx(0.5 + 2.0 * 1.0)]


def test_ties_break_by_listed_index_whatever_the_given_order() -> None:
    a, b, c = cands({"ttft_s": 0.3}, {"ttft_s": 0.1}, {"ttft_s": 0.3})
    best = Score(weights={"ttft": 1.0}, pick="best")
    assert ids(best.rank([c, a, b], random.Random(1))) == ["b", "a", "c"]
    assert ids(policies.make("cheapest").rank([c, b, a], random.Random(1))) == ["a", "b", "c"]


def test_p2c_of_two_unequal_endpoints_is_the_cheaper_and_of_two_equal_a_coin_flip() -> None:
    score = Score(weights={"ttft": 1.0}, pick="p2c")
    unequal = cands({"ttft_s": 0.11}, {"ttft_s": 0.1})
    assert first_shares(score, unequal, 1000)["b"] == 1.0
    equal = cands({"ttft_s": 0.1}, {"ttft_s": 0.1})
    assert first_shares(score, equal, 4000)["a"] == pytest.approx(0.5, abs=0.05)


# -- statistical -------------------------------------------------------------------------


def test_weighted_first_pick_shares_follow_the_weights() -> None:
    cs = cands({"weight": 1.0}, {"weight": 2.0}, {"weight": 7.0})
    shares = first_shares(policies.make("weighted"), cs, 20_000)
    assert shares["a"] == pytest.approx(0.1, abs=0.015)
    assert shares["b"] == pytest.approx(0.2, abs=0.015)
    assert shares["c"] == pytest.approx(0.7, abs=0.015)


def test_weighted_failover_path_is_weighted_too() -> None:
    # Given that c (weight 8) was not first, it should mostly come second.
    cs = cands({"weight": 1.0}, {"weight": 1.0}, {"weight": 8.0})
    rng = random.Random(11)
    second_is_c = total = 0
    for _ in range(20_000):
        ranking = ids(policies.make("weighted").rank(cs, rng))
        if ranking[0] != "c":
            total += 1
            second_is_c += ranking[1] == "c"
    # P(c second | a or b first) = 8 / 9
    assert second_is_c / total == pytest.approx(8 / 9, abs=0.03)


def test_p2c_among_near_equal_endpoints_spreads_the_load() -> None:
    score = Score(weights={"ttft": 1.0}, pick="p2c")
    cs = cands({"ttft_s": 0.100}, {"ttft_s": 0.101}, {"ttft_s": 0.102})
    shares = first_shares(score, cs, 20_000)
    # p2c over three: the best wins 2/3 of its draws, the middle 1/3, the worst never.
    assert shares["a"] == pytest.approx(2 / 3, abs=0.02)
    assert shares["b"] == pytest.approx(1 / 3, abs=0.02)
    assert shares["c"] == 0.0


def test_p2c_never_sends_traffic_to_an_endpoint_many_times_worse() -> None:
    score = Score(weights={"ttft": 1.0, "error_rate": 4.0}, pick="p2c")
    cs = cands({"ttft_s": 0.06}, {"ttft_s": 0.45}, {"ttft_s": 0.08, "error_rate": 0.3})
    shares = first_shares(score, cs, 20_000)
    assert shares["a"] == 1.0


def test_p2c_with_two_equals_and_one_bad_splits_between_the_equals() -> None:
    score = Score(weights={"ttft": 1.0}, pick="p2c")
    cs = cands({"ttft_s": 0.1}, {"ttft_s": 0.1}, {"ttft_s": 1.0})
    shares = first_shares(score, cs, 20_000)
    assert shares["c"] == 0.0
    assert shares["a"] == pytest.approx(0.5, abs=0.02)


def test_score_weighted_pick_follows_exp_of_minus_cost_over_temperature() -> None:
    score = Score(weights={"ttft": 1.0}, pick="weighted")
    cs = cands({"ttft_s": 0.9}, {"ttft_s": 1.0}, {"ttft_s": 0.1})
    costs = score.costs(cs)
    best = min(costs.values())
    odds = {k: math.exp(-(v - best) / 0.1) for k, v in costs.items()}
    total = sum(odds.values())
    shares = first_shares(score, cs, 20_000)
    for k in odds:
        assert shares[k] == pytest.approx(odds[k] / total, abs=0.015)
    # the cheapest by far wins nearly always; the two slow ones still get a trickle
    assert shares["c"] > 0.99


def test_score_weighted_between_close_endpoints_favours_the_better() -> None:
    score = Score(weights={"ttft": 1.0}, pick="weighted")
    cs = cands({"ttft_s": 0.9}, {"ttft_s": 1.0})
    shares = first_shares(score, cs, 20_000)
    # costs 0.9 and 1.0: odds 1 : e^-1
    assert shares["a"] == pytest.approx(1 / (1 + math.exp(-1)), abs=0.015)


def test_seeded_rankings_are_reproducible() -> None:
    cs = cands({"weight": 1.0}, {"weight": 3.0}, {"weight": 2.0}, {"weight": 5.0})
    for name in ("weighted", "least_busy"):

        def run(seed: int, name: str = name) -> list[list[str]]:
            rng = random.Random(seed)
            strategy = policies.make(name)
            return [ids(strategy.rank(cs, rng)) for _ in range(50)]

        assert run(42) == run(42)
        assert run(42) != run(43)  # and the seed is what drives them


# -- properties --------------------------------------------------------------------------

finite = st.floats(min_value=0.0, max_value=1e6, allow_nan=False, allow_infinity=False)
load = st.fixed_dictionaries(
    {
        "weight": st.floats(min_value=1e-3, max_value=1e3),
        "price_in": finite,
        "price_out": finite,
        "latency_s": finite,
        "ttft_s": finite,
        "tokens_per_s": finite,
        "error_rate": st.floats(min_value=0.0, max_value=1.0),
        "in_flight": st.integers(min_value=0, max_value=1000),
        "explore": st.booleans(),
        "probing": st.booleans(),
    }
)
STRATEGY_MAKERS = [
    *((name, {}) for name in policies.STRATEGIES if name != "score"),
    *(
        ("score", {"pick": pick, "weights": weights})
        for pick in ("best", "p2c", "weighted")
        for weights in (
            None,
            {
                "latency": 1.0,
                "ttft": 1.0,
                "throughput": 1.0,
                "error_rate": 1.0,
                "price": 1.0,
                "in_flight": 1.0,
            },
        )
    ),
]


@settings(max_examples=150, deadline=None)
@given(loads=st.lists(load, min_size=0, max_size=8), seed=st.integers(0, 2**32 - 1))
def test_every_ranking_is_a_permutation_of_the_candidates(
    loads: list[dict[str, object]], seed: int
) -> None:
    cs = cands(*loads)
    rng = random.Random(seed)
    for name, options in STRATEGY_MAKERS:
        strategy = policies.make(name, **options)
        for _ in range(3):  # stateful ones (round robin) move on between calls
            ranking = strategy.rank(cs, rng)
            assert sorted(ids(ranking)) == sorted(ids(cs)), (name, options)
            assert len({id(c) for c in ranking}) == len(cs)
        scores = strategy.scores(cs)
        assert set(scores) == set(ids(cs))
