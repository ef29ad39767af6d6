"""What client keys' limits cost: no limits vs a limited key in memory vs on Redis.

Three measurements, one run (ratios within it; see requestlog_cost.py for why):

1. **CPU per request, side by side.** Routers for each configuration, two instances of
   each (started in a palindrome: off, memory, redis, redis-2, memory-2, off-2), all
   pinned to core 0 and all under load at the same time, each from its own load
   generator, so a change of core speed hits them alike. Each one's CPU time per answer
   (its process, from /proc) is compared with ``off``'s. Redis's own CPU per request is
   read from its process too, and shown apart: it is not the router's, but it is real.
   The limited key has rpm, tpm, concurrent and a day budget (all far above the load, so
   nothing is refused), and the endpoints have prices: every request is admitted, its
   answer's tokens corrected and its cost charged (batched). On Redis two ways:
   ``redis``, far from its limits, admits from the replica's allowances (a Lua call per
   allowance, about one a second); ``trip`` turns them off (``state.allowances: false``),
   so every admission is one Lua call, a round trip, as for a key near its limits.
2. **Each alone at one connection** (nothing queues): each configuration alone in turn,
   rounds rotated: the latency added (p50/p99 against ``off`` in the same round), its
   CPU per answer, and how often its event loop went to sleep per answer (voluntary
   context switches: a wait for the client, the upstream, or Redis); and the store's own
   round trip measured from this process (``admit`` on Redis, p50/p99 over 2,000 calls),
   which is what a request waits for.
3. **--workers 2 vs 1** with the limited key on Redis, unpinned at 64 connections: the
   load generator and the upstream share the same two cores, so the figure is what two
   workers reach with them; from CPU per request the script also prints what the
   workers alone could reach (the ceiling the cores allow).

    python benchmarks/limits_cost.py [--redis URL] [--reps 4] [--rounds 4] [--duration 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from _common import cpu_seconds, free_port, raise_nofile, sleeps
from perf import HERE, PY, Bench, Proc, f, pinned, router_cmd

KEY = "sk-bench-limited-key"
PLAIN = "sk-bench-plain-key"
NAMES = ["off", "memory", "redis", "trip"]


def config(folder: str, upstream: str, name: str, prefix: str) -> str:
    limited = name != "off"
    keys = (
        "keys:\n  team:\n    key_env: BENCH_KEY\n"
        "    limits: {rpm: 100000000, tpm: 10000000000, concurrent: 100000}\n"
        "    budget_usd: {day: 1000000000}\n"
        if limited
        else ""
    )
    # ``trip``: the same on Redis without allowances (``state.allowances: false``), so
    # every admission is a round trip, as for a key near its limits.
    allowances = "false" if name == "trip" else "true"
    state = (
        f"state: {{url_env: BENCH_REDIS_URL, prefix: '{prefix}', allowances: {allowances}}}\n"
        if name in ("redis", "trip")
        else ""
    )
    text = f"""\
server: {{host: 127.0.0.1, port: 8080, api_keys_env: BENCH_PLAIN_KEYS}}
storage: {{url: null}}
providers:
  up-a: {{kind: openai, base_url: "{upstream}/v1"}}
  up-b: {{kind: openai, base_url: "{upstream}/v1"}}
policies:
  fastest: {{strategy: score, weights: {{ttft: 1.0, error_rate: 4.0, throughput: 0.3}}, pick: p2c}}
