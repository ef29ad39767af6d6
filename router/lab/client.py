"""The clients' side of a replay: each request as the service's HTTP handler serves it.

``Clients.serve`` makes for one trace request the calls ``router.http.proxy.Proxy.serve``
makes for a client's: resolve the route, plan prompt-cache affinity (its bindings in an
in-process state on the virtual clock), run the pipeline, relay the stream to its end,
settle the affinity; then records what the client saw (``Outcome``). HTTP parsing, client
keys and their limits, logs, metrics and the request log are left out.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from providers.errors import UpstreamError
from router.apis import BY_NAME
from router.errors import RouterError
from router.lab.trace import REPLAYED_AS, TraceRequest
from router.requestlog.records import Usage
from router.routing.affinity import Affinity
from router.routing.affinity import plan as plan_affinity
from router.routing.attempts import Attempts
from router.routing.pipeline import Call, Pipeline
from router.routing.sessions import BYTES_PER_TOKEN
from router.runtime import Endpoint, RouteRuntime, Runtime
from router.state.shared.memory import MemoryState

_MESSAGES = [{"role": "user", "content": "replayed by the policy lab"}]  # one turn
_outcome = tuple.__new__


class Outcome(NamedTuple):
    """One replayed request, as its client would have seen it."""

    arrival: float  # seconds since the first arrival
    status: int
    error: str | None
    endpoint: str | None  # "route/id" that served it
    ttft: float | None  # from arrival to the first token; streams only
    latency: float
    attempts: int
    hedges: int
    cost: float
    prompt_tokens: int
    cached_tokens: int


class Clients:
    """Serves the replayed requests through ``runtime``; ``finished`` is called after each."""

    def __init__(
        self,
        runtime: Runtime,
        requests: Sequence[TraceRequest],
        start: float,
        finished: Callable[[], None],
    ) -> None:
        self.runtime = runtime
        self.requests = requests
        self.start = start  # the virtual time of the first arrival
        self.finished = finished
        self.pipeline = Pipeline()
        self.out: list[Outcome] = []
        self.state = MemoryState(clock=runtime.clock)  # affinity's bindings
        self._labels = {
            ep: f"{route.name}/{ep.id}"
            for route in runtime.routes.values()
            for ep in route.endpoints
        }
        self._payloads: dict[tuple[str, bool], dict[str, Any]] = {}
        self._turns = _turns(requests)
        self._apis = {api: BY_NAME[REPLAYED_AS[api]] for api in REPLAYED_AS}
        self._written: asyncio.Future[None] | None = None  # made on the loop, at first use

    async def serve(self, i: int) -> None:
        """One client request, as ``router.http.proxy.Proxy.serve`` serves it."""
        req = self.requests[i]
        runtime, pipeline = self.runtime, self.pipeline
        clock = runtime.clock
        start = clock()
        # By position (api, payload, model, stream, client_wants_usage, request_id):
        # keywords cost a dict per call to a class. As if the client asked for the usage
        # chunk: nobody reads the stream, and the inspector need not cut that chunk out.
        call = Call(self._apis[req.api], self._payload(i, req), req.route, req.stream, True, str(i))
        status, error, served, ttft, usage = 0, None, None, None, None
        attempts: Attempts | None = None
        affinity: Affinity | None = None
        try:
            route = pipeline.resolve(runtime, call)
            # A request without a session in the trace has no affinity: the lab cannot
            # tell which conversation it continued.
            if req.session is not None:
                affinity = call.affinity = self._affinity(route, call, req)
            # By position (api, payload, stream, client_wants_usage, request_id, deadline,
            # clock), as Call above.
            attempts = Attempts(
                call.api,
                call.payload,
                call.stream,
                True,
                call.request_id,
                start + route.spec.timeouts.total_s,
                clock,
            )
            opened = await pipeline.run(runtime, route, call, attempts)
            served = opened.endpoint
            first = opened.lease.first_token_at
            ttft = None if first is None else first - start
            status = 200
            if not call.stream:
                usage = opened.usage
            else:
                try:
                    await pipeline.relay(opened, attempts.deadline, clock, self._write, self._write)
                except UpstreamError as exc:
                    status, error = 502, exc.reason
                usage = opened.inspector.usage if opened.inspector else None
        except RouterError as exc:
            status, error = exc.status, exc.code or exc.type
        if affinity is not None:
            affinity.settle(self.state, served if status == 200 else None)
        self._record(start, status, error, served, ttft, attempts, usage)
        self.finished()

    def _affinity(self, route: RouteRuntime, call: Call, req: TraceRequest) -> Affinity | None:
        """Prompt-cache affinity as the service's handler plans it for a request with a
        session, its bindings in an in-process state on the virtual clock."""
        settings = route.affinity_for(call.policy)
        if settings is None:
            return None
        size = req.prompt_tokens * BYTES_PER_TOKEN  # the body the prompt came in, roughly
        found = plan_affinity(route, settings, call.api.name, call.payload, {}, size, call.stream)
        if found is not None:
            found.bound = self.state.admit_now(None, 0, found.key).binding
        return found

    def _record(
        self,
        start: float,
        status: int,
        error: str | None,
        served: Endpoint | None,
        ttft: float | None,
        attempts: Attempts | None,
        usage: Usage | None,
    ) -> None:
        cost = 0.0
        if usage is not None and served is not None:
            cost = usage.cost(served.spec.price)
        self.out.append(
            _outcome(  # the tuple made in C: no namedtuple __new__ frame per request
                Outcome,
                (
                    start - self.start,
                    status,
                    error,
                    None if served is None else self._labels[served],
                    ttft,
                    self.runtime.clock() - start,
                    attempts.count if attempts else 0,
                    attempts.hedges if attempts else 0,
                    cost,
                    usage.prompt_tokens if usage else 0,
                    usage.cached_tokens if usage else 0,
                ),
            )
        )

    def _payload(self, i: int, req: TraceRequest) -> dict[str, Any]:
        """The client's body: never changed on the way (an attempt sends a copy), so the
        requests of a route share one unless they name a session."""
        if req.session is None:
            key = (req.route, req.stream)
            payload = self._payloads.get(key)
            if payload is None:
                payload = self._payloads[key] = _body(req, 1)
            return payload
        return _body(req, self._turns[i])

    def _write(self, data: bytes) -> asyncio.Future[None]:
        """The client's side of a stream: nobody reads it (a done future, no coroutine)."""
        written = self._written
        if written is None:
            written = self._written = asyncio.get_running_loop().create_future()
            written.set_result(None)
        return written


def _turns(requests: Sequence[TraceRequest]) -> list[int]:
    """Each request's turn in its session (1 for the first, and without a session)."""
    seen: dict[str, int] = {}
    out = []
    for req in requests:
        n = 1
        if req.session is not None:
            n = seen[req.session] = seen.get(req.session, 0) + 1
        out.append(n)
    return out


def _body(req: TraceRequest, turns: int) -> dict[str, Any]:
    """The client's body: as many user messages as the session has had turns (what the
    affinity rule reads), the session as ``prompt_cache_key``."""
    payload: dict[str, Any] = {"model": req.route, "messages": _MESSAGES * turns}
    if req.stream:
        payload["stream"] = True
        payload["stream_options"] = {"include_usage": True}
    if req.session is not None:
        payload["prompt_cache_key"] = req.session
    return payload
