"""Per-request routing overrides against the real service, with the official SDK.

OpenRouter's ``provider`` object (``order``, ``only``, ``ignore``, ``allow_fallbacks``,
``sort``, ``max_price``) and the ``x-router-policy`` header. Routes ``r`` and ``s`` both
have three endpoints, so that each override picks a different one than the route's own
``priority`` policy would:

- ``slow``: listed first (priority's choice), dearest; on ``s`` also the slowest first
  token and the slowest tokens;
- ``cheap``: the cheapest; on ``s`` middling speed;
- ``quick``: middling price; on ``s`` the fastest in every respect.

``r``'s upstreams answer at once; ``s``'s are paced and only ever streamed to, so its live
stats come from a warm-up alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from aiohttp import web

from tests.support import (
    FakeUpstream,
    RouterProcess,
    chat_body,
    chunk,
    open_stream,
    routes_yaml,
    status,
)

MESSAGES: Any = [{"role": "user", "content": "hi"}]
TEXT = "one two three four five"


def paced(delay: float, gap: float) -> Callable[..., Any]:
    """A streaming upstream: ``delay`` before the first token, ``gap`` between tokens."""

    async def behaviour(
        fake: FakeUpstream, request: web.Request, body: dict[str, Any]
    ) -> web.StreamResponse:
        await asyncio.sleep(delay)
        if not body.get("stream"):
            await asyncio.sleep(gap * len(fake.text.split()))
            return web.json_response(chat_body(fake.text, model=body.get("model", "x")))
        resp = await open_stream(request)
        for i, word in enumerate(fake.text.split(" ")):
            if i:
                await asyncio.sleep(gap)
            await resp.write(chunk(word + " "))
        await resp.write(chunk(finish="stop"))
        if (body.get("stream_options") or {}).get("include_usage"):
            await resp.write(
                chunk(usage={"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10})
            )
        await resp.write(b"data: [DONE]\n\n")
        return resp

    return behaviour


class Env:
    def __init__(self, router: RouterProcess, fakes: dict[str, FakeUpstream]) -> None:
        self.router = router
        self.fakes = fakes
        self.warm_rounds = 0  # of streamed answers from each of route s's endpoints

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=self.router.base_url, api_key="unused", max_retries=0, timeout=20
        )

    def loads(self, route: str) -> dict[str, dict[str, Any]]:
        """The live estimates the route's policy ranks by, from the model page's data."""
        resp = httpx.get(f"{self.router.url}/admin/stats", params={"route": route}, timeout=10)
        assert resp.status_code == 200, resp.text
        return {e["id"]: e["loads"] for e in resp.json()["now"]}

    def served_by(
        self,
        model: str = "r",
        *,
        provider: dict[str, Any] | None = None,
        policy: str | None = None,
        stream: bool = False,
    ) -> str:
        headers = {"x-router-policy": policy} if policy else {}
        extra = {"provider": provider} if provider is not None else None
        with self.client() as client:
            if stream:
                with client.chat.completions.with_streaming_response.create(
                    model=model,
                    messages=MESSAGES,
                    stream=True,
                    extra_body=extra,
                    extra_headers=headers,
                ) as resp:
                    for _ in resp.iter_lines():
                        pass
                    return resp.headers["x-router-endpoint"]
            raw = client.chat.completions.with_raw_response.create(
                model=model, messages=MESSAGES, extra_body=extra, extra_headers=headers
            )
            raw.parse()
            return raw.headers["x-router-endpoint"]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp: Path = tmp_path_factory.mktemp("routing")
    with (
        # route r: instant upstreams (its tests need no live stats)
        FakeUpstream(text=TEXT) as slow,
        FakeUpstream(text=TEXT) as cheap,
        FakeUpstream(text=TEXT) as quick,
        # route s: paced upstreams, wide apart so that a scheduling hiccup cannot swap them
        FakeUpstream(text=TEXT, behaviour=paced(0.4, 0.05)) as paced_slow,
        FakeUpstream(text=TEXT, behaviour=paced(0.15, 0.03)) as paced_cheap,
        FakeUpstream(text=TEXT, behaviour=paced(0.0, 0.002)) as paced_quick,
        FakeUpstream(behaviour=status(500)) as broken,
        FakeUpstream(text="from the fallback route") as backup,
    ):
        fakes = {
            "slow": slow, "cheap": cheap, "quick": quick,
            "paced-slow": paced_slow, "paced-cheap": paced_cheap, "paced-quick": paced_quick,
            "broken": broken, "backup": backup,
        }  # fmt: skip
        providers = "".join(
            f"  {name}: {{kind: openai, base_url: '{fake.base_url}'}}\n"
            for name, fake in fakes.items()
        )

        def three(prefix: str) -> str:
            return (
                "    endpoints:\n"
                f"      - {{id: slow, provider: {prefix}slow, model: m-slow,"
                " price: {input: 3.0, output: 15.0}}\n"
                f"      - {{id: cheap, provider: {prefix}cheap, model: m-cheap,"
                " price: {input: 0.5, output: 2.0}}\n"
                f"      - {{id: quick, provider: {prefix}quick, model: m-quick,"
                " price: {input: 1.0, output: 5.0}}\n"
            )

        routes = (
            f"  r:\n{three('')}"
            f"  s:\n{three('paced-')}"  # only streamed to: its live stats are the warm-up's
            "  solo:\n"
            "    fallbacks: [spare]\n"
            "    endpoints: [{provider: broken, model: m}]\n"
            "  pair:\n"
            "    fallbacks: [spare]\n"
            "    endpoints: [{provider: broken, model: m}, {provider: quick, model: m-quick}]\n"
            "  spare:\n"
            "    endpoints: [{provider: backup, model: m-backup}]\n"
        )
        extra = (
            "policies:\n"
            "  thrifty: {strategy: cheapest}\n"
            "  speedy: {strategy: lowest_ttft}\n"
            "defaults:\n"
            "  retry: {attempts: 2, backoff_s: 0.01}\n"
            "  breaker: {consecutive_failures: 1000}\n"
        )
        with RouterProcess(routes_yaml(routes, providers, extra=extra), tmp) as router:
            yield Env(router, fakes)


# Route s's endpoints from the best live stats to the worst.
PACED = ("quick", "cheap", "slow")


def in_order(loads: dict[str, dict[str, Any]]) -> bool:
    """Do the router's live estimates put route s's endpoints in ``PACED`` order?"""
    q, c, s = (loads[name] for name in PACED)
    return (
        q["ttft_ms"] < c["ttft_ms"] < s["ttft_ms"]
        and q["latency_ms"] < c["latency_ms"] < s["latency_ms"]
        and q["tokens_per_s"] > c["tokens_per_s"] > s["tokens_per_s"]
    )


@pytest.fixture
def warmed(env: Env) -> Env:
    """Route s with live stats that tell its endpoints apart, as the router reports them.

    Streamed answers from each endpoint until they do: two rounds at first, one more while
    a stalled test machine made a fast answer look slow (TTFT is a peak EWMA: one late
    first token raises it at once). Checked before each test, as the tests' own requests
    are samples too. So each test asserts that routing follows the live stats, whatever
    the machine did to them."""
    for _ in range(6):
        if env.warm_rounds >= 2 and in_order(env.loads("s")):
            return env
        for name in PACED[::-1]:
            assert env.served_by("s", provider={"only": [name]}, stream=True) == name
        env.warm_rounds += 1
    pytest.fail(f"live stats never told route s's endpoints apart: {env.loads('s')}")


def count(env: Env, name: str) -> int:
    return len(env.fakes[name].received)


def test_without_overrides_the_route_policy_serves(env: Env) -> None:
    assert env.served_by() == "slow"


def test_order_puts_endpoints_first(env: Env) -> None:
    assert env.served_by(provider={"order": ["quick", "slow"]}) == "quick"
    assert env.served_by(provider={"order": ["cheap"]}) == "cheap"


def test_only_restricts_to_the_named_endpoints(env: Env) -> None:
    for _ in range(3):
        assert env.served_by(provider={"only": ["cheap", "quick"]}) == "cheap"
    assert env.served_by(provider={"only": ["quick"]}) == "quick"


def test_ignore_removes_endpoints(env: Env) -> None:
    assert env.served_by(provider={"ignore": ["slow"]}) == "cheap"
    assert env.served_by(provider={"ignore": ["slow", "cheap"]}) == "quick"


def test_the_provider_field_is_not_forwarded(env: Env) -> None:
    before = count(env, "quick")
    env.served_by(provider={"only": ["quick"], "sort": "price", "allow_fallbacks": True})
    [last] = env.fakes["quick"].received[before:]
    assert "provider" not in last.body
    assert last.body["model"] == "m-quick"
    assert last.body["messages"] == MESSAGES


def test_allow_fallbacks_default_walks_on_and_uses_route_fallbacks(env: Env) -> None:
    with env.client() as client:
        raw = client.chat.completions.with_raw_response.create(model="pair", messages=MESSAGES)
        assert raw.headers["x-router-endpoint"] == "quick"
        assert raw.headers["x-router-attempts"] == "2"
        raw = client.chat.completions.with_raw_response.create(model="solo", messages=MESSAGES)
        assert raw.headers["x-router-route"] == "spare"
        assert raw.headers["x-router-endpoint"] == "backup"
        assert raw.parse().choices[0].message.content == "from the fallback route"


@pytest.mark.parametrize("model", ["pair", "solo"])
def test_allow_fallbacks_false_tries_only_the_first_choice(env: Env, model: str) -> None:
    broken, quick, backup = count(env, "broken"), count(env, "quick"), count(env, "backup")
    with env.client() as client, pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(
            model=model, messages=MESSAGES, extra_body={"provider": {"allow_fallbacks": False}}
        )
    assert info.value.status_code == 502
    err = info.value.response.json()["error"]
    assert len(err["attempts"]) == 1
    attempt = err["attempts"][0]
    assert attempt["endpoint"] == "broken"
    assert attempt["status"] == 500
    assert attempt["reason"] == "http_5xx"
    assert count(env, "broken") == broken + 1
    assert count(env, "quick") == quick  # not the next endpoint
    assert count(env, "backup") == backup  # nor the route's fallbacks


def test_sort_by_price(env: Env) -> None:
    assert env.served_by(provider={"sort": "price"}) == "cheap"


@pytest.mark.parametrize("sort", ["latency", "ttft", "throughput"])
def test_sort_by_live_stats(warmed: Env, sort: str) -> None:
    for _ in range(3):
        assert warmed.served_by("s", provider={"sort": sort}, stream=True) == "quick"


def test_sort_with_only(warmed: Env) -> None:
    assert (
        warmed.served_by("s", provider={"sort": "ttft", "only": ["slow", "cheap"]}, stream=True)
        == "cheap"
    )


def test_max_price_filters_by_price(env: Env) -> None:
    assert env.served_by(provider={"max_price": {"completion": 4.0}}) == "cheap"
    assert env.served_by(provider={"max_price": {"prompt": 1.0, "completion": 5.0}}) == "cheap"
    assert env.served_by(provider={"max_price": {"prompt": 1.0}, "ignore": ["cheap"]}) == "quick"


def test_a_filter_leaving_nothing_is_a_404_no_endpoint_matches(env: Env) -> None:
    for provider in (
        {"max_price": {"prompt": 0.1}},
        {"only": ["slow"], "ignore": ["slow"]},
        {"only": []},
    ):
        with env.client() as client, pytest.raises(openai.NotFoundError) as info:
            client.chat.completions.create(
                model="r", messages=MESSAGES, extra_body={"provider": provider}
            )
        assert info.value.response.json()["error"]["code"] == "no_endpoint_matches", provider


@pytest.mark.parametrize(
    ("provider", "named"),
    [
        ({"only": ["nowhere", "slow"]}, ["nowhere"]),
        ({"order": ["ghost-a", "ghost-b"]}, ["ghost-a", "ghost-b"]),
        ({"ignore": ["phantom"]}, ["phantom"]),
        ({"sort": "vibes"}, ["vibes"]),
        ({"colour": "blue"}, ["colour"]),
        ({"allow_fallbacks": "no"}, ["allow_fallbacks"]),
        ({"max_price": {"prompt": -1}}, ["max_price"]),
        ({"order": "slow"}, ["order"]),
    ],
)
def test_bad_provider_values_are_400_naming_them(
    env: Env, provider: dict[str, Any], named: list[str]
) -> None:
    with env.client() as client, pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="r", messages=MESSAGES, extra_body={"provider": provider}
        )
    message = info.value.response.json()["error"]["message"]
    for name in named:
        assert name in message


def test_x_router_policy_picks_a_named_policy(env: Env) -> None:
    assert env.served_by() == "slow"
    assert env.served_by(policy="thrifty") == "cheap"
    assert env.served_by(policy="cheapest") == "cheap"  # a bare strategy name works too
    assert env.served_by() == "slow"  # only for that request


def test_x_router_policy_with_live_stats(warmed: Env) -> None:
    assert warmed.served_by("s", policy="speedy", stream=True) == "quick"
    assert warmed.served_by("s", stream=True) == "slow"  # the route's own policy: priority


def test_unknown_policy_is_a_400(env: Env) -> None:
    with env.client() as client, pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="r", messages=MESSAGES, extra_headers={"x-router-policy": "nope"}
        )
    err = info.value.response.json()["error"]
    assert "nope" in err["message"]
    assert "thrifty" in err["message"]  # the known ones are listed
