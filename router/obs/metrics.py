"""Prometheus metrics: what the router did (counters, histograms) and what it is (gauges).

Two halves, as the Prometheus client guidelines separate them. Events are counted as
they happen by ``Metrics.record(rec)``, once per finished request, from the same
``RequestRecord`` the request log gets. State that already lives elsewhere (in-flight
counts, breaker states, the request log's queue) is not copied on every change: a
custom collector reads it from the current runtime when Prometheus scrapes, so a
reload never leaves stale gauges behind.

The event half is a custom collector too. prometheus-client's ``Counter.inc`` and
``Histogram.observe`` take a lock per call (a dozen per request here) to be safe across
threads; ``record()`` only ever runs on the event loop's thread, so it adds to plain
ints and bucket lists, and ``/metrics`` (on the same thread) turns them into metric
families (``collectors.py``). Every ``Metrics`` owns a private ``CollectorRegistry``: two
apps in one test process never share counters.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

from router.obs.collectors import EventCollector, StateCollector
from router.obs.counts import NONE, OTHER_KEY, EndpointSeries, RouteSeries
from router.requestlog.records import RequestRecord

if TYPE_CHECKING:
    from router.requestlog.writer import RequestLog
    from router.runtime import Runtime


class Metrics:
    """The router's metrics; ``render()`` is the body of ``GET /metrics``."""

    def __init__(
        self,
        runtime_getter: Callable[[], Runtime | None],
        requestlog: RequestLog | None = None,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self._runtime = runtime_getter
        self.requests: dict[tuple[str, str, str, str], int] = {}
        self.output_errors: dict[tuple[str, str, str], int] = {}
        self._keys: tuple[object, frozenset[str]] = (None, frozenset())  # (config, key names)
        self.attempts: dict[tuple[str, str, str], int] = {}
        self.endpoints: dict[tuple[str, str], EndpointSeries] = {}
        self.routes: dict[str, RouteSeries] = {}
        self.reloads = {"ok": 0, "error": 0}  # both series exist from the start, at 0
        self.recorded = 0  # requests counted, so a reader can tell that something changed
        self.requestlog = requestlog  # may be set later: the log starts after listening
        self.registry.register(EventCollector(self))
        self.registry.register(StateCollector(runtime_getter, lambda: self.requestlog))
        # process_* (CPU, memory, descriptors) and python_info, as any Prometheus target.
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)

    # -- events -----------------------------------------------------------------------

    def record(self, rec: RequestRecord) -> None:
        """Count one finished request (sync, a few microseconds, event loop thread only)."""
        self.recorded += 1
        route = rec.route or NONE
        if rec.endpoint is None and not rec.attempts:
            # The route may be a client's unknown model name: keep the label set bounded.
            runtime = self._runtime()
            if runtime is None or route not in runtime.routes:
                route = NONE
        endpoint = rec.endpoint or NONE

        key = NONE if rec.key_name is None else self._key_label(rec.key_name)
        requests = self.requests
        key4 = (route, endpoint, str(rec.status), key)
        requests[key4] = requests.get(key4, 0) + 1
        if rec.output_error is not None:
            key3 = (route, endpoint, rec.output_error)
            self.output_errors[key3] = self.output_errors.get(key3, 0) + 1

        attempts = rec.attempts
        counts = self.attempts
        for a in attempts:
            akey = (a.route, a.endpoint, a.reason or "ok")
            counts[akey] = counts.get(akey, 0) + 1

        if len(attempts) > 1 or rec.hedges:
            self._count_route(route, rec)

        key2 = (route, endpoint)
        es = self.endpoints.get(key2)
        if es is None:
            es = self.endpoints[key2] = EndpointSeries()
        es.latency.observe(rec.latency_ms / 1000.0)
        if rec.ttft_ms is not None:
            es.ttft.observe(rec.ttft_ms / 1000.0)
        usage = rec.usage
        if usage is not None:
            tokens = es.tokens
            tokens[0] += usage.prompt_tokens
            tokens[1] += usage.completion_tokens
            tokens[2] += usage.reasoning_tokens
            tokens[3] += usage.cached_tokens
            if usage.completion_tokens:
                # Generation speed: output tokens over the time after the first token.
                generating_ms = rec.latency_ms - (rec.ttft_ms or 0.0)
                if generating_ms > 0:
                    es.tps.observe(usage.completion_tokens * 1000.0 / generating_ms)
        es.cost += rec.cost

    def _key_label(self, key: str) -> str:
        """A client key's name, or ``other`` for one the current config does not name."""
        config = self._runtime()
        known = self._keys
        if config is not None and known[0] is not config.config:
            known = self._keys = (config.config, frozenset(config.config.client_keys.values()))
        return key if key in known[1] else OTHER_KEY

    def _count_route(self, route: str, rec: RequestRecord) -> None:
        """Retries, failovers and hedges of a request that made more than one attempt."""
        attempts = rec.attempts
        rs = self.routes.get(route)
        if rs is None:
            rs = self.routes[route] = RouteSeries()
        tried = [a for a in attempts if not a.hedged]  # in the order they were started
        if len(tried) > 1:
            rs.retries += len(tried) - 1
        rs.hedges += rec.hedges
        won = next((a for a in attempts if a.reason is None), None)
        # A hedge that wins is counted as a hedge, not as a failover.
        if (
            won is not None
            and not won.hedged
            and tried
            and (won.route, won.endpoint) != (tried[0].route, tried[0].endpoint)
        ):
            rs.failovers += 1

    def config_reload(self, ok: bool) -> None:
        self.reloads["ok" if ok else "error"] += 1

    def render(self) -> tuple[bytes, str]:
        """(body, content type) for ``GET /metrics``."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
