"""The model page's in-memory series: what a record adds, what a minute keeps, and bounds."""

from __future__ import annotations

import statistics

import pytest

from router.config import loads as load_config
from router.obs.minutes import MINUTES, SAMPLES, EndpointSeries, points, recent
from router.obs.series import SeriesBook
from router.page.data import _timeline
from router.requestlog.records import AttemptRecord, RequestRecord, Usage
from router.runtime import build_runtime
from router.state.clock import FakeClock

T0 = 1_800_000_000.0 - 1_800_000_000.0 % 60  # the start of a minute, in Unix seconds


def record(
    at: float,
    *attempts: AttemptRecord,
    latency_ms: float = 100.0,
    error: str | None = None,
    status: int = 200,
    **kw: object,
) -> RequestRecord:
    rec = RequestRecord(request_id=f"r{at}", operation="chat/completions", key_name=None)
    rec.started = at
    rec.latency_ms = latency_ms
    rec.route = "demo"
    rec.attempts = list(attempts)
    rec.error = error
    rec.status = status
    rec.usage = Usage(prompt_tokens=10, completion_tokens=50)
    for k, v in kw.items():
        setattr(rec, k, v)
    return rec


def ok(endpoint: str = "a", duration: float = 90.0, ttft: float | None = 20.0) -> AttemptRecord:
    return AttemptRecord("demo", endpoint, 200, None, duration, ttft_ms=ttft)


