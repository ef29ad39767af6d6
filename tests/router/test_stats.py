"""Live stats, in-flight accounting and the circuit breaker, on a fake clock.

Nothing here sleeps: the clock is a mutable float that tests move forward. The last test
drives the real service: a client that walks away mid-stream leaves nothing in flight.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import httpx
import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

import policies
from policies import Candidate
from policies.base import as_loads
from policies.metric import Cheapest
from policies.score import Score
from policies.simple import Priority
from providers.errors import TTFTTimeout, UpstreamHTTPError
from router.config import Breaker
from router.config import loads as load_config
from router.requestlog.records import Usage
from router.routing.attempts import Lease
from router.runtime import Endpoint, build_runtime
from router.state.blend import EXPLORE_BELOW, PROBE_BELOW, Prior, loads
from router.state.breaker import CircuitBreaker
from router.state.live import LiveLoads
from router.state.loads import RouteLoads
from router.state.recent import Recent
from router.state.stats import _WINDOW, DecayedMean, EndpointStats, Window
from tests.support import FakeUpstream, chat_body, chunk, open_stream, poll, routes_yaml


class FakeClock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


@dataclass
class Spec:
    id: str
    index: int
    weight: float = 1.0


def answer(
    stats: EndpointStats,
    clock: FakeClock,
    *,
    latency: float,
    ttft: float | None = None,
    ok: bool = True,
    **kw: Any,
) -> None:
    """One attempt from start to end, as the pipeline records it, at the clock's time."""
    token = stats.start()
    if ttft is not None:
        stats.first_token(token, clock() + ttft)
    stats.finish(token, ok=ok, latency_s=latency, **kw)


# -- the peak rule -----------------------------------------------------------------------


def test_a_slow_sample_raises_the_latency_estimate_at_once() -> None:
    clock = FakeClock()
    stats = EndpointStats(halflife_s=10.0, clock=clock)
    for _ in range(20):
        answer(stats, clock, latency=0.1)
        clock.advance(0.1)
    assert stats.latency.value == pytest.approx(0.1)
    answer(stats, clock, latency=2.0)
    assert stats.latency.value == pytest.approx(2.0)


def test_fast_samples_bring_the_estimate_down_only_gradually() -> None:
    clock = FakeClock()
    stats = EndpointStats(halflife_s=10.0, clock=clock)
    for _ in range(20):
        answer(stats, clock, latency=0.1)
    answer(stats, clock, latency=2.0)
    answer(stats, clock, latency=0.1)
    # one fast answer right after the slow one barely moves it
    assert stats.latency.value > 1.8
    for _ in range(10):  # ten more fast answers over one half-life
        clock.advance(1.0)
        answer(stats, clock, latency=0.1)
    assert 0.3 < stats.latency.value < 1.9
    for _ in range(100):  # and ten half-lives later it has come back down
        clock.advance(1.0)
        answer(stats, clock, latency=0.1)
    assert stats.latency.value == pytest.approx(0.1, abs=0.02)


def test_recovery_speed_is_set_by_the_half_life() -> None:
    clock = FakeClock()
    quick = EndpointStats(halflife_s=1.0, clock=clock)
    slow = EndpointStats(halflife_s=30.0, clock=clock)
    for stats in (quick, slow):
        answer(stats, clock, latency=0.1)
        answer(stats, clock, latency=3.0)
    for _ in range(5):
        clock.advance(1.0)
        for stats in (quick, slow):
            answer(stats, clock, latency=0.1)
    assert quick.latency.value is not None and slow.latency.value is not None
    assert quick.latency.value < 0.25
    assert slow.latency.value > 0.5


def test_ttft_follows_the_peak_rule_and_is_measured_from_start_to_first_token() -> None:
    clock = FakeClock()
    stats = EndpointStats(halflife_s=10.0, clock=clock)
    for _ in range(10):
        token = stats.start()
        clock.advance(0.05)
        stats.first_token(token)
        clock.advance(0.2)
        stats.finish(token, ok=True, latency_s=0.25)
    assert stats.ttft.value == pytest.approx(0.05)
    token = stats.start()
    clock.advance(0.8)
    stats.first_token(token)
    stats.finish(token, ok=True, latency_s=0.8)
    assert stats.ttft.value == pytest.approx(0.8)
    token = stats.start()
    clock.advance(0.05)
    stats.first_token(token)
    stats.finish(token, ok=True, latency_s=0.05)
    assert stats.ttft.value > 0.7


def test_a_request_waiting_past_the_ttft_estimate_raises_the_load() -> None:
    clock = FakeClock()
    stats = EndpointStats(halflife_s=10.0, clock=clock)
    for _ in range(10):
        answer(stats, clock, latency=0.1, ttft=0.05)
    stats.start()  # never gets a first token
    clock.advance(2.0)
    [cand] = loads([(Spec("a", 0), stats)], clock(), [(0.0, 0.0)])
    assert cand.ttft_s > 1.0
    assert cand.in_flight == 1


# -- decay while idle --------------------------------------------------------------------


def test_confidence_halves_every_half_life_while_idle() -> None:
    clock = FakeClock()
    stats = EndpointStats(halflife_s=10.0, clock=clock)
    assert stats.confidence(clock()) == 0.0
    for _ in range(30):
        answer(stats, clock, latency=0.1)
    c0 = stats.confidence(clock())
    assert c0 == pytest.approx(1.0, abs=1e-6)
    assert stats.confidence(clock() + 10.0) == pytest.approx(0.5, abs=1e-6)
    assert stats.confidence(clock() + 20.0) == pytest.approx(0.25, abs=1e-6)


