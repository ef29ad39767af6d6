"""``router``: serve, check a routes file, run a simulated upstream, or try a routes file
on recorded traffic (``simulate``, the policy lab)."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Coroutine
from typing import Any

DEFAULT_CONFIG = "routes.yaml"


def _run(main: Callable[[], Coroutine[Any, Any, int]]) -> int:
    try:
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(main())
    except ImportError:
        return asyncio.run(main())


def cmd_check(args: argparse.Namespace) -> int:
    from router.config import ConfigError, load, summary

    path = args.path or os.environ.get("ROUTER_CONFIG") or DEFAULT_CONFIG
    try:
        config = load(path)
    except ConfigError as exc:
        print(f"{path}: {len(exc.problems)} error(s)", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    print(summary(config))
    for warning in config.warnings:  # valid, so exit 0: but probably not what was meant
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def cmd_sim_upstream(args: argparse.Namespace) -> int:
    from aiohttp import web

    from providers.simulated import SimParams
    from router.sim_upstream import create_app

    params = SimParams(
        ttft_ms=args.ttft_ms,
        tokens_per_s=args.tokens_per_s,
        tokens=args.tokens,
        error_rate=args.error_rate,
        jitter=args.jitter,
        tail_prob=args.tail_prob,
        tail_ms=args.tail_ms,
        seed=args.seed,
        hang=args.hang,
        disconnect_mid_stream=args.disconnect_mid_stream,
        status=args.status,
        retry_after_s=args.retry_after_s,
    )

    async def main() -> int:
        runner = web.AppRunner(create_app(params), access_log=None, handler_cancellation=True)
        await runner.setup()
        site = web.TCPSite(runner, args.host, args.port, backlog=4096)
        await site.start()
        print(f"sim-upstream listening on http://{args.host}:{args.port}/v1", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await runner.cleanup()
        return 0

    return _run(main)


def cmd_serve(args: argparse.Namespace) -> int:
    config_path = args.config or os.environ.get("ROUTER_CONFIG") or DEFAULT_CONFIG
    if args.workers > 1:
        return _serve_workers(args, config_path)
    from router.app import serve

    return _run(lambda: serve(config_path, args.host, args.port, reuse_port=args.reuse_port))


def _serve_workers(args: argparse.Namespace, config_path: str) -> int:
    """N processes on one port (SO_REUSEPORT); the kernel spreads connections among them.

    They share a temporary directory where each keeps a snapshot of its metrics and
    health, so that /metrics and /health describe the whole service (``obs/workers.py``).
    """
    import shutil
    import tempfile

    from router.obs.workers import DIR_ENV, INDEX_ENV

    cmd = [sys.executable, "-m", "router", "serve", "--config", config_path, "--reuse-port"]
    if args.host:
        cmd += ["--host", args.host]
    if args.port is not None:
        cmd += ["--port", str(args.port)]
    shared = tempfile.mkdtemp(prefix="router-workers-")
    try:
        return _run_children(cmd, args.workers, shared, DIR_ENV, INDEX_ENV)
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def _run_children(cmd: list[str], n: int, shared: str, dir_env: str, index_env: str) -> int:
    children = [
        subprocess.Popen(cmd, env={**os.environ, dir_env: shared, index_env: str(i)})
        for i in range(n)
    ]

    def forward(sig: int, _frame: Any) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(sig)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    codes = [child.wait() for child in children]
    return max(codes, default=0)


def _version() -> str:
    """The installed package's version (the source tree's, when run from a checkout)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("llm-router")
    except PackageNotFoundError:
        return "0+unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="router", description=__doc__)
    parser.add_argument("--version", action="version", version=f"router {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve the routes file")
    serve.add_argument("--config", help="routes file (default: $ROUTER_CONFIG or ./routes.yaml)")
    serve.add_argument("--host", help="listen address (default: server.host)")
    serve.add_argument("--port", type=int, help="listen port (default: server.port)")
    serve.add_argument("--workers", type=int, default=1, help="processes sharing the port")
    serve.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    serve.set_defaults(func=cmd_serve)

    check = sub.add_parser("check", help="validate a routes file")
    check.add_argument(
        "path", nargs="?", help="routes file (default: $ROUTER_CONFIG or ./routes.yaml)"
    )
    check.set_defaults(func=cmd_check)

    sim = sub.add_parser(
        "sim-upstream",
        help="run a simulated provider (chat, completions, embeddings, Responses, Messages)",
    )
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, required=True)
    sim.add_argument("--ttft-ms", type=float, default=50.0)
    sim.add_argument("--tokens-per-s", type=float, default=100.0)
    sim.add_argument("--tokens", type=int, default=16, help="answer length in tokens")
    sim.add_argument("--error-rate", type=float, default=0.0)
    sim.add_argument("--jitter", type=float, default=0.0, help="log-normal sigma of the TTFT")
    sim.add_argument("--tail-prob", type=float, default=0.0, help="chance of a tail TTFT")
    sim.add_argument("--tail-ms", type=float, default=0.0, help="the tail TTFT")
    sim.add_argument("--seed", type=int)
    sim.add_argument("--status", type=int, help="answer every request with this status")
    sim.add_argument("--retry-after-s", type=float, help="Retry-After sent with --status")
    sim.add_argument("--hang", action="store_true", help="never answer")
    sim.add_argument("--disconnect-mid-stream", action="store_true")
    sim.set_defaults(func=cmd_sim_upstream)
    from router.lab.command import add_parser as add_simulate

    add_simulate(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
