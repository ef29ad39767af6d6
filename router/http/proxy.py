"""A client API's request, from its bytes to its answer: the request's way through the router.

``Proxy.serve`` reads it top-down: who asks (``auth``), the body checked by its API
(``parse_call``), the route (``Pipeline.resolve``), prompt-cache affinity and the key's
limits, the attempts (``Pipeline.run``), then the answer, whole or streamed as it comes
(``Pipeline.relay``); ``_finish`` settles what the request took and records it. Every
failure becomes an error in the client API's shape; nothing a client sends can take the
process down.

This is the hot path: its helpers take what they need as arguments (no closure or object
per request), and a streamed answer costs one coroutine more than a whole one.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import secrets
import time
from collections.abc import Callable

import structlog

from providers.errors import UpstreamError
from router.apis import BY_PATH, ClientApi
from router.apis.base import decode
from router.apis.reasoning import parse as parse_reasoning
from router.config.specs import KeySpec
from router.errors import NoConfig, RouterError
from router.http import limits
from router.http.auth import client_key_name
from router.http.replies import JSON, error_response
from router.http.server import Answer, Request, Response, Stream
from router.obs.logs import RequestContext, bind_request, info_line
from router.requestlog.records import RequestRecord
from router.routing.affinity import OFF, Affinity
from router.routing.affinity import plan as plan_affinity
from router.routing.attempts import Attempts, Opened
from router.routing.pipeline import Call, Pipeline, RoutingPrefs
from router.routing.sessions import CACHEABLE_BYTES, client_session, session_of
from router.runtime import RouteRuntime
from router.service import Service
from router.state.shared import Admission, SharedState, StateUnavailable

log = structlog.get_logger("router.http")

# Request ids: unique per process (random prefix) and cheap (a counter), unlike uuid4.
_ID_PREFIX = secrets.token_hex(8)
_ID_COUNTER = itertools.count()


def parse_call(
    api: ClientApi, body: bytes, request: Request, request_id: str, key: KeySpec | None = None
) -> Call:
    """The request as a ``Call``: its body checked by its API, routing fields taken out,
    its model one that the client's ``key`` may use."""
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
    call = Call(
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
    if key is not None and key.routes is not None:
        limits.check_route(key.routes, call.model)
        call.routes = key.routes
    return call


class Proxy:
    """The one handler of every client API (``router.apis``): the API is read from the
    path, so no wrapper coroutine per request."""

    def __init__(self, service: Service, pipeline: Pipeline) -> None:
        self.service = service
        self.pipeline = pipeline

    async def serve(self, request: Request) -> Answer:
        api = BY_PATH[request.path]
        service = self.service
        runtime = service.runtime
        started = time.perf_counter()
        request_id = request.headers.get("x-request-id") or f"{_ID_PREFIX}{next(_ID_COUNTER):08x}"
        headers = {"x-request-id": request_id}
        context = bind_request(request_id)  # every event of this request carries its fields
        record = RequestRecord(request_id=request_id, operation=api.operation, key_name=None)
        opened = attempts = affinity = admission = call = None
        service.in_flight += 1
        try:
            if runtime is None:
                raise NoConfig()
            record.key_name = name = client_key_name(runtime, request)
            key = runtime.keys.get(name) if name is not None else None
            # Decoded, bounded (413), its encoding gzip or deflate (415).
            body = await request.read(runtime.max_body_bytes)
            call = parse_call(api, body, request, request_id, key)
            record.stream = call.stream
            pipeline = self.pipeline
            route = pipeline.resolve(runtime, call)
            record.route = context.route = route.name
            affinity = call.affinity = _affinity(route, call, request, len(body))
            if affinity is not None or (key is not None and key.quota is not None):
                admission = await _admit(service.state, key, call, affinity, headers, len(body))
            attempts = _attempts(call, runtime.clock, route, context)
            opened = await pipeline.run(runtime, route, call, attempts)
            _served(opened, attempts, affinity, record, headers)
            if not call.stream:
                return _whole(opened, record, headers)
            clock = runtime.clock
            return await self._stream(request, api, opened, attempts, clock, record, headers)
        except RouterError as exc:
            return _refused(exc, api, attempts, record, headers)
        except ConnectionResetError:
            raise  # the client left mid-stream (a 499, recorded there): no bug of ours
        except Exception:  # a bug of ours: a 500 in the API's shape, and the process serves on
            return _crashed(api, record, headers)
        finally:
            service.in_flight -= 1
            if affinity is None and call is not None and service.requestlog is not None:
                record.session = _session(call, context.route, request, len(body))
            _finish(service, record, started, opened, attempts, affinity, admission)
            context.end()

    async def _stream(
        self,
        request: Request,
        api: ClientApi,
        opened: Opened,
        attempts: Attempts,
        clock: Callable[[], float],
        record: RequestRecord,
        headers: dict[str, str],
    ) -> Stream:
        """The answer as server-sent events, passed on as they come from upstream."""
        headers["Content-Type"] = "text/event-stream"
        headers["Cache-Control"] = "no-cache"
        # Its head leaves with the first bytes, so a short answer is one write.
        resp = Stream(request, 200, headers)
        record.status = 200
        try:
            await self.pipeline.relay(opened, attempts.deadline, clock, resp.write, resp.write_eof)
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
            log.exception("internal_error", request_id=record.request_id)
            record.status = 500
            record.error = "internal_error"
            await resp.write(api.stream_error(exc))
            resp.force_close()
        finally:
            inspector = opened.inspector
            record.usage = inspector.usage if inspector else None
        return resp


def _affinity(route: RouteRuntime, call: Call, request: Request, size: int) -> Affinity | None:
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


def _session(call: Call, route: str | None, request: Request, size: int) -> str | None:
    """The conversation for the request log when no affinity named it, so that the
    policy lab can replay a log recorded without affinity by conversation (prompt
    caching, and a candidate policy with affinity). Last of all: after a stream's end,
    just before a whole answer is written. The fingerprint (a few microseconds) only
    for a prompt long enough for a host to cache; the session the client named, always.
    An embedding has no conversation; and nothing here may cost the request its record."""
    if route is None or call.api.name == "embeddings":
        return None
    try:
        if size < CACHEABLE_BYTES:
            return client_session(call.payload, request.headers)
        return session_of(route, call.api.name, call.payload, request.headers)
    except Exception:  # a bug of ours: logged, and the record goes without a session
        log.exception("session_failed", request_id=call.request_id)
        return None


async def _admit(
    state: SharedState,
    key: KeySpec | None,
    call: Call,
    affinity: Affinity | None,
    headers: dict[str, str],
    size: int,
) -> Admission | None:
    """The key's limits and the conversation's binding: one round trip; the admission
    when the key has limits."""
    if key is not None and key.quota is not None:
        tokens = limits.estimate_tokens(call.api, size, call.payload)
        bound = affinity.key if affinity is not None else None
        try:
            admission = await state.admit(key.quota, tokens, bound)
        except StateUnavailable as exc:
            raise limits.unavailable(exc) from exc
        limits.verdict(admission, headers)
        if affinity is not None:
            affinity.bound = admission.binding
        return admission
    if affinity is not None:
        with contextlib.suppress(StateUnavailable):  # it costs the binding only
            affinity.bound = (await state.admit(None, 0, affinity.key)).binding
    return None


def _attempts(
    call: Call, clock: Callable[[], float], route: RouteRuntime, context: RequestContext
) -> Attempts:
    """The request's attempts, within its route's ``total_s`` from now."""
    return Attempts(
        api=call.api,
        payload=call.payload,
        stream=call.stream,
        client_wants_usage=call.client_wants_usage,
        request_id=call.request_id,
        deadline=clock() + route.spec.timeouts.total_s,
        clock=clock,
        headers=call.headers,
        reasoning=call.reasoning,
        context=context,
    )


def _served(
    opened: Opened,
    attempts: Attempts,
    affinity: Affinity | None,
    record: RequestRecord,
    headers: dict[str, str],
) -> None:
    """What the record and the answer's headers say of the attempt that serves."""
    endpoint = opened.endpoint.id
    record.route = opened.route
    record.endpoint = endpoint
    headers["x-router-route"] = opened.route
    headers["x-router-endpoint"] = endpoint
    headers["x-router-attempts"] = str(attempts.count)
    headers["x-router-affinity"] = affinity.verdict(endpoint) if affinity else OFF
    if opened.dropped:
        headers["x-router-dropped"] = ", ".join(opened.dropped)
    ttft = opened.lease.first_token_at
    if ttft is not None:
        record.ttft_ms = (ttft - opened.lease.started) * 1000.0


def _whole(opened: Opened, record: RequestRecord, headers: dict[str, str]) -> Response:
    """A non-streamed answer: upstream's bytes, its own key (if it echoed it) hidden."""
    record.status = 200
    record.usage = opened.usage
    content_type = opened.response.content_type or JSON
    answer = opened.body
    secret = opened.endpoint.secret
    if secret is not None and answer.find(secret) != -1:  # one search per answer
        answer = answer.replace(secret, b"***")
    if opened.transform is not None:
        answer = opened.transform.body(answer)
    return Response(opened.response.status, answer, content_type, headers)


def _refused(
    exc: RouterError,
    api: ClientApi,
    attempts: Attempts | None,
    record: RequestRecord,
    headers: dict[str, str],
) -> Response:
    record.status = exc.status
    record.error = exc.code or exc.type
    if attempts is not None:
        headers["x-router-attempts"] = str(attempts.count)
    if record.route:
        headers.setdefault("x-router-route", record.route)
    return error_response(exc, headers, api)


def _crashed(api: ClientApi, record: RequestRecord, headers: dict[str, str]) -> Response:
    """A bug of ours: a 500 in the API's shape, logged with its traceback."""
    log.exception("internal_error", request_id=record.request_id)
    record.status = 500
    record.error = "internal_error"
    return error_response(RouterError("internal error; see the router's log"), headers, api)


def _finish(
    service: Service,
    record: RequestRecord,
    started: float,
    opened: Opened | None,
    attempts: Attempts | None,
    affinity: Affinity | None,
    admission: Admission | None,
) -> None:
    """Settle what the request took (its binding, its key's usage), then log and emit its
    record, whatever became of it."""
    if affinity is not None:
        served = opened.endpoint if opened is not None and record.status == 200 else None
        affinity.settle(service.state, served)
        record.session = affinity.session
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
        if used is None and opened is None:
            used = 0  # nothing answered: nothing used (answered, unknown: the reservation stands)
        service.state.settle(admission, used, record.cost)
    if record.status == 0:
        record.status = 499  # the client went away before an answer
        record.error = record.error or "client_closed"
    _log_request(record)
    service.emit(record)


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
