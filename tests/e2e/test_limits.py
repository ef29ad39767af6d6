"""Bounds the whole service holds against clients and upstreams that misbehave (issue 16's
HTTP-layer defects), over real sockets to one router with a fake upstream behind it:

- header values that are not UTF-8 never fail a request, nor skip its log row and metrics;
  a garbled key is a 401;
- an upstream that sends one byte at a time cannot hold a request past ``total_s``;
- a non-streamed answer over ``max_answer_mb`` is that endpoint's failure: the request
  fails over;
- after a stream broken by its upstream, a client that pools connections (aiohttp) loses
  none of its next requests;
- silent connections are closed within ``client_timeout_s`` and, at ``max_connections``,
  make room for clients that send requests.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.e2e.test_http import Conn, chat_request, request
from tests.support import (
    FakeUpstream,
    RouterProcess,
    chunk,
    ok_json,
    open_stream,
    poll,
    reset_mid_stream,
)

KEY = "limits-key"
AUTH = ("Authorization", f"Bearer {KEY}")
CLIENT_TIMEOUT_S = 0.3
MAX_CONNECTIONS = 40


async def trickle_json(request: web.Request) -> web.StreamResponse:
    body = json.dumps({"choices": [{"message": {"content": "x" * 400}}]}).encode()
    resp = web.StreamResponse(headers={"Content-Type": "application/json"})
    resp.content_length = len(body)
    await resp.prepare(request)
    for byte in body:  # 400+ bytes at 20 per second: 20 s, were nothing to stop it
        await resp.write(bytes([byte]))
        await asyncio.sleep(0.05)
    return resp


async def trickle_stream(request: web.Request) -> web.StreamResponse:
    resp = await open_stream(request)
    await resp.write(chunk("first "))
    for byte in chunk("x" * 400):  # never a whole event again, one byte a chunk
        await resp.write(bytes([byte]))
        await asyncio.sleep(0.05)
    return resp


async def two_tokens_then_silence(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    # The role chunk and the first two tokens in one write (one read at the router).
    role = chunk(delta={"role": "assistant", "content": ""})
    await resp.write(role + chunk("one ") + chunk("two "))
    await asyncio.sleep(30)
    return resp


async def too_big(request: web.Request) -> web.StreamResponse:
    return web.json_response({"data": "x" * 8000})  # over max_answer_mb (4 KB)


async def dispatch(fake: FakeUpstream, req: web.Request, body: dict[str, Any]) -> Any:
    """The fake's answer by the upstream model the route asked for."""
    model = body.get("model")
    if model == "trickle":
        return await (trickle_stream(req) if body.get("stream") else trickle_json(req))
    if model == "stall":
        return await two_tokens_then_silence(req)
    if model == "big":
        return await too_big(req)
    if model == "broken":
        return await reset_mid_stream(fake, req, body)
    return await ok_json(fake, req, body)


@dataclass
class Env:
    router: RouterProcess
    fake: FakeUpstream
    db: Path

    def log_record(self, request_id: str) -> dict[str, Any] | None:
        for rec in self.router.logs():
            if rec.get("event") == "request" and rec.get("request_id") == request_id:
                return rec
        return None

    def db_statuses(self, request_id: str) -> list[int]:
        """The request log's rows for ``request_id`` (none while its writer is starting)."""
        try:
            with sqlite3.connect(self.db) as db:
                query = "SELECT status FROM requests WHERE request_id = ?"
                return [row[0] for row in db.execute(query, (request_id,))]
        except sqlite3.OperationalError:  # not migrated yet
            return []

    def served_200(self) -> int:
        """router_requests_total with status 200, summed over routes and endpoints."""
        text = Conn(self.router.port).exchange(request("GET", "/metrics")).body.decode()
        return sum(
            int(float(line.rsplit(" ", 1)[1]))
            for line in text.splitlines()
            if line.startswith("router_requests_total{") and 'status="200"' in line
        )


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("limits")
    db = tmp / "log.db"
    with FakeUpstream(behaviour=dispatch) as fake:
        config = f"""
storage: {{url: "sqlite+aiosqlite:///{db}", flush_interval_s: 0.05}}
server:
  api_keys_env: LIMITS_KEYS
  admin_key_env: null
  client_timeout_s: {CLIENT_TIMEOUT_S}
  max_connections: {MAX_CONNECTIONS}
defaults:
  retry: {{attempts: 2, backoff_s: 0.01, backoff_max_s: 0.02}}
providers:
  main: {{kind: openai, base_url: '{fake.base_url}'}}
  small: {{kind: openai, base_url: '{fake.base_url}', max_answer_mb: 0.004}}
routes:
  chat:
    endpoints: [{{provider: main, model: up-model}}]
  slow:
    timeouts: {{ttft_s: 5, idle_s: 5, total_s: 1}}
    retry: {{attempts: 1}}
    endpoints: [{{provider: main, model: trickle}}]
  stall:
    timeouts: {{ttft_s: 10, idle_s: 0.5, total_s: 20}}
    retry: {{attempts: 1}}
    endpoints: [{{provider: main, model: stall}}]
  big:
    policy: priority
    endpoints: [{{provider: small, model: big}}, {{provider: main, model: up-model}}]
  broken:
    endpoints: [{{provider: main, model: broken}}]
"""
        with RouterProcess(config, tmp, env={"LIMITS_KEYS": KEY}) as router:
            yield Env(router, fake, db)


