"""`make soak`: 30 minutes of steady mixed load (``soak_mixed.py``); with ``--held``,
2,000 concurrent open streams through one router worker for 60 s (this module).

Why the held streams soak exists: a gateway that holds thousands of long LLM streams must not grow while it
does (a leak per request or per chunk shows up as RSS climbing with time, not with load).
One router worker (pinned to core 0 where ``taskset`` exists) serves the same two-endpoint
config as ``make bench``; the upstream (``zero_upstream.py``, on core 1 with the load
generator) paces its tokens (``--interval-ms``, one token a second by default), so every
stream stays open for ``--stream-s`` seconds; the load generator keeps ``--streams``
connections each with one stream open, re-opening a stream as soon as one ends, so the
router always holds them all while streams turn over. After a ramp (connection starts
spread over ``--ramp-s``, by default one stream's length, so streams end and are replaced
evenly rather than in synchronised waves) and one stream's length to settle (pools reach
their steady size), the hold lasts ``--hold-s``; RSS, open file descriptors and CPU of the
router are sampled every second, and the TTFT of the streams that ended every 5 s.
``--direct`` runs the same load straight at the upstream: the baseline for TTFT and for
what the machine can do.

Reports: errors (non-200s, streams cut short, connection failures), RSS idle / at peak /
mean over the first and the last 20 s of the hold, and the growth between those two.
Targets from the issue: <= 300 MB holding 2,000 streams, growth under 5%.

    python benchmarks/soak.py                            # mixed load, 30 minutes
    python benchmarks/soak.py --held                     # held streams, ~2 minutes
    python benchmarks/soak.py --held --streams 500 --hold-s 20
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import cpu_seconds, free_port, raise_nofile, rss_mb
from perf import HERE, PY, Bench, pinned, router_cmd, router_config


def open_fds(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="hold thousands of streams through one worker")
    ap.add_argument("--streams", type=int, default=2000)
    ap.add_argument("--hold-s", type=float, default=60.0)
    ap.add_argument(
        "--ramp-s",
        type=float,
        default=None,
        help="spread the connections' starts (default: one stream's length, so "
        "streams end and are replaced evenly, not in waves)",
    )
    ap.add_argument("--stream-s", type=float, default=20.0, help="how long one stream lasts")
    ap.add_argument("--interval-ms", type=float, default=1000.0, help="gap between tokens")
    ap.add_argument(
        "--settle-s",
        type=float,
        default=None,
        help="after the ramp, before the hold (default: one stream's length)",
    )
    ap.add_argument("--window-s", type=float, default=20.0, help="first/last window compared")
    ap.add_argument("--direct", action="store_true", help="no router: the upstream baseline")
    ap.add_argument("--json", help="also write the samples and the summary to this file")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs, db)")
    args = ap.parse_args(argv)
    raise_nofile()
    tokens = max(1, int(args.stream_s * 1000 / args.interval_ms))
    if args.ramp_s is None:
        args.ramp_s = args.stream_s
    settle = args.stream_s if args.settle_s is None else args.settle_s
    hold_from = args.ramp_s + settle

    tmp = tempfile.mkdtemp(prefix="router-soak-")
    bench = Bench(tmp)
    samples: list[dict[str, Any]] = []
    progress: list[dict[str, Any]] = []
    result: dict[str, Any] = {}
    try:
        up_port, port = free_port(), free_port()
        upstream_url = f"http://127.0.0.1:{up_port}"
        bench.start(
            "upstream",
            [
                PY,
                os.path.join(HERE, "zero_upstream.py"),
                "--port",
                str(up_port),
                "--interval-ms",
                str(args.interval_ms),
            ],
            upstream_url,
            "/health",
            core="1",
        )
        # Pools big enough for every stream: the default (1,000 per provider) is a setting,
        # not what this measures.
        config = router_config(tmp, upstream_url, max_connections=4 * args.streams)
        if args.direct:
            url, router = upstream_url, bench.procs[0]
        else:
            url = f"http://127.0.0.1:{port}"
            router = bench.start(
                "router",
                router_cmd(config, port),
                url,
                "/health/ready",
                core="0",
            )
        time.sleep(1.0)
        idle_rss = rss_mb(router.pid)
        print(
            f"# {router.name} ready in {router.ready_s:.2f} s, idle RSS {idle_rss:.1f} MB; "
            f"{args.streams} streams of {tokens} tokens every {args.interval_ms:g} ms, "
            f"ramp {args.ramp_s:g} s, hold {args.hold_s:g} s",
            file=sys.stderr,
            flush=True,
        )

        duration = hold_from + args.hold_s
        cmd = [
            PY,
            os.path.join(HERE, "loadgen.py"),
            "--url",
            url,
            "--mode",
            "stream",
            "--tokens",
            str(tokens),
            "--conns",
            str(args.streams),
            "--duration",
            str(duration),
            "--ramp-s",
            str(args.ramp_s),
            "--timeout",
            str(args.stream_s * 3 + 30),
            "--progress",
            "5",
        ]
        gen = subprocess.Popen(
            pinned("1", cmd),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            preexec_fn=raise_nofile,
        )

        def read_progress() -> None:
            assert gen.stderr is not None
            for line in gen.stderr:
                try:
                    progress.append(json.loads(line))
                except ValueError:
                    sys.stderr.write(line.decode("utf-8", "replace"))

        reader = threading.Thread(target=read_progress, daemon=True)
        reader.start()
        t0 = time.perf_counter()
        cpu_prev = cpu_seconds(router.pid) or 0.0
        bound = duration + args.stream_s * 3 + 60  # hard stop, whatever happens
        while gen.poll() is None and time.perf_counter() - t0 < bound:
            time.sleep(1.0)
            t = time.perf_counter() - t0
            cpu = cpu_seconds(router.pid) or 0.0
            samples.append(
                {
                    "t": round(t, 1),
                    "rss_mb": rss_mb(router.pid),
                    "fds": open_fds(router.pid),
                    "cpu": round(cpu - cpu_prev, 3),
                }
            )
            cpu_prev = cpu
            if len(samples) % 5 == 0:
                s = samples[-1]
                pr = progress[-1] if progress else {}
                print(
                    f"# t={t:5.0f}s rss {s['rss_mb']:.1f} MB fds {s['fds']} cpu "
                    f"{s['cpu'] * 100:.0f}% streams open {pr.get('in_flight', '-')} "
                    f"ttft p50 {pr.get('ttft_p50_ms')} p99 {pr.get('ttft_p99_ms')} ms",
                    file=sys.stderr,
                    flush=True,
                )
        if gen.poll() is None:
            gen.kill()
        out, _ = gen.communicate(timeout=30)
        reader.join(timeout=5)
        load = json.loads(out) if out.strip() else {}

        hold = [s for s in samples if hold_from <= s["t"] <= duration and s["rss_mb"]]
        first = [s["rss_mb"] for s in hold if s["t"] < hold_from + args.window_s]
        last = [s["rss_mb"] for s in hold if s["t"] > duration - args.window_s]
        held = [p["in_flight"] for p in progress if hold_from <= p["t"] <= duration]
        rss_first = statistics.mean(first) if first else None
        after_ramp = [s["rss_mb"] for s in samples if s["t"] >= args.ramp_s and s["rss_mb"]]
        ramp_rss = after_ramp[0] if after_ramp else None
        rss_last = statistics.mean(last) if last else None
        result = {
            "target": router.name,
            "settle_s": settle,
            "streams": args.streams,
            "hold_s": args.hold_s,
            "stream_s": args.stream_s,
            "tokens_per_stream": tokens,
            "idle_rss_mb": idle_rss,
            "peak_rss_mb": max((s["rss_mb"] for s in samples if s["rss_mb"]), default=None),
            "rss_first_window_mb": rss_first,
            "rss_last_window_mb": rss_last,
            "growth_pct": (rss_last / rss_first - 1) * 100 if rss_first and rss_last else None,
            "growth_from_ramp_pct": (rss_last / ramp_rss - 1) * 100
            if ramp_rss and rss_last
            else None,
            "open_streams_min": min(held, default=None),
            "open_streams_max": max(held, default=None),
            "peak_fds": max((s["fds"] or 0 for s in samples), default=None),
            "router_cpu_frac": (statistics.mean(s["cpu"] for s in hold) if hold else None),
            "completed": load.get("completed"),
            "errors": load.get("errors"),
            "error_statuses": load.get("error_statuses"),
            "failures": load.get("failures"),
            "ttft_ms": load.get("ttft_ms"),
            "latency_ms": load.get("latency_ms"),
            "loadgen_cpu_frac": load.get("loadgen_cpu_frac"),
        }
    finally:
        bench.finish(args.keep)

    def f(x: Any, nd: int = 1) -> str:
        return "-" if x is None else f"{x:.{nd}f}"

    through = "straight to the upstream" if args.direct else "through one router worker"
    print(
        f"\n## Soak: {result['streams']} open streams {through}, {settle:g} s to settle "
        f"after a {args.ramp_s:g} s ramp, then a {result['hold_s']:g} s hold "
        f"({time.strftime('%Y-%m-%d %H:%M')})\n"
    )
    print(
        f"| t s | RSS MB | open fds | {router.name} CPU % | streams open | streams ended "
        "| their TTFT p50 / p99 ms |"
    )
    print("|---|---|---|---|---|---|---|")
    for s in samples[4::5]:
        pr = next((p for p in reversed(progress) if p["t"] <= s["t"] + 0.5), {})
        print(
            f"| {s['t']:.0f} | {f(s['rss_mb'])} | {s['fds']} | {s['cpu'] * 100:.0f} | "
            f"{pr.get('in_flight', '-')} | {pr.get('new', '-')} | "
            f"{f(pr.get('ttft_p50_ms'))} / {f(pr.get('ttft_p99_ms'))} |"
        )
    lat, ttft = result["latency_ms"] or {}, result["ttft_ms"] or {}
    print(f"""
