"""Test helpers: the real router and real upstreams on loopback ports.

``RouterProcess`` runs ``python -m router serve`` as a user would. ``SimProcess`` runs
``python -m router sim-upstream``. ``FakeUpstream`` is an OpenAI-compatible aiohttp
server in a background thread that records what it receives and fails on demand:
tests set ``fake.behaviour`` to one of its modes (or their own coroutine).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float = 15.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            httpx.get(url, timeout=1.0)
            return
        except httpx.HTTPError as exc:
            last = exc
            time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer within {timeout}s: {last}")


class RouterProcess:
    """``router serve`` on a free loopback port, with its logs captured."""

    def __init__(
        self,
        config: str | Path,
        tmp: Path,
        *,
        env: dict[str, str] | None = None,
        port: int | None = None,
        args: tuple[str, ...] = (),
    ) -> None:
        self.args = args
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.base_url = f"{self.url}/v1"
        text = str(config)
        config_path = Path(config)
        if "\n" in text or not config_path.exists():  # YAML text, not a path to a file
            config_path = tmp / "routes.yaml"
            config_path.write_text(text)
        self.config_path = config_path
        self.log_path = tmp / f"router-{self.port}.log"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("ROUTER_")},
            "LOG_FORMAT": "json",
            "LOG_LEVEL": "info",
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.cwd = tmp

    def start(self) -> RouterProcess:
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "router",
                "serve",
                "--config",
                str(self.config_path),
                "--port",
                str(self.port),
                *self.args,
            ],
            env=self.env,
            cwd=self.cwd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        try:
            # Generous: a router importing litellm on a busy 2-core machine takes a while.
            wait_http(f"{self.url}/health/live", timeout=45.0, proc=self.proc)
        except BaseException:
            self.stop(signal.SIGKILL)  # no process or open log left for later tests to trip on
            raise
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def logs(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def health(self) -> dict[str, Any]:
        return httpx.get(f"{self.url}/health", timeout=5).json()

    def __enter__(self) -> RouterProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class SimProcess:
    """``router sim-upstream`` on a free port."""

    def __init__(self, *args: str, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.base_url = f"{self.url}/v1"
        self.args = list(args)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> SimProcess:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "router", "sim-upstream", "--port", str(self.port), *self.args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_http(f"{self.url}/stats", timeout=30.0, proc=self.proc)
        except BaseException:
            self.stop()
            raise
        return self

    def control(self, **changes: Any) -> None:
        httpx.post(f"{self.url}/control", json=changes, timeout=5).raise_for_status()

    def received(self) -> int:
        return int(httpx.get(f"{self.url}/stats", timeout=5).json()["received"])

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> SimProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- an in-thread fake upstream ----------------------------------------------------------

Behaviour = Callable[["FakeUpstream", web.Request, dict[str, Any]], Awaitable[web.StreamResponse]]


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    peer: Any = None  # the router's end of the connection: one per pooled connection


def chat_body(
    text: str = "hello from fake", model: str = "fake-model", **extra: Any
) -> dict[str, Any]:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 1,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text, **extra},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
    }


def sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def chunk(
    content: str | None = None,
    *,
    finish: str | None = None,
    model: str = "fake-model",
    usage: dict[str, Any] | None = None,
    delta: dict[str, Any] | None = None,
) -> bytes:
    d = delta if delta is not None else ({} if content is None else {"content": content})
    body: dict[str, Any] = {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": model,
        "choices": [{"index": 0, "delta": d, "finish_reason": finish}],
    }
    if usage is not None:
        body = {**body, "choices": [], "usage": usage}
    return sse(body)


async def open_stream(request: web.Request) -> web.StreamResponse:
    """An SSE answer with its headers and OpenAI's role chunk sent, as real hosts begin."""
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    await resp.write(chunk(delta={"role": "assistant", "content": ""}))
    return resp


def slow_tokens(interval: float, count: int = 200) -> Behaviour:
    """A stream of ``count`` tokens ``t0 t1 ...``, one every ``interval`` seconds."""

    async def behaviour(
        fake: FakeUpstream, request: web.Request, body: dict[str, Any]
    ) -> web.StreamResponse:
        resp = await open_stream(request)
        for i in range(count):
            await resp.write(chunk(f"t{i} "))
            await asyncio.sleep(interval)
        await resp.write(chunk(finish="stop"))
        await resp.write(b"data: [DONE]\n\n")
        return resp

    return behaviour


