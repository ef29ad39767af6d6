"""Failover under a dead upstream: is an outage invisible to clients?

Three sim-upstreams behind the router (the shipped ``score``/p2c policy), 1,000
non-streaming requests at concurrency 16. One upstream is killed when 30% of the
requests have been sent and restarted (same port) at 70%. Reported: client-visible
errors, p99 latency during the outage, how long after the kill the dead endpoint stopped
receiving attempts (from the router's /health error counter, polled every 20 ms), and
how long after the restart it served again (first answer it served, from the
``x-router-endpoint`` header), against the target of ``cooldown_s`` + 2 s.

    python benchmarks/failover.py [--requests 1000] [--cooldown 5]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import aiohttp
from scenario import Router, Sim, drive, dump, pct, stream_once, table

SIM_ARGS = ("--ttft-ms", "20", "--tokens-per-s", "400", "--tokens", "16", "--jitter", "0.2")


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--cooldown", type=float, default=5.0)
    ap.add_argument("--json")
    args = ap.parse_args()

    sims = [Sim(f"up{i}", *SIM_ARGS, "--seed", str(i)).start() for i in range(3)]
    providers = "\n".join(
        f"  up{i}: {{kind: openai, base_url: '{s.url}/v1'}}" for i, s in enumerate(sims)
    )
    config = (
        "storage: {url: null}\n"
        "defaults:\n"
        "  timeouts: {connect_s: 1, ttft_s: 5, idle_s: 5, total_s: 30}\n"
        f"  breaker: {{consecutive_failures: 5, error_rate: 0.5, min_requests: 20, window_s: 10, cooldown_s: {args.cooldown}}}\n"
        f"providers:\n{providers}\n"
        "policies:\n  fastest: {strategy: score, weights: {ttft: 1.0, error_rate: 4.0, throughput: 0.3}, pick: p2c}\n"
        "routes:\n  m:\n    policy: fastest\n    endpoints:\n"
        + "\n".join(f"      - {{provider: up{i}, model: m}}" for i in range(3))
        + "\n"
    )
    router = Router(config).start()
    victim = sims[0]
    events: dict[str, float] = {}
    errors_seen: list[tuple[float, int]] = []
    transitions: list[tuple[float, Any]] = []
    stop_polling = asyncio.Event()

    async def poll_health(session: aiohttp.ClientSession) -> None:
        while not stop_polling.is_set():
            async with session.get(f"{router.url}/health") as r:
                body = await r.json()
            ep = next(e for e in body["routes"]["m"]["endpoints"] if e["id"] == "up0")
            errors_seen.append((time.perf_counter(), ep["errors"]))
            state = (ep["state"], ep["reason"])
            if not transitions or transitions[-1][1] != state:
                transitions.append((time.perf_counter(), state))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop_polling.wait(), 0.02)

    async def progress(i: int, r: Any) -> None:
        if i == int(args.requests * 0.3) and "kill" not in events:
            victim.stop()
            events["kill"] = time.perf_counter()
        if i == int(args.requests * 0.7) and "restart" not in events:
            victim.start()
            events["restart"] = time.perf_counter()

    try:
        async with aiohttp.ClientSession() as session:
            poller = asyncio.create_task(poll_health(session))
            run = await drive(
                router.url,
                "m",
                n=args.requests,
                concurrency=args.concurrency,
                stream=False,
                on_progress=progress,
            )
            # Keep a trickle going until the restarted endpoint serves again (bounded).
            deadline = time.perf_counter() + args.cooldown * 8 + 10
            tail = []
            while time.perf_counter() < deadline:
                r = await stream_once(session, router.url, "m", stream=False)
                tail.append(r)
                if r.endpoint == "up0" and r.started > events["restart"]:
                    break
                await asyncio.sleep(0.02)
            stop_polling.set()
            await poller
    finally:
        router.stop()
        for s in sims:
            s.stop()

    results = run.results + tail
    kill, restart = events["kill"], events["restart"]
    client_errors = sum(not r.ok for r in results)
    outage = [r.latency * 1000 for r in results if kill <= r.started < restart and r.ok]
    before = [r.latency * 1000 for r in results if r.started < kill and r.ok]
    # Last moment the dead endpoint's error count grew = the last attempt it received.
    last_err_change = kill
    for (_, e0), (t1, e1) in itertools.pairwise(errors_seen):
        if e1 > e0 and kill <= t1 < restart:
            last_err_change = t1
    back = min(
        (r.started + r.latency for r in results if r.endpoint == "up0" and r.started > restart),
        default=None,
    )
    rows = [
        ["metric", "value", "target"],
        ["requests", str(len(results)), ""],
        ["client-visible errors", str(client_errors), "0"],
        ["p99 latency before the kill (ms)", f"{pct(before, 0.99):.1f}", ""],
        ["p99 latency during the outage (ms)", f"{pct(outage, 0.99):.1f}", ""],
        ["dead endpoint stopped receiving after (s)", f"{last_err_change - kill:.3f}", "< 1"],
        [
            "serving again after the restart (s)",
            "never" if back is None else f"{back - restart:.2f}",
            f"< cooldown_s + 2 = {args.cooldown + 2:g}",
        ],
        ["outage length (s)", f"{restart - kill:.2f}", ""],
    ]
    print(
        f"\nFailover: {args.requests} non-streamed requests, concurrency {args.concurrency}, "
        f"one of three upstreams killed at 30% and restarted at 70%, cooldown_s {args.cooldown:g}"
    )
    print(table(rows))
    print(
        "breaker of the killed endpoint (s from the kill):",
        ", ".join(f"{t - kill:+.2f} {st[0]}" for t, st in transitions),
    )
    dump(args.json, {"rows": rows})


if __name__ == "__main__":
    asyncio.run(main())
