"""``router simulate``, the policy lab, as a user runs it: ``python -m router simulate``.

A JSONL trace replayed through simulated hosts; a request log recorded by the real
router (SQLite, and PostgreSQL when ``ROUTER_TEST_POSTGRES_URL`` is set) fitted and
replayed; two configs compared; the HTML report checked for anything it would fetch.
Speed is not asserted here (``benchmarks/lab_speed.py`` measures it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from providers.simulated import SimParams, Simulator
from router.cli import main as cli
from router.lab.fit import Fleet
from router.lab.fleet import Simulated
from router.lab.loop import LoopStalled, VirtualLoop
from router.lab.trace import OK, Observation, Trace, TraceRequest
from router.lab.trace import read as read_trace
from tests.support import ROOT, RouterProcess

FLEET = """
storage: {url: null}
defaults:
  retry: {attempts: 3, backoff_s: 0.01, backoff_max_s: 0.1}
providers:
  fast:  {kind: simulated, ttft_ms: 60, tokens_per_s: 200, jitter: 0.2}
  slow:  {kind: simulated, ttft_ms: 400, tokens_per_s: 40}
  flaky: {kind: simulated, ttft_ms: 80, tokens_per_s: 150, error_rate: 0.3}
policies:
  quick: {strategy: lowest_ttft}
  hedged: {strategy: lowest_ttft, hedge: {after_ms: 100}}
routes:
  chat:
    policy: POLICY
    endpoints:
      - {provider: slow, model: m, price: {input: 1.0, output: 2.0}}
      - {provider: fast, model: m, price: {input: 3.0, output: 15.0}}
      - {provider: flaky, model: m, price: {input: 1.0, output: 4.0}}
"""


def simulate(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """The command in a process of its own, as a user runs it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROUTER_")}
    return subprocess.run(
        [sys.executable, "-m", "router", "simulate", *args],
        capture_output=True,
        text=True,
        env={**env, "PYTHONPATH": str(ROOT)},
        cwd=cwd,
        timeout=120,
    )


