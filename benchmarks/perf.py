"""`make bench`: the router against the floor (a bare aiohttp hop) and the incumbent.

Why it exists: a routing tier adds its cost to every LLM call, so the claim "as fast as
one bare aiohttp hop, with every feature on" has to be measured, in one run, on this
machine, as ratios (machines are shared and noisy; absolute numbers are not comparable
across runs). Everything runs on 127.0.0.1 and is bounded in time.

Layout (2 cores): the gateway under test is pinned to core 0 with ``taskset``; the
zero-delay upstream (``zero_upstream.py``) and the load generator (``loadgen.py``) share
core 1. The ``direct`` target (load generator straight to the upstream) shows what core 1
can do on its own: it must run well above the gateways, or the gateways are not what was
measured.

Targets: ``direct``, ``bare`` (``bare_proxy.py``), ``router`` (``python -m router serve``
with two ``kind: openai`` endpoints, a ``score``/p2c policy, retries armed, the request
log on SQLite in a temp dir, metrics on, default log level), and ``litellm`` when
``make bench-peer`` has installed LiteLLM Proxy in ``.bench-peer/`` (an equivalent
two-deployment config, retries armed, one worker).

Cells: {non-stream 16 tokens, stream 16, stream 256} x {1, 16, 64} connections; within a
cell the targets take turns, five runs of 1.5 s each, and each keeps its median run
(interleaved, so ratios compare the same seconds of a drifting machine). Per cell:
requests/s, p50/p90/p99 latency, p50/p99 TTFT, gateway CPU ms per request (utime+stime
of the process tree from /proc, before/after), RSS after the run, and ratios to ``bare``
and ``direct`` from the same run. Then: start-up time to ready and idle RSS per gateway,
and ``--workers 1`` vs ``--workers 2`` (unpinned: every process shares both cores).

    python benchmarks/perf.py                  # full run, ~8 min
    python benchmarks/perf.py --quick          # ~1 min
    python benchmarks/perf.py --only router,bare --json /tmp/bench.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (
    cpu_seconds,
    free_port,
    machine_busy_seconds,
    raise_nofile,
    rss_mb,
    settled_rss_mb,
    wait_http,
    wait_quiet,
)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

PY = sys.executable
PEER = os.path.join(ROOT, ".bench-peer", "bin", "litellm")
MODES = [("nonstream", 16), ("stream", 16), ("stream", 256)]
ALL_TARGETS = ["direct", "bare", "router", "litellm"]
HAS_TASKSET = shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2


def pinned(core: str | None, cmd: list[str]) -> list[str]:
    return ["taskset", "-c", core, *cmd] if core and HAS_TASKSET else cmd


def _limits() -> None:  # in the child, before exec: thousands of sockets
    raise_nofile()
    os.setpgrp()  # own process group, so a stop reaches --workers children too


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    url: str
    ready_s: float | None = None
    idle_rss_mb: float | None = None
    log_path: str | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def stop(self) -> None:
        if self.popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout=5)


@dataclass
class Bench:
    tmp: str
    procs: list[Proc] = field(default_factory=list)

    def start(
        self,
        name: str,
        cmd: list[str],
        url: str,
        ready_path: str,
        core: str | None,
        env: dict[str, str] | None = None,
        ready_timeout: float = 120.0,
    ) -> Proc:
        log_path = os.path.join(self.tmp, f"{name}.log")
        with open(log_path, "wb") as log:
            t0 = time.perf_counter()
            popen = subprocess.Popen(
                pinned(core, cmd),
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **(env or {})},
                preexec_fn=_limits,
            )
        proc = Proc(name, popen, url, log_path=log_path)
        self.procs.append(proc)
        took = wait_http(
            url + ready_path, ready_timeout, interval_s=0.005, alive=lambda: popen.poll() is None
        )
        if took is None or popen.poll() is not None:
            with open(log_path, "rb") as fh:
                tail = fh.read()[-3000:].decode("utf-8", "replace")
            raise RuntimeError(f"{name} did not become ready:\n{tail}")
        proc.ready_s = time.perf_counter() - t0
        return proc

    def stop_all(self) -> None:
        for p in reversed(self.procs):
            p.stop()
        self.procs.clear()

    def zero_upstream(self, core: str | None, *extra: str) -> tuple[Proc, str]:
        """``zero_upstream.py`` on a free port: (its process, its base URL)."""
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        cmd = [PY, os.path.join(HERE, "zero_upstream.py"), "--port", str(port), *extra]
        return self.start("upstream", cmd, url, "/health", core=core), url

    def finish(self, keep: bool = False) -> None:
        """Stop everything; remove the temp dir unless asked to keep it (then say where)."""
        self.stop_all()
        if keep:
            print(f"# kept {self.tmp}", file=sys.stderr)
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)


def router_cmd(config: str, port: int, *extra: str) -> list[str]:
    """``router serve`` on 127.0.0.1:port with ``config``."""
    return [PY, "-m", "router", "serve", "--config", config, "--host", "127.0.0.1",
            "--port", str(port), *extra]  # fmt: skip


STORAGE = {"url": ""}  # --storage: "" = SQLite in the temp dir (as shipped), "off", or a URL


def router_config(
    tmp: str, upstream: str, max_connections: int | None = None, agents: bool = False
) -> str:
    """The shipped feature set on the zero upstream; ``agents`` adds, beside ``bench``, a
    route of two hosts speaking Anthropic's Messages API natively (``bench-msg``) and one
    of two OpenAI hosts speaking only chat (``bench-chat``: Responses translated)."""
    path = os.path.join(tmp, "routes.yaml")
    db = os.path.join(tmp, "router.db")
    pool = f", max_connections: {max_connections}" if max_connections else ""
    storage = STORAGE["url"]
    storage_url = "null" if storage == "off" else f'"{storage or f"sqlite+aiosqlite:///{db}"}"'
    text = f"""\
