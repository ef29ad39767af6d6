"""`make soak`: 30 minutes of steady mixed load through one router worker.

Why it exists: a leak per request, per error, per reload or per log row shows only over
time, and a request log that loses rows shows only when its rows are counted. So this
keeps one router worker (pinned to core 0 where ``taskset`` exists) under a steady,
moderate load for ``--minutes`` (30 by default) and checks both:

- the mix, at ``--rate`` requests per second over ``--conns`` connections: streams and
  non-streamed answers from a fast upstream (``zero_upstream.py``, tokens paced), both
  through a flaky upstream (``router sim-upstream --error-rate``) that fails over to the
  fast one, a one-endpoint route on the flaky upstream (502s), legacy completions,
  Anthropic's Messages (translated to the chat hosts, and passed to hosts speaking it),
  OpenAI's Responses (from the flaky simulator), and requests the router refuses
  (unknown model: 404, broken JSON: 400);
- a reload every ``--reload-s``: the routes file rewritten (a weight flips) and
  ``POST /admin/reload`` in turn;
- the router's RSS sampled every ``--sample-s``; reported at minute 5 and at the end
  (the mean of the samples within 30 s of each), with the growth between them;
- the request log on SQLite: after the load stops and the router has exited (SIGTERM
  flushes it), its rows are counted and compared with the answers the client received
  (each of those is one row); lost rows = answers without a row.

Targets (issue 16): RSS growth under 5% between minute 5 and minute 30, 0 lost rows.

    python benchmarks/soak.py                       # = soak_mixed, 30 minutes
    python benchmarks/soak_mixed.py --minutes 3     # a quick look
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections import Counter
from typing import Any

import aiohttp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import free_port, raise_nofile, rss_mb
from perf import PY, Bench, router_cmd

ADMIN = "soak-admin-key"
MESSAGES = [{"role": "user", "content": "hi"}]
# (weight, path, body or raw bytes): the mix, by share of requests.
MIX: list[tuple[int, str, Any]] = [
    (30, "/v1/chat/completions", {"model": "steady", "stream": True, "max_tokens": 16}),
    (25, "/v1/chat/completions", {"model": "steady", "max_tokens": 16}),
    (10, "/v1/chat/completions", {"model": "flaky", "stream": True, "max_tokens": 16}),
    (10, "/v1/chat/completions", {"model": "flaky", "max_tokens": 16}),
    (5, "/v1/chat/completions", {"model": "lonely", "max_tokens": 16}),
    (10, "/v1/completions", {"model": "steady", "prompt": "hi", "max_tokens": 16}),
    # The newer client APIs: Messages translated to the chat hosts and passed to hosts
    # speaking it, Responses from the simulator (errors included).
    (5, "/v1/messages", {"model": "steady", "stream": True, "max_tokens": 16}),
    (3, "/v1/messages", {"model": "native", "max_tokens": 16}),
    (3, "/v1/messages", {"model": "native", "stream": True, "max_tokens": 16}),
    (3, "/v1/responses", {"model": "lonely", "stream": True, "input": "hi"}),
    (2, "/v1/responses", {"model": "lonely", "input": "hi"}),
    (5, "/v1/chat/completions", {"model": "no-such-route"}),
    (5, "/v1/chat/completions", b'{"model": "steady", "messages": [{"role": '),
]


def routes_yaml(tmp: str, zero: str, flaky: str, flip: bool) -> str:
    db = os.path.join(tmp, "router.db")
    weight = 2 if flip else 1
    return f"""\
server: {{admin_key_env: ROUTER_ADMIN_KEY}}
storage: {{url: "sqlite+aiosqlite:///{db}", flush_interval_s: 0.5}}
defaults:
  timeouts: {{connect_s: 2, ttft_s: 10, idle_s: 10, total_s: 30}}
  retry: {{attempts: 2, backoff_s: 0.01, backoff_max_s: 0.1}}
providers:
  zero-a: {{kind: openai, base_url: "{zero}/v1"}}
  zero-b: {{kind: openai, base_url: "{zero}/v1"}}
  flaky: {{kind: openai, base_url: "{flaky}/v1"}}
  msg-a: {{kind: anthropic, base_url: "{zero}/v1"}}
  msg-b: {{kind: anthropic, base_url: "{zero}/v1"}}
