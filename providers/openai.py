"""Any OpenAI-compatible HTTP API: the fast path.

One aiohttp ``ClientSession`` per provider keeps pooled keep-alive connections to its
host. The client's body goes out as the bytes it was parsed from (``model`` replaced);
the answer comes back as raw bytes, streamed chunks passed on as they arrive. aiohttp's
own ``sock_read`` timer bounds silences, so no extra timer is armed per chunk: it starts
at the first-token bound and is tightened to ``idle_s`` once the first token is in.
"""

from __future__ import annotations

import errno
from collections.abc import AsyncIterator, Mapping

import aiohttp
from yarl import URL

from providers.base import UpstreamRequest, parse_retry_after
from providers.errors import (
    ConnectTimeout,
    IdleTimeout,
    StreamBroken,
    TTFTTimeout,
    UpstreamConnectError,
    UpstreamError,
    UpstreamHTTPError,
)

_MAX_ERROR_BODY = 64 * 1024


class OpenAIResponse:
    __slots__ = ("_resp", "content_type", "status")

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self._resp = resp
        self.status = resp.status
        self.content_type = resp.headers.get("Content-Type", "application/json")

    async def read(self) -> bytes:
        try:
            return await self._resp.read()
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise TTFTTimeout("no complete answer before the read timeout") from exc
        except aiohttp.ClientError as exc:
            raise StreamBroken(f"answer cut short: {type(exc).__name__}") from exc

    async def chunks(self) -> AsyncIterator[bytes]:
        content = self._resp.content
        try:
            while True:
                data = await content.readany()
                if not data:
                    return
                yield data
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise IdleTimeout("no chunk within the idle timeout") from exc
        except aiohttp.ClientError as exc:
            raise StreamBroken(f"stream cut short: {type(exc).__name__}") from exc

    def set_idle_timeout(self, seconds: float) -> None:
        conn = self._resp.connection
        if conn is not None and conn.protocol is not None:
            conn.protocol.read_timeout = seconds

    def close(self) -> None:
        self._resp.close()


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
        self._headers = {"Content-Type": "application/json", **(headers or {})}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        self._timeouts: dict[tuple[float, float], aiohttp.ClientTimeout] = {}
        # Parsed once: a string URL is parsed again by every request.
        self._urls = {
            op: URL(f"{self.base_url}/{op}")
            for op in ("chat/completions", "completions", "embeddings")
        }

    def _client(self) -> aiohttp.ClientSession:
        # Made lazily so that the session binds to the running loop.
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self._max_connections, ttl_dns_cache=300, keepalive_timeout=30
            )
            # No cookie jar: cookies one client's answer set must never ride along on
            # another client's request (and a growing jar is filtered on every request).
            self._session = aiohttp.ClientSession(
                connector=connector,
                headers=self._headers,
                auto_decompress=True,
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._session

    async def send(self, request: UpstreamRequest) -> OpenAIResponse:
        key = (request.connect_s, request.read_s)
        timeout = self._timeouts.get(key)
        if timeout is None:
            timeout = self._timeouts[key] = aiohttp.ClientTimeout(
                total=None, sock_connect=request.connect_s, sock_read=request.read_s
            )
        url = self._urls.get(request.operation) or URL(f"{self.base_url}/{request.operation}")
        try:
            resp = await self._client().post(url, data=request.body, timeout=timeout)
        except aiohttp.ConnectionTimeoutError as exc:
            raise ConnectTimeout(f"no connection within {request.connect_s}s") from exc
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise TTFTTimeout("no answer before the read timeout") from exc
        except aiohttp.ClientError as exc:
            # Refused, reset, or closed before any answer: the request never got served.
            refused = isinstance(exc, aiohttp.ClientConnectorError) and (
                exc.os_error.errno == errno.ECONNREFUSED
            )
            raise UpstreamConnectError(f"{type(exc).__name__}: {exc}", refused=refused) from exc
        if resp.status >= 300:
            await _raise_for_status(resp)
        return OpenAIResponse(resp)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


async def _raise_for_status(resp: aiohttp.ClientResponse) -> None:
    try:
        body = await resp.content.read(_MAX_ERROR_BODY)
    except (TimeoutError, aiohttp.ClientError):
        body = b""
    finally:
        resp.close()
    headers = resp.headers
    retry_after = parse_retry_after(headers.get("Retry-After"))
    if retry_after is None and headers.get("retry-after-ms"):
        try:
            retry_after = float(headers["retry-after-ms"]) / 1000.0
        except ValueError:
            retry_after = None
    raise UpstreamHTTPError(
        resp.status,
        body,
        retry_after_s=retry_after,
        content_type=headers.get("Content-Type", "application/json"),
    )


__all__ = ["OpenAIProvider", "OpenAIResponse", "UpstreamError"]
