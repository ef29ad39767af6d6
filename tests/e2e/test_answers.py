"""What the router answers and records: no key a client or an upstream put in reaches an
answer, a stream that turns to garbage after its first token ends as broken (and is
logged so), and a stream the client got whole is a 200 however fast it hangs up.

One router for the module with client keys, an admin key and an upstream key, so that
every secret the redactor knows is in play; fake upstreams behind it misbehave on demand.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import httpx
import pytest
from aiohttp import web

from tests.support import (
    FakeUpstream,
    RouterProcess,
    chat_body,
    chunk,
    ok_json,
    open_stream,
    poll,
)

CLIENT_KEY = "sk-client-4f1c2a9e7b"
OTHER_CLIENT_KEY = "sk-other-9a8b7c6d5e"
ADMIN_KEY = "admin-7e6d5c4b3a"
UPSTREAM_KEY = "sk-upstream-0a1b2c3d4e5f"
SECRETS = (CLIENT_KEY, OTHER_CLIENT_KEY, ADMIN_KEY, UPSTREAM_KEY)

CONFIG = """
storage: {{url: null}}
server: {{api_keys_env: ROUTER_API_KEYS, admin_key_env: ROUTER_ADMIN_KEY}}
defaults:
  timeouts: {{connect_s: 1, ttft_s: 2, idle_s: 2, total_s: 10}}
  retry: {{attempts: 2, backoff_s: 0.01, backoff_max_s: 0.05}}
providers:
  up: {{kind: openai, base_url: "{up}", api_key_env: UPSTREAM_KEY}}
  up-chat: {{kind: openai, base_url: "{up}", api_key_env: UPSTREAM_KEY, apis: [chat]}}
  other: {{kind: openai, base_url: "{other}"}}
routes:
  chat: {{endpoints: [{{provider: up, model: m}}]}}
  chat-only: {{endpoints: [{{provider: up-chat, model: m}}]}}
  keyless: {{endpoints: [{{provider: other, model: m}}]}}
