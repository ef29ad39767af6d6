"""``POST /v1/responses`` through the real router, read by the ``openai`` SDK.

One router serves every test; each test has its own route. Simulated endpoints answer
in-process (Responses natively); a ``FakeUpstream`` records what a host was sent (the
reasoning form it got) and fails on demand. Waits are bounded polls, never sleeps.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from aiohttp import web

from tests.support import FakeUpstream, RouterProcess, poll, routes_yaml

WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1}},
    "required": ["city", "days"],
}
TOOL: Any = {"type": "function", "name": "weather", "parameters": WEATHER}


async def _refuse_thinking(
    fake: FakeUpstream, request: web.Request, body: dict[str, Any]
) -> web.StreamResponse:
    """A host that takes no reasoning field, as an OpenAI-compatible host without it says."""
    if "thinking" in body or "reasoning_effort" in body or "reasoning" in body:
        error = {
            "message": "Unrecognized request argument supplied: thinking",
            "type": "invalid_request_error",
        }
        return web.json_response({"error": error}, status=400)
    return web.json_response(
        {
            "id": "resp_fake",
            "object": "response",
            "created_at": 1,
            "status": "completed",
            "model": body.get("model"),
            "output": [
                {
                    "id": "msg_1",
                    "type": "message",
                    "status": "completed",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": "plain", "annotations": []}],
                }
            ],
            "usage": {"input_tokens": 3, "output_tokens": 1, "total_tokens": 4},
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
        }
    )


async def _slow_responses(
    fake: FakeUpstream, request: web.Request, body: dict[str, Any]
) -> web.StreamResponse:
    """A Responses stream that goes on for a minute, one delta every 20 ms."""
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    for i in range(3000):
        event = {"type": "response.output_text.delta", "sequence_number": i, "delta": f"t{i} "}
        await resp.write(
            b"event: response.output_text.delta\ndata: " + json.dumps(event).encode() + b"\n\n"
        )
        await asyncio.sleep(0.02)
    return resp


@pytest.fixture(scope="module")
def fakes() -> Iterator[dict[str, FakeUpstream]]:
    refusing = FakeUpstream(behaviour=_refuse_thinking).start()
    recording = FakeUpstream(behaviour=_refuse_thinking).start()
    slow = FakeUpstream(behaviour=_slow_responses).start()
    yield {"refusing": refusing, "recording": recording, "slow": slow}
    for fake in (refusing, recording, slow):
        fake.stop()


@pytest.fixture(scope="module")
def router(
    tmp_path_factory: pytest.TempPathFactory, fakes: dict[str, FakeUpstream]
) -> Iterator[RouterProcess]:
    providers = f"""
  sim: {{kind: simulated, ttft_ms: 1, tokens_per_s: 5000}}
  sim-chat: {{kind: simulated, ttft_ms: 1, tokens_per_s: 5000, apis: [chat]}}
  sim-hidden: {{kind: simulated, ttft_ms: 1, tokens_per_s: 5000, reasoning: openai}}
  sim-down: {{kind: simulated, status: 503}}
  sim-broken: {{kind: simulated, ttft_ms: 1, tokens_per_s: 2000, tokens: 40,
                disconnect_mid_stream: true}}
  sim-slow: {{kind: simulated, ttft_ms: 3000, tokens_per_s: 1000}}
  refusing: {{kind: openai, base_url: "{fakes["refusing"].base_url}", reasoning: tokenlx}}
  recording: {{kind: openai, base_url: "{fakes["recording"].base_url}", reasoning: openrouter}}
  slow: {{kind: openai, base_url: "{fakes["slow"].base_url}"}}
"""
    routes = """
  native:
    endpoints: [{provider: sim, model: m1}]
  viachat:
    endpoints: [{provider: sim-chat, model: m1}]
  hidden:
    endpoints: [{provider: sim-hidden, model: m1}]
  failover:
    endpoints: [{provider: sim-down, model: m1}, {provider: sim, model: m1}]
  broken:
    endpoints: [{provider: sim-broken, model: m1}]
  hedged:
    policy: hedge100
    endpoints: [{provider: sim-slow, model: m1}, {provider: sim, model: m1}]
  refused:
    endpoints: [{provider: refusing, model: m1}, {provider: sim, model: m1}]
  recorded:
    endpoints: [{provider: recording, model: m1}]
  slow:
    endpoints: [{provider: slow, model: m1}]
