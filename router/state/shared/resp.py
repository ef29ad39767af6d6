"""A lean pipelining Redis client: one connection for commands, one per subscription; RESP2.

Why not redis.asyncio (benchmarks/redis_client.py, one run, the same admission EVALSHA
through each; docs/teams.md has the table): 89-94 us of CPU per admission through
``Redis.evalsha`` at one caller, with hiredis or without, and 53-57 us at 16 (27-30 us
batched into a pipeline per loop turn); this client 31 us and 5.5 us. redis-py's best
case adds a fifth of a whole request under load, more than the budget for limits. For
the cooldowns' subscription (off the request path), a redis-py ``PubSub`` was tried
again (redis-py 8.1.0): a follower task cancelled while it waited in ``get_message``
stayed there (with or without a timeout), so closing the store hung; this client's
subscription is kept for it.

It writes a command at once on an idle connection while commands come one at a time,
every command issued in one event-loop turn with one ``write`` under load, and matches
replies to callers in order. It speaks what the shared state needs (commands, pipelines,
one subscription), nothing more; redis-py is what the tests and benchmarks use to look
into Redis.

A command unanswered after the timeout aborts the connection (its replies could no longer
be matched in order), failing every call waiting on it; the next call reconnects. One
watchdog timer per busy connection bounds every wait, not a timer per call.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import deque
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote, urlparse

__all__ = ["Connection", "RespClient", "RespError", "Sink", "bulk", "encode"]

Sink = Callable[[Any], None]  # takes a reply, an error reply or the connection's loss
_MAX_BUFFER = 64 << 20  # a reply larger than this is not one of ours: drop the connection


class RespError(Exception):
    """An error reply from Redis (``-ERR ...``, ``-NOSCRIPT ...``)."""


def bulk(value: Any) -> bytes:
    data = value if isinstance(value, bytes) else str(value).encode()
    return b"$%d\r\n%s\r\n" % (len(data), data)


def encode(*args: Any) -> bytes:
    """One command in RESP2: an array of bulk strings."""
    return b"*%d\r\n" % len(args) + b"".join(bulk(a) for a in args)


def _parse(buf: bytearray, pos: int) -> tuple[Any, int] | None:
    """(reply, position after it) or None when ``buf`` does not hold all of it yet."""
    end = buf.find(b"\r\n", pos)
    if end < 0:
        return None
    kind = buf[pos]
    if kind == 0x24:  # $ bulk string
        n = int(buf[pos + 1 : end])
        if n < 0:
            return None, end + 2
        stop = end + 2 + n
        if len(buf) < stop + 2:
            return None
        return bytes(buf[end + 2 : stop]), stop + 2
    if kind == 0x3A:  # : integer
        return int(buf[pos + 1 : end]), end + 2
    if kind == 0x2A:  # * array
        n = int(buf[pos + 1 : end])
        if n < 0:
            return None, end + 2
        items = []
        at = end + 2
        for _ in range(n):
            found = _parse(buf, at)
            if found is None:
                return None
            item, at = found
            items.append(item)
        return items, at
    if kind == 0x2B:  # + simple string
        return bytes(buf[pos + 1 : end]), end + 2
    if kind == 0x2D:  # - error
        return RespError(buf[pos + 1 : end].decode("utf-8", "replace")), end + 2
    raise ConnectionError(f"not a RESP2 reply: {bytes(buf[pos : pos + 16])!r}")


class Connection(asyncio.Protocol):
    def __init__(self, loop: asyncio.AbstractEventLoop, timeout_s: float) -> None:
        self.loop = loop
        self.timeout_s = timeout_s
        self.transport: asyncio.Transport | None = None
        self.waiters: deque[tuple[asyncio.Future[Any] | Sink, float]] = deque()  # (caller, sent at)
        self._watchdog: asyncio.TimerHandle | None = None
        self.buf = bytearray()
        self.out: list[bytes] = []
        self.closed = False
        self.alone = False  # the last write carried one command
        # A subscribed connection: what arrives unasked (pub/sub messages) is queued here.
        self.pushes: asyncio.Queue[Any] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def send(self, command: bytes) -> asyncio.Future[Any]:
        """Queue ``command`` for this turn's write; its reply comes in the future (an
        error reply, or the connection's loss, raised)."""
        if self.closed:
            raise ConnectionError("the Redis connection is closed")
        fut = self.loop.create_future()
        if self.alone and not self.waiters:
            # Idle, and the last writes carried one command each (one request at a time):
            # nothing to share a write with, so no loop turn's wait for company. Under
            # load (writes carrying several) a command waits for the turn's others.
            if self._watchdog is None:
                self._watchdog = self.loop.call_later(self.timeout_s / 2, self._check)
            self.waiters.append((fut, self.loop.time()))
            self.out.append(command)
            self._flush()
            return fut
        if not self.out:
            self.loop.call_soon(self._flush)  # this turn's commands leave in one write
        self.out.append(command)
        self.waiters.append((fut, self.loop.time()))
        return fut

    def post(self, command: bytes, sink: Sink) -> None:
        """``send`` for a reply nobody awaits: ``sink`` gets it as it arrives, error
        replies and the connection's loss as values (no future, no task wakes up)."""
        if self.closed:
            raise ConnectionError("the Redis connection is closed")
        if not self.out:
            self.loop.call_soon(self._flush)
        self.out.append(command)
        if not self.waiters and self._watchdog is None:
            self._watchdog = self.loop.call_later(self.timeout_s / 2, self._check)
        self.waiters.append((sink, self.loop.time()))

    def _check(self) -> None:
        """The oldest unanswered command waits at most ``timeout_s`` (plus half of it):
        one timer per busy connection instead of one per call."""
        self._watchdog = None
        if self.closed or not self.waiters:
            return
        if self.loop.time() - self.waiters[0][1] > self.timeout_s:
            self.abort(TimeoutError(f"Redis did not answer within {self.timeout_s} s"))
            return
        self._watchdog = self.loop.call_later(self.timeout_s / 2, self._check)

    def _flush(self) -> None:
        out, self.out = self.out, []
        self.alone = len(out) == 1
        if self.transport is not None and not self.closed:
            self.transport.write(b"".join(out))

    def data_received(self, data: bytes) -> None:
        if not self.buf and data[:1] == b"$" and len(self.waiters) == 1:
            # The usual read: one bulk string (an admission's answer) for one caller.
            end = data.find(b"\r\n")
            size = data[1:end]
            if end > 1 and size.isdigit() and len(data) == end + 4 + int(size):
                fut = self.waiters.popleft()[0]
                reply = data[end + 2 : -2]
                if not isinstance(fut, asyncio.Future):
                    fut(reply)
                elif not fut.done():
                    fut.set_result(reply)
                return
        buf = self.buf
        buf += data
        pos = 0
        try:
            while pos < len(buf):
                found = _parse(buf, pos)
                if found is None:
                    break
                reply, pos = found
                if not self.waiters:
                    if self.pushes is None:
                        raise ConnectionError("a reply nobody asked for")
                    self.pushes.put_nowait(reply)  # QueueFull: a reader that fell behind
                    continue
                fut = self.waiters.popleft()[0]
                if not isinstance(fut, asyncio.Future):
                    fut(reply)  # a sink: takes error replies as values
                elif not fut.done():  # a caller that was cancelled has gone
                    if isinstance(reply, RespError):
                        fut.set_exception(reply)
                    else:
                        fut.set_result(reply)
        except (ConnectionError, ValueError, asyncio.QueueFull) as exc:
            self.abort(ConnectionError(str(exc) or type(exc).__name__))
            return
        del buf[:pos]
        if len(buf) > _MAX_BUFFER:
            self.abort(ConnectionError("reply too large"))

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(ConnectionError(f"Redis closed the connection: {exc or 'EOF'}"))

    def abort(self, exc: Exception) -> None:
        if self.transport is not None:
            self.transport.abort()
        self._fail(exc)

    def _fail(self, exc: Exception) -> None:
        self.closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        while self.waiters:
            fut = self.waiters.popleft()[0]
            if not isinstance(fut, asyncio.Future):
                fut(exc)
            elif not fut.done():
                fut.set_exception(exc)
        if self.pushes is not None:
            with contextlib.suppress(asyncio.QueueFull):
                self.pushes.put_nowait(exc)