policies:
  fastest: {{strategy: score, weights: {{ttft: 1.0, error_rate: 4.0}}, pick: p2c}}
routes:
  steady:
    policy: fastest
    endpoints:
      - {{provider: zero-a, model: m, weight: {weight}}}
      - {{provider: zero-b, model: m}}
  flaky:
    policy: fastest
    endpoints: [{{provider: flaky, model: m}}, {{provider: zero-a, model: m}}]
  lonely:
    retry: {{attempts: 1}}
    endpoints: [{{provider: flaky, model: m}}]
  native:
    policy: fastest
    endpoints: [{{provider: msg-a, model: m}}, {{provider: msg-b, model: m}}]
"""


class Load:
    """Workers sending the mix at a steady rate; what came back, counted."""

    def __init__(self, url: str, rate: float, conns: int, seed: int) -> None:
        self.url = url
        self.interval = conns / rate  # each worker's gap between request starts
        self.conns = conns
        self.rng = random.Random(seed)
        self.weights = [w for w, _, _ in MIX]
        self.answered = 0  # answers received whole: each must be one row in the log
        self.statuses: Counter[int] = Counter()
        self.by_path: Counter[str] = Counter()  # "path status": what each API got
        self.failures: Counter[str] = Counter()  # no answer (connection errors, timeouts)

    async def run(self, seconds: float) -> None:
        timeout = aiohttp.ClientTimeout(total=60)
        connector = aiohttp.TCPConnector(limit=self.conns)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            end = time.monotonic() + seconds
            await asyncio.gather(*(self._worker(session, end, i) for i in range(self.conns)))

    async def _worker(self, session: aiohttp.ClientSession, end: float, i: int) -> None:
        next_at = time.monotonic() + self.interval * i / self.conns  # spread the starts
        while next_at < end:
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            next_at += self.interval
            _, path, body = self.rng.choices(MIX, self.weights)[0]
            if isinstance(body, bytes):
                data = body
            else:
                data = json.dumps(body if "input" in body else {"messages": MESSAGES, **body})
            try:
                async with session.post(
                    self.url + path, data=data, headers={"Content-Type": "application/json"}
                ) as resp:
                    await resp.read()  # a stream to its end
                    self.statuses[resp.status] += 1
                    self.by_path[f"{path} {resp.status}"] += 1
                    self.answered += 1
            except (aiohttp.ClientError, TimeoutError) as exc:
                self.failures[type(exc).__name__] += 1


def _write(path: str, text: str) -> None:
    with open(path, "w") as fh:
        fh.write(text)


async def reloads(url: str, path: str, text: Any, every: float, end: float) -> int:
    """A reload every ``every`` seconds: the file rewritten, then /admin/reload, in turn."""
    n = 0
    async with aiohttp.ClientSession() as session:
        while time.monotonic() + every < end:
            await asyncio.sleep(every)
            n += 1
            if n % 2:  # the watcher sees it within a second
                await asyncio.to_thread(_write, path, text(flip=n % 4 == 1))
            else:
                auth = {"Authorization": f"Bearer {ADMIN}"}
                async with session.post(f"{url}/admin/reload", headers=auth) as resp:
                    await resp.read()
    return n


async def sample(pid: int, every: float, end: float, out: list[dict[str, Any]]) -> None:
    t0 = time.monotonic()
    while time.monotonic() < end:
        await asyncio.sleep(every)
        t = time.monotonic() - t0
        out.append({"t": round(t, 1), "rss_mb": rss_mb(pid)})
        if len(out) % 6 == 0:
            print(f"# t={t / 60:5.1f} min rss {out[-1]['rss_mb']:.1f} MB", file=sys.stderr)


def rss_near(samples: list[dict[str, Any]], t: float) -> float | None:
    near = [s["rss_mb"] for s in samples if abs(s["t"] - t) <= 30 and s["rss_mb"]]
    return statistics.mean(near) if near else None


def log_rows(db: str) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT count(*) FROM requests").fetchone()[0])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="steady mixed load; RSS growth and lost log rows")
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--rate", type=float, default=40.0, help="requests per second")
    ap.add_argument("--conns", type=int, default=16)
    ap.add_argument("--reload-s", type=float, default=60.0)
    ap.add_argument("--sample-s", type=float, default=5.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", help="also write the samples and the summary to this file")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs, db)")
    args = ap.parse_args(argv)
    raise_nofile()
    seconds = args.minutes * 60
    early = min(300.0, seconds / 6)  # minute 5, or a sixth of a shorter run
    tmp = tempfile.mkdtemp(prefix="router-soak-mixed-")
    bench = Bench(tmp)
    try:
        _, zero = bench.zero_upstream("1", "--interval-ms", "5")
        sim_port = free_port()
        flaky = f"http://127.0.0.1:{sim_port}"
        sim = [PY, "-m", "router", "sim-upstream", "--port", str(sim_port), "--error-rate",
               "0.3", "--ttft-ms", "5", "--tokens-per-s", "2000", "--seed", str(args.seed)]  # fmt: skip
        bench.start("flaky", sim, flaky, "/stats", core="1")
        path = os.path.join(tmp, "routes.yaml")

        def text(flip: bool = False) -> str:
            return routes_yaml(tmp, zero, flaky, flip)

        with open(path, "w") as fh:
            fh.write(text())
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        router = bench.start(
            "router", router_cmd(path, port), url, "/health/ready", "0", {"ROUTER_ADMIN_KEY": ADMIN}
        )
        print(
            f"# router ready; {args.rate:g} req/s over {args.conns} connections for "
            f"{args.minutes:g} min, a reload every {args.reload_s:g} s",
            file=sys.stderr,
        )
        load = Load(url, args.rate, args.conns, args.seed)
        samples: list[dict[str, Any]] = []

        async def everything() -> int:
            end = time.monotonic() + seconds
            *_, n = await asyncio.gather(
                load.run(seconds),
                sample(router.pid, args.sample_s, end, samples),
                reloads(url, path, text, args.reload_s, end),
            )
            return int(n)

        reloaded = asyncio.run(everything())
        router.stop()  # SIGTERM: drains, then flushes the request log
        rows = log_rows(os.path.join(tmp, "router.db"))
    finally:
        bench.finish(args.keep)
    at_early, at_end = rss_near(samples, early), rss_near(samples, seconds - 30)
    growth = (at_end / at_early - 1) * 100 if at_early and at_end else None
    summary = {
        "minutes": args.minutes,
        "rate": args.rate,
        "answered": load.answered,
        "statuses": dict(sorted(load.statuses.items())),
        "by_path": dict(sorted(load.by_path.items())),
        "no_answer": dict(load.failures),
        "reloads": reloaded,
        "log_rows": rows,
        "lost_rows": max(0, load.answered - rows),
        "rss_early_mb": at_early,
        "rss_end_mb": at_end,
        "rss_growth_pct": growth,
        "rss_peak_mb": max((s["rss_mb"] for s in samples if s["rss_mb"]), default=None),
    }
    print(f"\n## Soak: {args.minutes:g} min of mixed load through one router worker "
          f"({time.strftime('%Y-%m-%d %H:%M')})\n")  # fmt: skip
    print(f"- answers: {load.answered} ({summary['statuses']}); no answer: {dict(load.failures)}")
    print(f"- by path: {summary['by_path']}")
    print(f"- reloads: {reloaded}")
    print(f"- request log rows: {rows}; lost rows (answers without a row): "
          f"{summary['lost_rows']} (target 0)")  # fmt: skip
    print(f"- RSS at minute {early / 60:.1f}: {at_early or 0:.1f} MB, at minute "
          f"{args.minutes:g}: {at_end or 0:.1f} MB, growth {growth or 0:.2f}% (target < 5%); "
          f"peak {summary['rss_peak_mb'] or 0:.1f} MB")  # fmt: skip
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"summary": summary, "samples": samples}, fh, indent=1)
    ok = summary["lost_rows"] == 0 and growth is not None and growth < 5
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
