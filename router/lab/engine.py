"""One config on one trace, in virtual time, through the service's own pipeline.

The runtime is built by ``router.runtime.build_runtime`` from the config, with the lab's
providers (``router.lab.upstream``) in place of HTTP ones and the virtual loop's ``time``
as its clock. Each request of the trace becomes, at its arrival time (scaled by
``rate``), the same calls ``router.http.api`` makes for a client's request: resolve the
route, run the pipeline (ranking, live stats, breaker, retries with backoff, hedging,
fallbacks), relay the stream to its end. So whatever the pipeline does, the lab does,
with no second model of it to keep in step; only the HTTP parsing and the sinks (log,
metrics, request log) are left out, and the lab records what it needs itself.

Determinism: the runtime's rng, every behaviour's rng and the process-wide ``random``
(tenacity draws its backoff jitter from it) are seeded from ``seed``, the virtual loop
runs callbacks in a fixed order, and nothing reads the wall clock.
"""

from __future__ import annotations

import asyncio
import gc
import math
import os
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, cast

from providers.base import Provider
from providers.errors import UpstreamError
from providers.simulated import SimParams
from providers.simulated.prompt_cache import CacheSettings
from router.apis import BY_NAME
from router.config import Config, ConfigError, ProviderSpec, load, loads
from router.errors import RouterError
from router.lab.fit import Fleet, stable_seed
from router.lab.fleet import Behaviour, Simulated
from router.lab.loop import VirtualLoop
from router.lab.trace import Trace, TraceRequest
from router.lab.upstream import LabProvider
from router.requestlog.records import Usage
from router.routing.attempts import Attempts
from router.routing.pipeline import Call, Pipeline
from router.runtime import Endpoint, Runtime, build_runtime

START = 1000.0  # virtual time of the first arrival
_MESSAGES = [{"role": "user", "content": "replayed by the policy lab"}]


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


@dataclass
class Run:
    config: Config
    outcomes: list[Outcome]  # in the order the requests finished
    fleet: dict[str, dict[str, object]]  # "route/id" -> how it was modelled
    wall_s: float = 0.0
    cpu_s: float = 0.0


def load_config(path: str) -> Config:
    """The routes file, with every endpoint usable whatever keys this shell holds: the
    lab never calls an upstream, and an endpoint disabled for a missing key in the
    shell would be enabled where the file is served."""
    config = load(path)
    missing = {p.missing_key_env for p in config.providers.values() if p.missing_key_env}
    if not missing:
        return config
    with open(path, "rb") as fh:
        data = fh.read()
    env = {**os.environ, **{name: "policy-lab-placeholder" for name in missing}}
    return loads(data, path=path, env=env)


def replay_order(
    trace: Trace, n: int | None, rate: float
) -> tuple[list[TraceRequest], list[float]]:
    """The requests to replay and their virtual arrival times: the trace's first ``n``,
    or the trace end to end as often as it takes to make ``n`` (each copy starts one mean
    gap after the last one), arrivals compressed by ``rate``."""
    base = trace.requests
    t0 = base[0].ts
    span = trace.span_s
    gap = span / (len(base) - 1) if len(base) > 1 else 1.0
    period = span + gap
    total = len(base) if n is None else n
    requests, times = [], []
    for i in range(total):
        copy, j = divmod(i, len(base))
        req = base[j]
        requests.append(req)
        times.append(START + ((req.ts - t0) + copy * period) / rate)
    return requests, times