# The feature set as shipped: live stats, score/p2c, retries armed (defaults), the
# request log on SQLite, metrics. Two OpenAI-compatible endpoints on the zero upstream.
server: {{host: 127.0.0.1, port: 8080}}
storage: {{url: {storage_url}}}
providers:
  up-a: {{kind: openai, base_url: "{upstream}/v1"{pool}}}
  up-b: {{kind: openai, base_url: "{upstream}/v1"{pool}}}
policies:
  fastest:
    strategy: score
    weights: {{ttft: 1.0, error_rate: 4.0, throughput: 0.3}}
    pick: p2c
routes:
  bench:
    policy: fastest
    endpoints:
      - {{provider: up-a, model: bench-model}}
      - {{provider: up-b, model: bench-model}}
"""
    if agents:
        text = text.replace(
            "policies:",
            f'  msg-a: {{kind: anthropic, base_url: "{upstream}/v1"{pool}}}\n'
            f'  msg-b: {{kind: anthropic, base_url: "{upstream}/v1"{pool}}}\n'
            f'  chat-a: {{kind: openai, base_url: "{upstream}/v1", apis: [chat]{pool}}}\n'
            f'  chat-b: {{kind: openai, base_url: "{upstream}/v1", apis: [chat]{pool}}}\n'
            "policies:",
        )
        for route, prefix in (("bench-msg", "msg"), ("bench-chat", "chat")):
            text += (
                f"  {route}:\n    policy: fastest\n    endpoints:\n"
                f"      - {{provider: {prefix}-a, model: bench-model}}\n"
                f"      - {{provider: {prefix}-b, model: bench-model}}\n"
            )
    with open(path, "w") as f:
        f.write(text)
    return path


def litellm_config(tmp: str, upstream: str) -> str:
    path = os.path.join(tmp, "litellm.yaml")
    deployments = "".join(
        f"""\
  - model_name: bench
    litellm_params: {{model: openai/bench-model, api_base: "{upstream}/v1", api_key: sk-bench}}
    model_info: {{id: up-{x}}}
"""
        for x in ("a", "b")
    )
    text = f"""\
# Equivalent of the router's config: two deployments, shuffled, retries armed.
model_list:
{deployments}router_settings:
  routing_strategy: simple-shuffle
  num_retries: 2
litellm_settings:
  num_retries: 2
  request_timeout: 600
  telemetry: false
