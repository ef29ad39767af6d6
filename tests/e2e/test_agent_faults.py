"""Fault drills for the agent APIs served by chat hosts: Messages and Responses clients,
translated, against real HTTP fake upstreams that fail on demand.

The native drills are in ``test_messages.py`` and ``test_responses.py``; here the same
four per API go through a translation, where a stream is rebuilt event by event and
could end cleanly on a break: failover before the first byte, the client API's own
error event after it (never its clean end), a client that leaves, and hedging; and a
host's error event before the first token, which fails over like a status would. One
router serves them all; each drill has its own route and fakes, reset per test. Waits
are bounded polls, never sleeps.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web

from tests.support import (
    Behaviour,
    FakeUpstream,
    RouterProcess,
    chunk,
    ok_json,
    open_stream,
    reset_mid_stream,
    routes_yaml,
    slow_tokens,
    status,
)

FAKES = ["fo_a", "fo_b", "br", "dc", "hg_slow", "hg_fast"]
ROUTES = """
  failover:
    policy: first
    retry: {backoff_s: 0}
    breaker: {consecutive_failures: 1000}
    endpoints: [{provider: fo_a, model: m}, {provider: fo_b, model: m}]
  broken:
    endpoints: [{provider: br, model: m}]
  leaving:
    endpoints: [{provider: dc, model: m}]
  hedged:
    policy: hedge200
    endpoints: [{provider: hg_slow, model: m}, {provider: hg_fast, model: m}]
"""
POLICIES = """policies:
  first: {strategy: priority}
  hedge200: {strategy: priority, hedge: {after_ms: 200}}
"""
# Per client API: its path, a streamed request's body, the event that ends a stream
# cleanly, and the event type of a text delta.
APIS: dict[str, tuple[str, dict[str, Any], str, str]] = {
    "messages": (
        "/v1/messages",
        {"max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]},
        "message_stop",
        "content_block_delta",
    ),
    "responses": (
        "/v1/responses",
        {"input": "hi"},
        "response.completed",
        "response.output_text.delta",
    ),
}


@pytest.fixture(scope="module")
def fakes() -> Iterator[dict[str, FakeUpstream]]:
    with ExitStack() as stack:
        yield {n: stack.enter_context(FakeUpstream(text=f"served by {n}")) for n in FAKES}


@pytest.fixture(autouse=True)
def fresh(fakes: dict[str, FakeUpstream]) -> None:
    for fake in fakes.values():
        fake.behaviour = ok_json
        fake.received.clear()
        fake.disconnected.clear()


@pytest.fixture(scope="module")
def router(
    tmp_path_factory: pytest.TempPathFactory, fakes: dict[str, FakeUpstream]
) -> Iterator[RouterProcess]:
    # Hosts of OpenAI's kind that speak only chat: every agent request is translated.
    providers = "".join(
        f"  {n}: {{kind: openai, base_url: {f.base_url}, apis: [chat]}}\n" for n, f in fakes.items()
    )
    tmp = Path(tmp_path_factory.mktemp("agent-faults"))
    (tmp / "routes.yaml").write_text(routes_yaml(ROUTES, providers, extra=POLICIES))
    with RouterProcess(tmp / "routes.yaml", tmp) as proc:
        yield proc


def events(text: str) -> list[tuple[str, dict[str, Any]]]:
    """An SSE body's (event name, data) pairs, in order."""
    out = []
    for block in text.split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "event" in lines and "data" in lines:
            out.append((lines["event"], json.loads(lines["data"])))
    return out


def text_of(api: str, seen: list[tuple[str, dict[str, Any]]]) -> str:
    delta = APIS[api][3]
    if api == "messages":
        return "".join(d["delta"].get("text", "") for e, d in seen if e == delta)
    return "".join(d["delta"] for e, d in seen if e == delta)


def stream(router: RouterProcess, api: str, route: str) -> tuple[httpx.Response, str]:
    path, body, _, _ = APIS[api]
    # No keep-alive: a broken stream's connection is closed by the router.
    with (
        httpx.Client(timeout=30, limits=httpx.Limits(max_keepalive_connections=0)) as http,
        http.stream(
            "POST", router.url + path, json={"model": route, "stream": True, **body}
        ) as resp,
    ):
        return resp, "".join(resp.iter_text())


def first_token_after(delay: float) -> Behaviour:
    async def behaviour(
        fake: FakeUpstream, request: web.Request, body: dict[str, Any]
    ) -> web.StreamResponse:
        resp = await open_stream(request)
        await asyncio.sleep(delay)
        await resp.write(chunk(fake.text) + chunk(finish="stop") + b"data: [DONE]\n\n")
        return resp

    return behaviour


