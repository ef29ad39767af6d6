"""/metrics: what ``Metrics.record`` counts and what the scrape-time collector reads,
checked by parsing the rendered text with prometheus-client's own parser."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from router.config import loads
from router.obs.metrics import Metrics
from router.requestlog.records import AttemptRecord, RequestRecord, Usage
from router.requestlog.writer import RequestLog
from router.runtime import Runtime, build_runtime

CONFIG = """
providers:
  sim-a: {kind: simulated, ttft_ms: 10, tokens_per_s: 100}
  sim-b: {kind: simulated, ttft_ms: 10, tokens_per_s: 100}
  keyed: {kind: openai, base_url: https://example.invalid/v1, api_key_env: METRICS_TEST_UNSET_KEY}
routes:
  demo:
    policy: priority
    endpoints:
      - {provider: sim-a, model: m}
      - {provider: sim-b, model: m}
      - {provider: keyed, model: m}
"""


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_runtime() -> Runtime:
    runtime, _ = build_runtime(loads(CONFIG, env={}), clock=FakeClock())
    return runtime


def samples(metrics: Metrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(
    got: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return got.get((name, frozenset(labels.items())), 0.0)


def served(route: str = "demo", endpoint: str = "sim-a", **kw: Any) -> RequestRecord:
    rec = RequestRecord(
        request_id="r", operation="chat", key_name="k", route=route, endpoint=endpoint, status=200
    )
    rec.latency_ms = kw.get("latency_ms", 1500.0)
    rec.ttft_ms = kw.get("ttft_ms", 500.0)
    rec.usage = kw.get(
        "usage",
        Usage(prompt_tokens=100, completion_tokens=50, reasoning_tokens=20, cached_tokens=40),
    )
    rec.cost = kw.get("cost", 0.25)
    rec.attempts = kw.get("attempts", [AttemptRecord(route, endpoint, 200, None, 1500.0)])
    rec.hedges = kw.get("hedges", 0)
    return rec


def test_request_counters_histograms_and_tokens() -> None:
    runtime = make_runtime()
    metrics = Metrics(lambda: runtime)
    metrics.record(served())
    metrics.record(served())
    # Failed over from sim-b to sim-a.
    metrics.record(
        served(
            attempts=[
                AttemptRecord("demo", "sim-b", 503, "http_5xx", 40.0),
                AttemptRecord("demo", "sim-a", 200, None, 900.0),
            ]
        )
    )
    # Hedged: the hedge on sim-b won; not a failover, not a retry.
    metrics.record(
        served(
            endpoint="sim-b",
            hedges=1,
            attempts=[
                AttemptRecord("demo", "sim-b", 200, None, 300.0, hedged=True),
                AttemptRecord("demo", "sim-a", None, "hedge_lost", 800.0),
            ],
        )
    )
    # Every endpoint failed.
    failed = RequestRecord(
        request_id="x",
        operation="chat",
        key_name=None,
        route="demo",
        status=502,
        error="AllAttemptsFailed",
        latency_ms=80.0,
    )
    failed.attempts = [
        AttemptRecord("demo", "sim-a", None, "timeout", 40.0),
        AttemptRecord("demo", "sim-b", 500, "http_5xx", 40.0),
    ]
    metrics.record(failed)
    # An unknown model never reached a route: its name must not become a label value.
    metrics.record(
        RequestRecord(
            request_id="y",
            operation="chat",
            key_name=None,
            route="no-such-model-" + "x" * 40,
            status=404,
            error="UnknownModel",
        )
    )

    got = samples(metrics)
    assert (
        value(
            got, "router_requests_total", route="demo", endpoint="sim-a", status="200", key="other"
        )
        == 3
    )
    assert (
        value(
            got, "router_requests_total", route="demo", endpoint="sim-b", status="200", key="other"
        )
        == 1
    )
    assert (
        value(got, "router_requests_total", route="demo", endpoint="none", status="502", key="none")
        == 1
    )
    assert (
        value(got, "router_requests_total", route="none", endpoint="none", status="404", key="none")
        == 1
    )
    assert not any("no-such-model" in str(labels) for _, labels in got)

    assert value(got, "router_attempts_total", route="demo", endpoint="sim-a", reason="ok") == 3
    assert (
        value(got, "router_attempts_total", route="demo", endpoint="sim-b", reason="http_5xx") == 2
    )
    assert (
        value(got, "router_attempts_total", route="demo", endpoint="sim-a", reason="hedge_lost")
        == 1
    )
    assert value(got, "router_retries_total", route="demo") == 2  # failover + the failed one
    assert value(got, "router_failovers_total", route="demo") == 1
    assert value(got, "router_hedges_total", route="demo") == 1

    lat = {"route": "demo", "endpoint": "sim-a"}
    assert value(got, "router_request_latency_seconds_count", **lat) == 3
    assert value(got, "router_request_latency_seconds_sum", **lat) == pytest.approx(4.5)
    assert value(got, "router_request_latency_seconds_bucket", **lat, le="1.0") == 0
    assert value(got, "router_request_latency_seconds_bucket", **lat, le="2.0") == 3
    assert value(got, "router_ttft_seconds_bucket", **lat, le="0.5") == 3
    assert value(got, "router_ttft_seconds_bucket", **lat, le="0.3") == 0
    # 50 tokens in the 1.0 s after the first token: 50 tokens/s.
    assert value(got, "router_tokens_per_second_bucket", **lat, le="30.0") == 0
    assert value(got, "router_tokens_per_second_bucket", **lat, le="50.0") == 3
    for kind, n in (("prompt", 100), ("completion", 50), ("reasoning", 20), ("cached", 40)):
        assert value(got, "router_tokens_total", **lat, kind=kind) == 3 * n
    assert value(got, "router_cost_usd_total", **lat) == pytest.approx(0.75)


def test_state_gauges_follow_the_current_runtime() -> None:
    runtime = make_runtime()
    current: list[Runtime | None] = [None]
    metrics = Metrics(lambda: current[0])
    assert value(samples(metrics), "router_endpoint_in_flight", route="demo", endpoint="sim-a") == 0

    current[0] = runtime
    ep = runtime.routes["demo"].by_id
    ep["sim-a"].stats.start()
    ep["sim-a"].stats.start()
    ep["sim-b"].breaker.trip(runtime.clock(), "auth", 30.0)
    got = samples(metrics)
    assert value(got, "router_endpoint_in_flight", route="demo", endpoint="sim-a") == 2
    assert value(got, "router_endpoint_in_flight", route="demo", endpoint="sim-b") == 0

    def state(endpoint: str) -> str:
        ones = [
            s
            for s in ("healthy", "cooldown", "half_open", "disabled")
            if value(got, "router_endpoint_state", route="demo", endpoint=endpoint, state=s) == 1
        ]
        assert len(ones) == 1
        return ones[0]

    assert state("sim-a") == "healthy"
    assert state("sim-b") == "cooldown"
    assert state("keyed") == "disabled"  # its key variable is unset

    # A reload swaps the runtime: the gauges follow, nothing stale is left behind.
    current[0], _ = build_runtime(
        loads(CONFIG.replace("      - {provider: keyed, model: m}\n", ""), env={}), runtime
    )
    got = samples(metrics)
    assert (
        "router_endpoint_in_flight",
        frozenset({"route": "demo", "endpoint": "keyed"}.items()),
    ) not in got


def test_config_reloads_and_request_log_gauges(tmp_path: Path) -> None:
    log = RequestLog(f"sqlite+aiosqlite:///{tmp_path / 'log.db'}", queue_size=10)
    metrics = Metrics(lambda: None, log)
    metrics.config_reload(True)
    metrics.config_reload(True)
    metrics.config_reload(False)
    for _ in range(13):
        log.record(served())
    got = samples(metrics)
    assert value(got, "router_config_reloads_total", result="ok") == 2
    assert value(got, "router_config_reloads_total", result="error") == 1
    assert value(got, "router_request_log_queue_depth") == 10
    assert value(got, "router_request_log_dropped_total") == 3
    assert value(got, "router_request_log_written_total") == 0

    async def write() -> None:
        await log.start()
        await log.stop()

    asyncio.run(asyncio.wait_for(write(), 30))
    got = samples(metrics)
    assert value(got, "router_request_log_written_total") == 10
    assert value(got, "router_request_log_queue_depth") == 0


def test_each_metrics_has_its_own_registry() -> None:
    a, b = Metrics(lambda: None), Metrics(lambda: None)
    a.record(served())
    assert (
        value(
            samples(b),
            "router_requests_total",
            route="demo",
            endpoint="sim-a",
            status="200",
            key="other",
        )
        == 0
    )
    assert (
        value(
            samples(a),
            "router_requests_total",
            route="demo",
            endpoint="sim-a",
            status="200",
            key="other",
        )
        == 1
    )


def test_client_key_label_scores_loads_breaker_transitions_and_build_info() -> None:
    config = loads(
        CONFIG.replace("providers:", "server: {api_keys_env: ROUTER_API_KEYS}\nproviders:"),
        env={"ROUTER_API_KEYS": "team-a:sk-aaaaaaaa"},
    )
    runtime, _ = build_runtime(config, clock=FakeClock())
    metrics = Metrics(lambda: runtime)
    known = served()
    known.key_name = "team-a"
    metrics.record(known)
    metrics.record(served())  # a key name that is not configured (any more)
    broken = served()
    broken.output_error = "empty"
    metrics.record(broken)
    sim_b = runtime.routes["demo"].by_id["sim-b"]
    sim_b.breaker.trip(runtime.clock(), "auth", 30.0)
    got = samples(metrics)
    labels = {"route": "demo", "endpoint": "sim-a", "status": "200"}
    assert value(got, "router_requests_total", **labels, key="team-a") == 1
    assert value(got, "router_requests_total", **labels, key="other") == 2
    assert not any("sk-aaaaaaaa" in str(labels) for _, labels in got)
    assert (
        value(got, "router_output_errors_total", route="demo", endpoint="sim-a", reason="empty")
        == 1
    )
    assert (
        value(
            got, "router_breaker_transitions_total", route="demo", endpoint="sim-b", to="cooldown"
        )
        == 1
    )
    # Priority ranks sim-a first: the higher score; each usable endpoint's loads are there.
    score_a = value(got, "router_endpoint_score", route="demo", endpoint="sim-a")
    score_b = value(got, "router_endpoint_score", route="demo", endpoint="sim-b")
    assert score_a > score_b
    for load in ("latency_s", "ttft_s", "tokens_per_s", "error_rate", "output_error_rate"):
        assert (
            "router_endpoint_load",
            frozenset({("route", "demo"), ("endpoint", "sim-b"), ("load", load)}),
        ) in got
    assert any(name == "router_build_info" for name, _ in got)
    assert any(name.startswith("process_") for name, _ in got)
