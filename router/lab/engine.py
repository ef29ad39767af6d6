"""One config on one trace, in virtual time, through the service's own pipeline.

The runtime is built by ``router.runtime.build_runtime`` from the config, with the lab's
providers (``router.lab.upstream``) in place of HTTP ones and the virtual loop's ``time``
as its clock. Each request of the trace becomes, at its arrival time (scaled by
``rate``), a task making the same calls ``router.http.proxy`` makes for a client's request
(``router.lab.client``): resolve the route, plan affinity, run the pipeline (ranking,
live stats, breaker, retries with backoff, hedging, fallbacks), relay the stream to its
end. So whatever the pipeline does, the lab does, with no second model of it to keep in
step.

Determinism: the runtime's rng (the policies' and the retry backoff's), every
behaviour's rng and, for anything that still draws from it, the process-wide ``random``
(restored afterwards) are seeded from ``seed``; the virtual loop runs callbacks in a fixed
order, and nothing reads the wall clock.
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
from typing import Any, cast

from providers.base import Provider
from providers.simulated import SimParams
from providers.simulated.prompt_cache import CacheSettings
from router.config import Config, ConfigError, ProviderSpec, load, loads
from router.lab.client import Clients, Outcome
from router.lab.fit import Fleet, stable_seed
from router.lab.fleet import Behaviour, Simulated
from router.lab.loop import LoopStalled, VirtualLoop
from router.lab.trace import Trace, TraceRequest, fewer_collections
from router.lab.upstream import LabProvider
from router.runtime import Runtime, build_runtime

START = 1000.0  # virtual time of the first arrival
_MESSAGES = [{"role": "user", "content": "replayed by the policy lab"}]  # one turn


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


def replay_period(trace: Trace) -> float:
    """How long one copy of the trace lasts when it repeats: its span and one mean gap
    between arrivals. A trace at one instant (one request, or a burst with one
    timestamp) has no gap to take: its copies come a second apart."""
    span = trace.span_s
    n = len(trace.requests)
    return span + (span / (n - 1) if n > 1 and span > 0.0 else 1.0)


def replay_order(
    trace: Trace, n: int | None, rate: float, period: float
) -> tuple[list[TraceRequest], list[float]]:
    """The requests to replay and their virtual arrival times: the trace's first ``n``,
    or the trace end to end as often as it takes to make ``n`` (a copy every ``period``,
    ``replay_period``), arrivals compressed by ``rate``."""
    base = trace.requests
    t0 = base[0].ts
    total = len(base) if n is None else n
    requests: list[TraceRequest] = []
    times: list[float] = []
    copy = 0
    while len(requests) < total:  # a copy of the trace at a time, the last one cut
        part = base[: total - len(requests)]
        offset = copy * period
        requests += part
        times += [START + ((req.ts - t0) + offset) / rate for req in part]
        copy += 1
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
        self.clients = Clients(self.runtime, requests, START, self._finished)
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
        if spec.kind != "simulated":
            return fleet.behaviour(route, ep_id)
        # The simulator's own params, as its settings build them for the service.
        built: Any = spec.section.build(spec.name, None)
        params: SimParams = built.simulator.params
        if params.seed is None:
            params.seed = stable_seed(self.seed, "simulated", spec.name)
        cache = CacheSettings(**params.prompt_cache) if params.prompt_cache else None
        return Simulated(params, cache)

    def run(self) -> Run:
        state = random.getstate()
        random.seed(stable_seed(self.seed, "random"))
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            # The run makes many short-lived objects and few cycles (exceptions with
            # their tracebacks).
            with fewer_collections():
                self.loop.run_until_complete(self._main())
        except LoopStalled:
            # A request that raised never finished: its error, freed with its task, is
            # the cause to report, not the stall it left behind.
            gc.collect()
            if not self.loop.errors:
                raise
        finally:
            random.setstate(state)
        if self.loop.errors:
            first = self.loop.errors[0]
            exc = first.get("exception")
            raise RuntimeError(f"the replay failed: {first.get('message')}: {exc!r}") from exc
        return Run(
            self.config,
            self.clients.out,
            self.described,
            wall_s=time.perf_counter() - wall,
            cpu_s=time.process_time() - cpu,
        )

    async def _main(self) -> None:
        loop = self.loop
        self._done = loop.create_future()
        if self.requests:
            loop.at(self.times[0], self._arrive)
            await self._done
        for provider in self.runtime.providers.values():
            await provider.aclose()

    def _finished(self) -> None:
        self._pending -= 1
        if not self._pending and self._next >= len(self.requests) and self._done is not None:
            self._done.set_result(None)

    def _arrive(self) -> None:
        """The next request arrives: a task of its own. Arrivals are the loop's own
        timers (``VirtualLoop.at``), run in an empty context, so each request's task
        starts with no context variable of the code that runs the replay."""
        i = self._next
        self._next = i + 1
        self._pending += 1
        asyncio.Task(self.clients.serve(i))  # on the running loop: no name, no context
        if self._next < len(self.requests):
            self.loop.at(self.times[self._next], self._arrive)


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
    period = replay_period(trace)
    replayed, times = replay_order(trace, requests, rate, period)
    engine = Engine(config, fleet, replayed, times, seed=seed, rate=rate, period=period)
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
