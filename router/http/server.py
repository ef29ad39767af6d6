"""The API's HTTP/1.1 server: aiohttp's parser and flow control, and a lean answer path.

Why not aiohttp's own server (``web.Server``): per request it builds a ``BaseRequest``
and a ``Response``, merges headers through multidicts, runs prepare hooks and an access
log check, serializes the head through ``StreamWriter`` and re-arms flow control: about a
fifth of the router's CPU under load (py-spy, 16 connections), for answers that are one
JSON body or one event stream. This keeps what is hard to get right from aiohttp: the
llhttp C parser (framing, chunked bodies, limits, pipelining with a bounded queue),
``StreamReader`` bodies with their back-pressure and ``BaseProtocol``'s write draining.
What it replaces is the per-request scaffolding: a handler gets a ``Request`` (the
parser's message and body) and returns a ``Response``, whose head is rendered in one
string, or writes a ``Stream``, whose head leaves with its first bytes.

Connection handling is aiohttp's, in brief: one task per connection serves its requests
in order; HTTP/1.1 keeps the connection unless a side says ``close``; a body the handler
did not read to its end, a broken request or a forced close ends the connection after the
answer; a connection lost mid-request cancels its handler (the request log records a
499); idle connections are closed after ``KEEPALIVE_S``, and a client that stalls in the
middle of a request's head or body after ``STALL_S`` (``_sweep``). ``Expect: 100-continue`` is
answered when the handler starts reading the body, so a request refused before that
(401, 413) is refused without the client sending its body.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote

import structlog
from aiohttp.base_protocol import BaseProtocol
from aiohttp.helpers import rfc822_formatted_time
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.http_parser import HttpRequestParser, RawRequestMessage
from aiohttp.streams import StreamReader
from aiohttp.tcp_helpers import tcp_keepalive
from multidict import CIMultiDictProxy, MultiDictProxy

from router.errors import error_body

log = structlog.get_logger("router.http")

# An idle client connection is closed after this: aiohttp's default, longer than a reverse
# proxy's idle timeout, so that the proxy closes first and never sends into a closing socket.
KEEPALIVE_S = 3630.0
# A client that sends part of a request's head, or stops sending its body, has this long
# (to twice this) before the connection is closed: as nginx's client_header_timeout and
# client_body_timeout, so that such clients cannot hold connections (and descriptors) for
# the hour of KEEPALIVE_S.
STALL_S = 60.0
_MAX_QUEUED = 32  # pipelined requests parsed ahead; past this, reading pauses (as aiohttp)
_READ_BUFSIZE = 1 << 16
_JSON = "application/json"
_REASONS = {s.value: s.phrase for s in HTTPStatus}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_LAST_CHUNK = b"0\r\n\r\n"
# Chunk size lines, formatted once: a token-by-token stream writes hundreds of small chunks.
_SIZE_LINES = [b"%x\r\n" % n for n in range(1 << 12)]
_JOIN_BELOW = 1 << 14  # smaller pieces are joined into one write; larger go as writelines

_CLOSE = "Connection: close\r\n"
_KEEP = "Connection: keep-alive\r\n"  # HTTP/1.0 closes unless told otherwise


def _head(status: int, headers: dict[str, str] | None, fields: str) -> bytes:
    """An answer's head: the status line, the handler's ``headers``, then ``fields``, the
    header lines the server adds (framing, Date, Connection), each ending in CRLF."""
    block = "".join([f"{name}: {value}\r\n" for name, value in headers.items()]) if headers else ""
    lines = len(headers) if headers else 0
    if block.count("\n") != lines or block.count("\r") != lines:  # would split the head
        raise ValueError(f"a response header holds a line break: {list(headers or ())}")
    return (
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}\r\n{block}{fields}"
        f"Date: {rfc822_formatted_time()}\r\n\r\n"
    ).encode("utf-8", "surrogateescape")


class Request:
    """What a handler sees of one request: the parser's message and the body's stream."""

    __slots__ = ("_conn", "_continued", "content", "headers", "message", "method", "path")

    def __init__(self, message: RawRequestMessage, content: StreamReader, conn: Connection):
        self.message = message
        self.method = message.method
        path = message.path
        cut = path.find("?")
        if cut >= 0:
            path = path[:cut]
        if path[:1] != "/":  # absolute-form ("http://host/v1/models"), as a proxy may send
            path = message.url.path
        self.path = unquote(path) if "%" in path else path
        self.headers: CIMultiDictProxy[str] = message.headers
        self.content = content
        self._conn = conn
        self._continued = False  # expect_body() has run

    @property
    def content_length(self) -> int | None:
        length = self.headers.get("Content-Length")
        return None if length is None else int(length)

    @property
    def query(self) -> MultiDictProxy[str]:
        return self.message.url.query

    def expect_body(self) -> None:
        """Tell a client waiting on ``Expect: 100-continue`` to send its body (looked up
        here, not per request: only a handler that reads a body needs it)."""
        if self._continued:
            return
        self._continued = True
        message = self.message
        if message.version >= (1, 1) and message.headers.get("Expect", "").lower() == (
            "100-continue"
        ):
            transport = self._conn.transport
            if transport is not None:
                transport.write(_CONTINUE)

    async def read(self) -> bytes:
        self.expect_body()
        return await self.content.read()


class Response:
    """A whole answer: status, headers and body, sent in one write."""

    __slots__ = ("body", "content_type", "headers", "status")

    def __init__(
        self,
        status: int,
        body: bytes,
        content_type: str = _JSON,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.status = status
        self.body = body
        self.content_type = content_type
        self.headers = headers


class Stream:
    """An answer written as it comes (server-sent events): chunked on HTTP/1.1, to the
    connection's end on HTTP/1.0. The head waits for the first bytes and leaves with them."""

    __slots__ = ("_chunked", "_conn", "_head", "close", "ended")

    def __init__(self, request: Request, status: int, headers: dict[str, str]) -> None:
        conn = request._conn
        self._conn = conn
        self._chunked = request.message.version >= (1, 1)
        self.ended = False
        self.close = not self._chunked or request.message.should_close or conn.closing
        framing = "Transfer-Encoding: chunked\r\n" if self._chunked else ""
        self._head: bytes | None = _head(status, headers, framing + (_CLOSE if self.close else ""))

    def force_close(self) -> None:
        """End the connection after this answer (its end may not be trusted)."""
        self.close = True

    async def write(self, data: bytes) -> None:
        if self.ended:  # bytes after the last chunk would be read as the next answer
            return
        if data or self._head is not None:
            await self._send(data, b"")

    async def write_eof(self, data: bytes = b"") -> None:
        if not self.ended:
            self.ended = True
            await self._send(data, _LAST_CHUNK if self._chunked else b"")

    async def _send(self, data: bytes, tail: bytes) -> None:
        conn = self._conn
        transport = conn.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the client closed the connection")
        head, self._head = self._head, None
        pieces = []
        if head is not None:
            pieces.append(head)
            conn._streaming = True
        if data:
            if self._chunked:
                size = len(data)
                line = _SIZE_LINES[size] if size < len(_SIZE_LINES) else b"%x\r\n" % size
                pieces += [line, data, b"\r\n"]
            else:
                pieces.append(data)
        if tail:
            pieces.append(tail)
        if len(data) < _JOIN_BELOW:
            transport.write(b"".join(pieces))
        else:
            transport.writelines(pieces)
        if conn._paused:
            await conn._drain_helper()