routes:
  bench:
    policy: fastest
    endpoints:
      - {{provider: up-a, model: bench-model, price: {{input: 1, output: 2}}}}
      - {{provider: up-b, model: bench-model, price: {{input: 1, output: 2}}}}
{keys}{state}"""
    path = os.path.join(folder, "routes.yaml")
    with open(path, "w") as fh:
        fh.write(text)
    return path


def loadgen(url: str, key: str, conns: int, duration: float, core: str | None) -> dict[str, Any]:
    cmd = [PY, os.path.join(HERE, "loadgen.py"), "--url", url, "--mode", "nonstream",
           "--tokens", "16", "--conns", str(conns), "--duration", str(duration),
           "--header", f"Authorization: Bearer {key}"]  # fmt: skip
    out = subprocess.run(
        pinned(core, cmd), capture_output=True, timeout=duration + 90, check=False,
        preexec_fn=raise_nofile,
    )  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(f"loadgen failed: {out.stderr.decode()[-2000:]}")
    result: dict[str, Any] = json.loads(out.stdout)
    if result["errors"]:
        raise RuntimeError(f"{url}: {result['errors']} errors: {result['error_statuses']}")
    return result


def start(bench: Bench, tmp: str, name: str, upstream: str, env: dict[str, str], *extra: str,
          core: str | None = "0", prefix: str = "bench:") -> Proc:  # fmt: skip
    folder = tempfile.mkdtemp(prefix=f"{name}-", dir=tmp)
    port = free_port()
    cmd = router_cmd(config(folder, upstream, name.split("-")[0], prefix), port, *extra)
    return bench.start(name, cmd, f"http://127.0.0.1:{port}", "/health/ready", core, env)


def key_of(name: str) -> str:
    return PLAIN if name.startswith("off") else KEY


def redis_pid(url: str) -> int | None:
    import redis

    try:
        return int(redis.Redis.from_url(url).info("server")["process_id"])
    except Exception:
        return None


def side_by_side(procs: dict[str, Proc], conns: int, reps: int, duration: float,
                 redis: int | None) -> tuple[dict[str, list[float]], list[float]]:  # fmt: skip
    """CPU ms per answer of every router, all under load at once, per rep; and Redis's
    CPU ms per request the redis routers sent it."""
    cpu: dict[str, list[float]] = {n: [] for n in procs}
    redis_ms: list[float] = []
    for rep in range(reps):
        before = {n: cpu_seconds(p.pid) or 0.0 for n, p in procs.items()}
        r0 = cpu_seconds(redis) if redis else None
        with ThreadPoolExecutor(len(procs)) as pool:
            order = list(procs)[rep % len(procs) :] + list(procs)[: rep % len(procs)]
            jobs = {
                n: pool.submit(loadgen, procs[n].url, key_of(n), conns, duration, "1")
                for n in order
            }
            done = {n: job.result() for n, job in jobs.items()}
        after = {n: cpu_seconds(p.pid) or 0.0 for n, p in procs.items()}
        r1 = cpu_seconds(redis) if redis else None
        for n in procs:
            cpu[n].append((after[n] - before[n]) * 1000.0 / max(done[n]["completed"], 1))
        if r0 is not None and r1 is not None:
            # Nearly all of Redis's work is the trip routers' (one call per request;
            # the redis routers' allowances and charges are a few calls a second).
            sent = sum(done[n]["completed"] for n in procs if n.startswith("trip"))
            redis_ms.append((r1 - r0) * 1000.0 / max(sent, 1))
        line = ", ".join(f"{n} {cpu[n][-1]:.3f}" for n in procs)
        print(f"# side by side x{conns} rep {rep + 1}: {line}", file=sys.stderr, flush=True)
    return cpu, redis_ms


def pct(values: list[float]) -> str:
    return f"{statistics.median(values):+.1f}%" if values else "-"


def report_cpu(cpu: dict[str, list[float]], redis_ms: list[float], conns: int) -> None:
    med = statistics.median
    base = [(a + b) / 2 for a, b in zip(cpu["off"], cpu["off-2"], strict=True)]
    for name in NAMES:
        runs = [(a + b) / 2 for a, b in zip(cpu[name], cpu[f"{name}-2"], strict=True)]
        change = [(x / z - 1.0) * 100.0 for x, z in zip(runs, base, strict=True)]
        between = [(b / a - 1.0) * 100.0 for a, b in zip(cpu[name], cpu[f"{name}-2"], strict=True)]
        extra = f"{med(redis_ms) * 1000:.0f} us" if name == "trip" and redis_ms else "-"
        vs = "-" if name == "off" else f"{pct(change)} ({min(change):+.1f}..{max(change):+.1f})"
        print(f"| {name} | {conns} | {f(med(runs), 3)} | {vs} | {extra} | {pct(between)} |")


async def admit_latency(url: str, n: int = 2000, *, trip: bool = True) -> tuple[float, float]:
    """p50/p99 in ms of one admission on Redis from this process, one at a time: with
    ``trip`` each asks Redis (a binding read with it, as a request with affinity does);
    else the key's admissions come from the store's allowances, as far from its limits."""
    from router.state.shared import Quota
    from router.state.shared.redis_store import RedisState

    store = RedisState(url, prefix="bench-latency:")
    await store.start()
    quota = Quota("team", rpm=10**9, tpm=10**12, concurrent=10**6, day_usd=10.0**9)
    binding = "bench-session" if trip else None
    took = []
    for _ in range(n):
        t0 = time.perf_counter()
        admission = await store.admit(quota, tokens=100, binding_key=binding)
        took.append((time.perf_counter() - t0) * 1000.0)
        store.settle(admission, 50, 0.0001)
    await store.aclose()
    took.sort()
    return took[len(took) // 2], took[int(len(took) * 0.99)]


def latency_rounds(procs: dict[str, Proc], rounds: int, duration: float) -> None:
    """Each configuration alone under one connection in turn, rounds rotated: the latency
    the admission adds, and the CPU per answer of a router that has its core to itself
    (side by side, six routers share core 0, so each wake-up finds its caches cold:
    the worst case for a request that waits once more, on Redis)."""
    added: dict[str, dict[str, list[float]]] = {n: {"p50": [], "p99": []} for n in NAMES[1:]}
    cpu: dict[str, list[float]] = {n: [] for n in NAMES}
    waits: dict[str, list[float]] = {n: [] for n in NAMES}
    for r in range(rounds):
        order = NAMES[r % len(NAMES) :] + NAMES[: r % len(NAMES)]
        res = {}
        for n in order:
            pid = procs[n].pid
            before, slept = cpu_seconds(pid) or 0.0, sleeps(pid)
            res[n] = loadgen(procs[n].url, key_of(n), 1, duration, "1")
            done = max(res[n]["completed"], 1)
            cpu[n].append(((cpu_seconds(pid) or 0.0) - before) * 1000.0 / done)
            waits[n].append((sleeps(pid) - slept) / done)
        for n in NAMES[1:]:
            for p in ("p50", "p99"):
                added[n][p].append(res[n]["latency_ms"][p] - res["off"]["latency_ms"][p])
    for n in NAMES[1:]:
        p50 = statistics.median(added[n]["p50"])
        p99 = statistics.median(added[n]["p99"])
        change = [(x / z - 1.0) * 100.0 for x, z in zip(cpu[n], cpu["off"], strict=True)]
        print(f"| {n} | {p50 * 1000:+.0f} us | {p99 * 1000:+.0f} us | "
              f"{f(statistics.median(cpu[n]), 3)} | {pct(change)} "
              f"({min(change):+.1f}..{max(change):+.1f}) | "
              f"{statistics.median(waits[n]):.2f} |")  # fmt: skip
    print(
        f"\n(off alone: {f(statistics.median(cpu['off']), 3)} cpu ms/req, "
        f"{statistics.median(waits['off']):.2f} sleeps per request)"
    )


def workers(bench: Bench, tmp: str, upstream: str, env: dict[str, str], duration: float,
            redis_url: str, reps: int) -> None:  # fmt: skip
    print("\n### --workers 2 vs 1 (limited key on Redis, unpinned, 64 connections)\n")
    print("| workers | req/s | cpu ms/req (tree) | req/s x 1 worker | ceiling on 2 cores |")
    print("|---|---|---|---|---|")
    base = None
    for n in (1, 2):
        proc = start(bench, tmp, f"redis-w{n}", upstream, env, "--workers", str(n), core=None)
        time.sleep(1.0)
        rps, cpu = [], []
        for _ in range(reps):
            c0 = cpu_seconds(proc.pid) or 0.0
            res = loadgen(proc.url, KEY, 64, duration, None)
            c1 = cpu_seconds(proc.pid) or 0.0
            rps.append(res["rps"])
            cpu.append((c1 - c0) * 1000.0 / max(res["completed"], 1))
        proc.stop()
        bench.procs.remove(proc)
        med_rps, med_cpu = statistics.median(rps), statistics.median(cpu)
        base = base or med_rps
        ceiling = 2000.0 / med_cpu  # both cores for the router alone
        print(f"| {n} | {med_rps:.0f} | {med_cpu:.3f} | {med_rps / base:.2f} | {ceiling:.0f} |")


def instructions(bench: Bench, tmp: str, upstream: str, env: dict[str, str], prefix: str,
                 requests: int, conns: int) -> None:  # fmt: skip
    """Instructions per request under callgrind: the router's own work, whatever the
    machine's noise (kernel time, a syscall's, is not counted: see the CPU table)."""
    import instructions as ir

    args = argparse.Namespace(modes="nonstream", warmup=300, requests=requests, conns=conns,
                              tokens=16, threads=False)  # fmt: skip
    counts = {}
    for name in NAMES:
        folder = tempfile.mkdtemp(prefix=f"ir-{name}-", dir=tmp)
        cmd = router_cmd(config(folder, upstream, name, prefix), free_port())
        headers = {"Authorization": f"Bearer {key_of(name)}"}
        counts[name] = ir.measure(bench, tmp, f"ir-{name}", cmd, "/health/ready", args,
                                  headers, env)["nonstream"]  # fmt: skip
    print(f"\n### Instructions per request under callgrind (non-stream, {conns} connections)\n")
    print("| config | instructions / request | vs off |")
    print("|---|---|---|")
    for name in NAMES:
        vs = "-" if name == "off" else f"{(counts[name] / counts['off'] - 1) * 100:+.1f}%"
        print(f"| {name} | {counts[name]:,.0f} | {vs} |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--redis", default=os.environ.get("ROUTER_TEST_REDIS_URL",
                                                    "redis://127.0.0.1:6379/0"))  # fmt: skip
    ap.add_argument("--reps", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--duration", type=float, default=2.0)
    ap.add_argument("--conns", default="1,16", help="connections per router, side by side")
    ap.add_argument("--no-workers", action="store_true")
    ap.add_argument("--instructions", type=int, default=2000,
                    help="requests counted under callgrind per config (0: skip)")  # fmt: skip
    ap.add_argument("--only-instructions", action="store_true")
    args = ap.parse_args(argv)
    raise_nofile()
    tmp = tempfile.mkdtemp(prefix="limits-cost-")
    bench = Bench(tmp)
    prefix = f"bench-{os.getpid()}:"
    env = {"BENCH_KEY": KEY, "BENCH_PLAIN_KEYS": f"plain:{PLAIN}", "BENCH_REDIS_URL": args.redis,
           "LOG_LEVEL": "warning"}  # fmt: skip
    try:
        _, upstream = bench.zero_upstream("1")
        if args.instructions and shutil.which("valgrind"):
            for conns in (1, 16):
                instructions(bench, tmp, upstream, env, prefix, args.instructions, conns)
        if args.only_instructions:
            return 0
        procs: dict[str, Proc] = {}
        for name in [*NAMES, *(f"{n}-2" for n in reversed(NAMES))]:
            procs[name] = start(bench, tmp, name, upstream, env, prefix=prefix)
        time.sleep(1.0)
        for p in procs.values():  # warm-up: pools, scripts loaded, code paths taken
            loadgen(p.url, key_of(p.name), 4, 0.5, "1")
        print("### CPU per request, side by side on core 0 (non-stream, 16 tokens)\n")
        print("| config | conns each | cpu ms/req | vs off (range over reps) | "
              "Redis's own cpu/req | instance 2 vs 1 |")  # fmt: skip
        print("|---|---|---|---|---|---|")
        redis = redis_pid(args.redis)
        for conns in (int(c) for c in args.conns.split(",")):
            cpu, redis_ms = side_by_side(procs, conns, args.reps, args.duration, redis)
            report_cpu(cpu, redis_ms, conns)
        print(
            "\n### Each alone at 1 connection: latency added and CPU (vs off, same round; "
            "median over rounds)\n"
        )
        print("| config | p50 | p99 | cpu ms/req alone | vs off (range over rounds) | "
              "sleeps per request |")  # fmt: skip
        print("|---|---|---|---|---|---|")
        latency_rounds(procs, args.rounds, args.duration)
        p50, p99 = asyncio.run(admit_latency(args.redis))
        print(f"\nOne admission on Redis from a client process: p50 {p50 * 1000:.0f} us, "
              f"p99 {p99 * 1000:.0f} us (one round trip: EVALSHA of the admission script)")  # fmt: skip
        p50, p99 = asyncio.run(admit_latency(args.redis, trip=False))
        print(f"One admission from an allowance: p50 {p50 * 1000:.1f} us, "
              f"p99 {p99 * 1000:.1f} us (no round trip; one in thousands asks Redis)")  # fmt: skip
        for name in list(procs):
            procs.pop(name).stop()
        bench.procs = [p for p in bench.procs if p.name == "upstream"]
        if not args.no_workers:
            workers(bench, tmp, upstream, env, args.duration, args.redis, args.reps)
    finally:
        bench.finish()
        try:
            import redis as redis_client

            client = redis_client.Redis.from_url(args.redis)
            for pattern in (prefix + "*", "bench-latency:*"):
                keys = list(client.scan_iter(match=pattern))
                if keys:
                    client.delete(*keys)
        except Exception as exc:
            print(f"# could not clean Redis: {exc}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
