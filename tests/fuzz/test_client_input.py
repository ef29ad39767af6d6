"""Fuzzing what clients send: bodies, headers and raw HTTP, at every endpoint.

One router process serves the whole file, behind it a fake upstream that answers every
request well in the API it was sent (chat, Responses; Messages are translated to chat),
streaming only for ``"stream": true`` as OpenAI reads it, so any failure is the router's
own. Whatever comes in, the answer is a success or a 4xx in the client API's error shape
(OpenAI's; Anthropic's on /v1/messages), never a 5xx; every exchange ends within a
bound (a hang fails the example), and the process is alive after each one. Example
counts are kept small (the file runs in well under a minute on a loaded 2-core machine);
hypothesis' database replays what failed.
"""

from __future__ import annotations

import gzip
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from router.apis import BY_PATH
from tests.fakes.hosts import dispatch
from tests.support import FakeUpstream, RouterProcess

ADMIN = "fuzz-admin-key-0123"
BOUND_S = 10.0  # no exchange may take longer (the upstream answers at once)
API_PATHS = sorted(BY_PATH)
GET_PATHS = [
    "/v1/models",
    "/v1/models/chat",
    "/health",
    "/health/live",
    "/health/ready",
    "/metrics",
    "/",
    "/admin/usage",
    "/admin/stats",
]
SETTINGS = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterProcess]:
    tmp = tmp_path_factory.mktemp("fuzz-client")
    with FakeUpstream(behaviour=dispatch) as fake:
        config = tmp / "routes.yaml"
        config.write_text(
            "storage: {url: null}\n"
            "server: {admin_key_env: ROUTER_ADMIN_KEY, max_body_mb: 0.25}\n"
            "defaults:\n  timeouts: {connect_s: 1, ttft_s: 3, idle_s: 3, total_s: 5}\n"
            f"providers:\n  up: {{kind: openai, base_url: '{fake.base_url}'}}\n"
            "routes:\n  chat: {endpoints: [{provider: up, model: m}]}\n"
        )
        with RouterProcess(config, tmp, env={"ROUTER_ADMIN_KEY": ADMIN}) as proc:
            yield proc


def error_shape(path: str, body: bytes) -> None:
    """A 4xx body in the client API's shape, with a message."""
    obj = json.loads(body)
    if path == "/v1/messages":  # Anthropic's shape, or OpenAI's before the API is known
        assert obj.get("type") == "error" or "error" in obj, obj
    err = obj["error"]
    assert isinstance(err, dict), obj
    assert isinstance(err.get("message"), str) and err["message"], obj
    assert isinstance(err.get("type"), str), obj


def check(router: RouterProcess, path: str, status: int, body: bytes, took: float) -> None:
    assert took < BOUND_S, f"{path} took {took:.1f}s"
    assert status < 500, f"{path} answered {status}: {body[:300]!r}"
    if 400 <= status < 500:
        error_shape(path, body)
    assert router.proc is not None and router.proc.poll() is None, "the router died"


def alive(router: RouterProcess) -> None:
    r = httpx.get(f"{router.url}/health/live", timeout=5)
    assert r.status_code == 200


# -- bodies ------------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
FIELDS = [
    "model", "messages", "stream", "temperature", "max_tokens", "tools", "tool_choice",
    "stream_options", "response_format", "provider", "n", "stop", "input", "prompt",
    "instructions", "thinking", "reasoning", "reasoning_effort", "max_output_tokens",
    "system", "encoding_format", "prompt_cache_key", "metadata",
]  # fmt: skip


def valid_body(path: str) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "chat"}
    if path.endswith("chat/completions"):
        body["messages"] = [{"role": "user", "content": "hi"}]
    elif path.endswith("/completions"):
        body["prompt"] = "hi"
    elif path.endswith(("embeddings", "responses")):
        body["input"] = "hi"
    else:  # messages
        body.update(max_tokens=16, messages=[{"role": "user", "content": "hi"}])
    return body


