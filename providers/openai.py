"""Any OpenAI-compatible HTTP API: the fast path.

Each provider holds one ``providers.http1.Origin``: pooled keep-alive connections to its
host and the request head rendered once. The client's body goes out as the bytes it was
parsed from (``model`` replaced); the answer comes back as raw bytes, streamed chunks
passed on as they arrive. aiohttp's own ``sock_read`` timer bounds silences, so no extra
timer is armed per chunk: it starts at the first-token bound and is tightened to
``idle_s`` once the first token is in.
"""

from __future__ import annotations

import errno
from collections.abc import AsyncIterator, Mapping
from typing import Literal

import aiohttp
from pydantic import Field, field_validator
from yarl import URL

from providers.base import (
    OPERATIONS,
    ProviderSettings,
    ReasoningForm,
    UpstreamRequest,
    http_base_url,
    retry_after_from,
)
from providers.errors import (
    ConnectTimeout,
    IdleTimeout,
    StreamBroken,
    TTFTTimeout,
    UpstreamConnectError,
    UpstreamError,
    UpstreamHTTPError,
)
from providers.http1 import Answer, Origin

_MAX_ERROR_BODY = 64 * 1024


class OpenAIResponse:
    __slots__ = ("_answer", "content_type", "status")

    def __init__(self, answer: Answer) -> None:
        self._answer = answer
        self.status = answer.status
        self.content_type = answer.headers.get("Content-Type", "application/json")

    async def read(self) -> bytes:
        try:
            return await self._answer.payload.read()
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise TTFTTimeout("no complete answer before the read timeout") from exc
        except aiohttp.ClientError as exc:
            raise StreamBroken(f"answer cut short: {type(exc).__name__}") from exc

    async def chunks(self) -> AsyncIterator[bytes]:
        payload = self._answer.payload
        try:
            while True:
                data = await payload.readany()
                if not data:
                    return
                yield data
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise IdleTimeout("no chunk within the idle timeout") from exc
        except aiohttp.ClientError as exc:
            raise StreamBroken(f"stream cut short: {type(exc).__name__}") from exc

    def set_idle_timeout(self, seconds: float) -> None:
        self._answer.protocol.read_timeout = seconds

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

    async def send(self, request: UpstreamRequest) -> OpenAIResponse:
        head = self._heads[request.operation]
        try:
            answer = await self._origin.post(head, request.body, request.connect_s, request.read_s)
        except aiohttp.ServerTimeoutError as exc:  # a TimeoutError too: caught first
            raise TTFTTimeout("no answer before the read timeout") from exc
        except TimeoutError as exc:
            raise ConnectTimeout(f"no connection within {request.connect_s}s") from exc
        except (OSError, aiohttp.ClientError) as exc:
            # Refused, reset, or closed before any answer: the request never got served.
            raise UpstreamConnectError(
                f"{type(exc).__name__}: {exc}",
                refused=isinstance(exc, OSError) and exc.errno == errno.ECONNREFUSED,
            ) from exc
        if answer.status >= 300:
            await _raise_for_status(answer)
        return OpenAIResponse(answer)

    async def aclose(self) -> None:
        self._origin.close()


async def _raise_for_status(answer: Answer) -> None:
    try:
        body = await answer.payload.read(_MAX_ERROR_BODY)
    except (TimeoutError, aiohttp.ClientError):
        body = b""
    finally:
        answer.close()
    headers = answer.headers
    raise UpstreamHTTPError(
        answer.status,
        body,
        retry_after_s=retry_after_from(headers),
        content_type=headers.get("Content-Type", "application/json"),
    )


class OpenAISettings(ProviderSettings):
    """``kind: openai``: any host that speaks OpenAI's HTTP API."""

    kind: Literal["openai"]
    base_url: str
    api_key_env: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    reasoning: ReasoningForm = "passthrough"
    max_connections: int = Field(4096, ge=1, le=100_000)

    _url = field_validator("base_url")(http_base_url)

    def build(self, name: str, api_key: str | None) -> OpenAIProvider:
        return OpenAIProvider(
            self.base_url, api_key, headers=self.headers, max_connections=self.max_connections
        )


__all__ = ["OpenAIProvider", "OpenAIResponse", "UpstreamError"]
