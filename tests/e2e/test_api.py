"""The HTTP API end to end: the real service, in-test fake upstreams, the official SDK.

One router serves the whole module (same config for every test), with client auth on:
the SDK presents the ``team-a`` key. Bad input goes in as raw HTTP with httpx.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from aiohttp import web

from tests.support import (
    FakeUpstream,
    Received,
    RouterProcess,
    chat_body,
    free_port,
    ok_json,
    poll,
    routes_yaml,
    status,
)

CLIENT_KEY = "sk-aaa-client-0001"
BARE_KEY = "sk-bare-client-0002"
UPSTREAM_KEY = "sk-upstream-SECRET-0003"
OTHER_UPSTREAM_KEY = "sk-upstream-OTHER-0004"
KEYS = (CLIENT_KEY, BARE_KEY, UPSTREAM_KEY, OTHER_UPSTREAM_KEY)
BARE_NAME = "key-" + hashlib.sha256(BARE_KEY.encode()).hexdigest()[:8]
MESSAGES: Any = [{"role": "user", "content": "hi"}]


async def multi(
    fake: FakeUpstream, request: web.Request, body: dict[str, Any]
) -> web.StreamResponse:
    """Answers chat, completions and embeddings in their own shapes."""
    if request.path.endswith("/embeddings"):
        return web.json_response(
            {
                "object": "list",
                "data": [{"object": "embedding", "index": 0, "embedding": [0.25, -0.5, 1.0]}],
                "model": body.get("model"),
                "usage": {"prompt_tokens": 2, "total_tokens": 2},
            }
        )
    if request.path.endswith("/completions") and not request.path.endswith("/chat/completions"):
        return web.json_response(
            {
                "id": "cmpl-fake",
                "object": "text_completion",
                "created": 1,
                "model": body.get("model"),
                "choices": [
                    {"index": 0, "text": fake.text, "finish_reason": "stop", "logprobs": None}
                ],
                "usage": {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5},
            }
        )
    return await ok_json(fake, request, body)


class Env:
    def __init__(
        self,
        router: RouterProcess,
        main: FakeUpstream,
        second: FakeUpstream,
        failing: FakeUpstream,
        echo: FakeUpstream,
    ) -> None:
        self.router = router
        self.main = main
        self.second = second
        self.failing = failing
        self.echo = echo

    def client(self, key: str = CLIENT_KEY) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.router.base_url, api_key=key, max_retries=0, timeout=20)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("api")
    with (
        FakeUpstream(behaviour=multi) as main,
        FakeUpstream(text="hello from second", behaviour=multi) as second,
        FakeUpstream(behaviour=status(500)) as failing,
        FakeUpstream(
            behaviour=status(400, message=f"Incorrect API key provided: {UPSTREAM_KEY}")
        ) as echo,
    ):
        dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
        providers = (
            f"  main: {{kind: openai, base_url: '{main.base_url}', api_key_env: T_UP_KEY}}\n"
            f"  second: {{kind: openai, base_url: '{second.base_url}', api_key_env: T_OTHER_KEY}}\n"
            f"  failing: {{kind: openai, base_url: '{failing.base_url}'}}\n"
            f"  echo: {{kind: openai, base_url: '{echo.base_url}', api_key_env: T_UP_KEY}}\n"
            f"  dead: {{kind: openai, base_url: '{dead}'}}\n"
            "  nokey: {kind: openai, base_url: 'http://127.0.0.1:9/v1', api_key_env: T_UNSET_KEY}\n"
        )
        routes = (
            "  chat:\n    endpoints: [{provider: main, model: up-model}]\n"
            "  failover:\n    endpoints:\n"
            "      - {provider: failing, model: m}\n"
            "      - {id: good, provider: second, model: m2}\n"
            "  refused:\n    endpoints:\n"
            "      - {provider: dead, model: m}\n"
            "      - {id: good, provider: second, model: m3}\n"
            "  echo:\n    endpoints: [{provider: echo, model: m}]\n"
            "  partly:\n    endpoints:\n"
            "      - {provider: nokey, model: m}\n"
            "      - {provider: main, model: up-model}\n"
        )
        extra = (
            "server: {max_body_mb: 0.01}\n"
            "defaults: {retry: {backoff_s: 0.01}, breaker: {consecutive_failures: 1000}}\n"
        )
        config = routes_yaml(routes, providers, extra=extra)
        router = RouterProcess(
            config,
            tmp,
            env={
                "ROUTER_API_KEYS": f"team-a:{CLIENT_KEY},{BARE_KEY}",
                "T_UP_KEY": UPSTREAM_KEY,
                "T_OTHER_KEY": OTHER_UPSTREAM_KEY,
            },
        )
        with router:
            yield Env(router, main, second, failing, echo)


def header(rec: Received, name: str) -> str | None:
    for k, v in rec.headers.items():
        if k.lower() == name.lower():
            return v
    return None


def received(fake: FakeUpstream, tag: str) -> Received:
    """What the upstream got for the request sent with ``user=tag`` (forwarded as it came)."""
    found = [r for r in fake.received if r.body.get("user") == tag]
    assert len(found) == 1, f"{tag} reached the fake {len(found)} times"
    return found[0]


def assert_no_keys(text: str) -> None:
    for key in KEYS:
        assert key not in text


def assert_error_shape(resp: httpx.Response, status_code: int) -> dict[str, Any]:
    assert resp.status_code == status_code, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    err = resp.json()["error"]
    assert {"message", "type", "code", "param"} <= set(err)
    assert isinstance(err["message"], str) and err["message"]
    return err


# -- the happy path with the SDK ---------------------------------------------------------


def test_non_streaming_chat(env: Env) -> None:
    with env.client() as client:
        raw = client.chat.completions.with_raw_response.create(
            model="chat",
            messages=MESSAGES,
            user="req-nonstream-1",
            extra_headers={"x-request-id": "req-nonstream-1"},
        )
    answer = raw.parse()
    assert answer.choices[0].message.content == "hello from fake"
    assert answer.usage is not None and answer.usage.completion_tokens == 3
    assert raw.headers["x-request-id"] == "req-nonstream-1"
    assert raw.headers["x-router-route"] == "chat"
    assert raw.headers["x-router-endpoint"] == "main"
    assert raw.headers["x-router-attempts"] == "1"
    up = received(env.main, "req-nonstream-1")
    assert up.path == "/v1/chat/completions"
    assert up.body["model"] == "up-model"
    assert up.body["messages"] == MESSAGES


def test_a_request_id_is_made_when_the_client_sends_none(env: Env) -> None:
    with env.client() as client:
        a = client.chat.completions.with_raw_response.create(model="chat", messages=MESSAGES)
        b = client.chat.completions.with_raw_response.create(model="chat", messages=MESSAGES)
    assert a.headers["x-request-id"] and b.headers["x-request-id"]
    assert a.headers["x-request-id"] != b.headers["x-request-id"]


def test_streaming_chat(env: Env) -> None:
    with env.client() as client:
        stream = client.chat.completions.create(
            model="chat",
            messages=MESSAGES,
            stream=True,
            user="req-stream-1",
            extra_headers={"x-request-id": "req-stream-1"},
        )
        chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.split() == ["hello", "from", "fake"]
    assert chunks[-1].choices and chunks[-1].choices[0].finish_reason == "stop"
    assert up_stream(env, "req-stream-1")["stream"] is True


def up_stream(env: Env, tag: str) -> dict[str, Any]:
    return received(env.main, tag).body


def test_stream_without_include_usage_gets_no_usage_chunk(env: Env) -> None:
    with env.client() as client:
        chunks = list(
            client.chat.completions.create(
                model="chat",
                messages=MESSAGES,
                stream=True,
                user="req-usage-0",
                extra_headers={"x-request-id": "req-usage-0"},
            )
        )
    assert chunks
    assert all(c.usage is None for c in chunks)
    assert all(c.choices for c in chunks)  # no usage-only (empty choices) chunk
    # ...although the router asked the upstream for it, to count tokens
    assert up_stream(env, "req-usage-0")["stream_options"] == {"include_usage": True}


def test_stream_with_include_usage_gets_the_usage_chunk(env: Env) -> None:
    with env.client() as client:
        chunks = list(
            client.chat.completions.create(
                model="chat",
                messages=MESSAGES,
                stream=True,
                stream_options={"include_usage": True},
                user="req-usage-1",
                extra_headers={"x-request-id": "req-usage-1"},
            )
        )
    usage = [c for c in chunks if c.usage is not None]
    assert len(usage) == 1
    assert usage[0].choices == []
    assert usage[0].usage is not None and usage[0].usage.total_tokens == 8
    assert up_stream(env, "req-usage-1")["stream_options"] == {"include_usage": True}


def test_raw_stream_ends_with_done(env: Env) -> None:
    with httpx.Client(timeout=20) as http:
        resp = http.post(
            f"{env.router.base_url}/chat/completions",
            json={"model": "chat", "messages": MESSAGES, "stream": True},
            headers={"Authorization": f"Bearer {CLIENT_KEY}"},
        )
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/event-stream")
    assert resp.headers["x-router-endpoint"] == "main"
    events = [e for e in resp.text.split("\n\n") if e.strip()]
    assert events[-1] == "data: [DONE]"
    assert resp.text.count("[DONE]") == 1


def test_completions_and_embeddings_are_routed(env: Env) -> None:
    with env.client() as client:
        comp = client.completions.with_raw_response.create(
            model="chat",
            prompt="say hi",
            user="req-comp-1",
            extra_headers={"x-request-id": "req-comp-1"},
        )
        emb = client.embeddings.with_raw_response.create(
            model="chat",
            input="hi",
            encoding_format="float",
            user="req-emb-1",
            extra_headers={"x-request-id": "req-emb-1"},
        )
    assert comp.parse().choices[0].text == "hello from fake"
    assert comp.headers["x-router-route"] == "chat"
    assert emb.parse().data[0].embedding == [0.25, -0.5, 1.0]
    assert emb.headers["x-router-endpoint"] == "main"
    up_comp = received(env.main, "req-comp-1")
    assert up_comp.path == "/v1/completions"
    assert up_comp.body["model"] == "up-model" and up_comp.body["prompt"] == "say hi"
    up_emb = received(env.main, "req-emb-1")
    assert up_emb.path == "/v1/embeddings"
    assert up_emb.body["model"] == "up-model" and up_emb.body["input"] == "hi"


def test_tools_response_format_and_unknown_fields_reach_the_upstream_unchanged(env: Env) -> None:
    tools: Any = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "weather for a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    extras = {"thinking": {"type": "enabled", "budget_tokens": 1024}, "x_custom": [1, "two", None]}
    with env.client() as client:
        client.chat.completions.create(
            model="chat",
            messages=MESSAGES,
            tools=tools,
            tool_choice="auto",
            response_format={"type": "json_object"},
            temperature=0.2,
            extra_body=extras,
            user="req-fields-1",
            extra_headers={"x-request-id": "req-fields-1"},
        )
    body = received(env.main, "req-fields-1").body
    assert body["tools"] == tools
    assert body["tool_choice"] == "auto"
    assert body["response_format"] == {"type": "json_object"}
    assert body["temperature"] == 0.2
    assert body["thinking"] == extras["thinking"]
    assert body["x_custom"] == extras["x_custom"]
    assert body["model"] == "up-model"


def test_the_upstream_gets_its_own_key_never_the_clients(env: Env) -> None:
    with env.client() as client:
        client.chat.completions.create(
            model="chat",
            messages=MESSAGES,
            user="req-key-1",
            extra_headers={"x-request-id": "req-key-1"},
        )
        client.chat.completions.create(
            model="failover",
            messages=MESSAGES,
            user="req-key-2",
            extra_headers={"x-request-id": "req-key-2"},
        )
    assert header(received(env.main, "req-key-1"), "authorization") == f"Bearer {UPSTREAM_KEY}"
    assert (
        header(received(env.second, "req-key-2"), "authorization") == f"Bearer {OTHER_UPSTREAM_KEY}"
    )
    assert header(received(env.failing, "req-key-2"), "authorization") is None  # it has no key
    for fake in (env.main, env.second, env.failing):
        for rec in fake.received:
            assert CLIENT_KEY not in json.dumps(rec.headers) + json.dumps(rec.body)
            assert BARE_KEY not in json.dumps(rec.headers)


# -- failover ----------------------------------------------------------------------------


def test_failover_when_the_first_endpoint_answers_500(env: Env) -> None:
    before = len(env.failing.received)
    with env.client() as client:
        raw = client.chat.completions.with_raw_response.create(model="failover", messages=MESSAGES)
    assert raw.parse().choices[0].message.content == "hello from second"
    assert raw.headers["x-router-attempts"] == "2"
    assert raw.headers["x-router-endpoint"] == "good"
    assert len(env.failing.received) == before + 1


def test_failover_when_the_first_endpoint_refuses_connections(env: Env) -> None:
    with env.client() as client:
        raw = client.chat.completions.with_raw_response.create(model="refused", messages=MESSAGES)
        stream = client.chat.completions.create(model="refused", messages=MESSAGES, stream=True)
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert raw.parse().choices[0].message.content == "hello from second"
    assert raw.headers["x-router-attempts"] == "2"
    assert raw.headers["x-router-endpoint"] == "good"
    assert text.split() == ["hello", "from", "second"]


def test_an_endpoint_without_its_key_is_skipped(env: Env) -> None:
    with env.client() as client:
        raw = client.chat.completions.with_raw_response.create(model="partly", messages=MESSAGES)
    assert raw.headers["x-router-endpoint"] == "main"
    assert raw.headers["x-router-attempts"] == "1"


# -- bad input, as raw HTTP --------------------------------------------------------------


def post(
    env: Env,
    content: bytes | Iterator[bytes],
    path: str = "/chat/completions",
    key: str | None = CLIENT_KEY,
    **headers: str,
) -> httpx.Response:
    hdrs = {"Content-Type": "application/json", **headers}
    if key is not None:
        hdrs["Authorization"] = f"Bearer {key}"
    with httpx.Client(timeout=20) as http:
        return http.post(f"{env.router.base_url}{path}", content=content, headers=hdrs)


def good(env: Env) -> None:
    resp = post(env, json.dumps({"model": "chat", "messages": MESSAGES}).encode())
    assert resp.status_code == 200
    assert resp.json()["choices"][0]["message"]["content"] == "hello from fake"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", None),
        (b"", None),
        (b"[1, 2]", None),
        (json.dumps({"messages": MESSAGES}).encode(), "model"),
        (json.dumps({"model": 7, "messages": MESSAGES}).encode(), "model"),
        (json.dumps({"model": "chat"}).encode(), "messages"),
        (json.dumps({"model": "chat", "messages": "hi"}).encode(), "messages"),
        (json.dumps({"model": "chat", "messages": MESSAGES, "stream": "yes"}).encode(), "stream"),
        (
            json.dumps({"model": "chat", "messages": MESSAGES, "temperature": "hot"}).encode(),
            "temperature",
        ),
        (
            json.dumps({"model": "chat", "messages": MESSAGES, "max_tokens": True}).encode(),
            "max_tokens",
        ),
    ],
    ids=[
        "invalid-json",
        "empty",
        "not-an-object",
        "no-model",
        "model-int",
        "no-messages",
        "messages-string",
        "stream-yes",
        "temperature-hot",
        "max-tokens-bool",
    ],
)
def test_bad_input_is_a_400_and_the_process_keeps_serving(
    env: Env, body: bytes, param: str | None
) -> None:
    err = assert_error_shape(post(env, body), 400)
    assert err["type"] == "invalid_request_error"
    if param is not None:
        assert err["param"] == param
    good(env)


def test_bad_input_on_completions_and_embeddings(env: Env) -> None:
    err = assert_error_shape(post(env, b'{"model": "chat"}', path="/completions"), 400)
    assert err["param"] == "prompt"
    err = assert_error_shape(post(env, b'{"model": "chat", "input": 5}', path="/embeddings"), 400)
    assert err["param"] == "input"


def test_unknown_model_is_a_404_listing_the_routes(env: Env) -> None:
    err = assert_error_shape(
        post(env, json.dumps({"model": "gpt-9", "messages": MESSAGES}).encode()), 404
    )
    assert "gpt-9" in err["message"]
    for route in ("chat", "failover", "refused"):
        assert route in err["message"]
    with env.client() as client, pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-9", messages=MESSAGES)
    good(env)


def test_a_body_over_max_body_mb_is_a_413(env: Env) -> None:
    big = json.dumps(
        {"model": "chat", "messages": [{"role": "user", "content": "x" * 20_000}]}
    ).encode()
    err = assert_error_shape(post(env, big), 413)
    assert err["code"] == "payload_too_large"

    def chunked() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        for i in range(0, len(big), 4096):
            yield big[i : i + 4096]

    assert_error_shape(post(env, chunked()), 413)
    good(env)


# -- client auth and secrets -------------------------------------------------------------


def test_client_keys_are_required_and_named_in_the_logs(env: Env) -> None:
    body = json.dumps({"model": "chat", "messages": MESSAGES}).encode()
    err = assert_error_shape(post(env, body, key=None), 401)
    assert err["type"] == "authentication_error"
    assert_error_shape(post(env, body, key="sk-wrong-key"), 401)
    assert post(env, body, key=CLIENT_KEY, **{"x-request-id": "req-auth-named"}).status_code == 200
    assert post(env, body, key=BARE_KEY, **{"x-request-id": "req-auth-bare"}).status_code == 200
    with env.client(key="sk-wrong-key") as client, pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="chat", messages=MESSAGES)
    with env.client(key=BARE_KEY) as client:
        assert client.chat.completions.create(model="chat", messages=MESSAGES).choices

    def request_lines() -> dict[str, Any]:
        return {e.get("request_id"): e for e in env.router.logs() if e.get("event") == "request"}

    assert poll(lambda: {"req-auth-named", "req-auth-bare"} <= set(request_lines()))
    lines = request_lines()
    assert lines["req-auth-named"]["key"] == "team-a"
    assert lines["req-auth-bare"]["key"] == BARE_NAME
    assert lines["req-auth-named"]["status"] == 200
    assert any(e.get("status") == 401 for e in lines.values())
    assert_no_keys(env.router.log_text())


def test_models_needs_a_key_and_lists_the_routes(env: Env) -> None:
    with httpx.Client(timeout=10) as http:
        assert http.get(f"{env.router.base_url}/models").status_code == 401
    with env.client() as client:
        models = {m.id for m in client.models.list()}
    assert models == {"chat", "failover", "refused", "echo", "partly"}


def test_health_and_metrics_are_open_without_keys(env: Env) -> None:
    with httpx.Client(timeout=10) as http:
        live = http.get(f"{env.router.url}/health/live")
        assert live.status_code == 200 and live.json() == {"status": "ok"}
        assert http.get(f"{env.router.url}/health/ready").status_code == 200
        assert http.get(f"{env.router.url}/health").status_code == 200
        metrics = http.get(f"{env.router.url}/metrics")
        assert metrics.status_code == 200
        assert_no_keys(metrics.text)


def test_an_upstream_error_quoting_its_key_is_redacted(env: Env) -> None:
    resp = post(env, json.dumps({"model": "echo", "messages": MESSAGES}).encode())
    assert resp.status_code == 400
    assert UPSTREAM_KEY not in resp.text
    assert "Incorrect API key provided" in resp.json()["error"]["message"]
    with env.client() as client, pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="echo", messages=MESSAGES)
    assert UPSTREAM_KEY not in str(info.value)
    assert UPSTREAM_KEY not in info.value.response.text
    assert_no_keys(env.router.log_text())
    assert_no_keys(json.dumps(env.router.health()))


def test_a_key_sent_as_a_request_id_is_redacted_from_the_request_line(env: Env) -> None:
    # The request line is serialised outside structlog's processors: it must still redact.
    body = json.dumps({"model": "chat", "messages": MESSAGES}).encode()
    assert post(env, body, **{"x-request-id": f"id-{UPSTREAM_KEY}"}).status_code == 200

    def line() -> dict[str, Any] | None:
        for e in env.router.logs():
            if e.get("event") == "request" and str(e.get("request_id")).startswith("id-"):
                return e
        return None

    assert poll(lambda: line() is not None)
    found = line()
    assert found is not None and found["request_id"] == "id-***"
    assert found["level"] == "info" and found["timestamp"].endswith("Z")
    assert_no_keys(env.router.log_text())


def test_no_key_in_any_response_log_line_or_health(env: Env) -> None:
    texts = []
    with httpx.Client(timeout=10) as http:
        for path in ("/health", "/health/ready", "/metrics", "/v1/models"):
            resp = http.get(
                f"{env.router.url}{path}", headers={"Authorization": f"Bearer {CLIENT_KEY}"}
            )
            texts += [resp.text, json.dumps(dict(resp.headers))]
    for body in (b"{oops", json.dumps({"model": "failover", "messages": MESSAGES}).encode()):
        resp = post(env, body)
        texts += [resp.text, json.dumps(dict(resp.headers))]
    texts.append(env.router.log_text())
    for text in texts:
        assert_no_keys(text)


# -- health ------------------------------------------------------------------------------

ENDPOINT_FIELDS = {
    "id",
    "provider",
    "model",
    "state",
    "reason",
    "score",
    "in_flight",
    "requests",
    "errors",
    "error_rate",
    "latency_ms",
    "ttft_ms",
    "tokens_per_s",
    "tool_call_error_rate",
    "cooldown_until",
    "last_error",
}


def test_health_has_the_contract_shape(env: Env) -> None:
    with env.client() as client:
        client.chat.completions.create(model="chat", messages=MESSAGES)
        list(client.chat.completions.create(model="chat", messages=MESSAGES, stream=True))
    with httpx.Client(timeout=10) as http:

        def main_idle() -> bool:
            # the stream's lease ends just after its last byte went out: wait for it
            routes = http.get(f"{env.router.url}/health").json()["routes"]
            return bool(routes["chat"]["endpoints"][0]["in_flight"] == 0)

        assert poll(main_idle)
        resp = http.get(f"{env.router.url}/health")
    assert resp.status_code == 200
    health = resp.json()
    assert health["status"] == "ok"
    cfg = health["config"]
    assert {"path", "version", "loaded_at", "last_error"} <= set(cfg)
    assert cfg["path"].endswith("routes.yaml")
    assert len(cfg["version"]) == 8 and cfg["last_error"] is None
    assert set(health["routes"]) == {"chat", "failover", "refused", "echo", "partly"}
    for name, route in health["routes"].items():
        assert {"policy", "available", "endpoints"} <= set(route), name
        for ep in route["endpoints"]:
            assert set(ep) >= ENDPOINT_FIELDS, (name, ENDPOINT_FIELDS - set(ep))
            assert {"ewma", "p50", "p95"} <= set(ep["latency_ms"])
            assert {"ewma", "p50", "p95"} <= set(ep["ttft_ms"])
            assert "ewma" in ep["tokens_per_s"]
            assert ep["state"] in ("healthy", "cooldown", "half_open", "disabled")

    chat = health["routes"]["chat"]
    assert chat["policy"] == "priority" and chat["available"] == 1
    [main] = chat["endpoints"]
    assert (main["id"], main["provider"], main["model"]) == ("main", "main", "up-model")
    assert main["state"] == "healthy" and main["reason"] is None
    assert main["requests"] >= 2 and main["errors"] == 0 and main["in_flight"] == 0
    assert main["latency_ms"]["ewma"] is not None and main["latency_ms"]["ewma"] > 0
    assert main["ttft_ms"]["ewma"] is not None
    assert isinstance(main["score"], int | float)

    partly = health["routes"]["partly"]
    nokey = next(e for e in partly["endpoints"] if e["id"] == "nokey")
    assert nokey["state"] == "disabled"
    assert "T_UNSET_KEY" in nokey["reason"]
    assert partly["available"] == 1

    failing = next(e for e in health["routes"]["failover"]["endpoints"] if e["id"] == "failing")
    assert failing["errors"] >= 1 and failing["last_error"] == "http_5xx"


def test_ready_is_503_naming_a_route_with_no_available_endpoint(tmp_path: Path) -> None:
    # An upstream that rejects the router's key puts its endpoint in cooldown (reason auth).
    with FakeUpstream(behaviour=status(401)) as rejecting, FakeUpstream() as fine:
        providers = (
            f"  rejecting: {{kind: openai, base_url: '{rejecting.base_url}'}}\n"
            f"  fine: {{kind: openai, base_url: '{fine.base_url}'}}\n"
        )
        routes = (
            "  locked:\n    endpoints: [{provider: rejecting, model: m}]\n"
            "  open:\n    endpoints: [{provider: fine, model: m}]\n"
        )
        extra = "defaults: {retry: {attempts: 1}, breaker: {cooldown_s: 300}}\n"
        with (
            RouterProcess(routes_yaml(routes, providers, extra=extra), tmp_path) as router,
            httpx.Client(timeout=10) as http,
        ):
            assert http.get(f"{router.url}/health/ready").status_code == 200
            resp = http.post(
                f"{router.base_url}/chat/completions",
                json={"model": "locked", "messages": MESSAGES},
            )
            assert resp.status_code == 502
            assert resp.json()["error"]["attempts"][0]["reason"] == "auth"
            ready = http.get(f"{router.url}/health/ready")
            assert ready.status_code == 503
            assert "locked" in ready.text and "open" not in ready.text
            health = http.get(f"{router.url}/health")
            assert health.status_code == 503
            body = health.json()
            assert body["status"] == "degraded"
            [ep] = body["routes"]["locked"]["endpoints"]
            assert ep["state"] == "cooldown" and ep["reason"] == "auth"
            assert ep["cooldown_until"] is not None
            assert body["routes"]["locked"]["available"] == 0
            # the healthy route still serves
            ok = http.post(
                f"{router.base_url}/chat/completions", json={"model": "open", "messages": MESSAGES}
            )
            assert ok.status_code == 200


async def sets_a_cookie(
    fake: FakeUpstream, request: web.Request, body: dict[str, Any]
) -> web.StreamResponse:
    resp = web.json_response(chat_body(fake.text, model=body.get("model", "x")))
    resp.set_cookie("session", "belongs-to-the-first-client")
    return resp


def test_upstream_cookies_never_ride_along_on_other_requests(tmp_path: Path) -> None:
    # A gateway shares its upstream connections between clients: a cookie one answer sets
    # must not be sent upstream with anyone's next request.
    with FakeUpstream(behaviour=sets_a_cookie) as upstream:
        # By name: aiohttp's cookie jar ignores cookies from IP-address hosts.
        by_name = upstream.base_url.replace("127.0.0.1", "localhost")
        providers = f"  up: {{kind: openai, base_url: '{by_name}'}}\n"
        routes = "  chat:\n    endpoints: [{provider: up, model: m}]\n"
        with (
            RouterProcess(routes_yaml(routes, providers), tmp_path) as router,
            httpx.Client(timeout=10) as http,
        ):
            for _ in range(3):
                resp = http.post(
                    f"{router.base_url}/chat/completions",
                    json={"model": "chat", "messages": MESSAGES},
                )
                assert resp.status_code == 200
    assert len(upstream.received) == 3
    assert all("Cookie" not in r.headers for r in upstream.received)


def test_upstream_connections_are_reused_across_requests_and_modes(tmp_path: Path) -> None:
    # Keep-alive is the whole point of a pooled fast path: one client sending one request
    # at a time must reach the upstream over a single connection, streamed or not.
    with FakeUpstream(behaviour=multi) as upstream:
        providers = f"  up: {{kind: openai, base_url: '{upstream.base_url}'}}\n"
        routes = "  chat:\n    endpoints: [{provider: up, model: m}]\n"
        with (
            RouterProcess(routes_yaml(routes, providers), tmp_path) as router,
            openai.OpenAI(base_url=router.base_url, api_key="x", max_retries=0) as client,
        ):
            for i in range(6):
                if i % 2:
                    chunks = list(
                        client.chat.completions.create(model="chat", messages=MESSAGES, stream=True)
                    )
                    assert chunks[-1].choices[0].finish_reason == "stop"
                else:
                    answer = client.chat.completions.create(model="chat", messages=MESSAGES)
                    assert answer.choices[0].message.content == upstream.text
    assert len(upstream.received) == 6
    assert len({r.peer for r in upstream.received}) == 1


def test_a_body_nested_deeper_than_json_encoders_go_is_a_400(env: Env) -> None:
    """A decoder takes 1,024 levels of nesting, an encoder (orjson) 254: such a body
    parses but cannot be sent upstream, which is the client's error, not a 500."""
    nested = "[" * 600 + "]" * 600
    body = (
        '{"model": "chat", "user": "nested", "messages": [{"role": "user", "content": "x"}],'
        f' "tools": [{nested}]}}'
    )
    resp = httpx.post(
        f"{env.router.base_url}/chat/completions",
        content=body,
        headers={"Authorization": f"Bearer {CLIENT_KEY}", "content-type": "application/json"},
        timeout=10,
    )
    err = assert_error_shape(resp, 400)
    assert "cannot be forwarded" in err["message"]
    assert not [r for r in env.main.received if r.body.get("user") == "nested"]
