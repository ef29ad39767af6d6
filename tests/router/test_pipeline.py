"""The pipeline's retry, failover, hedging, budget, total_s and cancellation, in process.

The real pipeline, attempts, breaker and stats, over ``MockProvider`` hosts that answer
from a script; an event loop on a ``FakeClock`` (``tests/virtual_time.py``), so every
wait (backoff, Retry-After, a slow host, a hedge delay, total_s) passes in virtual time,
in order, without sleeping; and a seeded rng, which the backoff draws from too. Each test
gives the same result on every run. The end-to-end tests in ``tests/e2e`` cover the same
behaviour over sockets.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from providers.base import UpstreamRequest, UpstreamResponse
from providers.errors import UpstreamConnectError, UpstreamHTTPError
from providers.mock import MockProvider, json_answer
from router.config import loads
from router.errors import AllAttemptsFailed
from router.obs.logs import REQUEST, bind_request, request_fields
from router.routing.attempts import Attempts, Opened
from router.routing.pipeline import Call, Pipeline
from router.runtime import build_runtime
from router.state.clock import FakeClock
from tests.router.chat_answer import ANSWER, CHAT
from tests.virtual_time import run

CONFIG = """
storage: {url: null}
defaults:
  timeouts: {connect_s: 1, ttft_s: 10, idle_s: 10, total_s: 60}
  retry: {attempts: 3, backoff_s: 0.5, backoff_max_s: 4}
  breaker: {consecutive_failures: 5, cooldown_s: 30}
providers:
  a: {kind: openai, base_url: "http://127.0.0.1:9/v1"}
  b: {kind: openai, base_url: "http://127.0.0.1:9/v1"}
  c: {kind: openai, base_url: "http://127.0.0.1:9/v1"}
policies:
  hedged: {strategy: priority, hedge: {after_ms: 200, max_extra: 2}}
routes:
  one: {policy: priority, endpoints: [{provider: a, model: m}]}
  three:
    policy: priority
    retry: {attempts: 4}
    endpoints: [{provider: a, model: m}, {provider: b, model: m}, {provider: c, model: m}]
  hedged:
    policy: hedged
    endpoints: [{provider: a, model: m}, {provider: b, model: m}, {provider: c, model: m}]
  hedged-short:
    policy: hedged
    retry: {attempts: 2}
    endpoints: [{provider: a, model: m}, {provider: b, model: m}, {provider: c, model: m}]
  tight:
    policy: priority
    retry: {attempts: 2}
    timeouts: {total_s: 1.5}
    endpoints: [{provider: a, model: m}, {provider: b, model: m}]
