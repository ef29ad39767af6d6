"""The API's HTTP/1.1 server: listening, the connection cap, the sweep, the drain.

Why not aiohttp's own server (``web.Server``): per request it builds a ``BaseRequest``
and a ``Response``, merges headers through multidicts, runs prepare hooks and an access
log check, serializes the head through ``StreamWriter`` and re-arms flow control: about a
fifth of the router's CPU under load, for answers that are one JSON body or one event
stream. Here a connection (``router.http.connection``) parses with httptools and hands a
handler a ``Request``; the handler returns a ``Response`` (one write) or writes a
``Stream`` (``router.http.answers``).

Time is bounded by a sweep every ``stall_s`` (a timer per request would cost more): a
connection that has not sent a whole head, a first one included, within ``stall_s`` to
twice that, or that stops sending a body, is closed, as nginx's client_header/body_timeout;
an idle keep-alive connection after ``KEEPALIVE_S``. Connections are capped at
``max_connections``: at the cap the longest idle one makes room, and with none idle a
newcomer gets a 503. Shutdown stops listening, closes idle connections and lets answers
in progress finish, up to a bound.
"""

from __future__ import annotations

import asyncio
import resource
from email.utils import formatdate

import structlog

from router.http.answers import Answer, Response, Stream
from router.http.connection import Connection, Handler
from router.http.head import HttpError
from router.http.request import Request

__all__ = [
    "Answer",
    "Connection",
    "Handler",
    "HttpError",
    "HttpServer",
    "Request",
    "Response",
    "Stream",
]

log = structlog.get_logger("router.http")

# An idle keep-alive connection is closed after this: longer than a reverse proxy's idle
# timeout, so that the proxy closes first and never sends into a closing socket. (At the
# connection cap the longest idle connection is closed first, so these cannot crowd out.)
KEEPALIVE_S = 3630.0
# A client has this long (to twice this) to send a whole request head, the first one
# included, and may not pause longer mid-body: nginx's client_header_timeout and
# client_body_timeout, so that silent or trickling clients cannot hold descriptors.
STALL_S = 60.0


def default_max_connections() -> int:
    """Half the process's descriptor limit: the other half is for upstream connections
    (one per request in flight), the request log and the listening sockets."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 100_000
    return max(16, soft // 2)


class HttpServer:
    """Listens, hands each connection a ``Connection``, and drains them on shutdown."""

    def __init__(
        self, handler: Handler, *, stall_s: float = STALL_S, max_connections: int | None = None
    ) -> None:
        self.handler = handler
        self._sweep_s = stall_s  # a sweep finds a stall; the next one closes it
        self.max_connections = max_connections or default_max_connections()
        self.loop = asyncio.get_running_loop()
        self.connections: set[Connection] = set()
        self.date = formatdate(usegmt=True)  # refreshed every second, not per answer
        self.refused = 0  # connections turned away at the cap since the last sweep
        self._server: asyncio.Server | None = None
        self._timers: list[asyncio.TimerHandle] = []
        self._all_closed: asyncio.Event | None = None

    async def start(self, host: str, port: int, *, reuse_port: bool = False) -> None:
        self._server = await self.loop.create_server(
            lambda: Connection(self),
            host,
            port,
            reuse_port=reuse_port or None,
            backlog=4096,
        )
        self._timers = [
            self.loop.call_later(self._sweep_s, self._sweep),
            self.loop.call_later(1.0, self._tick),
        ]

    @property
    def port(self) -> int:
        """The port it listens on (the one the OS chose, for port 0)."""
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    def admit(self, conn: Connection) -> bool:
        """Whether a new connection may stay: under the cap, or once the longest idle
        connection has been closed to make room."""
        if len(self.connections) >= self.max_connections:
            idle = [c for c in self.connections if c.idle and c.transport is not None]
            if not idle:
                self.refused += 1
                return False
            oldest = min(idle, key=lambda c: c.idle_since)
            assert oldest.transport is not None
            oldest.transport.close()
            self.forget(oldest)
        self.connections.add(conn)
        return True

    def forget(self, conn: Connection) -> None:
        self.connections.discard(conn)
        if not self.connections and self._all_closed is not None:
            self._all_closed.set()

    def _tick(self) -> None:
        self.date = formatdate(usegmt=True)
        self._timers[1] = self.loop.call_later(1.0, self._tick)

    def _sweep(self) -> None:
        """Close connections idle past ``KEEPALIVE_S`` or stalled mid-request."""
        cutoff = self.loop.time() - KEEPALIVE_S
        for conn in list(self.connections):
            transport = conn.transport
            if transport is None or transport.is_closing():
                continue
            if conn.idle and conn.idle_since < cutoff:
                transport.close()
            elif conn.stalled():
                log.info("client_stalled", mid="head" if conn.idle else "body")
                transport.abort()  # a handler reading the body is cancelled (a 499)
        if self.refused:
            log.warning("connections_refused", count=self.refused, cap=self.max_connections)
            self.refused = 0
        self._timers[0] = self.loop.call_later(self._sweep_s, self._sweep)

    async def shutdown(self, timeout_s: float) -> None:
        """Stop accepting; let requests in progress finish (up to ``timeout_s``), then
        close what is left."""
        for timer in self._timers:
            timer.cancel()
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
