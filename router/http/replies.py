"""The JSON answers handlers give, and errors in the shape of the client's API, with no
configured secret in them."""

from __future__ import annotations

from router.apis import ClientApi
from router.errors import RouterError, UpstreamClientError
from router.http.server import Response
from router.obs.logs import REDACTOR

JSON = "application/json"


def json_response(status: int, body: bytes, headers: dict[str, str] | None = None) -> Response:
    return Response(status, body, JSON, headers)


def error_response(
    exc: RouterError, headers: dict[str, str], api: ClientApi | None = None
) -> Response:
    """``exc`` in the shape of the client's API (OpenAI's when none is known)."""
    extra = exc.headers()
    if extra:
        headers = {**headers, **extra}
    if isinstance(exc, UpstreamClientError):
        body = exc.upstream.body or exc.body()
        if REDACTOR.secrets:
            body = REDACTOR.scrub(body.decode("utf-8", "replace")).encode()
        return Response(exc.status, body, JSON, headers)
    body = exc.body() if api is None else api.error_body(exc)
    return json_response(exc.status, scrubbed(body), headers)


def scrubbed(body: bytes) -> bytes:
    """A router-made error without any configured secret: its message may quote what the
    client sent (a model name, a policy header, a routing field), and a client may have
    put a key there."""
    return REDACTOR.scrub_bytes(body) if REDACTOR.secrets else body