Answer = Response | Stream
Handler = Callable[[Request], Awaitable[Answer]]


def _render(answer: Response, connection: str, head_only: bool) -> bytes:
    """The answer's bytes; ``connection`` is its Connection header line, or empty."""
    fields = f"Content-Type: {answer.content_type}\r\nContent-Length: {len(answer.body)}\r\n"
    head = _head(answer.status, answer.headers, fields + connection)
    return head if head_only else head + answer.body


class Connection(BaseProtocol):
    """One client connection: parses what arrives, serves its requests one at a time."""

    __slots__ = (
        "_body_reads",
        "_broken",
        "_idle_epoch",
        "_messages",
        "_partial_head",
        "_payload",
        "_reads",
        "_server",
        "_stalled_head",
        "_streaming",
        "_task",
        "_waiter",
        "closing",
        "idle_since",
    )

    def __init__(self, server: HttpServer) -> None:
        loop = server.loop
        parser = HttpRequestParser(
            self,
            loop,
            _READ_BUFSIZE,
            max_line_size=8190,
            max_field_size=8190,
            max_headers=128,
            auto_decompress=True,
            max_msg_queue_size=_MAX_QUEUED,
        )
        super().__init__(loop, parser)
        self._server = server
        self._messages: deque[tuple[Any, Any]] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self.closing = False  # finish the request at hand, then close
        self.idle_since = loop.time()
        self._broken = False  # the parser failed: nothing more is read
        self._streaming = False  # a Stream's head has gone out for the request at hand
        # For the sweep's stall rule: counters, so the hot path never reads the clock.
        self._reads = 0  # data_received calls
        self._idle_epoch = 0  # times the connection went idle
        self._partial_head = -1  # the idle epoch in which part of a head arrived
        self._stalled_head = -1  # ... and in which a sweep already found it so
        self._payload: StreamReader | None = None  # the body of the request at hand
        self._body_reads = -1  # _reads when a sweep last found that body unfinished

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        assert self.transport is not None
        tcp_keepalive(self.transport)  # so that a peer gone without a FIN is found out
        self._server.connections.add(self)
        self._task = self._loop.create_task(self._serve())

    def connection_lost(self, exc: BaseException | None) -> None:
        super().connection_lost(exc)
        self._server.forget(self)
        self._broken = True
        parser = self._parser
        if parser is not None:
            with contextlib.suppress(HttpProcessingError):
                parser.feed_eof()  # ends a body in progress
            self._parser = None
        task = self._task
        if task is not None and not task.done():
            task.cancel()  # a handler in progress stops; the request log records a 499

    def data_received(self, data: bytes) -> None:
        if self._broken or self._parser is None:
            return
        self._reads += 1
        messages: list[tuple[Any, Any]]
        try:
            messages, upgraded, _tail = self._parser.feed_data(data)
        except HttpProcessingError as exc:
            self._broken = True
            messages, upgraded = [(exc, None)], False  # answered in turn, then closed
        if messages:
            self._messages.extend(messages)
            waiter = self._waiter
            if waiter is not None:
                self._waiter = None
                if not waiter.done():
                    waiter.set_result(None)
            if not self._buffer_paused and len(self._messages) >= _MAX_QUEUED:
                self._pause_reading_for_buffer()
        elif self._waiter is not None and data:  # idle, and a head has begun to arrive
            self._partial_head = self._idle_epoch
        if upgraded:  # no protocol upgrades here: the request is answered, then we close
            self._broken = True

    def close_when_idle(self) -> None:
        """Shutdown: an idle connection closes now, a busy one after its answer."""
        self.closing = True
        if not self._messages and self._waiter is not None and self.transport is not None:
            self.transport.close()

    async def _serve(self) -> None:
        loop = self._loop
        messages = self._messages
        try:
            while True:
                while not messages:
                    if self.closing or self._broken or self.transport is None:
                        return
                    self.idle_since = loop.time()
                    self._idle_epoch += 1
                    self._waiter = loop.create_future()
                    await self._waiter
                message, payload = messages.popleft()
                parser = self._parser
                if parser is not None:
                    parser.message_consumed()
                    if self._buffer_paused and len(messages) <= _MAX_QUEUED // 2:
                        self.data_received(b"")  # parse what waited behind the full queue
                        self._resume_reading_for_buffer()
                if payload is None:
                    self._bad_request(message)
                    return
                self._payload = payload  # left set if this ends the connection: closed, not swept
                keep_alive = await self._answer(message, payload)
                self._payload = None
                if not keep_alive:
                    return
        except (asyncio.CancelledError, ConnectionError):
            pass
        finally:
            if self.transport is not None:
                self.transport.close()

    async def _answer(self, message: RawRequestMessage, payload: StreamReader) -> bool:
        """Serve one request; whether the connection may carry another."""
        request = Request(message, payload, self)
        try:
            answer = await self._server.handler(request)
        except (asyncio.CancelledError, ConnectionError):
            raise  # the client went away
        except Exception:  # a bug of ours: an OpenAI-shaped 500, and the process serves on
            log.exception("internal_error", path=request.path)
            if self._streaming:  # an answer has begun: another cannot follow it
                return False
            body = error_body("internal error; see the router's log", "server_error")
            answer = Response(500, body)
        transport = self.transport
        if transport is None:
            return False
        keep_alive = not (message.should_close or self.closing or self._broken)
        if type(answer) is Response:
            # A body the handler left unread would be read as the next request.
            keep_alive = keep_alive and payload.is_eof()
            connection = "" if message.version >= (1, 1) else _KEEP
            if not keep_alive:
                connection = _CLOSE
            transport.write(_render(answer, connection, message.method == "HEAD"))
            if self._paused:
                await self._drain_helper()
            return keep_alive
        assert isinstance(answer, Stream)
        await answer.write_eof()
        self._streaming = False
        return keep_alive and not answer.close and payload.is_eof()

    def stalled(self) -> bool:
        """Whether the client has sat on a request half sent since the last sweep: part
        of a head and no more (for one sweep: a head trickled out byte by byte counts
        too), or a body with no bytes since (unless we stopped reading it)."""
        if self._waiter is not None:
            if self._partial_head != self._idle_epoch:
                return False
            seen, self._stalled_head = self._stalled_head, self._idle_epoch
            return seen == self._idle_epoch
        payload = self._payload
        if payload is None or payload.is_eof() or self._reading_paused or self._buffer_paused:
            self._body_reads = -1
            return False
        seen, self._body_reads = self._body_reads, self._reads
        return seen == self._reads

    def _bad_request(self, exc: HttpProcessingError) -> None:
        status = exc.code if 400 <= exc.code < 500 else 400
        message = f"malformed HTTP request: {exc.message}"
        log.debug("bad_http_request", status=status, error=exc.message)
        body = error_body(message, "invalid_request_error", "bad_http_request")
        if self.transport is not None:
            self.transport.write(_render(Response(status, body), _CLOSE, False))


