"""A 429 sets its endpoint aside for its Retry-After, never escalates the breaker, and a
route that cannot be waited out answers 429 itself; every time a peer gives is clamped.

In process: the real pipeline, breaker and attempts over providers that answer from a
script, a FakeClock whose ``sleep`` moves virtual time (so a 60 s wait takes none), and
no sockets.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import random
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from providers.base import (
    MAX_RETRY_AFTER_S,
    BufferedResponse,
    UpstreamRequest,
    parse_retry_after,
    retry_after_from,
)
from providers.errors import UpstreamHTTPError
from router.config import loads
from router.errors import AllAttemptsFailed, UpstreamRateLimited
from router.routing.attempts import RATE_LIMIT_DEFAULT_S, Attempts, Opened
from router.routing.pipeline import Call, Pipeline
from router.runtime import Runtime, build_runtime
from router.service import Service
from router.state.breaker import MAX_SET_ASIDE_S
from router.state.clock import FakeClock
from tests.router.chat_answer import ANSWER, CHAT

CONFIG = """
storage: {url: null}
defaults:
  timeouts: {connect_s: 1, ttft_s: 5, idle_s: 5, total_s: 20}
  retry: {attempts: 3, backoff_s: 0.01, backoff_max_s: 0.05}
  breaker: {consecutive_failures: 2, cooldown_s: 30}
providers:
  a: {kind: openai, base_url: "http://127.0.0.1:9/v1"}
  b: {kind: openai, base_url: "http://127.0.0.1:9/v1"}
routes:
  one: {policy: priority, endpoints: [{provider: a, model: m}]}
  two: {policy: priority, endpoints: [{provider: a, model: m}, {provider: b, model: m}]}
policies:
  priority: {strategy: priority}