@st.composite
def mutated_bodies(draw: st.DrawFn) -> tuple[str, bytes, dict[str, str]]:
    """A valid body for one API with a few fields set to arbitrary JSON (or removed)."""
    path = draw(st.sampled_from(API_PATHS))
    body = valid_body(path)
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        field = draw(st.sampled_from(FIELDS))
        if draw(st.booleans()) and field in body:
            del body[field]
        else:
            body[field] = draw(json_values)
    return path, json.dumps(body).encode(), {"Content-Type": "application/json"}


raw_bodies = st.tuples(
    st.sampled_from(API_PATHS),
    st.one_of(
        st.binary(max_size=300),
        json_values.map(lambda v: json.dumps(v).encode()),
        st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
        st.just(b"{" * 5000),  # deep nesting
        st.just(b"[" * 100_000),
        st.just(
            b'{"model": "chat", "messages": [' + b'{"role": "user", "content": "x"},' * 20 + b"]"
        ),
    ),
    st.just({"Content-Type": "application/json"}),
)


@SETTINGS
@given(case=st.one_of(mutated_bodies(), raw_bodies))
def test_any_body_gets_a_success_or_a_4xx_in_the_apis_shape(
    router: RouterProcess, case: tuple[str, bytes, dict[str, str]]
) -> None:
    path, body, headers = case
    started = time.monotonic()
    r = httpx.post(f"{router.url}{path}", content=body, headers=headers, timeout=BOUND_S)
    check(router, path, r.status_code, r.content, time.monotonic() - started)


# -- headers -----------------------------------------------------------------------------

header_names = st.sampled_from(
    [
        "x-request-id",
        "x-router-policy",
        "Authorization",
        "x-api-key",
        "Content-Type",
        "Content-Encoding",
        "Accept",
        "Accept-Encoding",
        "x-session-id",
        "anthropic-version",
        "anthropic-beta",
        "Expect",
        "Connection",
        "x-claude-code-session-id",
        "session_id",
    ]
) | st.text(alphabet="abcdefghijklmnopqrstuvwxyz-_0123456789", min_size=1, max_size=20)
# Header values as bytes a client could put on the wire: any byte but CR, LF and NUL.
header_values = st.binary(max_size=60).map(
    lambda b: b.replace(b"\r", b"").replace(b"\n", b"").replace(b"\x00", b"")
)
# Values RFC 9110 allows (visible ASCII, space, tab, and obs-text: any byte from 0x80,
# so bytes that are not UTF-8): no such value may fail a request.
field_values = st.lists(
    st.integers(min_value=0x20, max_value=0xFF).filter(lambda b: b != 0x7F) | st.just(9),
    max_size=60,
).map(lambda bs: bytes(bs).strip(b" \t"))


@st.composite
def raw_requests(draw: st.DrawFn) -> bytes:
    """A request built as bytes: method, target, headers and body, any of them odd."""
    method = draw(
        st.sampled_from([b"POST", b"GET", b"HEAD", b"PUT", b"DELETE", b"OPTIONS", b"PATCH"])
    )
    path = draw(
        st.sampled_from([*API_PATHS, *GET_PATHS, "/admin/reload", "/v1/models/%ff", "/%00"])
        | st.text(alphabet="/abcdefghij%0123456789?&=.", max_size=40).map(lambda t: "/" + t)
    ).encode()
    body = json.dumps(valid_body(draw(st.sampled_from(API_PATHS)))).encode()
    if draw(st.booleans()):
        body = draw(st.binary(max_size=200))
    lines = [b"Host: fuzz"]
    for _ in range(draw(st.integers(min_value=0, max_value=5))):
        lines.append(draw(header_names).encode() + b": " + draw(header_values))
    framing = draw(
        st.sampled_from(["length", "chunked", "bad-chunked", "gzip", "none", "wrong-length"])
    )
    if framing == "length":
        lines.append(b"Content-Length: %d" % len(body))
    elif framing == "wrong-length":
        lines.append(
            b"Content-Length: %d" % draw(st.integers(min_value=0, max_value=len(body) + 5))
        )
    elif framing == "gzip":
        body = gzip.compress(body)
        lines += [b"Content-Encoding: gzip", b"Content-Length: %d" % len(body)]
    elif framing in ("chunked", "bad-chunked"):
        lines.append(b"Transfer-Encoding: chunked")
        size = (
            b"%x" % len(body)
            if framing == "chunked"
            else draw(st.sampled_from([b"zz", b"-1", b"ffffffffffffffffff", b""]))
        )
        body = size + b"\r\n" + body + b"\r\n0\r\n\r\n"
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/9.9", b"HTTX/1.1"]))
    return (
        method + b" " + path + b" " + version + b"\r\n" + b"\r\n".join(lines) + b"\r\n\r\n" + body
    )


