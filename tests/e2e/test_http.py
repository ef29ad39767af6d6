"""HTTP/1.1 on the wire: what clients rely on from the router's HTTP server layer.

These tests speak raw HTTP over sockets to the real service (one router for the module,
with a fake upstream behind the route ``chat``), so that a replacement of the server
layer can be checked against them: keep-alive, pipelining, connection close, HTTP/1.0,
chunked request bodies, ``Expect: 100-continue``, malformed input, HEAD, 404/405,
response framing (Content-Length, chunked streams), body limits, ``Date``, and the
service surviving clients that misbehave. Every socket operation is bounded by a timeout.
"""

from __future__ import annotations

import gzip
import json
import select
import socket
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import pytest

from tests.support import FakeUpstream, RouterProcess, ok_json, poll, routes_yaml

TIMEOUT = 5.0  # every socket operation
EXPECT_WAIT_S = 1.0  # how long a client waits for "100 Continue" (curl's default is 1 s)
MAX_BODY_MB = 0.001  # server.max_body_mb in the test config: 1048 bytes
LIMIT = int(MAX_BODY_MB * 1024 * 1024)
LIVE_BODY = {"status": "ok"}


def chat_request(content: str = "hi", **extra: Any) -> bytes:
    body = {"model": "chat", "messages": [{"role": "user", "content": content}], **extra}
    return json.dumps(body).encode()


# -- a tiny raw HTTP/1.1 client -----------------------------------------------------------


@dataclass
class Answer:
    version: str
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes
    chunked: bool

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or None."""
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    def all(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key.lower() == name.lower()]

    def media_type(self) -> str | None:
        value = self.header("Content-Type")
        return None if value is None else value.split(";")[0].strip().lower()

    def json(self) -> Any:
        return json.loads(self.body)

    def connection_tokens(self) -> set[str]:
        return {t.strip().lower() for v in self.all("Connection") for t in v.split(",")}


def request(
    method: str,
    path: str,
    body: bytes | None = None,
    *,
    headers: Iterable[tuple[str, str]] = (),
    version: str = "HTTP/1.1",
    host: bool = True,
) -> bytes:
    """One request's bytes; adds Host and (unless framed by ``headers``) Content-Length."""
    headers = list(headers)
    lines = [f"{method} {path} {version}"]
    if host:
        lines.append("Host: 127.0.0.1")
    lines += [f"{key}: {value}" for key, value in headers]
    framed = any(key.lower() in ("content-length", "transfer-encoding") for key, _ in headers)
    if body is not None and not framed:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


def chunked(*parts: bytes) -> bytes:
    """``parts`` in chunked transfer coding, with the last chunk."""
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