@pytest.mark.parametrize("api", list(APIS))
def test_failover_before_the_first_byte(
    router: RouterProcess, fakes: dict[str, FakeUpstream], api: str
) -> None:
    fakes["fo_a"].behaviour = status(503)
    resp, text = stream(router, api, "failover")
    assert resp.status_code == 200
    assert resp.headers["x-router-endpoint"] == "fo_b" and resp.headers["x-router-attempts"] == "2"
    seen = events(text)
    assert seen[-1][0] == APIS[api][2] and text_of(api, seen).split() == ["served", "by", "fo_b"]
    # Not streamed: the same failover, and the answer in the client's shape.
    path, body, _, _ = APIS[api]
    whole = httpx.post(router.url + path, json={"model": "failover", **body}, timeout=30)
    assert whole.status_code == 200 and whole.headers["x-router-endpoint"] == "fo_b"
    assert "served by fo_b" in json.dumps(whole.json())
    assert len(fakes["fo_a"].received) == 2


async def error_event_first(
    fake: FakeUpstream, request: web.Request, body: dict[str, Any]
) -> web.StreamResponse:
    """A 200 stream whose first event, before any token, is the host's error."""
    resp = await open_stream(request)
    error = {"message": "overloaded", "type": "server_error", "code": None, "param": None}
    await resp.write(b"data: " + json.dumps({"error": error}).encode() + b"\n\n")
    return resp


@pytest.mark.parametrize("api", list(APIS))
def test_an_error_event_before_the_first_token_fails_over(
    router: RouterProcess, fakes: dict[str, FakeUpstream], api: str
) -> None:
    fakes["fo_a"].behaviour = error_event_first
    resp, text = stream(router, api, "failover")
    assert resp.headers["x-router-endpoint"] == "fo_b" and resp.headers["x-router-attempts"] == "2"
    seen = events(text)
    names = [name for name, _ in seen]
    assert names[-1] == APIS[api][2] and "error" not in names  # the client saw none of it
    assert text_of(api, seen).split() == ["served", "by", "fo_b"]


@pytest.mark.parametrize("api", list(APIS))
def test_a_break_after_the_first_byte_ends_with_the_apis_error_event(
    router: RouterProcess, fakes: dict[str, FakeUpstream], api: str
) -> None:
    fakes["br"].behaviour = reset_mid_stream
    resp, text = stream(router, api, "broken")
    assert resp.status_code == 200
    seen = events(text)
    names = [name for name, _ in seen]
    assert text_of(api, seen) == "partial answer "  # what came before the break went on
    assert APIS[api][2] not in names  # never a clean end
    if api == "messages":
        assert names[-1] == "error" and seen[-1][1]["type"] == "error"
        assert "stream_broken" in seen[-1][1]["error"]["message"]
        assert "message_delta" not in names
    else:
        assert names[-2:] == ["error", "response.failed"]
        failed = seen[-1][1]["response"]
        assert failed["status"] == "failed" and failed["error"]["code"] == "stream_broken"


@pytest.mark.parametrize("api", list(APIS))
def test_a_client_that_leaves_cancels_the_upstream(
    router: RouterProcess, fakes: dict[str, FakeUpstream], api: str
) -> None:
    fake = fakes["dc"]
    fake.behaviour = slow_tokens(0.1)
    path, body, _, delta = APIS[api]
    with (
        httpx.Client(timeout=30) as http,
        http.stream(
            "POST", router.url + path, json={"model": "leaving", "stream": True, **body}
        ) as resp,
    ):
        lines = resp.iter_lines()
        assert any(line == f"event: {delta}" for line in lines)
        assert not fake.disconnected.is_set()
    # Leaving the block closed the connection mid-stream.
    assert fake.disconnected.wait(5.0), "the upstream never saw its connection closed"


@pytest.mark.parametrize("api", list(APIS))
def test_hedging_takes_the_first_to_answer(
    router: RouterProcess, fakes: dict[str, FakeUpstream], api: str
) -> None:
    slow, fast = fakes["hg_slow"], fakes["hg_fast"]
    slow.behaviour = first_token_after(5.0)
    resp, text = stream(router, api, "hedged")  # the slow one's first token is 5 s away
    assert resp.headers["x-router-endpoint"] == "hg_fast"
    assert resp.headers["x-router-attempts"] == "2"
    seen = events(text)
    assert seen[-1][0] == APIS[api][2]
    assert text_of(api, seen).split() == ["served", "by", "hg_fast"]
    assert slow.disconnected.wait(5.0), "the losing hedge was not cancelled"
    assert len(slow.received) == len(fast.received) == 1
