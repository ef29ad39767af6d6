"""Profile the router under load with py-spy and print its hot spots.

Why it exists: optimisations are chosen by profile, not by guess. This starts the zero
upstream and one router worker (the ``make bench`` config, pinned to core 0), drives it
with the load generator (core 1) and samples it with ``py-spy record`` meanwhile, then
folds the stacks into the functions that cost the most: by own time (where the CPU is
spent) and by inclusive time (what, with its callees, is worth making cheaper).

Needs py-spy (``.venv/bin/pip install py-spy``; deliberately not a project dependency).

    python benchmarks/profile_router.py --mode nonstream --conns 64 --seconds 10
    python benchmarks/profile_router.py --mode stream --tokens 256 --raw /tmp/stacks.txt
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections import Counter

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import CLK_TCK, free_port, raise_nofile
from perf import PY, ROOT, STORAGE, Bench, loadgen, pinned, router_cmd, router_config


def fold(path: str, root: str) -> tuple[Counter[str], Counter[str], int]:
    """Own and inclusive sample counts per function in the event loop's thread, from
    py-spy's collapsed stacks (recorded with ``--threads``: the first frame names the
    thread). Other threads are left out: py-spy counts a worker blocked on a queue as
    busy; their real CPU time is read from /proc instead (``thread_cpu``)."""
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    with open(path) as fh:
        for line in fh:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            first, *rest = stack.split(";")
            if "MainThread" not in first or not rest:
                continue
            n = int(count)
            total += n
            frames = [short(f, root) for f in rest]
            own[frames[-1]] += n
            for fr in set(frames):
                incl[fr] += n
    return own, incl, total


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds so far of each thread of ``pid``, by thread name (from /proc)."""
    out: dict[str, float] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat", "rb") as fh:
                raw = fh.read()
        except OSError:
            continue
        name = raw[raw.index(b"(") + 1 : raw.rindex(b")")].decode()
        fields = raw.rsplit(b")", 1)[1].split()
        key = f"{name} ({tid})"
        out[key] = (int(fields[11]) + int(fields[12])) / CLK_TCK
    return out


def short(frame: str, root: str) -> str:
    """``func (path/to/file.py:12)`` with site-packages and repo prefixes cut."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    for prefix in (root + "/", "site-packages/"):
        i = where.find(prefix)
        if i >= 0:
            where = where[i + len(prefix) :]
    py = "/lib/python3."
    if py in where:
        where = "stdlib/" + where.split(py, 1)[1].split("/", 1)[1]
    return f"{where.rsplit(':', 1)[0]}:{name}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="py-spy profile of the router under load")
    ap.add_argument("--mode", choices=["nonstream", "stream"], default="nonstream")
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--conns", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--raw", help="keep the collapsed stacks here")
    ap.add_argument("--lines", action="store_true", help="per line, not per function")
    ap.add_argument("--storage", default="", help="as perf.py's: '' (SQLite), 'off' or a URL")
    args = ap.parse_args(argv)
    STORAGE["url"] = args.storage
    spy = shutil.which("py-spy") or os.path.join(os.path.dirname(PY), "py-spy")
    if not os.path.exists(spy):
        print("py-spy not found: .venv/bin/pip install py-spy", file=sys.stderr)
        return 2
    raise_nofile()
    tmp = tempfile.mkdtemp(prefix="router-profile-")
    bench = Bench(tmp)
    try:
        port = free_port()
        _, upstream = bench.zero_upstream("1")
        url = f"http://127.0.0.1:{port}"
        router = bench.start(
            "router",
            router_cmd(router_config(tmp, upstream), port),
            url,
            "/health/ready",
            core="0",
        )
        loadgen(url, args.mode, args.tokens, 16, 2.0)  # warm
        raw = args.raw or os.path.join(tmp, "stacks.txt")
        result: dict[str, object] = {}

        def drive() -> None:
            result.update(loadgen(url, args.mode, args.tokens, args.conns, args.seconds + 1))

        driver = threading.Thread(target=drive)
        before = thread_cpu(router.pid)
        driver.start()
        subprocess.run(
            pinned(
                "1",
                [
                    spy,
                    "record",
                    "--pid",
                    str(router.pid),
                    "--duration",
                    str(int(args.seconds)),
                    "--rate",
                    str(args.rate),
                    "--format",
                    "raw",
                    *([] if args.lines else ["--function"]),
                    "--threads",
                    "--output",
                    raw,
                ],
            ),
            check=True,
            capture_output=True,
            timeout=args.seconds + 60,
        )
        after = thread_cpu(router.pid)
        driver.join(timeout=args.seconds + 90)
        cpu = {k: v - before.get(k, 0.0) for k, v in after.items()}
        own, incl, total = fold(raw, ROOT)
    finally:
        bench.finish()
    print(
        f"\n## py-spy: router, {args.mode} {args.tokens} tokens, {args.conns} conns, "
        f"{args.seconds:g} s, {total} samples of the loop thread; load: "
        f"{result.get('rps')} req/s\n"
    )
    print("| thread | CPU s while sampled (/proc) |")
    print("|---|---|")
    for th, secs in sorted(cpu.items(), key=lambda kv: -kv[1]):
        if secs > 0:
            print(f"| {th} | {secs:.2f} |")
    print("\nPercentages below: of the event loop thread's samples.\n")
    print("| own % | function |")
    print("|---|---|")
    for fr, n in own.most_common(args.top):
        print(f"| {100 * n / total:.1f} | {fr} |")
    print("\n| inclusive % | function |")
    print("|---|---|")
    shown = 0
    for fr, n in incl.most_common():
        if (
            "router/" in fr
            or "providers/" in fr
            or "policies/" in fr
            or "aiohttp" in fr
            or "structlog" in fr
            or "prometheus" in fr
            or "sqlalchemy" in fr
        ):
            print(f"| {100 * n / total:.1f} | {fr} |")
            shown += 1
            if shown >= args.top:
                break
    return 0


if __name__ == "__main__":
    sys.exit(main())