class Conn:
    """One client connection, reading answers framed as RFC 9112 section 6.3 says."""

    def __init__(self, port: int, timeout: float = TIMEOUT) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.settimeout(timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()

    def __enter__(self) -> Conn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise EOFError(f"server closed the connection; unparsed: {bytes(self.buf)!r}")
        self.buf += data

    def _read_until(self, sep: bytes) -> bytes:
        while (at := self.buf.find(sep)) < 0:
            self._fill()
        out = bytes(self.buf[:at])
        del self.buf[: at + len(sep)]
        return out

    def _read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def _read_to_close(self) -> bytes:
        while True:
            try:
                self._fill()
            except EOFError:
                break
        out = bytes(self.buf)
        self.buf.clear()
        return out

    def _read_chunked(self) -> bytes:
        out = bytearray()
        while True:
            size_line = self._read_until(b"\r\n")
            size = int(size_line.split(b";")[0].strip(), 16)
            if size == 0:
                while self._read_until(b"\r\n"):  # trailer fields, up to the empty line
                    pass
                return bytes(out)
            out += self._read_exact(size)
            assert self._read_exact(2) == b"\r\n", "chunk data not followed by CRLF"

    def read_answer(self, *, head: bool = False) -> Answer:
        """The next answer (an interim 1xx one included) from the connection."""
        head_bytes = self._read_until(b"\r\n\r\n").decode("latin-1")
        status_line, *lines = head_bytes.split("\r\n")
        version, code, *reason = status_line.split(" ", 2)
        assert version.startswith("HTTP/1."), f"bad status line {status_line!r}"
        headers = []
        for line in lines:
            key, sep, value = line.partition(":")
            assert sep and key == key.strip(), f"bad header line {line!r}"
            headers.append((key, value.strip()))
        answer = Answer(version, int(code), reason[0] if reason else "", headers, b"", False)
        lengths = answer.all("Content-Length")
        te = answer.header("Transfer-Encoding")
        if head or answer.status < 200 or answer.status in (204, 304):
            return answer
        if te is not None:
            assert te.lower() == "chunked", f"unexpected Transfer-Encoding {te!r}"
            assert not lengths, "both Transfer-Encoding and Content-Length"
            answer.chunked = True
            answer.body = self._read_chunked()
        elif lengths:
            assert len(set(lengths)) == 1, f"conflicting Content-Length {lengths}"
            answer.body = self._read_exact(int(lengths[0]))
        else:
            answer.body = self._read_to_close()
        return answer

    def read_final(self, *, head: bool = False) -> Answer:
        """The next final answer, skipping interim (1xx) ones."""
        while (answer := self.read_answer(head=head)).status < 200:
            pass
        return answer

    def exchange(self, data: bytes, *, head: bool = False) -> Answer:
        self.send(data)
        return self.read_final(head=head)

    def wait_closed(self) -> bool:
        """Whether the server closes the connection (within the timeout) without sending
        more bytes; fails on bytes it sends."""
        assert not self.buf, f"unexpected bytes after the answer: {bytes(self.buf)!r}"
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False
        assert not data, f"unexpected bytes after the answer: {data!r}"
        return True

    def is_open(self, wait: float = 0.1) -> bool:
        """Whether the connection is still open after ``wait`` seconds; fails on bytes
        the server sent that no answer accounts for."""
        assert not self.buf, f"unexpected bytes after the answer: {bytes(self.buf)!r}"
        readable, _, _ = select.select([self.sock], [], [], wait)
        if not readable:
            return True
        try:
            data = self.sock.recv(1, socket.MSG_PEEK)
        except ConnectionResetError:
            return False
        assert not data, f"unexpected bytes from the server: {data!r}"
        return False


# -- the service ----------------------------------------------------------------------------


@dataclass
class Env:
    router: RouterProcess
    fake: FakeUpstream

    @property
    def port(self) -> int:
        return self.router.port

    def conn(self) -> Conn:
        return Conn(self.port)

    def served(self) -> None:
        """The service answers a normal request on a new connection."""
        with self.conn() as c:
            answer = c.exchange(request("GET", "/health/live"))
            assert answer.status == 200
            assert answer.json() == LIVE_BODY
            answer = c.exchange(request("POST", "/v1/chat/completions", chat_request()))
            assert answer.status == 200, answer.body
            assert answer.json()["choices"][0]["message"]["content"] == "hello from fake"

    def log_record(self, request_id: str) -> dict[str, Any] | None:
        for rec in self.router.logs():
            if rec.get("event") == "request" and rec.get("request_id") == request_id:
                return rec
        return None


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("http")
    with FakeUpstream(behaviour=ok_json) as fake:
        providers = f"  main: {{kind: openai, base_url: '{fake.base_url}'}}\n"
        routes = "  chat:\n    endpoints: [{provider: main, model: up-model}]\n"
        extra = f"server: {{max_body_mb: {MAX_BODY_MB}}}\n"
        with RouterProcess(routes_yaml(routes, providers, extra=extra), tmp) as router:
            yield Env(router, fake)


def error_of(answer: Answer) -> dict[str, Any]:
    """The OpenAI-shaped error in ``answer``, checked for shape."""
    assert answer.media_type() == "application/json", answer.headers
    body = answer.json()
    assert set(body) == {"error"}, body
    error: dict[str, Any] = body["error"]
    assert {"message", "type", "param", "code"} <= set(error), error
    assert isinstance(error["message"], str) and error["message"]
    return error


# -- connections ------------------------------------------------------------------------------


def test_keep_alive_serves_requests_one_after_another(env: Env) -> None:
    with env.conn() as c:
        live = c.exchange(request("GET", "/health/live"))
        assert (live.version, live.status) == ("HTTP/1.1", 200)
        assert live.json() == LIVE_BODY
        assert "close" not in live.connection_tokens()
        assert c.is_open()

        chat = c.exchange(request("POST", "/v1/chat/completions", chat_request()))
        assert (chat.version, chat.status) == ("HTTP/1.1", 200)
        assert chat.json()["choices"][0]["message"]["content"] == "hello from fake"
        assert "close" not in chat.connection_tokens()
        assert c.is_open()  # HTTP/1.1: persistent unless someone says close


def test_pipelined_requests_are_answered_in_order(env: Env) -> None:
    with env.conn() as c:
        # The upstream call in the middle takes longest: a server answering in the order
        # requests finish, not the order they came, would put /v1/models before it.
        c.send(
            request("GET", "/health/live")
            + request("POST", "/v1/chat/completions", chat_request())
            + request("GET", "/v1/models")
        )
        live, chat, models = c.read_final(), c.read_final(), c.read_final()
        assert live.status == chat.status == models.status == 200
        assert live.json() == LIVE_BODY
        assert chat.json()["object"] == "chat.completion"
        assert [m["id"] for m in models.json()["data"]] == ["chat"]
        assert c.is_open()


def test_connection_close_from_the_client_closes_after_the_answer(env: Env) -> None:
    with env.conn() as c:
        answer = c.exchange(request("GET", "/health/live", headers=[("Connection", "close")]))
        assert answer.status == 200
        assert answer.json() == LIVE_BODY
        assert c.wait_closed(), "the server kept the connection open after Connection: close"


def test_connection_close_on_a_post_closes_after_the_answer(env: Env) -> None:
    with env.conn() as c:
        body = chat_request()
        answer = c.exchange(
            request("POST", "/v1/chat/completions", body, headers=[("Connection", "close")])
        )
        assert answer.status == 200
        assert answer.json()["choices"][0]["message"]["content"] == "hello from fake"
        assert c.wait_closed()


def test_http10_without_keep_alive_is_answered_then_closed(env: Env) -> None:
    with env.conn() as c:
        answer = c.exchange(request("GET", "/health/live", version="HTTP/1.0", host=False))
        assert answer.version.startswith("HTTP/1.")
        assert answer.status == 200
        assert answer.json() == LIVE_BODY  # complete, however it was framed
        assert c.wait_closed(), "an HTTP/1.0 connection without keep-alive stayed open"


def test_http10_stream_is_not_chunked_and_ends_with_the_connection(env: Env) -> None:
    # RFC 9112 6.1: no Transfer-Encoding in an answer to HTTP/1.0; its end is the close.
    body = chat_request(stream=True)
    with env.conn() as c:
        answer = c.exchange(
            request("POST", "/v1/chat/completions", body, version="HTTP/1.0", host=False)
        )
        assert answer.status == 200
        assert answer.media_type() == "text/event-stream"
        assert not answer.chunked
        assert answer.body.endswith(b"data: [DONE]\n\n"), answer.body[-200:]
        assert c.wait_closed()


def test_http10_keep_alive_is_honoured_or_refused_cleanly(env: Env) -> None:
    """An HTTP/1.0 client asking for keep-alive either gets it (the answer says
    ``Connection: keep-alive``, has a Content-Length, and the next request is served) or
    the server closes: it must never leave the client waiting on an open connection."""
    live = request(
        "GET", "/health/live", version="HTTP/1.0", headers=[("Connection", "keep-alive")]
    )
    with env.conn() as c:
        answer = c.exchange(live)
        assert answer.status == 200
        assert answer.json() == LIVE_BODY
        if "keep-alive" in answer.connection_tokens():  # today's server honours it
            assert answer.header("Content-Length") == str(len(answer.body))
            again = c.exchange(live)
            assert again.status == 200
            assert again.json() == LIVE_BODY
        else:
            assert c.wait_closed(), (
                "the answer to an HTTP/1.0 keep-alive request did not say "
                "'Connection: keep-alive', yet the connection stayed open: an HTTP/1.0 "
                "client (ab -k, say) then waits for the close"
            )


def test_idle_connection_does_not_block_others(env: Env) -> None:
    with env.conn() as idle, env.conn() as half:
        half.send(b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # headers unfinished
        env.served()
        assert idle.is_open(wait=0)
        half.send(b"\r\n")
        answer = half.read_final()
        assert answer.status == 200
        assert answer.json() == LIVE_BODY


def test_many_requests_on_one_connection(env: Env) -> None:
    ids = set()
    with env.conn() as c:
        for i in range(50):
            if i % 2:
                answer = c.exchange(request("GET", "/health/live"))
                assert answer.status == 200, i
                assert answer.json() == LIVE_BODY
            else:
                answer = c.exchange(request("POST", "/v1/chat/completions", chat_request(f"n{i}")))
                assert answer.status == 200, (i, answer.body)
                assert answer.json()["choices"][0]["message"]["content"] == "hello from fake"
                ids.add(answer.header("x-request-id"))
        assert c.is_open()
    assert len(ids) == 25 and None not in ids


# -- request bodies ---------------------------------------------------------------------------


def test_chunked_request_body_is_routed(env: Env) -> None:
    body = chat_request("chunked-request-body")
    cut = len(body) // 3
    parts = (body[:cut], body[cut : 2 * cut], body[2 * cut :])
    head = request(
        "POST",
        "/v1/chat/completions",
        headers=[("Content-Type", "application/json"), ("Transfer-Encoding", "chunked")],
    )
    with env.conn() as c:
        c.send(head)
        encoded = chunked(*parts)
        c.send(encoded[: len(encoded) // 2])  # the chunks arrive in pieces
        c.send(encoded[len(encoded) // 2 :])
        answer = c.read_final()
        assert answer.status == 200, answer.body
        assert answer.json()["choices"][0]["message"]["content"] == "hello from fake"
        assert c.is_open()
    sent = [r.body for r in env.fake.received if r.path == "/v1/chat/completions"]
    assert any(
        b.get("messages") == [{"role": "user", "content": "chunked-request-body"}] for b in sent
    ), "the upstream did not get the reassembled body"


@pytest.mark.parametrize(
    ("size", "want"), [(None, 200), (2 * LIMIT, 413)], ids=["small-body", "over-limit"]
)
def test_expect_100_continue(env: Env, size: int | None, want: int) -> None:
    body = chat_request() if size is None else b"x" * size
    head = request(
        "POST",
        "/v1/chat/completions",
        headers=[
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
            ("Expect", "100-continue"),
        ],
    )
    with env.conn() as c:
        c.send(head)
        readable, _, _ = select.select([c.sock], [], [], EXPECT_WAIT_S)
        final = None
        if readable:
            first = c.read_answer()
            if first.status < 200:
                # An interim answer must be exactly 100 Continue, with no body.
                assert first.status == 100, first
            else:  # a final answer without the body: only right for a refusal
                assert first.status == want == 413, first
                final = first
        # Today's server (aiohttp's low-level web.Server) never sends 100 Continue: the
        # client sends the body after its wait, as curl does, and the answer comes then.
        # For the oversized body it answers 413 at once, from the headers.
        if final is None:
            c.send(body)
            final = c.read_final()
        assert final.status == want, final.body
        if want == 200:
            assert final.json()["choices"][0]["message"]["content"] == "hello from fake"
        else:
            assert error_of(final)["code"] == "payload_too_large"
    env.served()


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_body_over_the_limit_gets_413_json(env: Env, framing: str) -> None:
    body = b'{"model": "chat", "messages": [{"role": "user", "content": "' + b"x" * 2 * LIMIT
    body += b'"}]}'
    if framing == "chunked":
        data = request(
            "POST",
            "/v1/chat/completions",
            chunked(body[:LIMIT], body[LIMIT:]),
            headers=[("Transfer-Encoding", "chunked")],
        )
    else:
        data = request("POST", "/v1/chat/completions", body)
    with env.conn() as c:
        answer = c.exchange(data + request("GET", "/health/live"))
        assert answer.status == 413
        error = error_of(answer)
        assert error["code"] == "payload_too_large"
        assert error["type"] == "invalid_request_error"
        # The connection then either closes or serves the next request: the unread
        # body must never be parsed as one (today's server drains it and goes on).
        try:
            after = c.read_final()
        except (EOFError, ConnectionResetError):
            pass
        else:
            assert after.status == 200
            assert after.json() == LIVE_BODY
    env.served()


def test_unread_body_of_an_error_does_not_leak_into_the_next_request(env: Env) -> None:
    with env.conn() as c:
        c.send(
            request("POST", "/no/such/path", b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
            + request("GET", "/health/live")
        )
        missing = c.read_final()
        assert missing.status == 404
        after = c.read_final()
        assert after.status == 200
        assert after.json() == LIVE_BODY  # not /v1/models, smuggled in the body
        assert c.is_open()


def test_client_gone_mid_body_does_not_hurt_the_service(env: Env) -> None:
    request_id = "http-test-gone-mid-body"
    head = request(
        "POST",
        "/v1/chat/completions",
        headers=[("Content-Length", str(LIMIT - 48)), ("x-request-id", request_id)],
    )
    with env.conn() as c:
        c.send(head + b'{"model": ')
        # A whole request on another connection: by the time it is answered, the server
        # has read this one's headers (and, today, called the handler, which now waits
        # for the rest of the body). Then the client goes.
        env.served()
    env.served()
    # A handler that had started learns the client left: the request is logged as a
    # client close (499), not as our error (500), and does not wait forever for the rest
    # of the body. (A server that reads whole bodies before dispatch never starts the
    # handler, so logs nothing: that is fine too.)
    poll(lambda: env.log_record(request_id) is not None, timeout=2)
    record = env.log_record(request_id)
    if record is not None:  # today's server: always
        assert record["status"] == 499, record
        assert record["error"] == "client_closed", record
    errors = [rec for rec in env.router.logs() if rec.get("event") == "internal_error"]
    assert not errors, errors


@pytest.mark.parametrize(
    ("data", "statuses"),
    [
        (b"GARBAGE\r\n\r\n", {400}),
        (b"GET /health/live HTTP/9.9\r\nHost: x\r\n\r\n", {400, 505}),
        (b"GET /health/live HTTP/1.1\r\nHost: x\r\nNoColonHere\r\n\r\n", {400}),
        (b"GET /health/live HTTP/1.1\r\n\r\n", {400}),  # RFC 9112 3.2: Host is required
        (
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
            {400},
        ),
        (  # both framings: a request smuggling vector, RFC 9112 6.1 lets it be refused
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            {400},
        ),
    ],
    ids=["garbage", "http-9.9", "header-without-colon", "no-host", "bad-length", "cl-and-te"],
)
def test_malformed_request_gets_400_and_close(env: Env, data: bytes, statuses: set[int]) -> None:
    with env.conn() as c:
        c.send(data)
        answer = c.read_final()
        # Today's server answers "HTTP/1.0 400 Bad Request", text/plain, then closes.
        assert answer.status in statuses, answer
        assert c.wait_closed(), "the connection stayed open after a malformed request"
    env.served()


# -- answers ----------------------------------------------------------------------------------


def test_head_has_headers_and_no_body(env: Env) -> None:
    with env.conn() as c:
        head = c.exchange(request("HEAD", "/health/live"), head=True)
        assert head.status == 200
        assert head.media_type() == "application/json"
        assert c.is_open()  # and quiet: no body bytes followed the headers
        # The next answer on the connection parses: nothing was left in between.
        get = c.exchange(request("GET", "/health/live"))
        assert get.status == 200
        assert get.json() == LIVE_BODY
        length = head.header("Content-Length")
        assert length is None or length == str(len(get.body))


def test_unknown_path_is_404_json(env: Env) -> None:
    with env.conn() as c:
        for path in ("/nope", "/v1/chat/completion", "/v2/models"):
            answer = c.exchange(request("GET", path))
            assert answer.status == 404, path
            error = error_of(answer)
            assert error["code"] == "not_found"
            assert error["type"] == "invalid_request_error"
        assert c.is_open()  # an error answer does not end the connection


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("GET", "/v1/chat/completions", "POST"),
        ("PUT", "/v1/embeddings", "POST"),
        ("POST", "/health/live", "GET"),
        ("DELETE", "/v1/models", "GET"),
    ],
)
def test_wrong_method_is_405_with_allow(env: Env, method: str, path: str, allowed: str) -> None:
    with env.conn() as c:
        answer = c.exchange(request(method, path, b"{}" if method in ("POST", "PUT") else None))
        assert answer.status == 405
        allow = {m.strip() for v in answer.all("Allow") for m in v.split(",")}
        assert allowed in allow, answer.headers
        assert error_of(answer)["code"] == "method_not_allowed"
        assert c.is_open()


def test_non_streamed_answer_has_content_length_and_json(env: Env) -> None:
    with env.conn() as c:
        for data in (
            request("GET", "/health/live"),
            request("GET", "/v1/models"),
            request("POST", "/v1/chat/completions", chat_request()),
        ):
            answer = c.exchange(data)
            assert answer.status == 200
            assert not answer.chunked
            assert answer.header("Content-Length") == str(len(answer.body))
            assert answer.media_type() == "application/json"
            answer.json()


def test_streamed_answer_is_chunked_sse_and_keeps_the_connection(env: Env) -> None:
    with env.conn() as c:
        answer = c.exchange(request("POST", "/v1/chat/completions", chat_request(stream=True)))
        assert answer.status == 200
        assert answer.media_type() == "text/event-stream"
        assert answer.chunked
        assert answer.header("Content-Length") is None
        assert answer.body.startswith(b"data: {"), answer.body[:200]
        assert answer.body.endswith(b"data: [DONE]\n\n"), answer.body[-200:]
        text = "".join(
            json.loads(event[6:])["choices"][0]["delta"].get("content") or ""
            for event in answer.body.decode().split("\n\n")
            if event.startswith("data: {")
        )
        assert text == "hello from fake "
        assert "close" not in answer.connection_tokens()
        # Keep-alive after a stream: the same connection serves more, a stream included.
        again = c.exchange(request("POST", "/v1/chat/completions", chat_request()))
        assert again.status == 200
        assert again.json()["choices"][0]["message"]["content"] == "hello from fake"
        third = c.exchange(request("POST", "/v1/chat/completions", chat_request(stream=True)))
        assert third.status == 200
        assert third.body.endswith(b"data: [DONE]\n\n")


def test_answers_carry_a_date(env: Env) -> None:
    with env.conn() as c:
        answers = [
            c.exchange(request("GET", "/health/live")),
            c.exchange(request("GET", "/nope")),
            c.exchange(request("POST", "/v1/chat/completions", chat_request())),
            c.exchange(request("POST", "/v1/chat/completions", chat_request(stream=True))),
        ]
    for answer in answers:
        dates = answer.all("Date")
        assert len(dates) == 1, answer.headers
        assert dates[0].endswith(" GMT"), dates  # IMF-fixdate, RFC 9110 5.6.7
        sent = parsedate_to_datetime(dates[0]).timestamp()
        assert abs(sent - time.time()) < 60, dates


def test_sigterm_closes_idle_connections_at_once(tmp_path: Any) -> None:
    """An idle keep-alive connection does not hold up a graceful exit (which waits up to
    30 s for requests in progress): it is closed at once, and the process exits 0."""
    with FakeUpstream(behaviour=ok_json) as fake:
        providers = f"  main: {{kind: openai, base_url: '{fake.base_url}'}}\n"
        routes = "  chat:\n    endpoints: [{provider: main, model: up-model}]\n"
        router = RouterProcess(routes_yaml(routes, providers), tmp_path).start()
        try:
            with Conn(router.port) as idle:
                answer = idle.exchange(request("POST", "/v1/chat/completions", chat_request()))
                assert answer.status == 200
                assert idle.is_open()
                started = time.monotonic()
                assert router.stop(timeout=10) == 0
                assert time.monotonic() - started < 10
                assert idle.wait_closed()
        finally:
            router.stop()


# -- compressed request bodies ------------------------------------------------------------------


def deflate(data: bytes, *, raw: bool = False) -> bytes:
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS if raw else zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


@pytest.mark.parametrize(
    ("encoding", "encode"),
    [
        ("gzip", gzip.compress),
        ("x-gzip", gzip.compress),
        ("deflate", deflate),
        ("deflate", lambda data: deflate(data, raw=True)),
        ("identity", lambda data: data),
    ],
    ids=["gzip", "x-gzip", "deflate-zlib", "deflate-raw", "identity"],
)
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_compressed_body_is_decoded(
    env: Env, encoding: str, encode: Callable[[bytes], bytes], framing: str
) -> None:
    body = encode(chat_request("compressed-" + encoding))
    headers = [("Content-Encoding", encoding)]
    if framing == "chunked":
        headers.append(("Transfer-Encoding", "chunked"))
        body = chunked(body[:10], body[10:])
    with env.conn() as c:
        answer = c.exchange(request("POST", "/v1/chat/completions", body, headers=headers))
        assert answer.status == 200, answer.body
        assert c.is_open()
    assert any(
        r.body.get("messages", [{}])[0].get("content") == "compressed-" + encoding
        for r in env.fake.received
    )


@pytest.mark.parametrize(
    ("encoding", "encode"),
    [("gzip", gzip.compress), ("deflate", deflate)],
)
@pytest.mark.parametrize("size", [4 * LIMIT, 200 * LIMIT], ids=["4x", "200x"])
def test_a_compressed_body_over_the_limit_once_decoded_gets_413(
    env: Env, encoding: str, encode: Callable[[bytes], bytes], size: int
) -> None:
    """A small compressed body that expands past max_body_mb (a zip bomb, in the large
    case: 200x the limit from a few hundred bytes) is refused as it decodes."""
    prefix = b'{"model": "chat", "messages": [{"role": "user", "content": "'
    body = encode(prefix + b"x" * size + b'"}]}')
    assert len(body) < LIMIT  # small on the wire: only decoding shows the size
    with env.conn() as c:
        answer = c.exchange(
            request("POST", "/v1/chat/completions", body, headers=[("Content-Encoding", encoding)])
        )
        assert answer.status == 413, answer.body
        assert error_of(answer)["code"] == "payload_too_large"
    env.served()


@pytest.mark.parametrize(
    ("encoding", "body", "status", "code"),
    [
        ("br", b"\x0b\x02\x80{}\x03", 415, "unsupported_content_encoding"),
        ("zstd", b"(\xb5/\xfd\x00X\x11\x00\x00{}", 415, "unsupported_content_encoding"),
        ("gzip, gzip", gzip.compress(gzip.compress(b"{}")), 415, "unsupported_content_encoding"),
        ("gzip", b"\x1f\x8b\x08\x00not gzip at all", 400, "bad_encoding"),
        ("gzip", gzip.compress(chat_request())[:-12], 400, "bad_encoding"),  # cut short
        ("deflate", b"\x78\x9c\xff\xff\xff", 400, "bad_encoding"),
    ],
    ids=["br", "zstd", "two-codings", "not-gzip", "truncated-gzip", "bad-deflate"],
)
def test_a_body_in_an_encoding_we_cannot_read_is_refused_clearly(
    env: Env, encoding: str, body: bytes, status: int, code: str
) -> None:
    with env.conn() as c:
        answer = c.exchange(
            request("POST", "/v1/chat/completions", body, headers=[("Content-Encoding", encoding)])
        )
        assert answer.status == status, answer.body
        error = error_of(answer)
        assert error["code"] == code
        assert error["type"] == "invalid_request_error"
        if status == 415:
            assert "gzip" in error["message"]
    env.served()
