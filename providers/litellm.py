"""Endpoints that do not speak OpenAI's API, translated by litellm.

Anthropic's Messages API, Bedrock, Gemini/Vertex, Azure, Cohere: litellm turns the
client's OpenAI body into the provider's request and the answer back into OpenAI's
shape, so a route can mix these endpoints with OpenAI-compatible ones and the client
never sees the difference. This module is the boundary (httpx's
``map_httpcore_exceptions`` is the model): litellm's own retries are off, because the
router's retry loop, breaker and hedging must be the only ones; litellm's exceptions
become ``providers.errors`` with ``raise ... from exc``; and its answer objects become the
bytes an OpenAI-compatible upstream would have sent (JSON, or SSE chunks ending in
``data: [DONE]``), so the pipeline inspects them like any other answer.

litellm costs about 2 s and 120 MB to import, so this module imports it only when the first
``LiteLLMProvider`` is made: a config without a usable ``litellm`` endpoint never pays for
it, while ``LiteLLMSettings`` (what the config loader validates) stays cheap. Importing it
pins litellm to the data bundled in its wheel (cost map, Anthropic beta headers), so
nothing is fetched from the internet, and turns off its debug chatter.
"""

from __future__ import annotations

import os

# litellm reads these when it is imported (and on first use): set them before.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS", "True")

from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any, ClassVar, Literal

import orjson
from pydantic import Field, field_validator

