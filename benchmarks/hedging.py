"""Hedging against tail TTFT: the p99 it saves and the extra upstream requests it costs.

Two sim-upstreams with heavy-tailed TTFT (about 100 ms typically; with probability 3%
a 2 s stall, so the p99 is about 2 s), streaming, 1,000 requests per run, the same
seeded workload with hedging off and with ``hedge: {after: p90}``. Extra upstream
requests are counted at the upstreams (their /stats), not inferred.

    python benchmarks/hedging.py [--requests 1000] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import aiohttp
from scenario import Router, Sim, drive, dump, pct, table

SIM_ARGS = (
    "--ttft-ms",
    "100",
    "--jitter",
    "0.15",
    "--tail-prob",
    "0.03",
    "--tail-ms",
    "2000",
    "--tokens-per-s",
    "400",
    "--tokens",
    "16",
)


async def received(session: aiohttp.ClientSession, sim: Sim) -> int:
    async with session.get(f"{sim.url}/stats") as r:
        return int((await r.json())["received"])


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--json")
    args = ap.parse_args()
    sims = [Sim(f"h{i}", *SIM_ARGS, "--seed", str(10 + i)).start() for i in range(2)]
    providers = "\n".join(
        f"  h{i}: {{kind: openai, base_url: '{s.url}/v1'}}" for i, s in enumerate(sims)
    )
    eps = "\n".join(f"      - {{provider: h{i}, model: m}}" for i in range(2))
    config = (
        "storage: {url: null}\n"
        f"providers:\n{providers}\n"
        "policies:\n"
        "  plain: {strategy: lowest_ttft}\n"
        "  hedged: {strategy: lowest_ttft, hedge: {after: p90, max_extra: 1}}\n"
        f"routes:\n  off:\n    policy: plain\n    endpoints:\n{eps}\n"
        f"  on:\n    policy: hedged\n    endpoints:\n{eps}\n"
    )
    router = Router(config).start()
    out = {}
    try:
        async with aiohttp.ClientSession() as session:
            for mode in ("off", "on"):
                before = sum([await received(session, s) for s in sims])
                run = await drive(
                    router.url, mode, n=args.requests, concurrency=args.concurrency, seed=5
                )
                after = sum([await received(session, s) for s in sims])
                ttfts = [r.ttft * 1000 for r in run.results if r.ok and r.ttft is not None]
                upstream = after - before
                out[mode] = {
                    "ok": sum(r.ok for r in run.results),
                    "p50": pct(ttfts, 0.5),
                    "p90": pct(ttfts, 0.9),
                    "p99": pct(ttfts, 0.99),
                    "upstream": upstream,
                    "extra": (upstream - len(run.results)) / len(run.results),
                }
    finally:
        router.stop()
        for s in sims:
            s.stop()
    rows = [["hedging", "ok", "ttft p50 ms", "p90", "p99", "upstream requests", "extra"]]
    for mode, r in out.items():
        rows.append(
            [
                mode,
                str(r["ok"]),
                f"{r['p50']:.0f}",
                f"{r['p90']:.0f}",
                f"{r['p99']:.0f}",
                str(r["upstream"]),
                f"{r['extra']:.1%}",
            ]
        )
    ratio = out["off"]["p99"] / out["on"]["p99"]
    print(
        f"\nHedging: {args.requests} streaming requests per run, concurrency {args.concurrency}, "
        "two upstreams with TTFT ~100 ms and a 3% 2 s tail"
    )
    print(table(rows))
    print(
        f"p99 TTFT improvement: {ratio:.1f}x (target >= 2x); extra upstream requests "
        f"{out['on']['extra']:.1%} (target <= 15%)"
    )
    dump(args.json, out)


if __name__ == "__main__":
    asyncio.run(main())
