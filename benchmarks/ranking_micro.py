"""Micro-benchmark: the cost of ranking one request as a route's fleet grows.

Why it exists: the routing decision runs on every request (and again on every failover),
so it has to stay cheap when a route has hundreds of endpoints: the target is under 50 us
at 100 endpoints, growing no faster than linearly. This times the code path the router
runs per request (``router.routing.ranking.rank`` without its logging): the usable / not-full /
breaker filters, ``RouteRuntime.candidates`` (``router.state.stats.loads``: live stats read,
decayed and blended into ``Candidate`` objects), the strategy's ``rank`` and the mapping
back to endpoints, over 2 to 1,000 endpoints whose stats hold recent samples and a few
requests in flight (a warm fleet: no endpoint left to explore). The fake clock moves on by
a microsecond between decisions, as a real one does between requests, so nothing that
depends on the time can be carried over from one decision to the next. A second table
records an answer between decisions, as a busy route does: the cost of keeping up with it.

    python benchmarks/ranking_micro.py                  # tables: us per call, growth
    python -m pytest benchmarks/ranking_micro.py -q     # the first through pytest-benchmark

It is not collected by ``make test`` (whose testpaths is ``tests/``), and asserts nothing
about time: it reports. Timings are the best of many short runs: other work on the
machine only ever adds time.
"""

from __future__ import annotations

import os
import random
import sys
import timeit
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from router.config import loads as load_config
from router.runtime import Endpoint, RouteRuntime, Runtime, build_runtime

SIZES = (2, 10, 100, 1000)
POLICIES = {"score/p2c": "fastest", "lowest_ttft": "lowest_ttft"}


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def fleet(n: int, seed: int = 0) -> tuple[Runtime, RouteRuntime, FakeClock]:
    """A route of ``n`` OpenAI-compatible endpoints with live stats, at steady state."""
    eps = "\n".join(
        f"      - {{id: ep{i}, provider: up, model: m, price: {{input: {1 + i % 7}, "
        f"output: {2 + i % 5}}}}}"
        for i in range(n)
    )
    text = f"""
server: {{api_keys_env: null, admin_key_env: null}}
storage: {{url: null}}
providers:
  up: {{kind: openai, base_url: "http://127.0.0.1:9/v1"}}
policies:
  fastest: {{strategy: score, weights: {{ttft: 1.0, error_rate: 4.0, throughput: 0.3}}, pick: p2c}}
routes:
  big:
    policy: fastest
    endpoints:
{eps}
"""
    clock = FakeClock()
    config = load_config(text, path="<ranking_micro>", env={})
    runtime, _ = build_runtime(config, rng=random.Random(seed), clock=clock)
    route = runtime.routes["big"]
    rng = random.Random(seed)
    for e in route.endpoints:
        st = e.stats
        ttft = rng.uniform(0.05, 0.8)
        for _ in range(8):  # recent answers: confidence ~1, nothing to explore
            token = st.start()
            # The whole fleet's answers within one second of fake time, whatever its size:
            # at 0.01 s per answer, the first of 1,000 endpoints' answers were 80 s old at
            # the end, past a half-life, and the ranking took its stale-evidence path.
            clock.t += 0.125 / n
            st.first_token(token, clock.t + ttft)
            st.finish(
                token,
                ok=rng.random() > 0.05,
                latency_s=ttft + rng.uniform(0.2, 3.0),
                completion_tokens=200,
                generation_s=rng.uniform(0.5, 4.0),
            )
        for _ in range(rng.randrange(3)):  # a few still in flight, waiting for a token
            st.start()
    clock.t += 1.0
    return runtime, route, clock


def rank_once(runtime: Runtime, route: RouteRuntime, policy: str) -> list[Endpoint]:
    """One routing decision, as ``router.routing.ranking.rank`` makes it (logging left out)."""
    now = runtime.clock()
    eps = [e for e in route.endpoints if e.usable]
    open_now = [e for e in eps if not e.full()]
    avail = [e for e in open_now if e.breaker.available(now)]
    strategy, _ = route.strategy_for(policy)
    candidates = route.candidates(avail, now)
    ranked = strategy.rank(candidates, runtime.rng)
    return [route.endpoints[c.index] for c in ranked]


def decision(
    runtime: Runtime, route: RouteRuntime, clock: FakeClock, policy: str
) -> Callable[[], list[Endpoint]]:
    """One routing decision, a microsecond (of fake time) after the previous one."""

    def decide() -> list[Endpoint]:
        clock.t += 1e-6
        return rank_once(runtime, route, policy)

    return decide


def busy_decision(
    runtime: Runtime, route: RouteRuntime, clock: FakeClock, policy: str
) -> Callable[[], list[Endpoint]]:
    """A decision, then an answer recorded on some endpoint (start, first token, finish)."""
    rng = random.Random(1)
    endpoints = route.endpoints

    def decide() -> list[Endpoint]:
        clock.t += 1e-6
        ranking = rank_once(runtime, route, policy)
        st = endpoints[rng.randrange(len(endpoints))].stats
        token = st.start()
        st.first_token(token)
        st.finish(token, ok=True, latency_s=0.5, completion_tokens=200, generation_s=1.0)
        return ranking

    return decide


def per_call_us(fn: Callable[[], Any], budget_s: float = 0.6, repeat: int = 15) -> float:
    """Best of ``repeat`` timings of as many calls as fit in ``budget_s`` / ``repeat``, in
    microseconds."""
    timer = timeit.Timer(fn)
    n, took = timer.autorange()
    per = took / n
    number = max(1, int(budget_s / repeat / per))
    return min(timer.repeat(repeat=repeat, number=number)) / number * 1e6


def table(make: Callable[..., Callable[[], list[Endpoint]]], sizes: tuple[int, ...]) -> None:
    print("| policy | endpoints | us / call | ns / endpoint | growth vs previous size |")
    print("|---|---|---|---|---|")
    for label, policy in POLICIES.items():
        prev: tuple[int, float] | None = None
        for n in sizes:
            runtime, route, clock = fleet(n)
            assert len(rank_once(runtime, route, policy)) == n
            us = per_call_us(make(runtime, route, clock, policy))
            growth = "-" if prev is None else f"{us / prev[1]:.1f}x for {n // prev[0]}x endpoints"
            print(f"| {label} | {n} | {us:.1f} | {us * 1000 / n:.0f} | {growth} |")
            prev = (n, us)


# -- pytest-benchmark ---------------------------------------------------------------------

try:
    import pytest
except ImportError:  # the table above needs no pytest
    pytest = None  # type: ignore[assignment]

if pytest is not None:

    @pytest.mark.parametrize("n", SIZES)
    @pytest.mark.parametrize("label", list(POLICIES))
    def test_rank(benchmark: Any, label: str, n: int) -> None:
        runtime, route, clock = fleet(n)
        policy = POLICIES[label]
        benchmark.group = f"rank {label}"
        benchmark.extra_info["endpoints"] = n
        ranked = benchmark(decision(runtime, route, clock, policy))
        assert sorted(e.id for e in ranked) == sorted(e.id for e in route.endpoints)


if __name__ == "__main__":
    print("Ranking one request:\n")
    table(decision, SIZES)
    print(
        "\nLinear growth: 10x endpoints costs about 10x (ns / endpoint flat); the target is "
        "under 50 us at 100 endpoints.\n\nRanking one request, with an answer recorded on "
        "a random endpoint after each (the stats updates are included):\n"
    )
    table(busy_decision, SIZES[:3])