general_settings:
  # No client auth on either side (the router runs with client keys unset too).
  dangerously_permit_weak_or_unset_master_key: true
"""
    with open(path, "w") as f:
        f.write(text)
    return path


def loadgen(
    url: str, mode: str, tokens: int, conns: int, duration: float, core: str | None = "1"
) -> dict[str, Any]:
    cmd = [
        PY,
        os.path.join(HERE, "loadgen.py"),
        "--url",
        url,
        "--mode",
        mode,
        "--tokens",
        str(tokens),
        "--conns",
        str(conns),
        "--duration",
        str(duration),
        "--timeout",
        "30",
    ]
    out = subprocess.run(
        pinned(core, cmd),
        capture_output=True,
        timeout=duration + 90,
        check=False,
        preexec_fn=raise_nofile,
    )
    if out.returncode != 0:
        raise RuntimeError(f"loadgen failed: {out.stderr.decode()[-2000:]}")
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def measure(
    proc: Proc | None,
    url: str,
    mode: str,
    tokens: int,
    conns: int,
    duration: float,
    core: str | None = "1",
    upstream: Proc | None = None,
) -> dict[str, Any]:
    cpu0 = cpu_seconds(proc.pid) if proc else None
    up0 = cpu_seconds(upstream.pid) if upstream else None
    busy0, t0 = machine_busy_seconds(), time.perf_counter()
    res = loadgen(url, mode, tokens, conns, duration, core)
    busy1, t1 = machine_busy_seconds(), time.perf_counter()
    up1 = cpu_seconds(upstream.pid) if upstream else None
    cpu1 = cpu_seconds(proc.pid) if proc else None
    if busy0 is not None and busy1 is not None:
        # Cores kept busy by anything but this benchmark (a shared machine is noisy):
        # every core's busy time, less the gateway's, the upstream's and the loadgen's.
        ours = res["loadgen_cpu_s"] + ((cpu1 or 0.0) - (cpu0 or 0.0))
        if up0 is not None and up1 is not None:
            ours += up1 - up0
        res["other_cores"] = max(0.0, (busy1 - busy0) - ours) / (t1 - t0)
    if proc is not None:
        if cpu0 is not None and cpu1 is not None and res["completed"]:
            res["cpu_ms_per_req"] = (cpu1 - cpu0) * 1000.0 / res["completed"]
            res["cpu_frac"] = (cpu1 - cpu0) / max(res["duration_s"], 1e-9)
        res["rss_mb"] = rss_mb(proc.pid)
    return res


# -- presentation ---------------------------------------------------------------------


def f(x: float | None, nd: int = 2) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


def ratio(a: float | None, b: float | None, nd: int = 2) -> str:
    return "-" if not a or not b else f"{a / b:.{nd}f}"


def cell_key(r: dict[str, Any]) -> tuple[str, int, int]:
    return (r["mode"], r["tokens"], r["conns"])


def print_table(rows: list[dict[str, Any]], out: Any = sys.stdout) -> None:
    by = {(r["target"], *cell_key(r)): r for r in rows}
    head = [
        "target",
        "mode",
        "conns",
        "req/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "ttft50",
        "ttft99",
        "cpu ms/req",
        "rss MB",
        "err",
        "noise",
        "x bare",
        "x direct",
        "+p50 ms",
        "+ttft50",
        "cpu x bare",
    ]
    print("| " + " | ".join(head) + " |", file=out)
    print("|" + "|".join("---" for _ in head) + "|", file=out)
    for r in rows:
        mode, tokens, conns = cell_key(r)
        bare = by.get(("bare", mode, tokens, conns))
        direct = by.get(("direct", mode, tokens, conns))
        lat, ttft = r["latency_ms"], r["ttft_ms"] or {}
        dlat = direct["latency_ms"]["p50"] if direct else None
        dttft = (direct["ttft_ms"] or {}).get("p50") if direct else None
        added = None if dlat is None or lat["p50"] is None else lat["p50"] - dlat
        added_t = None if dttft is None or ttft.get("p50") is None else ttft["p50"] - dttft
        label = "non-stream" if mode == "nonstream" else "stream"
        cells = [
            r["target"],
            f"{label} {tokens}",
            str(conns),
            f(r["rps"], 0),
            f(lat["p50"]),
            f(lat["p90"]),
            f(lat["p99"]),
            f(ttft.get("p50")),
            f(ttft.get("p99")),
            f(r.get("cpu_ms_per_req"), 3),
            f(r.get("rss_mb"), 0),
            str(r["errors"]),
            f(r.get("other_cores"), 2),
            ratio(r["rps"], bare["rps"] if bare else None),
            ratio(r["rps"], direct["rps"] if direct else None),
            "-" if r["target"] == "direct" else f(added),
            "-" if r["target"] == "direct" or mode != "stream" else f(added_t),
            ratio(r.get("cpu_ms_per_req"), bare.get("cpu_ms_per_req") if bare else None),
        ]
        print("| " + " | ".join(cells) + " |", file=out)


def print_targets(
    rows: list[dict[str, Any]], procs: dict[str, dict[str, Any]], out: Any = sys.stdout
) -> None:
    """The issue's targets, each as a ratio from this run."""
    by = {(r["target"], *cell_key(r)): r for r in rows}

    def get(t: str, m: str, k: int, c: int) -> dict[str, Any] | None:
        return by.get((t, m, k, c))

    lines = []
    for mode, tokens in MODES:
        for conns in (16, 64):
            r, b, l_ = (get(t, mode, tokens, conns) for t in ("router", "bare", "litellm"))
            if r and b:
                lines.append(
                    f"throughput {mode} {tokens} @{conns}: router/bare = "
                    f"{ratio(r['rps'], b['rps'])} (target >= 1.00)"
                    + (
                        f"; router/litellm = {ratio(r['rps'], l_['rps'], 1)} (target >= 40)"
                        if l_
                        else ""
                    )
                )
            if r and b and r.get("cpu_ms_per_req") and b.get("cpu_ms_per_req"):
                lines.append(
                    f"cpu/req    {mode} {tokens} @{conns}: router/bare = "
                    f"{ratio(r['cpu_ms_per_req'], b['cpu_ms_per_req'])} (target <= 1.20)"
                )
        r, b, d = (get(t, mode, tokens, 1) for t in ("router", "bare", "direct"))
        if r and b and d:
            rl = r["latency_ms"]["p50"] - d["latency_ms"]["p50"]
            bl = b["latency_ms"]["p50"] - d["latency_ms"]["p50"]
            lines.append(
                f"added p50  {mode} {tokens} @1: router {rl:.3f} ms, bare {bl:.3f} ms, "
                f"difference {rl - bl:+.3f} ms (target <= +0.100)"
            )
            if mode == "stream":
                rt = r["ttft_ms"]["p50"] - d["ttft_ms"]["p50"]
                bt = b["ttft_ms"]["p50"] - d["ttft_ms"]["p50"]
                lines.append(
                    f"added TTFT {mode} {tokens} @1: router {rt:.3f} ms, bare {bt:.3f} ms,"
                    f" difference {rt - bt:+.3f} ms (target <= +0.100)"
                )
    for name, p in procs.items():
        lines.append(
            f"start-up   {name}: ready in {f(p.get('ready_s'), 3)} s, idle RSS "
            f"{f(p.get('idle_rss_mb'), 1)} MB"
            + (" (targets: <= 1 s, <= 60 MB)" if name == "router" else "")
        )
    for line in lines:
        print("- " + line, file=out)


