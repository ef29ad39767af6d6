"""Shared pieces of the routing benchmarks: processes on loopback and a streaming client.

Each benchmark starts real ``router sim-upstream`` processes and a real ``router serve``
and drives them with an aiohttp client that reads the SSE stream and times the first
content token, so the numbers are what a client of the router would see.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(url: str, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except (urllib.error.URLError, ConnectionError, OSError):
            time.sleep(0.05)
    raise TimeoutError(url)


class Sim:
    def __init__(self, name: str, *args: str) -> None:
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Sim:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "router", "sim-upstream", "--port", str(self.port), *self.args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait(f"{self.url}/stats", self.proc)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    async def control(self, session: aiohttp.ClientSession, **changes: Any) -> None:
        async with session.post(f"{self.url}/control", json=changes) as r:
            r.raise_for_status()


class Router:
    def __init__(self, config: str, env: dict[str, str] | None = None) -> None:
        self.dir = tempfile.mkdtemp(prefix="router-bench-")
        self.config = Path(self.dir) / "routes.yaml"
        self.config.write_text(config)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "LOG_LEVEL": "warning", **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Router:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "router",
                "serve",
                "--config",
                str(self.config),
                "--port",
                str(self.port),
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(Path(self.dir) / "router.log", "wb"),  # noqa: SIM115 - lives with the process
            env=self.env,
            cwd=self.dir,
        )
        _wait(f"{self.url}/health/live", self.proc)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@dataclass
class Result:
    started: float
    ok: bool
    status: int
    ttft: float | None
    latency: float
    endpoint: str | None
    attempts: int


@dataclass
class Run:
    results: list[Result] = field(default_factory=list)
    t0: float = 0.0


async def stream_once(
    session: aiohttp.ClientSession,
    url: str,
    model: str,
    body_extra: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    stream: bool = True,
    timeout: float = 60.0,
) -> Result:
    body = {"model": model, "stream": stream, "messages": [{"role": "user", "content": "hello"}]}
    body.update(body_extra or {})
    start = time.perf_counter()
    ttft = None
    status = 0
    endpoint = None
    attempts = 0
    ok = False
    try:
        async with session.post(
            f"{url}/v1/chat/completions",
            json=body,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as resp:
            status = resp.status
            endpoint = resp.headers.get("x-router-endpoint")
            attempts = int(resp.headers.get("x-router-attempts", "1"))
            if not stream:
                await resp.read()
                ttft = time.perf_counter() - start
                ok = status == 200
            else:
                done = False
                async for line in resp.content:
                    if not line.startswith(b"data: "):
                        continue
                    data = line[6:].strip()
                    if data == b"[DONE]":
                        done = True
                        break
                    if ttft is None and b'"content":"' in data and b'"content":""' not in data:
                        ttft = time.perf_counter() - start
                    if b'"error"' in data and b'"choices"' not in data:
                        break
                ok = status == 200 and done
    except (aiohttp.ClientError, TimeoutError):
        ok = False
    return Result(start, ok, status, ttft, time.perf_counter() - start, endpoint, attempts)


async def drive(
    url: str,
    model: str,
    *,
    n: int,
    concurrency: int,
    seed: int = 7,
    stream: bool = True,
    body_extra: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    on_progress: Any = None,
) -> Run:
    """``n`` requests at fixed concurrency; the think time between requests is seeded."""
    rng = random.Random(seed)
    gaps = [rng.uniform(0.0, 0.004) for _ in range(n)]
    run = Run(t0=time.perf_counter())
    next_i = 0
    conn = aiohttp.TCPConnector(limit=concurrency * 2)
    async with aiohttp.ClientSession(connector=conn) as session:

        async def worker() -> None:
            nonlocal next_i
            while next_i < n:
                i = next_i
                next_i += 1
                await asyncio.sleep(gaps[i])
                r = await stream_once(session, url, model, body_extra, headers, stream)
                run.results.append(r)
                if on_progress is not None:
                    await on_progress(i, r)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return run


def pct(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def summarise(run: Run, endpoints: Sequence[str], skip: int = 0) -> dict[str, Any]:
    res = sorted(run.results, key=lambda r: r.started)
    ttfts = [r.ttft * 1000 for r in res if r.ok and r.ttft is not None]
    lats = [r.latency * 1000 for r in res if r.ok]
    after = res[skip:]
    share = {e: sum(1 for r in after if r.endpoint == e) / max(1, len(after)) for e in endpoints}
    return {
        "n": len(res),
        "success": sum(r.ok for r in res) / max(1, len(res)),
        "ttft_p50": pct(ttfts, 0.5),
        "ttft_p95": pct(ttfts, 0.95),
        "ttft_p99": pct(ttfts, 0.99),
        "lat_p50": pct(lats, 0.5),
        "lat_p95": pct(lats, 0.95),
        "share": share,
        "attempts_mean": statistics.fmean(r.attempts for r in res) if res else 0.0,
    }


def table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for j, row in enumerate(rows):
        lines.append(
            "  ".join(
                c.rjust(w) if i else c.ljust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def dump(path: str | None, data: Any) -> None:
    if path:
        Path(path).write_text(json.dumps(data, indent=2, default=str))
