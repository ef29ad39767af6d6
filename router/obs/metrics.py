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
families. Every ``Metrics`` owns a private ``CollectorRegistry``: two apps in one test
process never share counters.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

from router.requestlog.records import RequestRecord

if TYPE_CHECKING:
    from router.requestlog.writer import RequestLog
    from router.runtime import Runtime

# Seconds. LLM answers span from an embedding in 50 ms to a long generation in minutes.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 8, 13, 20, 30, 60, 120, 300, 600)
# Time to first token: tens of ms for a warm cache, a minute for a deep reasoning model.
TTFT_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 20, 30, 60)
# Output tokens per second after the first token: ~10 (large models) to ~1000 (small, fast).
TPS_BUCKETS = (5, 10, 20, 30, 50, 75, 100, 150, 200, 300, 500, 1000, 2000)
STATES = ("healthy", "cooldown", "half_open", "disabled")
NONE = "none"  # the label value when a request never reached a route or endpoint
TOKEN_KINDS = ("prompt", "completion", "reasoning", "cached")
OTHER_KEY = "other"  # a client key name that is not configured now: bounded label values
# The loads a ranking compares, as gauges (seconds, tokens/s, rates, requests).
LOAD_FIELDS = ("latency_s", "ttft_s", "tokens_per_s", "error_rate", "output_error_rate")


class _Histogram:
    """One series' bucket counts (not cumulative; the last is +Inf) and sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # Prometheus buckets are "less than or equal": the first bound >= value.
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value


class _EndpointSeries:
    __slots__ = ("cost", "latency", "tokens", "tps", "ttft")

    def __init__(self) -> None:
        self.latency = _Histogram(LATENCY_BUCKETS)
        self.ttft = _Histogram(TTFT_BUCKETS)
        self.tps = _Histogram(TPS_BUCKETS)
        self.tokens = [0, 0, 0, 0]  # in TOKEN_KINDS order
        self.cost = 0.0


class _RouteSeries:
    __slots__ = ("failovers", "hedges", "retries")

    def __init__(self) -> None:
        self.retries = 0
        self.failovers = 0
        self.hedges = 0


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
        self.endpoints: dict[tuple[str, str], _EndpointSeries] = {}
        self.routes: dict[str, _RouteSeries] = {}
        self.reloads = {"ok": 0, "error": 0}  # both series exist from the start, at 0
        self.recorded = 0  # requests counted, so a reader can tell that something changed
        self.requestlog = requestlog  # may be set later: the log starts after listening
        self.registry.register(_EventCollector(self))
        self.registry.register(_StateCollector(runtime_getter, lambda: self.requestlog))
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

        key = rec.key_name
        if key is None:
            key = NONE
        else:
            config = self._runtime()
            known = self._keys
            if config is not None and known[0] is not config.config:
                known = self._keys = (config.config, frozenset(config.config.client_keys.values()))
            if key not in known[1]:
                key = OTHER_KEY
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
            rs = self.routes.get(route)
            if rs is None:
                rs = self.routes[route] = _RouteSeries()
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

        key2 = (route, endpoint)
        es = self.endpoints.get(key2)
        if es is None:
            es = self.endpoints[key2] = _EndpointSeries()
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

    def config_reload(self, ok: bool) -> None:
        self.reloads["ok" if ok else "error"] += 1

    def render(self) -> tuple[bytes, str]:
        """(body, content type) for ``GET /metrics``."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def _histogram(
    family: HistogramMetricFamily, labels: list[str], h: _Histogram, les: list[str]
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


class _EventCollector:
    """The counters and histograms ``Metrics.record`` keeps, as metric families."""

    def __init__(self, metrics: Metrics) -> None:
        self._m = metrics
        try:
            self._version = version("llm-router")
        except PackageNotFoundError:  # run from a source tree that was never installed
            self._version = "unknown"
        self._les = {
            b: [floatToGoString(x) for x in b] + ["+Inf"]  # type: ignore[no-untyped-call]
            for b in (LATENCY_BUCKETS, TTFT_BUCKETS, TPS_BUCKETS)
        }

    def collect(self) -> Iterable[Metric]:
        m = self._m
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
        les = self._les
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

        reloads = [((result,), n) for result, n in m.reloads.items()]
        yield _counter("router_config_reloads", "Config reloads, by result.", ["result"], reloads)
        info = GaugeMetricFamily(
            "router_build_info", "The router's version (always 1).", labels=["version"]
        )
        info.add_metric([self._version], 1.0)
        yield info


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
        runtime = self._runtime()
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