"""

Step = Callable[[UpstreamRequest], Awaitable[UpstreamResponse]]


def ok(after: float = 0.0) -> Step:
    async def step(request: UpstreamRequest) -> UpstreamResponse:
        await asyncio.sleep(after)
        return json_answer(ANSWER)

    return step


def status(code: int, retry_after: float | None = None) -> Step:
    async def step(request: UpstreamRequest) -> UpstreamResponse:
        raise UpstreamHTTPError(code, b'{"error": {"message": "no"}}', retry_after_s=retry_after)

    return step


def refused() -> Step:
    async def step(request: UpstreamRequest) -> UpstreamResponse:
        raise UpstreamConnectError("reset before an answer")

    return step


def hang() -> Step:
    async def step(request: UpstreamRequest) -> UpstreamResponse:
        await asyncio.get_running_loop().create_future()  # never answers
        raise AssertionError("unreachable")

    return step


class Host:
    """A scripted upstream: its n-th request gets ``steps[n]`` (the last one repeats).
    Notes when each request came and how each ended."""

    def __init__(self, clock: FakeClock, steps: list[Step]) -> None:
        self.clock = clock
        self.steps = steps
        self.sent: list[float] = []
        self.cancelled = 0
        self.provider = MockProvider(self.answer)

    async def answer(self, request: UpstreamRequest) -> UpstreamResponse:
        self.sent.append(self.clock())
        step = self.steps[min(len(self.sent), len(self.steps)) - 1]
        try:
            return await step(request)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise


class World:
    """One runtime over scripted hosts ``a``, ``b``, ``c`` (default: each answers at once)."""

    def __init__(self, seed: int = 7, **steps: list[Step]) -> None:
        self.clock = FakeClock(0.0)
        self.hosts = {n: Host(self.clock, steps.get(n, [ok()])) for n in ("a", "b", "c")}
        self.runtime, _ = build_runtime(
            loads(CONFIG, env={}),
            rng=random.Random(seed),
            clock=self.clock,
            provider_factory=lambda spec: self.hosts[spec.name].provider,  # type: ignore[arg-type,return-value]
        )
        self.pipeline = Pipeline(debug=True)  # asyncio.sleep: virtual on this loop

    def attempts(self, route: str) -> Attempts:
        context = REQUEST.get()
        return Attempts(
            api=CHAT,
            payload={"model": route, "messages": [{"role": "user", "content": "hi"}]},
            stream=False,
            client_wants_usage=False,
            request_id="req-1",
            deadline=self.clock() + self.runtime.routes[route].spec.timeouts.total_s,
            clock=self.clock,
            context=context,
        )

    async def serve(self, route: str, attempts: Attempts) -> Opened:
        call = Call(CHAT, attempts.payload, route, False, False, "req-1")
        return await self.pipeline.run(self.runtime, self.runtime.routes[route], call, attempts)

    def request(self, route: str) -> tuple[Opened | Exception, Attempts, float]:
        """One request: (its outcome, its attempts, the virtual seconds it took)."""
        attempts = self.attempts(route)
        started = self.clock()
        try:
            outcome: Opened | Exception = run(self.clock, self.serve(route, attempts))
        except Exception as exc:
            outcome = exc
        return outcome, attempts, self.clock() - started

    def stats(self, route: str, ep: str) -> Any:
        return self.runtime.routes[route].by_id[ep].stats


def tried(attempts: Attempts) -> list[tuple[str, str | None]]:
    return [(a.endpoint, a.reason) for a in attempts.records]


def gaps(times: list[float]) -> list[float]:
    return [round(b - a, 9) for a, b in itertools.pairwise(times)]


def test_retries_back_off_with_full_jitter_drawn_from_the_runtimes_rng() -> None:
    world = World(seed=7, a=[status(500), status(500), ok()])
    outcome, attempts, took = world.request("one")
    assert isinstance(outcome, Opened)
    assert tried(attempts) == [("a", "http_5xx"), ("a", "http_5xx"), ("a", None)]
    # Before retry n: uniform in [0, min(backoff_max_s, backoff_s * 2 ** (n - 1))], from
    # the runtime's rng (the priority ranking of one endpoint draws nothing from it).
    draws = random.Random(7)
    expected = [round(draws.uniform(0.0, 0.5), 9), round(draws.uniform(0.0, 1.0), 9)]
    assert gaps(world.hosts["a"].sent) == expected
    assert took == pytest.approx(sum(expected))


def test_the_same_seed_gives_the_same_waits_and_another_seed_others() -> None:
    def run_once(seed: int) -> list[float]:
        world = World(seed=seed, a=[status(502), status(503), ok()])
        world.request("one")
        return gaps(world.hosts["a"].sent)

    assert run_once(11) == run_once(11)
    assert run_once(11) != run_once(12)


def test_a_retry_after_is_waited_out_before_the_next_attempt() -> None:
    world = World(a=[status(503, retry_after=2.0), ok()])
    outcome, attempts, took = world.request("one")
    assert isinstance(outcome, Opened)
    assert tried(attempts) == [("a", "http_5xx"), ("a", None)]
    assert gaps(world.hosts["a"].sent) == [2.0]  # longer than any backoff draw (<= 0.5)
    assert took == pytest.approx(2.0)


def test_failover_walks_the_ranking_in_order_then_starts_over() -> None:
    world = World(a=[status(500), ok()], b=[refused()], c=[status(502)])
    outcome, attempts, _ = world.request("three")
    assert isinstance(outcome, Opened) and outcome.endpoint.id == "a"
    # priority: a, b, c, and over from the top, within retry.attempts (4)
    assert tried(attempts) == [("a", "http_5xx"), ("b", "connect"), ("c", "http_5xx"), ("a", None)]
    assert [len(world.hosts[n].sent) for n in "abc"] == [2, 1, 1]


def test_the_retry_budget_bounds_the_attempts_of_a_request() -> None:
    world = World(a=[status(500)], b=[status(500)], c=[status(500)])
    outcome, attempts, _ = world.request("three")
    assert isinstance(outcome, AllAttemptsFailed)
    assert [a.endpoint for a in attempts.records] == ["a", "b", "c", "a"]  # attempts: 4
    assert outcome.status == 502 and outcome.code == "all_attempts_failed"


def test_a_client_error_is_not_retried() -> None:
    world = World(a=[status(400)])
    outcome, attempts, _ = world.request("three")
    assert getattr(outcome, "status", None) == 400
    assert tried(attempts) == [("a", "http_400")]
    assert world.hosts["b"].sent == []


def test_a_slow_first_choice_is_hedged_after_the_delay_and_the_first_answer_wins() -> None:
    world = World(a=[ok(after=5.0)], b=[ok(after=0.1)])
    outcome, attempts, took = world.request("hedged")
    assert isinstance(outcome, Opened) and outcome.endpoint.id == "b" and outcome.hedged
    assert world.hosts["a"].sent == [0.0]
    assert world.hosts["b"].sent == [0.2]  # after_ms: 200
    assert took == pytest.approx(0.3)
    # The loser is cancelled, its request too, and its wait so far is evidence of its TTFT.
    assert tried(attempts) == [("b", None), ("a", "hedge_lost")]
    assert world.hosts["a"].cancelled == 1
    assert world.stats("hedged", "a").in_flight == 0
    assert world.stats("hedged", "a").ttft.mean == pytest.approx(0.3)


def test_hedges_are_attempts_the_budget_pays_for() -> None:
    # max_extra: 2 and retry.attempts: 3: the first try and two hedges, 200 ms apart.
    world = World(a=[ok(after=1.0)], b=[ok(after=1.0)], c=[ok(after=1.0)])
    outcome, attempts, took = world.request("hedged")
    assert isinstance(outcome, Opened) and outcome.endpoint.id == "a"
    assert [h.sent for h in world.hosts.values()] == [[0.0], [0.2], [0.4]]
    assert took == pytest.approx(1.0)
    assert attempts.hedges == 2
    # retry.attempts: 2 leaves room for one hedge only, whatever max_extra says.
    world = World(a=[ok(after=1.0)], b=[ok(after=1.0)], c=[ok(after=1.0)])
    outcome, attempts, _ = world.request("hedged-short")
    assert isinstance(outcome, Opened) and outcome.endpoint.id == "a"
    assert [h.sent for h in world.hosts.values()] == [[0.0], [0.2], []]
    assert attempts.hedges == 1


def test_total_s_bounds_the_whole_request_across_retries() -> None:
    world = World(a=[hang()], b=[hang()])
    outcome, attempts, took = world.request("tight")
    assert isinstance(outcome, AllAttemptsFailed)
    assert outcome.status == 504 and outcome.code == "upstream_timeout"
    assert took == pytest.approx(1.5)  # total_s, though ttft_s is 10
    assert tried(attempts) == [("a", "total_timeout")]
    assert world.hosts["b"].sent == []  # no time left to fail over
    assert world.stats("tight", "a").in_flight == 0


def test_a_request_cancelled_mid_attempt_releases_its_endpoint() -> None:
    world = World(a=[ok(after=5.0)])
    attempts = world.attempts("one")
    stats = world.stats("one", "a")

    async def cancel_after(seconds: float) -> bool:
        task = asyncio.ensure_future(world.serve("one", attempts))
        await asyncio.sleep(seconds)
        assert stats.in_flight == 1
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            return True
        return False

    assert run(world.clock, cancel_after(1.0))
    assert world.clock() == pytest.approx(1.0)
    assert tried(attempts) == [("a", "cancelled")]
    assert world.hosts["a"].cancelled == 1  # the upstream request was stopped too
    assert stats.in_flight == 0 and stats.requests == 0  # no verdict on the endpoint
    breaker = world.runtime.routes["one"].by_id["a"].breaker
    assert breaker.state == "healthy" and breaker.consecutive == 0


def logged(event: str) -> Step:
    """Answers at once, logging ``event`` from inside the attempt (as a provider might)."""

    async def step(request: UpstreamRequest) -> UpstreamResponse:
        structlog.get_logger("test").info(event)
        return json_answer(ANSWER)

    return step


def test_every_event_of_a_request_carries_its_id_route_endpoint_and_attempt() -> None:
    world = World(a=[status(500)], b=[logged("upstream_answered")])
    context = bind_request("req-42")
    with capture_logs(processors=[request_fields]) as events:
        outcome, _, _ = world.request("three")
    context.end()
    assert isinstance(outcome, Opened)
    decision = next(e for e in events if e["event"] == "route_decision")
    assert decision["request_id"] == "req-42" and decision["route"] == "three"
    answered = next(e for e in events if e["event"] == "upstream_answered")
    assert (answered["request_id"], answered["route"]) == ("req-42", "three")
    assert (answered["endpoint"], answered["attempt"]) == ("b", 2)  # after a failed
    with capture_logs(processors=[request_fields]) as events:
        structlog.get_logger("test").info("between_requests")
    assert "request_id" not in events[0]  # the binding ended with its request


def test_a_hedging_races_attempts_each_log_their_own_endpoint() -> None:
    async def slow_then_log(request: UpstreamRequest) -> UpstreamResponse:
        structlog.get_logger("test").info("slow_sent")
        await asyncio.sleep(1.0)
        structlog.get_logger("test").info("slow_answered")  # never: the hedge wins
        return json_answer(ANSWER)

    world = World(a=[slow_then_log], b=[logged("fast_answered")])
    context = bind_request("req-7")
    with capture_logs(processors=[request_fields]) as events:
        outcome, _, _ = world.request("hedged")
    context.end()
    assert isinstance(outcome, Opened) and outcome.endpoint.id == "b"
    slow = next(e for e in events if e["event"] == "slow_sent")
    fast = next(e for e in events if e["event"] == "fast_answered")
    assert (slow["request_id"], slow["endpoint"], slow["attempt"]) == ("req-7", "a", 1)
    assert (fast["request_id"], fast["endpoint"], fast["attempt"]) == ("req-7", "b", 2)
    assert not any(e["event"] == "slow_answered" for e in events)