- streams completed: {result["completed"]}, errors: {result["errors"]} \
{result["error_statuses"] or ""} {result["failures"] or ""}
- streams open during the hold (sampled every 5 s): {result["open_streams_min"]} \
to {result["open_streams_max"]}; peak open fds {result["peak_fds"]}
- stream latency p50 {f(lat.get("p50"), 0)} ms, p99 {f(lat.get("p99"), 0)} ms; TTFT p50 \
{f(ttft.get("p50"), 2)} ms, p99 {f(ttft.get("p99"), 2)} ms
- RSS: idle {f(result["idle_rss_mb"])} MB, peak {f(result["peak_rss_mb"])} MB (target <= 300), \
first {args.window_s:g} s of the hold {f(result["rss_first_window_mb"])} MB, last \
{args.window_s:g} s {f(result["rss_last_window_mb"])} MB: growth \
{f(result["growth_pct"], 2)}% (target < 5%); growth from the end of the ramp: \
{f(result["growth_from_ramp_pct"], 2)}%
- {router.name} CPU during the hold: {f((result["router_cpu_frac"] or 0) * 100, 0)}% of one \
core; load generator {f((result["loadgen_cpu_frac"] or 0) * 100, 0)}%""")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"summary": result, "samples": samples, "progress": progress}, fh, indent=1)
    return 0 if result.get("errors") == 0 else 1


def dispatch(argv: list[str]) -> int:
    """``--held``: this module's soak; else the mixed one (``soak_mixed.py``)."""
    if "--held" in argv:
        return main([a for a in argv if a != "--held"])
    import soak_mixed

    return soak_mixed.main(argv)


if __name__ == "__main__":
    sys.exit(dispatch(sys.argv[1:]))
