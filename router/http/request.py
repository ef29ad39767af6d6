"""What a handler sees of one request: its head, and its body as it arrives.

Header values are decoded as UTF-8 with invalid bytes replaced, once, here: every string
a handler gets is valid Unicode, so no header a client sends (``x-request-id: a\\xff``, a
key with a stray byte) can fail the log line, the request log or the answer's head later
on; a garbled key is simply a key that matches nothing (401).

A body is buffered up to a high-water mark, past which the connection stops reading until
the handler takes the bytes (``router.http.flow``). ``read`` bounds it: by its declared
length before anything is read (so a client waiting on ``Expect: 100-continue`` is refused
without sending it), then by what arrives, and for a ``Content-Encoding`` of gzip or
deflate by what it decodes to, piece by piece, so a small compressed body cannot expand
past the limit in memory. Other encodings are refused (415): OpenAI's and Anthropic's
clients send none, and brotli or zstd would each need a dependency.
"""

from __future__ import annotations

import asyncio
import zlib
from collections import deque
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, unquote, urlsplit

from router.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from router.http.flow import BODY, FlowControl

if TYPE_CHECKING:
    from router.http.connection import Connection

# A body holding more than this unread pauses reading; it resumes below the low mark.
BODY_HIGH = 1 << 18
BODY_LOW = 1 << 16
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class Headers(Mapping[str, str]):
    """Header fields by lower-cased name; lookups take any case. A field sent more than
    once has its values joined by ", " (RFC 9110 5.3)."""

    __slots__ = ("_fields",)

    def __init__(self, fields: dict[str, str]) -> None:
        self._fields = fields  # lower-cased names

    def get(self, name: str, default: str | None = None) -> str | None:  # type: ignore[override]
        return self._fields.get(name.lower(), default)

    def __getitem__(self, name: str) -> str:
        return self._fields[name.lower()]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._fields

    def __iter__(self) -> Iterator[str]:
        return iter(self._fields)

    def __len__(self) -> int:
        return len(self._fields)

    def __repr__(self) -> str:
        return f"Headers({list(self._fields)})"  # names only: values may hold keys


class Body:
    """A request's body: bytes as they arrive, taken by the handler."""

    __slots__ = ("_chunks", "_error", "_flow", "_paused", "_size", "_waiter", "complete")

    def __init__(self, flow: FlowControl) -> None:
        self._flow = flow
        self._chunks: deque[bytes] = deque()
        self._size = 0  # bytes buffered, not yet taken
        self._paused = False  # this body paused the connection's reading
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self.complete = False  # the parser saw its end

    def feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._size += len(data)
        if self._size > BODY_HIGH and not self._paused:
            self._paused = True
            self._flow.pause_reading(BODY)
        self._wake()

    @property
    def buffered(self) -> int:
        """Bytes received and not yet taken."""
        return self._size

    def end(self) -> None:
        self.complete = True
        self._wake()

    def fail(self, exc: BaseException) -> None:
        """The body cannot be completed: a framing error, or the client went away."""
        if not self.complete:
            self._error = exc
            self._wake()

    def discard(self) -> None:
        """Drop what is buffered (the answer is out; the bytes are not needed)."""
        self._chunks.clear()
        self._size = 0
        self._taken()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _taken(self) -> None:
        if self._paused and self._size <= BODY_LOW:
            self._paused = False
            self._flow.resume_reading(BODY)

    async def chunk(self) -> bytes:
        """The next bytes of the body; b"" at its end."""
        chunks = self._chunks
        while not chunks:
            if self._error is not None:
                raise self._error
            if self.complete:
                return b""
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        data = chunks.popleft()
        self._size -= len(data)
        self._taken()
        return data

    def whole(self) -> bytes | None:
        """The body, if it is all in and in one piece (the usual case: no waiting)."""
        chunks = self._chunks
        if not self.complete or len(chunks) != 1:
            return None
        self._size = 0
        self._taken()
        return chunks.popleft()

    async def read(self, limit: int | None) -> bytes:
        """The whole body; PayloadTooLarge once more than ``limit`` bytes have come."""
        pieces = []
        size = 0
        while data := await self.chunk():
            size += len(data)
            if limit is not None and size > limit:
                raise PayloadTooLarge(f"request body is over the limit of {_size(limit)}")
            pieces.append(data)
        return b"".join(pieces)


