"""What the request log costs: the router with its log off, on SQLite and on PostgreSQL.

Why it is built this way: the log's cost is a few per cent, and this machine (a shared
KVM guest) changes the speed of a core by tens of per cent from one few-second window to
the next (a fixed CPU loop on core 0 measured 0.10 s, then 0.06 s, a minute apart). Cells
measured one after another, as three ``perf.py`` runs used to, mostly measured that drift.
Two phases, one run, all routers started once (pinned to core 0, like ``perf.py``'s
gateway):

1. **Interleaved cells**: each cell (mode x connections) is measured in rounds, one
   configuration after another, the order rotated each round: req/s and p50/p99 per
   configuration, and the median over rounds of the change against ``off`` in the same
   round, with its spread. Close in time, but still seconds apart: read the spread.
2. **Side by side** (the precise figure): all routers take load *at the same time*,
   sharing core 0, each from its own load generator, so a change of core speed hits them
   alike; each one's CPU time per answer (its threads, from /proc) is compared. On a
   saturated core, throughput is the inverse of that, so the change in CPU per answer is
   the log's cost in throughput. Identical routers still differ by a few per cent (each
   process lays out its memory differently), so every configuration runs as two
   instances, started in a palindrome (off, sqlite, postgresql, postgresql-2, sqlite-2,
   off-2) so that start order cancels too, and each figure is the instances' mean; the
   difference between the two log-off instances is printed as the floor of the method.
   That difference is a property of each process (two identical routers kept apart by
   3.7% for a whole run), so with ``--starts N`` the side-by-side phase runs N times,
   each with every router started afresh, and its figure is the median over all of them:
   one start's pair of layouts no longer decides the result.

PostgreSQL gets a fresh database for the run, dropped afterwards, as SQLite gets a fresh
file. At the end the rows each log wrote are counted, so a log that silently wrote
nothing cannot pass for a cheap one.

    python benchmarks/requestlog_cost.py [--pg URL] [--rounds 6] [--duration 2] [--reps 6]
                                         [--starts 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit, urlunsplit

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import cpu_seconds, free_port, raise_nofile, settled_rss_mb, wait_quiet
from perf import HERE, PY, STORAGE, Bench, Proc, f, loadgen, measure, router_cmd, router_config

DEFAULT_PG = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
MODES = {"nonstream16": ("nonstream", 16), "stream16": ("stream", 16), "stream256": ("stream", 256)}
Cell = tuple[str, int, int]  # mode, tokens, connections


def _libpq(url: str) -> str:
    """``postgresql+asyncpg://...`` as asyncpg takes it."""
    return urlunsplit(urlsplit(url)._replace(scheme="postgresql"))


def _with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


async def _pg(url: str, statement: str) -> Any:
    import asyncpg

    conn = await asyncpg.connect(_libpq(url), timeout=5)
    try:
        return await conn.fetchval(statement)
    finally:
        await conn.close()


def _sqlite_count(path: str) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute("SELECT count(*) FROM requests").fetchone()[0])


def _start_router(
    bench: Bench, tmp: str, name: str, storage: str, upstream: str, start: int = 0
) -> Proc:
    folder = os.path.join(tmp, name if start == 0 else f"{name}.{start}")
    os.makedirs(folder)
    STORAGE["url"] = storage
    config = router_config(folder, upstream)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = bench.start(name, router_cmd(config, port), url, "/health/ready", core="0")
    proc.idle_rss_mb = settled_rss_mb(proc.pid)
    print(
        f"# {name}: ready in {proc.ready_s:.3f} s, idle RSS {f(proc.idle_rss_mb, 1)} MB",
        file=sys.stderr,
        flush=True,
    )
    return proc


def _pct(values: list[float]) -> str:
    return f"{statistics.median(values):+.1f}%" if values else "-"


def _spread(values: list[float]) -> str:
    return f"{min(values):+.1f}..{max(values):+.1f}" if values else "-"


def _value(r: dict[str, Any], key: str) -> float | None:
    if key == "rps":
        return float(r["rps"])
    v = r["latency_ms"].get(key)
    return None if v is None else float(v)