class HttpServer:
    """Listens, hands each connection a ``Connection``, and drains them on shutdown."""

    def __init__(self, handler: Handler, *, stall_s: float = STALL_S) -> None:
        self.handler = handler
        self._sweep_s = stall_s  # a sweep finds a stall; the next one closes it
        self.loop = asyncio.get_running_loop()
        self.connections: set[Connection] = set()
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._all_closed: asyncio.Event | None = None

    async def start(self, host: str, port: int, *, reuse_port: bool = False) -> None:
        self._server = await self.loop.create_server(
            lambda: Connection(self),
            host,
            port,
            reuse_port=reuse_port or None,
            backlog=4096,
        )
        self._sweeper = self.loop.call_later(self._sweep_s, self._sweep)

    @property
    def port(self) -> int:
        """The port it listens on (the one the OS chose, for port 0)."""
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    def forget(self, conn: Connection) -> None:
        self.connections.discard(conn)
        if not self.connections and self._all_closed is not None:
            self._all_closed.set()

    def _sweep(self) -> None:
        """Close connections idle past ``KEEPALIVE_S`` or stalled mid-request (a timer
        per request would cost more than a scan every ``STALL_S``)."""
        cutoff = self.loop.time() - KEEPALIVE_S
        for conn in list(self.connections):
            if conn.transport is None:
                continue
            if conn._waiter is not None and conn.idle_since < cutoff:
                conn.transport.close()
            elif conn.stalled():
                log.info("client_stalled", mid="head" if conn._waiter is not None else "body")
                conn.transport.abort()  # a handler reading the body is cancelled (a 499)
        self._sweeper = self.loop.call_later(self._sweep_s, self._sweep)

    async def shutdown(self, timeout_s: float) -> None:
        """Stop accepting; let requests in progress finish (up to ``timeout_s``), then
        close what is left."""
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._server is not None:
            self._server.close()
        self._all_closed = asyncio.Event()
        for conn in list(self.connections):
            conn.close_when_idle()
        if self.connections:
            try:
                await asyncio.wait_for(self._all_closed.wait(), timeout_s)
            except TimeoutError:
                log.warning("drain_timeout", connections=len(self.connections))
        tasks = [conn._task for conn in self.connections if conn._task is not None]
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.abort()  # its handler is cancelled and records a 499
        if tasks:
            await asyncio.wait(tasks, timeout=1.0)