def test_a_record_counts_its_attempts_on_their_endpoints() -> None:
    book = SeriesBook(seed=1)
    book.record(record(T0 + 1, ok("a")))
    book.record(record(T0 + 2, ok("a"), tool_calls_valid=False, output_error="empty"))
    # Failed over from b to a; a hedge that lost on b is no verdict on b.
    book.record(
        record(
            T0 + 3,
            AttemptRecord("demo", "b", 500, "http_5xx", 30.0),
            AttemptRecord("demo", "b", None, "hedge_lost", 50.0),
            ok("a"),
        )
    )
    # A stream that broke after its first byte: an error and an output error of a.
    book.record(record(T0 + 4, ok("a"), error="stream_broken", status=502))
    # A client that left mid-stream, and a request the client got wrong: no verdict.
    book.record(record(T0 + 5, ok("a"), error="client_closed", status=499))
    book.record(record(T0 + 6, AttemptRecord("demo", "b", 400, "http_400", 5.0)))
    a = points(book.routes["demo"]["a"], int(T0) // 60, int(T0) // 60, 1)
    b = points(book.routes["demo"]["b"], int(T0) // 60, int(T0) // 60, 1)
    assert (a["requests"], a["errors"], a["served"]) == ([4], [1], [3])
    assert a["tool_call_error_rate"] == [1.0]
    assert a["output_error_rate"] == [0.5]  # of 4 judged answers: one empty, one cut short
    assert (b["requests"], b["errors"], b["error_rate"]) == ([1], [1], [1.0])
    assert a["tokens_per_s"] == [pytest.approx(150 * 1000 / (3 * 70.0), rel=1e-3)]
    assert a["latency_ms_p50"] == [90.0] and a["ttft_ms_p50"] == [20.0]
    assert b["in_flight"][0] == pytest.approx((30 + 50 + 5) / 60_000, abs=1e-3)
    reasons = [(f["endpoint"], f["reason"]) for f in book.failures]
    assert reasons == [("b", "http_5xx"), ("a", "stream_broken")]


def test_a_day_of_minutes_is_kept_and_no_more() -> None:
    s = EndpointSeries()
    book = SeriesBook()
    book.routes["demo"] = {"a": s}
    first = int(T0) // 60
    for i in range(MINUTES + 30):  # a day and half an hour, one request a minute
        book.record(record(T0 + i * 60 + 1, ok("a")))
    last = first + MINUTES + 29
    assert s.ring is not None and len(s.ring) == MINUTES
    kept = s.minutes(first, last)
    assert [c[0] for c in kept] == list(range(last - MINUTES + 1, last + 1))
    day = points(s, last - MINUTES + 1, last, 10)
    assert len(day["t"]) == MINUTES // 10 and sum(day["requests"]) == MINUTES
    assert set(day["requests"]) == {10}


def test_percentiles_come_from_a_bounded_uniform_sample() -> None:
    book = SeriesBook(seed=7)
    latencies = [float(i) for i in range(1, 5001)]
    for i, d in enumerate(latencies):
        book.record(record(T0 + i * 0.01, ok("a", duration=d, ttft=d / 10), latency_ms=d))
    s = book.routes["demo"]["a"]
    assert len(s.open.latency) == SAMPLES and len(s.open.ttft) == SAMPLES
    got = points(s, int(T0) // 60, int(T0) // 60, 1)
    true_p50 = statistics.median(latencies)
    assert got["latency_ms_p50"][0] == pytest.approx(true_p50, rel=0.2)
    assert got["e2e_ms_p95"][0] == pytest.approx(4750, rel=0.1)
    assert got["served"] == [5000]


def test_recent_counts_about_the_last_minute() -> None:
    book = SeriesBook()
    for i in range(60):  # one a second through one minute
        book.record(record(T0 + i, ok("a"), latency_ms=0.0))
    s = book.routes["demo"]["a"]
    assert recent(s, T0 + 59.5) == 60
    # 30 s into the next minute: half of the previous minute is still within 60 s.
    assert recent(s, T0 + 90) == pytest.approx(30)
    assert recent(s, T0 + 400, 300) == 0


def test_the_state_timeline_shows_cooldowns_and_their_end() -> None:
    config = load_config(
        "providers:\n  p: {kind: simulated}\n"
        "routes:\n  r:\n    endpoints: [{provider: p, model: m}]\n",
        env={},
    )
    clock = FakeClock(100.0)
    runtime, _ = build_runtime(config, clock=clock, provider_factory=lambda spec: object())  # type: ignore[arg-type,return-value]
    ep = runtime.routes["r"].endpoints[0]
    ep.breaker.trip(110.0, "auth", 20.0)  # cooldown 110-130, then due for a probe
    ep.breaker.acquire(140.0)  # the probe: half-open
    ep.breaker.success(141.0)  # closed again
    clock.now = 150.0
    offset = 1000.0  # clock time + offset = Unix seconds
    spans = _timeline(ep, clock(), offset, 1100.0)
    assert [(s["from"], s["to"], s["state"]) for s in spans] == [
        (1100.0, 1110.0, "healthy"),
        (1110.0, 1130.0, "cooldown"),
        (1130.0, 1141.0, "half_open"),
        (1141.0, 1150.0, "healthy"),
    ]
    assert spans[1]["reason"] == "auth"
    assert ep.breaker.changes == {"healthy": 1, "cooldown": 1, "half_open": 1, "rate_limited": 0}
    # A 429 sets it aside for its Retry-After (extended once): a cooldown on the timeline,
    # then back to what the breaker says.
    ep.breaker.rate_limited(143.0, 2.0)
    ep.breaker.rate_limited(144.0, 2.0)
    spans = _timeline(ep, clock(), offset, 1100.0)
    assert [(s["from"], s["to"], s["state"], s["reason"]) for s in spans[3:]] == [
        (1141.0, 1143.0, "healthy", None),
        (1143.0, 1146.0, "cooldown", "rate_limited"),
        (1146.0, 1150.0, "healthy", None),
    ]
    assert ep.breaker.changes["rate_limited"] == 1


def test_a_stream_counts_its_whole_span_not_its_attempt_up_to_the_first_token() -> None:
    """An attempt record ends when it opens (a stream's first token); the record's
    ``served_ms`` is the whole answer: latency and tokens/s come from that."""
    book = SeriesBook()
    stream = ok("a", duration=20.0, ttft=20.0)
    book.record(record(T0 + 1, stream, latency_ms=510.0, served_ms=500.0))
    book.record(record(T0 + 2, stream, latency_ms=510.0, served_ms=500.0, error="x", status=502))
    got = points(book.routes["demo"]["a"], int(T0) // 60, int(T0) // 60, 1)
    assert got["latency_ms_p50"] == [500.0] and got["ttft_ms_p50"] == [20.0]
    assert got["tokens_per_s"] == [pytest.approx(50 * 1000 / 480.0, abs=0.1)]
    assert got["in_flight"] == [pytest.approx((500.0 + 20.0) / 60_000, abs=1e-3)]
