"""The HTTP API's routes: OpenAI-compatible endpoints (``proxy``), models, health, metrics,
and the admin API and model page (``admin``).

It runs on ``router.http.server``'s lean server, not ``web.Application``: a request goes
straight from the protocol to ``Api.handle``, which picks the handler from a dict by
path and method. The application's router, match info and per-request resolve coroutine
cost about 5% of a pass-through's CPU, for routing a dozen fixed paths. ``Api`` owns
what handlers need (the service, the pipeline, metrics, the request log); ``router.app``
owns their lifetimes. Every failure becomes an OpenAI-shaped error; nothing a client
sends can take the process down.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson

from router.apis import BY_PATH
from router.errors import NoConfig, NotFound, RouterError, error_body
from router.http.admin import PAGE_ASSETS, Admin
from router.http.auth import client_key_name
from router.http.proxy import Proxy
from router.http.replies import error_response, json_response, scrubbed
from router.http.server import Answer, Request, Response
from router.routing.pipeline import Pipeline
from router.service import Service

if TYPE_CHECKING:
    from router.obs.metrics import Metrics
    from router.obs.workers import Workers
    from router.page.data import PageData

_MODEL_PREFIX = "/v1/models/"  # GET /v1/models/{id}: one route's model object


class Api:
    """The routes and their handlers, with what they need."""

    def __init__(self, service: Service, *, debug: bool = False) -> None:
        self.service = service
        self.pipeline = Pipeline(debug=debug)
        self.metrics: Metrics | None = None
        self.requestlog: Any = None  # router.requestlog.writer.RequestLog, once started
        self.requestlog_starting: asyncio.Task[None] | None = None
        self.workers: Workers | None = None  # set under --workers N
        self.page: PageData | None = None  # the model page's data, when wired (router.app)
        self.proxy = Proxy(service, self.pipeline)
        admin = Admin(self)
        Handler = Callable[[Request], Awaitable[Answer]]
        self._routes: dict[str, dict[str, Handler]] = {
            **{path: {"POST": self.proxy.serve} for path in BY_PATH},
            "/v1/models": {"GET": self.models},
            "/health/live": {"GET": self.health_live},
            "/health/ready": {"GET": self.health_ready},
            "/health": {"GET": self.health},
            "/metrics": {"GET": self.metrics_text},
            "/admin/reload": {"POST": admin.reload},
            "/admin/usage": {"GET": admin.usage},
            "/admin/stats": {"GET": admin.stats},
            "/": {"GET": admin.page_asset},
            **{f"/page/{name}": {"GET": admin.page_asset} for name in PAGE_ASSETS},
        }
        for methods in self._routes.values():
            if "GET" in methods:
                methods["HEAD"] = methods["GET"]  # as aiohttp's add_get does

    def handle(self, request: Request) -> Awaitable[Answer]:
        """The server's handler: every request comes here. It returns the
        handler's coroutine rather than awaiting it: one coroutine less per request."""
        methods = self._routes.get(request.path)
        if methods is None:
            if request.path.startswith(_MODEL_PREFIX) and request.method in ("GET", "HEAD"):
                return self.models(request)
            return self._not_found(request)
        handler = methods.get(request.method)
        if handler is None:
            return self._method_not_allowed(request, methods)
        return handler(request)

    async def _not_found(self, request: Request) -> Answer:
        body = error_body(f"no such path: {request.path}", "invalid_request_error", "not_found")
        return json_response(404, scrubbed(body))

    async def _method_not_allowed(self, request: Request, methods: dict[str, Any]) -> Answer:
        body = error_body(
            f"{request.method} is not allowed on {request.path}",
            "invalid_request_error",
            "method_not_allowed",
        )
        return json_response(405, scrubbed(body), {"Allow": ", ".join(sorted(methods))})

    async def models(self, request: Request) -> Response:
        """``GET /v1/models`` (the routes, in OpenAI's list) and ``/v1/models/{id}``."""
        service = self.service
        runtime = service.runtime
        if runtime is None:
            return error_response(NoConfig(), {})
        try:
            name = client_key_name(runtime, request)
        except RouterError as exc:
            return error_response(exc, {})
        key = runtime.keys.get(name) if name is not None else None
        allowed = key.routes if key is not None else None  # a key sees only its routes
        if not request.path.startswith(_MODEL_PREFIX):
            if allowed is None:
                return json_response(200, runtime.models_body)
            listing = orjson.loads(runtime.models_body)
            listing["data"] = [m for m in listing["data"] if m["id"] in allowed]
            return json_response(200, orjson.dumps(listing))
        model = request.path[len(_MODEL_PREFIX) :]
        body = runtime.model_bodies.get(model)
        if body is None or (allowed is not None and model not in allowed):
            known = runtime.route_names if allowed is None else sorted(allowed)
            missing = NotFound(
                f"The model {model!r} does not exist; known: {', '.join(known)}",
                param="model",
                code="model_not_found",
            )
            return error_response(missing, {})
        return json_response(200, body)

    async def health_live(self, request: Request) -> Response:
        return json_response(200, b'{"status":"ok"}')

    async def health_ready(self, request: Request) -> Response:
        ready, missing = self.service.readiness()
        if ready:
            return json_response(200, b'{"status":"ready"}')
        return json_response(503, orjson.dumps({"status": "not_ready", "problems": missing}))

    async def health(self, request: Request) -> Response:
        status, body = self.service.health()
        workers = self.workers
        if workers is not None:
            self.publish_worker(body)
            body = workers.health(body, workers.read())
            status = 200 if body["status"] == "ok" else 503
        return json_response(status, orjson.dumps(body))

    async def metrics_text(self, request: Request) -> Response:
        metrics_ = self.metrics
        if metrics_ is None:
            return Response(200, b"", "text/plain")
        workers = self.workers
        if workers is not None:
            from router.obs.workers import CONTENT_TYPE_LATEST, merge_metrics

            self.publish_worker()
            snapshots = [snap["metrics"] for snap in workers.read()]
            return Response(200, merge_metrics(snapshots), CONTENT_TYPE_LATEST)
        body, content_type = metrics_.render()
        return Response(200, body, content_type)

    def publish_worker(self, health: dict[str, Any] | None = None) -> None:
        """Write this worker's snapshot for the others (``--workers``): its metric
        samples and the gist of its health."""
        workers = self.workers
        if workers is None:
            return
        from router.obs.workers import snapshot_metrics

        if health is None:
            health = self.service.health()[1]
        config = health["config"]
        metrics = snapshot_metrics(self.metrics.registry) if self.metrics is not None else []
        workers.write(
            metrics,
            {
                "status": health["status"],
                "in_flight": self.service.in_flight,
                "config_version": config["version"],
                "last_error": config["last_error"],
            },
        )