def lab(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """The command in this process (the same ``main``): (exit code, stdout, stderr)."""
    code = cli(["simulate", *args])
    out, err = capsys.readouterr()
    return code, out, err


def write_trace(path: Path, n: int = 400, seed: int = 3) -> Path:
    rng = random.Random(seed)
    t = 1_750_000_000.0
    lines = []
    for i in range(n):
        t += rng.expovariate(20.0)
        lines.append(
            json.dumps(
                {
                    "ts": t,
                    "route": "chat",
                    "api": "chat",
                    "stream": i % 4 != 0,
                    "prompt_tokens": 1000 + 50 * (i % 7),
                    "completion_tokens": 40,
                    "session": f"s{i % 25}",
                }
            )
        )
    path.write_text("\n".join(lines) + "\n")
    return path


def config(tmp_path: Path, policy: str, name: str = "routes.yaml") -> Path:
    path = tmp_path / name
    path.write_text(FLEET.replace("POLICY", policy))
    return path


def test_a_jsonl_trace_replays_deterministically_for_a_seed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = write_trace(tmp_path / "trace.jsonl")
    cfg = config(tmp_path, "quick")
    args = ["--config", str(cfg), "--trace", str(trace), "--json", "--seed", "7"]
    first, second = simulate(*args), simulate(*args)
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout  # the same JSON, byte for byte
    doc = json.loads(first.stdout)
    (run,) = doc["runs"]
    assert doc["lab"]["requests"] == 400
    assert run["requests"] == 400
    # lowest_ttft on these hosts: almost everything to `fast` (60 ms), `flaky`'s 500s retried
    assert run["success_rate"] == 1.0
    assert run["share"]["chat/fast"] > 0.8
    assert 40 < run["ttft_ms"]["p50"] < 90
    assert run["fleet"]["chat/fast"]["source"] == "simulated"
    assert abs(sum(run["share"].values()) - 1.0) < 1e-3
    over_time = run["share_over_time"]
    assert sum(over_time["served"]) == 400
    # 1,000 to 1,300 prompt tokens at $3 and 40 completion tokens at $15 per million, mostly
    assert 0.8 * 400 * 3.6e-3 < run["cost_usd"] < 400 * 4.5e-3
    assert "requests per CPU second" in first.stderr  # the speed, on stderr only

    # Two processes (each with its own string hashing) gave the same; so does this one.
    assert lab(capsys, *args)[1] == first.stdout
    code, other, _ = lab(capsys, *args[:-1], "8")
    assert code == 0
    assert other != first.stdout  # jitter and errors draw from the seed


def test_compare_puts_two_configs_side_by_side_on_the_same_trace(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = write_trace(tmp_path / "trace.jsonl", n=300)
    a = config(tmp_path, "priority", "a.yaml")  # `slow` is listed first
    b = config(tmp_path, "quick", "b.yaml")
    report = tmp_path / "report.html"
    code, out, err = lab(
        capsys, "--config", str(a), "--compare", str(b), "--trace", str(trace), "--json",
        "--report", str(report), "--rate", "2x",
    )  # fmt: skip
    assert code == 0, err
    doc = json.loads(out)
    run_a, run_b = doc["runs"]
    assert run_a["share"]["chat/slow"] == 1.0
    assert run_b["share"]["chat/fast"] > 0.8
    ttft = doc["diff"]["ttft_ms.p50"]
    assert ttft["a"] > 350 and ttft["b"] < 100 and ttft["delta"] < -250
    assert ttft["better"] == "b"
    assert doc["diff"]["share"]["chat/slow"]["delta"] == pytest.approx(
        run_b["share"]["chat/slow"] - 1.0
    )
    assert doc["lab"]["rate"] == 2.0
    assert doc["lab"]["span_s"] < 300 / 20.0 / 2 * 1.5  # arrivals twice as fast

    page = report.read_text()
    assert page.startswith("<!doctype html>")
    # self-contained: nothing to fetch, and the model page's chart code is inside
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.I)
    assert "<link" not in page.lower()
    assert "Charts.line" in page and "root.Charts" in page
    assert "a.yaml" in page and "b.yaml" in page

    code, text, err = lab(capsys, "--config", str(a), "--compare", str(b), "--trace", str(trace))
    assert code == 0, err
    assert "B - A" in text and "share chat/fast" in text


def test_bad_inputs_are_errors_with_their_place(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = config(tmp_path, "quick")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"ts": 1, "route": "chat", "prompt_tokens": 5, "completion_tokens": 1}\n{"ts": 2}\n'
    )
    code, _, err = lab(capsys, "--config", str(cfg), "--trace", str(bad))
    assert code == 1
    assert "bad.jsonl:2: 'route' must be a non-empty string" in err
    broken = tmp_path / "broken.yaml"
    broken.write_text("routes: {r: {endpoints: [{provider: nowhere, model: m}]}}\n")
    trace = str(write_trace(tmp_path / "t.jsonl"))
    code, _, err = lab(capsys, "--config", str(broken), "--trace", trace)
    assert code == 1
    assert "unknown provider 'nowhere'" in err
    code, _, err = lab(capsys, "--config", str(cfg), "--trace", f"sqlite:///{tmp_path}/none.db")
    assert code == 1
    assert "cannot read the request log" in err
    with pytest.raises(SystemExit):
        cli(["simulate", "--config", str(cfg), "--trace", trace, "--rate", "fast"])
    assert "not a rate: 'fast'" in capsys.readouterr().err


