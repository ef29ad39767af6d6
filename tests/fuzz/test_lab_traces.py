"""Fuzzing the policy lab with the traces users write: ``router simulate`` on any valid
JSONL trace (timestamps equal, out of order, numbers or ISO times; every API; streams or
not; no tokens or many; sessions or none; a route the config lacks) finishes, answers
every request, prints figures that are numbers (no NaN, nothing infinite), writes its
report, and gives the same JSON again for the same seed. In process, on simulated hosts
that fail, time out, hedge, retry, fall back and cache, so every path of a replay is
reachable. ``FUZZ_EXAMPLES=200`` runs more examples than the default 25 (about 10 s).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from router.cli import main as cli

CONFIG = """
defaults:
  timeouts: {connect_s: 1, ttft_s: 1, idle_s: 1, total_s: 4}
  retry: {attempts: 3, backoff_s: 0.05, backoff_max_s: 0.5}
providers:
  fast: {kind: simulated, ttft_ms: 60, tokens_per_s: 120, jitter: 0.3,
         prompt_cache: {ttl_s: 300, min_tokens: 1024}}
  slow: {kind: simulated, ttft_ms: 400, tokens_per_s: 30, jitter: 0.3, tail_prob: 0.2,
         tail_ms: 3000}
  flaky: {kind: simulated, ttft_ms: 80, tokens_per_s: 100, error_rate: 0.5}
policies:
  sticky: {strategy: round_robin, affinity: {ttl_s: 600}}
  hedged: {strategy: lowest_ttft, hedge: {after: p90, max_extra: 1}}
  scored: {strategy: score, weights: {ttft: 1.0, error_rate: 4.0}, pick: p2c}
routes:
  a:
    policy: sticky
    fallbacks: [b]
    endpoints:
      - {provider: flaky, model: m, price: {input: 1.0, output: 2.0}}
      - {provider: fast, model: m, price: {input: 3.0, output: 15.0, cache_read: 0.3}}
  b:
    policy: hedged
    endpoints:
      - {provider: slow, model: m}
      - {provider: fast, model: m}
  c:
    policy: scored
    endpoints:
      - {provider: flaky, model: m}
      - {provider: slow, model: m}
"""

APIS = ["chat", "chat/completions", "completions", "embeddings", "responses", "messages"]
TIMES = st.one_of(
    st.integers(0, 3),  # few distinct times: bursts and ties
    st.floats(1.75e9, 1.75e9 + 600, allow_nan=False),
    st.sampled_from(["2026-12-04T10:00:00Z", "2026-12-04T10:00:00.5+00:00"]),
)


@st.composite
def lines(draw: st.DrawFn) -> dict[str, Any]:
    line: dict[str, Any] = {
        "ts": draw(TIMES),
        "route": draw(st.sampled_from(["a", "a", "b", "c", "gone"])),
        "api": draw(st.sampled_from(APIS)),
        "stream": draw(st.booleans()),
        "prompt_tokens": draw(st.sampled_from([0, 1, 900, 1500, 200_000])),
        "completion_tokens": draw(st.sampled_from([0, 1, 40, 4000])),
    }
    session = draw(st.sampled_from([None, None, "s1", "s2", ""]))
    if session is not None:
        line["session"] = session
    return line


def simulate(trace: Path, *args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli(["simulate", "--trace", str(trace), *args])
    return code, out.getvalue(), err.getvalue()


def finite(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(finite(v) for v in value.values())
    if isinstance(value, list):
        return all(finite(v) for v in value)
    return True


@settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "25")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    trace=st.lists(lines(), min_size=1, max_size=30),
    requests=st.one_of(st.none(), st.integers(1, 80)),
    rate=st.sampled_from(["1x", "0.5x", "8x"]),
    burst=st.booleans(),
)
def test_any_valid_trace_replays_to_numbers_deterministically(
    trace: list[dict[str, Any]], requests: int | None, rate: str, burst: bool
) -> None:
    if burst:  # every request at one instant
        trace = [{**line, "ts": trace[0]["ts"]} for line in trace]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        config = folder / "routes.yaml"
        config.write_text(CONFIG)
        source = folder / "trace.jsonl"
        source.write_text("".join(json.dumps(line) + "\n" for line in trace))
        args = ["--config", str(config), "--compare", str(config), "--rate", rate, "--json"]
        if requests is not None:
            args.append(f"--requests={requests}")
        code, out, err = simulate(source, *args, "--report", str(folder / "r.html"))
        assert code == 0, err
        doc = json.loads(out)
        expected = len(trace) if requests is None else requests
        assert doc["lab"]["requests"] == expected
        for run in doc["runs"]:
            assert run["requests"] == expected
            assert 0.0 <= run["success_rate"] <= 1.0
        assert finite(doc), out
        assert (folder / "r.html").read_text().startswith("<!doctype html>")
        assert simulate(source, *args)[1] == out  # the same seed, the same figures
