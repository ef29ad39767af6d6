"""The policy lab against the real router on the conversation fleet of ``conversations.py``.

Agent conversations (a long system prompt and tools, each turn resending the whole
conversation) run 8 at a time through a real ``router serve`` over three ``router
sim-upstream`` hosts that cache prompts (``fast``, ``medium``, ``slow``; ``fast`` turns
slow, 1,200 ms, when the middle conversation starts), as ``conversations.py`` runs them,
with the request log on. Then:

1. **Replay.** Policy A (default ``affinity``: the score policy with prompt-cache
   affinity) runs for real; the lab reads its request log (requests, attempts and each
   request's session, revision 0008), fits the fleet from it alone (TTFT and its drift,
   speed, which hosts cache and how much a hit saves) and replays A's recorded arrivals
   through the same config.
2. **Prediction.** From the same fit, the lab predicts other policies on A's arrivals
   (default ``none``, the same policy without affinity, and ``round_robin``, the hosts in
   turn: each turn lands where an older prefix of its conversation is cached, if any);
   each is then run for real and compared.

Figures: the clients' TTFT p50/p95 (successful turns), each host's share of the
successful turns, the cache-hit rate (cached / prompt tokens) and the cost per
conversation at the route's prices. A figure passes within 10% of the real run (a share
or a rate: 10% of it or one point). ``real again`` is a second real run of the same
policy (how far two real runs land apart); ``router's log`` the TTFT the router logged.

A log recorded under a policy without affinity has no sessions (no session is computed
there), so the direction that replays conversations is A = a policy with affinity.

    python benchmarks/lab_validation_conversations.py [--conversations 120]
        [--concurrency 8] [--policy affinity] [--predict none,round_robin] [--lab-seeds 5]
        [--no-again] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
from pathlib import Path
from typing import Any, NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp
import conversations as conv
from lab_validation import logged_ttft, print_tables, within
from scenario import Router, Sim, dump, pct

from router.config import loads
from router.lab.engine import simulate_config
from router.lab.figures import summarise
from router.lab.trace import read

HOSTS = list(conv.HOSTS)
ROUTE = "agent"


class _Host(NamedTuple):
    url: str


def sims_up() -> dict[str, Sim]:
    return {
        name: Sim(name, "--ttft-ms", str(ms), "--tokens-per-s", "200", "--seed", str(i)).start()
        for i, (name, ms) in enumerate(conv.HOSTS.items())
    }


def policy_config(sims: dict[str, Any], policy: str) -> str:
    """``conversations.py``'s config for ``policy`` (``none``, ``affinity``,
    ``affinity@usd_per_s``), or ``round_robin``: its hosts in turn, no affinity."""
    if policy != "round_robin":
        return conv.config(sims, policy)
    text = conv.config(sims, "none")
    start = text.index("    strategy: score")
    end = text.index("routes:")
    return text[:start] + "    strategy: round_robin\n" + text[end:]


def with_log(config: str, url: str | None) -> str:
    log = "null" if url is None else f"'{url}', flush_interval_s: 0.2"
    return config.replace("storage: {url: null}", f"storage: {{url: {log}}}")


async def run_real(policy: str, plan: list[int], concurrency: int, log: str) -> dict[str, Any]:
    """One real run of ``policy`` with its request log at ``log``; the clients' figures."""
    sims = sims_up()
    router = None
    try:
        async with aiohttp.ClientSession() as s:
            for sim in sims.values():
                await sim.control(s, prompt_cache=conv.CACHE)
        router = Router(with_log(policy_config(sims, policy), log)).start()
        tally = await conv.run_policy(router.url, sims, plan, concurrency, oracle=False)
    finally:
        if router:
            router.stop()  # SIGTERM: the request log is flushed before it exits
        for sim in sims.values():
            sim.stop()
    ok = [t for t in tally.turns if t.ok]
    ttfts = [t.ttft * 1000 for t in ok if t.ttft is not None]
    prompt = sum(t.prompt for t in ok)
    return {
        "n": len(tally.turns),
        "success": len(ok) / max(1, len(tally.turns)),
        "ttft_p50": pct(ttfts, 0.5),
        "ttft_p95": pct(ttfts, 0.95),
        "share": {h: sum(t.endpoint == h for t in ok) / max(1, len(ok)) for h in HOSTS},
        "cache_hit": sum(min(t.prompt, t.cached) for t in ok) / prompt if prompt else 0.0,
        "cost_per_conv": sum(tally.costs) / max(1, len(tally.costs)),
        "urls": {name: sim.url for name, sim in sims.items()},
    }


def lab_figures(summary: dict[str, Any], conversations: int) -> dict[str, Any]:
    return {
        "n": summary["requests"],
        "success": summary["success_rate"],
        "ttft_p50": summary["ttft_ms"]["p50"],
        "ttft_p95": summary["ttft_ms"]["p95"],
        "share": {h: summary["share"].get(f"{ROUTE}/{h}", 0.0) for h in HOSTS},
        "cache_hit": summary["cache_hit_rate"],
        "cost_per_conv": summary["cost_usd"] / conversations,
    }


