"""A keep-alive HTTP/1.1 client for one upstream origin, assembled from aiohttp's parts.

Why not ``aiohttp.ClientSession``: for every request it builds a ``ClientRequest`` (URL
checks, header merging through multidicts, cookie and auth hooks, tracing signals), a
``ClientResponse`` and a connector key, which under load cost the router about as much
CPU as all of its own routing. Our fast path sends a POST with the same head to the same
origin every time, so the head is rendered once per endpoint and the pool is a deque.
What reads the answer is still aiohttp: its ``ResponseHandler`` protocol, its llhttp C
parser (chunked and content-length framing, decompression, limits) and its
``StreamReader`` with flow control and the ``sock_read`` timer.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import Mapping
from typing import Any

from aiohttp.client_exceptions import ClientConnectionError, ServerDisconnectedError
from aiohttp.client_proto import ResponseHandler
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.streams import StreamReader
from multidict import CIMultiDictProxy
from yarl import URL

_READ_BUFSIZE = 2**16  # aiohttp's: an answer is read as it was through ClientSession
_USER_AGENT = "llm-router"


class Answer:
    """The status line and headers of an answer; ``payload`` streams its body.

    The connection goes back to the pool as soon as the parser has seen the body's end
    (as aiohttp's ``ClientResponse`` does), whether or not anyone calls ``close``.
    """

    __slots__ = ("_origin", "_protocol", "headers", "payload", "status")

    def __init__(
        self, origin: Origin, protocol: ResponseHandler, message: Any, payload: StreamReader
    ) -> None:
        self._origin: Origin | None = origin
        self._protocol = protocol
        self.status: int = message.code
        self.headers: CIMultiDictProxy[str] = message.headers
        self.payload = payload
        payload.on_eof(self._ended)  # runs at once if the whole body is already in

    @property
    def protocol(self) -> ResponseHandler:
        return self._protocol

    def _ended(self) -> None:
        origin, self._origin = self._origin, None
        if origin is not None:
            origin.release(self._protocol, reusable=True)

    def close(self) -> None:
        """Drops the connection if the body did not reach its end."""
        origin, self._origin = self._origin, None
        if origin is not None:
            origin.release(self._protocol, reusable=False)


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
        self._idle: deque[tuple[ResponseHandler, float]] = deque()
        self._open = 0  # idle + busy + being connected
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._sweep: asyncio.TimerHandle | None = None
        self._closed = False

    def head(self, path: str) -> bytes:
        """Everything before the Content-Length value, rendered once per path."""
        return b"POST " + path.encode("ascii") + b" HTTP/1.1\r\n" + self._fields

    async def post(self, head: bytes, body: bytes, connect_s: float, read_s: float) -> Answer:
        """Send one request; returns once the status line and headers are in.

        Raises ``TimeoutError`` (connect), ``OSError`` (connect), or aiohttp's
        ``ClientError`` family (the connection failed or timed out before an answer).
        """
        protocol = await self._acquire(connect_s)
        try:
            protocol.set_response_params(read_timeout=read_s, read_bufsize=_READ_BUFSIZE)
            if protocol.transport is None:  # closed by the peer as it was made
                raise ServerDisconnectedError()
            protocol.transport.write(b"%sContent-Length: %d\r\n\r\n%s" % (head, len(body), body))
            protocol.start_timeout()
            while True:
                try:
                    message, payload = await protocol.read()
                except HttpProcessingError as exc:
                    raise ClientConnectionError(f"not an HTTP answer: {exc.message}") from exc
                if not 100 <= message.code < 200 or message.code == 101:
                    break
        except BaseException:
            self.release(protocol, reusable=False)
            raise
        return Answer(self, protocol, message, payload)

    async def _acquire(self, connect_s: float) -> ResponseHandler:
        idle = self._idle
        while True:
            while idle:
                protocol, _ = idle.pop()  # the most recently used: least likely stale
                if protocol.is_connected() and not protocol.should_close:
                    return protocol
                protocol.close()
                self._open -= 1
            if self._open < self._max:
                break
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    self._wake()  # pass on the turn we were given
                raise
        self._open += 1
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(connect_s):
                _, protocol = await loop.create_connection(
                    lambda: ResponseHandler(loop), self.host, self.port, ssl=self._ssl
                )
        except BaseException:
            self._open -= 1
            self._wake()
            raise
        return protocol

    def release(self, protocol: ResponseHandler, *, reusable: bool) -> None:
        if reusable and not self._closed and protocol.is_connected() and not protocol.should_close:
            self._idle.append((protocol, time.monotonic()))
            if self._sweep is None:
                self._sweep = asyncio.get_running_loop().call_later(
                    self._keepalive_s, self._close_stale
                )
        else:
            protocol.close()
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
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        while self._idle:
            self._idle.pop()[0].close()
            self._open -= 1
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(ClientConnectionError("the client was closed"))


__all__ = ["Answer", "Origin"]
