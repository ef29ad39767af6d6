"""The one job of a provider: send a request, hand back the answer.

``send`` returns once the upstream has answered with a 2xx status (headers for HTTP),
or raises a ``providers.errors.UpstreamError``. The answer is read whole (``read``) or
as raw SSE bytes (``chunks``), never re-serialised. Tests swap the provider, not patch it
(httpx's ``BaseTransport`` and ``MockTransport``).
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol
from urllib.parse import urlsplit

import orjson
from pydantic import BaseModel, ConfigDict, Field

OPERATIONS = ("chat/completions", "completions", "embeddings", "responses", "messages")


@dataclass(slots=True)
class UpstreamRequest:
    operation: str  # one of OPERATIONS
    payload: dict[str, Any]  # the client's body, ``model`` replaced, routing fields removed
    stream: bool
    request_id: str
    headers: Mapping[str, str] | None = None  # client headers its API passes on as they came
    connect_s: float = 5.0
    read_s: float = 60.0  # longest silence before the first token (max of ttft and idle)
    # Absolute bounds, from the moment of sending, whatever the upstream's pace: the first
    # token of a stream (the head of a non-streamed answer) within ``first_s``, the whole
    # answer within ``total_s``. Providers with ``native_timeouts`` hold them themselves.
    first_s: float = math.inf
    total_s: float = math.inf
    _body: bytes | None = field(default=None, repr=False)

    @property
    def body(self) -> bytes:
        """The JSON body, serialised once, on first use (HTTP providers only)."""
        if self._body is None:
            self._body = orjson.dumps(self.payload)
        return self._body


class UpstreamResponse(Protocol):
    status: int
    content_type: str

    async def read(self) -> bytes:
        """The whole body of a non-streamed answer."""
        ...

    def chunks(self) -> AsyncIterator[bytes]:
        """Raw bytes of a streamed answer, as they arrive (SSE, not split into events)."""
        ...

    def set_idle_timeout(self, seconds: float) -> None:
        """The first token is in: from now on the silence allowed between chunks is
        ``seconds`` (at once, whatever timer is running), and only ``total_s`` bounds the
        rest."""
        ...

    def close(self) -> None:
        """Release the answer; an unfinished one is aborted (the upstream sees the close)."""
        ...


class Provider(Protocol):
    kind: str
    # True when ``read_s``, ``first_s`` and ``total_s`` are enforced by the transport itself
    # (providers.http1's timer), so the pipeline needs no timer of its own.
    native_timeouts: bool

    async def send(self, request: UpstreamRequest) -> UpstreamResponse: ...

    async def aclose(self) -> None: ...


# How a host takes reasoning requests (``router.apis.reasoning``): ``passthrough`` leaves
# the body as the client sent it.
ReasoningForm = Literal["passthrough", "openai", "anthropic", "openrouter", "tokenlx"]
# The client APIs a host may speak natively (the router's ``router.apis``); a request in
# another one reaches it translated.
ApiName = Literal["chat", "completions", "embeddings", "responses", "messages"]


class ProviderSettings(BaseModel):
    """What routes.yaml says about one provider of a kind, validated once at load.

    A kind subclasses this in its own module with ``kind: Literal["<kind>"]`` and its
    fields (bounds beside them), and ``build`` makes the provider; ``providers.KINDS``
    lists the kinds. Unknown keys are errors, and the object is frozen.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: str
    # The client APIs the host speaks natively, when not its kind's (``DEFAULT_APIS``).
    apis: tuple[ApiName, ...] | None = Field(
        None,
        min_length=1,
        description=(
            "Client APIs the host speaks natively (`chat`, `completions`,"
            " `embeddings`, `responses`, `messages`); default: its "
            "kind's. Others are translated."
        ),
    )
    DEFAULT_APIS: ClassVar[frozenset[str]] = frozenset({"chat", "completions", "embeddings"})
    # The host keeps a prompt cache (prompt-cache affinity applies to its endpoints even
    # without a ``cache_read`` price below ``input``).
    prompt_cache: bool = Field(
        False,
        description="The host caches prompts: affinity applies even without a `cache_read` price.",
    )

    def key_env(self) -> str | None:
        """The environment variable that holds this provider's key, if it takes one."""
        value = getattr(self, "api_key_env", None)
        return value if isinstance(value, str) else None

    def speaks(self) -> frozenset[str]:
        """The client APIs the host speaks natively: its ``apis``, or its kind's."""
        return frozenset(self.apis) if self.apis else self.DEFAULT_APIS

    def build(self, name: str, api_key: str | None) -> Provider:
        """The provider these settings describe (called only for endpoints in use)."""
        raise NotImplementedError