def test_a_trace_at_one_instant_replays(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Every request at one time (a burst, a hand-written trace): no span to place drift
    in or to repeat, so copies come a second apart. It stalled the loop before."""
    line = {"ts": 5, "route": "chat", "api": "chat", "stream": True,
            "prompt_tokens": 100, "completion_tokens": 10}  # fmt: skip
    burst = tmp_path / "burst.jsonl"
    burst.write_text((json.dumps(line) + "\n") * 20)
    cfg = str(config(tmp_path, "quick"))
    code, out, err = lab(capsys, "--config", cfg, "--trace", str(burst), "--json", "--requests=50")
    assert code == 0, err
    doc = json.loads(out)
    (run,) = doc["runs"]
    assert run["requests"] == 50 and run["success_rate"] == 1.0
    assert doc["lab"]["span_s"] == 2.0  # the third copy's ten, two seconds in


def test_a_request_that_raises_is_reported_not_a_stall(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A defect inside one replayed request (here a provider that raises what no host
    does) ends the replay with that error, not with the loop's stall it leaves."""
    from router.lab import engine
    from router.lab.upstream import LabProvider

    def broken(self: LabProvider, request: Any) -> Any:
        raise ValueError("a defect")

    monkeypatch.setattr(LabProvider, "send", broken)
    trace = read_trace(str(write_trace(tmp_path / "t.jsonl", n=5)))
    with pytest.raises(RuntimeError, match=r"the replay failed: .*a defect"):
        engine.simulate(str(config(tmp_path, "quick")), trace)


CACHING = """
providers:
  a: {kind: simulated, ttft_ms: 300, prompt_cache: {ttl_s: 300, min_tokens: 1024}}
  b: {kind: simulated, ttft_ms: 300, prompt_cache: {ttl_s: 300, min_tokens: 1024}}
  c: {kind: simulated, ttft_ms: 300, prompt_cache: {ttl_s: 300, min_tokens: 1024}}
policies:
  sticky: {strategy: round_robin, affinity: {ttl_s: 600}}
routes:
  chat:
    policy: POLICY
    endpoints:
      - {provider: a, model: m, price: {input: 3.0, output: 15.0, cache_read: 0.3}}
      - {provider: b, model: m, price: {input: 3.0, output: 15.0, cache_read: 0.3}}
      - {provider: c, model: m, price: {input: 3.0, output: 15.0, cache_read: 0.3}}
"""


def test_affinity_keeps_conversations_where_their_cache_is(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = random.Random(5)
    turns = []
    for c in range(20):  # conversations of 8 turns, each resending a growing prefix
        start = rng.uniform(0, 60)
        for k in range(8):
            turns.append((start + 10 * k + rng.uniform(0, 5), c, k))
    trace = tmp_path / "conversations.jsonl"
    trace.write_text(
        "".join(
            json.dumps(
                {"ts": 1_750_000_000 + ts, "route": "chat", "stream": True, "session": f"c{c}",
                 "prompt_tokens": 4000 + 500 * k, "completion_tokens": 50}
            ) + "\n"
            for ts, c, k in sorted(turns)
        )
    )  # fmt: skip
    rr = tmp_path / "rr.yaml"
    rr.write_text(CACHING.replace("POLICY", "round_robin"))
    sticky = tmp_path / "sticky.yaml"
    sticky.write_text(CACHING.replace("POLICY", "sticky"))
    code, out, err = lab(
        capsys, "--config", str(rr), "--compare", str(sticky), "--trace", str(trace), "--json"
    )
    assert code == 0, err
    plain, kept = json.loads(out)["runs"]
    # Rotation sends each turn to the next host: at best an older prefix is cached there.
    # Affinity keeps the conversation on the host that has all but the newest turn.
    assert kept["cache_hit_rate"] > plain["cache_hit_rate"] + 0.1
    assert kept["cost_usd"] < 0.85 * plain["cost_usd"]
    assert kept["ttft_ms"]["p50"] < plain["ttft_ms"]["p50"]


SERVED = """
storage: {{url: "{url}", flush_interval_s: 0.05}}
providers:
  fast: {{kind: simulated, ttft_ms: 25, tokens_per_s: 2000, tokens: 8}}
  slow: {{kind: simulated, ttft_ms: 120, tokens_per_s: 500, tokens: 8}}
routes:
  chat:
    policy: round_robin
    endpoints:
      - {{provider: fast, model: m}}
      - {{provider: slow, model: m}}
"""
# The same endpoints (route and ids) as hosts the lab knows only from the log.
FITTED = """
providers:
  fast: {kind: openai, base_url: "http://127.0.0.1:9/v1", api_key_env: LAB_TEST_UNSET_KEY}
  slow: {kind: openai, base_url: "http://127.0.0.1:9/v1"}
  never: {kind: openai, base_url: "http://127.0.0.1:9/v1"}
routes:
  chat:
    policy: POLICY
    endpoints:
      - {provider: fast, model: m}
      - {provider: slow, model: m}
      - {provider: never, model: m}
"""


async def _drive(base_url: str, n: int) -> None:
    body = {"model": "chat", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        sem = asyncio.Semaphore(6)

        async def one() -> None:
            async with sem, client.stream("POST", "/chat/completions", json=body) as resp:
                assert resp.status_code == 200
                await resp.aread()

        await asyncio.gather(*(one() for _ in range(n)))


def _record(tmp_path: Path, url: str, n: int) -> None:
    """The real router serves ``n`` streams with its request log at ``url``, then stops
    (SIGTERM flushes the log)."""
    router = RouterProcess(SERVED.format(url=url), tmp_path).start()
    try:
        asyncio.run(_drive(router.base_url, n))
    finally:
        assert router.stop() == 0


def test_a_request_log_trace_fits_the_fleet_it_recorded(
    tmp_path: Path, url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _record(tmp_path, url, 80)
    cfg = tmp_path / "lab.yaml"
    cfg.write_text(FITTED.replace("POLICY", "round_robin"))
    code, out, err = lab(capsys, "--config", str(cfg), "--trace", url, "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["lab"]["trace_requests"] == 80
    (run,) = doc["runs"]
    fleet = run["fleet"]
    assert fleet["chat/fast"]["source"] == "fitted"  # its key variable unset: still replayed
    assert fleet["chat/slow"]["source"] == "fitted"
    assert fleet["chat/never"]["source"].startswith("prior")  # no data: the stated prior
    assert fleet["chat/fast"]["attempts"] == 40
    # The fit follows what was recorded: the hosts' 25 and 120 ms, plus whatever a loaded
    # machine added to both (a wall-clock run), so bounds wide above and the gap kept.
    fast, slow = fleet["chat/fast"]["ttft_p50_ms"], fleet["chat/slow"]["ttft_p50_ms"]
    assert 20 <= fast <= 90
    assert 110 <= slow <= 220
    assert slow - fast >= 70
    assert run["success_rate"] == 1.0
    assert run["share"]["chat/fast"] == pytest.approx(1 / 3, abs=0.02)  # now three in rotation

    cfg.write_text(FITTED.replace("POLICY", "lowest_ttft"))
    predicted = json.loads(lab(capsys, "--config", str(cfg), "--trace", url, "--json")[1])
    (best,) = predicted["runs"]
    assert best["share"]["chat/fast"] > 0.8
    assert best["ttft_ms"]["p50"] < (fast + slow) / 2  # mostly the fast host's


def test_the_lab_plays_a_simulated_host_on_the_simulators_own_law() -> None:
    params: dict[str, Any] = dict(
        ttft_ms=70, jitter=0.4, error_rate=0.2, tail_prob=0.1, tail_ms=900
    )
    sim = Simulator(SimParams(seed=5, **params))
    lab = Simulated(SimParams(seed=5, **params))
    for _ in range(300):
        plan = sim.plan("chat/completions", {"messages": [{"role": "user", "content": "x"}]})
        answer = lab.answer(0.0, True, 16, False)
        if plan.status == 200:
            assert answer.outcome == "ok"
            assert answer.first_s == pytest.approx(plan.ttft_s)
        else:
            assert (answer.outcome, answer.status) == ("http", plan.status)


def test_the_fit_replays_drift_where_it_happened() -> None:
    """A host that went slow halfway through the trace is slow in the second half only."""
    t0 = 1_750_000_000.0
    requests = [TraceRequest(t0 + i, "chat", "chat", True, 100, 20) for i in range(600)]
    attempts = [
        Observation(t0 + i, "chat", "fast", True, OK, 200, 0.05 if i < 300 else 0.5,
                    ttft_s=0.05 if i < 300 else 0.5, tokens_per_s=100.0)
        for i in range(600)
    ]  # fmt: skip
    fleet = Fleet(Trace("drift", requests, attempts), seed=1)
    fast = fleet.behaviour("chat", "fast")
    assert fast.describe()["source"] == "fitted"
    early = [fast.answer(t0 + 100, True, 20, False).first_s for _ in range(50)]
    late = [fast.answer(t0 + 500, True, 20, False).first_s for _ in range(50)]
    assert max(early) == pytest.approx(0.05) and min(late) == pytest.approx(0.5)
    never = fleet.behaviour("chat", "other")  # never tried: its route's pooled behaviour
    assert never.describe()["source"].startswith("prior")


def test_the_virtual_loop_runs_timers_in_virtual_time() -> None:
    loop = VirtualLoop.make(100.0)

    async def main() -> list[float]:
        seen = [loop.time()]
        await asyncio.sleep(30)  # no real waiting
        seen.append(loop.time())
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2):
                await asyncio.sleep(3600)
        seen.append(loop.time())
        slow = asyncio.ensure_future(asyncio.sleep(5))
        done, pending = await asyncio.wait({slow}, timeout=1)
        seen.append(loop.time())
        assert not done and pending == {slow}
        slow.cancel()
        return seen

    assert loop.run_until_complete(main()) == [100.0, 130.0, 132.0, 133.0]
    stuck = loop.create_future()
    with pytest.raises(LoopStalled):  # waits for what never comes: fails, never hangs
        loop.run_until_complete(stuck)
    loop.close()
