"""The ``litellm`` provider kind against a fake Anthropic Messages API on loopback.

Provider-level tests call ``LiteLLMProvider.send`` directly (one event loop per test,
made by ``asyncio.run``; the provider is closed inside it). End-to-end tests run the real
router as a subprocess with a route that mixes a ``kind: litellm`` endpoint (the fake
Anthropic) and a ``kind: openai`` endpoint (``tests.support.FakeUpstream``), and talk to
it with the ``openai`` SDK. Everything is bounded by short timeouts, never by sleeps.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import openai
import pytest
from aiohttp import web
from openai.types.chat import ChatCompletionMessageFunctionToolCall

from providers.base import UpstreamRequest
from providers.errors import IdleTimeout, StreamBroken, UpstreamConnectError, UpstreamHTTPError
from providers.litellm import LiteLLMProvider
from router.apis.chat import ChatInspector, inspect_body
from tests.fakes.anthropic import FakeAnthropic, Reply
from tests.support import ROOT, FakeUpstream, RouterProcess, routes_yaml

T = TypeVar("T")

pytestmark = [
    # litellm 1.106 builds pydantic schemas lazily, at its first request; pydantic warns
    # about the ReadOnly items of litellm's TypedDicts (ChatCompletionReasoningItem).
    pytest.mark.filterwarnings(r"ignore:Item .* is using the `ReadOnly` qualifier:UserWarning"),
]
KEY = "sk-ant-test-0123456789"
MODEL = "anthropic/claude-sonnet-4-6"
TOOLS: Any = [  # Any: the SDK's TypedDicts, the provider's plain dicts
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]
WEATHER = ("get_weather", {"city": "Paris"})


@pytest.fixture
def anthropic() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as fake:
        yield fake


def run(fake: FakeAnthropic, use: Callable[[LiteLLMProvider], Awaitable[T]]) -> T:
    """``use`` a provider pointed at ``fake``, on a fresh loop, closing it afterwards."""

    async def main() -> T:
        provider = LiteLLMProvider(base_url=fake.url, api_key=KEY, headers={"x-team": "router"})
        try:
            return await asyncio.wait_for(use(provider), 20)
        finally:
            await provider.aclose()

    return asyncio.run(main())


def chat(stream: bool = False, read_s: float = 10.0, **extra: Any) -> UpstreamRequest:
    payload = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], **extra}
    if stream:
        payload["stream"] = True
    return UpstreamRequest("chat/completions", payload, stream, "req-1", connect_s=2, read_s=read_s)


async def answer(provider: LiteLLMProvider, request: UpstreamRequest) -> dict[str, Any]:
    body = await (await provider.send(request)).read()
    result: dict[str, Any] = json.loads(body)
    return result


async def events(provider: LiteLLMProvider, request: UpstreamRequest) -> list[bytes]:
    response = await provider.send(request)
    assert response.content_type == "text/event-stream"
    raw = b"".join([c async for c in response.chunks()])
    return [e for e in raw.split(b"\n\n") if e]


def payloads(evts: list[bytes]) -> list[dict[str, Any]]:
    assert evts[-1] == b"data: [DONE]"
    assert all(e.startswith(b"data: ") for e in evts)
    return [json.loads(e[6:]) for e in evts[:-1]]


def streamed_text(chunks: list[dict[str, Any]]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


def streamed_tool_args(chunks: list[dict[str, Any]]) -> tuple[str | None, str]:
    name, args = None, ""
    for c in chunks:
        for choice in c["choices"]:
            for call in choice["delta"].get("tool_calls") or []:
                name = name or call["function"].get("name")
                args += call["function"].get("arguments") or ""
    return name, args


# --- provider level ---------------------------------------------------------------------


def test_text_answer_is_openai_shaped_and_the_request_anthropic_shaped(
    anthropic: FakeAnthropic,
) -> None:
    anthropic.reply = Reply(text="Bonjour from Claude.", cache_read_tokens=5)
    body = run(anthropic, lambda p: answer(p, chat(temperature=0.2, stop=["END"], max_tokens=64)))

    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"] == body["choices"][0]["message"] | {
        "role": "assistant",
        "content": "Bonjour from Claude.",
    }
    assert body["choices"][0]["finish_reason"] == "stop"
    usage, tools_ok, _ = inspect_body(json.dumps(body).encode())  # what the router will read
    assert usage is not None and tools_ok is None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens) == (26, 9, 5)

    [got] = anthropic.received
    assert got.headers["x-api-key"] == KEY
    assert got.headers["anthropic-version"]
    assert got.headers["x-team"] == "router"  # the provider's extra headers
    assert got.body["model"] == "claude-sonnet-4-6"
    assert got.body["messages"] == [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    assert got.body["max_tokens"] == 64
    assert got.body["temperature"] == 0.2
    assert got.body["stop_sequences"] == ["END"]


def test_streamed_answer_ends_with_done_and_usage_only_when_asked(
    anthropic: FakeAnthropic,
) -> None:
    anthropic.reply = Reply(text="one two three", cache_read_tokens=4)

    async def both(p: LiteLLMProvider) -> tuple[list[bytes], list[bytes]]:
        with_usage = await events(p, chat(stream=True, stream_options={"include_usage": True}))
        return with_usage, await events(p, chat(stream=True))

    with_usage, without = run(anthropic, both)

    chunks = payloads(with_usage)
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert streamed_text(chunks) == "one two three"
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "stop"
    usage_chunks = [c for c in chunks if c.get("usage")]
    assert len(usage_chunks) == 1 and usage_chunks[0]["choices"] == []  # OpenAI's shape
    assert usage_chunks[0]["usage"]["prompt_tokens_details"]["cached_tokens"] == 4

    assert streamed_text(payloads(without)) == "one two three"
    assert not any(c.get("usage") for c in payloads(without))
    assert anthropic.received[0].body["stream"] is True

    # The router's own reading of the stream finds the first token, usage and the end.
    inspector = ChatInspector(client_wants_usage=True)
    for e in with_usage:
        inspector.feed(e + b"\n\n")
    assert inspector.first_token and inspector.done
    assert inspector.usage is not None and inspector.usage.completion_tokens == 9


def test_tool_call_round_trip(anthropic: FakeAnthropic) -> None:
    anthropic.reply = Reply(text="", tool=WEATHER)
    body = run(anthropic, lambda p: answer(p, chat(tools=TOOLS, tool_choice="auto")))

    [call] = body["choices"][0]["message"]["tool_calls"]
    assert call["type"] == "function"
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}
    assert body["choices"][0]["finish_reason"] == "tool_calls"
    assert inspect_body(json.dumps(body).encode())[1] is True
    [tool] = anthropic.received[0].body["tools"]
    assert tool["name"] == "get_weather"
    assert tool["input_schema"]["required"] == ["city"]


def test_streamed_tool_call(anthropic: FakeAnthropic) -> None:
    anthropic.reply = Reply(text="Checking.", tool=WEATHER)
    evts = run(anthropic, lambda p: events(p, chat(stream=True, tools=TOOLS)))

    chunks = payloads(evts)
    assert streamed_text(chunks) == "Checking."
    name, args = streamed_tool_args(chunks)
    assert name == "get_weather" and json.loads(args) == {"city": "Paris"}
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "tool_calls"
    inspector = ChatInspector(client_wants_usage=False)
    for e in evts:
        inspector.feed(e + b"\n\n")
    assert inspector.tool_calls_valid() is True


def test_reasoning_options_are_translated_and_reasoning_comes_back(
    anthropic: FakeAnthropic,
) -> None:
    anthropic.reply = Reply(thinking="First, the weather.")
    thinking = {"type": "enabled", "budget_tokens": 1024}
    schema = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}
    response_format = {"type": "json_schema", "json_schema": {"name": "a", "schema": schema}}

    async def calls(p: LiteLLMProvider) -> dict[str, Any]:
        await answer(p, chat(reasoning_effort="low"))
        await answer(p, chat(response_format=response_format))
        return await answer(p, chat(thinking=thinking, max_tokens=2048))

    body = run(anthropic, calls)

    effort, fmt, think = (r.body for r in anthropic.received)
    assert effort["output_config"] == {"effort": "low"}  # litellm 1.106's mapping
    assert fmt["output_format"]["schema"]["required"] == ["a"]
    assert think["thinking"] == thinking
    message = body["choices"][0]["message"]
    assert message["reasoning_content"] == "First, the weather."
    assert body["usage"]["completion_tokens_details"]["reasoning_tokens"] > 0


def test_text_completions_are_translated_too(anthropic: FakeAnthropic) -> None:
    def request(stream: bool) -> UpstreamRequest:
        payload = {"model": MODEL, "prompt": "Say hi", "max_tokens": 20, "stream": stream}
        if stream:
            payload["stream_options"] = {"include_usage": True}
        return UpstreamRequest("completions", payload, stream, "req-1", connect_s=2, read_s=10)

    async def both(p: LiteLLMProvider) -> tuple[dict[str, Any], list[bytes]]:
        return await answer(p, request(False)), await events(p, request(True))

    body, evts = run(anthropic, both)
    assert body["object"] == "text_completion"
    assert body["choices"][0]["text"] == Reply().text
    chunks = payloads(evts)
    assert "".join(c["choices"][0]["text"] or "" for c in chunks if c["choices"]) == Reply().text
    assert [c["usage"]["completion_tokens"] for c in chunks if c.get("usage")] == [9]
    assert anthropic.received[0].body["messages"][0]["content"][0]["text"] == "Say hi"


def test_embeddings_go_through_aembedding() -> None:
    async def vectors(fake: FakeUpstream, request: web.Request, body: Any) -> web.StreamResponse:
        data = [{"object": "embedding", "index": 0, "embedding": [0.25, -0.5]}]
        usage = {"prompt_tokens": 2, "total_tokens": 2}
        return web.json_response(
            {"object": "list", "data": data, "model": body["model"], "usage": usage}
        )

    async def embed(upstream: FakeUpstream) -> dict[str, Any]:
        provider = LiteLLMProvider(base_url=upstream.base_url, api_key=KEY)
        try:
            payload = {"model": "openai/text-embedding-3-small", "input": "hello"}
            request = UpstreamRequest("embeddings", payload, False, "req-1", connect_s=2, read_s=10)
            return await answer(provider, request)
        finally:
            await provider.aclose()

    with FakeUpstream(behaviour=vectors) as upstream:
        body = asyncio.run(embed(upstream))
        [got] = upstream.received
    assert body["data"][0]["embedding"] == [0.25, -0.5]
    assert body["usage"]["prompt_tokens"] == 2
    assert got.path == "/v1/embeddings"
    assert got.body == {"model": "text-embedding-3-small", "input": "hello"}
    assert got.headers["Authorization"] == f"Bearer {KEY}"


def test_client_cannot_steer_litellm_through_the_body(anthropic: FakeAnthropic) -> None:
    body = run(
        anthropic,
        lambda p: answer(
            p,
            chat(
                api_base="http://203.0.113.9",
                api_key="sk-client",
                mock_response="mocked",
                num_retries=5,
                seed=7,
            ),
        ),
    )
    assert body["choices"][0]["message"]["content"] == Reply().text  # not the mock
    [got] = anthropic.received  # our fake got it, with our key, once
    assert got.headers["x-api-key"] == KEY
    assert "seed" not in got.body  # unsupported by Anthropic: dropped, not refused


def test_429_keeps_retry_after(anthropic: FakeAnthropic) -> None:
    anthropic.fail(429, retry_after="7", times=2)

    async def both(p: LiteLLMProvider) -> list[UpstreamHTTPError]:
        errors = []
        for request in (chat(), chat(stream=True)):
            with pytest.raises(UpstreamHTTPError) as info:
                await p.send(request)
            errors.append(info.value)
        return errors

    for err in run(anthropic, both):
        assert err.status == 429 and err.reason == "http_429"
        assert err.retry_after_s == 7.0
        assert json.loads(err.body)["error"]["type"] == "rate_limit_error"
    assert len(anthropic.received) == 2  # litellm did not retry on its own


@pytest.mark.parametrize(("upstream", "expected"), [(529, 503), (500, 500), (503, 503)])
def test_overloaded_and_server_errors_are_retryable_5xx(
    anthropic: FakeAnthropic, upstream: int, expected: int
) -> None:
    anthropic.fail(upstream)

    async def send(p: LiteLLMProvider) -> UpstreamHTTPError:
        with pytest.raises(UpstreamHTTPError) as info:
            await p.send(chat())
        return info.value

    err = run(anthropic, send)
    assert err.status == expected and err.reason == "http_5xx"
    assert len(anthropic.received) == 1


@pytest.mark.parametrize(("upstream", "reason"), [(400, "http_400"), (401, "auth"), (403, "auth")])
def test_client_and_auth_errors_keep_their_status_without_the_key(
    anthropic: FakeAnthropic, upstream: int, reason: str
) -> None:
    anthropic.fail(upstream)

    async def send(p: LiteLLMProvider) -> UpstreamHTTPError:
        with pytest.raises(UpstreamHTTPError) as info:
            await p.send(chat())
        return info.value

    err = run(anthropic, send)
    assert err.status == upstream and err.reason == reason
    error = json.loads(err.body)["error"]
    assert set(error) == {"message", "type", "code", "param"}
    assert KEY not in err.body.decode() and KEY not in str(err)


def test_refused_connection_is_a_connect_error() -> None:
    async def send() -> None:
        provider = LiteLLMProvider(base_url="http://127.0.0.1:9", api_key=KEY)
        try:
            for request in (chat(), chat(stream=True)):
                with pytest.raises(UpstreamConnectError):
                    await provider.send(request)
        finally:
            await provider.aclose()

    asyncio.run(send())


@pytest.mark.parametrize("fault", ["error", "drop"])
def test_stream_failing_after_first_token_is_stream_broken(
    anthropic: FakeAnthropic, fault: str
) -> None:
    anthropic.reply = Reply(text="one two three", stream_fault=fault)

    async def consume(p: LiteLLMProvider) -> list[bytes]:
        response = await p.send(chat(stream=True))
        got = []
        with pytest.raises(StreamBroken):
            async for c in response.chunks():
                got.append(c)
        return got

    got = run(anthropic, consume)
    assert got and b"one " in got[0]
    assert not any(b"[DONE]" in c for c in got)


def test_stream_silent_past_read_timeout_is_idle_timeout(anthropic: FakeAnthropic) -> None:
    anthropic.reply = Reply(text="one two three", stall=True)

    async def consume(p: LiteLLMProvider) -> None:
        response = await p.send(chat(stream=True, read_s=0.3))
        with pytest.raises(IdleTimeout):
            async for _ in response.chunks():
                pass

    run(anthropic, consume)


def test_closing_a_stream_early_closes_the_upstream_connection(anthropic: FakeAnthropic) -> None:
    anthropic.reply = Reply(text="one two three", stall=True)

    async def leave(p: LiteLLMProvider) -> bool:
        response = await p.send(chat(stream=True))
        chunks = response.chunks()
        assert b"one " in await anext(chunks)
        # What the router does when its client goes away: close the answer, drop the
        # iterator. The relay's finalizer must reach the upstream socket.
        response.close()
        del chunks, response
        return await asyncio.to_thread(anthropic.disconnected.wait, 5)

    assert run(anthropic, leave)


# --- import cost ------------------------------------------------------------------------

NO_LITELLM = """
import sys
from router.config import load
from router.runtime import build_runtime
from router.http.api import Api  # noqa: F401 - the import is what is tested
runtime, _ = build_runtime(load(sys.argv[1]))
assert runtime.routes, "config did not load"
print("litellm" in sys.modules)
"""


def test_a_config_without_litellm_endpoints_never_imports_litellm(tmp_path: Path) -> None:
    config = tmp_path / "routes.yaml"
    config.write_text(
        routes_yaml(
            "  demo:\n    endpoints:\n      - {provider: sim, model: demo-1}\n"
            "  claude:\n    endpoints:\n      - {provider: anthropic, model: anthropic/claude}\n",
            "  sim: {kind: simulated}\n"
            "  anthropic: {kind: litellm, api_key_env: ROUTER_TEST_UNSET_ANTHROPIC_KEY}\n",
        )
    )
    out = subprocess.run(
        [sys.executable, "-c", NO_LITELLM, str(config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    # The litellm endpoint has no key, so it is disabled and its provider never made: the
    # config read its settings (providers.litellm) without importing litellm itself.
    assert out.stdout.split() == ["False"], out.stderr


NO_INTERNET = """
import asyncio, socket, sys
outside = []

