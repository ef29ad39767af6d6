"""CPU per request of the upstream client: ours (providers/http1.py on httptools) against
aiohttp's public ``ClientSession``, in one process, against the zero upstream.

Why it exists: the OpenAI-compatible provider could use ``ClientSession`` (public API,
well kept) or its own small HTTP/1.1 client; this is the measurement that chose. Both
send the same body at the same concurrency and read the whole answer (a stream chunk by
chunk); the figure is the process's CPU time over the requests, the event loop included,
so read the two rows as a ratio within one run. Rounds alternate; the median is kept.

    python benchmarks/upstream_client.py [--requests 3000] [--conns 16] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable

import aiohttp
import orjson
import uvloop

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import free_port

from providers.base import UpstreamRequest
from providers.openai import OpenAIProvider

HERE = os.path.dirname(os.path.abspath(__file__))


def payload(stream: bool) -> dict[str, object]:
    return {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 16,
        "stream": stream,
    }


async def timed(one: Callable[[], Awaitable[None]], n: int, conns: int) -> float:
    """CPU microseconds per request for ``n`` requests over ``conns`` workers."""

    async def worker(count: int) -> None:
        for _ in range(count):
            await one()

    started = time.process_time()
    await asyncio.gather(*(worker(n // conns) for _ in range(conns)))
    return (time.process_time() - started) / (n // conns * conns) * 1e6


async def ours(base: str, stream: bool, n: int, conns: int) -> float:
    provider = OpenAIProvider(base)
    body = payload(stream)

    async def one() -> None:
        request = UpstreamRequest(
            "chat/completions", body, stream, "bench", read_s=30, first_s=30, total_s=30
        )
        response = await provider.send(request)
        if stream:
            async for _ in response.chunks():
                pass
        else:
            await response.read()

    try:
        return await timed(one, n, conns)
    finally:
        await provider.aclose()


async def session(base: str, stream: bool, n: int, conns: int) -> float:
    body = orjson.dumps(payload(stream))
    timeout = aiohttp.ClientTimeout(sock_connect=5, sock_read=30)
    connector = aiohttp.TCPConnector(limit=4096)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as client:

        async def one() -> None:
            async with client.post(
                f"{base}/chat/completions", data=body, headers={"Content-Type": "application/json"}
            ) as resp:
                if stream:
                    async for _ in resp.content.iter_any():
                        pass
                else:
                    await resp.read()

        return await timed(one, n, conns)


async def run(base: str, args: argparse.Namespace) -> None:
    clients = {"ours (providers/http1.py)": ours, "aiohttp.ClientSession": session}
    results: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.rounds):
        for name, client in clients.items():
            for stream in (False, True):
                mode = "stream" if stream else "nonstream"
                results.setdefault((name, mode), []).append(
                    await client(base, stream, args.requests, args.conns)
                )
    print(f"| client | mode | CPU us / request (median of {args.rounds}) |")
    print("|---|---|---|")
    for (name, mode), values in results.items():
        print(f"| {name} | {mode} | {sorted(values)[len(values) // 2]:.1f} |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--conns", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    port = free_port()
    upstream = subprocess.Popen(
        [sys.executable, os.path.join(HERE, "zero_upstream.py"), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                time.sleep(0.1)
        uvloop.run(run(f"http://127.0.0.1:{port}/v1", args))
    finally:
        upstream.terminate()
        upstream.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