"""
    extra = "policies:\n  hedge100: {strategy: priority, hedge: {after_ms: 100}}\n"
    config = routes_yaml(routes, providers, extra=extra)
    tmp = Path(tmp_path_factory.mktemp("responses"))
    (tmp / "routes.yaml").write_text(config)
    with RouterProcess(tmp / "routes.yaml", tmp) as proc:
        yield proc


@pytest.fixture(scope="module")
def client(router: RouterProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=router.base_url, api_key="none", max_retries=0, timeout=20)


def test_responses_create_native_stream_and_not(client: openai.OpenAI) -> None:
    done = client.responses.with_raw_response.create(model="native", input="hi")
    answer = done.parse()
    assert answer.status == "completed" and answer.output_text
    assert answer.usage and answer.usage.output_tokens > 0
    assert done.headers["x-router-endpoint"] == "sim" and done.headers["x-router-route"] == "native"
    with client.responses.stream(
        model="native", input=[{"role": "user", "content": "hi"}]
    ) as stream:
        types = [event.type for event in stream]
        final = stream.get_final_response()
    assert types[0] == "response.created" and types[-1] == "response.completed"
    assert final.output_text and final.usage and final.usage.total_tokens > 0


def test_tools_and_a_tool_loop(client: openai.OpenAI) -> None:
    first = client.responses.create(model="native", input="weather?", tools=[TOOL])
    call = first.output[0]
    assert call.type == "function_call" and call.name == "weather"
    args = json.loads(call.arguments)
    assert isinstance(args["city"], str) and args["days"] >= 1
    follow: Any = [
        {"role": "user", "content": "weather?"},
        {
            "type": "function_call",
            "call_id": call.call_id,
            "name": "weather",
            "arguments": call.arguments,
        },
        {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"},
    ]
    stream = client.responses.create(model="native", input=follow, tools=[TOOL], stream=True)
    kinds = [event.type for event in stream]
    assert "response.output_text.delta" in kinds and kinds[-1] == "response.completed"


def test_a_chat_only_host_serves_responses_translated(
    client: openai.OpenAI, router: RouterProcess
) -> None:
    raw = client.responses.with_raw_response.create(model="viachat", input="hi", truncation="auto")
    assert raw.headers["x-router-dropped"] == "truncation"
    answer = raw.parse()
    assert answer.status == "completed" and answer.output_text
    assert answer.usage and answer.usage.output_tokens > 0
    # A tool loop, streamed: the chat host's tool call comes back as a function_call
    # item, and the call and its output go to the host as chat's tool messages.
    with client.responses.stream(
        model="viachat", input="weather?", tools=[TOOL], tool_choice="required"
    ) as stream:
        kinds = [event.type for event in stream]
        first = stream.get_final_response()
    call = first.output[0]
    assert call.type == "function_call" and call.name == "weather"
    assert isinstance(json.loads(call.arguments)["city"], str)
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert "response.function_call_arguments.delta" in kinds
    follow: Any = [
        {"role": "user", "content": "weather?"},
        {"type": "function_call", "call_id": call.call_id, "name": "weather",
         "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"},
    ]  # fmt: skip
    with client.responses.stream(model="viachat", input=follow, tools=[TOOL]) as stream:
        final = stream.get_final_response()
    assert final.output_text and final.usage and final.usage.input_tokens > 0

    def logged() -> list[dict[str, Any]]:
        return [e for e in router.logs() if e.get("event") == "request" and e["route"] == "viachat"]

    assert poll(lambda: len(logged()) == 3)  # written once the answer has gone
    assert all(e["operation"] == "responses" and e["status"] == 200 for e in logged())
    assert all(e["completion_tokens"] > 0 for e in logged())


def test_reasoning_stream_and_usage(client: openai.OpenAI) -> None:
    answer = client.responses.create(model="native", input="hi", reasoning={"effort": "high"})
    assert [item.type for item in answer.output] == ["reasoning", "message"]
    assert answer.usage and answer.usage.output_tokens_details.reasoning_tokens > 0
    with client.responses.stream(model="native", input="hi", reasoning={"effort": "low"}) as stream:
        deltas = [e.delta for e in stream if e.type == "response.reasoning_text.delta"]
    assert deltas


def test_exclude_strips_the_reasoning_text_but_bills_it(
    client: openai.OpenAI, router: RouterProcess
) -> None:
    # reasoning: openai sends the host reasoning.effort, which cannot say "exclude":
    # the host reasons aloud, and the router leaves the text out.
    body: Any = {"reasoning": {"effort": "high", "exclude": True}}
    answer = client.responses.create(model="hidden", input="hi", extra_body=body)
    items = {item.type: item for item in answer.output}
    assert items["reasoning"].content is None and items["reasoning"].summary == []
    assert answer.usage and answer.usage.output_tokens_details.reasoning_tokens > 0
    raw = httpx.post(
        f"{router.base_url}/responses",
        json={
            "model": "hidden",
            "input": "hi",
            "stream": True,
            "thinking": {"enabled": True, "return_thoughts": False},
        },
        timeout=20,
    )
    assert b"reasoning_text" not in raw.content and b"response.completed" in raw.content
    shown = httpx.post(
        f"{router.base_url}/responses",
        json={"model": "hidden", "input": "hi", "stream": True, "thinking": {"enabled": True}},
        timeout=20,
    )
    assert b"response.reasoning_text.delta" in shown.content


def test_reasoning_goes_out_in_the_hosts_form(
    router: RouterProcess, fakes: dict[str, FakeUpstream]
) -> None:
    fake = fakes["recording"]
    fake.behaviour = _ok_anything
    r = httpx.post(
        f"{router.base_url}/responses",
        json={
            "model": "recorded",
            "input": "hi",
            "thinking": {"type": "enabled", "budget_tokens": 5000},
        },
        timeout=20,
    )
    assert r.status_code == 200
    sent = fake.received[-1].body
    assert sent["reasoning"] == {"max_tokens": 5000} and "thinking" not in sent


async def _ok_anything(
    fake: FakeUpstream, request: web.Request, body: dict[str, Any]
) -> web.StreamResponse:
    return await _refuse_thinking(
        fake, request, {k: v for k, v in body.items() if k not in ("thinking", "reasoning")}
    )


def test_a_host_refusing_the_reasoning_field_fails_over(
    router: RouterProcess, fakes: dict[str, FakeUpstream]
) -> None:
    r = httpx.post(
        f"{router.base_url}/responses",
        json={"model": "refused", "input": "hi", "reasoning_effort": "low"},
        timeout=20,
    )
    assert r.status_code == 200, r.text
    assert r.headers["x-router-endpoint"] == "sim" and r.headers["x-router-attempts"] == "2"
    assert fakes["refusing"].received[-1].body["thinking"]["enabled"] is True  # tokenlx form


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{", None),
        (b"[]", None),
        (b'{"model": "native"}', "input"),
        (b'{"model": "native", "input": 5}', "input"),
        (b'{"model": "native", "input": "x", "stream": "yes"}', "stream"),
        (b'{"model": "native", "input": "x", "reasoning_effort": "extreme"}', "reasoning_effort"),
        (b'{"model": "native", "input": "x", "tools": {}}', "tools"),
    ],
)
def test_malformed_input_is_a_400_in_openais_shape(
    router: RouterProcess, body: bytes, param: str | None
) -> None:
    r = httpx.post(f"{router.base_url}/responses", content=body, timeout=10)
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    assert error["param"] == param


def test_unknown_model_is_a_404_naming_the_routes(router: RouterProcess) -> None:
    r = httpx.post(f"{router.base_url}/responses", json={"model": "nope", "input": "x"}, timeout=10)
    assert r.status_code == 404 and "native" in r.json()["error"]["message"]


def test_failover_before_the_first_byte(client: openai.OpenAI) -> None:
    done = client.responses.with_raw_response.create(model="failover", input="hi", stream=True)
    assert done.headers["x-router-endpoint"] == "sim" and done.headers["x-router-attempts"] == "2"
    assert [e.type for e in done.parse()][-1] == "response.completed"


def test_a_break_after_the_first_byte_ends_with_response_failed(router: RouterProcess) -> None:
    r = httpx.post(
        f"{router.base_url}/responses",
        json={"model": "broken", "input": "hi", "stream": True},
        timeout=20,
    )
    events = [e for e in r.content.split(b"\n\n") if e.strip()]
    assert b"response.output_text.delta" in r.content
    assert events[-2].startswith(b"event: error") and events[-1].startswith(
        b"event: response.failed"
    )
    failed = json.loads(events[-1].split(b"data: ", 1)[1])
    assert failed["response"]["status"] == "failed"
    assert failed["response"]["error"]["code"] == "stream_broken"
    assert b"response.completed" not in r.content


def test_hedging_answers_from_the_second_endpoint(client: openai.OpenAI) -> None:
    started = time.monotonic()
    done = client.responses.with_raw_response.create(model="hedged", input="hi", stream=True)
    assert [e.type for e in done.parse()][-1] == "response.completed"
    assert done.headers["x-router-endpoint"] == "sim"
    assert time.monotonic() - started < 2.5  # the slow one would take 3 s to its first token


def test_a_client_that_leaves_cancels_the_upstream(
    router: RouterProcess, fakes: dict[str, FakeUpstream]
) -> None:
    fake = fakes["slow"]
    fake.disconnected.clear()
    body = json.dumps({"model": "slow", "input": "hi", "stream": True}).encode()
    with socket.create_connection(("127.0.0.1", router.port), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/responses HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        assert b"response.output_text.delta" in sock.recv(65536)
    assert poll(fake.disconnected.is_set, timeout=5)


# -- the model object ------------------------------------------------------------------------


def test_get_model_by_id_and_unknown_model(client: openai.OpenAI, router: RouterProcess) -> None:
    model = client.models.retrieve("native")
    assert model.id == "native" and model.object == "model" and model.owned_by == "router"
    with pytest.raises(openai.NotFoundError) as info:
        client.models.retrieve("no-such-route")
    error = info.value.body
    assert isinstance(error, dict) and error["code"] == "model_not_found"
    assert error["param"] == "model" and "native" in error["message"]
    assert httpx.head(f"{router.base_url}/models/native", timeout=5).status_code == 200


async def _error_mid_stream(
    fake: FakeUpstream, request: web.Request, body: dict[str, Any]
) -> web.StreamResponse:
    """A Responses stream that starts, then says it failed: a host's own error event."""
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    for i, event in enumerate(
        [
            {"type": "response.output_text.delta", "delta": "partial "},
            {"type": "error", "code": "server_error", "message": "host overloaded"},
        ]
    ):
        data = json.dumps({**event, "sequence_number": i}).encode()
        await resp.write(b"event: " + event["type"].encode() + b"\ndata: " + data + b"\n\n")
    return resp


def test_a_hosts_error_event_mid_stream_ends_with_response_failed(
    router: RouterProcess, fakes: dict[str, FakeUpstream]
) -> None:
    fake = fakes["recording"]
    fake.behaviour = _error_mid_stream
    try:
        r = httpx.post(
            f"{router.base_url}/responses",
            json={"model": "recorded", "input": "hi", "stream": True},
            timeout=20,
        )
    finally:
        fake.behaviour = _refuse_thinking
    events = [e for e in r.content.split(b"\n\n") if e.strip()]
    assert events[0].startswith(b"event: response.output_text.delta")
    # The host's error ends the stream as broken: the API's error event, then failed.
    assert events[-2].startswith(b"event: error")
    assert events[-1].startswith(b"event: response.failed")
    assert b"response.completed" not in r.content
