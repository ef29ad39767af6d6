"""CPU work per request as instructions counted by callgrind: router vs the bare hop.

Why it exists: on these shared machines the same cell of ``make bench`` varies by a
quarter from one run to the next, even in CPU seconds per request, which drowns the
effect of most single changes. Valgrind's callgrind counts the instructions a process
executes, which does not depend on what else the machine is doing: the same binary,
inputs and requests give nearly the same count. This runs each gateway under callgrind
with instrumentation off while it starts and warms up, switches it on for exactly
``--requests`` requests (sent by a client outside valgrind, at ``--conns`` concurrency,
to the zero upstream), dumps, and reports instructions per request and the ratio to the
bare pass-through. Every thread counts (the request log's writer thread too).

Instructions are not time (a cache miss costs more than an add), but for two Python
programs doing the same kind of work they track CPU time closely, and they move only
when the work changes.

    python benchmarks/instructions.py                       # router and bare, both modes
    python benchmarks/instructions.py --only router --modes nonstream --storage off
    python benchmarks/instructions.py --agents --requests 300   # the agent APIs' table
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time

import aiohttp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import free_port, raise_nofile
from perf import HERE, PY, STORAGE, Bench, router_cmd, router_config

# --apis: what a client sends, (path, route). ``chat`` and ``responses`` go to the OpenAI
# hosts (``bench``), which speak both; ``messages`` to hosts speaking the Messages API
# (native pass-through); the ``-via-chat`` ones to hosts speaking only chat (translated).
APIS = {
    "chat": ("/v1/chat/completions", "bench"),
    "responses": ("/v1/responses", "bench"),
    "messages": ("/v1/messages", "bench-msg"),
    "messages-via-chat": ("/v1/messages", "bench"),
    "responses-via-chat": ("/v1/responses", "bench-chat"),
}
NATIVE = {"messages-via-chat": "messages", "responses-via-chat": "responses"}


def request_body(api: str, tokens: int, stream: bool) -> dict[str, object]:
    path, route = APIS[api]
    if path.endswith("/responses"):
        return {"model": route, "input": "hi", "max_output_tokens": tokens, "stream": stream}
    return {
        "model": route,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": tokens,
        "stream": stream,
    }


async def drive(
    url: str,
    stream: bool,
    n: int,
    conns: int,
    tokens: int,
    headers: dict[str, str] | None = None,
    api: str = "chat",
) -> int:
    """Send exactly ``n`` requests over ``conns`` connections; the number that failed."""
    path = APIS[api][0]
    body = request_body(api, tokens, stream)
    failed = 0
    left = n
    connector = aiohttp.TCPConnector(limit=conns)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def worker() -> None:
            nonlocal left, failed
            while left > 0:
                left -= 1
                post = session.post(url + path, json=body, headers=headers)
                async with post as resp:
                    await resp.read()
                    if resp.status != 200:
                        failed += 1

        await asyncio.gather(*(worker() for _ in range(conns)))
    return failed


def total_ir(path: str) -> int:
    """The event count of one callgrind dump (its ``summary:`` or ``totals:`` line)."""
    with open(path) as fh:
        for line in fh:
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
    raise RuntimeError(f"no totals in {path}")


def measure(
    bench: Bench,
    tmp: str,
    name: str,
    cmd: list[str],
    ready: str,
    args: argparse.Namespace,
    headers: dict[str, str] | None = None,
    env: dict[str, str] | None = None,
) -> dict[str, float]:
    out = os.path.join(tmp, f"{name}.callgrind")
    port = int(cmd[cmd.index("--port") + 1])
    url = f"http://127.0.0.1:{port}"
    grind = [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        f"--callgrind-out-file={out}.%p",
        *(["--separate-threads=yes"] if args.threads else []),
        *cmd,
    ]
    proc = bench.start(name, grind, url, ready, core=None, env=env, ready_timeout=300)
    results = {}
    try:
        apis = args.apis.split(",") if name == "router" else ["chat"]  # direct, bare: chat
        cells = [(m, a) for a in apis for m in args.modes.split(",")]
        for mode, api in cells:
            stream = mode == "stream"
            cell = mode if api == "chat" else f"{api} {mode}"
            asyncio.run(drive(url, stream, args.warmup, args.conns, args.tokens, headers, api))
            subprocess.run(
                ["callgrind_control", "--zero", str(proc.pid)], check=True, capture_output=True
            )
            subprocess.run(
                ["callgrind_control", "--instr=on", str(proc.pid)], check=True, capture_output=True
            )
            t0 = time.perf_counter()
            failed = asyncio.run(
                drive(url, stream, args.requests, args.conns, args.tokens, headers, api)
            )
            took = time.perf_counter() - t0
            before = set(glob.glob(f"{out}.{proc.pid}*"))
            subprocess.run(
                ["callgrind_control", "--dump", str(proc.pid)], check=True, capture_output=True
            )
            deadline = time.monotonic() + 60
            dumps: set[str] = set()
            while time.monotonic() < deadline and not dumps:
                dumps = set(glob.glob(f"{out}.{proc.pid}*")) - before
                time.sleep(0.2)
            time.sleep(0.5)  # let the dump be written whole
            ir = sum(total_ir(p) for p in dumps)  # one file per thread with --threads
            if args.threads:
                for p in sorted(dumps):
                    print(
                        f"#   {p.rsplit('.', 2)[-2:]} {total_ir(p) / args.requests:12,.0f}",
                        file=sys.stderr,
                    )
            # Switching instrumentation off dumps too (what ran since): set those aside.
            subprocess.run(
                ["callgrind_control", "--instr=off", str(proc.pid)], check=True, capture_output=True
            )
            time.sleep(0.5)
            results[cell] = ir / args.requests
            print(
                f"# {name:6} {cell:9} {ir / args.requests:12,.0f} instructions/request "
                f"({args.requests} requests, {failed} failed, {took:.1f} s under valgrind)",
                file=sys.stderr,
            )
    finally:
        proc.stop()
    return results


def print_table(table: dict[str, dict[str, float]], args: argparse.Namespace) -> None:
    """Each cell with its ratios in the same mode: to the direct call, to the bare hop, to
    the router's chat, and a translated API's to the same API passed through natively."""
    print(
        f"\n| target | API | mode | instructions / request | x direct | x bare | x chat "
        f"| x native |  (conns {args.conns}, {args.tokens} tokens, storage "
        f"{args.storage or 'sqlite'}{', upstream one event per write' if args.per_token else ''}"
        f"{', endpoints with a key' if args.upstream_key else ''})"
    )
    print("|---|---|---|---|---|---|---|---|")

    def ratio(ir: float, base: float | None) -> str:
        return f"{ir / base:.2f}" if base else "-"

    router = table.get("router", {})
    for name, cells in table.items():
        for cell, ir in cells.items():
            api, _, mode = cell.rpartition(" ")
            api = api or "chat"
            native = router.get(f"{NATIVE[api]} {mode}") if api in NATIVE else None
            print(
                f"| {name} | {api if name == 'router' else '-'} | {mode} | {ir:,.0f} "
                f"| {ratio(ir, table.get('direct', {}).get(mode))} "
                f"| {ratio(ir, table.get('bare', {}).get(mode))} "
                f"| {ratio(ir, router.get(mode)) if name == 'router' else '-'} "
                f"| {ratio(ir, native)} |"
            )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="instructions per request under callgrind")
    ap.add_argument("--only", default="bare,router", help="targets: direct, bare, router")
    ap.add_argument("--modes", default="nonstream,stream")
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--warmup", type=int, default=300)
    ap.add_argument("--conns", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--keep", action="store_true", help="keep the callgrind files")
    ap.add_argument("--threads", action="store_true", help="also count per thread")
    ap.add_argument("--storage", default="", help="as perf.py's: '' (SQLite), 'off' or a URL")
    ap.add_argument(
        "--apis",
        default="chat",
        help=f"client APIs to send, router only: {', '.join(APIS)} (each measured per mode)",
    )
    ap.add_argument(
        "--per-token",
        action="store_true",
        help="the zero upstream writes one SSE event per write, as a host streaming tokens",
    )
    ap.add_argument(
        "--upstream-key",
        action="store_true",
        help="give the endpoints a key (as shipped hosts have): answers are searched for it",
    )
    ap.add_argument(
        "--agents",
        action="store_true",
        help="the agent APIs' table: direct, bare and every API of --apis, 256 tokens",
    )
    args = ap.parse_args(argv)
    if args.agents:
        args.only, args.apis, args.tokens = "direct,bare,router", ",".join(APIS), 256
    if not shutil.which("valgrind") or not shutil.which("callgrind_control"):
        print("valgrind (callgrind) not found", file=sys.stderr)
        return 2
    STORAGE["url"] = args.storage
    raise_nofile()
    tmp = tempfile.mkdtemp(prefix="router-instructions-")
    bench = Bench(tmp)
    table: dict[str, dict[str, float]] = {}
    try:
        upstream_args = ["--per-token"] if args.per_token else []
        _, upstream = bench.zero_upstream(None, *upstream_args)
        ports = [free_port() for _ in range(3)]
        targets = {
            # The zero upstream itself, called directly: what serving one answer costs.
            "direct": (
                [
                    PY,
                    os.path.join(HERE, "zero_upstream.py"),
                    "--port",
                    str(ports[0]),
                    *upstream_args,
                ],
                "/health",
            ),
            "bare": (
                [
                    PY,
                    os.path.join(HERE, "bare_proxy.py"),
                    "--port",
                    str(ports[1]),
                    "--upstream",
                    upstream,
                ],
                "/health",
            ),
            "router": (
                router_cmd(router_config(tmp, upstream, agents=True), ports[2]),
                "/health/ready",
            ),
        }
        env = None
        if args.upstream_key:
            env = {"BENCH_UPSTREAM_KEY": "sk-bench-" + "0123456789abcdef" * 3}
            path = targets["router"][0][targets["router"][0].index("--config") + 1]
            with open(path) as fh:
                text = fh.read().replace('/v1"', '/v1", api_key_env: BENCH_UPSTREAM_KEY')
            with open(path, "w") as fh:
                fh.write(text)
        for name in args.only.split(","):
            cmd, ready = targets[name]
            table[name] = measure(bench, tmp, name, cmd, ready, args, env=env)
    finally:
        bench.finish(args.keep)
    print_table(table, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