def test_an_idle_bad_endpoint_drifts_back_and_is_explored() -> None:
    clock = FakeClock()
    bad = EndpointStats(halflife_s=10.0, clock=clock)
    good = EndpointStats(halflife_s=10.0, clock=clock)
    for _ in range(30):
        answer(bad, clock, latency=2.0, ttft=1.5)
        answer(good, clock, latency=0.1, ttft=0.05)
    pair = [(Spec("bad", 0), bad), (Spec("good", 1), good)]
    prices = [(0.0, 0.0), (0.0, 0.0)]

    now_bad, now_good = loads(pair, clock(), prices)
    assert now_bad.latency_s == pytest.approx(2.0, rel=1e-3)
    assert not now_bad.explore and not now_good.explore

    def later(seconds: float) -> Any:
        clock.advance(seconds)
        for _ in range(3):  # the good one keeps serving, the bad one gets nothing
            answer(good, clock, latency=0.1, ttft=0.05)
        return loads(pair, clock(), prices)[0]

    one = later(10.0)  # one half-life: half the evidence left, blended halfway to the best
    assert one.latency_s == pytest.approx(0.5 * 2.0 + 0.5 * 0.1, rel=1e-3)
    assert one.ttft_s == pytest.approx(0.5 * 1.5 + 0.5 * 0.05, rel=1e-3)
    assert not one.explore

    three = later(20.0)  # three half-lives: confidence 1/8 < 0.25, nothing in flight
    assert EXPLORE_BELOW > 1 / 8
    assert three.latency_s == pytest.approx(2.0 / 8 + 0.1 * 7 / 8, rel=1e-3)
    assert three.explore and not three.probing


def test_an_unknown_endpoint_is_explored_once_then_probing() -> None:
    clock = FakeClock()
    known = EndpointStats(halflife_s=10.0, clock=clock)
    for _ in range(10):
        answer(known, clock, latency=0.3, ttft=0.1, completion_tokens=50, generation_s=0.5)
    new = EndpointStats(halflife_s=10.0, clock=clock)
    pair = [(Spec("known", 0), known), (Spec("new", 1), new)]
    prices = [(0.0, 0.0), (0.0, 0.0)]
    _, fresh = loads(pair, clock(), prices)
    assert fresh.explore and not fresh.probing
    # the prior is optimistic: the best the route has shown
    assert fresh.latency_s == pytest.approx(0.3)
    assert fresh.tokens_per_s == pytest.approx(100.0)
    new.start()
    _, probing = loads(pair, clock(), prices)
    assert probing.probing and not probing.explore
    assert probing.in_flight == 1


# -- one decay factor per answer ---------------------------------------------------------


class DirectMeans:
    """The means as ``finish`` kept them before it shared one decay factor between them:
    each decays by its own elapsed time."""

    def __init__(self, halflife: float) -> None:
        self.h = halflife
        self.latency = DecayedMean(peak=True)
        self.tokens_per_s = DecayedMean()
        self.errors = DecayedMean()
        self.samples = 0.0
        self.last: float | None = None

    def finish(self, now: float, ok: bool, latency: float, tps: float | None) -> None:
        if self.last is not None and now > self.last:
            self.samples *= 0.5 ** ((now - self.last) / self.h)
        self.samples += 1.0
        self.last = now
        self.errors.add(0.0 if ok else 1.0, now, self.h)
        if ok:
            self.latency.add(latency, now, self.h)
            if tps is not None:
                self.tokens_per_s.add(tps, now, self.h)


@settings(max_examples=100, deadline=None)
@given(
    answers=st.lists(
        st.tuples(
            st.floats(0.0, 30.0),
            st.booleans(),
            st.floats(0.01, 10.0),
            st.one_of(st.none(), st.floats(0.1, 5.0)),
        ),
        max_size=30,
    )
)
def test_a_shared_decay_factor_changes_no_mean(
    answers: list[tuple[float, bool, float, float | None]],
) -> None:
    clock = FakeClock()
    stats = EndpointStats(halflife_s=10.0, clock=clock)
    direct = DirectMeans(10.0)
    for wait, ok, latency, generation in answers:
        clock.advance(wait)
        token = stats.start()
        stats.finish(
            token,
            ok=ok,
            latency_s=latency,
            completion_tokens=None if generation is None else 40,
            generation_s=generation,
        )
        direct.finish(clock(), ok, latency, None if generation is None else 40 / generation)
        assert stats.samples == direct.samples  # exactly: the same operations
        assert stats.errors.mean == direct.errors.mean
        assert stats.latency.mean == direct.latency.mean
        assert stats.tokens_per_s.mean == direct.tokens_per_s.mean


# -- error rate, tool calls, throughput, percentiles ---------------------------------------


def test_error_rate_and_counters() -> None:
    clock = FakeClock()
    stats = EndpointStats(halflife_s=10.0, clock=clock)
    for ok in (True, True, True, False):
        answer(stats, clock, latency=0.1, ok=ok, error=None if ok else "http_5xx")
    assert stats.error_rate() == pytest.approx(0.25)
    view = stats.view()
    assert view["requests"] == 4
    assert view["errors"] == 1
    assert view["error_rate"] == pytest.approx(0.25)
    assert view["last_error"] == "http_5xx"
    # errors fade with time too: a run of successes a half-life later outweighs them
    clock.advance(10.0)
    for _ in range(4):
        answer(stats, clock, latency=0.1)
    assert stats.error_rate() == pytest.approx(0.5 / 6)


