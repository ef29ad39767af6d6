"""A keep-alive HTTP/1.1 client for one upstream origin, on httptools' response parser.

Why not ``aiohttp.ClientSession``: for every request it builds a ``ClientRequest`` (URL
checks, header merging through multidicts, cookie and auth hooks, tracing signals), a
``ClientResponse`` and a connector key, which under load cost the router about as much
CPU as all of its own routing. Our fast path sends a POST with the same head to the same
origin every time, so the head is rendered once per endpoint and the pool is a deque. An
answer is read by llhttp (httptools' public parser, as the server side uses) into an
``Answer`` (``providers.answer``).

Time is bounded by absolute deadlines, not per read: each connection in use holds the
answer's deadline and the silence allowed since its last read, and one ticker per origin
checks them every ``TICK_S`` while requests are in flight. An upstream that sends one byte
at a time cannot stretch a request past its deadline; a bound set mid-answer (the idle
timeout, once the first token is in) holds from the next tick, whatever was set before.
No timer is armed or cancelled per request or per read (that cost 1.6% of a request's
instructions): the hot path sets two numbers and reads the clock once per read.
"""

from __future__ import annotations

import asyncio
import math
import ssl
import time
from collections import deque
from collections.abc import Mapping
from typing import cast

import httptools
from yarl import URL

from providers.answer import Answer, Closed, Deadline, NotHttp, Silence, decoder_for

__all__ = ["Answer", "Closed", "Deadline", "NotHttp", "Origin", "Silence"]

_USER_AGENT = "llm-router"
# Header names as they came -> lower case: an upstream sends the same few every time,
# and a lookup costs a third of a decode and a lower. Bounded: a peer may send any names.
_NAMES: dict[bytes, str] = {}
_MAX_NAMES = 512
TICK_S = 0.1  # how often deadlines are checked: a bound holds to within this