def _paired(runs: list[dict[str, Any]], base: list[dict[str, Any]], key: str) -> list[float]:
    """Per round, the change in ``key`` against ``off`` measured in the same round, in %."""
    out = []
    for r, b in zip(runs, base, strict=True):
        a, z = _value(r, key), _value(b, key)
        if a is not None and z:
            out.append((a / z - 1.0) * 100.0)
    return out


# -- phase 1: interleaved cells -------------------------------------------------------


def interleaved(
    procs: dict[str, Proc], names: list[str], cells: list[Cell], rounds: int, duration: float,
    upstream: Proc,
) -> dict[tuple[str, Cell], list[dict[str, Any]]]:  # fmt: skip
    results: dict[tuple[str, Cell], list[dict[str, Any]]] = {}
    for rnd in range(rounds):
        order = names[rnd % len(names) :] + names[: rnd % len(names)]
        for cell in cells:
            mode, tokens, conns = cell
            for name in order:
                p = procs[name]
                res = measure(p, p.url, mode, tokens, conns, duration, upstream=upstream)
                results.setdefault((name, cell), []).append(res)
                print(
                    f"# round {rnd + 1} {name:10} {mode:9} {tokens:3} x{conns:<3} "
                    f"{res['rps']:8.0f} req/s p50 {f(res['latency_ms']['p50'])} ms "
                    f"err {res['errors']} noise {f(res.get('other_cores'))}",
                    file=sys.stderr,
                    flush=True,
                )
    return results


def report_interleaved(
    cells: list[Cell], names: list[str], results: dict[tuple[str, Cell], list[dict[str, Any]]]
) -> None:
    head = ["log", "mode", "conns", "req/s", "p50 ms", "p99 ms", "cpu ms/req", "noise",
            "req/s vs off", "(rounds)", "p50 vs off", "p99 vs off"]  # fmt: skip
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---" for _ in head) + "|")
    med = statistics.median
    for cell in cells:
        mode, tokens, conns = cell
        base = results[("off", cell)]
        for name in names:
            runs = results[(name, cell)]
            rps = _paired(runs, base, "rps")
            off = name == "off"
            row = [
                name,
                f"{'non-stream' if mode == 'nonstream' else 'stream'} {tokens}",
                str(conns),
                f(med(r["rps"] for r in runs), 0),
                f(med(r["latency_ms"]["p50"] for r in runs)),
                f(med(r["latency_ms"]["p99"] for r in runs)),
                f(med(r.get("cpu_ms_per_req", 0.0) for r in runs), 3),
                f(med(r.get("other_cores", 0.0) for r in runs)),
                "-" if off else _pct(rps),
                "-" if off else _spread(rps),
                "-" if off else _pct(_paired(runs, base, "p50")),
                "-" if off else _pct(_paired(runs, base, "p99")),
            ]
            print("| " + " | ".join(row) + " |")


# -- phase 2: side by side ------------------------------------------------------------


def side_by_side(
    procs: dict[str, Proc],
    cells: list[Cell],
    reps: int,
    duration: float,
    out: dict[tuple[str, Cell], list[float]],
) -> None:
    """CPU ms per answer of every router (instance), all under load at once, per cell
    and rep, appended to ``out``."""
    for cell in cells:
        mode, tokens, conns = cell
        for rep in range(reps):
            before = {n: cpu_seconds(p.pid) or 0.0 for n, p in procs.items()}
            with ThreadPoolExecutor(len(procs)) as pool:  # one load generator per router
                # Rotated, so no router is always the first (or last) to get its load.
                order = list(procs)[rep % len(procs) :] + list(procs)[: rep % len(procs)]
                running = {
                    n: pool.submit(loadgen, procs[n].url, mode, tokens, conns, duration)
                    for n in order
                }
                done = {n: job.result() for n, job in running.items()}
            after = {n: cpu_seconds(p.pid) or 0.0 for n, p in procs.items()}
            line = []
            for n in procs:
                ms = (after[n] - before[n]) * 1000.0 / max(done[n]["completed"], 1)
                out.setdefault((n, cell), []).append(ms)
                line.append(f"{n} {ms:.3f}")
            print(f"# side by side {mode} {tokens} x{conns} rep {rep + 1}: " + ", ".join(line),
                  file=sys.stderr, flush=True)  # fmt: skip


