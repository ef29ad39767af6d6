"""``POST /v1/messages`` through the real router, read by the ``anthropic`` SDK.

One router serves every test; each test has its own route. Simulated endpoints answer
in-process (Messages natively, or chat only to make the router translate); a fake
Anthropic host on loopback records what it was sent and fails on demand for the drills.
Waits are bounded polls, never sleeps.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.fakes.anthropic import FakeAnthropic
from tests.support import RouterProcess, poll, routes_yaml

CLIENT_KEY = "sk-client-messages"
UPSTREAM_KEY = "sk-upstream-anthropic"
WEATHER: Any = {
    "name": "weather",
    "description": "The weather in a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1}},
        "required": ["city", "days"],
    },
}
HI: Any = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def fakes() -> Iterator[dict[str, FakeAnthropic]]:
    started = {name: FakeAnthropic().start() for name in ("a", "b", "slow", "fast")}
    yield started
    for fake in started.values():
        fake.stop()


@pytest.fixture(autouse=True)
def fresh(fakes: dict[str, FakeAnthropic]) -> None:
    for fake in fakes.values():
        fake.reset()


@pytest.fixture(scope="module")
def router(
    tmp_path_factory: pytest.TempPathFactory, fakes: dict[str, FakeAnthropic]
) -> Iterator[RouterProcess]:
    host = {name: f"{fake.url}/v1" for name, fake in fakes.items()}
    providers = f"""
  sim: {{kind: simulated, ttft_ms: 1, tokens_per_s: 5000}}
  sim-chat: {{kind: simulated, ttft_ms: 1, tokens_per_s: 5000, apis: [chat]}}
  a: {{kind: anthropic, base_url: "{host["a"]}", api_key_env: FAKE_KEY}}
  b: {{kind: anthropic, base_url: "{host["b"]}", api_key_env: FAKE_KEY}}
  slow: {{kind: anthropic, base_url: "{host["slow"]}", api_key_env: FAKE_KEY}}
  fast: {{kind: anthropic, base_url: "{host["fast"]}", api_key_env: FAKE_KEY}}
"""
    routes = """
  claude:
    endpoints: [{provider: sim, model: claude-sim}]
  viachat:
    endpoints: [{provider: sim-chat, model: chat-sim, price: {input: 1.0, output: 2.0}}]
  drill:
    retry: {backoff_s: 0}
    breaker: {consecutive_failures: 1000}
    endpoints: [{provider: a, model: claude-a}, {provider: b, model: claude-b}]
  hedged:
    policy: hedge200
    endpoints: [{provider: slow, model: claude-slow}, {provider: fast, model: claude-fast}]
