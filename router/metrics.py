"""Prometheus metrics: what the router did (counters, histograms) and what it is (gauges).

Two halves, as the Prometheus client guidelines separate them. Events are counted as
they happen by ``Metrics.record(rec)``, once per finished request, from the same
``RequestRecord`` the request log gets. State that already lives elsewhere (in-flight
counts, breaker states, the request log's queue) is not copied on every change: a
custom collector reads it from the current runtime when Prometheus scrapes, so a
reload never leaves stale gauges behind.

Every ``Metrics`` owns a private ``CollectorRegistry`` (no process-global registry:
two apps in one test process never share counters). ``.labels()`` costs a lock and a
tuple of strings, so the label children are cached per label tuple and ``record()``
stays at a few microseconds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from router.records import RequestRecord

if TYPE_CHECKING:
    from router.registry import Runtime
    from router.requestlog import RequestLog

# Seconds. LLM answers span from an embedding in 50 ms to a long generation in minutes.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 8, 13, 20, 30, 60, 120, 300, 600)
# Time to first token: tens of ms for a warm cache, a minute for a deep reasoning model.
TTFT_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 20, 30, 60)
# Output tokens per second after the first token: ~10 (large models) to ~1000 (small, fast).
TPS_BUCKETS = (5, 10, 20, 30, 50, 75, 100, 150, 200, 300, 500, 1000, 2000)
STATES = ("healthy", "cooldown", "half_open", "disabled")
NONE = "none"  # the label value when a request never reached a route or endpoint


@dataclass(slots=True)
class _EndpointChildren:
    latency: Any
    ttft: Any
    tps: Any
    prompt: Any
    completion: Any
    reasoning: Any
    cached: Any
    cost: Any


@dataclass(slots=True)
class _RouteChildren:
    retries: Any
    failovers: Any
    hedges: Any


class Metrics:
    """The router's metrics; ``render()`` is the body of ``GET /metrics``."""

    def __init__(
        self,
        runtime_getter: Callable[[], Runtime | None],
        requestlog: RequestLog | None = None,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self._runtime = runtime_getter
        r = self.registry
        self.requests = Counter(
            "router_requests",
            "Requests answered, by the route and endpoint that served.",
            ["route", "endpoint", "status"],
            registry=r,
        )
        self.attempts = Counter(
            "router_attempts",
            "Upstream attempts, by outcome (reason 'ok' for success).",
            ["route", "endpoint", "reason"],
            registry=r,
        )
        self.retries = Counter(
            "router_retries",
            "Upstream attempts after the first, hedges not included.",
            ["route"],
            registry=r,
        )
        self.failovers = Counter(
            "router_failovers",
            "Requests served by an endpoint other than the first tried.",
            ["route"],
            registry=r,
        )
        self.hedges = Counter(
            "router_hedges",
            "Hedged attempts started.",
            ["route"],
            registry=r,
        )
        self.latency = Histogram(
            "router_request_latency_seconds",
            "End-to-end request latency.",
            ["route", "endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "router_ttft_seconds",
            "Time to the first token of streamed answers.",
            ["route", "endpoint"],
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.tps = Histogram(
            "router_tokens_per_second",
            "Output tokens per second after the first token.",
            ["route", "endpoint"],
            buckets=TPS_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "router_tokens",
            "Tokens, by kind (reasoning and cached are parts of the others).",
            ["route", "endpoint", "kind"],
            registry=r,
        )
        self.cost = Counter(
            "router_cost_usd",
            "Cost in USD from the endpoints' prices.",
            ["route", "endpoint"],
            registry=r,
        )
        self.reloads = Counter(
            "router_config_reloads",
            "Config reloads, by result.",
            ["result"],
            registry=r,
        )
        for result in ("ok", "error"):
            self.reloads.labels(result)  # both series exist from the start, at 0
        self.requestlog = requestlog  # may be set later: the log starts after listening
        r.register(_StateCollector(runtime_getter, lambda: self.requestlog))
        self._requests: dict[tuple[str, str, str], Any] = {}
        self._attempts: dict[tuple[str, str, str], Any] = {}
        self._endpoints: dict[tuple[str, str], _EndpointChildren] = {}
        self._routes: dict[str, _RouteChildren] = {}

    # -- events -----------------------------------------------------------------------

    def record(self, rec: RequestRecord) -> None:
        """Count one finished request (sync, a few microseconds)."""
        route = rec.route or NONE
        if rec.endpoint is None and not rec.attempts:
            # The route may be a client's unknown model name: keep the label set bounded.
            runtime = self._runtime()
            if runtime is None or route not in runtime.routes:
                route = NONE
        endpoint = rec.endpoint or NONE

        key3 = (route, endpoint, str(rec.status))
        child = self._requests.get(key3)
        if child is None:
            child = self._requests[key3] = self.requests.labels(*key3)
        child.inc()

        attempts = rec.attempts
        for a in attempts:
            akey = (a.route, a.endpoint, a.reason or "ok")
            achild = self._attempts.get(akey)
            if achild is None:
                achild = self._attempts[akey] = self.attempts.labels(*akey)
            achild.inc()

        if attempts or rec.hedges:
            rc = self._route(route)
            tried = [a for a in attempts if not a.hedged]  # in the order they were started
            if len(tried) > 1:
                rc.retries.inc(len(tried) - 1)
            if rec.hedges:
                rc.hedges.inc(rec.hedges)
            won = next((a for a in attempts if a.reason is None), None)
            # A hedge that wins is counted as a hedge, not as a failover.
            if (
                won is not None
                and not won.hedged
                and tried
                and (won.route, won.endpoint) != (tried[0].route, tried[0].endpoint)
            ):
                rc.failovers.inc()

        ec = self._endpoint(route, endpoint)
        ec.latency.observe(rec.latency_ms / 1000.0)
        if rec.ttft_ms is not None:
            ec.ttft.observe(rec.ttft_ms / 1000.0)
        usage = rec.usage
        if usage is not None:
            if usage.prompt_tokens:
                ec.prompt.inc(usage.prompt_tokens)
            if usage.completion_tokens:
                ec.completion.inc(usage.completion_tokens)
                # Generation speed: output tokens over the time after the first token.
                generating_ms = rec.latency_ms - (rec.ttft_ms or 0.0)
                if generating_ms > 0:
                    ec.tps.observe(usage.completion_tokens * 1000.0 / generating_ms)
            if usage.reasoning_tokens:
                ec.reasoning.inc(usage.reasoning_tokens)
            if usage.cached_tokens:
                ec.cached.inc(usage.cached_tokens)
        if rec.cost > 0:
            ec.cost.inc(rec.cost)

    def config_reload(self, ok: bool) -> None:
        self.reloads.labels("ok" if ok else "error").inc()

    def render(self) -> tuple[bytes, str]:
        """(body, content type) for ``GET /metrics``."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    # -- cached label children --------------------------------------------------------

    def _route(self, route: str) -> _RouteChildren:
        found = self._routes.get(route)
        if found is None:
            found = self._routes[route] = _RouteChildren(
                self.retries.labels(route), self.failovers.labels(route), self.hedges.labels(route)
            )
        return found

    def _endpoint(self, route: str, endpoint: str) -> _EndpointChildren:
        key = (route, endpoint)
        found = self._endpoints.get(key)
        if found is None:
            tokens = self.tokens
            found = self._endpoints[key] = _EndpointChildren(
                latency=self.latency.labels(*key),
                ttft=self.ttft.labels(*key),
                tps=self.tps.labels(*key),
                prompt=tokens.labels(route, endpoint, "prompt"),
                completion=tokens.labels(route, endpoint, "completion"),
                reasoning=tokens.labels(route, endpoint, "reasoning"),
                cached=tokens.labels(route, endpoint, "cached"),
                cost=self.cost.labels(*key),
            )
        return found


class _StateCollector:
    """Gauges read at scrape time from whatever runtime is current."""

    def __init__(
        self,
        runtime_getter: Callable[[], Runtime | None],
        requestlog: Callable[[], RequestLog | None],
    ) -> None:
        self._runtime = runtime_getter
        self._requestlog = requestlog

    def collect(self) -> Iterable[Metric]:
        in_flight = GaugeMetricFamily(
            "router_endpoint_in_flight",
            "Requests in flight to the endpoint.",
            labels=["route", "endpoint"],
        )
        state = GaugeMetricFamily(
            "router_endpoint_state",
            "1 for the endpoint's current state, 0 for the others.",
            labels=["route", "endpoint", "state"],
        )
        runtime = self._runtime()
        if runtime is not None:
            now = runtime.clock()
            for route in runtime.routes.values():
                for ep in route.endpoints:
                    in_flight.add_metric([route.name, ep.id], ep.stats.in_flight)
                    current = ep.breaker.view(now)[0] if ep.usable else "disabled"
                    for s in STATES:
                        state.add_metric([route.name, ep.id, s], 1.0 if s == current else 0.0)
        yield in_flight
        yield state
        log = self._requestlog()
        if log is not None and log.enabled:
            depth = GaugeMetricFamily(
                "router_request_log_queue_depth", "Request records waiting to be written."
            )
            depth.add_metric([], log.queue_depth)
            dropped = CounterMetricFamily(
                "router_request_log_dropped",
                "Request records dropped: the queue was full or the database down at exit.",
            )
            dropped.add_metric([], log.dropped)
            written = CounterMetricFamily(
                "router_request_log_written", "Request records written to the database."
            )
            written.add_metric([], log.written)
            yield depth
            yield dropped
            yield written
