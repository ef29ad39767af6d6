"""Fuzzing what upstreams answer: status lines, headers, framing, bodies, SSE, pacing.

The route ``fuzz`` tries a raw-socket upstream first, which answers each request with
bytes hypothesis drew (a status, headers, a JSON body or an SSE stream, any of them
broken, written in pieces at some pace, then closed or left hanging), and a well-behaved
upstream second. Whatever the first does, the client gets, within ``total_s`` and a
margin: the first's answer when it was a valid one, a 4xx it blamed on the request
(passed on as it came), or the second's answer after a failover; a stream that broke
after its first byte ends with one ``stream_broken`` error event. Never a 5xx, never a
hang, never a silently cut stream; every failed attempt has a known reason.

``FUZZ_EXAMPLES=400`` runs more examples than the default 70 (about 25 s), to hunt.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support import FakeUpstream, RouterProcess, free_port

TOTAL_S = 2.5
MARGIN_S = 3.0  # a loaded machine's scheduling, on top of total_s
REASONS = {
    "connect", "connect_timeout", "ttft_timeout", "idle_timeout", "total_timeout", "timeout",
    "http_5xx", "http_429", "auth", "bad_response", "stream_broken", "upstream_error",
    "answer_too_large", "http_408", "http_418", "http_301", "http_204", "http_409",
    "unsupported_field", "output_error",
}  # fmt: skip
CLIENT_FAULT = {400, 404, 413, 422}
RETRY_ON = {429, 500, 502, 503, 504}  # the default retry.on, with timeout and connect


def spent_its_total(text: str) -> bool:
    """A 504 the router may give: the fuzzed host held the request's whole ``total_s``
    (a body trickling until the deadline), so no time was left to fail over. Bounded and
    classified: ``upstream_timeout``, its last attempt a ``total_timeout``."""
    error = json.loads(text)["error"]
    return error.get("code") == "upstream_timeout" and (
        error["attempts"][-1]["reason"] == "total_timeout"
    )


def logged_total_timeout(line: dict[str, Any]) -> bool:
    """The request log line of such a 504."""
    failed = line.get("failed") or []
    return line["status"] == 504 and bool(failed) and failed[-1].endswith(":total_timeout")


@dataclass
class Script:
    pieces: list[tuple[bytes, float]]  # bytes, and the pause before them
    hang: bool  # after the last piece: keep the connection open (else close it)


@dataclass
class RawUpstream:
    """An upstream that plays ``script`` to every request, one request per connection."""

    script: Script = field(default_factory=lambda: Script([], False))
    served: int = 0
    port: int = field(default_factory=free_port)

    def __post_init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    await asyncio.wait_for(reader.readexactly(int(line[15:])), 10)
            script = self.script
            self.served += 1
            for data, pause in script.pieces:
                if pause:
                    await asyncio.sleep(pause)
                writer.write(data)
                await writer.drain()
            if script.hang:
                await asyncio.wait_for(reader.read(), 15)  # until the router lets go
        except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError):
            pass
        finally:
            writer.close()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(
            asyncio.start_server(self._handle, "127.0.0.1", self.port)
        )
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            server.close()
            self._loop.run_until_complete(server.wait_closed())
            # Handlers still running (a connection left hanging): cancel and let them end.
            tasks = asyncio.all_tasks(self._loop)
            for task in tasks:
                task.cancel()
            self._loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))

    def __enter__(self) -> RawUpstream:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


# The routes file's head for both fuzz rigs. The breaker never opens, and a rate limit or
# bad key rests a moment only: every example reaches the fuzzed upstream first.
DEFAULTS = (
    "storage: {url: null}\n"
    "defaults:\n"
    f"  timeouts: {{connect_s: 1, ttft_s: 0.6, idle_s: 0.4, total_s: {TOTAL_S}}}\n"
    "  retry: {attempts: 2, backoff_s: 0.01, backoff_max_s: 0.02}\n"
    "  breaker: {consecutive_failures: 10000, error_rate: 1.0, min_requests: 10000,"
    " cooldown_s: 0.05}\n"
    "providers:\n"
)


@dataclass
class Rig:
    router: RouterProcess
    raw: RawUpstream
    client: httpx.Client


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    tmp = tmp_path_factory.mktemp("fuzz-upstream")
    with ExitStack() as stack:
        raw = stack.enter_context(RawUpstream())
        good = stack.enter_context(FakeUpstream(text="served by good"))
        (tmp / "routes.yaml").write_text(
            DEFAULTS + f"  raw: {{kind: openai, base_url: 'http://127.0.0.1:{raw.port}/v1'}}\n"
            f"  good: {{kind: openai, base_url: '{good.base_url}'}}\n"
            "policies:\n  first: {strategy: priority}\n"
            "routes:\n  fuzz: {policy: first, endpoints: [{provider: raw, model: m},"
            " {provider: good, model: m}]}\n"
        )
        router = stack.enter_context(RouterProcess(tmp / "routes.yaml", tmp))
        client = stack.enter_context(httpx.Client(timeout=TOTAL_S + 10))
        yield Rig(router, raw, client)


# -- what the fuzzed upstream says ---------------------------------------------------------


def chunk(content: str | None = None, finish: str | None = None) -> dict[str, Any]:
    delta = {} if content is None else {"content": content}
    return {
        "id": "c",
        "object": "chat.completion.chunk",
        "model": "m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


ANSWER = {
    "id": "c",
    "object": "chat.completion",
    "model": "m",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "raw"}}],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1},
}
GARBAGE = [
    b"data: <html>oops</html>\n\n",
    b'data: {"choices": [{"delta": {"content": "cu',
    b'data: {"error": {"message": "overloaded"}}\n\n',
    b"data: [1]\n\n",
    b"\xff\xfe\x00garbage\n\n",
    b": comment only\n\n",
    b"event: ping\n\n",
]


@st.composite
def sse_bodies(draw: st.DrawFn) -> bytes:
    events = [json.dumps(chunk("")).encode()]
    events += [json.dumps(chunk(f"t{i} ")).encode() for i in range(draw(st.integers(0, 4)))]
    events.append(json.dumps(chunk(finish="stop")).encode())
    data = [b"data: " + e + b"\n\n" for e in events]
    if draw(st.booleans()):
        data.append(b"data: [DONE]\n\n")
    for _ in range(draw(st.integers(0, 2))):
        # Mostly after the first token (t0, or the finish), where it cannot fail over.
        low = draw(st.sampled_from([0, 2, 2]))
        data.insert(
            draw(st.integers(min(low, len(data)), len(data))), draw(st.sampled_from(GARBAGE))
        )
    body = b"".join(data)
    if draw(st.booleans()):
        body = body.replace(b"\n", b"\r\n")
    if draw(st.integers(0, 4)) == 0:
        body = body[: draw(st.integers(0, len(body)))]  # cut anywhere
    return body


json_bodies = st.sampled_from(
    [
        json.dumps(ANSWER).encode(),
        json.dumps(ANSWER)[:40].encode(),
        b"not json at all",
        b"[]",
        b'{"error": {"message": "bad", "type": "x"}}',
        b"",
        b'{"choices": []}',
        json.dumps({**ANSWER, "usage": {"prompt_tokens": 2**70}}).encode(),
    ]
)


@st.composite
def scripts(
    draw: st.DrawFn,
    sse: st.SearchStrategy[bytes] | None = None,
    json_answers: st.SearchStrategy[bytes] = json_bodies,
) -> Script:
    """An answer on the wire; ``sse`` and ``json_answers`` draw its body in a host API
    (chat's by default; ``test_upstream_answers_apis`` passes Messages' and Responses')."""
    kind = draw(st.sampled_from(["json", "sse", "sse", "empty"]))
    sse = sse if sse is not None else sse_bodies()
    body = draw(sse) if kind == "sse" else draw(json_answers) if kind == "json" else b""
    # Mostly 200s: what a 200 carries is where most can go wrong after the first byte.
    others = [204, 301, 400, 401, 403, 404, 408, 413, 418, 422, 429, 500, 502, 503, 504, 599]
    status = draw(st.sampled_from([200] * 20 + others))
    headers = []
    ctype = draw(
        st.sampled_from(["application/json", "text/event-stream", "text/html", None, "\xff/x"])
    )
    if ctype is not None:
        headers.append(b"Content-Type: " + ctype.encode("latin-1"))
    if draw(st.booleans()):
        headers.append(b"Retry-After: " + draw(st.sampled_from([b"0", b"0.01", b"x", b"-1"])))
    if draw(st.integers(0, 5)) == 0:
        body = gzip.compress(body)
        headers.append(b"Content-Encoding: gzip")
    framing = draw(st.sampled_from(["length", "length", "chunked", "close", "short", "long"]))
    if framing in ("length", "short", "long"):
        n = len(body) + {"length": 0, "short": -3, "long": 7}[framing]
        headers.append(b"Content-Length: %d" % max(0, n))
    elif framing == "chunked":
        headers.append(b"Transfer-Encoding: chunked")
        body = (b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n") if body else b"0\r\n\r\n"
    status_line = b"HTTP/1.1 %d X\r\n" % status
    if draw(st.integers(0, 15)) == 0:
        status_line = draw(st.sampled_from([b"HTTP/1.1 abc\r\n", b"HTTX/1.1 200\r\n", b"\r\n"]))
    wire = status_line + b"".join(h + b"\r\n" for h in headers) + b"\r\n" + body
    # Pacing: the bytes in pieces, each after a pause (most none, some past idle_s).
    cuts = sorted(set(draw(st.lists(st.integers(0, len(wire)), max_size=4))))
    parts = [wire[a:b] for a, b in zip([0, *cuts], [*cuts, len(wire)], strict=True)]
    pauses = st.sampled_from([0.0, 0.0, 0.0, 0.01, 0.05, 0.5])
    pieces = [(p, draw(pauses)) for p in parts if p]
    return Script(pieces, hang=draw(st.integers(0, 3)) == 0)


# -- the client's view ---------------------------------------------------------------------


def data_events(text: str) -> list[str]:
    out = []
    for event in text.replace("\r\n", "\n").split("\n\n"):
        lines = [ln[5:].strip() for ln in event.split("\n") if ln.startswith("data:")]
        if lines:
            out.append("\n".join(lines))
    return out


@settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "70")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(script=scripts(), stream=st.sampled_from([True, True, False]))
def test_any_upstream_answer_ends_bounded_classified_and_failed_over(
    rig: Rig, script: Script, stream: bool
) -> None:
    rig.raw.script = script
    body = {"model": "fuzz", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    started = time.monotonic()
    with rig.client.stream("POST", f"{rig.router.base_url}/chat/completions", json=body) as r:
        text = r.read().decode("utf-8", "replace")
    took = time.monotonic() - started
    assert took < TOTAL_S + MARGIN_S, f"took {took:.1f}s"
    assert r.status_code != 500, text[:300]
    assert rig.router.proc is not None and rig.router.proc.poll() is None
    if r.status_code == 502:
        # No failover only for a status the route does not retry on (retry.on), which
        # the answer names: a classified failure, not a guess.
        attempts = json.loads(text)["error"]["attempts"]
        last = attempts[-1]
        assert last["endpoint"] == "raw" and last["reason"].startswith("http_"), text[:300]
        assert last["status"] not in RETRY_ON, text[:300]
        return
    if r.status_code == 504:
        assert spent_its_total(text), text[:300]
        return
    if r.status_code != 200:
        # Only what the fuzzed upstream blamed on the request comes back as it came.
        assert r.status_code in CLIENT_FAULT, text[:300]
        return
    served_by = r.headers["x-router-endpoint"]
    assert served_by in ("raw", "good")
    if not stream:
        # A JSON object, as its upstream sent it (one with no choices is passed on too,
        # and counted as an output error in the endpoint's stats).
        obj = json.loads(text)
        assert isinstance(obj, dict) and ("choices" in obj or served_by == "good"), text[:300]
        return
    events = data_events(text)
    assert events, text[:300]
    last = events[-1]
    if last != "[DONE]":  # broken after its first byte: one error event, and the end
        assert json.loads(last)["error"]["code"] == "stream_broken", text[-300:]
        assert sum('"stream_broken"' in e for e in events) == 1
    for e in events[:-1]:
        assert e != "[DONE]", text[-600:]
        assert isinstance(json.loads(e), dict)  # nothing that is not an event went out


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
