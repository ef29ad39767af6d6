"""The HTTP API: OpenAI-compatible endpoints, health, metrics and admin.

It runs on ``router.http.server``'s lean server, not ``web.Application``: a request goes
straight from the protocol to ``Api.handle``, which picks the handler from a dict by
path and method. The application's router, match info and per-request resolve coroutine
cost about 5% of a pass-through's CPU, for routing a dozen fixed paths. ``Api`` owns
what handlers need (the service, the pipeline, metrics, the request log); ``router.app``
owns their lifetimes. Handlers parse the body once, hand it to the pipeline, and write
the answer's bytes as they came from upstream. Every failure becomes an OpenAI-shaped
error; nothing a client sends can take the process down.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import itertools
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson
import structlog

from providers.errors import UpstreamError
from router.apis import BY_PATH, ClientApi
from router.apis.base import decode
from router.apis.reasoning import parse as parse_reasoning
from router.errors import (
    BadRequest,
    Forbidden,
    NoEndpointAvailable,
    NotFound,
    RouterError,
    Unauthorized,
    UpstreamClientError,
    error_body,
)
from router.http import limits
from router.http.server import Answer, Request, Response, Stream
from router.obs.logs import REDACTOR, bind_request, info_line
from router.requestlog.records import RequestRecord
from router.routing.affinity import OFF, Affinity
from router.routing.affinity import plan as plan_affinity
from router.routing.attempts import Attempts, Opened
from router.routing.pipeline import Call, Pipeline, RoutingPrefs
from router.runtime import RouteRuntime, Runtime
from router.service import Service
from router.state.shared import Admission, StateUnavailable

if TYPE_CHECKING:
    from router.obs.metrics import Metrics
    from router.obs.workers import Workers
    from router.page.data import PageData

log = structlog.get_logger("router.http")

_JSON = "application/json"
# Request ids: unique per process (random prefix) and cheap (a counter), unlike uuid4.
_ID_PREFIX = secrets.token_hex(8)
_ID_COUNTER = itertools.count()


def _json_response(status: int, body: bytes, headers: dict[str, str] | None = None) -> Response:
    return Response(status, body, _JSON, headers)


def _error_response(
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
        return Response(exc.status, body, _JSON, headers)
    body = exc.body() if api is None else api.error_body(exc)
    return _json_response(exc.status, _scrubbed(body), headers)


def _scrubbed(body: bytes) -> bytes:
    """A router-made error without any configured secret: its message may quote what the
    client sent (a model name, a policy header, a routing field), and a client may have
    put a key there."""
    return REDACTOR.scrub_bytes(body) if REDACTOR.secrets else body


def _bearer(request: Request) -> str | None:
    auth = request.headers.get("Authorization")
    if auth and auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return request.headers.get("x-api-key") or request.headers.get("api-key")


def _client_key_name(runtime: Runtime, request: Request) -> str | None:
    """The name of the client's key, or None when client auth is off."""
    if not runtime.client_keys:
        return None
    presented = _bearer(request)
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


async def _read_body(request: Request, max_mb: float) -> bytes:
    """The body, decoded, bounded by ``max_mb`` (413), its encoding gzip or deflate (415)."""
    return await request.read(int(max_mb * 1024 * 1024))


def parse_call(api: ClientApi, body: bytes, request: Request, request_id: str) -> Call:
    """The request as a ``Call``: its body checked by its API, routing fields taken out."""
    payload = decode(body)
    api.validate(payload)
    prefs = None
    if "provider" in payload:
        prefs = RoutingPrefs.parse(payload.pop("provider"))
    stream = api.stream_flag(payload)
    headers = None
    if api.forwarded_headers:
        got = request.headers
        headers = {h: got[h] for h in api.forwarded_headers if h in got}
    return Call(
        api=api,
        payload=payload,
        model=payload["model"],
        stream=stream,
        client_wants_usage=api.prepare(payload, stream),
        request_id=request_id,
        prefs=prefs,
        policy=request.headers.get("x-router-policy"),
        headers=headers,
        reasoning=parse_reasoning(payload) if api.streams else None,
    )