def test_a_failure_does_not_count_as_a_latency_sample() -> None:
    clock = FakeClock()
    stats = EndpointStats(halflife_s=10.0, clock=clock)
    answer(stats, clock, latency=0.1)
    answer(stats, clock, latency=30.0, ok=False, error="timeout")
    assert stats.latency.value == pytest.approx(0.1)


def test_output_error_rate_counts_broken_answers_and_fades_with_its_evidence() -> None:
    clock = FakeClock()
    stats = EndpointStats(halflife_s=10.0, clock=clock)
    for broken in (False, True, False, True):
        stats.finish(stats.start(), ok=True, latency_s=0.1, output_ok=not broken)
    stats.finish(stats.start(), ok=False, output_ok=False)  # a stream cut short
    stats.finish(stats.start(), ok=False)  # a 500: no answer to judge
    view = stats.view()
    assert view["output_errors"] == 3
    assert view["output_error_rate"] == pytest.approx(0.6)
    spec = Spec("a", 0)
    [fresh] = loads([(spec, stats)], clock(), [(0.0, 0.0)])
    clock.advance(100.0)  # ten half-lives without evidence: the estimate drifts to 0
    [stale] = loads([(spec, stats)], clock(), [(0.0, 0.0)])
    assert stale.output_error_rate < fresh.output_error_rate / 100
    assert fresh.output_error_rate == pytest.approx(0.6 * stats.confidence(clock() - 100.0))


def test_tool_call_error_rate() -> None:
    clock = FakeClock()
    stats = EndpointStats(halflife_s=10.0, clock=clock)
    answer(stats, clock, latency=0.1)  # no tool calls: not counted
    for valid in (True, False, True, True):
        answer(stats, clock, latency=0.1, tool_calls_valid=valid)
    assert stats.tool_call_answers == 4
    assert stats.tool_call_failures == 1
    assert stats.view()["tool_call_error_rate"] == pytest.approx(0.25)
    assert stats.error_rate() == 0.0  # a bad tool call is not an HTTP error


def test_tokens_per_second_after_the_first_token() -> None:
    clock = FakeClock()
    stats = EndpointStats(halflife_s=10.0, clock=clock)
    answer(stats, clock, latency=2.5, completion_tokens=100, generation_s=2.0)
    answer(stats, clock, latency=1.5, completion_tokens=100, generation_s=1.0)
    assert stats.tokens_per_s.value == pytest.approx(75.0)
    answer(stats, clock, latency=0.2, completion_tokens=0, generation_s=1.0)  # no tokens: no sample
    assert stats.tokens_per_s.value == pytest.approx(75.0)
    assert stats.view()["tokens_per_s"]["ewma"] == pytest.approx(75.0)


def test_percentiles_over_the_recent_window() -> None:
    w = Window()
    assert w.percentile(0.5) is None
    for x in range(100, 0, -1):
        w.add(float(x))
    assert w.percentile(0.5) == 51.0
    assert w.percentile(0.95) == 96.0
    assert w.percentile(0.0) == 1.0
    assert w.percentile(1.0) == 100.0
    clock = FakeClock()
    stats = EndpointStats(halflife_s=10.0, clock=clock)
    for i in range(1, 101):
        answer(stats, clock, latency=i / 1000.0, ttft=i / 2000.0)
    view = stats.view()
    assert view["latency_ms"]["p50"] == pytest.approx(51.0)
    assert view["latency_ms"]["p95"] == pytest.approx(96.0)
    assert view["ttft_ms"]["p95"] == pytest.approx(48.0)
    assert stats.ttft_percentile(0.5) == pytest.approx(0.0255)


# -- the live cache (RouteLoads) against the direct computation (loads) ------------------

LIVE_FIELDS = (
    "latency_s",
    "ttft_s",
    "tokens_per_s",
    "error_rate",
    "output_error_rate",
    "in_flight",
)


