"""The one error hierarchy, and how each error looks to an OpenAI client.

::

    Exception
    ├── providers.errors.UpstreamError          an upstream attempt failed (upstream_error)
    │   ├── UpstreamConnectError                refused / reset before an answer (connect)
    │   ├── UpstreamTimeout                     (timeout)
    │   │   ├── ConnectTimeout                  connect_s ran out (connect_timeout)
    │   │   ├── TTFTTimeout                     no first token in ttft_s (ttft_timeout)
    │   │   ├── IdleTimeout                     a gap between chunks over idle_s (idle_timeout)
    │   │   └── TotalTimeout                    total_s ran out (total_timeout)
    │   ├── UpstreamHTTPError                   non-2xx: auth, http_429, http_5xx, http_4xx
    │   ├── UnsupportedField                    a 400 on a field the host lacks (unsupported_field)
    │   ├── UpstreamProtocolError               garbage instead of JSON/SSE (bad_response)
    │   │   └── AnswerTooLarge                  an answer over max_answer_mb (answer_too_large)
    │   └── StreamBroken                        stream cut before its end (stream_broken)
    └── RouterError                             answered to the client as {"error": {...}}
        ├── BadRequest                400       bad JSON, missing/ill-typed field, routing field
        ├── Unauthorized              401       missing or unknown client key
        ├── Forbidden                 403       wrong admin key
        ├── NotFound                  404       unknown model; provider filter left nothing
        ├── PayloadTooLarge           413       body over server.max_body_mb (after decoding)
        ├── UnsupportedMediaType      415       a Content-Encoding other than gzip or deflate
        ├── OverLimit                 429       a client key over its rate limit or budget
        ├── NoEndpointAvailable       503       nothing to try (disabled, or at max_concurrency)
        ├── NoConfig                  503       no valid routes.yaml loaded (see /health)
        ├── UpstreamRateLimited       429       every endpoint asked to wait longer than we can
        ├── AllAttemptsFailed         502/504   every attempt failed; 504 when every one timed out
        └── UpstreamClientError       4xx       the upstream said the request itself is wrong

Whether an upstream error is retryable is decided by ``retryable(exc, retry_on)``, from
its type and status against the ``retry.on`` list of the endpoint that raised it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import orjson

from providers.errors import (
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
from router.requestlog.records import AttemptRecord

__all__ = [
    "AllAttemptsFailed",
    "AttemptRecord",
    "BadRequest",
    "ConnectTimeout",
    "Forbidden",
    "IdleTimeout",
    "NoConfig",
    "NoEndpointAvailable",
    "NotFound",
    "OverLimit",
    "PayloadTooLarge",
    "RouterError",
    "StreamBroken",
    "TTFTTimeout",
    "TotalTimeout",
    "Unauthorized",
    "UnsupportedMediaType",
    "UpstreamClientError",
    "UpstreamConnectError",
    "UpstreamError",
    "UpstreamHTTPError",
    "UpstreamProtocolError",
    "UpstreamRateLimited",
    "UpstreamTimeout",
    "error_body",
    "retryable",
]

# Statuses that say the request itself is wrong: the same body would fail anywhere.
CLIENT_FAULT_STATUSES = frozenset({400, 404, 413, 422})


def error_body(
    message: str, type_: str, code: str | None = None, param: str | None = None, **extra: Any
) -> bytes:
    err: dict[str, Any] = {"message": message, "type": type_, "code": code, "param": param}
    err.update(extra)
    return orjson.dumps({"error": err})


class RouterError(Exception):
    status = 500
    type = "server_error"
    code: str | None = None

    def __init__(self, message: str, *, code: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.param = param

    def extra(self) -> dict[str, Any]:
        return {}

    def headers(self) -> dict[str, str]:
        """Response headers this error adds (``Retry-After``)."""
        return {}

    def body(self) -> bytes:
        return error_body(self.message, self.type, self.code, self.param, **self.extra())


class BadRequest(RouterError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class Unauthorized(RouterError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class Forbidden(RouterError):
    status = 403
    type = "permission_error"
    code = "forbidden"


class NotFound(RouterError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class PayloadTooLarge(RouterError):
    status = 413
    type = "invalid_request_error"
    code = "payload_too_large"


class UnsupportedMediaType(RouterError):
    status = 415
    type = "invalid_request_error"
    code = "unsupported_content_encoding"


class OverLimit(RouterError):
    """Code ``rate_limit_exceeded`` or ``budget_exceeded``; ``Retry-After`` goes in the
    answer's headers (``router.http.limits``)."""

    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class NoEndpointAvailable(RouterError):
    status = 503
    type = "service_unavailable"
    code = "no_endpoint_available"