def _mean_of(cpu: dict[tuple[str, Cell], list[float]], name: str, cell: Cell) -> list[float]:
    """Per repetition, the mean of a configuration's two instances."""
    a, b = cpu[(name, cell)], cpu[(f"{name}-2", cell)]
    return [(x + y) / 2 for x, y in zip(a, b, strict=True)]


def report_side_by_side(
    cells: list[Cell], names: list[str], cpu: dict[tuple[str, Cell], list[float]], reps: int
) -> dict[str, float]:
    """The table; returns each log's worst median cost over the cells, in %."""
    head = ["log", "mode", "conns each", "cpu ms/req", "cpu/req vs off", "(reps)",
            "per start", "throughput vs off", "instance 2 vs 1"]  # fmt: skip
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---" for _ in head) + "|")
    worst: dict[str, float] = {}
    med = statistics.median
    for cell in cells:
        mode, tokens, conns = cell
        label = f"{'non-stream' if mode == 'nonstream' else 'stream'} {tokens}"

        base = _mean_of(cpu, "off", cell)
        for name in names:
            runs = _mean_of(cpu, name, cell)
            a, b = cpu[(name, cell)], cpu[(f"{name}-2", cell)]
            between = [(y / x - 1.0) * 100.0 for x, y in zip(a, b, strict=True)]
            spread = f"{_pct(between)} ({_spread(between)})"
            if name == "off":
                row = [name, label, str(conns), f(med(runs), 3), "-", "-", "-", "-", spread]
            else:
                change = [(x / z - 1.0) * 100.0 for x, z in zip(runs, base, strict=True)]
                starts = ", ".join(_pct(change[i : i + reps]) for i in range(0, len(change), reps))
                tput = (1.0 / (1.0 + med(change) / 100.0) - 1.0) * 100.0
                worst[name] = min(worst.get(name, 0.0), tput)
                row = [name, label, str(conns), f(med(runs), 3), _pct(change),
                       _spread(change), starts, f"{tput:+.1f}%", spread]  # fmt: skip
            print("| " + " | ".join(row) + " |")
    return worst


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="the request log's cost, measured in one run")
    ap.add_argument("--pg", default=os.environ.get("ROUTER_TEST_POSTGRES_URL", DEFAULT_PG))
    ap.add_argument("--rounds", type=int, default=6, help="interleaved rounds")
    ap.add_argument("--duration", type=float, default=2.0, help="seconds per interleaved cell")
    ap.add_argument("--reps", type=int, default=6, help="side-by-side repetitions per mode")
    ap.add_argument("--side-duration", type=float, default=3.0)
    ap.add_argument(
        "--starts", type=int, default=3, help="side-by-side phases, each with fresh routers"
    )
    ap.add_argument("--modes", default="nonstream16,stream16")
    ap.add_argument("--conns", default="16,64")
    ap.add_argument("--wait-quiet", type=float, default=30.0)
    args = ap.parse_args(argv)
    raise_nofile()
    modes = [MODES[m] for m in args.modes.split(",")]
    cells = [(*m, int(c)) for m in modes for c in args.conns.split(",")]
    side_cells = [(*m, 16) for m in modes]
    if args.wait_quiet > 0:
        other = wait_quiet(args.wait_quiet)
        print(f"# other processes keep {other:.2f} cores busy", file=sys.stderr, flush=True)

    started = time.perf_counter()
    tmp = tempfile.mkdtemp(prefix="router-logcost-")
    bench = Bench(tmp)
    db = f"router_bench_{uuid.uuid4().hex[:10]}"
    pg_url: str | None = _with_database(args.pg, db)
    try:
        asyncio.run(_pg(args.pg, f'CREATE DATABASE "{db}"'))
    except Exception as exc:
        print(f"# postgresql skipped: {type(exc).__name__}: {exc}", file=sys.stderr)
        pg_url = None
    storages = {"off": "off", "sqlite": "", **({"postgresql": pg_url} if pg_url else {})}
    names = list(storages)
    written: dict[str, int] = {}
    try:
        up_port = free_port()
        upstream_url = f"http://127.0.0.1:{up_port}"
        up_cmd = [PY, os.path.join(HERE, "zero_upstream.py"), "--port", str(up_port)]
        upstream = bench.start("upstream", up_cmd, upstream_url, "/health", core="1")
        # A palindrome: off, sqlite, postgresql, postgresql-2, sqlite-2, off-2.
        starts = [*storages.items(), *((f"{n}-2", s) for n, s in reversed(storages.items()))]
        procs = {n: _start_router(bench, tmp, n, s, upstream_url) for n, s in starts}
        for p in procs.values():  # warm-up: pools, stats, the first batches
            for mode, tokens in modes:
                loadgen(p.url, mode, tokens, 16, 1.0)
        print(f"# warm, {time.perf_counter() - started:.0f} s in", file=sys.stderr, flush=True)
        first = {n: procs[n] for n in names}
        cells_out = interleaved(first, names, cells, args.rounds, args.duration, upstream)
        cpu: dict[tuple[str, Cell], list[float]] = {}
        ready = {n: [p] for n, p in procs.items()}  # every start's process, for the report
        for start in range(args.starts):
            if start:
                procs = {n: _start_router(bench, tmp, n, s, upstream_url, start) for n, s in starts}
                for n, p in procs.items():
                    ready[n].append(p)
                    for mode, tokens in modes:
                        loadgen(p.url, mode, tokens, 16, 1.0)
            side_by_side(procs, side_cells, args.reps, args.side_duration, cpu)
            for p in procs.values():
                p.stop()  # SIGTERM: the logs flush what they hold
        written["sqlite"] = sum(
            _sqlite_count(os.path.join(tmp, folder, "router.db"))
            for folder in os.listdir(tmp)
            if folder.split(".")[0] in ("sqlite", "sqlite-2")
            and os.path.isdir(os.path.join(tmp, folder))
        )
        if pg_url:
            written["postgresql"] = int(asyncio.run(_pg(pg_url, "SELECT count(*) FROM requests")))
    finally:
        bench.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
        if pg_url:
            asyncio.run(_pg(args.pg, f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))

    print(
        f"\n## Request log cost ({time.strftime('%Y-%m-%d %H:%M')}, gateway pinned to core 0, "
        f"{time.perf_counter() - started:.0f} s)\n"
    )
    if args.rounds > 0:
        print(f"### 1. Interleaved cells ({args.rounds} rounds x {args.duration:g} s per cell)\n")
        report_interleaved(cells, names, cells_out)
        print(
            "\nMedians over rounds. 'vs off': the median over rounds of the change against "
            "the log off in the same round, its spread over rounds in brackets: cells seconds "
            "apart still differ by the machine's drift. noise: cores other processes kept "
            "busy.\n"
        )
    print(
        f"### 2. Side by side (all routers under load at once on core 0, {args.starts} "
        f"starts x {args.reps} x {args.side_duration:g} s per mode)\n"
    )
    worst = report_side_by_side(side_cells, names, cpu, args.reps)
    print(
        "\nCPU ms per answer of each configuration (the mean of its two instances), medians "
        "over the repetitions of all starts ('per start': each start's own median); the "
        "change is against the log off in the same repetition; "
        "throughput on a saturated core is the inverse of CPU per answer. 'instance 2 vs "
        "1': one instance of a configuration against the other, the median and spread over "
        "repetitions: for the two log-off instances, that is the floor of the method.\n"
    )
    for name in names:
        rss = statistics.median(p.idle_rss_mb or 0.0 for p in ready[name])
        took = statistics.median(p.ready_s or 0.0 for p in ready[name])
        rows = written.get(name)
        print(
            f"- {name}: idle RSS {f(rss, 1)} MB, ready in {f(took, 3)} s (medians over starts)"
            + ("" if rows is None else f", rows written by all its instances {rows}")
        )
    for name, value in worst.items():
        verdict = "met" if value > -5.0 else "NOT met"
        print(
            f"- {name}: worst mode {value:+.1f}% throughput vs off, side by side "
            f"(target: better than -5%: {verdict})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