"""

Step = Callable[[], Any]  # returns an answer body, or raises an UpstreamError


def limited(retry_after: float | None = None) -> Step:
    def step() -> Any:
        raise UpstreamHTTPError(
            429, b'{"error": {"message": "slow down"}}', retry_after_s=retry_after
        )

    return step


def ok() -> Any:
    return ANSWER


class Scripted:
    """A provider answering its n-th request with ``steps[n]`` (the last repeats), and
    noting the (virtual) time of each."""

    kind = "openai"
    native_timeouts = False

    def __init__(self, clock: FakeClock, steps: list[Step]) -> None:
        self.clock = clock
        self.steps = steps
        self.sent: list[float] = []

    async def send(self, request: UpstreamRequest) -> BufferedResponse:
        self.sent.append(self.clock())
        body = self.steps[min(len(self.sent), len(self.steps)) - 1]()
        return BufferedResponse(body)

    async def aclose(self) -> None:
        pass


class World:
    def __init__(self, **steps: list[Step]) -> None:
        self.clock = FakeClock()
        steps = {"a": [ok], "b": [ok], **steps}
        self.providers = {name: Scripted(self.clock, s) for name, s in steps.items()}
        self.runtime: Runtime
        self.runtime, _ = build_runtime(
            loads(CONFIG, env={}),
            clock=self.clock,
            provider_factory=lambda spec: self.providers[spec.name],  # type: ignore[arg-type,return-value]
        )
        self.pipeline = Pipeline(sleep=self.clock.sleep)

    def endpoint(self, route: str, ep: str) -> Any:
        return self.runtime.routes[route].by_id[ep]

    def request(self, route: str) -> tuple[Opened | BaseException, Attempts, float]:
        """Run one request; (its outcome, its attempts, virtual seconds it took)."""
        call = Call(
            api=CHAT,
            payload={"model": route, "messages": [{"role": "user", "content": "hi"}]},
            model=route,
            stream=False,
            client_wants_usage=False,
            request_id="r",
        )
        r = self.runtime.routes[route]
        attempts = Attempts(
            api=CHAT,
            payload=call.payload,
            stream=False,
            client_wants_usage=False,
            request_id="r",
            deadline=self.clock() + r.spec.timeouts.total_s,
            clock=self.clock,
        )
        started = self.clock()

        async def go() -> Opened:
            return await asyncio.wait_for(self.pipeline.run(self.runtime, r, call, attempts), 10)

        try:
            outcome: Opened | BaseException = asyncio.run(go())
        except Exception as exc:
            outcome = exc
        return outcome, attempts, self.clock() - started


def test_a_429_with_a_short_retry_after_is_retried_after_it_and_never_escalates() -> None:
    """The reported case: one endpoint, 429 with Retry-After: 0.2, again and again."""
    world = World(a=[limited(0.2), limited(0.2), ok])
    outcome, attempts, took = world.request("one")
    assert isinstance(outcome, Opened), outcome
    assert [a.reason for a in attempts.records] == ["http_429", "http_429", None]
    sent = world.providers["a"].sent
    assert [round(b - a, 3) for a, b in itertools.pairwise(sent)] == [0.2, 0.2]
    assert took == pytest.approx(0.4)  # not 60 s of an escalated cooldown
    breaker = world.endpoint("one", "a").breaker
    assert (breaker.state, breaker.level, breaker.consecutive) == ("healthy", 0, 0)


def test_many_429s_in_a_row_never_open_the_breaker() -> None:
    world = World(a=[limited(0.2)])
    for _n in range(10):
        outcome, attempts, took = world.request("one")
        assert isinstance(outcome, UpstreamRateLimited), outcome
        assert len(attempts.records) == 3
        assert took < 1.0  # each request waits its Retry-Afters, 0.4 s in all
    breaker = world.endpoint("one", "a").breaker
    assert (breaker.state, breaker.level) == ("healthy", 0)
    assert len(world.providers["a"].sent) == 30


def test_a_429_without_retry_after_sets_aside_for_the_short_default() -> None:
    world = World(a=[limited(None), ok])
    outcome, _, took = world.request("one")
    assert isinstance(outcome, Opened)
    assert took == pytest.approx(RATE_LIMIT_DEFAULT_S)


def test_every_endpoint_limited_past_total_s_answers_429_at_once() -> None:
    world = World(a=[limited(60.0)], b=[limited(45.0)])
    outcome, attempts, took = world.request("two")
    assert isinstance(outcome, UpstreamRateLimited), outcome
    assert took < 0.1  # the backoff only: total_s is 20, waiting 45 s could only fail
    assert [(a.endpoint, a.status) for a in attempts.records] == [("a", 429), ("b", 429)]
    assert outcome.status == 429 and outcome.code == "upstream_rate_limited"
    assert outcome.headers() == {"Retry-After": "45", "retry-after-ms": "45000"}
    body = orjson.loads(outcome.body())["error"]
    assert body["type"] == "rate_limit_error" and len(body["attempts"]) == 2

    # The next request does not knock: both asked for more than it can wait.
    world.clock.advance(5.0)
    outcome, attempts, took = world.request("two")
    assert isinstance(outcome, UpstreamRateLimited)
    assert (attempts.records, took) == ([], 0.0)
    assert outcome.headers()["Retry-After"] == "40"
    assert len(world.providers["a"].sent) + len(world.providers["b"].sent) == 2


def test_a_new_request_waits_out_a_short_rate_limit_then_sends() -> None:
    world = World(a=[limited(3.0), ok])
    outcome, _, _ = world.request("one")
    assert isinstance(outcome, Opened)  # waited 3 s within the request, then served
    world.providers["a"].steps = [limited(4.0), ok]
    world.providers["a"].sent.clear()
    outcome, _, _ = world.request("one")
    assert isinstance(outcome, Opened)
    # The next arrives while it rests: it waits the rest out, then is sent.
    world.endpoint("one", "a").breaker.rate_limited(world.clock(), 2.5)
    outcome, attempts, took = world.request("one")
    assert isinstance(outcome, Opened)
    assert took == pytest.approx(2.5) and len(attempts.records) == 1


def test_one_limited_endpoint_fails_over_without_waiting() -> None:
    world = World(a=[limited(30.0)], b=[ok])
    outcome, attempts, took = world.request("two")
    assert isinstance(outcome, Opened) and outcome.endpoint.id == "b"
    assert took < 0.1  # the backoff only
    # While a rests, requests go straight to b.
    outcome, attempts, _ = world.request("two")
    assert [a.endpoint for a in attempts.records] == ["b"]


def test_mixed_failures_are_still_502() -> None:
    def broken() -> Any:
        raise UpstreamHTTPError(500, b"{}")

    world = World(a=[limited(60.0)], b=[broken])
    outcome, _, _ = world.request("two")
    assert isinstance(outcome, AllAttemptsFailed) and outcome.status == 502


def test_a_probe_that_gets_a_429_does_not_reopen_the_breaker_for_longer() -> None:
    def broken() -> Any:
        raise UpstreamHTTPError(500, b"{}")

    world = World(a=[broken, broken, limited(0.5), ok])
    world.request("one")  # two 500s open the breaker (consecutive_failures: 2)
    breaker = world.endpoint("one", "a").breaker
    assert breaker.state == "cooldown"
    world.clock.advance(31.0)
    outcome, attempts, _ = world.request("one")  # the probe gets a 429, then succeeds
    assert isinstance(outcome, Opened)
    assert [a.reason for a in attempts.records] == ["http_429", None]
    assert (breaker.state, breaker.level) == ("healthy", 0)


# -- times a peer gives ------------------------------------------------------------------

FAR = [
    "1e400",  # infinity
    "2.6e11",  # past datetime's year 9999 in /health
    "99999999999999999999999",
    "-5",
    "nan",
    "inf",
    "Fri, 31 Dec 9999 23:59:59 GMT",
]


@pytest.mark.parametrize("value", FAR)
def test_every_retry_after_is_clamped_to_an_hour(value: str) -> None:
    seconds = parse_retry_after(value)
    assert seconds is None or 0.0 <= seconds <= MAX_RETRY_AFTER_S
    got = retry_after_from({"retry-after-ms": value})
    assert got is None or 0.0 <= got <= MAX_RETRY_AFTER_S


@given(st.text(max_size=40) | st.floats().map(repr) | st.integers().map(str))
def test_no_retry_after_value_escapes_the_bounds(value: str) -> None:
    for got in (parse_retry_after(value), retry_after_from({"retry-after": value})):
        assert got is None or (0.0 <= got <= MAX_RETRY_AFTER_S and not math.isnan(got))


def test_a_date_far_in_the_future_is_an_hour() -> None:
    when = format_datetime(datetime(9000, 1, 1, tzinfo=UTC), usegmt=True)
    assert parse_retry_after(when) == MAX_RETRY_AFTER_S


@pytest.mark.parametrize("seconds", [math.inf, 1e400, 2.6e11, -1.0, math.nan, 1e308])
def test_health_stays_200_whatever_a_breaker_was_told(seconds: float, tmp_path: Any) -> None:
    """Straight into the breaker (as a provider or another replica might), then /health
    and a reload: the view renders, and the rest ends within the clamp."""
    world = World(a=[ok], b=[ok])
    ep = world.endpoint("two", "a")
    now = world.clock()
    ep.breaker.rate_limited(now, seconds)
    ep.breaker.trip(now, "auth", seconds)
    assert ep.breaker.free_at() <= now + MAX_SET_ASIDE_S
    path = tmp_path / "routes.yaml"
    path.write_text(CONFIG)
    service = Service(str(path), clock=world.clock)
    service.runtime = world.runtime
    status, body = service.health()  # renders cooldown_until without overflowing
    assert status == 200 and body["status"] == "ok"  # b serves
    world.clock.advance(MAX_SET_ASIDE_S + 1)
    assert ep.breaker.available(world.clock())


def test_a_retry_goes_on_down_the_ranking_when_the_first_failure_set_its_endpoint_aside() -> None:
    """A 503 asking for a moment (Retry-After: 0.001) sets the head aside; the retry must
    go to the next endpoint, not back to the head once its moment has passed."""
    random.seed(7)  # tenacity's jitter: a backoff longer than the head's rest

    def busy() -> Any:
        raise UpstreamHTTPError(503, b"{}", retry_after_s=0.001)

    for _ in range(5):
        world = World(a=[busy], b=[ok])
        outcome, attempts, _ = world.request("two")
        assert isinstance(outcome, Opened), outcome
        assert [a.endpoint for a in attempts.records] == ["a", "b"]