def raw(name: bytes, value: bytes) -> bytes:
    return name + b": " + value


def chat_head(*fields: bytes, body: bytes, path: bytes = b"/v1/chat/completions") -> bytes:
    lines = [b"POST " + path + b" HTTP/1.1", b"Host: 127.0.0.1", *fields]
    lines.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


# -- header values ------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize(
    ("field", "shown"),
    [
        (raw(b"X-Request-Id", b"rid-a\xff"), "rid-a\ufffd"),
        (raw(b"X-Request-Id", b"rid-\xc3\x28\xfe"), "rid-\ufffd(\ufffd"),
        (raw(b"X-Custom", b"\xff\xfe\xfd"), None),
    ],
    ids=["request-id", "request-id-bad-utf8", "any-header"],
)
def test_a_header_value_that_is_not_utf8_fails_nothing(
    env: Env, stream: bool, field: bytes, shown: str | None
) -> None:
    before = env.served_200()
    auth = raw(b"Authorization", f"Bearer {KEY}".encode())
    with Conn(env.router.port) as c:
        answer = c.exchange(chat_head(auth, field, body=chat_request(stream=stream)))
    assert answer.status == 200, answer.body
    request_id = answer.header("x-request-id")
    assert request_id is not None
    if shown is not None:
        # The head is UTF-8: what the client sees is the id as the router read it.
        assert request_id.encode("latin-1").decode("utf-8") == shown
        request_id = shown
    assert poll(lambda: env.log_record(request_id) is not None, timeout=5)
    record = env.log_record(request_id)
    assert record is not None and record["status"] == 200
    assert poll(lambda: env.db_statuses(request_id) == [200], timeout=15)
    assert env.served_200() == before + 1


@pytest.mark.parametrize(
    "field",
    [
        raw(b"Authorization", b"Bearer " + KEY.encode() + b"\xff"),
        raw(b"Authorization", b"Bearer \xff\xfe\xfd"),
        raw(b"Authorization", b"\xc3\x28"),
        raw(b"X-Api-Key", b"\xff" + KEY.encode()),
    ],
    ids=["key-plus-byte", "bytes", "no-scheme", "x-api-key"],
)
@pytest.mark.parametrize("path", [b"/v1/chat/completions", b"/v1/messages", b"/v1/responses"])
def test_a_key_that_is_not_utf8_is_a_401(env: Env, field: bytes, path: bytes) -> None:
    """In every client API (Anthropic's shape on /v1/messages: ``error.type`` alike)."""
    with Conn(env.router.port) as c:
        answer = c.exchange(chat_head(field, body=chat_request(), path=path))
        assert answer.status == 401, answer.body
        assert json.loads(answer.body)["error"]["type"] == "authentication_error"
        assert c.is_open()  # a refusal, not a failure: the connection serves on


# -- an upstream one byte at a time -------------------------------------------------------------


def test_a_trickled_answer_is_cut_at_total_s(env: Env) -> None:
    started = time.monotonic()
    with Conn(env.router.port, timeout=15) as c:
        body = json.dumps({"model": "slow", "messages": [{"role": "user", "content": "x"}]})
        answer = c.exchange(request("POST", "/v1/chat/completions", body.encode(), headers=[AUTH]))
    took = time.monotonic() - started
    assert answer.status == 504, answer.body
    [attempt] = json.loads(answer.body)["error"]["attempts"]
    assert attempt["reason"] == "total_timeout"
    assert took < 4, took  # total_s is 1; the trickle would take 20 s