def audit(event, args):
    if event == "socket.connect":
        address = args[1]
        if isinstance(address, tuple) and address[0] not in ("127.0.0.1", "::1"):
            outside.append(address)
    elif event == "socket.getaddrinfo" and args[0] not in ("127.0.0.1", "localhost", "::1"):
        outside.append(args[0])

sys.addaudithook(audit)
from providers.base import UpstreamRequest
from providers.litellm import LiteLLMProvider

async def main():
    p = LiteLLMProvider(base_url=sys.argv[1], api_key="k")
    req = UpstreamRequest("chat/completions", {"model": "anthropic/claude-sonnet-4-6",
        "messages": [{"role": "user", "content": "hi"}]}, False, "r")
    await (await p.send(req)).read()
    await p.aclose()

asyncio.run(main())
print(outside)
"""


def test_litellm_fetches_nothing_from_the_internet(
    anthropic: FakeAnthropic, tmp_path: Path
) -> None:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}  # no LITELLM_* flags from outside
    out = subprocess.run(
        [sys.executable, "-c", NO_INTERNET, anthropic.url],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env=env,
    )
    assert out.stdout.strip() == "[]", out.stderr
    assert len(anthropic.received) == 1


# --- end to end, through the real router -----------------------------------------------


def mixed_route(anthropic: FakeAnthropic, openai_fake: FakeUpstream) -> str:
    """One route, Anthropic (through litellm) first, the OpenAI-compatible fake second."""
    return routes_yaml(
        "  claude-sonnet-4-6:\n"
        "    policy: first\n"
        "    retry: {attempts: 2, backoff_s: 0.01, backoff_max_s: 0.05}\n"
        "    endpoints:\n"
        "      - {id: anthropic, provider: anthropic, model: anthropic/claude-sonnet-4-6}\n"
        "      - {id: compat, provider: compat, model: claude-sonnet-4-6-openai}\n",
        f"  anthropic: {{kind: litellm, base_url: '{anthropic.url}',"
        " api_key_env: E2E_ANTHROPIC_KEY}\n"
        f"  compat: {{kind: openai, base_url: '{openai_fake.base_url}'}}\n",
        extra="policies:\n  first: {strategy: priority}\n",
    )


@pytest.fixture
def router(tmp_path: Path, anthropic: FakeAnthropic, fake: FakeUpstream) -> Iterator[RouterProcess]:
    config = mixed_route(anthropic, fake)
    with RouterProcess(config, tmp_path, env={"E2E_ANTHROPIC_KEY": KEY}) as proc:
        yield proc
    assert KEY not in proc.log_text()


_CLIENTS: list[openai.OpenAI] = []


def client(router: RouterProcess) -> openai.OpenAI:
    sdk = openai.OpenAI(base_url=router.base_url, api_key="unused", max_retries=0, timeout=20)
    _CLIENTS.append(sdk)
    return sdk


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _CLIENTS:
        _CLIENTS.pop().close()


def test_e2e_openai_sdk_gets_anthropic_answers_through_the_router(
    router: RouterProcess, anthropic: FakeAnthropic, fake: FakeUpstream
) -> None:
    anthropic.reply = Reply(text="Hello via litellm.", tool=WEATHER, cache_read_tokens=3)
    sdk = client(router)
    messages: Any = [{"role": "user", "content": "weather in Paris?"}]

    raw = sdk.chat.completions.with_raw_response.create(
        model="claude-sonnet-4-6",
        messages=messages,
        tools=TOOLS,
    )
    assert raw.headers["x-router-endpoint"] == "anthropic"
    answer_ = raw.parse()
    message = answer_.choices[0].message
    assert message.content == "Hello via litellm."
    assert message.tool_calls
    call = message.tool_calls[0]
    assert isinstance(call, ChatCompletionMessageFunctionToolCall)
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    assert answer_.usage is not None and answer_.usage.completion_tokens == 9
    assert answer_.usage.prompt_tokens_details is not None
    assert answer_.usage.prompt_tokens_details.cached_tokens == 3

    stream = sdk.chat.completions.create(
        model="claude-sonnet-4-6",
        messages=messages,
        tools=TOOLS,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello via litellm."
    args = "".join(
        call.function.arguments or ""
        for c in chunks
        if c.choices
        for call in c.choices[0].delta.tool_calls or []
        if call.function
    )
    assert json.loads(args) == {"city": "Paris"}
    usage = [c.usage for c in chunks if c.usage]
    assert len(usage) == 1 and usage[0].completion_tokens == 9

    for got in anthropic.received:
        assert got.headers["x-api-key"] == KEY
        assert got.body["messages"] and got.body["max_tokens"] > 0
    assert not fake.received  # the OpenAI-compatible endpoint was never needed


def test_e2e_anthropic_overloaded_or_5xx_fails_over_to_the_openai_compatible_endpoint(
    router: RouterProcess, anthropic: FakeAnthropic, fake: FakeUpstream
) -> None:
    sdk = client(router)
    messages: Any = [{"role": "user", "content": "hi"}]

    for status in (529, 500):
        anthropic.fail(status)
        raw = sdk.chat.completions.with_raw_response.create(
            model="claude-sonnet-4-6", messages=messages
        )
        assert raw.headers["x-router-endpoint"] == "compat", status
        assert raw.headers["x-router-attempts"] == "2"
        assert raw.parse().choices[0].message.content == fake.text

        anthropic.fail(status)
        stream = sdk.chat.completions.with_raw_response.create(
            model="claude-sonnet-4-6", messages=messages, stream=True
        )
        assert stream.headers["x-router-endpoint"] == "compat", status
        assert stream.headers["x-router-attempts"] == "2"
        text = "".join(c.choices[0].delta.content or "" for c in stream.parse() if c.choices)
        assert text.strip() == fake.text
    assert len(anthropic.received) == 4 and len(fake.received) == 4

    # Four failures in a row are under the breaker's limit: Anthropic still serves first.
    raw = sdk.chat.completions.with_raw_response.create(
        model="claude-sonnet-4-6", messages=messages
    )
    assert raw.headers["x-router-endpoint"] == "anthropic"
    assert raw.parse().choices[0].message.content == Reply().text


def test_e2e_anthropic_429_fails_over_and_its_retry_after_cools_the_endpoint(
    router: RouterProcess, anthropic: FakeAnthropic, fake: FakeUpstream
) -> None:
    sdk = client(router)
    messages: Any = [{"role": "user", "content": "hi"}]

    anthropic.fail(429, retry_after="120")
    raw = sdk.chat.completions.with_raw_response.create(
        model="claude-sonnet-4-6", messages=messages
    )
    assert raw.headers["x-router-endpoint"] == "compat"
    assert raw.headers["x-router-attempts"] == "2"
    assert raw.parse().choices[0].message.content == fake.text

    [ep] = [
        e
        for e in router.health()["routes"]["claude-sonnet-4-6"]["endpoints"]
        if e["id"] == "anthropic"
    ]
    assert (ep["state"], ep["reason"]) == ("cooldown", "rate_limited")

    # While Anthropic's Retry-After runs, requests go straight to the other endpoint.
    stream = sdk.chat.completions.with_raw_response.create(
        model="claude-sonnet-4-6", messages=messages, stream=True
    )
    assert stream.headers["x-router-endpoint"] == "compat"
    assert stream.headers["x-router-attempts"] == "1"
    assert "".join(c.choices[0].delta.content or "" for c in stream.parse() if c.choices)
    assert len(anthropic.received) == 1
