"""Fuzzing what upstreams answer to the newer client APIs: ``/v1/messages`` passed through
to a host speaking Messages, translated to a chat host, and ``/v1/responses`` passed
through and translated to a chat host. As ``test_upstream_answers`` (whose raw-socket
upstream and wire scripts this reuses) does for chat: a raw upstream first, answering
bytes hypothesis drew in the host's API (events and whole answers, with garbage, the
host's own error events, cuts, any status, framing and pace), a well-behaved one second.

Whatever the first does, the client gets within ``total_s`` and a margin: a valid answer,
a 4xx the upstream blamed on the request, a classified 502, or a stream that ends either
with its API's own end or, once, with its API's broken ending (Anthropic's ``event:
error``; Responses' ``error`` and ``response.failed``), with nothing that is not a JSON
event before it. Never a 5xx other than that 502, never a hang.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fakes.hosts import HOSTS, dispatch, event
from tests.fuzz.test_upstream_answers import (
    CLIENT_FAULT,
    DEFAULTS,
    GARBAGE,
    MARGIN_S,
    REASONS,
    RETRY_ON,
    TOTAL_S,
    RawUpstream,
    Rig,
    Script,
    data_events,
    logged_total_timeout,
    scripts,
    spent_its_total,
)
from tests.support import FakeUpstream, RouterProcess

# (client path, route, the raw host's API): every way such a request is served.
WAYS = {
    "messages-native": ("/v1/messages", "fuzz-anth", "messages"),
    "messages-via-chat": ("/v1/messages", "fuzz-chat", "chat"),
    "responses": ("/v1/responses", "fuzz-chat", "responses"),
    "responses-via-chat": ("/v1/responses", "fuzz-chatonly", "chat"),
}
HOST_ERRORS = {
    "chat": [b'data: {"error": {"message": "overloaded"}}\n\n'],
    "messages": [
        event("error", error={"type": "overloaded_error", "message": "Overloaded"}),
        b'event: ping\ndata: {"type": "ping"}\n\n',
    ],
    "responses": [
        event("error", code="server_error", message="boom", param=None),
        event("response.failed", response={"status": "failed", "error": {"message": "x"}}),
        event("response.in_progress", response={"id": "r", "error": None}),
    ],
}


def sse_bodies(api: str, min_tokens: int = 0) -> st.SearchStrategy[bytes]:
    host = HOSTS[api]

    @st.composite
    def bodies(draw: st.DrawFn) -> bytes:
        tokens = draw(st.integers(min_tokens, 4))
        data = [host.prelude, *(host.token(f"t{i} ") for i in range(tokens))]
        if draw(st.integers(0, 4)):
            data.append(host.end)  # mostly ended as the API ends a stream
        garbage = [*GARBAGE, *HOST_ERRORS[api]]
        for _ in range(draw(st.integers(0, 2))):
            # Mostly after the first token, where it can no longer fail over.
            low = draw(st.sampled_from([0, 2, 2]))
            at = draw(st.integers(min(low, len(data)), len(data)))
            data.insert(at, draw(st.sampled_from(garbage)))
        body = b"".join(data)
        if draw(st.booleans()):
            body = body.replace(b"\n", b"\r\n")
        if draw(st.integers(0, 4)) == 0:
            body = body[: draw(st.integers(0, len(body)))]  # cut anywhere
        return body

    return bodies()


def json_bodies(api: str) -> st.SearchStrategy[bytes]:
    answer = json.dumps(HOSTS[api].answer("raw")).encode()
    return st.sampled_from(
        [
            answer,
            answer[:40],
            b"not json at all",
            b"[]",
            b'{"type": "error", "error": {"type": "api_error", "message": "bad"}}',
            b'{"error": {"message": "bad", "type": "x"}}',
            b'{"status": "failed", "error": {"message": "x"}, "output": []}',
            b"",
            answer.replace(b'"input_tokens": 3', b'"input_tokens": 1180591620717411303424'),
        ]
    )


@st.composite
def streams(draw: st.DrawFn, api: str) -> Script:
    """A 200 stream with at least one token, framed as hosts frame streams (chunked, or
    to the connection's close), in pieces at some pace: the wire scripts above reach
    past a first token only now and then, and that is where a stream can go wrong late."""
    body = draw(sse_bodies(api, min_tokens=1))
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
    if draw(st.booleans()):
        head += b"Transfer-Encoding: chunked\r\n"
        body = b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n"
    wire = head + b"\r\n" + body
    cuts = sorted(set(draw(st.lists(st.integers(len(head), len(wire)), max_size=4))))
    parts = [wire[a:b] for a, b in zip([0, *cuts], [*cuts, len(wire)], strict=True)]
    pauses = st.sampled_from([0.0, 0.0, 0.0, 0.01, 0.05, 0.5])
    return Script([(p, draw(pauses)) for p in parts if p], hang=draw(st.integers(0, 3)) == 0)


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    tmp = tmp_path_factory.mktemp("fuzz-upstream-apis")
    with ExitStack() as stack:
        raw = stack.enter_context(RawUpstream())
        good = stack.enter_context(FakeUpstream(behaviour=dispatch))
        raw_url = f"http://127.0.0.1:{raw.port}/v1"
        (tmp / "routes.yaml").write_text(
            DEFAULTS + f"  raw: {{kind: openai, base_url: '{raw_url}'}}\n"
            f"  good: {{kind: openai, base_url: '{good.base_url}'}}\n"
            f"  raw-anth: {{kind: anthropic, base_url: '{raw_url}'}}\n"
            f"  good-anth: {{kind: anthropic, base_url: '{good.base_url}'}}\n"
            f"  raw-chat: {{kind: openai, base_url: '{raw_url}', apis: [chat]}}\n"
            f"  good-chat: {{kind: openai, base_url: '{good.base_url}', apis: [chat]}}\n"
            "policies:\n  first: {strategy: priority}\n"
            "routes:\n"
            "  fuzz-chat: {policy: first, endpoints: [{provider: raw, model: m},"
            " {provider: good, model: ok}]}\n"
            "  fuzz-anth: {policy: first, endpoints: [{provider: raw-anth, model: m},"
            " {provider: good-anth, model: ok}]}\n"
            "  fuzz-chatonly: {policy: first, endpoints: [{provider: raw-chat, model: m},"
            " {provider: good-chat, model: ok}]}\n"
        )
        router = stack.enter_context(RouterProcess(tmp / "routes.yaml", tmp))
        client = stack.enter_context(httpx.Client(timeout=TOTAL_S + 10))
        yield Rig(router, raw, client)


def request_body(path: str, route: str, stream: bool) -> dict[str, Any]:
    if path.endswith("responses"):
        return {"model": route, "input": "hi", "stream": stream}
    return {"model": route, "max_tokens": 16, "stream": stream, "messages": [
        {"role": "user", "content": "hi"}]}  # fmt: skip


def check_stream(way: str, text: str) -> None:
    """Ended with the API's end, or once with its broken ending; only JSON events before."""
    events = data_events(text)
    assert events, text[:300]
    objs = [json.loads(e) for e in events]  # nothing that is not JSON went out
    assert all(isinstance(o, dict) for o in objs), text[-600:]
    kinds = [o.get("type") for o in objs]
    if way.startswith("messages"):
        if kinds[-1] == "error":  # broken: Anthropic's error event ends it
            assert kinds.count("error") == 1 and "message_stop" not in kinds, text[-600:]
        else:
            assert kinds[-1] == "message_stop" and "error" not in kinds, text[-600:]
        return
    if kinds[-1] == "response.failed":  # broken: the router's error and response.failed
        assert kinds[-2] == "error" and kinds.count("error") == 1, text[-600:]
        assert objs[-1]["response"]["error"]["code"] == "stream_broken", text[-600:]
        assert kinds.count("response.failed") == 1, text[-600:]
        assert "response.completed" not in kinds, text[-600:]  # no end before the break
    else:
        assert kinds[-1] in ("response.completed", "response.incomplete"), text[-600:]
        assert "error" not in kinds and "response.failed" not in kinds, text[-600:]


def check(rig: Rig, way: str, stream: bool, status: int, headers: Any, text: str) -> None:
    if status == 502:
        # No failover only for a status the route does not retry on, which the answer names.
        last = json.loads(text)["error"]["attempts"][-1]
        assert last["endpoint"].startswith("raw") and last["reason"].startswith("http_"), text
        assert last["status"] not in RETRY_ON, text[:300]
        return
    if status == 504:
        assert spent_its_total(text), text[:300]
        return
    if status != 200:
        assert status in CLIENT_FAULT, text[:300]
        return
    assert headers["x-router-endpoint"].startswith(("raw", "good"))
    if stream:
        check_stream(way, text)
    else:
        assert isinstance(json.loads(text), dict), text[:300]


def _chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    chunk = {"id": "c", "object": "chat.completion.chunk", "model": "m", "choices": [choice]}
    return b"data: " + json.dumps(chunk).encode() + b"\r\n\r\n"


@pytest.mark.parametrize("way", ["messages-via-chat", "responses-via-chat"])
def test_a_translated_stream_ends_whole_when_its_length_cuts_the_last_crlf(
    rig: Rig, way: str
) -> None:
    """Found by the fuzzing below (this runs first, while ``raw`` is in no cooldown): a
    chat host whose Content-Length stops at ``data: [DONE]\\r``, then keeps the
    connection open. Its answer is whole (the inspector reads that [DONE] as the end), so
    the client gets its API's whole ending, not an answer that just stops (Messages'
    ``message_stop`` was missing)."""
    body = (
        _chunk({"role": "assistant", "content": ""}) + _chunk({"content": "t0 "})
        + _chunk({"content": "t1 "}) + _chunk({}, "stop") + b"data: [DONE]\r\n\r\n"
    )  # fmt: skip
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (len(body) - 3)
    rig.raw.script = Script([(head + body, 0.0)], hang=True)
    path, route, _ = WAYS[way]
    with rig.client.stream(
        "POST", f"{rig.router.url}{path}", json=request_body(path, route, True)
    ) as r:
        text = r.read().decode()
    assert r.status_code == 200 and r.headers["x-router-endpoint"].startswith("raw"), text
    check_stream(way, text)
    kinds = [json.loads(e).get("type") for e in data_events(text)]
    assert kinds[-1] == ("message_stop" if way.startswith("messages") else "response.completed")


def test_a_stream_whose_length_cuts_its_last_event_ends_broken(rig: Rig) -> None:
    """Found by the fuzzing below: a Responses host whose Content-Length stops inside its
    last event (``response.completed`` without its closing brace), then keeps the
    connection open. A cut event is no event: the client gets the broken ending, never
    the cut JSON as if it were an event."""
    body = (
        event("response.created", response={"id": "resp_1", "status": "in_progress"})
        + event("response.output_text.delta", item_id="m1", delta="t0 ")
        + event(
            "response.completed",
            response={"id": "resp_1", "status": "completed", "output": [],
                      "usage": {"input_tokens": 3, "output_tokens": 2}},
        )
    )  # fmt: skip
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
    rig.raw.script = Script([(head % (len(body) - 3) + body, 0.0)], hang=True)
    path, route, _ = WAYS["responses"]
    with rig.client.stream(
        "POST", f"{rig.router.url}{path}", json=request_body(path, route, True)
    ) as r:
        text = r.read().decode()
    assert r.status_code == 200, text
    check_stream("responses", text)


def test_nothing_after_the_first_final_event_reaches_the_client(rig: Rig) -> None:
    """Found by the fuzzing below (1,000 examples): a Responses host that sends
    ``response.failed`` after its ``response.completed``, in the same read. The stream
    ended at the first: the client gets the completed answer, not it and then the
    router's broken ending."""
    completed = {"id": "resp_1", "status": "completed", "output": [],
                 "usage": {"input_tokens": 3, "output_tokens": 2}}  # fmt: skip
    first = event("response.created", response={"id": "resp_1", "status": "in_progress"}) + event(
        "response.output_text.delta", item_id="m1", delta="t0 "
    )
    last = event("response.completed", response=completed) + event(
        "response.failed", response={"status": "failed", "error": {"message": "x"}}
    )
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n"
    # The end in a read of its own, after the first token: no failover then.
    rig.raw.script = Script([(head + first, 0.0), (last, 0.05)], hang=False)
    path, route, _ = WAYS["responses"]
    with rig.client.stream(
        "POST", f"{rig.router.url}{path}", json=request_body(path, route, True)
    ) as r:
        text = r.read().decode()
    assert r.status_code == 200 and r.headers["x-router-endpoint"].startswith("raw"), text
    check_stream("responses", text)
    kinds = [json.loads(e).get("type") for e in data_events(text)]
    assert kinds[-1] == "response.completed" and "response.failed" not in kinds, text


@settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "40")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@pytest.mark.parametrize("way", WAYS)
@given(data=st.data(), stream=st.sampled_from([True, True, False]))
def test_any_upstream_answer_ends_bounded_classified_and_failed_over(
    rig: Rig, way: str, data: st.DataObject, stream: bool
) -> None:
    path, route, api = WAYS[way]
    wire = st.one_of(scripts(sse_bodies(api), json_bodies(api)), streams(api))
    script: Script = data.draw(wire, label="script")
    rig.raw.script = script
    started = time.monotonic()
    body = request_body(path, route, stream)
    with rig.client.stream("POST", f"{rig.router.url}{path}", json=body) as r:
        text = r.read().decode("utf-8", "replace")
    took = time.monotonic() - started
    assert took < TOTAL_S + MARGIN_S, f"took {took:.1f}s"
    assert r.status_code != 500, text[:300]
    assert rig.router.proc is not None and rig.router.proc.poll() is None
    check(rig, way, stream, r.status_code, r.headers, text)


def test_every_failed_attempt_had_a_known_reason(rig: Rig) -> None:
    """Read after the fuzzing (pytest runs this file's tests in order)."""
    lines = [e for e in rig.router.logs() if e.get("event") == "request"]
    assert lines, "no request was logged"
    for line in lines:
        assert line["status"] < 500 or line["status"] == 502 or logged_total_timeout(line), line
        for failed in line.get("failed") or []:
            reason = failed.rsplit(":", 1)[1]
            assert reason in REASONS or reason.startswith("http_"), line
    assert not [e for e in rig.router.logs() if e.get("event") == "internal_error"]