def http_base_url(value: str) -> str:
    """A provider's ``base_url``: http(s), without a trailing slash and without credentials.

    ``https://user:pass@host`` would be dropped by the client without a word; a key
    belongs in ``api_key_env`` (read from the environment) or ``headers``.
    """
    if not value.startswith(("http://", "https://")):
        raise ValueError("must start with http:// or https://")
    try:
        parts = urlsplit(value)
    except ValueError as exc:
        raise ValueError("is not a valid URL") from exc
    if parts.username is not None or parts.password is not None:
        # Never echo the value: it holds a secret.
        raise ValueError(
            "must not hold credentials (user:password@); name the key's variable in "
            "api_key_env or send it in headers"
        )
    return value.rstrip("/")


class BufferedResponse:
    """An answer already in memory, or produced by a local async generator."""

    def __init__(
        self,
        body: bytes = b"",
        *,
        stream: AsyncIterator[bytes] | None = None,
        status: int = 200,
        content_type: str = "application/json",
    ) -> None:
        self.status = status
        self.content_type = content_type
        self._body = body
        self._stream = stream

    async def read(self) -> bytes:
        if self._stream is not None:
            return b"".join([c async for c in self._stream])
        return self._body

    def chunks(self) -> AsyncIterator[bytes]:
        if self._stream is None:
            return _once(self._body)
        return self._stream

    def set_idle_timeout(self, seconds: float) -> None:
        pass

    def close(self) -> None:
        # Dropping an unfinished async generator lets the loop's asyncgen finaliser run
        # its cleanup; nothing here holds a socket.
        self._stream = None


async def _once(body: bytes) -> AsyncIterator[bytes]:
    yield body


# The longest wait an upstream's Retry-After is taken for: an hour, as long as any real
# host asks. 1e400 parses as infinity, and a date years away is as good as one: either
# would set an endpoint aside for ever (docs/limits.md).
MAX_RETRY_AFTER_S = 3600.0


def clamp_retry_after(seconds: float | None) -> float | None:
    """``seconds`` within [0, MAX_RETRY_AFTER_S]; NaN, like an unreadable value, is None."""
    if seconds is None or seconds != seconds:
        return None
    return min(max(0.0, seconds), MAX_RETRY_AFTER_S)


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds or an HTTP date (RFC 9110 10.2.3),
    clamped (``clamp_retry_after``); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return clamp_retry_after(float(value))
    except ValueError:
        pass
    import time
    from email.utils import parsedate_to_datetime  # rare path: keep the import off the hot one

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, OverflowError):
        return None
    if when is None:
        return None
    return clamp_retry_after(when.timestamp() - (time.time() if now is None else now))


def retry_after_from(headers: Mapping[str, str]) -> float | None:
    """An answer's wait in seconds: ``Retry-After``, else OpenAI's ``retry-after-ms``
    (names in lower case: both aiohttp's headers and a lower-cased dict take them)."""
    found = parse_retry_after(headers.get("retry-after"))
    if found is None and headers.get("retry-after-ms"):
        try:
            found = clamp_retry_after(float(headers["retry-after-ms"]) / 1000.0)
        except ValueError:
            return None
    return found