class Fleet:
    """A route's stats behind both ``RouteLoads`` and ``loads``, each with its own prior, so
    every ranking can be checked against the uncached one. ``RouteLoads`` keeps its cache
    unless the route has at most ``direct_up_to`` endpoints (then it reads stats afresh)."""

    def __init__(
        self, n: int, clock: FakeClock, halflife: float = 10.0, direct_up_to: int = 0
    ) -> None:
        self.clock = clock
        self.specs = [Spec(f"e{i}", i, 1.0 + i) for i in range(n)]
        self.stats = [EndpointStats(halflife_s=halflife, clock=clock) for _ in range(n)]
        self.prices = [(float(i), 2.0 * i) for i in range(n)]
        self.live = RouteLoads(self.specs, self.stats, self.prices, Prior(), direct_up_to)
        self.direct_prior = Prior()
        self.open: list[list[int]] = [[] for _ in range(n)]  # tokens in flight

    def start(self, i: int) -> None:
        self.open[i].append(self.stats[i].start())

    def first_token(self, i: int) -> None:
        if self.open[i]:
            self.stats[i].first_token(self.open[i][0])

    def finish(self, i: int, ok: bool | None, latency: float) -> None:
        if self.open[i]:
            token = self.open[i].pop(0)
            # Some answers broken (an output error), decided by the latency drawn.
            broken = ok is not None and int(latency * 100) % 3 == 0
            self.stats[i].finish(
                token,
                ok=ok,
                latency_s=latency,
                completion_tokens=50,
                generation_s=latency,
                output_ok=None if ok is None else not broken,
            )

    def rank_both(
        self, keys: list[int] | None = None, forced: tuple[int, ...] = ()
    ) -> tuple[Any, list[Candidate]]:
        """The cached loads and the direct ones, over ``keys`` (None: all)."""
        now = self.clock()
        live = self.live.at(keys, now, forced)
        members = range(len(self.stats)) if keys is None else keys
        direct = loads(
            [(self.specs[k], self.stats[k]) for k in members],
            now,
            [self.prices[k] for k in members],
            self.direct_prior,
        )
        for c in direct:
            if c.index in forced:
                c.explore, c.probing = True, False
        return live, direct

    def check(self, keys: list[int] | None = None, forced: tuple[int, ...] = ()) -> Any:
        """Rank with both; assert the same candidates, prior and rankings."""
        live, direct = self.rank_both(keys, forced)
        assert live is not None
        assert isinstance(live, LiveLoads)
        assert [c.id for c in live] == [c.id for c in direct]
        now = self.clock()
        for got, want, k in zip(live, direct, live.keys, strict=True):
            for field in LIVE_FIELDS:
                assert getattr(got, field) == pytest.approx(
                    getattr(want, field), rel=1e-9, abs=1e-12
                )
            conf = self.stats[k].confidence(now)
            if all(abs(conf - edge) > 1e-9 for edge in (EXPLORE_BELOW, PROBE_BELOW)):
                assert (got.explore, got.probing) == (want.explore, want.probing), got.id
        for field in ("latency_s", "ttft_s", "tokens_per_s", "error_rate"):
            assert getattr(self.live.prior, field) == pytest.approx(
                getattr(self.direct_prior, field), rel=1e-9, abs=1e-12
            )
        for name, options in RANKERS:
            strategy = policies.make(name, **options)
            got_cost, want_cost = ranking_costs(strategy, live), ranking_costs(strategy, direct)
            for k, want in zip(live.keys, want_cost, strict=True):
                assert got_cost[k] == pytest.approx(want, rel=1e-9, abs=1e-9), name
            ordered_costs = sorted(want_cost)
            if any(b - a < 1e-9 * max(1.0, abs(b)) for a, b in pairwise(ordered_costs)):
                continue  # a tie, or one but for rounding: the order is up to random draws
            seed = len(self.open) + int(now)
            got_ids = [c.id for c in strategy.rank(live, random.Random(seed))]
            want_ids = [c.id for c in strategy.rank(direct, random.Random(seed))]
            assert got_ids == want_ids, name
        return live


def ranking_costs(strategy: Any, candidates: Sequence[Candidate]) -> Sequence[float]:
    """What ``strategy`` sorts by, indexed by key."""
    loads_ = as_loads(candidates)
    if isinstance(strategy, Score):
        return strategy.cost_list(loads_)
    if isinstance(strategy, Priority):
        return loads_.metric("index")
    if isinstance(strategy, Cheapest):
        return loads_.metric("price")
    return strategy.costs(loads_)  # type: ignore[no-any-return]


MODES = pytest.mark.parametrize("direct_up_to", [0, 4], ids=["cached", "afresh"])

RANKERS: list[tuple[str, dict[str, Any]]] = [
    ("lowest_ttft", {}),
    ("lowest_latency", {}),
    ("highest_throughput", {}),
    ("cheapest", {}),
    ("priority", {}),
    ("score", {"pick": "best"}),
    (
        "score",
        {
            "pick": "best",
            "weights": {
                "latency": 1.0,
                "ttft": 0.5,
                "throughput": 0.2,
                "error_rate": 3.0,
                "price": 0.1,
                "in_flight": 0.2,
            },
        },
    ),
    ("score", {"pick": "best", "weights": {"ttft": 1.0, "output_error_rate": 2.0}}),
]

OPS = st.one_of(
    st.tuples(st.just("start"), st.integers(0, 3)),
    st.tuples(st.just("first_token"), st.integers(0, 3)),
    st.tuples(
        st.just("finish"),
        st.integers(0, 3),
        st.sampled_from([True, True, False, None]),
        st.floats(0.01, 5.0),
    ),
    st.tuples(st.just("advance"), st.floats(0.0, 40.0)),
    st.tuples(st.just("rank"), st.lists(st.integers(0, 3), min_size=1, unique=True)),
    st.tuples(st.just("rank_all"), st.sampled_from([(), (0,), (2, 3)])),
    st.tuples(st.just("forgive"), st.integers(0, 3)),
)


@MODES
@settings(max_examples=200, deadline=None)
@given(ops=st.lists(OPS, max_size=60))
def test_the_cache_gives_what_the_direct_computation_gives(
    direct_up_to: int, ops: list[tuple[Any, ...]]
) -> None:
    """Whatever happens between rankings (samples, waits, idle time, subsets, forgiven
    errors), the cached loads, prior and rankings equal the uncached ones; so do those a
    small route computes afresh."""
    fleet = Fleet(4, FakeClock(), direct_up_to=direct_up_to)
    for op in ops:
        kind = op[0]
        if kind == "start":
            fleet.start(op[1])
        elif kind == "first_token":
            fleet.first_token(op[1])
        elif kind == "finish":
            fleet.finish(op[1], op[2], op[3])
        elif kind == "advance":
            fleet.clock.advance(op[1])
        elif kind == "rank":
            fleet.check(sorted(op[1]))
        elif kind == "rank_all":
            fleet.check(None, op[1])
        else:
            fleet.stats[op[1]].forgive_errors()
    fleet.check()


