"""Any OpenAI-compatible HTTP API: the fast path.

Each provider holds one ``providers.http1.Origin``: pooled keep-alive connections to its
host and the request head rendered once. The client's body goes out as the bytes it was
parsed from (``model`` replaced); the answer comes back as raw bytes, streamed chunks
passed on as they arrive. The origin's ticker holds every bound (no timer per request):
the head (a stream's first token) by ``first_s`` after sending, the whole answer by
``total_s``, and silences by ``read_s``, then ``idle_s`` once the first token is in. A
non-streamed answer is bounded in size (``max_answer_bytes``): a larger one is this
endpoint's failure, and the request fails over.
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import AsyncIterator, Mapping
from typing import ClassVar, Literal, TypeVar

from pydantic import Field, field_validator
from yarl import URL

from providers.answer import Answer, Closed, Deadline, NotHttp, Silence, TooLarge
from providers.base import (
    OPERATIONS,
    ProviderSettings,
    ReasoningForm,
    UpstreamRequest,
    http_base_url,
    retry_after_from,
)
from providers.errors import (
    AnswerTooLarge,
    ConnectTimeout,
    IdleTimeout,
    StreamBroken,
    TotalTimeout,
    TTFTTimeout,
    UpstreamConnectError,
    UpstreamError,
    UpstreamHTTPError,
    UpstreamProtocolError,
    UpstreamTimeout,
)
from providers.http1 import Origin

_MAX_ERROR_BODY = 64 * 1024
MAX_ANSWER_BYTES = 64 << 20  # embeddings of a large batch run to tens of MB


class OpenAIResponse:
    __slots__ = ("_answer", "_by_total", "_first", "_limit", "_total", "content_type", "status")

    def __init__(self, answer: Answer, total: float, by_total: bool, limit: int) -> None:
        self._answer = answer
        self._total = total  # loop time by which the whole answer must be in
        self._by_total = by_total  # the first-token bound is total_s's, not ttft_s's
        self._first = True  # a stream still waits for its first token
        self._limit = limit
        self.status = answer.status
        self.content_type = answer.headers.get("content-type", "application/json")

    async def read(self) -> bytes:
        try:
            return await self._answer.read(self._limit)
        except Deadline as exc:
            raise TotalTimeout("the answer was not whole within total_s") from exc
        except Silence as exc:
            raise TTFTTimeout("no complete answer before the read timeout") from exc
        except TooLarge as exc:
            raise AnswerTooLarge(f"{exc} (max_answer_mb)") from exc
        except (Closed, NotHttp) as exc:
            raise StreamBroken(f"answer cut short: {exc}") from exc

    async def chunks(self) -> AsyncIterator[bytes]:
        answer = self._answer
        try:
            while True:
                data = answer.take()
                if data is None:
                    await answer.wait()
                    continue
                if not data:
                    return
                yield data
        except Deadline as exc:
            raise self._deadline() from exc
        except Silence as exc:
            raise IdleTimeout("no chunk within the idle timeout") from exc
        except (Closed, NotHttp) as exc:
            raise StreamBroken(f"stream cut short: {exc}") from exc

    def _deadline(self) -> UpstreamTimeout:
        if self._first and not self._by_total:
            return TTFTTimeout("no first token within ttft_s")
        return TotalTimeout("total_s ran out mid-stream")

    def set_idle_timeout(self, seconds: float) -> None:
        self._first = False
        self._answer.limit(self._total, seconds)

    def close(self) -> None:
        self._answer.close()


class OpenAIProvider:
    kind = "openai"
    native_timeouts = True

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        headers: Mapping[str, str] | None = None,
        max_connections: int = 4096,
        max_answer_bytes: int = MAX_ANSWER_BYTES,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        base = URL(self.base_url)
        fields = {"Content-Type": "application/json", **(headers or {})}
        if api_key:
            fields["Authorization"] = f"Bearer {api_key}"
        # Made now so that a bad URL or header fails the config load, not a request.
        self._origin = Origin(base, fields, max_connections=max_connections)
        self._heads = {
            op: self._origin.head(URL(f"{self.base_url}/{op}").raw_path_qs) for op in OPERATIONS
        }
        self._max_answer = max_answer_bytes

    async def send(self, request: UpstreamRequest) -> OpenAIResponse:
        head = self._heads[request.operation]
        if request.headers:  # the client's, passed on by its API (anthropic-version)
            head += header_lines(request.headers)
        now = asyncio.get_running_loop().time()
        by_total = request.total_s <= request.first_s
        total = now + request.total_s
        first = now + min(request.first_s, request.total_s)
        try:
            answer = await self._origin.post(
                head, request.body, request.connect_s, first, request.read_s
            )
        except (Deadline, Silence) as exc:  # TimeoutErrors too: caught first
            if by_total and isinstance(exc, Deadline):
                raise TotalTimeout("total_s ran out before an answer") from exc
            raise TTFTTimeout("no answer before the read timeout") from exc
        except TimeoutError as exc:
            raise ConnectTimeout(f"no connection within {request.connect_s}s") from exc
        except NotHttp as exc:
            raise UpstreamConnectError(f"not an HTTP answer: {exc}") from exc
        except OSError as exc:
            # Refused, reset, or closed before any answer: the request never got served.
            raise UpstreamConnectError(
                f"{type(exc).__name__}: {exc}", refused=exc.errno == errno.ECONNREFUSED
            ) from exc
        if answer.status >= 300:
            await _raise_for_status(answer)
        if not request.stream or request.operation == "embeddings":
            answer.limit(total, request.read_s)  # the head was the first byte: now total_s
        return OpenAIResponse(answer, total, by_total, self._max_answer)

    async def aclose(self) -> None:
        self._origin.close()


def header_lines(headers: Mapping[str, str]) -> bytes:
    """Header lines for the head; a value that cannot be sent is left out (the server that
    parsed it admits no line breaks, so only a non-Latin-1 value is)."""
    out = b""
    for name, value in headers.items():
        try:
            out += b"%s: %s\r\n" % (name.encode("ascii"), value.encode("latin-1"))
        except UnicodeEncodeError:
            continue
    return out


async def _raise_for_status(answer: Answer) -> None:
    try:
        body = await answer.read(_MAX_ERROR_BODY, cut=True)
    except (TimeoutError, Closed, NotHttp):
        body = b""
    finally:
        answer.close()
    headers = answer.headers
    raise UpstreamHTTPError(
        answer.status,
        body,
        retry_after_s=retry_after_from(headers),
        content_type=headers.get("content-type", "application/json"),
    )


_P = TypeVar("_P", bound="OpenAIProvider")


class HttpHostSettings(ProviderSettings):
    """What every kind served by ``OpenAIProvider``'s HTTP/1.1 client takes: the
    host's URL, key, extra headers and the client's bounds."""

    base_url: str
    api_key_env: str | None = None
    headers: dict[str, str] = Field(
        default_factory=dict, description=("Extra headers sent upstream.")
    )
    max_connections: int = Field(
        4096, ge=1, le=100_000, description=("Pooled connections to the host at most.")
    )
    # A non-streamed answer larger than this fails (and fails over): embeddings of a large
    # batch run to tens of MB, so the default is generous.
    max_answer_mb: float = Field(
        MAX_ANSWER_BYTES / (1 << 20),
        gt=0,
        le=4096,
        description=("Largest non-streamed answer in MB; a larger one fails over."),
    )

    _url = field_validator("base_url")(http_base_url)

    def provider(self, kind: type[_P], api_key: str | None) -> _P:
        """A provider of ``kind`` (``OpenAIProvider`` or a subclass) on these settings."""
        return kind(
            self.base_url,
            api_key,
            headers=self.headers,
            max_connections=self.max_connections,
            max_answer_bytes=int(self.max_answer_mb * (1 << 20)),
        )


class OpenAISettings(HttpHostSettings):
    """``kind: openai``: any host that speaks OpenAI's HTTP API."""

    kind: Literal["openai"]
    DEFAULT_APIS: ClassVar[frozenset[str]] = frozenset(
        {"chat", "completions", "embeddings", "responses"}
    )
    base_url: str = Field(description="The API's base URL (`.../v1`), without credentials.")
    api_key_env: str | None = Field(
        None,
        description=(
            "Variable holding the key (sent as a Bearer token); unset: its endpoints are disabled."
        ),
    )
    reasoning: ReasoningForm = Field(
        "passthrough",
        description=(
            "How the host takes reasoning requests; `passthrough` leaves the body as sent."
        ),
    )

    def build(self, name: str, api_key: str | None) -> OpenAIProvider:
        return self.provider(OpenAIProvider, api_key)


__all__ = ["OpenAIProvider", "OpenAIResponse", "UpstreamError", "UpstreamProtocolError"]