from providers.base import (
    BufferedResponse,
    ProviderSettings,
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


def _import_litellm() -> None:
    """litellm, imported once the first provider needs it (the flags above come first)."""
    import litellm

    litellm.suppress_debug_info = True  # else every mapped error prints a banner to stdout


# Body fields that steer litellm itself rather than the model: a client must not be able
# to send our key to its own ``api_base``, turn retries back on, or mock the answer.
_TRANSPORT_FIELDS = frozenset(
    {
        "api_base",
        "base_url",
        "api_key",
        "api_version",
        "api_type",
        "organization",
        "extra_headers",
        "default_headers",
        "headers",
        "timeout",
        "request_timeout",
        "max_retries",
        "num_retries",
        "client",
        "deployment_id",
        "drop_params",
    }
)
_CREDENTIAL_PREFIXES = ("aws_", "vertex_", "azure_", "watsonx_", "_")
_ERROR_TYPES = {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error"}
_MAX_MESSAGE = 2000
_DONE = b"data: [DONE]\n\n"


class LiteLLMSettings(ProviderSettings):
    """``kind: litellm``: a host that litellm translates to (Anthropic, Bedrock, Gemini...)."""

    kind: Literal["litellm"]
    base_url: str | None = Field(
        None, description="litellm's `api_base`, where not the provider's own."
    )
    api_key_env: str | None = Field(
        None, description="Variable holding the key; unset: its endpoints are disabled."
    )
    headers: dict[str, str] = Field(
        default_factory=dict, description="Extra headers sent upstream."
    )
    params: dict[str, Any] = Field(
        default_factory=dict, description="Further litellm parameters (`aws_region_name`, ...)."
    )

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return None if value is None else http_base_url(value)

    def build(self, name: str, api_key: str | None) -> LiteLLMProvider:
        return LiteLLMProvider(
            base_url=self.base_url, api_key=api_key, headers=self.headers, params=self.params
        )


class LiteLLMProvider:
    kind = "litellm"
    native_timeouts = False
    _open: ClassVar[int] = 0  # live instances: litellm's pooled clients are process-wide

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/") if base_url else None
        self._api_key = api_key
        self._headers = dict(headers or {})
        self._params = dict(params or {})
        self._closed = False
        _import_litellm()
        LiteLLMProvider._open += 1

    def _kwargs(self, request: UpstreamRequest) -> dict[str, Any]:
        import httpx
        from litellm.types.utils import is_litellm_owned_kwarg

        body = {
            k: v
            for k, v in request.payload.items()
            if not (
                k in _TRANSPORT_FIELDS
                or k.startswith(_CREDENTIAL_PREFIXES)
                or is_litellm_owned_kwarg(k)
            )
        }
        # Parameters one provider lacks (seed, presence_penalty on Anthropic) are dropped
        # rather than refused: the same body must be servable by every endpoint of a route.
        kwargs: dict[str, Any] = {"drop_params": True, **body, **self._params}
        kwargs.update(
            api_key=self._api_key,
            max_retries=0,  # the SDK-level retries some providers run underneath
            # A float for providers that take no httpx.Timeout: litellm then uses read_s.
            timeout=httpx.Timeout(request.read_s, connect=request.connect_s),
        )
        if self.base_url:
            kwargs["api_base"] = self.base_url
        if self._headers:
            kwargs["extra_headers"] = dict(self._headers)
        if request.operation != "embeddings":
            kwargs["num_retries"] = 0
            kwargs["stream"] = request.stream
        if request.operation == "chat/completions":
            # litellm 1.106 imports its MCP gateway (an uninstalled extra) for any request
            # with tools; we never want that gateway.
            kwargs["_skip_mcp_handler"] = True
        return kwargs

    async def send(self, request: UpstreamRequest) -> BufferedResponse:
        import litellm

        kwargs = self._kwargs(request)
        streaming = request.stream and request.operation != "embeddings"
        try:
            if request.operation == "embeddings":
                result: Any = await litellm.aembedding(**kwargs)
            elif request.operation == "completions":
                result = await litellm.atext_completion(**kwargs)
            else:
                result = await litellm.acompletion(**kwargs)
            if not streaming:
                return BufferedResponse(_json(result))
            # Some providers only connect on the first read: take the first chunk here, so
            # that a refusal (429, 529) is an attempt that failed, not a stream that broke.
            chunks: AsyncIterator[Any] = aiter(result)
            first = await anext(chunks, None)
        except Exception as exc:
            raise _translate(exc, self._api_key, mid_stream=False) from exc
        opts = request.payload.get("stream_options")
        wants_usage = isinstance(opts, Mapping) and bool(opts.get("include_usage"))
        return BufferedResponse(
            stream=self._relay(result, first, chunks, wants_usage),
            content_type="text/event-stream",
        )

    async def _relay(
        self, stream: Any, first: Any, chunks: AsyncIterator[Any], wants_usage: bool
    ) -> AsyncIterator[bytes]:
        try:
            if first is not None:
                for event in _events(first, wants_usage):
                    yield event
                async for chunk in chunks:
                    for event in _events(chunk, wants_usage):
                        yield event
        except Exception as exc:
            raise _translate(exc, self._api_key, mid_stream=True) from exc
        finally:
            # Ended, failed, or abandoned by a client that left (GeneratorExit): let
            # litellm release what it holds. For Anthropic that is nothing; its HTTP
            # response is closed as the transport's generators below are finalised
            # (tested: the fake upstream sees the disconnect).
            close = getattr(stream, "aclose", None)
            if close is not None:
                await close()
        yield _DONE

    async def aclose(self) -> None:
        if self._closed:
            return
        import litellm
        from litellm.llms.custom_httpx.async_client_cleanup import close_litellm_async_clients

        self._closed = True
        LiteLLMProvider._open -= 1
        if LiteLLMProvider._open == 0:
            # The last litellm provider is gone (shutdown, or a reload that dropped them
            # all): close litellm's pooled clients and forget them, so none outlives its
            # event loop and a later provider starts with fresh ones.
            await close_litellm_async_clients()  # type: ignore[no-untyped-call]  # untyped in litellm
            litellm.in_memory_llm_clients_cache.flush_cache()  # type: ignore[no-untyped-call]
            # Anthropic streams go through a module-level client that the call above
            # misses. Closing its transport's aiohttp session is enough: litellm makes a
            # new session on the next use. (vars(): a plain getattr would create it.)
            shared = vars(litellm).get("module_level_aclient")
            transport = getattr(getattr(shared, "client", None), "_transport", None)
            if transport is not None:
                await transport.aclose()


def _dump(obj: Any) -> dict[str, Any]:
    if isinstance(obj, dict):
        return obj
    # warnings=False: litellm's models hold values their annotations do not list, and
    # pydantic would warn about each one on every chunk.
    data: dict[str, Any] = obj.model_dump(warnings=False)
    return data


def _json(result: Any) -> bytes:
    return orjson.dumps(_dump(result), default=str)


def _events(chunk: Any, wants_usage: bool) -> Iterator[bytes]:
    """OpenAI's SSE events for one litellm chunk.

    litellm puts the usage on a chunk that still has a choice with an empty delta;
    OpenAI sends it alone, with ``choices: []``, and only when ``include_usage`` asked.
    """
    data = _dump(chunk)
    usage = data.pop("usage", None)
    choices = data.get("choices") or []
    if not usage or any(_carries(c) for c in choices):
        yield b"data: " + orjson.dumps(data, default=str) + b"\n\n"
    if usage and wants_usage:
        data["choices"] = []
        data["usage"] = usage
        yield b"data: " + orjson.dumps(data, default=str) + b"\n\n"


def _carries(choice: Any) -> bool:
    if not isinstance(choice, dict):
        return True
    if choice.get("finish_reason") or choice.get("text"):
        return True
    delta = choice.get("delta")
    return isinstance(delta, dict) and any(v not in (None, "", [], {}) for v in delta.values())


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and the exceptions it was raised from or while handling."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _translate(exc: Exception, secret: str | None, *, mid_stream: bool) -> UpstreamError:
    """The router's error for a litellm (or transport) exception."""
    import httpx
    from litellm.exceptions import APIConnectionError, Timeout

    name = type(exc).__name__
    chain = list(_chain(exc))
    if any(isinstance(e, httpx.ConnectTimeout) for e in chain):
        return ConnectTimeout(f"litellm {name}: no connection in time")
    # litellm wraps a read timeout in whatever it raises (mid-stream: MidStreamFallbackError
    # over APIConnectionError); the transport's own exception further down says what it was.
    timed_out = any(isinstance(e, Timeout | httpx.TimeoutException | TimeoutError) for e in chain)
    if mid_stream:
        if timed_out:
            return IdleTimeout(f"litellm {name}: no chunk within the idle timeout")
        return StreamBroken(f"litellm stream cut short: {name}")
    if timed_out:
        return TTFTTimeout(f"litellm {name}: no answer before the read timeout")
    if isinstance(exc, APIConnectionError | httpx.TransportError) or any(
        isinstance(e, httpx.ConnectError | ConnectionError) for e in chain
    ):
        return UpstreamConnectError(f"litellm {name}")
    status = getattr(exc, "status_code", None)
    if not isinstance(status, int) or status < 400:
        return UpstreamError(f"litellm failed: {name}")
    if any(getattr(e, "status_code", None) == 529 for e in chain):
        # Anthropic's "overloaded": litellm reports it as a 500; 503 says what it is and
        # sits in the default retry list.
        status = 503
    retry_after = _retry_after(exc) if status in (429, 503) else None
    return UpstreamHTTPError(status, _error_body(exc, status, secret), retry_after_s=retry_after)


def _retry_after(exc: Exception) -> float | None:
    """From the upstream's headers, which litellm keeps on the exception or its response."""
    for headers in (
        getattr(exc, "litellm_response_headers", None),
        getattr(getattr(exc, "response", None), "headers", None),
        getattr(exc, "headers", None),
    ):
        if not headers:
            continue
        value = retry_after_from({str(k).lower(): str(v) for k, v in headers.items()})
        if value is not None:
            return value
    return None


def _error_body(exc: Exception, status: int, secret: str | None) -> bytes:
    message = str(getattr(exc, "message", None) or exc)
    if secret:
        message = message.replace(secret, "[redacted]")
    kind = _ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    error = {"message": message[:_MAX_MESSAGE], "type": kind, "code": None, "param": None}
    return orjson.dumps({"error": error})


__all__ = ["LiteLLMProvider", "LiteLLMSettings"]