@MODES
def test_a_sample_after_a_ranking_is_in_the_next_one(direct_up_to: int) -> None:
    clock = FakeClock()
    fleet = Fleet(2, clock, direct_up_to=direct_up_to)
    for i in (0, 1):
        for _ in range(5):
            fleet.start(i)
            fleet.first_token(i)
            fleet.finish(i, True, 0.2)
    fleet.check()  # leaves the prior the next ranking blends with
    before = fleet.check()
    assert before[0].latency_s == pytest.approx(0.2)
    fleet.start(0)
    fleet.finish(0, True, 3.0)  # the peak rule: believed at once
    after = fleet.check()
    assert after[0].latency_s > 2.5  # the peak rule's jump, blended by its confidence
    assert after[0].in_flight == 0


@MODES
def test_a_request_in_flight_and_its_wait_are_in_the_next_ranking(direct_up_to: int) -> None:
    clock = FakeClock()
    fleet = Fleet(2, clock, direct_up_to=direct_up_to)
    for i in (0, 1):
        fleet.start(i)
        clock.advance(0.1)
        fleet.first_token(i)
        fleet.finish(i, True, 0.5)
    fleet.check()
    fleet.start(1)  # waits for its first token, and goes on waiting
    assert fleet.check()[1].in_flight == 1
    clock.advance(3.0)  # far longer than its 0.1 s estimate: raises its TTFT
    assert fleet.check()[1].ttft_s > 1.0
    clock.advance(3.0)
    assert fleet.check()[1].ttft_s > 2.0  # and keeps raising it while it waits


@MODES
def test_a_moved_prior_recomputes_every_blend(direct_up_to: int) -> None:
    clock = FakeClock()
    fleet = Fleet(3, clock, direct_up_to=direct_up_to)
    for i, latency in enumerate((0.5, 1.0, 2.0)):
        fleet.start(i)
        fleet.finish(i, True, latency)
    fleet.check()
    clock.advance(15.0)  # confidence down: every blend leans on the prior
    fleet.start(0)
    fleet.finish(0, True, 0.05)  # a new best: the prior moves for the others too
    fleet.check()
    fleet.check()  # blending with the prior the previous ranking left
    assert fleet.live.prior.latency_s == pytest.approx(0.5 * 0.5 + 0.05 * 0.5, rel=0.5)


@MODES
def test_forgiven_errors_are_gone_from_the_next_ranking(direct_up_to: int) -> None:
    clock = FakeClock()
    fleet = Fleet(2, clock, direct_up_to=direct_up_to)
    for ok in (False, False, True):
        for i in (0, 1):
            fleet.start(i)
            fleet.finish(i, ok or i == 1, 0.3)
    fleet.check()
    assert fleet.check()[0].error_rate > 0.5
    fleet.stats[0].forgive_errors()
    assert fleet.check()[0].error_rate == 0.0  # no evidence left: the route's best


def test_a_long_idle_route_rebases_and_still_agrees() -> None:
    clock = FakeClock()
    fleet = Fleet(3, clock, halflife=2.0)
    for i in range(3):
        fleet.start(i)
        fleet.finish(i, True, 0.1 * (i + 1))
    fleet.check()
    for _ in range(4):
        clock.advance(50.0)  # 25 half-lives each time: past the point where t0 moves up
        fleet.start(1)
        fleet.finish(1, True, 0.3)
        fleet.check()


def test_a_changed_half_life_is_picked_up() -> None:
    clock = FakeClock()
    fleet = Fleet(2, clock)
    for i in (0, 1):
        fleet.start(i)
        fleet.finish(i, True, 0.2)
    clock.advance(10.0)
    fleet.check()
    for st_ in fleet.stats:
        st_.halflife = 5.0  # what a reload does
    clock.advance(1.0)
    fleet.check()


def test_different_half_lives_are_computed_directly() -> None:
    clock = FakeClock()
    fleet = Fleet(2, clock)
    fleet.stats[1].halflife = 20.0
    for i in (0, 1):
        fleet.start(i)
        fleet.finish(i, True, 0.2)
    assert fleet.live.at(None, clock(), ()) is None  # RouteRuntime falls back to loads
    fleet.stats[1].halflife = 10.0
    fleet.check()
    small = Fleet(2, clock, direct_up_to=2)  # computed afresh: any half-lives will do
    small.stats[1].halflife = 20.0
    for i in (0, 1):
        small.start(i)
        small.finish(i, True, 0.2)
    clock.advance(7.0)
    small.check()


def test_a_clock_behind_a_sample_is_computed_directly() -> None:
    clock = FakeClock()
    fleet = Fleet(1, clock)
    fleet.start(0)
    fleet.finish(0, True, 0.2)
    assert fleet.live.at(None, clock() - 1.0, ()) is None
    assert fleet.live.at(None, clock(), ()) is not None


def test_a_route_that_lost_its_stats_to_a_reload_still_sees_their_changes() -> None:
    clock = FakeClock()
    fleet = Fleet(2, clock)
    for i in (0, 1):
        fleet.start(i)
        fleet.finish(i, True, 0.2)
    fleet.check()
    newer = RouteLoads(fleet.specs, fleet.stats, fleet.prices, Prior())
    assert newer.at(None, clock(), ()) is not None  # the newer route watches them now
    fleet.start(0)
    fleet.finish(0, True, 4.0)  # reported to the newer route only
    older = fleet.check()[0].latency_s
    assert older > 2.0  # the peak rule's jump: the older route saw it too
    assert newer.at(None, clock(), ())[0].latency_s == pytest.approx(older)  # type: ignore[index]


