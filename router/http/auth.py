"""Who is asking: the client's key (by name, when client keys are configured) and the
admin's. Keys are compared as digests or in constant time, every key every time."""

from __future__ import annotations

import hashlib
import hmac

from router.config import Config
from router.errors import Forbidden, NotFound, Unauthorized
from router.http.server import Request
from router.runtime import Runtime


def bearer(request: Request) -> str | None:
    auth = request.headers.get("Authorization")
    if auth and auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return request.headers.get("x-api-key") or request.headers.get("api-key")


def client_key_name(runtime: Runtime, request: Request) -> str | None:
    """The name of the client's key, or None when client auth is off."""
    if not runtime.client_keys:
        return None
    presented = bearer(request)
    if not presented:
        raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
    digest = hashlib.sha256(presented.encode()).digest()
    found = None
    for key_digest, name in runtime.client_keys:
        # Equal-length digests, every key compared: timing says nothing about the keys.
        if hmac.compare_digest(key_digest, digest):
            found = name
    if found is None:
        raise Unauthorized("invalid API key")
    return found


def check_admin(config: Config | None, request: Request) -> None:
    """Raise unless ``request`` carries the admin key; NotFound when none is configured."""
    admin = config.admin_key if config else None
    if admin is None:  # no admin key configured: the admin API does not exist
        raise NotFound(f"no such path: {request.path}", code="not_found")
    presented = bearer(request)
    if not presented:
        raise Unauthorized("admin endpoints need 'Authorization: Bearer <admin key>'")
    if not hmac.compare_digest(presented.encode(), admin.get_secret_value().encode()):
        raise Forbidden("wrong admin key")
