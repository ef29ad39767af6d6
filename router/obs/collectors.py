"""What ``GET /metrics`` shows, as Prometheus metric families: the counts ``Metrics.record``
keeps (``EventCollector``), and gauges read at scrape time from whatever runtime is
current (``StateCollector``), so a reload never leaves stale gauges behind.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

from router.obs.counts import (
    LATENCY_BUCKETS,
    LOAD_FIELDS,
    STATES,
    TOKEN_KINDS,
    TPS_BUCKETS,
    TTFT_BUCKETS,
    Histogram,
)

if TYPE_CHECKING:
    from router.obs.metrics import Metrics
    from router.requestlog.writer import RequestLog
    from router.runtime import Runtime


def _histogram(
    family: HistogramMetricFamily, labels: list[str], h: Histogram, les: list[str]
) -> None:
    buckets = []
    total = 0
    for le, n in zip(les, h.counts, strict=True):
        total += n
        buckets.append((le, total))
    family.add_metric(labels, buckets, h.sum)


def _counter(
    name: str, doc: str, labels: list[str], counts: Iterable[tuple[tuple[str, ...], int]]
) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=labels)
    for values, n in counts:
        family.add_metric(list(values), n)
    return family


class EventCollector:
    """The counters and histograms ``Metrics.record`` keeps, as metric families."""

    def __init__(self, metrics: Metrics) -> None:
        self._m = metrics
        try:
            self._version = version("llm-router")
        except PackageNotFoundError:  # run from a source tree that was never installed
            self._version = "unknown"
        self._les: dict[tuple[float, ...], list[str]] = {
            b: [floatToGoString(x) for x in b] + ["+Inf"]  # type: ignore[no-untyped-call]
            for b in (LATENCY_BUCKETS, TTFT_BUCKETS, TPS_BUCKETS)
        }

    def collect(self) -> Iterable[Metric]:
        m = self._m
        yield from _request_counters(m)
        yield from _route_counters(m)
        yield from _endpoint_families(m, self._les)
        reloads = [((result,), n) for result, n in m.reloads.items()]
        yield _counter("router_config_reloads", "Config reloads, by result.", ["result"], reloads)
        info = GaugeMetricFamily(
            "router_build_info", "The router's version (always 1).", labels=["version"]
        )
        info.add_metric([self._version], 1.0)
        yield info


def _request_counters(m: Metrics) -> Iterable[Metric]:
    yield _counter(
        "router_requests",
        "Requests answered, by the route and endpoint that served and the client key's "
        "name ('none' without client auth, 'other' for a name no longer configured).",
        ["route", "endpoint", "status", "key"],
        m.requests.items(),
    )
    yield _counter(
        "router_output_errors",
        "Answers that came back 200 but broken, by reason (empty, not_json, "
        "stream_broken, bad_response).",
        ["route", "endpoint", "reason"],
        m.output_errors.items(),
    )
    yield _counter(
        "router_attempts",
        "Upstream attempts, by outcome (reason 'ok' for success).",
        ["route", "endpoint", "reason"],
        m.attempts.items(),
    )


def _route_counters(m: Metrics) -> Iterable[Metric]:
    retries = CounterMetricFamily(
        "router_retries",
        "Upstream attempts after the first, hedges not included.",
        labels=["route"],
    )
    failovers = CounterMetricFamily(
        "router_failovers",
        "Requests served by an endpoint other than the first tried.",
        labels=["route"],
    )
    hedges = CounterMetricFamily("router_hedges", "Hedged attempts started.", labels=["route"])
    for route, rs in m.routes.items():
        retries.add_metric([route], rs.retries)
        failovers.add_metric([route], rs.failovers)
        hedges.add_metric([route], rs.hedges)
    yield retries
    yield failovers
    yield hedges


def _endpoint_families(m: Metrics, les: dict[tuple[float, ...], list[str]]) -> Iterable[Metric]:
    labels = ["route", "endpoint"]
    latency = HistogramMetricFamily(
        "router_request_latency_seconds", "End-to-end request latency.", labels=labels
    )
    ttft = HistogramMetricFamily(
        "router_ttft_seconds", "Time to the first token of streamed answers.", labels=labels
    )
    tps = HistogramMetricFamily(
        "router_tokens_per_second",
        "Output tokens per second after the first token.",
        labels=labels,
    )
    tokens = CounterMetricFamily(
        "router_tokens",
        "Tokens, by kind (reasoning and cached are parts of the others).",
        labels=["route", "endpoint", "kind"],
    )
    cost = CounterMetricFamily(
        "router_cost_usd", "Cost in USD from the endpoints' prices.", labels=labels
    )
    for (route, endpoint), es in m.endpoints.items():
        values = [route, endpoint]
        _histogram(latency, values, es.latency, les[LATENCY_BUCKETS])
        _histogram(ttft, values, es.ttft, les[TTFT_BUCKETS])
        _histogram(tps, values, es.tps, les[TPS_BUCKETS])
        for kind, n in zip(TOKEN_KINDS, es.tokens, strict=True):
            tokens.add_metric([route, endpoint, kind], n)
        cost.add_metric(values, es.cost)
    yield latency
    yield ttft
    yield tps
    yield tokens
    yield cost


class StateCollector:
    """Gauges read at scrape time from whatever runtime is current."""

    def __init__(
        self,
        runtime_getter: Callable[[], Runtime | None],
        requestlog: Callable[[], RequestLog | None],
    ) -> None:
        self._runtime = runtime_getter
        self._requestlog = requestlog

    def collect(self) -> Iterable[Metric]:
        yield from _endpoint_gauges(self._runtime())
        log = self._requestlog()
        if log is not None and log.enabled:
            yield from _requestlog_families(log)


def _endpoint_gauges(runtime: Runtime | None) -> Iterable[Metric]:
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
    score = GaugeMetricFamily(
        "router_endpoint_score",
        "The route policy's 0..1 score of the endpoint (higher ranks first).",
        labels=["route", "endpoint"],
    )
    load = GaugeMetricFamily(
        "router_endpoint_load",
        "The live loads a ranking compares (decayed, blended towards the route's best).",
        labels=["route", "endpoint", "load"],
    )
    transitions = CounterMetricFamily(
        "router_breaker_transitions",
        "Circuit breaker state changes, by the state changed to.",
        labels=["route", "endpoint", "to"],
    )
    if runtime is not None:
        now = runtime.clock()
        for route in runtime.routes.values():
            for ep in route.endpoints:
                in_flight.add_metric([route.name, ep.id], ep.stats.in_flight)
                current = ep.breaker.view(now)[0] if ep.usable else "disabled"
                for s in STATES:
                    state.add_metric([route.name, ep.id, s], 1.0 if s == current else 0.0)
                for to, n in ep.breaker.changes.items():
                    transitions.add_metric([route.name, ep.id, to], n)
            usable = route.usable
            candidates = route.candidates(usable, now) if usable else []
            scores = route.strategy.scores(candidates) if candidates else {}
            for c in candidates:
                if c.id in scores:
                    score.add_metric([route.name, c.id], scores[c.id])
                for field in LOAD_FIELDS:
                    load.add_metric([route.name, c.id, field], getattr(c, field))
    yield in_flight
    yield state
    yield score
    yield load
    yield transitions


def _requestlog_families(log: RequestLog) -> Iterable[Metric]:
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
    bad = CounterMetricFamily(
        "router_request_log_bad_rows",
        "Rows the database refused as they were: written clamped to what the "
        "columns hold, or dropped (also counted in router_request_log_dropped).",
        labels=["outcome"],
    )
    for outcome, n in log.bad_rows.items():
        bad.add_metric([outcome], n)
    failing = GaugeMetricFamily(
        "router_request_log_failing", "1 while writes to the request log fail."
    )
    failing.add_metric([], 1.0 if log.state == "failing" else 0.0)
    yield depth
    yield dropped
    yield written
    yield bad
    yield failing