async def ok_json(
    fake: FakeUpstream, request: web.Request, body: dict[str, Any]
) -> web.StreamResponse:
    if body.get("stream"):
        return await ok_stream(fake, request, body)
    return web.json_response(chat_body(fake.text, model=body.get("model", "x")))


async def ok_stream(
    fake: FakeUpstream, request: web.Request, body: dict[str, Any]
) -> web.StreamResponse:
    resp = await open_stream(request)
    for word in fake.text.split(" "):
        await resp.write(chunk(word + " "))
    await resp.write(chunk(finish="stop"))
    opts = body.get("stream_options") or {}
    if opts.get("include_usage"):
        await resp.write(
            chunk(usage={"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8})
        )
    await resp.write(b"data: [DONE]\n\n")
    return resp


def status(
    code: int, headers: dict[str, str] | None = None, message: str = "fake failure"
) -> Behaviour:
    async def behaviour(
        fake: FakeUpstream, request: web.Request, body: dict[str, Any]
    ) -> web.StreamResponse:
        return web.json_response(
            {"error": {"message": message, "type": "fake", "code": None, "param": None}},
            status=code,
            headers=headers,
        )

    return behaviour


async def hang_before_headers(
    fake: FakeUpstream, request: web.Request, body: dict[str, Any]
) -> web.StreamResponse:
    await asyncio.sleep(3600)
    raise AssertionError("unreachable")


async def hang_after_headers(
    fake: FakeUpstream, request: web.Request, body: dict[str, Any]
) -> web.StreamResponse:
    resp = await open_stream(request)
    await asyncio.sleep(3600)
    return resp


async def reset_mid_stream(
    fake: FakeUpstream, request: web.Request, body: dict[str, Any]
) -> web.StreamResponse:
    resp = await open_stream(request)
    await resp.write(chunk("partial "))
    await resp.write(chunk("answer "))
    await asyncio.sleep(0.05)
    assert request.transport is not None
    request.transport.abort()
    return resp


async def garbage(
    fake: FakeUpstream, request: web.Request, body: dict[str, Any]
) -> web.StreamResponse:
    return web.Response(
        body=b"<html>502 bad gateway from some proxy</html>", content_type="text/html"
    )


@dataclass
class FakeUpstream:
    """An OpenAI-compatible upstream in a background thread; fails on demand."""

    text: str = "hello from fake"
    behaviour: Behaviour = ok_json
    received: list[Received] = field(default_factory=list)
    port: int = 0
    disconnected: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.port = self.port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.base_url = f"{self.url}/v1"
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = json.loads(raw)
        except json.JSONDecodeError:
            body = {"_raw": raw.decode(errors="replace")}
        peer = request.transport.get_extra_info("peername") if request.transport else None
        self.received.append(Received(request.path, dict(request.headers), body, peer))
        try:
            return await self.behaviour(self, request, body)
        except asyncio.CancelledError:
            self.disconnected.set()  # the router closed our connection
            raise

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_post("/v1/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        self._loop.run_until_complete(site.start())
        self._started.set()
        self._loop.run_forever()

    def start(self) -> FakeUpstream:
        self._thread.start()
        if not self._started.wait(10):
            raise TimeoutError("fake upstream did not start")
        return self

    def stop(self) -> None:
        async def shutdown() -> None:
            if self._runner is not None:
                await self._runner.cleanup()

        if self._thread.is_alive():
            fut = asyncio.run_coroutine_threadsafe(shutdown(), self._loop)
            with contextlib.suppress(Exception):  # best effort at teardown
                fut.result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> FakeUpstream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def routes_yaml(routes: str, providers: str, *, extra: str = "") -> str:
    """A minimal routes file around the given ``providers:`` and ``routes:`` blocks."""
    return f"storage: {{url: null}}\n{extra}\nproviders:\n{providers}\nroutes:\n{routes}\n"


def poll(check: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Whether ``check`` came true within ``timeout`` (checked every 20 ms)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return check()