# -- the run --------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="gateway benchmark: router vs bare hop vs LiteLLM")
    ap.add_argument("--duration", type=float, default=1.5, help="seconds per run of a cell")
    ap.add_argument("--quick", action="store_true", help="~1 minute: 1 s cells, one run each")
    ap.add_argument(
        "--repeat",
        type=int,
        default=5,
        help="runs per cell, the targets taking turns; each target's median run is kept",
    )
    ap.add_argument(
        "--only",
        default=",".join(ALL_TARGETS),
        help="targets, comma-separated (direct,bare,router,litellm)",
    )
    ap.add_argument("--conns", default="1,16,64")
    ap.add_argument("--modes", default="nonstream16,stream16,stream256")
    ap.add_argument(
        "--storage",
        default="",
        help="the router's request log: default SQLite (as shipped), 'off', or a database URL",
    )
    ap.add_argument("--no-workers", action="store_true", help="skip the --workers 1/2 runs")
    ap.add_argument(
        "--upstream",
        choices=["zero", "zero-per-token", "sim"],
        default="zero",
        help="zero: benchmarks/zero_upstream.py, a stream in one write; "
        "zero-per-token: one write per SSE event; sim: router sim-upstream "
        "(itself the bottleneck for streams)",
    )
    ap.add_argument(
        "--wait-quiet",
        type=float,
        default=30.0,
        help="first wait up to S seconds for other processes to go quiet",
    )
    ap.add_argument("--json", help="also write every measurement to this file")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs, db)")
    args = ap.parse_args(argv)
    duration = 1.0 if args.quick else args.duration
    repeat = 1 if args.quick else max(1, args.repeat)
    targets = [t for t in ALL_TARGETS if t in args.only.split(",")]
    if "litellm" in targets and not os.path.exists(PEER):
        targets.remove("litellm")
        print(
            "# litellm: not installed (make bench-peer installs it in .bench-peer/)",
            file=sys.stderr,
        )
    conns_list = [int(c) for c in args.conns.split(",")]
    modes = [m for m in MODES if f"{m[0]}{m[1]}" in args.modes.split(",")]
    raise_nofile()
    STORAGE["url"] = args.storage

    if args.wait_quiet > 0:
        other = wait_quiet(args.wait_quiet)
        print(f"# other processes keep {other:.2f} cores busy", file=sys.stderr, flush=True)
    tmp = tempfile.mkdtemp(prefix="router-perf-")
    bench = Bench(tmp)
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    startup: dict[str, dict[str, Any]] = {}
    workers: list[dict[str, Any]] = []
    gw_core = "0"
    try:
        up_port = free_port()
        upstream_url = f"http://127.0.0.1:{up_port}"
        if args.upstream.startswith("zero"):
            up_cmd = [PY, os.path.join(HERE, "zero_upstream.py"), "--port", str(up_port)]
            if args.upstream == "zero-per-token":
                up_cmd.append("--per-token")
            up_ready = "/health"
        else:
            up_cmd = [
                PY,
                "-m",
                "router",
                "sim-upstream",
                "--port",
                str(up_port),
                "--ttft-ms",
                "0",
                "--tokens-per-s",
                "1e9",
                "--tokens",
                "4096",
            ]
            up_ready = "/v1/models"
        upstream = bench.start("upstream", up_cmd, upstream_url, up_ready, core="1")
        gateways: dict[str, Proc] = {}
        env = {"LITELLM_LOCAL_MODEL_COST_MAP": "True"}

        def start_gateway(name: str) -> Proc:
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            if name == "bare":
                cmd = [
                    PY,
                    os.path.join(HERE, "bare_proxy.py"),
                    "--port",
                    str(port),
                    "--upstream",
                    upstream_url,
                ]
                ready = "/health/ready"
            elif name == "router":
                cmd = router_cmd(router_config(tmp, upstream_url), port)
                ready = "/health/ready"
            else:
                cmd = [
                    PEER,
                    "--config",
                    litellm_config(tmp, upstream_url),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--num_workers",
                    "1",
                ]
                ready = "/health/readiness"
            proc = bench.start(name, cmd, url, ready, core=gw_core, env=env)
            proc.idle_rss_mb = settled_rss_mb(proc.pid)
            startup[name] = {"ready_s": proc.ready_s, "idle_rss_mb": proc.idle_rss_mb}
            print(
                f"# {name}: ready in {proc.ready_s:.3f} s, idle RSS {f(proc.idle_rss_mb, 1)} MB",
                file=sys.stderr,
                flush=True,
            )
            return proc

        for name in targets:
            if name != "direct":
                gateways[name] = start_gateway(name)

        def url_of(name: str) -> str:
            return upstream_url if name == "direct" else gateways[name].url

        # Warm-up: connection pools, caches, the first stats samples.
        for name in targets:
            for mode, tokens in modes:
                loadgen(url_of(name), mode, tokens, 16, 0.5 if args.quick else 1.0)
        print(f"# warm, {time.perf_counter() - started:.0f} s in", file=sys.stderr, flush=True)

        for mode, tokens in modes:
            for conns in conns_list:
                # The targets take turns, run after run, and each keeps its median run:
                # a core's speed on this shared machine drifts by tens of per cent within
                # seconds, which one run per target (or the best of two) reads as a
                # difference between the targets.
                runs: dict[str, list[dict[str, Any]]] = {name: [] for name in targets}
                for _ in range(repeat):
                    for name in targets:
                        res = measure(
                            gateways.get(name),
                            url_of(name),
                            mode,
                            tokens,
                            conns,
                            duration,
                            upstream=upstream,
                        )
                        runs[name].append(res)
                for name in targets:
                    res = sorted(runs[name], key=lambda r: r["rps"])[len(runs[name]) // 2]
                    res["target"] = name
                    rows.append(res)
                    print(
                        f"# {name:7} {mode:9} {tokens:3} x{conns:<3} {res['rps']:9.0f} req/s "
                        f"p50 {f(res['latency_ms']['p50'])} ms err {res['errors']} "
                        f"noise {f(res.get('other_cores'))}",
                        file=sys.stderr,
                        flush=True,
                    )

        if "router" in targets and not args.no_workers:
            # Unpinned: the workers, the upstream and the load generator share both cores.
            for g in gateways.values():
                g.stop()
            if HAS_TASKSET:
                subprocess.run(
                    ["taskset", "-a", "-pc", "0-1", str(upstream.pid)],
                    capture_output=True,
                    check=False,
                )
            config = router_config(tmp, upstream_url)
            for n in (1, 2):
                port = free_port()
                url = f"http://127.0.0.1:{port}"
                proc = bench.start(
                    f"router-w{n}",
                    router_cmd(config, port, "--workers", str(n)),
                    url,
                    "/health/ready",
                    core=None,
                )
                time.sleep(0.5 + 0.5 * n)  # every worker bound and ready
                loadgen(url, "nonstream", 16, 64, 1.0, core=None)
                res = measure(
                    proc, url, "nonstream", 16, 64, max(duration, 2.0), core=None, upstream=upstream
                )
                res["workers"] = n
                workers.append(res)
                proc.stop()
                print(
                    f"# router --workers {n}: {res['rps']:.0f} req/s", file=sys.stderr, flush=True
                )
    finally:
        bench.finish(args.keep)

    total = time.perf_counter() - started
    print(
        f"\n## Gateway benchmark ({time.strftime('%Y-%m-%d %H:%M')}, {repeat} x {duration:g} s per cell, "
        f"gateway pinned to core {gw_core if HAS_TASKSET else '-'}, loadgen+upstream on core 1, "
        f"upstream={args.upstream}, {total:.0f} s)\n"
    )
    print_table(rows)
    print(
        "\nx bare / x direct: req/s ratio to that target in the same cell; +p50/+ttft50: ms "
        "added over direct; cpu x bare: CPU per request ratio to bare; noise: cores kept "
        "busy by other processes during the cell (the machine is shared); median of "
        f"{repeat} run(s) per cell by req/s, the targets taking turns.\n"
    )
    if workers:
        print("### router --workers (unpinned; loadgen and upstream share the 2 cores)\n")
        print(
            "| workers | req/s | p50 ms | p99 ms | cpu ms/req | rss MB | loadgen cpu | noise "
            "| x w1 |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        for w in workers:
            print(
                f"| {w['workers']} | {w['rps']:.0f} | {f(w['latency_ms']['p50'])} | "
                f"{f(w['latency_ms']['p99'])} | {f(w.get('cpu_ms_per_req'), 3)} | "
                f"{f(w.get('rss_mb'), 0)} | {w['loadgen_cpu_frac']:.2f} | "
                f"{f(w.get('other_cores'))} | "
                f"{ratio(w['rps'], workers[0]['rps'])} |"
            )
        print()
    print("### Targets (ratios from this run)\n")
    print_targets(rows, startup)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(
                {
                    "rows": rows,
                    "startup": startup,
                    "workers": workers,
                    "duration": duration,
                    "seconds": total,
                },
                fh,
                indent=1,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