"""


class Env:
    def __init__(self, router: RouterProcess, up: FakeUpstream, other: FakeUpstream) -> None:
        self.router = router
        self.up = up
        self.other = other
        self.auth = {"Authorization": f"Bearer {CLIENT_KEY}"}

    def post(self, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
        return httpx.post(
            f"{self.router.base_url}/chat/completions",
            json=body,
            headers={**self.auth, **(headers or {})},
            timeout=15,
        )

    def request_line(self, request_id: str) -> dict[str, Any] | None:
        for event in self.router.logs():
            if event.get("event") == "request" and event.get("request_id") == request_id:
                return event
        return None


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    with ExitStack() as stack:
        up = stack.enter_context(FakeUpstream())
        other = stack.enter_context(FakeUpstream())
        tmp = tmp_path_factory.mktemp("answers")
        (tmp / "routes.yaml").write_text(CONFIG.format(up=up.base_url, other=other.base_url))
        router = RouterProcess(
            tmp / "routes.yaml",
            tmp,
            env={
                "ROUTER_API_KEYS": f"team:{CLIENT_KEY},{OTHER_CLIENT_KEY}",
                "ROUTER_ADMIN_KEY": ADMIN_KEY,
                "UPSTREAM_KEY": UPSTREAM_KEY,
            },
        )
        stack.enter_context(router)
        yield Env(router, up, other)


def assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"{secret} leaked: {text[:300]}"


MESSAGES = [{"role": "user", "content": "hi"}]


# -- no key in an answer ---------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        {"model": CLIENT_KEY, "messages": MESSAGES},  # a key pasted into the model field
        {"model": f"x{UPSTREAM_KEY}", "messages": MESSAGES},
        {"model": "chat", "messages": MESSAGES, "provider": {"only": [ADMIN_KEY]}},
        {"model": "chat", "messages": MESSAGES, "provider": {"sort": OTHER_CLIENT_KEY}},
        {"model": "chat", "messages": MESSAGES, "provider": {CLIENT_KEY: 1}},
        {"model": "chat", "messages": CLIENT_KEY},
        {"model": "chat", "messages": MESSAGES, "temperature": UPSTREAM_KEY},
    ],
)
def test_router_made_errors_never_echo_a_key(env: Env, body: dict[str, Any]) -> None:
    r = env.post(body)
    assert 400 <= r.status_code < 500, r.text
    assert "error" in r.json()
    assert_no_secret(r.text)


@pytest.mark.parametrize("path", ["messages", "responses"])
@pytest.mark.parametrize(
    "body",
    [
        {"model": CLIENT_KEY, "max_tokens": 8, "messages": MESSAGES, "input": "hi"},  # 404
        {"model": "chat", "max_tokens": 8, "messages": CLIENT_KEY, "input": 7},  # 400
        {"model": "chat", "max_tokens": UPSTREAM_KEY, "messages": MESSAGES, "input": "hi"},
        {"model": "chat", "max_output_tokens": UPSTREAM_KEY, "messages": MESSAGES, "input": "x"},
        {"model": "chat", "messages": MESSAGES, "input": "hi", "provider": {"only": [ADMIN_KEY]}},
        {"model": "chat", "messages": MESSAGES, "input": "hi", "stream": OTHER_CLIENT_KEY},
    ],
)
def test_messages_and_responses_errors_never_echo_a_key(
    env: Env, path: str, body: dict[str, Any]
) -> None:
    """The newer client APIs build their errors in their own shapes (Anthropic's for
    Messages): the same redaction holds for them."""
    r = httpx.post(f"{env.router.base_url}/{path}", json=body, headers=env.auth, timeout=15)
    assert_no_secret(r.text)
    if r.status_code == 200:  # a field the other API has is not this one's to refuse
        assert ("max_tokens" in body) != ("max_output_tokens" in body), r.text
        return
    assert 400 <= r.status_code < 500, r.text
    error = r.json()["error"]
    if path == "messages":
        assert r.json()["type"] == "error" and error["type"].endswith("_error")


def test_a_key_in_a_header_the_router_echoes_is_not_echoed(env: Env) -> None:
    r = env.post({"model": "chat", "messages": MESSAGES}, {"x-router-policy": UPSTREAM_KEY})
    assert r.status_code == 400 and r.json()["error"]["code"] == "unknown_policy"
    assert_no_secret(r.text)
    # A wrong key is not echoed either, configured or not.
    for wrong in (f"{CLIENT_KEY}x", "sk-never-configured-123"):
        r = httpx.post(
            f"{env.router.base_url}/chat/completions",
            json={"model": wrong, "messages": MESSAGES},
            headers={"Authorization": f"Bearer {wrong}"},
            timeout=10,
        )
        assert r.status_code == 401 and wrong not in r.text


def test_an_upstream_answer_quoting_its_own_key_reaches_the_client_redacted(env: Env) -> None:
    async def quoting(fake: FakeUpstream, request: web.Request, body: dict[str, Any]) -> Any:
        text = f"my key is {request.headers.get('Authorization', '')[7:]}"
        return web.json_response(chat_body(text))

    env.up.behaviour = quoting
    try:
        r = env.post({"model": "chat", "messages": MESSAGES})
        assert r.status_code == 200
        assert r.json()["choices"][0]["message"]["content"] == "my key is ***"
        assert_no_secret(r.text)
    finally:
        env.up.behaviour = ok_json


async def quoting_stream(fake: FakeUpstream, request: web.Request, body: dict[str, Any]) -> Any:
    """A stream that quotes the upstream's own key in its opening events (as a host that
    echoes its request would) and its first token, then goes on in later reads."""
    key = request.headers.get("Authorization", "")[7:]
    if request.path.endswith("/responses"):
        return await _quoting_responses_stream(request, key)
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    await resp.write(chunk(delta={"role": "assistant", "content": ""}, model=f"echo-{key}"))
    await resp.write(chunk(f"first {key} "))
    await asyncio.sleep(0.05)  # separate reads, after the first token
    await resp.write(chunk("middle "))
    await asyncio.sleep(0.05)
    await resp.write(chunk("last", finish="stop") + b"data: [DONE]\n\n")
    return resp


def _responses_event(kind: str, **fields: Any) -> bytes:
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **fields})}\n\n".encode()


async def _quoting_responses_stream(request: web.Request, key: str) -> web.StreamResponse:
    """The same quotes in Responses events (passed on natively)."""
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    done = {"id": "resp_1", "status": "completed", "output": [], "usage": {
        "input_tokens": 3, "output_tokens": 4, "total_tokens": 7}}  # fmt: skip
    await resp.write(_responses_event("response.created", response={"id": "r", "user": key}))
    await resp.write(_responses_event("response.output_text.delta", delta=f"first {key} "))
    await asyncio.sleep(0.05)
    await resp.write(_responses_event("response.output_text.delta", delta="middle "))
    await asyncio.sleep(0.05)
    last = _responses_event("response.output_text.delta", delta="last")
    await resp.write(last + _responses_event("response.completed", response=done))
    return resp


@pytest.mark.parametrize(
    ("path", "route"),
    [
        ("chat/completions", "chat"),  # passed through as the host sent it
        ("messages", "chat"),  # translated from chat, event by event
        ("responses", "chat"),  # passed through
        ("responses", "chat-only"),  # translated from chat
    ],
)
def test_a_stream_quoting_the_upstreams_own_key_up_to_its_first_token_is_redacted(
    env: Env, path: str, route: str
) -> None:
    """What the router holds up to the first token is searched for the key once; later
    reads are not (a search per read is 4-6% of a stream's work: docs/limits.md)."""
    env.up.behaviour = quoting_stream
    body: dict[str, Any] = {"model": route, "stream": True}
    body.update({"input": "hi"} if path == "responses" else {"messages": MESSAGES, "max_tokens": 8})
    try:
        with httpx.stream(
            "POST", f"{env.router.base_url}/{path}", json=body, headers=env.auth, timeout=15
        ) as r:
            text = "".join(r.iter_text())
            assert r.status_code == 200, text
    finally:
        env.up.behaviour = ok_json
    assert_no_secret(text)
    assert "first *** " in text, text  # redacted in place, nothing else lost
    assert "middle" in text and "last" in text


# -- a stream that turns to garbage after its first token ----------------------------------


def garbage_after_first_token(tail: bytes) -> Any:
    async def behaviour(fake: FakeUpstream, request: web.Request, body: dict[str, Any]) -> Any:
        resp = await open_stream(request)
        await resp.write(chunk("first "))
        await resp.write(chunk("second "))
        await asyncio.sleep(0.2)  # the first token has gone to the client: no failover now
        await resp.write(tail)
        await resp.write(chunk("never "))
        await resp.write(chunk(finish="stop"))
        await resp.write(b"data: [DONE]\n\n")
        return resp

    return behaviour


@pytest.mark.parametrize(
    "tail",
    [
        b"data: <html>502 Bad Gateway</html>\n\n",
        b'data: {"choices": [{"delta": {"content": "cut\n\n',
        b'data: {"error": {"message": "model overloaded", "type": "server_error"}}\n\n',
        b'data: {"error":{"message":"internal"}}\n\ndata: [DONE]\n\n',
        b"data: [1, 2, 3]\n\n",
    ],
)
def test_invalid_events_after_the_first_token_end_the_stream_as_broken(
    env: Env, tail: bytes
) -> None:
    env.other.behaviour = garbage_after_first_token(tail)
    rid = f"garbage-{abs(hash(tail))}"
    body = {"model": "keyless", "messages": MESSAGES, "stream": True}
    try:
        with httpx.stream(
            "POST",
            f"{env.router.base_url}/chat/completions",
            json=body,
            headers={**env.auth, "x-request-id": rid},
            timeout=15,
        ) as r:
            text = "".join(r.iter_text())
    finally:
        env.other.behaviour = ok_json
    events = [e[5:].strip() for e in text.split("\n\n") if e.startswith("data:")]
    assert "first" in text and "never" not in text
    assert "[DONE]" not in events
    last = json.loads(events[-1])
    assert last["error"]["code"] == "stream_broken"
    for e in events[:-1]:  # what went out before the error event is valid
        assert "error" not in json.loads(e)
    assert "<html>" not in text and '"cut' not in text
    assert poll(lambda: env.request_line(rid) is not None, timeout=5)
    line = env.request_line(rid)
    assert line is not None and line["status"] == 502 and line["error"] == "stream_broken"


# -- a stream the client got whole ---------------------------------------------------------


async def done_then_linger(fake: FakeUpstream, request: web.Request, body: dict[str, Any]) -> Any:
    """[DONE], then the upstream keeps its body open a while before ending it."""
    resp = await open_stream(request)
    await resp.write(chunk("all "))
    await resp.write(chunk("here ", finish="stop"))
    await resp.write(b"data: [DONE]\n\n")
    await asyncio.sleep(1.0)
    return resp


def _read_to_done_and_hang_up(env: Env, rid: str) -> None:
    payload = json.dumps({"model": "keyless", "messages": MESSAGES, "stream": True}).encode()
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {CLIENT_KEY}\r\nx-request-id: {rid}\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", env.router.port), timeout=5) as s:
        s.sendall(head + payload)
        seen = b""
        deadline = time.monotonic() + 5
        while b"[DONE]" not in seen and time.monotonic() < deadline:
            data = s.recv(65536)
            if not data:
                break
            seen += data
        assert b"[DONE]" in seen
    # Closed at once: the router may still be reading the upstream's end.


def test_a_stream_delivered_whole_is_a_200_however_fast_the_client_hangs_up(env: Env) -> None:
    env.other.behaviour = done_then_linger
    try:
        rids = [f"whole-{i}-{time.monotonic_ns()}" for i in range(3)]
        for rid in rids:
            _read_to_done_and_hang_up(env, rid)
        assert poll(lambda: all(env.request_line(r) for r in rids), timeout=10)
    finally:
        env.other.behaviour = ok_json
    for rid in rids:
        line = env.request_line(rid)
        assert line is not None
        assert (line["status"], line["error"]) == (200, None), line