class RespClient:
    """``redis://[user:password@]host[:port][/db]``, ``rediss://`` (TLS) or ``unix://path``."""

    def __init__(self, url: str, *, timeout_s: float) -> None:
        parsed = urlparse(url)
        if parsed.scheme not in ("redis", "rediss", "unix"):
            raise ValueError(f"not a Redis URL (redis://, rediss:// or unix://): {parsed.scheme}")
        self.scheme = parsed.scheme
        self.host = parsed.hostname or "127.0.0.1"
        self.port = parsed.port or 6379
        self.path = parsed.path
        self.username = unquote(parsed.username) if parsed.username else None
        self.password = unquote(parsed.password) if parsed.password else None
        db = parsed.path.strip("/") if parsed.scheme != "unix" else ""
        self.db = int(db) if db else 0
        self.timeout_s = timeout_s
        self.proto: Connection | None = None
        self._connecting: asyncio.Future[Connection] | None = None
        self._subscribed: list[Connection] = []

    async def _connect(self) -> Connection:
        loop = asyncio.get_running_loop()

        def make() -> Connection:
            return Connection(loop, self.timeout_s)

        async with asyncio.timeout(self.timeout_s):  # a host that drops SYNs must not pile up
            if self.scheme == "unix":
                _, proto = await loop.create_unix_connection(make, self.path)
            else:
                context = ssl.create_default_context() if self.scheme == "rediss" else None
                _, proto = await loop.create_connection(make, self.host, self.port, ssl=context)
        hello = []
        if self.password is not None:
            auth = [self.username, self.password] if self.username else [self.password]
            hello.append(proto.send(encode("AUTH", *auth)))
        if self.db:
            hello.append(proto.send(encode("SELECT", self.db)))
        try:
            for fut in hello:
                await fut
        except BaseException:
            proto.abort(ConnectionError("set-up failed"))
            raise
        return proto

    def connected(self) -> Connection | None:
        """The open connection, if there is one (no waiting)."""
        proto = self.proto
        return proto if proto is not None and not proto.closed else None

    async def connection(self) -> Connection:
        proto = self.proto
        if proto is not None and not proto.closed:
            return proto
        if self._connecting is None:  # one connect for every caller waiting on it
            task = asyncio.ensure_future(self._connect())
            self._connecting = task
            task.add_done_callback(self._connected)
        return await asyncio.shield(self._connecting)

    def _connected(self, task: asyncio.Future[Connection]) -> None:
        self._connecting = None
        if not task.cancelled() and task.exception() is None:
            self.proto = task.result()

    async def call(self, command: bytes) -> Any:
        """Send one encoded command; its reply (a ``RespError`` reply is raised)."""
        proto = await self.connection()
        return await proto.send(command)

    async def pipeline(self, commands: list[bytes]) -> list[Any]:
        """Several commands in one write; their replies, error replies as values."""
        proto = await self.connection()
        futures = [proto.send(c) for c in commands]
        return await asyncio.gather(*futures, return_exceptions=True)

    async def subscribe(self, channel: str) -> asyncio.Queue[Any]:
        """A connection of its own subscribed to ``channel``; its queue receives each
        message as ``[b"message", channel, data]``, and an exception when it is lost."""
        proto = await self._connect()
        proto.pushes = asyncio.Queue(maxsize=10_000)
        try:
            await proto.send(encode("SUBSCRIBE", channel))
        except BaseException:
            proto.abort(ConnectionError("subscribe failed"))
            raise
        self._subscribed.append(proto)
        return proto.pushes

    def reset(self) -> None:
        """Drop the connection (after a timeout: its replies can no longer be matched)."""
        if self.proto is not None:
            self.proto.abort(ConnectionError("reset after a timeout"))
            self.proto = None

    def close(self) -> None:
        self.reset()
        for proto in self._subscribed:
            proto.abort(ConnectionError("closed"))
        self._subscribed.clear()
