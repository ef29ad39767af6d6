"""One client connection: httptools' parser on an ``asyncio.Protocol``, and its answers.

uvicorn's pattern (``protocols/http/httptools_impl.py``): llhttp, the C parser behind
Node and aiohttp, through httptools' public callbacks, and flow control in a class of its
own (``router.http.flow``). One task per connection serves its requests in order;
HTTP/1.1 keeps the connection unless a side says ``close``; a body the handler did not see
to its end, a broken request or a forced close ends the connection after the answer (with
a lingering close when the client may still be sending); a connection lost mid-request
cancels its handler (the request log records a 499).

What a client can make it hold is bounded: a head by ``MAX_HEAD`` (its target and fields
by ``MAX_TARGET``, ``MAX_FIELD`` and ``MAX_FIELDS``), a body by its high-water mark, and
requests pipelined behind the one being answered by one read (reading pauses while any
wait). Time is the server's sweep's business (``stalled``). ``Expect: 100-continue`` is
answered when the handler starts reading the body, so a request refused before that (401,
413) is refused without the client sending its body.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, cast

import httptools
import structlog

from router.errors import BadRequest, error_body
from router.http.answers import CLOSE, KEEP, TOO_MANY, Answer, Response, Stream
from router.http.flow import BODY, PIPELINE, FlowControl
from router.http.head import (
    MAX_FIELD,
    MAX_FIELDS,
    MAX_HEAD,
    MAX_NAMES,
    MAX_TARGET,
    NAMES,
    HttpError,
    http11,
)
from router.http.request import Body, Headers, Request

if TYPE_CHECKING:
    from router.http.server import HttpServer

log = structlog.get_logger("router.http")

# After an answer that ends a connection while the client may still be sending (a body
# refused before its end, a malformed request), we stop writing and read and drop what
# comes for this long before closing: closing with unread bytes would send a reset, and
# the client could lose the answer (nginx's lingering_close).
LINGER_S = 2.0

Handler = Callable[[Request], Awaitable[Answer]]


class Connection(asyncio.Protocol):
    """One client connection: parses what arrives, serves its requests one at a time."""

    __slots__ = (
        "_body_reads",
        "_busy",
        "_count",
        "_fields",
        "_head_bytes",
        "_heads",
        "_in_head",
        "_linger",
        "_loop",
        "_parser",
        "_parsing",
        "_queue",
        "_reads",
        "_server",
        "_stalled_head",
        "_stopped",
        "_task",
        "_url",
        "_waiter",
        "closing",
        "flow",
        "idle_since",
        "streaming",
        "transport",
    )

    def __init__(self, server: HttpServer) -> None:
        self._server = server
        self._loop = server.loop
        self._parser = httptools.HttpRequestParser(self)
        # Bytes after a request that ends the connection are not parsed (and not an error).
        self._parser.set_dangerous_leniencies(lenient_data_after_close=True)
        self.transport: asyncio.Transport | None = None
        self.flow: FlowControl  # from connection_made on
        self._queue: deque[Request | HttpError] = deque()  # parsed, not yet answered
        self._parsing: Request | None = None  # the request whose body is arriving
        self._url = b""
        self._fields: dict[str, str] = {}
        self._count = 0  # header fields of the head being parsed
        self._in_head = True  # a head has begun (or may: a new connection owes one)
        self._heads = 0  # heads begun
        self._head_bytes = 0  # bytes of the head being parsed, after the read it began in
        self._task: asyncio.Task[None] | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._busy = False  # a request is being answered
        self._stopped = False  # nothing more is parsed: close after what is queued
        self._linger = False  # the client may still be sending: half-close, then close
        self.closing = False  # shutdown: finish what is in progress, then close
        self.streaming = False  # a Stream's head has gone out for the request at hand
        self.idle_since = server.loop.time()
        # For the sweep's stall rules: counters, so the hot path never reads the clock.
        self._reads = 0  # data_received calls
        self._stalled_head = -1  # the head a sweep last found unfinished while idle
        self._body_reads = -1  # _reads when a sweep last found a body unfinished

    # -- the transport's side --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass of it
        self.transport = transport
        self.flow = FlowControl(transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:  # so that a peer gone without a FIN is found out
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if not self._server.admit(self):
            self._stopped = True
            transport.write(TOO_MANY.render(CLOSE, False, self._server.date))
            transport.close()
            return
        self._task = self._loop.create_task(self._serve())

    def connection_lost(self, exc: BaseException | None) -> None:
        self._server.forget(self)
        self._stopped = True
        self.flow.resume_writing()  # a writer waiting finds the transport closing
        parsing, self._parsing = self._parsing, None
        if parsing is not None:
            parsing.body.fail(ConnectionResetError("the client closed the connection"))
        task = self._task
        if task is not None and not task.done():
            task.cancel()  # a handler in progress stops; the request log records a 499

    def pause_writing(self) -> None:
        self.flow.pause_writing()

    def resume_writing(self) -> None:
        self.flow.resume_writing()

    def data_received(self, data: bytes) -> None:
        if self._stopped:
            return
        self._reads += 1
        in_head = self._in_head
        heads = self._heads
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._upgraded()
        except httptools.HttpParserError as exc:
            cause = exc.__context__  # what a callback of ours raised, if one did
            if not isinstance(cause, HttpError):
                cause = HttpError(400, f"malformed HTTP request: {exc}")
            self._refuse(cause)
        else:
            if in_head and self._in_head and self._heads == heads:  # all of it was head
                self._head_bytes += len(data)
                if self._head_bytes > MAX_HEAD:
                    self._refuse(HttpError(431, f"the request head is over {MAX_HEAD} bytes"))
        queue = self._queue
        if queue:
            waiter = self._waiter
            if waiter is not None:
                self._waiter = None
                if not waiter.done():
                    waiter.set_result(None)
            if self._busy or len(queue) > 1:  # parsed ahead: read no more until answered
                self.flow.pause_reading(PIPELINE)

    # -- the parser's callbacks ------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._in_head = True
        self._heads += 1
        self._head_bytes = 0

    def on_url(self, url: bytes) -> None:
        if self._url:
            url = self._url + url
        if len(url) > MAX_TARGET:
            raise HttpError(414, f"the request target is over {MAX_TARGET} bytes")
        self._url = url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count += 1
        if self._count > MAX_FIELDS:
            raise HttpError(431, f"the request has over {MAX_FIELDS} header fields")
        if len(name) + len(value) > MAX_FIELD:
            raise HttpError(431, f"a request header field is over {MAX_FIELD} bytes")
        key = NAMES.get(name)
        if key is None:
            key = name.decode("latin-1").lower()
            if len(NAMES) < MAX_NAMES:
                NAMES[name] = key
        text = value.decode("utf-8", "replace")
        fields = self._fields
        known = fields.get(key)
        fields[key] = text if known is None else f"{known}, {text}"

    def on_headers_complete(self) -> None:
        self._in_head = False
        parser = self._parser
        url, fields = self._url, self._fields
        self._url, self._fields, self._count = b"", {}, 0
        request = Request(
            parser.get_method().decode("ascii"),
            url.decode("utf-8", "replace"),
            Headers(fields),
            http11(parser.get_http_version(), fields),
            parser.should_keep_alive(),
            self,
            Body(self.flow),
        )
        self._parsing = request
        self._queue.append(request)

    def on_body(self, data: bytes) -> None:
        if self._parsing is not None:
            self._parsing.body.feed(data)

    def on_message_complete(self) -> None:
        request, self._parsing = self._parsing, None
        if request is not None:
            request.body.end()
            if not request.keep_alive:
                self._stopped = True  # whatever follows is not read

    def _refuse(self, error: HttpError) -> None:
        """Stop parsing: a head in error is answered in turn; a body in error fails its
        reader (the handler answers 400). Either way the connection then closes."""
        self._stopped = True
        self._linger = True
        parsing, self._parsing = self._parsing, None
        if parsing is None:
            self._queue.append(error)
        else:
            message = f"malformed request body: {error.message}"
            parsing.body.fail(BadRequest(message, code="bad_http_request"))

    def _upgraded(self) -> None:
        """No protocol upgrades here (nor CONNECT): the request is answered, then we close."""
        self._stopped = True
        parsing, self._parsing = self._parsing, None
        if parsing is not None:
            parsing.keep_alive = False
            parsing.body.end()

    # -- answering ---------------------------------------------------------------------------

    @property
    def date(self) -> str:
        return self._server.date

    @property
    def idle(self) -> bool:
        """Between requests: nothing queued, nothing being answered."""
        return not self._busy and not self._queue

    def write(self, data: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the client closed the connection")
        transport.write(data)

    def writelines(self, pieces: list[bytes]) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the client closed the connection")
        transport.writelines(pieces)

    async def drain(self) -> None:
        """Wait while the client reads slower than we write."""
        await self.flow.drain()
        if self.transport is None or self.transport.is_closing():
            raise ConnectionResetError("the client closed the connection")

    def close_when_idle(self) -> None:
        """Shutdown: an idle connection closes now, a busy one after its answer."""
        self.closing = True
        if self.idle and self.transport is not None:
            self.transport.close()

    async def _serve(self) -> None:
        queue = self._queue
        flow = self.flow
        try:
            while True:
                if not queue:
                    if self.closing or self._stopped:
                        return
                    self._waiter = self._loop.create_future()
                    await self._waiter
                    continue
                item = queue.popleft()
                if not queue:
                    flow.resume_reading(PIPELINE)
                if type(item) is HttpError:
                    self._bad_request(item)
                    return
                assert isinstance(item, Request)
                self._busy = True
                keep_alive = await self._answer(item)
                self._busy = False
                item.body.discard()
                if not keep_alive:
                    return
                self.idle_since = self._loop.time()
        except (asyncio.CancelledError, ConnectionError):
            self._linger = False
        finally:
            self._close()

    def _close(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self._linger and transport.can_write_eof():
            self._stopped = True  # what still arrives is dropped
            transport.write_eof()
            self.flow.resume_reading(BODY | PIPELINE)
            self._loop.call_later(LINGER_S, transport.close)
        else:
            transport.close()

    async def _answer(self, request: Request) -> bool:
        """Serve one request; whether the connection may carry another."""
        try:
            answer = await self._server.handler(request)
        except (asyncio.CancelledError, ConnectionError):
            raise  # the client went away
        except Exception:  # a bug of ours: an OpenAI-shaped 500, and the process serves on
            log.exception("internal_error", path=request.path)
            if self.streaming:  # an answer has begun: another cannot follow it
                return False
            body = error_body("internal error; see the router's log", "server_error")
            answer = Response(500, body)
        # A body not seen to its end would be read as the next request; after a parse
        # error only what was queued before it is answered.
        if not request.body.complete:
            self._linger = True  # the rest of the body may still be on its way
        keep_alive = (
            request.keep_alive
            and request.body.complete
            and not self.closing
            and (not self._stopped or bool(self._queue))
        )
        if type(answer) is Response:
            connection = "" if request.http11 else KEEP
            if not keep_alive:
                connection = CLOSE
            self.write(answer.render(connection, request.method == "HEAD", self._server.date))
            if self.flow.write_paused:
                await self.drain()
            return keep_alive
        assert isinstance(answer, Stream)
        await answer.write_eof()
        self.streaming = False
        return keep_alive and not answer.close

    def _bad_request(self, error: HttpError) -> None:
        log.debug("bad_http_request", status=error.status, error=error.message)
        body = error_body(error.message, "invalid_request_error", "bad_http_request")
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(Response(error.status, body).render(CLOSE, False, self.date))

    # -- the sweep's questions ---------------------------------------------------------------

    def stalled(self) -> bool:
        """Whether the client has sat on a request half sent since the last sweep: a head
        begun (or owed, on a new connection) and still unfinished (a head trickled out
        byte by byte counts too), or a body with no bytes since (unless we stopped
        reading it)."""
        if self.idle:
            if not self._in_head:
                return False
            seen, self._stalled_head = self._stalled_head, self._heads
            return seen == self._heads
        if self._parsing is None or self.flow.reading_paused:
            self._body_reads = -1
            return False
        seen, self._body_reads = self._body_reads, self._reads
        return seen == self._reads

    def backlog(self) -> tuple[int, int]:
        """Requests parsed and waiting behind the one being answered, and the body bytes
        they and it hold unread."""
        waiting = len(self._queue)
        held = sum(item.body.buffered for item in self._queue if isinstance(item, Request))
        return waiting, held
