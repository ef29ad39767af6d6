"""Errors a provider raises when an upstream fails.

Providers translate their transport's exceptions (aiohttp, litellm) into these at the
boundary, with ``raise ... from exc``, so the pipeline never sees a library exception.
Each class carries ``reason``: the short error class that shows in ``error.attempts``,
logs and metrics. ``router/errors.py`` draws the whole tree, client-facing errors included.
"""

from __future__ import annotations


class UpstreamError(Exception):
    """An upstream attempt failed; the pipeline decides whether to fail over."""

    reason = "upstream_error"
    status: int | None = None
    endpoint: str | None = None  # set by the router: which endpoint failed

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status


class UpstreamConnectError(UpstreamError):
    """The connection was refused, reset before an answer, or could not be made in time."""

    reason = "connect"

    def __init__(self, message: str, *, refused: bool = False) -> None:
        super().__init__(message)
        self.refused = refused  # nothing listens there: the host is down, not just busy


class UpstreamTimeout(UpstreamError):
    """Nothing arrived in time; subclasses say which clock ran out."""

    reason = "timeout"


class ConnectTimeout(UpstreamTimeout):
    reason = "connect_timeout"


class TTFTTimeout(UpstreamTimeout):
    reason = "ttft_timeout"


class IdleTimeout(UpstreamTimeout):
    reason = "idle_timeout"


class TotalTimeout(UpstreamTimeout):
    reason = "total_timeout"


class UpstreamHTTPError(UpstreamError):
    """The upstream answered with a non-2xx status."""

    def __init__(
        self,
        status: int,
        body: bytes = b"",
        *,
        retry_after_s: float | None = None,
        content_type: str = "application/json",
    ) -> None:
        super().__init__(f"upstream answered HTTP {status}", status=status)
        self.body = body
        self.retry_after_s = retry_after_s
        self.content_type = content_type

    @property
    def reason(self) -> str:  # type: ignore[override]  # per-instance, from the status
        if self.status in (401, 403):
            return "auth"
        if self.status == 429:
            return "http_429"
        if self.status is not None and self.status >= 500:
            return "http_5xx"
        return f"http_{self.status}"


class UnsupportedField(UpstreamError):
    """The upstream refused a field it does not take (a reasoning form it lacks), with a
    400: another endpoint may take the same request, so this one failed, not the client.
    Its status stays unset, so nothing reads it as the client's fault."""

    reason = "unsupported_field"


class UpstreamProtocolError(UpstreamError):
    """The upstream answered, but not in the protocol we speak (garbage instead of SSE/JSON)."""

    reason = "bad_response"


class AnswerTooLarge(UpstreamProtocolError):
    """A non-streamed answer larger than the provider's ``max_answer_mb``."""

    reason = "answer_too_large"


class StreamBroken(UpstreamError):
    """A stream ended without its terminator, or the connection dropped mid-stream."""

    reason = "stream_broken"