class Connection(asyncio.Protocol):
    """One upstream connection: sends a request, parses its answer, keeps the time."""

    __slots__ = (
        "_answer",
        "_deadline",
        "_fields",
        "_head",
        "_last",
        "_loop",
        "_origin",
        "_parser",
        "_silence",
        "_until_close",
        "reusable",
        "transport",
    )

    def __init__(self, origin: Origin, loop: asyncio.AbstractEventLoop) -> None:
        self._origin = origin
        self._loop = loop
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.reusable = True  # no side has said close, nothing went wrong
        self._head: asyncio.Future[Answer] | None = None  # waiting for the answer's head
        self._answer: Answer | None = None  # the answer whose body is arriving
        self._fields: dict[str, str] = {}
        self._until_close = False  # the answer's end is the connection's
        self._deadline = math.inf  # loop time by which the answer must be in (this phase)
        self._silence = math.inf  # seconds allowed between reads
        self._last = 0.0  # loop time of the last read (inf while we stopped reading)

    @property
    def usable(self) -> bool:
        return self.reusable and self.transport is not None and not self.transport.is_closing()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def connection_lost(self, exc: BaseException | None) -> None:
        self.reusable = False
        if self._answer is not None and self._until_close:
            self._answer.end()  # framed by the close: this is its end
            self._finish(reusable=False)
        else:
            self._fail(Closed("the upstream closed the connection before the answer's end"))

    def data_received(self, data: bytes) -> None:
        self._last = self._loop.time()
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            cause = exc.__context__
            self._fail(cause if isinstance(cause, NotHttp) else NotHttp(str(exc)))

    # -- the parser's callbacks ------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        key = _NAMES.get(name)
        if key is None:
            key = name.decode("latin-1").lower()
            if len(_NAMES) < _MAX_NAMES:
                _NAMES[name] = key
        text = value.decode("latin-1")
        known = self._fields.get(key)
        self._fields[key] = text if known is None else f"{known}, {text}"

    def on_headers_complete(self) -> None:
        parser = self._parser
        status = parser.get_status_code()
        fields, self._fields = self._fields, {}
        if status < 200:
            return  # an interim answer (100 Continue): the real one follows
        head = self._head
        if head is None or head.done():
            raise NotHttp("an answer nobody asked for")
        self._head = None
        self.reusable = parser.should_keep_alive()
        self._until_close = (
            "content-length" not in fields
            and "transfer-encoding" not in fields
            and status not in (204, 304)
        )
        encoding = fields.get("content-encoding")
        answer = Answer(self, status, fields, None if encoding is None else decoder_for(encoding))
        self._answer = answer
        head.set_result(answer)

    def on_body(self, data: bytes) -> None:
        if self._answer is not None:
            self._answer.feed(data)

    def on_message_complete(self) -> None:
        answer = self._answer
        if answer is not None:  # else an interim answer's end
            answer.end()
            self._finish(reusable=self.reusable)

    # -- sending, and the time ---------------------------------------------------------------

    def send(self, data: bytes, deadline: float, silence: float) -> asyncio.Future[Answer]:
        """Write a request; the future is its answer's head."""
        assert self.transport is not None
        self._head = head = self._loop.create_future()
        self._last = self._loop.time()
        self._deadline = deadline
        self._silence = silence
        self.transport.write(data)
        self._origin.watch(self)
        return head

    def limit(self, deadline: float, silence: float) -> None:
        """Set the bounds of what is left of the answer (checked from the next tick)."""
        self._deadline = deadline
        self._silence = silence

    def check(self, now: float) -> None:
        """The ticker's question: is the answer past its deadline, or silent too long?"""
        if self._head is None and self._answer is None:
            return  # failed already, waiting to be released
        if now >= self._deadline:
            self._fail(Deadline("the answer was not in by its deadline"))
        elif now >= self._last + self._silence:
            self._fail(Silence(f"nothing from the upstream for {self._silence:g}s"))

    def pause(self) -> None:
        """The reader is behind: stop reading; its silence is ours, not the upstream's."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()
        self._last = math.inf

    def resume(self) -> None:
        self._last = self._loop.time()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def abandon(self, answer: Answer) -> None:
        """The reader drops ``answer`` before its end: the connection cannot be reused."""
        if self._answer is answer:
            self._finish(reusable=False)

    def _fail(self, exc: BaseException) -> None:
        """The answer cannot complete: whoever waits for it learns why; no reuse."""
        self.reusable = False
        head, self._head = self._head, None
        if head is not None and not head.done():
            head.set_exception(exc)  # post() then releases the connection
        if self._answer is not None:
            self._answer.fail(exc)
            self._finish(reusable=False)
        elif self.transport is not None:
            self.transport.close()

    def _finish(self, *, reusable: bool) -> None:
        """The answer is done with the connection (whole, failed or dropped)."""
        answer, self._answer = self._answer, None
        self._deadline = self._silence = math.inf
        if answer is not None:
            answer.detach()  # resumes reading if the answer had paused it
            self._origin.release(self, reusable=reusable)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class Origin:
    """Pooled connections to one scheme://host:port, capped at ``max_connections``."""

    def __init__(
        self,
        base: URL,
        headers: Mapping[str, str],
        *,
        max_connections: int = 4096,
        keepalive_s: float = 30.0,
    ) -> None:
        if base.scheme not in ("http", "https") or not base.host:
            raise ValueError(f"upstream URL must be http(s)://host[:port]/..., got {base}")
        self.host = base.host
        self.port = base.port or (443 if base.scheme == "https" else 80)
        self._ssl: ssl.SSLContext | None = (
            ssl.create_default_context() if base.scheme == "https" else None
        )
        host = base.host if base.is_default_port() else f"{base.host}:{self.port}"
        lines = [
            ("Host", host),
            ("User-Agent", _USER_AGENT),
            ("Accept", "*/*"),
            ("Accept-Encoding", "gzip, deflate"),
            *headers.items(),
        ]
        for name, value in lines:
            if any(c in name or c in value for c in "\r\n\0"):
                raise ValueError(f"header {name!r}: line breaks are not allowed")
        self._fields = "".join(f"{name}: {value}\r\n" for name, value in lines).encode("latin-1")
        self._max = max_connections
        self._keepalive_s = keepalive_s
        self._idle: deque[tuple[Connection, float]] = deque()
        self._open = 0  # idle + busy + being connected
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._sweep: asyncio.TimerHandle | None = None
        self._timed: set[Connection] = set()  # in use: their deadlines are checked
        self._ticker: asyncio.TimerHandle | None = None
        self._closed = False

    def head(self, path: str) -> bytes:
        """Everything before the Content-Length value, rendered once per path."""
        return b"POST " + path.encode("ascii") + b" HTTP/1.1\r\n" + self._fields

    async def post(
        self, head: bytes, body: bytes, connect_s: float, deadline: float, silence: float
    ) -> Answer:
        """Send one request; returns once the status line and headers are in.

        ``deadline`` (loop time) bounds the wait for the head, ``silence`` the gap between
        reads; the answer's ``limit`` sets them for its body. Raises ``TimeoutError``
        (connect), ``OSError`` (connect, or ``Closed`` before an answer), ``Deadline`` or
        ``Silence`` (both ``TimeoutError``), or ``NotHttp``.
        """
        conn = await self._acquire(connect_s, deadline)
        data = b"%sContent-Length: %d\r\n\r\n%s" % (head, len(body), body)
        head_future = None
        try:
            if conn.transport is None or conn.transport.is_closing():
                raise Closed("the upstream closed the connection before the request")
            head_future = conn.send(data, deadline, silence)
            return await head_future
        except BaseException:
            came = head_future is not None and head_future.done() and not head_future.cancelled()
            if came and head_future is not None and head_future.exception() is None:
                head_future.result().close()  # cancelled just as the head came: its answer
                raise  # owns the connection now, and closing it releases it
            self.release(conn, reusable=False)
            raise

    async def _acquire(self, connect_s: float, deadline: float) -> Connection:
        """A pooled connection, or a new one; waits for a free slot (up to ``deadline``)
        when ``max_connections`` are open."""
        idle = self._idle
        while True:
            while idle:
                conn, _ = idle.pop()  # the most recently used: least likely stale
                if conn.usable:
                    return conn
                conn.close()
                self._open -= 1
            if self._open < self._max:
                break
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                async with asyncio.timeout_at(deadline):
                    await waiter
            except BaseException as exc:
                if waiter.done() and not waiter.cancelled():
                    self._wake()  # pass on the turn we were given
                if isinstance(exc, TimeoutError):
                    raise Deadline("no free connection to the upstream in time") from exc
                raise
        self._open += 1
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(max(0.0, min(connect_s, deadline - loop.time()))):
                _, conn = await loop.create_connection(
                    lambda: Connection(self, loop),
                    self.host,
                    self.port,
                    ssl=self._ssl,
                    server_hostname=self.host if self._ssl is not None else None,
                )
        except BaseException:
            self._open -= 1
            self._wake()
            raise
        return conn

    def watch(self, conn: Connection) -> None:
        """Check ``conn``'s deadlines every tick until it is released."""
        self._timed.add(conn)
        if self._ticker is None:
            self._ticker = asyncio.get_running_loop().call_later(TICK_S, self._tick)

    def _tick(self) -> None:
        now = asyncio.get_running_loop().time()
        for conn in list(self._timed):  # a failed check releases its connection
            conn.check(now)
        self._ticker = None
        if self._timed:
            self._ticker = asyncio.get_running_loop().call_later(TICK_S, self._tick)

    def release(self, conn: Connection, *, reusable: bool) -> None:
        self._timed.discard(conn)
        if reusable and not self._closed and conn.usable:
            self._idle.append((conn, time.monotonic()))
            if self._sweep is None:
                self._sweep = asyncio.get_running_loop().call_later(
                    self._keepalive_s, self._close_stale
                )
        else:
            conn.close()
            self._open -= 1
        self._wake()

    def _wake(self) -> None:
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _close_stale(self) -> None:
        """Close connections idle for longer than ``keepalive_s`` (servers drop them too)."""
        self._sweep = None
        cutoff = time.monotonic() - self._keepalive_s
        idle = self._idle
        while idle and idle[0][1] <= cutoff:
            idle.popleft()[0].close()
            self._open -= 1
        if idle:
            self._sweep = asyncio.get_running_loop().call_later(
                idle[0][1] - cutoff, self._close_stale
            )

    def close(self) -> None:
        self._closed = True
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        while self._idle:
            self._idle.pop()[0].close()
            self._open -= 1
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(Closed("the client was closed"))
