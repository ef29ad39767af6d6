"""Prompt-cache affinity in the pipeline: the bound endpoint first when staying pays,
the ranking as its failover path, provider.order over it, bindings kept and dropped.

In process: the real pipeline, runtime and in-process shared state over providers that
answer from a function, a FakeClock, and no sockets.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from policies.affinity import Wait
from providers.base import BufferedResponse, UpstreamRequest
from providers.errors import UpstreamHTTPError
from router.config import loads
from router.routing import affinity as affinity_mod
from router.routing.affinity import HIT, NEW, Affinity
from router.routing.attempts import Attempts, Opened
from router.routing.pipeline import Call, Pipeline, RoutingPrefs
from router.runtime import Runtime, build_runtime
from router.state.clock import FakeClock
from router.state.shared.memory import MemoryState
from tests.router.chat_answer import ANSWER, CHAT

PRICE = "{input: 3.0, output: 15.0, cache_read: 0.3}"
CONFIG = f"""
storage: {{url: null}}
defaults:
  retry: {{attempts: 3, backoff_s: 0.01, backoff_max_s: 0.05}}
  breaker: {{consecutive_failures: 1, cooldown_s: 30}}
providers:
  a: {{kind: openai, base_url: "http://127.0.0.1:9/v1"}}
  b: {{kind: openai, base_url: "http://127.0.0.1:9/v1"}}
  c: {{kind: openai, base_url: "http://127.0.0.1:9/v1", prompt_cache: true}}
policies:
  sticky: {{strategy: priority, affinity: {{ttl_s: 600, usd_per_s: 0.05}}}}
  scored: {{strategy: score, affinity: {{ttl_s: 600, usd_per_s: 0.05}}}}
routes:
  r:
    policy: sticky
    endpoints:
      - {{provider: a, model: m, price: {PRICE}}}
      - {{provider: b, model: m, price: {PRICE}}}
  explored:
    policy: scored
    endpoints:
      - {{provider: a, model: m, price: {PRICE}}}
      - {{provider: b, model: m, price: {PRICE}}}
  pricier:
    policy: scored
    endpoints:
      - {{provider: a, model: m, price: {PRICE}}}
      - {{provider: b, model: m, price: {{input: 6.0, output: 30.0, cache_read: 0.6}}}}
  nocache:
    policy: sticky
    endpoints: [{{provider: a, model: m}}, {{provider: b, model: m}}]
  flagged:
    policy: sticky
    endpoints: [{{provider: a, model: m}}, {{provider: c, model: m}}]