@MODES
def test_a_candidate_read_from_a_ranking_keeps_its_numbers(direct_up_to: int) -> None:
    clock = FakeClock()
    fleet = Fleet(2, clock, direct_up_to=direct_up_to)
    fleet.start(0)
    fleet.finish(0, True, 0.2)
    first = fleet.check()[0]
    held = first.latency_s
    fleet.start(0)
    fleet.finish(0, True, 2.0)
    latest = fleet.check()[0]
    assert latest.latency_s > 1.0  # the peak rule's jump, in the new ranking
    assert first.latency_s == held < 1.0  # the one taken before did not move


@MODES
def test_a_rankings_handles_are_the_routes_and_cannot_be_set(direct_up_to: int) -> None:
    clock = FakeClock()
    fleet = Fleet(2, clock, direct_up_to=direct_up_to)
    fleet.start(0)
    fleet.finish(0, True, 0.2)
    live = fleet.live.at(None, clock(), ())
    assert live is not None
    [first] = live.pick([0])
    assert live.pick([0])[0] is first  # made once per route, not per request
    assert first.latency_s == pytest.approx(live[0].latency_s)
    with pytest.raises(AttributeError):
        first.latency_s = 1.0


def test_the_route_ranks_with_the_cache_and_a_due_probe_goes_first() -> None:
    clock = FakeClock()
    config = load_config(
        routes_yaml(
            "  r:\n    endpoints:\n"
            "      - {id: a, provider: p, model: a}\n"
            "      - {id: b, provider: p, model: b}\n",
            "  p: {kind: simulated}\n",
        ),
        env={},
    )
    runtime, _ = build_runtime(config, clock=clock, provider_factory=lambda spec: object())  # type: ignore[arg-type,return-value]
    route = runtime.routes["r"]
    for e in route.endpoints:
        for _ in range(5):
            token = e.stats.start()
            e.stats.finish(token, ok=True, latency_s=0.2)
    eps = list(route.endpoints)
    assert isinstance(route.candidates(eps, clock()), LiveLoads)
    route.endpoints[1].breaker.trip(clock(), "auth", 5.0)
    clock.advance(5.0)
    ranked = policies.make("score").rank(route.candidates(eps, clock()), random.Random(1))
    assert ranked[0].id == route.endpoints[1].id and ranked[0].explore
    only = route.candidates(eps[1:], clock())
    assert [c.id for c in only] == [route.endpoints[1].id]


def test_percentiles_follow_new_samples_though_kept_sorted_between_them() -> None:
    clock = FakeClock()
    stats = EndpointStats(halflife_s=10.0, clock=clock)
    for _ in range(10):
        answer(stats, clock, latency=0.1, ttft=0.05)
    assert stats.ttft_percentile(0.5) == pytest.approx(0.05)
    assert stats.view()["latency_ms"]["p50"] == pytest.approx(100.0)
    for _ in range(30):
        answer(stats, clock, latency=2.0, ttft=1.0)
    assert stats.ttft_percentile(0.5) == pytest.approx(1.0)  # not the sorted copy of before
    assert stats.view()["latency_ms"]["p50"] == pytest.approx(2000.0)


# -- in-flight accounting through the Lease ------------------------------------------------


@pytest.fixture
def endpoint() -> tuple[Endpoint, FakeClock]:
    config = load_config(
        routes_yaml(
            "  r:\n    endpoints: [{provider: p, model: m}]\n",
            "  p: {kind: simulated}\n",
            extra="defaults: {breaker: {consecutive_failures: 2, cooldown_s: 10}}\n",
        ),
        env={},
    )
    clock = FakeClock()
    runtime, _ = build_runtime(config, clock=clock, provider_factory=lambda spec: object())  # type: ignore[arg-type,return-value]
    return runtime.routes["r"].endpoints[0], clock


def test_lease_that_succeeds(endpoint: tuple[Endpoint, FakeClock]) -> None:
    ep, clock = endpoint
    lease = Lease(ep, clock)
    assert ep.stats.in_flight == 1
    clock.advance(0.1)
    lease.first_token()
    clock.advance(0.4)
    lease.succeed(Usage(prompt_tokens=3, completion_tokens=20), events=22, tool_calls_valid=None)
    lease.succeed(None, 0, None)  # ends once, whatever is called after
    assert ep.stats.in_flight == 0
    assert (ep.stats.requests, ep.stats.failures) == (1, 0)
    assert ep.stats.latency.value == pytest.approx(0.5)
    assert ep.stats.ttft.value == pytest.approx(0.1)
    assert ep.stats.tokens_per_s.value == pytest.approx(20 / 0.4)
    assert ep.breaker.consecutive == 0


def test_a_streamed_answers_ttft_is_kept_apart_by_whether_its_prompt_was_cached(
    endpoint: tuple[Endpoint, FakeClock],
) -> None:
    ep, clock = endpoint
    for ttft, cached in ((0.3, 0), (0.1, 900)):  # a first turn, then one mostly cached
        lease = Lease(ep, clock)
        clock.advance(ttft)
        lease.first_token()
        clock.advance(0.2)
        lease.succeed(Usage(prompt_tokens=1000, cached_tokens=cached, completion_tokens=5), 5, None)
    assert ep.stats.ttft_fresh.median == pytest.approx(0.3)
    assert ep.stats.ttft_cached.median == pytest.approx(0.1)
    assert ep.stats.ttft.value is not None and ep.stats.ttft.value > 0.1  # both, mixed
    Lease(ep, clock).succeed(Usage(prompt_tokens=1000, cached_tokens=1000), 1, None)
    assert list(ep.stats.ttft_cached.samples) == [pytest.approx(0.1)]  # no first token


