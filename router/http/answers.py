"""What a handler answers: a whole ``Response`` (one write), or a ``Stream`` written as it
comes (server-sent events). A head is rendered in one string; a stream's leaves with its
first bytes, so a short stream is one write too.
"""

from __future__ import annotations

from http import HTTPStatus

from router.errors import error_body
from router.http.request import Request

_JSON = "application/json"
_REASONS = {s.value: s.phrase for s in HTTPStatus}
_LAST_CHUNK = b"0\r\n\r\n"
# Chunk size lines, formatted once: a token-by-token stream writes hundreds of small chunks.
_SIZE_LINES = [b"%x\r\n" % n for n in range(1 << 12)]
_JOIN_BELOW = 1 << 14  # smaller pieces are joined into one write; larger go as writelines

# The name in a handler's headers under which header lines written whole go (no header
# can have an empty name): their values come from the router's own numbers, not a client.
LINES = ""
CLOSE = "Connection: close\r\n"
KEEP = "Connection: keep-alive\r\n"  # HTTP/1.0 closes unless told otherwise


def head(status: int, headers: dict[str, str] | None, fields: str, date: str) -> bytes:
    """An answer's head: the status line, the handler's ``headers``, then ``fields``, the
    header lines the server adds (framing, Connection), each ending in CRLF, and ``date``.
    ``headers[LINES]``, taken out of ``headers`` here, is header lines the router wrote
    whole from its own numbers (a key's x-ratelimit-*: six lines, rendered as one)."""
    if not headers:
        block, lines = "", 0
    else:
        written = headers.pop(LINES, "")
        block = "".join([f"{name}: {value}\r\n" for name, value in headers.items()])
        lines = len(headers)
        if block.count("\n") != lines or block.count("\r") != lines:  # would split the head
            raise ValueError(f"a response header holds a line break: {list(headers)}")
        if written:
            block += written
    return (
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}\r\n{block}{fields}"
        f"Date: {date}\r\n\r\n"
    ).encode("utf-8", "surrogateescape")


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

    def render(self, connection: str, head_only: bool, date: str) -> bytes:
        """The answer's bytes; ``connection`` is its Connection header line, or empty."""
        fields = f"Content-Type: {self.content_type}\r\nContent-Length: {len(self.body)}\r\n"
        start = head(self.status, self.headers, fields + connection, date)
        return start if head_only else start + self.body


class Stream:
    """An answer written as it comes: chunked on HTTP/1.1, to the connection's end on
    HTTP/1.0. The head waits for the first bytes and leaves with them."""

    __slots__ = ("_chunked", "_conn", "_head", "close", "cut", "ended")

    def __init__(self, request: Request, status: int, headers: dict[str, str]) -> None:
        conn = request._conn
        self._conn = conn
        self._chunked = request.http11
        self.ended = False
        self.cut = False  # ended without its last chunk: the client sees it incomplete
        self.close = not self._chunked or not request.keep_alive or conn.closing
        framing = "Transfer-Encoding: chunked\r\n" if self._chunked else ""
        fields = framing + (CLOSE if self.close else "")
        self._head: bytes | None = head(status, headers, fields, conn.date)

    def force_close(self) -> None:
        """End the connection after this answer, without its last chunk: its end cannot
        be trusted, and a client must not take the answer for whole (or the connection
        for reusable)."""
        self.close = True
        self.cut = self._chunked

    async def write(self, data: bytes) -> None:
        if self.ended:  # bytes after the last chunk would be read as the next answer
            return
        if (data or self._head is not None) and self._put(data, b""):
            await self._conn.drain()

    async def write_eof(self, data: bytes = b"") -> None:
        if not self.ended:
            self.ended = True
            tail = _LAST_CHUNK if self._chunked and not self.cut else b""
            if self._put(data, tail):
                await self._conn.drain()

    def _put(self, data: bytes, tail: bytes) -> bool:
        """Write ``data`` (framed) and ``tail``; whether the writer must wait for a drain.
        (A plain call, not a coroutine: a stream writes many times.)"""
        conn = self._conn
        start, self._head = self._head, None
        pieces = []
        if start is not None:
            pieces.append(start)
            conn.streaming = True
        if data:
            if self._chunked:
                size = len(data)
                line = _SIZE_LINES[size] if size < len(_SIZE_LINES) else b"%x\r\n" % size
                pieces += [line, data, b"\r\n"]
            else:
                pieces.append(data)
        if tail:
            pieces.append(tail)
        if not pieces:
            return False
        if len(data) < _JOIN_BELOW:
            conn.write(b"".join(pieces))
        else:
            conn.writelines(pieces)
        return conn.flow.write_paused


Answer = Response | Stream


# A connection past the server's cap, answered and closed at once.
TOO_MANY = Response(
    503,
    error_body(
        "the router has too many open connections; retry shortly",
        "service_unavailable",
        "too_many_connections",
    ),
    headers={"Retry-After": "1"},
)
