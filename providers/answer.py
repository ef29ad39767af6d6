"""An upstream answer as it arrives: its head, and its body read whole or piece by piece.

The body is buffered up to a high-water mark, past which the connection stops reading
until the reader catches up (a client reading a stream slowly slows the upstream, rather
than filling the router's memory). A body sent with ``Content-Encoding: gzip`` or
``deflate`` (we ask for those) is inflated as it is read, each piece to a bounded size,
so ``read(limit)`` holds ``limit`` decoded bytes at most, whatever the upstream sends.
"""

from __future__ import annotations

import asyncio
import zlib
from collections import deque
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from providers.http1 import Connection

_HIGH = 1 << 18  # bytes buffered unread before the connection stops reading
_LOW = 1 << 16  # ... and below which it reads again
_PIECE = 1 << 20  # the most a compressed piece inflates to in one go


class Closed(ConnectionError):
    """The connection closed before the answer's end."""


class NotHttp(Exception):
    """What came back is not an HTTP/1.1 answer we can read."""


class Deadline(TimeoutError):
    """The answer (or this part of it) was not in by its deadline."""


class Silence(TimeoutError):
    """Nothing arrived for longer than the silence allowed."""


class TooLarge(Exception):
    """The answer is larger than the reader's limit."""


class Inflater(Protocol):
    """What ``zlib.decompressobj`` returns."""

    @property
    def unconsumed_tail(self) -> bytes: ...

    @property
    def eof(self) -> bool: ...

    def decompress(self, data: bytes, max_length: int = 0, /) -> bytes: ...

    def flush(self, length: int = ..., /) -> bytes: ...


def decoder_for(encoding: str) -> Inflater | None:
    """The inflater for a Content-Encoding; NotHttp for one we did not ask for."""
    name = encoding.strip().lower()
    if name in ("", "identity"):
        return None
    if name in ("gzip", "x-gzip"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if name == "deflate":  # zlib-wrapped; a raw deflate stream is told apart at its first byte
        return zlib.decompressobj(zlib.MAX_WBITS)
    raise NotHttp(f"the upstream answered with Content-Encoding {encoding!r}, not asked for")


class Answer:
    """One answer: ``status``, ``headers`` (lower-cased names), and the body."""

    __slots__ = (
        "_chunks",
        "_conn",
        "_decoder",
        "_error",
        "_fresh",
        "_paused",
        "_size",
        "_waiter",
        "complete",
        "headers",
        "status",
    )

    def __init__(
        self, conn: Connection, status: int, headers: dict[str, str], decoder: Inflater | None
    ) -> None:
        self._conn: Connection | None = conn  # until the body is done with it
        self.status = status
        self.headers = headers
        self._decoder = decoder
        self._fresh = True  # no body byte inflated yet (deflate: which kind is unknown)
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._paused = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self.complete = False

    # -- fed by the connection ---------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._size += len(data)
        if self._size > _HIGH and not self._paused and self._conn is not None:
            self._paused = True
            self._conn.pause()
        self._wake()

    def end(self) -> None:
        self.complete = True
        self._wake()

    def fail(self, exc: BaseException) -> None:
        if not self.complete:
            self._error = exc
            self._wake()

    def detach(self) -> None:
        """The connection is done with this answer (what is buffered stays readable)."""
        conn, self._conn = self._conn, None
        if conn is not None and self._paused:
            self._paused = False
            conn.resume()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    # -- read by the caller ------------------------------------------------------------------

    def limit(self, deadline: float, silence: float) -> None:
        """Bound what is left of the answer: in by ``deadline`` (loop time), no gap
        between reads over ``silence`` seconds (from the next tick, whatever was set)."""
        if self._conn is not None:
            self._conn.limit(deadline, silence)

    def close(self) -> None:
        """Drops the connection if the body did not reach its end."""
        conn = self._conn
        if conn is not None:
            conn.abandon(self)

    async def chunk(self, room: int = _PIECE) -> bytes:
        """The next bytes of the body (decoded, at most ``room`` of them when decoding);
        b"" at its end."""
        while (data := self.take(room)) is None:
            await self.wait()
        return data

    def take(self, room: int = _PIECE) -> bytes | None:
        """What ``chunk`` returns, if it is here: None when it must ``wait`` for more.
        (A plain call: a reader with bytes in hand makes no coroutine for them.)"""
        decoder = self._decoder
        if decoder is not None and decoder.unconsumed_tail:
            return self._inflate(decoder, decoder.unconsumed_tail, room)
        chunks = self._chunks
        while chunks:
            data = chunks.popleft()
            self._size -= len(data)
            if self._paused and self._size <= _LOW and self._conn is not None:
                self._paused = False
                self._conn.resume()
            if decoder is None:
                return data
            out = self._inflate(decoder, data, room)
            if out:
                return out
        if self._error is not None:
            raise self._error
        if self.complete:
            return b"" if decoder is None else decoder.flush()
        return None

    async def wait(self) -> None:
        """Until more of the body, its end or its failure has come."""
        if not self._chunks and not self.complete and self._error is None:
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter

    def _inflate(self, decoder: Inflater, data: bytes, room: int) -> bytes:
        if self._fresh:
            self._fresh = False
            encoding = self.headers.get("content-encoding", "").strip().lower()
            if encoding == "deflate" and data[0] & 0x0F != 8:  # no zlib header: raw deflate
                self._decoder = decoder = zlib.decompressobj(-zlib.MAX_WBITS)
        try:
            return decoder.decompress(data, room)
        except zlib.error as exc:
            raise NotHttp(f"the answer's body does not decode: {exc}") from exc

    async def read(self, limit: int, *, cut: bool = False) -> bytes:
        """The whole body, decoded. Past ``limit`` bytes: TooLarge, or with ``cut`` the
        first ``limit`` bytes (and the connection is dropped)."""
        length = self.headers.get("content-length")
        if not cut and self._decoder is None and length is not None and int(length) > limit:
            raise TooLarge(f"the answer is {length} bytes; the limit is {limit}")
        if self.complete and self._decoder is None and len(self._chunks) == 1:
            data = await self.chunk()  # the usual case: in one piece, whole
            if len(data) <= limit:
                return data
            if cut:
                return data[:limit]
            raise TooLarge(f"the answer is over the limit of {limit} bytes")
        pieces = []
        size = 0
        while data := await self.chunk(limit - size + 1):
            size += len(data)
            if size > limit:
                if cut:
                    pieces.append(data[: len(data) - (size - limit)])
                    self.close()
                    break
                raise TooLarge(f"the answer is over the limit of {limit} bytes")
            pieces.append(data)
        return b"".join(pieces)
