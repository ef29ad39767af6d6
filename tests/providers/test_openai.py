"""The OpenAI-compatible provider's own HTTP client (providers/http1.py) against real sockets:
TLS with certificate checks, the connection cap, keep-alive and its limits."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from providers.base import UpstreamRequest
from providers.errors import UpstreamConnectError
from providers.openai import OpenAIProvider

ANSWER = b'{"choices": [{"message": {"content": "hi"}}]}'
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def request() -> UpstreamRequest:
    return UpstreamRequest(
        operation="chat/completions",
        payload={"model": "m", "messages": [{"role": "user", "content": "x"}]},
        stream=False,
        request_id="t",
        connect_s=5,
        read_s=10,
    )


async def serve(handler: Handler, ssl_context: ssl.SSLContext | None = None) -> web.AppRunner:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context).start()
    return runner


def port_of(runner: web.AppRunner) -> int:
    return runner.addresses[0][1]  # type: ignore[no-any-return]


def peer(req: web.Request) -> Any:
    return req.transport.get_extra_info("peername") if req.transport else None


def run(main: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(main(), 30))


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_tls_upstream_is_verified(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)

    async def ok(req: web.Request) -> web.Response:
        return web.Response(body=ANSWER, content_type="application/json")

    async def main() -> None:
        runner = await serve(ok, server_ctx)
        url = f"https://localhost:{port_of(runner)}/v1"
        try:
            # Not trusted: the certificate is checked, the request never sent.
            untrusting = OpenAIProvider(url)
            with pytest.raises(UpstreamConnectError, match=r"(?i)certificate"):
                await untrusting.send(request())
            await untrusting.aclose()
            # Trusted through the usual variable (OpenSSL's default verify paths).
            monkeypatch.setenv("SSL_CERT_FILE", str(cert))
            trusting = OpenAIProvider(url)
            answer = await trusting.send(request())
            assert answer.status == 200 and await answer.read() == ANSWER
            await trusting.aclose()
        finally:
            await runner.cleanup()

    run(main)


def test_connections_are_capped_at_max_connections() -> None:
    active = 0
    most = 0
    peers: set[Any] = set()

    async def slow(req: web.Request) -> web.Response:
        nonlocal active, most
        active += 1
        most = max(most, active)
        peers.add(peer(req))
        await asyncio.sleep(0.02)
        active -= 1
        return web.Response(body=ANSWER, content_type="application/json")

    async def main() -> None:
        runner = await serve(slow)
        provider = OpenAIProvider(f"http://127.0.0.1:{port_of(runner)}/v1", max_connections=2)

        async def one() -> bytes:
            answer = await provider.send(request())
            return await answer.read()

        try:
            bodies = await asyncio.gather(*(one() for _ in range(8)))
        finally:
            await provider.aclose()
            await runner.cleanup()
        assert bodies == [ANSWER] * 8
        assert most == 2 and len(peers) == 2

    run(main)


def test_an_answer_that_closes_its_connection_is_not_reused() -> None:
    peers: list[Any] = []

    async def closing(req: web.Request) -> web.Response:
        peers.append(peer(req))
        resp = web.Response(body=ANSWER, content_type="application/json")
        resp.force_close()  # "Connection: close"
        return resp

    async def main() -> None:
        runner = await serve(closing)
        provider = OpenAIProvider(f"http://127.0.0.1:{port_of(runner)}/v1")
        try:
            for _ in range(3):
                answer = await provider.send(request())
                assert await answer.read() == ANSWER
        finally:
            await provider.aclose()
            await runner.cleanup()
        assert len(set(peers)) == 3

    run(main)


def test_a_request_cancelled_as_its_turn_came_passes_the_turn_on() -> None:
    release = asyncio.Event()

    async def slow_body(req: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(req)
        await release.wait()
        await resp.write(ANSWER)
        return resp

    async def main() -> None:
        runner = await serve(slow_body)
        provider = OpenAIProvider(f"http://127.0.0.1:{port_of(runner)}/v1", max_connections=1)
        try:
            first = await provider.send(request())  # holds the only connection
            a = asyncio.create_task(provider.send(request()))
            b = asyncio.create_task(provider.send(request()))
            await asyncio.sleep(0.05)
            assert not a.done() and not b.done()
            first.close()  # gives the turn to a...
            a.cancel()  # ...which is cancelled before it runs: b must get the turn
            release.set()
            answer = await asyncio.wait_for(b, 5)
            assert await answer.read() == ANSWER
            assert a.cancelled()
        finally:
            await provider.aclose()
            await runner.cleanup()

    run(main)


def test_an_upstream_that_does_not_speak_http_is_a_connect_error() -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1024)
        writer.write(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")
        await writer.drain()
        writer.close()

    async def main() -> None:
        server = await asyncio.start_server(garbage, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        provider = OpenAIProvider(f"http://127.0.0.1:{port}/v1")
        try:
            with pytest.raises(UpstreamConnectError, match="not an HTTP answer"):
                await provider.send(request())
        finally:
            await provider.aclose()
            server.close()
            await server.wait_closed()

    run(main)
