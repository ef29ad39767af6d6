"""The admin API and the model page: ``/admin/reload``, ``/admin/usage``, ``/admin/stats``
(the page's data) and the page's own files (``/``, ``/page/*``).

None of this is on a request's way: what only admins use is imported when first asked for.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import orjson
import structlog

from router.errors import (
    BadRequest,
    NoConfig,
    NoEndpointAvailable,
    NotFound,
    RouterError,
    error_body,
)
from router.http import limits
from router.http.auth import check_admin
from router.http.replies import error_response, json_response
from router.http.server import Request, Response

if TYPE_CHECKING:
    from router.http.api import Api

log = structlog.get_logger("router.http")

PAGE_ASSETS = ("page.css", "charts.js", "page.js")
# The page loads nothing from another host, runs no inline script, and is framed by none.
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


class Admin:
    """The admin handlers; what they read (the request log, the page's data) is the
    ``Api``'s, which ``router.app`` sets once they are started."""

    def __init__(self, api: Api) -> None:
        self._api = api
        self.service = api.service
        self._assets: dict[str, Response] = {}

    async def _requestlog(self) -> Any:
        """The request log, once its start is over (it starts after the service listens)."""
        starting = self._api.requestlog_starting
        if starting is not None and not starting.done():
            await asyncio.wait({starting}, timeout=15)
        return self._api.requestlog

    async def reload(self, request: Request) -> Response:
        try:
            check_admin(self.service.config, request)
        except RouterError as exc:
            return error_response(exc, {})
        result = self.service.reload("admin")
        if result.ok:
            return json_response(200, orjson.dumps({"status": "ok", "version": result.version}))
        body = error_body(
            "config is invalid; the previous config keeps serving",
            "invalid_request_error",
            "invalid_config",
            errors=result.errors,
        )
        return json_response(400, body)

    async def page_asset(self, request: Request) -> Response:
        """``GET /``: the model page; ``/page/*``: its CSS and scripts (from the package)."""
        path = request.path
        found = self._assets.get(path)
        if found is None:
            from router.page import TYPES, asset

            name = "index.html" if path == "/" else path.rsplit("/", 1)[1]
            body = await asyncio.to_thread(asset, name)
            headers = {
                "Cache-Control": "no-cache",
                "Content-Security-Policy": PAGE_CSP,
                "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "no-referrer",
            }
            content_type = TYPES["." + name.rsplit(".", 1)[1]]
            found = self._assets[path] = Response(200, body, content_type, headers)
        return found  # sent as it is: nothing writes to an answer's headers

    async def stats(self, request: Request) -> Response:
        """The model page's data. With an admin key configured it needs the key; without
        one it is open, like /health (it holds no secrets)."""
        config = self.service.config
        if config is not None and config.admin_key is not None:
            try:
                check_admin(config, request)
            except RouterError as exc:
                return error_response(exc, {})
        page = self._api.page
        if page is None:
            return error_response(NotFound("the model page is off", code="not_found"), {})
        page.requestlog = await self._requestlog()
        q = request.query
        window = q.get("window") or "1h"
        route = q.get("route") or None
        runtime = self.service.runtime
        if window not in ("1h", "24h"):
            return error_response(BadRequest("window must be 1h or 24h", param="window"), {})
        if runtime is not None and route is not None and route not in runtime.routes:
            known = ", ".join(runtime.route_names)
            return error_response(
                NotFound(f"unknown route {route!r}; known routes: {known}", param="route"), {}
            )
        try:
            document = await page.document(route, window)
        except LookupError as exc:  # no config loaded (or the route went in a reload)
            error = NoConfig() if self.service.runtime is None else RouterError(str(exc))
            return error_response(error, {})
        return json_response(200, orjson.dumps(document), {"Cache-Control": "no-store"})

    async def usage(self, request: Request) -> Response:
        try:
            check_admin(self.service.config, request)
        except RouterError as exc:
            return error_response(exc, {})
        requestlog = await self._requestlog()
        if requestlog is None or not getattr(requestlog, "enabled", True):
            # No usage without the log; keys' budgets live in the shared state all the same.
            result: dict[str, Any] = {"requestlog": "off"}
            await limits.add_budgets(self.service.state, self.service.runtime, result)
            if "budgets" in result:
                return json_response(200, orjson.dumps(result))
            return error_response(RouterError("the request log is off (storage.url is empty)"), {})
        from router.requestlog.usage import cache_savings, parse_time  # only admins pay

        q = request.query
        now = time.time()
        try:
            since = parse_time(q.get("since"), now - 86400)
            until = parse_time(q.get("until"), now)
        except ValueError as exc:
            return error_response(BadRequest(str(exc), param="since"), {})
        group_by = q.get("group_by", "route")
        if group_by not in ("route", "endpoint", "key", "day"):
            return error_response(
                BadRequest("group_by must be one of route, endpoint, key, day", param="group_by"),
                {},
            )
        try:
            runtime = self.service.runtime
            savings = cache_savings(runtime.routes.values()) if runtime is not None else None
            result = await requestlog.usage(
                since=since, until=until, group_by=group_by, savings=savings
            )
        except ValueError as exc:
            return error_response(BadRequest(str(exc), param="since"), {})
        except Exception as exc:  # the database is down or locked: say so, don't crash
            log.warning("usage_query_failed", error=type(exc).__name__)
            return error_response(
                NoEndpointAvailable(
                    "the request log database is unavailable", code="storage_unavailable"
                ),
                {},
            )
        await limits.add_budgets(self.service.state, self.service.runtime, result)
        return json_response(200, orjson.dumps(result, default=str))