class Engine:
    """Replays ``requests`` at ``times`` through ``config``; ``run()`` once."""

    def __init__(
        self,
        config: Config,
        fleet: Fleet,
        requests: Sequence[TraceRequest],
        times: Sequence[float],
        *,
        seed: int,
        rate: float,
        period: float,
    ) -> None:
        self.config = config
        self.requests = requests
        self.times = times
        self.seed = seed
        self.loop = VirtualLoop.make(START)
        t0 = fleet.start

        def trace_time(now: float) -> float:
            # Virtual time back to the trace's, so drift plays where it happened.
            return t0 + math.fmod((now - START) * rate, period)

        self.behaviours: dict[str, dict[str, Behaviour]] = {}  # provider -> model -> host
        self.described: dict[str, dict[str, object]] = {}  # "route/id" -> how it is modelled
        self._model_fleet(fleet, {r.route for r in requests})
        self.runtime: Runtime
        self.runtime, _ = build_runtime(
            config,
            rng=random.Random(stable_seed(seed, "runtime")),
            clock=self.loop.time,
            provider_factory=lambda spec: cast(
                # Its send() hands back a future, not a coroutine: an awaitable all the
                # same, which is all the pipeline does with it (no coroutine per attempt).
                Provider,
                LabProvider(self.loop, self.behaviours.get(spec.name, {}), requests, trace_time),
            ),
        )
        self.pipeline = Pipeline()
        self._labels = {
            ep: f"{route.name}/{ep.id}"
            for route in self.runtime.routes.values()
            for ep in route.endpoints
        }
        self._payloads: dict[tuple[str, bool], dict[str, Any]] = {}
        self.out: list[Outcome] = []
        done: asyncio.Future[None] = self.loop.create_future()
        done.set_result(None)
        self._written = done  # what writing to the client awaits: done at once
        self._pending = 0
        self._next = 0
        self._done: asyncio.Future[None] | None = None

    def _model_fleet(self, fleet: Fleet, asked: set[str]) -> None:
        """A behaviour per host (provider and model); described for the routes the trace
        asks for and their fallbacks."""
        routes = self.config.routes
        shown: set[str] = set()
        todo = list(asked)
        while todo:
            name = todo.pop()
            if name in routes and name not in shown:
                shown.add(name)
                todo.extend(routes[name].fallbacks)
        for route in routes.values():
            for ep in route.endpoints:
                models = self.behaviours.setdefault(ep.provider.name, {})
                if ep.model not in models:
                    models[ep.model] = self._behaviour(ep.provider, route.name, ep.id, fleet)
                if route.name in shown:
                    self.described[f"{route.name}/{ep.id}"] = models[ep.model].describe()

    def _behaviour(self, spec: ProviderSpec, route: str, ep_id: str, fleet: Fleet) -> Behaviour:
        section: Any = spec.section
        if spec.kind != "simulated":
            return fleet.behaviour(route, ep_id)
        params = SimParams(
            **{
                k: getattr(section, k)
                for k in SimParams.__dataclass_fields__
                if hasattr(section, k)
            }
        )
        if params.seed is None:
            params.seed = stable_seed(self.seed, "simulated", spec.name)
        settings: Any = getattr(params, "prompt_cache", None)  # {ttl_s, min_tokens, ttft_factor}
        if settings is not None and not isinstance(settings, dict):
            settings = settings.model_dump()
        cache = CacheSettings(**settings) if settings else None
        return Simulated(params, cache)

    def run(self) -> Run:
        state = random.getstate()
        random.seed(stable_seed(self.seed, "random"))
        thresholds = gc.get_threshold()
        gc.set_threshold(50_000, 50, 100)  # far fewer young collections: the run makes
        # many short-lived objects and few cycles (exceptions with their tracebacks)
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            self.loop.run_until_complete(self._main())
        finally:
            gc.set_threshold(*thresholds)
            random.setstate(state)
        if self.loop.errors:
            first = self.loop.errors[0]
            raise RuntimeError(f"the replay failed: {first.get('message')}") from first.get(
                "exception"
            )
        return Run(
            self.config,
            self.out,
            self.described,
            wall_s=time.perf_counter() - wall,
            cpu_s=time.process_time() - cpu,
        )

    async def _main(self) -> None:
        loop = self.loop
        self._done = loop.create_future()
        if self.requests:
            loop.call_at(self.times[0], self._arrive)
            await self._done
        for provider in self.runtime.providers.values():
            await provider.aclose()

    def _arrive(self) -> None:
        i = self._next
        self._next = i + 1
        self._pending += 1
        self.loop.create_task(self._serve(i))
        if self._next < len(self.requests):
            self.loop.call_at(self.times[self._next], self._arrive)

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
            Outcome(
                start - START,
                status,
                error,
                None if served is None else self._labels[served],
                ttft,
                self.loop.time() - start,
                attempts.count if attempts else 0,
                attempts.hedges if attempts else 0,
                cost,
                usage.prompt_tokens if usage else 0,
                usage.cached_tokens if usage else 0,
            )
        )

    def _payload(self, req: TraceRequest) -> dict[str, Any]:
        """The client's body: never changed on the way (an attempt sends a copy), so the
        requests of a route share one unless they name a session."""
        if req.session is None:
            key = (req.route, req.stream)
            payload = self._payloads.get(key)
            if payload is None:
                payload = self._payloads[key] = _body(req)
            return payload
        return _body(req)

    def _write(self, data: bytes) -> asyncio.Future[None]:
        """The client's side of a stream: nobody reads it (a done future, no coroutine)."""
        return self._written

    async def _serve(self, i: int) -> None:
        """One client request, as ``router.http.api.Api.proxy`` serves it."""
        req = self.requests[i]
        runtime, pipeline = self.runtime, self.pipeline
        clock = runtime.clock
        start = clock()
        call = Call(
            api=BY_NAME[req.replayed_as],
            payload=self._payload(req),
            model=req.route,
            stream=req.stream,
            # As if the client asked for the usage chunk: nobody reads the stream, and
            # the inspector need not cut that chunk out.
            client_wants_usage=True,
            request_id=str(i),
        )
        status, error, served, ttft, usage = 0, None, None, None, None
        attempts: Attempts | None = None
        try:
            route = pipeline.resolve(runtime, call)
            attempts = Attempts(
                api=call.api,
                payload=call.payload,
                stream=call.stream,
                client_wants_usage=True,
                request_id=call.request_id,
                deadline=start + route.spec.timeouts.total_s,
                clock=clock,
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
        self._record(start, status, error, served, ttft, attempts, usage)
        self._pending -= 1
        if not self._pending and self._next >= len(self.requests) and self._done is not None:
            self._done.set_result(None)


def _body(req: TraceRequest) -> dict[str, Any]:
    payload: dict[str, Any] = {"model": req.route, "messages": _MESSAGES}
    if req.stream:
        payload["stream"] = True
        payload["stream_options"] = {"include_usage": True}
    if req.session is not None:
        payload["prompt_cache_key"] = req.session
    return payload


def simulate(
    config_path: str,
    trace: Trace,
    *,
    requests: int | None = None,
    seed: int = 0,
    rate: float = 1.0,
) -> Run:
    """Replays ``trace`` through the routes file at ``config_path``."""
    config = load_config(config_path)
    return simulate_config(config, trace, requests=requests, seed=seed, rate=rate)


def simulate_config(
    config: Config,
    trace: Trace,
    *,
    requests: int | None = None,
    seed: int = 0,
    rate: float = 1.0,
) -> Run:
    fleet = Fleet(trace, seed)
    replayed, times = replay_order(trace, requests, rate)
    gap = trace.span_s / (len(trace.requests) - 1) if len(trace.requests) > 1 else 1.0
    engine = Engine(config, fleet, replayed, times, seed=seed, rate=rate, period=trace.span_s + gap)
    return engine.run()


__all__ = [
    "ConfigError",
    "Engine",
    "Outcome",
    "Run",
    "load_config",
    "replay_order",
    "simulate",
    "simulate_config",
]