"""


class Host:
    """A provider that answers, or fails with 500 while ``down``; counts what it got."""

    kind = "openai"
    native_timeouts = False

    def __init__(self) -> None:
        self.down = False
        self.sent = 0

    async def send(self, request: UpstreamRequest) -> BufferedResponse:
        self.sent += 1
        if self.down:
            raise UpstreamHTTPError(500, b'{"error": {"message": "down"}}')
        return BufferedResponse(ANSWER)

    async def aclose(self) -> None:
        pass


class World:
    def __init__(self) -> None:
        self.clock = FakeClock()
        self.hosts = {name: Host() for name in "abc"}
        self.runtime: Runtime
        self.runtime, _ = build_runtime(
            loads(CONFIG, env={}),
            clock=self.clock,
            provider_factory=lambda spec: self.hosts[spec.name],  # type: ignore[arg-type,return-value]
        )
        self.state = MemoryState(clock=self.clock)
        self.pipeline = Pipeline(sleep=self.clock.sleep)

    def turn(
        self, route: str, turns: int = 3, prefs: RoutingPrefs | None = None
    ) -> tuple[Opened | BaseException, Affinity | None]:
        r = self.runtime.routes[route]
        messages: list[dict[str, str]] = [{"role": "system", "content": "agent " * 2000}]
        for i in range(turns):
            messages += [
                {"role": "user", "content": f"q{i}"},
                {"role": "assistant", "content": "a"},
            ]
        payload: dict[str, Any] = {"model": route, "messages": messages[:-1]}
        plan = affinity_mod.plan(r, r.affinity_for(None), "chat", payload, {}, 40_000, False)
        call = Call(
            api=CHAT,
            payload=payload,
            model=route,
            stream=False,
            client_wants_usage=False,
            request_id="q",
            prefs=prefs,
            affinity=plan,
        )
        attempts = Attempts(
            api=CHAT,
            payload=payload,
            stream=False,
            client_wants_usage=False,
            request_id="q",
            deadline=self.clock() + r.spec.timeouts.total_s,
            clock=self.clock,
        )

        async def go() -> Opened:
            if plan is not None:
                plan.bound = (await self.state.admit(None, 0, plan.key)).binding
            try:
                opened = await self.pipeline.run(self.runtime, r, call, attempts)
            except Exception:
                if plan is not None:
                    plan.settle(self.state, None)
                raise
            if plan is not None:
                plan.settle(self.state, opened.endpoint)
            return opened

        try:
            return asyncio.run(go()), plan
        except Exception as exc:
            return exc, plan


def served(outcome: Opened | BaseException) -> str:
    assert isinstance(outcome, Opened), outcome
    return outcome.endpoint.id


def test_a_conversation_stays_on_the_endpoint_that_holds_its_cache() -> None:
    world = World()
    bound_to_b = world.runtime.routes["r"]
    outcome, plan = world.turn("r", prefs=RoutingPrefs(order=("b",)))
    assert served(outcome) == "b" and plan is not None and plan.verdict("b") == NEW
    # priority ranks a first, but the conversation's cache is on b, as fast as a
    outcome, plan = world.turn("r")
    assert served(outcome) == "b"
    assert plan is not None and plan.bound == "b" and plan.verdict("b") == HIT
    assert bound_to_b.caching == frozenset({0, 1})


def test_the_bound_endpoint_failing_fails_over_and_rebinds() -> None:
    world = World()
    world.turn("r", prefs=RoutingPrefs(order=("b",)))
    world.hosts["b"].down = True
    outcome, plan = world.turn("r")
    assert served(outcome) == "a"  # b tried first (bound), failed, the ranking followed
    assert world.hosts["b"].sent == 2
    assert plan is not None and plan.verdict("a") == NEW
    world.hosts["b"].down = False
    outcome, _ = world.turn("r")
    assert served(outcome) == "a"  # now bound to a (and b is cooling down anyway)


def test_provider_order_wins_over_the_binding() -> None:
    world = World()
    world.turn("r", prefs=RoutingPrefs(order=("b",)))
    outcome, _ = world.turn("r", prefs=RoutingPrefs(order=("a",)))
    assert served(outcome) == "a"


def test_a_much_slower_bound_endpoint_is_left() -> None:
    world = World()
    world.turn("r", prefs=RoutingPrefs(order=("b",)))
    stats_a = world.runtime.routes["r"].by_id["a"].stats
    stats_b = world.runtime.routes["r"].by_id["b"].stats
    for _ in range(20):  # a answers in 0.2 s, b in 8 s: staying costs more than the cache
        for stats, took in ((stats_a, 0.2), (stats_b, 8.0)):
            token = stats.start()
            world.clock.advance(took)
            stats.finish(token, ok=True, latency_s=took, completion_tokens=10, generation_s=took)
    outcome, plan = world.turn("r", turns=1)
    assert served(outcome) == "a" and plan is not None and plan.bound == "b"


def test_affinity_is_off_where_no_cache_pays_and_on_where_the_provider_says_so() -> None:
    world = World()
    _, plan = world.turn("nocache")
    assert plan is None
    _, plan = world.turn("flagged", prefs=RoutingPrefs(order=("c",)))
    assert plan is not None
    outcome, plan = world.turn("flagged")
    assert served(outcome) == "c" and plan is not None and plan.bound == "c"


def test_a_request_that_failed_everywhere_drops_the_binding() -> None:
    world = World()
    world.turn("r", prefs=RoutingPrefs(order=("b",)))
    world.hosts["a"].down = world.hosts["b"].down = True
    outcome, plan = world.turn("r")
    assert not isinstance(outcome, Opened)
    assert plan is not None
    assert asyncio.run(world.state.get(plan.key)) is None


def test_bindings_expire_with_their_ttl() -> None:
    world = World()
    _, plan = world.turn("r", prefs=RoutingPrefs(order=("b",)))
    assert plan is not None and asyncio.run(world.state.get(plan.key)) == "b"
    world.clock.advance(599.0)
    assert served(world.turn("r")[0]) == "b"  # a use refreshes the binding's TTL
    world.clock.advance(601.0)
    assert served(world.turn("r")[0]) == "a"  # forgotten: the ranking decides again


def test_an_exploration_pick_serves_a_new_conversation_but_does_not_bind_it() -> None:
    world = World()
    # Neither endpoint has evidence: the score ranking explores one, then the other.
    outcome, plan = world.turn("explored")
    first = served(outcome)
    assert plan is not None and plan.trial == first
    assert asyncio.run(world.state.get(plan.key)) is None  # an experiment placed it
    outcome, plan = world.turn("explored")
    assert served(outcome) != first and plan is not None and plan.trial == served(outcome)
    # Both have evidence now: the ranking places the conversation, and it binds.
    outcome, plan = world.turn("explored")
    assert plan is not None and plan.trial is None
    assert asyncio.run(world.state.get(plan.key)) == served(outcome)


def answered(world: World, stats: Any, kinds: list[tuple[float, bool]]) -> None:
    """Streamed answers with these (TTFT, prompt cached) at ``stats``'s endpoint."""
    for ttft, cached in kinds:
        token = stats.start()
        world.clock.advance(ttft)
        stats.first_token(token)
        stats.finish(token, ok=True, latency_s=ttft + 0.1)
        stats.cache_split(ttft, cached)