class NoConfig(RouterError):
    """No valid routes.yaml is loaded (it failed at start and no edit has fixed it yet):
    the service is unavailable, not broken, and says where to look; it serves as soon as
    a valid file is saved."""

    status = 503
    type = "service_unavailable"
    code = "no_config"

    def __init__(self) -> None:
        super().__init__("no valid configuration is loaded; see /health")


class AllAttemptsFailed(RouterError):
    type = "upstream_error"

    def __init__(self, attempts: Sequence[AttemptRecord]) -> None:
        failed = [a for a in attempts if a.reason is not None]
        timed_out = bool(failed) and all(a.reason and "timeout" in a.reason for a in failed)
        if timed_out:
            self.status = 504
            self.code = "upstream_timeout"
            message = f"no upstream answered in time ({len(failed)} attempts)"
        else:
            self.status = 502
            self.code = "all_attempts_failed"
            message = f"every upstream attempt failed ({len(failed)} attempts)"
        super().__init__(message)
        self.attempts = tuple(attempts)

    def extra(self) -> dict[str, Any]:
        return {"attempts": [a.public() for a in self.attempts]}


class UpstreamRateLimited(RouterError):
    """Every endpoint that could serve is rate limited upstream until later than the
    request can wait, or every attempt got a 429: "not now", said on the upstreams'
    behalf, with the soonest time one of them is free as ``Retry-After`` (whole
    seconds, at least 1) and ``retry-after-ms``, which OpenAI's SDKs read first."""

    status = 429
    type = "rate_limit_error"
    code = "upstream_rate_limited"

    def __init__(self, retry_after_s: float, attempts: Sequence[AttemptRecord]) -> None:
        self.retry_after_s = max(0.0, retry_after_s)
        super().__init__(
            f"the upstreams of this model are rate limited; retry after {self.retry_after_s:.1f}s"
        )
        self.attempts = tuple(attempts)

    def extra(self) -> dict[str, Any]:
        return {"attempts": [a.public() for a in self.attempts]}

    def headers(self) -> dict[str, str]:
        # Rounded up, past float noise: 45.000000001 s is 45 s, not 46.
        ms = max(1, math.ceil(self.retry_after_s * 1000 - 1e-6))
        return {"Retry-After": str(math.ceil(ms / 1000)), "retry-after-ms": str(ms)}


class UpstreamClientError(RouterError):
    """A 4xx the upstream blamed on the request; its body goes back as it came (redacted)."""

    def __init__(self, error: UpstreamHTTPError) -> None:
        super().__init__(f"upstream rejected the request with HTTP {error.status}")
        self.status = error.status or 400
        self.upstream = error


def retryable(exc: BaseException, retry_on: frozenset[str | int]) -> bool:
    """May the request move on to another attempt after ``exc``?

    ``retry_on`` holds statuses and the classes ``timeout`` and ``connect``. Auth failures
    always fail over: they say the endpoint's key is bad, not the request.
    """
    if isinstance(exc, UpstreamHTTPError):
        if exc.status in (401, 403):
            return True
        if exc.status in CLIENT_FAULT_STATUSES:
            return False
        return exc.status in retry_on
    if isinstance(exc, UpstreamTimeout):
        return "timeout" in retry_on
    if isinstance(exc, UpstreamConnectError):
        return "connect" in retry_on
    # A broken stream (before anything reached the client) or a garbled answer: the
    # endpoint misbehaved, another one may serve.
    return isinstance(exc, UpstreamError)
