"""Upstream rate limits end to end: the real router, a real fake upstream, real clients.

A 429 with ``Retry-After: 0.2`` on a one-endpoint route used to escalate the breaker
(60 s for the first request, minutes later, then 502). Now the endpoint rests for what
it asked, and a route that cannot be waited out answers 429 with ``Retry-After``, which
OpenAI's SDK reads. Retry-After values no clock can hold are clamped to an hour.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import UTC, datetime
from typing import Any

import httpx
import openai
import pytest
from aiohttp import web

from tests.support import Behaviour, FakeUpstream, RouterProcess, ok_json, poll, status

CONFIG = """
storage: {{url: null}}
defaults:
  timeouts: {{connect_s: 1, ttft_s: 2, idle_s: 2, total_s: 5}}
  retry: {{attempts: 3, backoff_s: 0.01, backoff_max_s: 0.05}}
providers:
  lone: {{kind: openai, base_url: "{lone}"}}
  near: {{kind: openai, base_url: "{near}"}}
{far_providers}
routes:
  lone: {{endpoints: [{{provider: lone, model: m}}]}}
{pairs}
policies:
  first: {{strategy: priority}}
"""
MESSAGES = [{"role": "user", "content": "hi"}]


class Rig:
    def __init__(self, router: RouterProcess, fakes: dict[str, FakeUpstream]) -> None:
        self.router = router
        self.fakes = fakes
        self.sdk = openai.OpenAI(base_url=router.base_url, api_key="x", max_retries=0)

    def chat(self, model: str) -> tuple[httpx.Response, float]:
        started = time.monotonic()
        r = httpx.post(
            f"{self.router.base_url}/chat/completions",
            json={"model": model, "messages": MESSAGES},
            timeout=30,
        )
        return r, time.monotonic() - started


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    with ExitStack() as stack:
        fakes = {n: stack.enter_context(FakeUpstream(text=n)) for n in ("lone", "far", "near")}
        tmp = tmp_path_factory.mktemp("ratelimited")
        # One route per far-away value, each with its own endpoint at the "far" fake.
        far_providers = "".join(
            f'  far{i}: {{kind: openai, base_url: "{fakes["far"].base_url}"}}\n'
            for i in range(len(FAR_AWAY))
        )
        pairs = "".join(
            f"  pair{i}: {{policy: first, endpoints: [{{provider: far{i}, model: m}},"
            " {provider: near, model: m}]}\n"
            for i in range(len(FAR_AWAY))
        )
        config = CONFIG.format(
            lone=fakes["lone"].base_url,
            near=fakes["near"].base_url,
            far_providers=far_providers.rstrip(),
            pairs=pairs.rstrip(),
        )
        (tmp / "routes.yaml").write_text(config)
        router = stack.enter_context(RouterProcess(tmp / "routes.yaml", tmp))
        rig = Rig(router, fakes)
        stack.callback(rig.sdk.close)
        yield rig


def test_a_short_retry_after_never_locks_a_one_endpoint_route(rig: Rig) -> None:
    lone = rig.fakes["lone"]
    lone.behaviour = status(429, {"Retry-After": "0.2"})
    for _ in range(4):  # it used to take 60 s, then minutes, and end in a 502
        r, took = rig.chat("lone")
        assert r.status_code == 429, r.text
        assert took < 3.0  # three attempts, 0.2 s apart
        assert r.headers["Retry-After"] == "1"  # whole seconds, rounded up
        assert int(r.headers["retry-after-ms"]) <= 200
        err = r.json()["error"]
        assert (err["type"], err["code"]) == ("rate_limit_error", "upstream_rate_limited")
        assert [a["reason"] for a in err["attempts"]] == ["http_429"] * 3
    with pytest.raises(openai.RateLimitError) as caught:
        rig.sdk.chat.completions.create(model="lone", messages=MESSAGES)  # type: ignore[arg-type]
    assert caught.value.code == "upstream_rate_limited"

    lone.behaviour = ok_json  # the host is free again: served at once, nothing escalated
    assert poll(lambda: rig.chat("lone")[0].status_code == 200, timeout=3)
    r, took = rig.chat("lone")
    assert r.status_code == 200 and took < 1.0
    view = rig.router.health()["routes"]["lone"]["endpoints"][0]
    assert view["state"] == "healthy"


def test_the_openai_sdk_retries_on_the_routers_retry_after(rig: Rig) -> None:
    """Three 429s upstream (one router answer of 429), then the host is free: the SDK's
    own retry, after the router's Retry-After, gets the answer."""
    lone = rig.fakes["lone"]
    lone.behaviour = _after(3, status(429, {"Retry-After": "0.3"}), ok_json, len(lone.received))
    sdk = openai.OpenAI(base_url=rig.router.base_url, api_key="x", max_retries=2)
    try:
        raw = sdk.chat.completions.with_raw_response.create(model="lone", messages=MESSAGES)  # type: ignore[arg-type]
        assert raw.parse().choices[0].message.content == "lone"
        assert raw.retries_taken == 1
    finally:
        sdk.close()


def _after(n: int, first: Behaviour, then: Behaviour, start: int) -> Behaviour:
    """``first`` for the next ``n`` requests the fake receives, ``then`` after."""

    async def behaviour(
        fake: FakeUpstream, request: web.Request, body: dict[str, Any]
    ) -> web.StreamResponse:
        step = first if len(fake.received) - start <= n else then
        return await step(fake, request, body)

    return behaviour


FAR_AWAY = [
    "1e400",
    "2.6e11",
    "-3",
    "nan",
    "Fri, 31 Dec 9999 23:59:59 GMT",
]


@pytest.mark.parametrize("value", FAR_AWAY)
def test_a_retry_after_no_clock_holds_is_clamped_to_an_hour(rig: Rig, value: str) -> None:
    far = rig.fakes["far"]
    far.behaviour = status(429, {"Retry-After": value})
    route = f"pair{FAR_AWAY.index(value)}"
    before = len(far.received)
    r, _ = rig.chat(route)
    assert r.status_code == 200 and r.headers["x-router-endpoint"] == "near"
    assert len(far.received) == before + 1
    for _ in range(2):  # and after a reload, which keeps the endpoint's state
        h = httpx.get(f"{rig.router.url}/health", timeout=5)
        assert h.status_code == 200, h.text  # was a 500 for the whole service
        view = h.json()["routes"][route]["endpoints"][0]
        if view["cooldown_until"] is not None:
            until = datetime.fromisoformat(view["cooldown_until"])
            assert (until - datetime.now(UTC)).total_seconds() <= 3600 + 5
        assert rig.router.proc is not None
        rig.router.proc.send_signal(signal.SIGHUP)
        assert poll(lambda: httpx.get(f"{rig.router.url}/health/live").status_code == 200)
    far.behaviour = ok_json