class Request:
    """One request's head and body."""

    __slots__ = (
        "_conn",
        "_continued",
        "_query",
        "body",
        "headers",
        "http11",
        "keep_alive",
        "method",
        "path",
        "target",
    )

    def __init__(
        self,
        method: str,
        target: str,
        headers: Headers,
        http11: bool,
        keep_alive: bool,
        conn: Connection,
        body: Body,
    ) -> None:
        self.method = method
        self.target = target  # as sent: origin-form, or absolute-form from a proxy
        cut = target.find("?")
        path = target if cut < 0 else target[:cut]
        if path[:1] != "/":  # absolute-form ("http://host/v1/models"), or "*"
            path = urlsplit(target).path or path
        self.path = unquote(path) if "%" in path else path
        self.headers = headers
        self.http11 = http11  # else HTTP/1.0
        self.keep_alive = keep_alive  # the client lets the connection carry another request
        self.body = body
        self._conn = conn
        self._continued = False  # expect_body() has run
        self._query: dict[str, str] | None = None

    @property
    def content_length(self) -> int | None:
        length = self.headers.get("Content-Length")
        return None if length is None else int(length)  # digits: the parser checked

    @property
    def query(self) -> dict[str, str]:
        """The query string's fields (the first value of each)."""
        if self._query is None:
            cut = self.target.find("?")
            pairs = parse_qsl(self.target[cut + 1 :]) if cut >= 0 else []
            self._query = {}
            for name, value in pairs:
                self._query.setdefault(name, value)
        return self._query

    def expect_body(self) -> None:
        """Tell a client waiting on ``Expect: 100-continue`` to send its body (looked up
        here, not per request: only a handler that reads a body needs it)."""
        if self._continued:
            return
        self._continued = True
        if self.http11 and not self.body.complete:
            expect = self.headers.get("Expect")
            if expect is not None and expect.lower() == "100-continue":
                self._conn.write(_CONTINUE)

    async def read(self, limit: int | None = None) -> bytes:
        """The whole body, decoded, at most ``limit`` bytes (PayloadTooLarge past it)."""
        fields = self.headers._fields
        length = fields.get("content-length")
        if limit is not None and length is not None and int(length) > limit:
            raise PayloadTooLarge(f"request body is {length} bytes; the limit is {_size(limit)}")
        encoding = fields.get("content-encoding")
        decoder = None if encoding is None else _decoder(encoding)
        if decoder is None:
            data = self.body.whole()
            if data is None:
                self.expect_body()
                return await self.body.read(limit)
            if limit is not None and len(data) > limit:
                raise PayloadTooLarge(f"request body is over the limit of {_size(limit)}")
            return data
        self.expect_body()
        return await _decode(self.body, decoder, encoding or "", limit)


def _size(limit: int) -> str:
    return f"{limit} bytes ({limit / (1 << 20):g} MB)"


def _decoder(encoding: str) -> zlib._Decompress | None:
    name = encoding.strip().lower()
    if name in ("", "identity"):
        return None
    if name in ("gzip", "x-gzip"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if name == "deflate":  # zlib-wrapped as RFC 9110 says; raw deflate told apart below
        return zlib.decompressobj(zlib.MAX_WBITS)
    raise UnsupportedMediaType(
        f"Content-Encoding {encoding!r} is not supported; send the body as it is, "
        "or compressed with gzip or deflate",
        param="Content-Encoding",
    )


async def _decode(body: Body, decoder: zlib._Decompress, encoding: str, limit: int | None) -> bytes:
    """The body decompressed, never holding more than ``limit`` decoded bytes: each piece
    is inflated to at most what is left of the limit, plus one byte to see it crossed."""
    pieces = []
    size = 0
    first = True
    while data := await body.chunk():
        if first and encoding.strip().lower() == "deflate" and data[0] & 0x0F != 8:
            decoder = zlib.decompressobj(-zlib.MAX_WBITS)  # no zlib header: raw deflate
        first = False
        room = 0 if limit is None else limit - size + 1
        try:
            piece = decoder.decompress(data, room)
        except zlib.error as exc:
            raise BadRequest(
                f"request body is not valid {encoding} data: {exc}", code="bad_encoding"
            ) from exc
        size += len(piece)
        if limit is not None and size > limit:
            raise PayloadTooLarge(f"request body decodes to over the limit of {_size(limit)}")
        pieces.append(piece)
    if not decoder.eof:
        raise BadRequest(f"request body ends inside its {encoding} data", code="bad_encoding")
    return b"".join(pieces)