def test_recent_reads_the_median_of_the_last_few_samples() -> None:
    r = Recent(size=4)
    assert r.median is None
    for x in (0.1, 0.1, 0.9):
        r.samples.append(x)
    assert r.median == pytest.approx(0.1)  # one outlier does not move it
    for x in (0.9, 0.9):
        r.samples.append(x)  # the window holds the last 4: 0.1, 0.9, 0.9, 0.9
    assert r.median == pytest.approx(0.9)


def test_lease_that_fails(endpoint: tuple[Endpoint, FakeClock]) -> None:
    ep, clock = endpoint
    lease = Lease(ep, clock)
    lease.fail(UpstreamHTTPError(500, b"{}"))
    lease.fail(UpstreamHTTPError(500, b"{}"))
    lease.cancel()
    assert ep.stats.in_flight == 0
    assert (ep.stats.requests, ep.stats.failures) == (1, 1)
    assert ep.stats.latency.value is None
    assert ep.breaker.consecutive == 1
    Lease(ep, clock).fail(TTFTTimeout("slow"))
    assert ep.stats.in_flight == 0
    assert ep.breaker.state == "cooldown"  # two in a row


def test_lease_cancelled_records_no_verdict(endpoint: tuple[Endpoint, FakeClock]) -> None:
    ep, clock = endpoint
    lease = Lease(ep, clock)
    clock.advance(0.2)
    lease.first_token()
    lease.cancel()
    lease.succeed(None, 3, None)
    assert ep.stats.in_flight == 0
    assert (ep.stats.requests, ep.stats.failures) == (0, 0)
    assert ep.stats.latency.value is None
    assert ep.stats.error_rate() == 0.0
    assert ep.breaker.consecutive == 0


def test_lease_failed_by_the_client_is_no_verdict_on_the_endpoint(
    endpoint: tuple[Endpoint, FakeClock],
) -> None:
    ep, clock = endpoint
    Lease(ep, clock).fail(UpstreamHTTPError(400, b"{}"))
    assert ep.stats.in_flight == 0
    assert (ep.stats.requests, ep.stats.failures) == (0, 0)
    assert ep.breaker.consecutive == 0


def test_a_cancelled_half_open_probe_frees_the_probe_slot(
    endpoint: tuple[Endpoint, FakeClock],
) -> None:
    ep, clock = endpoint
    ep.breaker.trip(clock(), "auth", 5.0)
    clock.advance(5.0)
    lease = Lease(ep, clock)
    assert ep.breaker.state == "half_open"
    assert not ep.breaker.available(clock())
    lease.cancel()
    assert ep.breaker.available(clock())


# -- the breaker -------------------------------------------------------------------------


def breaker(**kw: Any) -> CircuitBreaker:
    cfg = {
        "consecutive_failures": 3,
        "error_rate": 0.5,
        "min_requests": 10,
        "window_s": 60,
        "cooldown_s": 10,
    }
    return CircuitBreaker(Breaker(**{**cfg, **kw}))


def test_breaker_opens_after_consecutive_failures() -> None:
    b = breaker()
    b.failure(0.0, "http_5xx")
    b.failure(0.1, "http_5xx")
    b.success(0.2)  # a success resets the run
    b.failure(0.3, "http_5xx")
    b.failure(0.4, "http_5xx")
    assert b.state == "healthy" and b.available(0.4)
    b.failure(0.5, "http_5xx")
    assert b.state == "cooldown"
    assert "3 failures in a row" in (b.reason or "")
    assert not b.available(5.0)
    assert b.view(5.0)[0] == "cooldown"
    assert b.view(5.0)[2] == pytest.approx(5.5)


def outcomes(b: CircuitBreaker, start: float, oks: tuple[bool, ...]) -> float:
    """Feed answers one second apart; returns the time after the last."""
    t = start
    for ok in oks:
        if ok:
            b.success(t)
        else:
            b.failure(t, "http_5xx")
        t += 1.0
    return t


def test_breaker_opens_on_error_rate_only_with_min_requests() -> None:
    b = breaker(consecutive_failures=100)
    t = outcomes(b, 0.0, (False, False, True, False))  # 75% errors, but only 4 answers
    assert b.state == "healthy"
    outcomes(b, t, (True, False, True, False, True, False))  # 10 answers, 6 bad: 60% > 50%
    assert b.state == "cooldown"
    assert "error rate" in (b.reason or "")


def test_breaker_forgets_errors_outside_its_window() -> None:
    b = breaker(consecutive_failures=100, min_requests=4, window_s=10)
    outcomes(b, 0.0, (False, False, True))
    # 100 s later the old answers are out of the window: 2 bad of 4 is not over 50%
    # (counting the old ones too, 4 bad of 7 would be)
    outcomes(b, 100.0, (True, False, True, False))
    assert b.state == "healthy"
    outcomes(b, 104.0, (False,))
    assert b.state == "cooldown"


def test_half_open_lets_one_probe_and_success_closes() -> None:
    b = breaker()
    for i in range(3):
        b.failure(float(i), "http_5xx")
    until = b.until
    assert until == pytest.approx(12.0)
    assert not b.available(until - 0.01)
    assert b.available(until)
    assert b.view(until)[0] == "half_open"
    b.acquire(until)
    assert b.state == "half_open"
    assert not b.available(until + 0.1)  # one probe at a time
    b.success(until + 0.5)
    assert b.state == "healthy" and b.reason is None
    assert b.available(until + 0.5)