def test_a_streams_waits_are_its_recent_cached_and_uncached_ttfts_kept_apart() -> None:
    world = World()
    route = world.runtime.routes["r"]
    a = route.by_id["a"]
    now = world.clock()
    assert affinity_mod.waits(a, route.candidates([a], now)[0], True, now) == Wait(0.0, 0.0)
    answered(world, a.stats, [(0.3, False)])
    now = world.clock()
    (cand,) = route.candidates([a], now)
    # No cached answer seen there yet: no cache is assumed to shorten the wait.
    assert affinity_mod.waits(a, cand, True, now) == Wait(pytest.approx(0.3), pytest.approx(0.3))
    answered(world, a.stats, [(0.1, True), (0.1, True), (0.9, True)])  # and a hiccup
    now = world.clock()
    (cand,) = route.candidates([a], now)
    assert affinity_mod.waits(a, cand, True, now) == Wait(pytest.approx(0.1), pytest.approx(0.3))
    latency = affinity_mod.waits(a, cand, False, now)
    assert latency.cached == latency.fresh == pytest.approx(cand.latency_s)
    before = cand.ttft_s
    # Others' turns waiting for their first token: the ranking's estimate rises to the
    # oldest one's age, but nothing waits longer than an uncached turn takes: no change.
    a.stats.start()
    world.clock.advance(0.25)
    now = world.clock()
    (cand,) = route.candidates([a], now)
    assert cand.ttft_s > before + 0.02, (before, cand.ttft_s)
    assert affinity_mod.waits(a, cand, True, now) == Wait(pytest.approx(0.1), pytest.approx(0.3))
    world.clock.advance(0.35)  # 0.6 s: twice an uncached turn: the host got slower
    now = world.clock()
    (cand,) = route.candidates([a], now)
    assert affinity_mod.waits(a, cand, True, now) == Wait(pytest.approx(0.2), pytest.approx(0.6))


def test_a_bound_endpoint_whose_cached_turns_turned_slow_is_left_but_not_for_a_hiccup() -> None:
    world = World()
    route = world.runtime.routes["r"]
    world.turn("r", prefs=RoutingPrefs(order=("b",)))  # bound to b
    a, b = route.by_id["a"].stats, route.by_id["b"].stats
    answered(world, a, [(0.13, False), (0.05, True), (0.05, True)])
    answered(world, b, [(0.08, False), (0.03, True), (0.03, True)])
    plan = affinity_mod.plan(
        route, route.affinity_for(None), "chat", {"messages": []}, {}, 80_000, True
    )
    assert plan is not None
    plan.bound = "b"
    ranking = [route.by_id["a"], route.by_id["b"]]  # the ranking says a; the cache says b
    now = world.clock()
    assert plan.order(route, ranking, route.candidates(ranking, now), False, now)[0].id == "b"
    # One cached turn at b takes 0.4 s: a hiccup, as far as anyone can tell.
    answered(world, b, [(0.4, True)])
    now = world.clock()
    assert plan.order(route, ranking, route.candidates(ranking, now), False, now)[0].id == "b"
    # Two more: most of b's recent cached turns are slow now. Moving pays.
    answered(world, b, [(0.4, True), (0.4, True)])
    now = world.clock()
    assert plan.order(route, ranking, route.candidates(ranking, now), False, now)[0].id == "a"


def test_a_new_conversation_goes_where_it_would_wait_least_over_its_horizon() -> None:
    world = World()
    for name in ("explored", "pricier"):
        route = world.runtime.routes[name]
        answered(world, route.by_id["a"].stats, [(0.13, False), (0.05, True), (0.05, True)])
        answered(world, route.by_id["b"].stats, [(0.08, False), (0.03, True), (0.03, True)])
    route = world.runtime.routes["explored"]
    plan = affinity_mod.plan(
        route, route.affinity_for(None), "chat", {"messages": []}, {}, 80_000, True
    )
    assert plan is not None
    a, b = route.by_id["a"], route.by_id["b"]
    now = world.clock()
    # The ranking's one-request view put a first (a hiccup, a draw between near-equals):
    # over the conversation's turns b is the sooner, so it goes first, a behind it.
    assert plan.order(route, [a, b], route.candidates([a, b], now), True, now) == [b, a]
    # A strategy that does not rank on speed places it as it ranks.
    assert plan.order(route, [a, b], route.candidates([a, b], now), False, now) == [a, b]
    # Never on an endpoint pricier than the ranking's choice.
    pricier = world.runtime.routes["pricier"]
    pa, pb = pricier.by_id["a"], pricier.by_id["b"]
    plan = affinity_mod.plan(
        pricier, pricier.affinity_for(None), "chat", {"messages": []}, {}, 80_000, True
    )
    assert plan is not None
    assert plan.order(pricier, [pa, pb], pricier.candidates([pa, pb], now), True, now)[0] is pa
