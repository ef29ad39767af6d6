"""What a request head may be: the bounds on its size, the HTTP versions and framings
served, and ``HttpError``, how a head or its framing is refused (answered in turn, then
the connection closes). ``connection.py`` checks the bounds as the parser reads.
"""

from __future__ import annotations

from collections.abc import Mapping

MAX_TARGET = 8190  # bytes of the request target (nginx and aiohttp: 8 KiB lines)
MAX_FIELD = 8190  # bytes of one header field, name and value
MAX_FIELDS = 128  # header fields in one head
MAX_HEAD = 1 << 16  # bytes of one head, all told
# Header names as they came -> as fields are keyed (lower case): the same few come with
# every request, and a lookup costs a third of a decode and a lower. Bounded: a client
# may send any names.
NAMES: dict[bytes, str] = {}
MAX_NAMES = 512


class HttpError(Exception):
    """A request refused from its head or framing: answered in turn, then the connection closes."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def http11(version: str, fields: Mapping[str, str]) -> bool:
    """Whether a head of this ``version`` and these ``fields`` (lower-case names) is
    HTTP/1.1 (else 1.0); HttpError for what is not served."""
    if version == "1.1":
        if "host" not in fields:
            raise HttpError(400, "the request has no Host header (RFC 9112 3.2)")
        is_11 = True
    elif version == "1.0":
        is_11 = False
    else:
        raise HttpError(505, f"HTTP/{version} is not supported; use HTTP/1.1")
    coding = fields.get("transfer-encoding")
    if coding is not None and coding.strip().lower() != "chunked":
        raise HttpError(400, f"Transfer-Encoding {coding!r} is not supported; use chunked")
    return is_11