def test_half_open_failure_reopens_for_longer() -> None:
    b = breaker()
    for i in range(3):
        b.failure(float(i), "http_5xx")
    t = b.until
    b.acquire(t)
    b.failure(t, "http_5xx")
    assert b.state == "cooldown"
    assert b.until - t == pytest.approx(20.0)  # twice cooldown_s
    t = b.until
    b.acquire(t)
    b.failure(t, "http_5xx")
    assert b.until - t == pytest.approx(40.0)
    t = b.until
    b.acquire(t)
    b.success(t)
    assert b.state == "healthy"
    for i in range(3):  # after closing, the next opening is back to cooldown_s
        b.failure(t + i, "http_5xx")
    assert b.until - (t + 2) == pytest.approx(10.0)


def test_trip_opens_for_a_known_time() -> None:
    b = breaker()
    b.trip(0.0, "auth", 30.0)
    assert b.state == "cooldown" and b.reason == "auth"
    assert not b.available(29.0)
    assert b.available(30.0)


# -- end to end: a client that walks away ------------------------------------------------


def _endpoint_view(url: str) -> dict[str, Any]:
    body = httpx.get(f"{url}/health", timeout=5).json()
    return body["routes"]["r"]["endpoints"][0]


async def _endless_stream(
    fake: FakeUpstream, request: web.Request, body: dict[str, Any]
) -> web.StreamResponse:
    import asyncio

    resp = await open_stream(request)
    try:
        for i in range(100_000):
            await resp.write(chunk(f"tok{i} "))
            await asyncio.sleep(0.05)
    except ConnectionResetError:
        fake.disconnected.set()  # the router closed our connection while we wrote
        raise
    return resp


def test_client_disconnect_mid_stream_leaves_nothing_in_flight(
    router_factory: Any, fake: FakeUpstream
) -> None:
    fake.behaviour = _endless_stream
    config = routes_yaml(
        "  r:\n    endpoints: [{provider: up, model: m}]\n",
        f"  up: {{kind: openai, base_url: '{fake.base_url}'}}\n",
    )
    router = router_factory(config)
    with (
        httpx.Client(timeout=10) as client,
        client.stream(
            "POST",
            f"{router.base_url}/chat/completions",
            json={"model": "r", "messages": [{"role": "user", "content": "hi"}], "stream": True},
        ) as resp,
    ):
        assert resp.status_code == 200
        seen = b""
        chunks = resp.iter_bytes()  # held, so the stream stays open until the block ends
        while b"tok2" not in seen:
            seen += next(chunks)
        assert _endpoint_view(router.url)["in_flight"] == 1
    # the client closed its connection mid-stream
    assert poll(lambda: _endpoint_view(router.url)["in_flight"] == 0)
    assert fake.disconnected.wait(10), "the upstream request was not cancelled"
    view = _endpoint_view(router.url)
    assert view["errors"] == 0  # the client left; the endpoint did nothing wrong
    assert view["requests"] == 0  # and its truncated answer is no latency sample

    def logged() -> list[dict[str, Any]]:
        return [e for e in router.logs() if e.get("event") == "request"]

    assert poll(lambda: len(logged()) == 1)
    [line] = logged()
    assert line["status"] == 499 and line["error"] == "client_closed"


def test_non_streamed_answers_give_a_sane_throughput(
    router_factory: Any, fake: FakeUpstream
) -> None:
    async def slow_json(
        fake: FakeUpstream, request: web.Request, body: dict[str, Any]
    ) -> web.StreamResponse:
        import asyncio

        await asyncio.sleep(0.2)
        return web.json_response(chat_body())  # 3 completion tokens

    fake.behaviour = slow_json
    config = routes_yaml(
        "  r:\n    endpoints: [{provider: up, model: m}]\n",
        f"  up: {{kind: openai, base_url: '{fake.base_url}'}}\n",
    )
    router = router_factory(config)
    with httpx.Client(timeout=10) as client:
        for _ in range(2):
            resp = client.post(
                f"{router.base_url}/chat/completions",
                json={"model": "r", "messages": [{"role": "user", "content": "hi"}]},
            )
            assert resp.status_code == 200
    view = _endpoint_view(router.url)
    tps = view["tokens_per_s"]["ewma"]
    # 3 tokens in an answer that took at least 0.2 s: at most 15 tokens/s
    assert tps is not None and tps <= 15.0
    # A non-streamed answer shows no TTFT: its first byte comes after the whole answer.
    assert view["ttft_ms"]["ewma"] is None


def test_a_quantile_read_on_every_request_follows_the_window_as_it_slides() -> None:
    """The hedge's reader keeps a sorted copy that each add updates: it must give what a
    fresh sort of the window gives, before and after the window is full."""
    rng = random.Random(7)
    w, fresh = Window(), Window()
    assert w.quantile(0.9) is None
    for i in range(3 * _WINDOW):
        x = round(rng.random(), 2)  # repeats, so the oldest out is one of several equal
        w.add(x)
        fresh.samples.append(x)
        if i % 37 == 0 or i > 3 * _WINDOW - 5:
            for q in (0.0, 0.5, 0.9, 0.99, 1.0):
                assert w.quantile(q) == fresh.percentile(q)
    assert w.percentile(0.5, stamp=1) == fresh.percentile(0.5)  # the view reads it too
    assert len(w._sorted) == _WINDOW