def exchange(port: int, data: bytes, *, half_close: bool = True) -> tuple[bytes, float]:
    """Send ``data``, read until the router closes. ``half_close``: then say we are done
    sending, so that a request left incomplete ends at once instead of after the stall
    bound (the router may then close without an answer, as for a client gone)."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=BOUND_S) as s:
        try:
            s.sendall(data)
            if half_close:
                s.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the router may refuse and close before we are done
        got = b""
        while time.monotonic() - started < BOUND_S:
            try:
                piece = s.recv(65536)
            except TimeoutError:
                break
            except OSError:
                break
            if not piece:
                break
            got += piece
    return got, time.monotonic() - started


def statuses(answer: bytes) -> list[int]:
    """The status of every response in ``answer`` (a status line starts each)."""
    out = []
    for line in answer.split(b"\r\n"):
        if line.startswith(b"HTTP/1.") and len(line) >= 12 and line[9:12].isdigit():
            out.append(int(line[9:12]))
    return out


@SETTINGS
@given(data=raw_requests())
def test_raw_http_gets_an_answer_or_a_close_never_a_500_or_a_hang(
    router: RouterProcess, data: bytes
) -> None:
    answer, took = exchange(router.port, data)
    assert took < BOUND_S, "the router neither answered nor closed"
    for status in statuses(answer):
        assert status < 500 or status == 505, answer[:400]
    assert router.proc is not None and router.proc.poll() is None, "the router died"


@SETTINGS
@given(
    path=st.sampled_from([*API_PATHS, *GET_PATHS]),
    headers=st.lists(st.tuples(header_names, field_values), max_size=6),
)
def test_any_header_value_fails_no_request(
    router: RouterProcess, path: str, headers: list[tuple[str, bytes]]
) -> None:
    """Odd header values (bytes that are not UTF-8 among them) on a valid request: the
    answer is what it would be without them, or a 4xx naming the header, never a 5xx."""
    lines = [b"Host: fuzz", b"Connection: close"]
    names = set()
    for name, value in headers:
        if name.lower() in ("connection", "expect", "content-length", "transfer-encoding", "host"):
            continue
        lines.append(name.encode() + b": " + value)
        names.add(name.lower())
    method, body = (
        (b"GET", b"") if path in GET_PATHS else (b"POST", json.dumps(valid_body(path)).encode())
    )
    lines.append(b"Content-Length: %d" % len(body))
    data = (
        method + b" " + path.encode() + b" HTTP/1.1\r\n" + b"\r\n".join(lines) + b"\r\n\r\n" + body
    )
    answer, took = exchange(router.port, data, half_close=False)
    found = statuses(answer)
    assert found, f"no answer to {data[:200]!r}"
    _, _, payload = answer.partition(b"\r\n\r\n")
    check(router, path, found[0], payload if found[0] >= 400 else b"", took)
    if found[0] >= 400 and not names & {
        "authorization", "x-api-key", "content-type", "content-encoding", "x-router-policy",
        "anthropic-version", "anthropic-beta", "accept-encoding",
    }:  # fmt: skip
        # Nothing the request depends on was touched: it must have been served.
        assert path.startswith("/admin") or path == "/health/ready", answer[:900]


def test_the_router_is_alive_and_serving_after_the_fuzzing(router: RouterProcess) -> None:
    alive(router)
    r = httpx.post(
        f"{router.base_url}/chat/completions",
        json={"model": "chat", "messages": [{"role": "user", "content": "hi"}]},
        timeout=10,
    )
    assert r.status_code == 200
    assert Path(router.log_path).read_text(errors="replace").count('"internal_error"') == 0
