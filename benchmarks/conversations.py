"""What prompt-cache affinity saves on agent traffic, against no affinity and an oracle.

Agent conversations (a system prompt and tools of about 8k tokens, the prompt opening with
the session's environment as a coding agent's does, then turns that each add a tool
result of about 1.7k tokens and a short answer) run 8 at a time through a real
router over three ``router sim-upstream`` hosts with prompt caching (``prompt_cache``):
``fast`` (TTFT 80 ms), ``medium`` (150 ms) and ``slow`` (300 ms; ``--hosts`` sets the
three, e.g. ``80,90,300``: two near-equal hosts a ranking spreads load over), all at the
same prices (TokenLX's: $3 input, $0.30 cache read, $15 output per million tokens).
Halfway through (when the middle conversation starts), ``fast`` turns slow (TTFT 1,200
ms). Each policy runs the same seeded conversations:

- ``none``: the shipped score policy, no affinity;
- ``affinity``: the same policy with ``affinity: {ttl_s: 600}``;
- ``oracle``: each conversation pinned to the host that is fastest for it, knowing the
  slowdown the moment it happens: ``fast`` until then, ``medium`` after (a conversation
  under way at the switch moves once, as it should). Its cost is counted as if every
  resent prefix were cached (a perfect cache: the move and each first turn re-buy
  nothing but what is new); its TTFT is measured for real, so a first turn is uncached
  there as everywhere (only the tools, shared by all conversations, are cached).

Each host's cache is the simulator's (``providers.simulated.prompt_cache``): a prefix
lives 300 s after its last use (Anthropic's five minutes) and a cached prompt's TTFT is
scaled towards 0.3 of the uncached one by its cached share. The run lasts about 30 s a
policy, so the TTL never expires a conversation under way here (turns follow each other
without a user's or a tool's think time); ``--cache-tokens`` bounds each host's cache in
tokens, least recently used out first, as a host shared with other tenants is.

TTFT is wall-clock, measured by the client on loopback sockets, so it moves with the
machine's load: compare the policies within one run.

Reported per policy: cost per conversation, cache-hit rate (cached / prompt tokens), TTFT
p50/p95, client-visible errors. Then a rate-limited fleet: three hosts that each take 3
requests at a time and answer 429 with ``Retry-After`` beyond that, under a load of 6 at a
time: the client should see no 429 and no 5xx. ``--turns FILE`` writes every turn (which
host, cached tokens, TTFT, the affinity verdict) to read the tail.

    python benchmarks/conversations.py [--conversations 200] [--concurrency 8] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import aiohttp
import orjson
from scenario import Router, Sim, dump, pct, table

PRICE = {"input": 3.0, "cache_read": 0.3, "cache_write": 3.0, "output": 15.0}
HOSTS = {"fast": 80, "medium": 150, "slow": 300}
SLOWED = {"fast": 1200}  # the TTFT in ms a host turns to halfway
CACHE: dict[str, Any] = {"ttl_s": 300, "min_tokens": 1024, "ttft_factor": 0.3}
SYSTEM = " ".join(f"Rule {i}: keep the repository tidy and explain each change." for i in range(500))
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": f"tool_{i}",
            "description": "Reads or edits files in the working tree. " * 12,
            "parameters": {"type": "object", "properties": {"path": {"type": "string"}}},
        },
    }
    for i in range(12)
]


def config(sims: dict[str, Sim], policy: str) -> str:
    providers = "\n".join(
        f"  {name}: {{kind: openai, base_url: '{sim.url}/v1'}}" for name, sim in sims.items()
    )
    price = "{input: 3.0, output: 15.0, cache_read: 0.3, cache_write: 3.0}"
    endpoints = "\n".join(f"      - {{provider: {n}, model: m, price: {price}}}" for n in sims)
    affinity = ""
    if policy.startswith("affinity"):
        usd = policy.partition("@")[2] or "0.05"
        affinity = f"\n    affinity: {{ttl_s: 600, usd_per_s: {usd}}}"
    return (
        "storage: {url: null}\n"
        "defaults:\n"
        "  retry: {attempts: 4, backoff_s: 0.01, backoff_max_s: 0.2}\n"
        f"providers:\n{providers}\n"
        "policies:\n"
        "  agents:\n"
        "    strategy: score\n"
        "    weights: {ttft: 1.0, error_rate: 4.0, throughput: 0.3}\n"
        f"    pick: p2c{affinity}\n"
        f"routes:\n  agent:\n    policy: agents\n    endpoints:\n{endpoints}\n"
    )


@dataclass
class Turn:
    ok: bool
    status: int
    ttft: float | None
    endpoint: str | None
    prompt: int = 0
    cached: int = 0
    completion: int = 0
    affinity: str | None = None
    cid: int = -1  # the conversation, its turn, and whether the slowdown had happened
    index: int = -1
    after: bool = False


@dataclass
class Tally:
    turns: list[Turn] = field(default_factory=list)
    costs: list[float] = field(default_factory=list)  # per conversation
    perfect_costs: list[float] = field(default_factory=list)


def turn_cost(prompt: int, cached: int, completion: int) -> float:
    fresh = prompt - cached
    return (fresh * PRICE["input"] + cached * PRICE["cache_read"] + completion * PRICE["output"]) / 1e6


async def one_turn(
    session: aiohttp.ClientSession, url: str, body: dict[str, Any]
) -> tuple[Turn, str]:
    start = time.perf_counter()
    turn = Turn(False, 0, None, None)
    text: list[str] = []
    try:
        async with session.post(
            f"{url}/v1/chat/completions", data=orjson.dumps(body),
            headers={"Content-Type": "application/json"},
            timeout=aiohttp.ClientTimeout(total=60),
        ) as resp:
            turn.status = resp.status
            turn.endpoint = resp.headers.get("x-router-endpoint")
            turn.affinity = resp.headers.get("x-router-affinity")
            if resp.status != 200:
                await resp.read()
                return turn, ""
            done = False
            async for line in resp.content:
                if not line.startswith(b"data: "):
                    continue
                data = line[6:].strip()
                if data == b"[DONE]":
                    done = True
                    break
                event = orjson.loads(data)
                if "error" in event:
                    break
                for choice in event.get("choices") or ():
                    delta = choice.get("delta") or {}
                    piece = delta.get("content")
                    if (piece or delta.get("tool_calls")) and turn.ttft is None:
                        turn.ttft = time.perf_counter() - start  # text or a tool call
                    if piece:
                        text.append(piece)
                usage = event.get("usage")
                if usage:
                    turn.prompt = usage.get("prompt_tokens", 0)
                    turn.completion = usage.get("completion_tokens", 0)
                    details = usage.get("prompt_tokens_details") or {}
                    turn.cached = details.get("cached_tokens", 0) or 0
            turn.ok = done
    except (aiohttp.ClientError, TimeoutError):
        pass
    return turn, "".join(text)


async def conversation(
    session: aiohttp.ClientSession, url: str, cid: int, turns: int, tally: Tally,
    pin: Any = None, switched: asyncio.Event | None = None,
) -> None:
    rng = random.Random(cid)
    # As a coding agent's, the system prompt opens with the session's environment (its
    # working directory, git status, date), so no two conversations share a prefix.
    env = f"<env>cwd: /work/task-{cid}\ngit: {rng.getrandbits(64):016x}</env>\n"
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": env + SYSTEM},
        {"role": "user", "content": f"Task {cid}: fix the failing test in module {rng.random()}"},
    ]
    cost = perfect = 0.0
    previous_prompt = 0
    for t in range(turns):
        body: dict[str, Any] = {
            "model": "agent", "messages": messages, "tools": TOOLS, "stream": True,
            "stream_options": {"include_usage": True}, "max_tokens": 24,
        }
        if pin is not None:
            body["provider"] = {"order": [pin()], "allow_fallbacks": False}
        after = switched is not None and switched.is_set()
        turn, answer = await one_turn(session, url, body)
        turn.cid, turn.index, turn.after = cid, t, after
        tally.turns.append(turn)
        cost += turn_cost(turn.prompt, turn.cached, turn.completion)
        # A perfect cache holds all that this turn resent from the last one (and at least
        # what the real one held: the system prompt and tools all conversations share).
        ideal = max(turn.cached, min(previous_prompt, turn.prompt))
        perfect += turn_cost(turn.prompt, ideal, turn.completion)
        previous_prompt = turn.prompt
        messages.append({"role": "assistant", "content": answer or "(no answer)"})
        tool_output = f"file {t} of task {cid}: " + "x = compute(y)  # unchanged\n" * 230
        messages.append({"role": "user", "content": tool_output})
    tally.costs.append(cost)
    tally.perfect_costs.append(perfect)


async def run_policy(
    url: str, sims: dict[str, Sim], plan: list[int], concurrency: int, oracle: bool
) -> Tally:
    tally = Tally()
    switched = asyncio.Event()
    started = 0
    half = len(plan) // 2
    pin = (lambda: "medium" if switched.is_set() else "fast") if oracle else None
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency * 2)) as s:
        await sims["fast"].control(s, ttft_ms=HOSTS["fast"])
        queue = list(enumerate(plan))

        async def worker() -> None:
            nonlocal started
            while queue:
                cid, turns = queue.pop(0)
                started += 1
                if started == half and not switched.is_set():
                    await sims["fast"].control(s, ttft_ms=SLOWED["fast"])
                    switched.set()
                await conversation(s, url, cid, turns, tally, pin, switched)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return tally


def summary(tally: Tally, perfect: bool) -> dict[str, Any]:
    """``perfect``: cost as if every resent prefix had been cached (the oracle's)."""
    turns = tally.turns
    ttfts = [t.ttft * 1000 for t in turns if t.ok and t.ttft is not None]
    prompt = sum(t.prompt for t in turns)
    costs = tally.perfect_costs if perfect else tally.costs
    cached = sum(min(t.prompt, t.cached) for t in turns)
    return {
        "turns": len(turns),
        "cost_per_conversation": sum(costs) / max(1, len(costs)),
        "cache_hit_rate": cached / prompt if prompt else 0.0,
        "ttft_p50_ms": pct(ttfts, 0.5),
        "ttft_p95_ms": pct(ttfts, 0.95),
        "errors": sum(not t.ok for t in turns),
        "share": {h: sum(t.endpoint == h for t in turns) / max(1, len(turns)) for h in HOSTS},
    }


async def rate_limited(concurrency: int, requests: int) -> dict[str, Any]:
    sims = {
        name: Sim(name, "--ttft-ms", "40", "--tokens-per-s", "400", "--seed", str(i)).start()
        for i, name in enumerate(("a", "b", "c"))
    }
    router = None
    try:
        async with aiohttp.ClientSession() as s:
            for sim in sims.values():
                await sim.control(s, capacity=3, retry_after_s=0.05)
        router = Router(config(sims, "affinity")).start()
        statuses: dict[int, int] = {}
        async with aiohttp.ClientSession() as s:
            left = requests

            async def worker(w: int) -> None:
                nonlocal left
                while left > 0:
                    left -= 1
                    body = {"model": "agent", "stream": True, "max_tokens": 8,
                            "messages": [{"role": "user", "content": f"w{w} {left}"}]}
                    turn, _ = await one_turn(s, router.url, body)
                    key = turn.status if turn.ok or turn.status != 200 else 599
                    statuses[key] = statuses.get(key, 0) + 1

            await asyncio.gather(*(worker(w) for w in range(concurrency)))
        return {"requests": requests, "capacity": 9, "concurrency": concurrency,
                "statuses": statuses,
                "client_429_or_5xx": sum(n for st, n in statuses.items() if st != 200)}
    finally:
        if router:
            router.stop()
        for sim in sims.values():
            sim.stop()


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--conversations", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--json")
    ap.add_argument(
        "--hosts",
        default="80,150,300",
        help="TTFT in ms of fast, medium and slow (e.g. 80,90,300: two near-equal hosts, "
        "which a ranking spreads load over)",
    )
    ap.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="multiply every TTFT (the hosts' and the slowdown's): 3 gives 240/450/900 ms, "
        "nearer hosted models' and less moved by the machine's own hiccups",
    )
    ap.add_argument("--cache-tokens", type=int, default=None,
                    help="each host's cache size in tokens (default: unbounded)")
    ap.add_argument("--turns", help="write every turn (policy, conversation, endpoint, "
                    "cached, TTFT) to this file, one JSON object a line: to read the tail")
    ap.add_argument(
        "--usd-per-s", nargs="*", default=["0.5"],
        help="further affinity runs with these values of usd_per_s (the default is 0.05)",
    )
    args = ap.parse_args()
    HOSTS.update(zip(HOSTS, map(int, args.hosts.split(",")), strict=True))
    for name in HOSTS:
        HOSTS[name] = round(HOSTS[name] * args.scale)
    SLOWED["fast"] = round(SLOWED["fast"] * args.scale)
    rng = random.Random(args.seed)
    plan = [rng.randint(10, 30) for _ in range(args.conversations)]
    results: dict[str, Any] = {}
    for policy in ("none", "affinity", *(f"affinity@{v}" for v in args.usd_per_s), "oracle"):
        sims = {
            name: Sim(name, "--ttft-ms", str(ms), "--tokens-per-s", "200", "--seed", str(i)).start()
            for i, (name, ms) in enumerate(HOSTS.items())
        }
        router = None
        try:
            async with aiohttp.ClientSession() as s:
                for sim in sims.values():
                    await sim.control(s, prompt_cache={**CACHE, "max_tokens": args.cache_tokens})
            router = Router(config(sims, policy)).start()
            t0 = time.perf_counter()
            tally = await run_policy(router.url, sims, plan, args.concurrency, policy == "oracle")
            results[policy] = summary(tally, perfect=False)
            if args.turns:
                lines = b"".join(
                    orjson.dumps({"policy": policy, **vars(t)}) + b"\n" for t in tally.turns
                )
                with Path(args.turns).open("ab") as f:  # noqa: ASYNC230 - between runs
                    f.write(lines)
            if policy == "oracle":
                results[policy]["cost_per_conversation"] = summary(tally, True)["cost_per_conversation"]
            results[policy]["wall_s"] = round(time.perf_counter() - t0, 1)
            print(f"{policy}: done in {results[policy]['wall_s']} s", file=sys.stderr)
        finally:
            if router:
                router.stop()
            for sim in sims.values():
                sim.stop()
    oracle = results["oracle"]
    rows = [["policy", "cost/conv $", "x oracle", "cache hit", "TTFT p50 ms", "TTFT p95 ms",
             "x oracle p95", "errors", "share fast/medium/slow"]]
    for policy, r in results.items():
        share = "/".join(f"{r['share'][h]:.2f}" for h in HOSTS)
        rows.append([
            policy, f"{r['cost_per_conversation']:.4f}",
            f"{r['cost_per_conversation'] / oracle['cost_per_conversation']:.2f}",
            f"{r['cache_hit_rate']:.2f}", f"{r['ttft_p50_ms']:.0f}",
            f"{r['ttft_p95_ms']:.0f}", f"{r['ttft_p95_ms'] / oracle['ttft_p95_ms']:.2f}",
            str(r["errors"]), share,
        ])
    print(table(rows))
    results["rate_limited"] = await rate_limited(concurrency=6, requests=600)
    print("rate-limited fleet:", results["rate_limited"])
    dump(args.json, results)


if __name__ == "__main__":
    asyncio.run(main())