_MODEL_PREFIX = "/v1/models/"  # GET /v1/models/{id}: one route's model object
PAGE_ASSETS = ("page.css", "charts.js", "page.js")
# The page loads nothing from another host, runs no inline script, and is framed by none.
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


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
        self._assets: dict[str, Response] = {}
        Handler = Callable[[Request], Awaitable[Answer]]
        self._routes: dict[str, dict[str, Handler]] = {
            **{path: {"POST": self.proxy} for path in BY_PATH},
            "/v1/models": {"GET": self.models},
            "/health/live": {"GET": self.health_live},
            "/health/ready": {"GET": self.health_ready},
            "/health": {"GET": self.health},
            "/metrics": {"GET": self.metrics_text},
            "/admin/reload": {"POST": self.admin_reload},
            "/admin/usage": {"GET": self.admin_usage},
            "/admin/stats": {"GET": self.admin_stats},
            "/": {"GET": self.page_asset},
            **{f"/page/{name}": {"GET": self.page_asset} for name in PAGE_ASSETS},
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
        return _json_response(404, _scrubbed(body))

    async def _method_not_allowed(self, request: Request, methods: dict[str, Any]) -> Answer:
        body = error_body(
            f"{request.method} is not allowed on {request.path}",
            "invalid_request_error",
            "method_not_allowed",
        )
        return _json_response(405, _scrubbed(body), {"Allow": ", ".join(sorted(methods))})

    async def proxy(self, request: Request) -> Answer:
        """Every client API (``router.apis``): one handler, the API read from the path, so
        no wrapper coroutine per request."""
        api = BY_PATH[request.path]
        operation = api.operation
        service = self.service
        runtime = service.runtime
        started = time.perf_counter()
        request_id = request.headers.get("x-request-id") or f"{_ID_PREFIX}{next(_ID_COUNTER):08x}"
        headers = {"x-request-id": request_id}
        context = bind_request(request_id)  # every event of this request carries its fields
        record = RequestRecord(request_id=request_id, operation=operation, key_name=None)
        opened: Opened | None = None
        attempts: Attempts | None = None
        affinity: Affinity | None = None
        admission: Admission | None = None
        service.in_flight += 1
        try:
            if runtime is None:
                raise RouterError("no valid configuration is loaded; see /health")
            config = runtime.config
            record.key_name = name = _client_key_name(runtime, request)
            key = runtime.keys.get(name) if name is not None else None
            body = await _read_body(request, config.server.max_body_mb)
            call = parse_call(api, body, request, request_id)
            record.stream = call.stream
            pipeline = self.pipeline
            if key is not None and key.routes is not None:
                limits.check_route(key.routes, call.model)
                call.routes = key.routes
            route = pipeline.resolve(runtime, call)
            record.route = context.route = route.name
            affinity = call.affinity = self._affinity(route, call, request, len(body))
            if key is not None and key.quota is not None:
                # The key's limits and the conversation's binding: one round trip.
                tokens = limits.estimate_tokens(api, len(body), call.payload)
                bound = affinity.key if affinity is not None else None
                admission = await limits.admit(service.state, key.quota, tokens, headers, bound)
                if affinity is not None:
                    affinity.bound = admission.binding
            elif affinity is not None:
                with contextlib.suppress(StateUnavailable):  # it costs the binding only
                    affinity.bound = (await service.state.admit(None, 0, affinity.key)).binding
            attempts = Attempts(
                api=api,
                payload=call.payload,
                stream=call.stream,
                client_wants_usage=call.client_wants_usage,
                request_id=request_id,
                deadline=runtime.clock() + route.spec.timeouts.total_s,
                clock=runtime.clock,
                headers=call.headers,
                reasoning=call.reasoning,
                context=context,
            )
            opened = await pipeline.run(runtime, route, call, attempts)
            record.route = opened.route
            record.endpoint = opened.endpoint.id
            headers["x-router-route"] = opened.route
            headers["x-router-endpoint"] = opened.endpoint.id
            headers["x-router-attempts"] = str(attempts.count)
            headers["x-router-affinity"] = affinity.verdict(opened.endpoint.id) if affinity else OFF
            if opened.dropped:
                headers["x-router-dropped"] = ", ".join(opened.dropped)
            ttft = opened.lease.first_token_at
            if ttft is not None:
                record.ttft_ms = (ttft - opened.lease.started) * 1000.0
            if not call.stream:
                record.status = 200
                record.usage = opened.usage
                content_type = opened.response.content_type or _JSON
                answer = opened.body
                secret = opened.endpoint.secret
                if secret is not None and answer.find(secret) != -1:  # one search per answer
                    answer = answer.replace(secret, b"***")
                if opened.transform is not None:
                    answer = opened.transform.body(answer)
                return Response(opened.response.status, answer, content_type, headers)
            headers["Content-Type"] = "text/event-stream"
            headers["Cache-Control"] = "no-cache"
            # Its head leaves with the first bytes, so a short answer is one write.
            resp = Stream(request, 200, headers)
            record.status = 200
            try:
                await pipeline.relay(
                    opened, attempts.deadline, runtime.clock, resp.write, resp.write_eof
                )
            except (UpstreamError, RouterError) as exc:
                record.error = exc.reason if isinstance(exc, UpstreamError) else exc.code
                record.status = 502
                # The event ends the answer, which then ends as a whole one: its framing
                # is intact, so the connection stays reusable (a client that pools
                # connections sends its next request on it, and it is served).
                await resp.write(api.stream_error(exc))
            except (asyncio.CancelledError, ConnectionResetError):
                # The client went away mid-stream: the log and request log must not call a
                # truncated stream a 200. One that had it all (and hung up while the
                # upstream's end was read) stays a 200.
                if not opened.delivered:
                    record.status = 499
                    record.error = "client_closed"
                raise
            except Exception as exc:  # a bug of ours: end the stream visibly, keep serving
                log.exception("internal_error", request_id=request_id)
                record.status = 500
                record.error = "internal_error"
                await resp.write(api.stream_error(exc))
                resp.force_close()
            finally:
                inspector = opened.inspector
                record.usage = inspector.usage if inspector else None
            return resp
        except RouterError as exc:
            record.status = exc.status
            record.error = exc.code or exc.type
            if attempts is not None:
                headers["x-router-attempts"] = str(attempts.count)
            if record.route:
                headers.setdefault("x-router-route", record.route)
            return _error_response(exc, headers, api)
        except ConnectionResetError:
            raise  # the client left mid-stream (a 499, recorded above): no bug of ours
        except Exception:  # a bug of ours: a 500 in the API's shape, and the process serves on
            log.exception("internal_error", request_id=request_id)
            record.status = 500
            record.error = "internal_error"
            return _error_response(
                RouterError("internal error; see the router's log"), headers, api
            )
        finally:
            service.in_flight -= 1
            if affinity is not None:
                served = opened.endpoint if opened is not None and record.status == 200 else None
                affinity.settle(service.state, served)
            record.latency_ms = (time.perf_counter() - started) * 1000.0
            if attempts is not None:
                record.attempts = attempts.records
                record.hedges = attempts.hedges
            if opened is not None:
                lease = opened.lease
                record.output_error = lease.output_error
                record.tool_calls_valid = lease.tool_calls_valid
                if lease.ended is not None:
                    record.served_ms = (lease.ended - lease.started) * 1000.0
                if record.usage is not None:
                    record.cost = record.usage.cost(opened.endpoint.spec.price)
            if admission is not None:
                usage = record.usage
                used = usage.prompt_tokens + usage.completion_tokens if usage else None
                limits.settle(service.state, admission, opened is not None, used, record.cost)
            if record.status == 0:
                record.status = 499  # the client went away before an answer
                record.error = record.error or "client_closed"
            _log_request(record)
            service.emit(record)
            context.end()

    def _affinity(
        self, route: RouteRuntime, call: Call, request: Request, size: int
    ) -> Affinity | None:
        """The request's prompt-cache affinity; its binding is read from the shared state
        by the caller (with the key's admission when there is one)."""
        return plan_affinity(
            route,
            route.affinity_for(call.policy),
            call.api.name,
            call.payload,
            request.headers,
            size,
            call.stream,
        )

    async def models(self, request: Request) -> Response:
        """``GET /v1/models`` (the routes, in OpenAI's list) and ``/v1/models/{id}``."""
        service = self.service
        runtime = service.runtime
        if runtime is None:
            return _error_response(RouterError("no valid configuration is loaded"), {})
        try:
            name = _client_key_name(runtime, request)
        except RouterError as exc:
            return _error_response(exc, {})
        key = runtime.keys.get(name) if name is not None else None
        allowed = key.routes if key is not None else None  # a key sees only its routes
        if not request.path.startswith(_MODEL_PREFIX):
            if allowed is None:
                return _json_response(200, runtime.models_body)
            listing = orjson.loads(runtime.models_body)
            listing["data"] = [m for m in listing["data"] if m["id"] in allowed]
            return _json_response(200, orjson.dumps(listing))
        model = request.path[len(_MODEL_PREFIX) :]
        body = runtime.model_bodies.get(model)
        if body is None or (allowed is not None and model not in allowed):
            known = runtime.route_names if allowed is None else sorted(allowed)
            missing = NotFound(
                f"The model {model!r} does not exist; known: {', '.join(known)}",
                param="model",
                code="model_not_found",
            )
            return _error_response(missing, {})
        return _json_response(200, body)

    async def health_live(self, request: Request) -> Response:
        return _json_response(200, b'{"status":"ok"}')

    async def health_ready(self, request: Request) -> Response:
        ready, missing = self.service.readiness()
        if ready:
            return _json_response(200, b'{"status":"ready"}')
        return _json_response(503, orjson.dumps({"status": "not_ready", "problems": missing}))

    async def health(self, request: Request) -> Response:
        status, body = self.service.health()
        workers = self.workers
        if workers is not None:
            self.publish_worker(body)
            body = workers.health(body, workers.read())
            status = 200 if body["status"] == "ok" else 503
        return _json_response(status, orjson.dumps(body))

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

    def _check_admin(self, request: Request) -> None:
        config = self.service.config
        admin = config.admin_key if config else None
        if admin is None:  # no admin key configured: the admin API does not exist
            raise NotFound(f"no such path: {request.path}", code="not_found")
        presented = _bearer(request)
        if not presented:
            raise Unauthorized("admin endpoints need 'Authorization: Bearer <admin key>'")
        if not hmac.compare_digest(presented.encode(), admin.get_secret_value().encode()):
            raise Forbidden("wrong admin key")

    async def admin_reload(self, request: Request) -> Response:
        try:
            self._check_admin(request)
        except RouterError as exc:
            return _error_response(exc, {})
        result = self.service.reload("admin")
        if result.ok:
            return _json_response(200, orjson.dumps({"status": "ok", "version": result.version}))
        body = error_body(
            "config is invalid; the previous config keeps serving",
            "invalid_request_error",
            "invalid_config",
            errors=result.errors,
        )
        return _json_response(400, body)

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

    async def admin_stats(self, request: Request) -> Response:
        """The model page's data. With an admin key configured it needs the key; without
        one it is open, like /health (it holds no secrets)."""
        config = self.service.config
        if config is not None and config.admin_key is not None:
            try:
                self._check_admin(request)
            except RouterError as exc:
                return _error_response(exc, {})
        page = self.page
        if page is None:
            return _error_response(NotFound("the model page is off", code="not_found"), {})
        starting = self.requestlog_starting
        if starting is not None and not starting.done():
            await asyncio.wait({starting}, timeout=15)
        page.requestlog = self.requestlog
        q = request.query
        window = q.get("window") or "1h"
        route = q.get("route") or None
        runtime = self.service.runtime
        if window not in ("1h", "24h"):
            return _error_response(BadRequest("window must be 1h or 24h", param="window"), {})
        if runtime is not None and route is not None and route not in runtime.routes:
            known = ", ".join(runtime.route_names)
            return _error_response(
                NotFound(f"unknown route {route!r}; known routes: {known}", param="route"), {}
            )
        try:
            document = await page.document(route, window)
        except LookupError as exc:
            return _error_response(RouterError(str(exc)), {})
        return _json_response(200, orjson.dumps(document), {"Cache-Control": "no-store"})

    async def admin_usage(self, request: Request) -> Response:
        try:
            self._check_admin(request)
        except RouterError as exc:
            return _error_response(exc, {})
        starting = self.requestlog_starting
        if starting is not None and not starting.done():
            await asyncio.wait({starting}, timeout=15)  # the log starts after the service listens
        requestlog = self.requestlog
        if requestlog is None or not getattr(requestlog, "enabled", True):
            # No usage without the log; keys' budgets live in the shared state all the same.
            result: dict[str, Any] = {"requestlog": "off"}
            await limits.add_budgets(self.service.state, self.service.runtime, result)
            if "budgets" in result:
                return _json_response(200, orjson.dumps(result))
            return _error_response(RouterError("the request log is off (storage.url is empty)"), {})
        from router.requestlog.usage import cache_savings, parse_time  # only admins pay

        q = request.query
        now = time.time()
        try:
            since = parse_time(q.get("since"), now - 86400)
            until = parse_time(q.get("until"), now)
        except ValueError as exc:
            return _error_response(BadRequest(str(exc), param="since"), {})
        group_by = q.get("group_by", "route")
        if group_by not in ("route", "endpoint", "key", "day"):
            return _error_response(
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
            return _error_response(BadRequest(str(exc), param="since"), {})
        except Exception as exc:  # the database is down or locked: say so, don't crash
            log.warning("usage_query_failed", error=type(exc).__name__)
            return _error_response(
                NoEndpointAvailable(
                    "the request log database is unavailable", code="storage_unavailable"
                ),
                {},
            )
        await limits.add_budgets(self.service.state, self.service.runtime, result)
        return _json_response(200, orjson.dumps(result, default=str))


def _log_request(record: RequestRecord) -> None:
    usage = record.usage
    attempts = record.attempts
    failed = None
    if len(attempts) > 1 or record.error:
        failed = [f"{a.endpoint}:{a.reason}" for a in attempts if a.reason] or None
    info_line(
        log,
        "request",
        {
            "request_id": record.request_id,
            "key": record.key_name,
            "operation": record.operation,
            "route": record.route,
            "endpoint": record.endpoint,
            "status": record.status,
            "stream": record.stream,
            "attempts": len(attempts),
            "hedges": record.hedges,
            "latency_ms": round(record.latency_ms, 2),
            "ttft_ms": None if record.ttft_ms is None else round(record.ttft_ms, 2),
            "prompt_tokens": usage.prompt_tokens if usage else None,
            "completion_tokens": usage.completion_tokens if usage else None,
            "cost": round(record.cost, 8),
            "error": record.error,
            "failed": failed,
        },
    )
