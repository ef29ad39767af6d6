"""Issue 16's bounds for the newer client APIs, ``/v1/messages`` and ``/v1/responses``,
over real sockets to one router with one fake upstream behind it that speaks each host API
(chat, Messages, Responses) and misbehaves by the model it is asked for.

Each case runs for every way such a request is served: Messages passed through to a host
speaking it (``kind: anthropic``), Messages translated to a chat host, Responses passed
through and translated to a chat host; chat is in ``test_limits.py``. The cases:

- an upstream that sends one byte at a time cannot hold a request past ``total_s``,
  streamed or not;
- a stall after two tokens that came in one read is cut at ``idle_s``, not ``ttft_s``;
- a stream broken by its upstream ends with the API's own error ending, and a client that
  pools connections (aiohttp) loses none of its next requests;
- invalid events after the first token end the stream as broken, logged as such;
- header values that are not UTF-8 fail nothing, stream or not, and the request is logged;
- a small compressed body that expands past ``max_body_mb`` is a 413 in the API's shape.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from tests.e2e.test_http import Conn, request
from tests.fakes.hosts import dispatch
from tests.support import FakeUpstream, RouterProcess, poll

TOTAL_S = 1.0
IDLE_S = 0.5
MAX_BODY_MB = 0.05


# -- the router --------------------------------------------------------------------------------

# (client path, route prefix): every way a Messages or Responses request is served.
WAYS = {
    "messages-native": ("/v1/messages", "anth"),
    "messages-via-chat": ("/v1/messages", "chat"),
    "responses": ("/v1/responses", "chat"),
    "responses-via-chat": ("/v1/responses", "chatonly"),
}
BEHAVIOURS = ("trickle", "stall", "broken", "garbage", "ok")


@dataclass
class Env:
    router: RouterProcess

    def log_record(self, request_id: str) -> dict[str, Any] | None:
        for rec in self.router.logs():
            if rec.get("event") == "request" and rec.get("request_id") == request_id:
                return rec
        return None


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("limits-apis")
    routes = []
    for prefix in ("anth", "chat", "chatonly"):
        for b in BEHAVIOURS:
            routes.append(f"  {prefix}-{b}:\n    endpoints: [{{provider: {prefix}, model: {b}}}]\n")
    with FakeUpstream(behaviour=dispatch) as fake:
        config = (
            "storage: {url: null}\n"
            f"server: {{max_body_mb: {MAX_BODY_MB}}}\n"
            "defaults:\n"
            f"  timeouts: {{connect_s: 1, ttft_s: 10, idle_s: {IDLE_S}, total_s: {TOTAL_S}}}\n"
            "  retry: {attempts: 1}\n"
            "providers:\n"
            f"  chat: {{kind: openai, base_url: '{fake.base_url}'}}\n"
            f"  anth: {{kind: anthropic, base_url: '{fake.base_url}'}}\n"
            f"  chatonly: {{kind: openai, base_url: '{fake.base_url}', apis: [chat]}}\n"
            "routes:\n" + "".join(routes)
        )
        # total_s is short for the trickles; the others need the idle bound only.
        config = config.replace(f"total_s: {TOTAL_S}", "total_s: 20")
        config += "".join(
            f"  {p}-slow:\n    timeouts: {{total_s: {TOTAL_S}}}\n"
            f"    endpoints: [{{provider: {p}, model: trickle}}]\n"
            for p in ("anth", "chat", "chatonly")
        )
        with RouterProcess(config, tmp) as router:
            yield Env(router)


def body_for(path: str, route: str, stream: bool) -> bytes:
    body: dict[str, Any] = {"model": route, "stream": stream}
    if path.endswith("responses"):
        body["input"] = "hi"
    else:
        body.update(max_tokens=16, messages=[{"role": "user", "content": "hi"}])
    return json.dumps(body).encode()


def send(env: Env, way: str, behaviour: str, *, stream: bool, headers: Any = ()) -> Any:
    path, prefix = WAYS[way]
    with Conn(env.router.port, timeout=25) as c:
        data = body_for(path, f"{prefix}-{behaviour}", stream)
        return c.exchange(request("POST", path, data, headers=list(headers)))


def broken_ending(way: str, text: str) -> str:
    """The error message a broken stream ended with, in the client API's own shape:
    Anthropic's ``event: error``, or Responses' ``error`` and ``response.failed``."""
    events = [e for e in text.replace("\r\n", "\n").split("\n\n") if e.strip()]
    last = json.loads(events[-1].split("data:", 1)[1])
    if way.startswith("messages"):
        assert events[-1].startswith("event: error"), events[-1]
        assert last["type"] == "error"
        return str(last["error"]["message"])
    assert last["type"] == "response.failed", last
    assert last["response"]["error"]["code"] == "stream_broken"
    error = json.loads(events[-2].split("data:", 1)[1])
    assert error["type"] == "error"
    return str(error["message"])


# -- an upstream one byte at a time, and a stall after two tokens in one read -------------------


@pytest.mark.parametrize("way", WAYS)
def test_a_trickled_answer_is_cut_at_total_s(env: Env, way: str) -> None:
    started = time.monotonic()
    answer = send(env, way, "slow", stream=False)
    took = time.monotonic() - started
    assert answer.status == 504, answer.body
    assert b"total_timeout" in answer.body
    assert took < 4 * TOTAL_S + 1, took  # the trickle would take 20 s


@pytest.mark.parametrize("way", WAYS)
def test_a_trickled_stream_is_cut_at_total_s(env: Env, way: str) -> None:
    started = time.monotonic()
    answer = send(env, way, "slow", stream=True)
    took = time.monotonic() - started
    assert answer.status == 200
    text = answer.body.decode()
    assert "first " in text  # the first token went out
    assert "total_timeout" in broken_ending(way, text)
    assert took < 4 * TOTAL_S + 1, took


@pytest.mark.parametrize("way", WAYS)
def test_a_stall_after_two_tokens_read_at_once_is_cut_at_idle_s(env: Env, way: str) -> None:
    started = time.monotonic()
    answer = send(env, way, "stall", stream=True)
    took = time.monotonic() - started
    text = answer.body.decode()
    assert answer.status == 200 and "two " in text  # both tokens went out
    assert "idle_timeout" in broken_ending(way, text)
    assert took < 6, took  # idle_s is 0.5; the first-token bound 10


# -- broken streams -----------------------------------------------------------------------------


@pytest.mark.parametrize("way", WAYS)
def test_invalid_events_after_the_first_token_end_the_stream_as_broken(env: Env, way: str) -> None:
    rid = f"garbage-{way}-{time.monotonic_ns()}"
    answer = send(env, way, "garbage", stream=True, headers=[("x-request-id", rid)])
    text = answer.body.decode()
    assert "first " in text and "never" not in text and "<html>" not in text
    broken_ending(way, text)
    assert poll(lambda: env.log_record(rid) is not None, timeout=5)
    record = env.log_record(rid)
    assert record is not None and (record["status"], record["error"]) == (502, "stream_broken")


@pytest.mark.parametrize("way", WAYS)
def test_a_client_that_pools_connections_loses_nothing_after_broken_streams(
    env: Env, way: str
) -> None:
    """aiohttp reuses a connection whose answer ended whole: after each broken stream its
    next request goes on the same connection, and must be served. 10 of 10."""
    path, prefix = WAYS[way]

    async def main() -> tuple[int, int]:
        broken = ok = 0
        async with aiohttp.ClientSession(
            f"http://127.0.0.1:{env.router.port}",
            connector=aiohttp.TCPConnector(limit=1),  # one connection, reused throughout
            timeout=aiohttp.ClientTimeout(total=20),
        ) as session:
            for _ in range(10):
                data = body_for(path, f"{prefix}-broken", True)
                async with session.post(path, data=data) as resp:
                    text = await resp.text()
                    broken += resp.status == 200 and bool(broken_ending(way, text))
                data = body_for(path, f"{prefix}-ok", False)
                async with session.post(path, data=data) as resp:
                    ok += resp.status == 200 and "hello" in await resp.text()
        return broken, ok

    assert asyncio.run(asyncio.wait_for(main(), 60)) == (10, 10)


# -- header values that are not UTF-8 -------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("way", WAYS)
def test_a_header_value_that_is_not_utf8_fails_nothing(env: Env, way: str, stream: bool) -> None:
    path, prefix = WAYS[way]
    head = [
        b"POST " + path.encode() + b" HTTP/1.1",
        b"Host: 127.0.0.1",
        b"X-Request-Id: rid-" + way.encode() + b"-%d\xff" % stream,
        b"anthropic-version: 2023-06-01\xfe",
        b"X-Custom: \xff\xfe\xfd",
    ]
    data = body_for(path, f"{prefix}-ok", stream)
    head.append(b"Content-Length: %d" % len(data))
    with Conn(env.router.port) as c:
        answer = c.exchange(b"\r\n".join(head) + b"\r\n\r\n" + data)
    assert answer.status == 200, answer.body
    assert b"hello" in answer.body
    shown = f"rid-{way}-{int(stream)}\ufffd"
    assert poll(lambda: env.log_record(shown) is not None, timeout=5)
    record = env.log_record(shown)
    assert record is not None and record["status"] == 200 and record["stream"] is stream


# -- a compressed body past the limit once decoded ------------------------------------------------


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
@pytest.mark.parametrize("path", ["/v1/messages", "/v1/responses"])
def test_a_compressed_body_over_the_limit_once_decoded_is_a_413_in_the_apis_shape(
    env: Env, path: str, encoding: str
) -> None:
    """200 times the limit from a few hundred bytes on the wire (a zip bomb)."""
    size = int(200 * MAX_BODY_MB * 1024 * 1024)
    field = b'"input": "' if path.endswith("responses") else b'"max_tokens": 8, "messages": "'
    raw = b'{"model": "chat-ok", ' + field + b"x" * size + b'"}'
    body = gzip.compress(raw) if encoding == "gzip" else zlib.compress(raw)
    assert len(body) < 64 * 1024
    with Conn(env.router.port) as c:
        answer = c.exchange(request("POST", path, body, headers=[("Content-Encoding", encoding)]))
    assert answer.status == 413, answer.body
    obj = json.loads(answer.body)
    if path == "/v1/messages":
        assert obj["type"] == "error" and obj["error"]["type"] == "request_too_large"
    else:
        assert obj["error"]["code"] == "payload_too_large"