def rows_for(
    name: str,
    real: dict[str, Any],
    again: dict[str, Any] | None,
    labs: list[dict[str, Any]],
    logged: dict[str, float],
) -> list[list[str]]:
    rows = []
    lab = labs[0]

    def row(label: str, r: float, a: float | None, log: str, m: float, fmt: str, floor: float,
            spread: list[float]) -> list[str]:  # fmt: skip
        rel = f"{(m - r) / r:+.1%}" if r else "-"
        if fmt == "%":
            show = lambda x: f"{x:.1%}"  # noqa: E731
            rel += f" ({(m - r) * 100:+.1f} pt)"
        else:
            show = lambda x: f"{x:{fmt}}"  # noqa: E731
        return [
            name, label, show(r), "" if a is None else show(a), log, show(m),
            f"{show(min(spread))}-{show(max(spread))}", rel,
            "yes" if within(m, r, floor) else "NO",
        ]  # fmt: skip

    for key in ("ttft_p50", "ttft_p95"):
        rows.append(
            row(key.replace("_", " ") + " ms", real[key], again and again[key],
                f"{logged.get(key, 0):.1f}", lab[key], ".1f", 0.0, [x[key] for x in labs])
        )  # fmt: skip
    for h in HOSTS:
        rows.append(
            row(f"share {h}", real["share"][h], again and again["share"][h], "",
                lab["share"][h], "%", 0.01, [x["share"][h] for x in labs])
        )  # fmt: skip
    rows.append(
        row("cache hit", real["cache_hit"], again and again["cache_hit"], "", lab["cache_hit"],
            "%", 0.01, [x["cache_hit"] for x in labs])
    )  # fmt: skip
    rows.append(
        row("cost/conv $", real["cost_per_conv"], again and again["cost_per_conv"], "",
            lab["cost_per_conv"], ".4f", 0.0, [x["cost_per_conv"] for x in labs])
    )  # fmt: skip
    return rows


def record(
    args: argparse.Namespace, predict: list[str]
) -> tuple[dict[str, dict[str, Any]], dict[tuple[str, str], str]]:
    """The real runs, each with its own request log: figures by run, logs by (policy, kind)."""
    rng = random.Random(args.seed)
    plan = [rng.randint(10, 30) for _ in range(args.conversations)]
    tmp = Path(tempfile.mkdtemp(prefix="lab-validation-conv-"))
    logs: dict[tuple[str, str], str] = {}
    real: dict[str, dict[str, Any]] = {}
    runs = [(p, "real") for p in [args.policy, *predict]]
    if args.again:
        runs += [(p, "again") for p in [args.policy, *predict]]
    for policy, kind in runs:
        logs[(policy, kind)] = f"sqlite+aiosqlite:///{tmp / f'{kind}-{policy}.db'}"
        real[f"{kind}-{policy}"] = asyncio.run(
            run_real(policy, plan, args.concurrency, logs[(policy, kind)])
        )
        print(f"  {kind}-{policy}: done", file=sys.stderr)
    return real, logs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--conversations", type=int, default=120)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--seed", type=int, default=11, help="the conversations' (as conversations.py)")
    ap.add_argument("--policy", default="affinity", help="policy A, recorded and replayed")
    ap.add_argument(
        "--predict", default="none,round_robin", help="policies predicted, comma-separated"
    )
    ap.add_argument("--lab-seeds", type=int, default=5)
    ap.add_argument("--no-again", dest="again", action="store_false")
    ap.add_argument("--json")
    ap.add_argument("--reuse", help="the --json of an earlier run: its real runs and logs, "
                    "the lab part only")  # fmt: skip
    args = ap.parse_args()
    predict = [p for p in args.predict.split(",") if p]
    if args.reuse:
        before = json.loads(Path(args.reuse).read_text())
        real = before["real"]
        logs = {tuple(k.split("-", 1)[::-1]): v for k, v in before["logs"].items()}
    else:
        real, logs = record(args, predict)

    recorded = read(logs[(args.policy, "real")])
    sessions = sum(r.session is not None for r in recorded.requests)
    print(
        f"  request log of {args.policy}: {len(recorded.requests)} requests "
        f"({sessions} with a session), {len(recorded.attempts)} attempts",
        file=sys.stderr,
    )
    urls = real[f"real-{args.policy}"]["urls"]
    sims = {name: _Host(url) for name, url in urls.items()}  # the lab calls none of them
    lab: dict[str, list[dict[str, Any]]] = {}
    fleet: dict[str, Any] = {}
    for policy in [args.policy, *predict]:
        cfg = loads(policy_config(sims, policy), path=f"lab-{policy}.yaml", env={})
        lab[policy] = []
        for seed in range(args.lab_seeds):
            summary = summarise(simulate_config(cfg, recorded, seed=seed), policy)
            lab[policy].append(lab_figures(summary, args.conversations))
            fleet = summary["fleet"]
    logged = {
        name: asyncio.run(logged_ttft(logs[(name, "real")])).get(ROUTE, {})
        for name in [args.policy, *predict]
    }
    header = ["policy", "figure", "real", "real again", "router's log", "lab",
              f"lab, {args.lab_seeds} seeds", "lab vs real", "within 10%"]  # fmt: skip

    def rows(policy: str) -> list[list[str]]:
        return rows_for(
            policy, real[f"real-{policy}"], real.get(f"again-{policy}"), lab[policy],
            logged[policy],
        )  # fmt: skip

    turns = len(recorded.requests)
    print(
        f"\n1. Replay: {args.conversations} conversations ({turns} turns) of policy "
        f"{args.policy} at concurrency {args.concurrency}, fitted from its own request log"
    )
    print_tables(header, rows, args.policy, predict, fleet)
    dump(args.json, {"real": real, "logged": logged, "lab": lab, "fleet": fleet,
                     "args": vars(args), "logs": {f"{k[1]}-{k[0]}": v for k, v in logs.items()}})  # fmt: skip


if __name__ == "__main__":
    main()