"""
    extra = "policies:\n  hedge200: {strategy: priority, hedge: {after_ms: 200}}\n"
    tmp = Path(tmp_path_factory.mktemp("messages"))
    (tmp / "routes.yaml").write_text(routes_yaml(routes, providers, extra=extra))
    env = {"ROUTER_API_KEYS": f"team:{CLIENT_KEY}", "FAKE_KEY": UPSTREAM_KEY}
    with RouterProcess(tmp / "routes.yaml", tmp, env=env) as proc:
        yield proc


@pytest.fixture(scope="module")
def client(router: RouterProcess) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=router.url, api_key=CLIENT_KEY, max_retries=0, timeout=20)


def post(router: RouterProcess, body: Any, **headers: str) -> httpx.Response:
    hdrs = {"x-api-key": CLIENT_KEY, "anthropic-version": "2023-06-01", **headers}
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(f"{router.url}/v1/messages", content=content, headers=hdrs, timeout=20)


def sse_events(text: str) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for block in text.split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "event" in lines:
            out.append((lines["event"], json.loads(lines["data"])))
    return out


def test_messages_create_native_stream_and_not(client: anthropic.Anthropic) -> None:
    raw = client.messages.with_raw_response.create(model="claude", max_tokens=64, messages=HI)
    message = raw.parse()
    assert message.type == "message" and message.stop_reason == "end_turn"
    assert message.content[0].type == "text" and message.content[0].text
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0
    assert raw.headers["x-router-endpoint"] == "sim" and raw.headers["x-router-route"] == "claude"
    assert "x-router-dropped" not in raw.headers
    with client.messages.stream(model="claude", max_tokens=64, messages=HI) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text and final.content[0].type == "text" and final.content[0].text == text
    assert final.usage.output_tokens > 0


def test_tools_and_signed_thinking_survive_a_tool_loop(client: anthropic.Anthropic) -> None:
    thinking: Any = {"type": "enabled", "budget_tokens": 2048}
    first = client.messages.create(
        model="claude",
        max_tokens=4096,
        messages=HI,
        tools=[WEATHER],
        tool_choice={"type": "any"},
        thinking=thinking,
    )
    kinds = [block.type for block in first.content]
    assert kinds[0] == "thinking" and "tool_use" in kinds
    assert first.content[0].type == "thinking" and first.content[0].signature
    call = next(b for b in first.content if b.type == "tool_use")
    assert isinstance(call.input, dict) and call.input["days"] >= 1
    # The signed thinking goes back as it came: the simulated host refuses an altered one.
    loop: Any = [
        *HI,
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "sunny"}],
        },
    ]
    with client.messages.stream(
        model="claude", max_tokens=4096, messages=loop, tools=[WEATHER], thinking=thinking
    ) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "end_turn"
    assert any(b.type == "text" and b.text for b in final.content)
    altered = [dict(loop[1]["content"][0], thinking="altered"), *loop[1]["content"][1:]]
    with pytest.raises(anthropic.BadRequestError):
        client.messages.create(
            model="claude",
            max_tokens=4096,
            messages=[loop[0], {"role": "assistant", "content": altered}, loop[2]],
            tools=[WEATHER],
            thinking=thinking,
        )


def test_a_chat_only_host_serves_messages_translated(
    client: anthropic.Anthropic, router: RouterProcess
) -> None:
    raw = client.messages.with_raw_response.create(
        model="viachat", max_tokens=64, messages=HI, extra_body={"top_k": 5}
    )
    assert raw.headers["x-router-dropped"] == "top_k"
    message = raw.parse()
    assert message.content[0].type == "text" and message.content[0].text
    assert message.usage.output_tokens > 0
    with client.messages.stream(
        model="viachat",
        max_tokens=64,
        messages=HI,
        tools=[WEATHER],
        tool_choice={"type": "tool", "name": "weather"},
    ) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    call = next(b for b in final.content if b.type == "tool_use")
    assert call.name == "weather" and isinstance(call.input["city"], str)
    assert final.usage.input_tokens > 0 and final.usage.output_tokens > 0

    def logged() -> list[dict[str, Any]]:
        return [e for e in router.logs() if e.get("event") == "request" and e["route"] == "viachat"]

    assert poll(lambda: len(logged()) == 2)  # written once the answer has gone
    assert all(e["operation"] == "messages" and e["status"] == 200 for e in logged())
    assert logged()[-1]["cost"] > 0


def test_a_messages_only_host_serves_chat_translated(router: RouterProcess) -> None:
    chat = openai.OpenAI(base_url=router.base_url, api_key=CLIENT_KEY, max_retries=0)
    answer = chat.chat.completions.create(model="drill", messages=HI, seed=1)
    assert answer.choices[0].message.content == "Hello from the fake Anthropic."
    assert answer.usage is not None and answer.usage.prompt_tokens == 21
    parts = []
    for chunk in chat.chat.completions.create(model="drill", messages=HI, stream=True):
        if chunk.choices and chunk.choices[0].delta.content:
            parts.append(chunk.choices[0].delta.content)
    assert "".join(parts) == "Hello from the fake Anthropic."


def test_keys_and_anthropic_headers_go_where_they_belong(
    router: RouterProcess, fakes: dict[str, FakeAnthropic]
) -> None:
    body = {"model": "drill", "max_tokens": 16, "messages": HI}
    beta = "interleaved-thinking-2025-05-14"
    resp = post(router, body, **{"anthropic-beta": beta, "anthropic-version": "2023-06-01"})
    assert resp.status_code == 200
    sent = fakes["a"].received[-1].headers
    assert sent["x-api-key"] == UPSTREAM_KEY and CLIENT_KEY not in json.dumps(sent)
    assert (sent["anthropic-beta"], sent["anthropic-version"]) == (beta, "2023-06-01")
    # A Bearer key works too, and a host always gets a version.
    bearer = httpx.post(
        f"{router.url}/v1/messages",
        json=body,
        headers={"Authorization": f"Bearer {CLIENT_KEY}"},
        timeout=20,
    )
    assert bearer.status_code == 200
    assert fakes["a"].received[-1].headers["anthropic-version"] == "2023-06-01"


@pytest.mark.parametrize(
    ("body", "status", "kind"),
    [
        (b"{not json", 400, "invalid_request_error"),
        (b"[]", 400, "invalid_request_error"),
        ({"model": "claude", "messages": HI}, 400, "invalid_request_error"),
        ({"model": "claude", "max_tokens": 5, "messages": [{"role": "user", "content": 5}]},
         400, "invalid_request_error"),
        ({"model": "gpt-9", "max_tokens": 5, "messages": HI}, 404, "not_found_error"),
    ],
    ids=["invalid-json", "not-an-object", "no-max-tokens", "bad-content", "unknown-model"],
)  # fmt: skip
def test_bad_input_gets_an_anthropic_shaped_error(
    router: RouterProcess, body: Any, status: int, kind: str
) -> None:
    resp = post(router, body)
    assert resp.status_code == status
    data = resp.json()
    assert data["type"] == "error" and data["error"]["type"] == kind and data["error"]["message"]


def test_a_missing_or_wrong_key_is_an_anthropic_401(router: RouterProcess) -> None:
    body = {"model": "claude", "max_tokens": 5, "messages": HI}
    for headers in ({}, {"x-api-key": "sk-wrong"}):
        resp = httpx.post(f"{router.url}/v1/messages", json=body, headers=headers, timeout=20)
        assert resp.status_code == 401
        assert resp.json()["error"]["type"] == "authentication_error"
    with pytest.raises(anthropic.AuthenticationError):
        anthropic.Anthropic(base_url=router.url, api_key="sk-wrong", max_retries=0).messages.create(
            model="claude", max_tokens=5, messages=HI
        )


def test_an_api_no_endpoint_can_serve_is_a_400(router: RouterProcess) -> None:
    resp = httpx.post(
        f"{router.base_url}/embeddings",
        json={"model": "drill", "input": "x"},
        headers={"Authorization": f"Bearer {CLIENT_KEY}"},
        timeout=20,
    )
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "unsupported_api"


def test_failover_before_the_first_byte(
    client: anthropic.Anthropic, fakes: dict[str, FakeAnthropic]
) -> None:
    fakes["a"].fail(503)
    raw = client.messages.with_raw_response.create(model="drill", max_tokens=16, messages=HI)
    assert raw.headers["x-router-endpoint"] == "b" and raw.headers["x-router-attempts"] == "2"
    fakes["a"].fail(500)
    with client.messages.stream(model="drill", max_tokens=16, messages=HI) as stream:
        assert "".join(stream.text_stream) == "Hello from the fake Anthropic."


def test_every_endpoint_failing_is_an_anthropic_502(
    router: RouterProcess, fakes: dict[str, FakeAnthropic]
) -> None:
    fakes["a"].fail(500, times=3)
    fakes["b"].fail(500, times=3)
    resp = post(router, {"model": "drill", "max_tokens": 16, "messages": HI})
    assert resp.status_code == 502
    error = resp.json()["error"]
    assert error["type"] == "api_error" and {a["endpoint"] for a in error["attempts"]} == {"a", "b"}


def test_an_upstream_400_comes_back_as_it_came(
    router: RouterProcess, fakes: dict[str, FakeAnthropic]
) -> None:
    fakes["a"].fail(400)
    resp = post(router, {"model": "drill", "max_tokens": 16, "messages": HI})
    assert resp.status_code == 400
    assert resp.json()["error"] == {
        "type": "invalid_request_error",
        "message": "fake invalid_request_error (400)",
    }
    assert not fakes["b"].received  # the request's fault: not retried elsewhere


def test_a_break_after_the_first_byte_ends_with_an_error_event(
    router: RouterProcess, fakes: dict[str, FakeAnthropic]
) -> None:
    fakes["a"].reply.stream_fault = "drop"
    resp = post(router, {"model": "drill", "max_tokens": 16, "messages": HI, "stream": True})
    assert resp.status_code == 200
    seen = sse_events(resp.text)
    names = [name for name, _ in seen]
    assert "content_block_delta" in names and "message_stop" not in names
    assert names[-1] == "error"
    assert seen[-1][1]["type"] == "error" and "stream_broken" in seen[-1][1]["error"]["message"]
    assert not fakes["b"].received  # a stream that started cannot fail over
    client = anthropic.Anthropic(base_url=router.url, api_key=CLIENT_KEY, max_retries=0)
    fakes["a"].reply.stream_fault = "drop"
    with (
        pytest.raises(anthropic.APIStatusError),
        client.messages.stream(model="drill", max_tokens=16, messages=HI) as stream,
    ):
        for _ in stream.text_stream:
            pass


def test_a_client_that_leaves_cancels_its_upstream(
    router: RouterProcess, fakes: dict[str, FakeAnthropic]
) -> None:
    fakes["a"].reply.stall = True
    body = {"model": "drill", "max_tokens": 16, "messages": HI, "stream": True}
    headers = {"x-api-key": CLIENT_KEY}
    try:
        with (
            httpx.Client(timeout=20) as http,
            http.stream("POST", f"{router.url}/v1/messages", json=body, headers=headers) as resp,
        ):
            for line in resp.iter_lines():
                if line.startswith("event: content_block_delta"):
                    break
        assert poll(fakes["a"].disconnected.is_set, timeout=10)
    finally:
        fakes["a"].release()


def test_hedging_takes_the_first_to_answer(
    client: anthropic.Anthropic, fakes: dict[str, FakeAnthropic]
) -> None:
    fakes["slow"].reply.ttft_s = 10
    raw = client.messages.with_raw_response.create(
        model="hedged", max_tokens=16, messages=HI, stream=True
    )
    assert raw.headers["x-router-endpoint"] == "fast" and raw.headers["x-router-attempts"] == "2"
    assert "message_stop" in raw.text()
    assert poll(fakes["slow"].disconnected.is_set, timeout=10)


def test_a_hosts_error_event_mid_stream_ends_the_stream_with_an_error_event(
    router: RouterProcess, fakes: dict[str, FakeAnthropic]
) -> None:
    def logged() -> list[dict[str, Any]]:
        return [e for e in router.logs() if e.get("event") == "request" and e["route"] == "drill"]

    before = len(logged())
    fakes["a"].reply.stream_fault = "error"
    resp = post(router, {"model": "drill", "max_tokens": 16, "messages": HI, "stream": True})
    seen = sse_events(resp.text)
    names = [name for name, _ in seen]
    assert "content_block_delta" in names and "message_stop" not in names
    assert names[-1] == "error" and seen[-1][1]["type"] == "error"
    assert not fakes["b"].received  # a stream that started cannot fail over
    assert poll(lambda: len(logged()) == before + 1)
    assert logged()[-1]["error"] is not None  # logged as the failure it was