def test_a_trickled_stream_is_cut_at_total_s(env: Env) -> None:
    started = time.monotonic()
    with Conn(env.router.port, timeout=15) as c:
        body = json.dumps(
            {"model": "slow", "stream": True, "messages": [{"role": "user", "content": "x"}]}
        )
        answer = c.exchange(request("POST", "/v1/chat/completions", body.encode(), headers=[AUTH]))
    took = time.monotonic() - started
    assert answer.status == 200
    events = [e for e in answer.body.decode().split("\n\n") if e.startswith("data: ")]
    assert any('"first "' in event for event in events[:-1])  # the token went out
    error = json.loads(events[-1][6:])["error"]
    assert error["code"] == "stream_broken"
    assert "total_timeout" in error["message"]
    assert took < 4, took


def test_a_stall_after_two_tokens_read_at_once_is_cut_at_idle_s(env: Env) -> None:
    """The first token and the next arrive in one read; then nothing. The idle timeout,
    set once the first token is in, holds from then (0.5 s), not the first-token bound
    that was running (10 s)."""
    started = time.monotonic()
    with Conn(env.router.port, timeout=15) as c:
        body = json.dumps(
            {"model": "stall", "stream": True, "messages": [{"role": "user", "content": "x"}]}
        )
        answer = c.exchange(request("POST", "/v1/chat/completions", body.encode(), headers=[AUTH]))
    took = time.monotonic() - started
    assert answer.status == 200
    events = [e for e in answer.body.decode().split("\n\n") if e.startswith("data: ")]
    assert '"two "' in events[-2]  # both tokens went out
    error = json.loads(events[-1][6:])["error"]
    assert error["code"] == "stream_broken"
    assert "idle_timeout" in error["message"]
    assert took < 5, took  # idle_s is 0.5; the first-token bound 10


# -- the size of an answer ------------------------------------------------------------------


def test_an_answer_over_max_answer_mb_fails_over(env: Env) -> None:
    body = json.dumps({"model": "big", "messages": [{"role": "user", "content": "x"}]})
    with Conn(env.router.port) as c:
        answer = c.exchange(request("POST", "/v1/chat/completions", body.encode(), headers=[AUTH]))
    assert answer.status == 200, answer.body
    assert answer.header("x-router-attempts") == "2"
    assert answer.json()["choices"][0]["message"]["content"] == "hello from fake"
    request_id = answer.header("x-request-id") or ""
    assert poll(lambda: env.log_record(request_id) is not None, timeout=5)
    record = env.log_record(request_id)
    assert record is not None
    assert any(f.endswith(":answer_too_large") for f in record["failed"]), record


# -- a broken stream, then the next request on the same connection -------------------------


def test_a_client_that_pools_connections_loses_nothing_after_broken_streams(env: Env) -> None:
    """aiohttp reuses a connection whose answer ended whole: after each broken stream
    (error event, then the answer's end) its next request goes on the same connection,
    and must be served. 20 of 20."""

    async def main() -> tuple[int, int]:
        broken = ok = 0
        connector = aiohttp.TCPConnector(limit=1)  # one connection, reused throughout
        async with aiohttp.ClientSession(
            f"http://127.0.0.1:{env.router.port}",
            connector=connector,
            headers={"Authorization": f"Bearer {KEY}"},
            timeout=aiohttp.ClientTimeout(total=20),
        ) as session:
            messages = [{"role": "user", "content": "x"}]
            for _ in range(20):
                async with session.post(
                    "/v1/chat/completions",
                    json={"model": "broken", "stream": True, "messages": messages},
                ) as resp:
                    text = await resp.text()
                    broken += '"stream_broken"' in text and "[DONE]" not in text
                async with session.post(
                    "/v1/chat/completions", json={"model": "chat", "messages": messages}
                ) as resp:
                    ok += resp.status == 200 and (await resp.json())["object"] == "chat.completion"
        return broken, ok

    broken, ok = asyncio.run(asyncio.wait_for(main(), 60))
    assert (broken, ok) == (20, 20)


# -- silent connections and the cap ---------------------------------------------------------


def test_silent_connections_cannot_lock_clients_out(env: Env) -> None:
    silent = [
        socket.create_connection(("127.0.0.1", env.router.port), timeout=5)
        for _ in range(MAX_CONNECTIONS + 20)
    ]
    try:
        # At the cap the longest-idle connection makes room: a client with a request
        # gets in and is served while all of those sit there.
        with Conn(env.router.port) as c:
            data = request("POST", "/v1/chat/completions", chat_request(), headers=[AUTH])
            answer = c.exchange(data)
            assert answer.status == 200, answer.body

        def closed(sock: socket.socket) -> bool:
            try:
                return sock.recv(1) == b""
            except ConnectionResetError:
                return True

        # And each is closed within twice client_timeout_s, having sent nothing.
        deadline = time.monotonic() + 10 * CLIENT_TIMEOUT_S + 2
        for sock in silent:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            assert closed(sock)
    finally:
        for sock in silent:
            sock.close()
