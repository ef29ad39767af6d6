"""``router simulate``: what would this routes file do to this traffic?

Reads the trace once, replays it through the config (and through ``--compare``'s, on the
same trace and seed), and prints the figures: a table, or JSON with ``--json``; with
``--report`` also a self-contained HTML page. How fast the replay ran goes to stderr,
never into the JSON, so the same inputs print the same JSON.
"""

from __future__ import annotations

import argparse
import gc
import sys
from operator import itemgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from router.lab.engine import Run
    from router.lab.trace import Trace


def parse_rate(value: str) -> float:
    """``2x``, ``2`` or ``0.5x``: arrivals that many times as fast as recorded."""
    raw = value[:-1] if value.lower().endswith("x") else value
    try:
        rate = float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a rate: {value!r} (e.g. 2x or 0.5x)") from None
    if not 0.0 < rate <= 1e6:
        raise argparse.ArgumentTypeError(f"the rate must be above 0, got {value!r}")
    return rate


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "simulate",
        help="replay traffic through a routes file in virtual time (the policy lab)",
        description=__doc__,
    )
    p.add_argument("--config", required=True, help="the routes file to try (A)")
    p.add_argument("--compare", metavar="B.yaml", help="a second routes file, side by side")
    p.add_argument(
        "--trace", required=True, help="a request-log database URL or a JSONL file of requests"
    )
    p.add_argument(
        "--requests", type=int, metavar="N",
        help="replay N requests: the trace's first N, or the trace repeated end to end",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rate", type=parse_rate, default=1.0, help="arrivals sped up: 2x, 0.5x")
    p.add_argument("--report", metavar="out.html", help="write a self-contained HTML report")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.set_defaults(func=main)


def _run(path: str, trace: Trace, args: argparse.Namespace) -> Run:
    from router.lab.engine import load_config, simulate_config

    config = load_config(path)
    return simulate_config(config, trace, requests=args.requests, seed=args.seed, rate=args.rate)


def main(args: argparse.Namespace) -> int:
    # Imported here: building the CLI's parser (for `router serve` too) costs nothing.
    from router.config import ConfigError
    from router.lab.figures import compare, summarise
    from router.lab.report import html_report, text, to_json
    from router.lab.trace import TraceError, read

    if args.requests is not None and args.requests < 1:
        print("router simulate: --requests must be at least 1", file=sys.stderr)
        return 2
    try:
        # The trace's first N requests; a trace of fewer is read whole and repeated.
        trace = read(args.trace, args.requests)
        paths = [args.config] + ([args.compare] if args.compare else [])
        runs = [_run(path, trace, args) for path in paths]
    except ConfigError as exc:
        print(f"{exc.path}: {len(exc.problems)} error(s)", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    except TraceError as exc:
        print(f"router simulate: {exc}", file=sys.stderr)
        return 1
    summaries = [summarise(run, path) for run, path in zip(runs, paths, strict=True)]
    last = max(map(itemgetter(0), runs[0].outcomes), default=0.0)  # the arrivals
    doc: dict[str, Any] = {
        "lab": {
            "trace": trace.source,
            "trace_requests": len(trace.requests),
            "trace_attempts": len(trace.attempts),
            "requests": len(runs[0].outcomes),
            "span_s": round(last, 3),
            "rate": args.rate,
            "seed": args.seed,
        },
        "runs": summaries,
    }
    if len(summaries) == 2:
        doc["diff"] = compare(summaries[0], summaries[1])
    for run, path in zip(runs, paths, strict=True):
        n = len(run.outcomes)
        print(
            f"router simulate: {path}: {n:,} requests in {run.wall_s:.2f} s wall, "
            f"{run.cpu_s:.2f} s CPU ({n / max(run.cpu_s, 1e-9):,.0f} requests per CPU second)",
            file=sys.stderr,
        )
    if args.report:
        Path(args.report).write_text(html_report(doc), encoding="utf-8")
    if args.json:
        sys.stdout.write(to_json(doc).decode())
    else:
        sys.stdout.write(text(doc))
    # The command ends here, and the process with it: the run's objects (millions for a
    # day's trace) set aside rather than walked once more by the collection at exit, 2 s
    # of a day's minute.
    gc.freeze()
    return 0
