"""Does the router send each request where it is served best?

Three ``router sim-upstream`` processes (fast: TTFT 60 ms; slow: TTFT 450 ms; flaky:
TTFT 80 ms with 30% HTTP 500) behind one router that has one route per strategy, all
over the same three endpoints. A fixed, seeded workload of streaming requests runs
through each route, and once straight at the fast upstream (the oracle). Then, for
``lowest_ttft`` and ``score``/p2c, the fast upstream is switched to a 1,000 ms TTFT
mid-run and we time how long the route takes to move its traffic.

    python benchmarks/routing_quality.py [--requests 600] [--concurrency 8] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import aiohttp
from scenario import Router, Run, Sim, drive, dump, summarise, table

STRATEGIES = [
    ("priority", "{strategy: priority}"),
    ("round_robin", "{strategy: round_robin}"),
    ("weighted", "{strategy: weighted}"),
    ("least_busy", "{strategy: least_busy}"),
    ("lowest_latency", "{strategy: lowest_latency}"),
    ("lowest_ttft", "{strategy: lowest_ttft}"),
    ("highest_throughput", "{strategy: highest_throughput}"),
    ("cheapest", "{strategy: cheapest}"),
    (
        "score_best",
        "{strategy: score, weights: {ttft: 1.0, error_rate: 4.0, throughput: 0.3}, pick: best}",
    ),
    (
        "score_p2c",
        "{strategy: score, weights: {ttft: 1.0, error_rate: 4.0, throughput: 0.3}, pick: p2c}",
    ),
    (
        "score_weighted",
        "{strategy: score, weights: {ttft: 1.0, error_rate: 4.0, throughput: 0.3}, pick: weighted}",
    ),
]
ENDPOINTS = ["fast", "slow", "flaky"]


def config(sims: dict[str, Sim]) -> str:
    providers = "\n".join(
        f"  {name}: {{kind: openai, base_url: '{sim.url}/v1'}}" for name, sim in sims.items()
    )
    policies = "\n".join(f"  {name}: {body}" for name, body in STRATEGIES)
    # Listed slow first, so that `priority` and `cheapest` show what a static choice costs.
    endpoints = (
        "      - {provider: slow, model: m, price: {input: 0.5, output: 1.0}}\n"
        "      - {provider: fast, model: m, price: {input: 3.0, output: 15.0}}\n"
        "      - {provider: flaky, model: m, price: {input: 1.0, output: 2.0}}"
    )
    routes = "\n".join(
        f"  q-{name}:\n    policy: {name}\n    endpoints:\n{endpoints}" for name, _ in STRATEGIES
    )
    return (
        "storage: {url: null}\n"
        "defaults:\n"
        "  retry: {attempts: 3, backoff_s: 0.01, backoff_max_s: 0.1}\n"
        "  breaker: {consecutive_failures: 50, error_rate: 0.9, min_requests: 1000}\n"
        f"providers:\n{providers}\npolicies:\n{policies}\nroutes:\n{routes}\n"
    )


async def switch_run(
    router: Router, sims: dict[str, Sim], strategy: str, n: int, conc: int
) -> dict[str, Any]:
    """Warm up, then make `fast` slow; how long until its share of new requests drops?"""
    async with aiohttp.ClientSession() as session:
        await sims["fast"].control(session, ttft_ms=60)
        switched: dict[str, float] = {}

        async def progress(i: int, r: Any) -> None:
            if i == n // 2 and "at" not in switched:
                await sims["fast"].control(session, ttft_ms=1000)
                switched["at"] = time.perf_counter()

        run = await drive(
            router.url, f"q-{strategy}", n=n, concurrency=conc, seed=11, on_progress=progress
        )
        await sims["fast"].control(session, ttft_ms=60)
    at = switched["at"]
    after = sorted((r for r in run.results if r.started >= at), key=lambda r: r.started)
    # The time of the last request started after the switch that still went to `fast`,
    # ignoring lone exploration probes (at most one per second-long window).
    moved = 0.0
    for w in range(0, 60):
        window = [r for r in after if w <= r.started - at < w + 1]
        if not window:
            break
        to_fast = sum(1 for r in window if r.endpoint == "fast")
        if to_fast > max(1, len(window) // 10):
            moved = w + 1.0
    last_fast = max((r.started - at for r in after if r.endpoint == "fast"), default=0.0)
    return {
        "moved_within_s": moved,
        "last_to_fast_s": last_fast,
        "after_switch": len(after),
        "share_after": {
            e: sum(r.endpoint == e for r in after) / max(1, len(after)) for e in ENDPOINTS
        },
    }


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=600)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--switch-requests", type=int, default=600)
    ap.add_argument("--only", help="comma-separated strategies")
    ap.add_argument("--json")
    args = ap.parse_args()

    sims = {
        "fast": Sim("fast", "--ttft-ms", "60", "--tokens-per-s", "120", "--seed", "1").start(),
        "slow": Sim("slow", "--ttft-ms", "450", "--tokens-per-s", "35", "--seed", "2").start(),
        "flaky": Sim(
            "flaky",
            "--ttft-ms",
            "80",
            "--tokens-per-s",
            "100",
            "--error-rate",
            "0.3",
            "--seed",
            "3",
        ).start(),
    }
    router = Router(config(sims)).start()
    results: dict[str, Any] = {}
    try:
        # The oracle goes straight at the fast upstream, no router in between.
        oracle: Run = await drive(
            sims["fast"].url, "m", n=args.requests, concurrency=args.concurrency
        )
        results["oracle"] = summarise(oracle, ENDPOINTS)
        results["oracle"]["share"] = {"fast": 1.0, "slow": 0.0, "flaky": 0.0}
        chosen = [s for s, _ in STRATEGIES if not args.only or s in args.only.split(",")]
        for name in chosen:
            run = await drive(
                router.url, f"q-{name}", n=args.requests, concurrency=args.concurrency
            )
            results[name] = summarise(run, ENDPOINTS, skip=50)
            print(f"  {name}: done", file=sys.stderr)
        switches = {}
        for name in ("lowest_ttft", "score_p2c"):
            if name in chosen:
                switches[name] = await switch_run(
                    router, sims, name, args.switch_requests, args.concurrency
                )
    finally:
        router.stop()
        for sim in sims.values():
            sim.stop()

    oracle_p95 = results["oracle"]["ttft_p95"]
    rows = [
        [
            "strategy",
            "success",
            "ttft p50",
            "p95",
            "p99",
            "p95/oracle",
            "e2e p50",
            "e2e p95",
            "fast%",
            "slow%",
            "flaky%",
            "attempts",
        ]
    ]
    for name, s in results.items():
        rows.append(
            [
                name,
                f"{s['success']:.1%}",
                f"{s['ttft_p50']:.0f}",
                f"{s['ttft_p95']:.0f}",
                f"{s['ttft_p99']:.0f}",
                f"{s['ttft_p95'] / oracle_p95:.2f}x",
                f"{s['lat_p50']:.0f}",
                f"{s['lat_p95']:.0f}",
                f"{s['share']['fast']:.1%}",
                f"{s['share']['slow']:.1%}",
                f"{s['share']['flaky']:.1%}",
                f"{s['attempts_mean']:.2f}",
            ]
        )
    print(
        f"\nRouting quality: {args.requests} streaming requests per strategy, concurrency "
        f"{args.concurrency}; shares counted after the first 50; times in ms"
    )
    print(table(rows))
    if switches:
        print("\nFast upstream switched to TTFT 1000 ms mid-run:")
        srows = [
            [
                "strategy",
                "traffic moved within",
                "last request to fast",
                "fast% after",
                "flaky% after",
                "slow% after",
            ]
        ]
        for name, sw in switches.items():
            srows.append(
                [
                    name,
                    f"{sw['moved_within_s']:.0f} s",
                    f"{sw['last_to_fast_s']:.2f} s",
                    f"{sw['share_after']['fast']:.1%}",
                    f"{sw['share_after']['flaky']:.1%}",
                    f"{sw['share_after']['slow']:.1%}",
                ]
            )
        print(table(srows))
    dump(args.json, {"results": results, "switches": switches})


if __name__ == "__main__":
    asyncio.run(main())
