"""The server layer (router/http/server.py) with handlers of its own, over real sockets: what
happens when a handler fails before or after its answer began, back-pressure from a slow
reader, and draining on shutdown. (tests/e2e/test_http.py covers HTTP/1.1 on the wire
through the whole service.)"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from router.http.server import HttpServer, Request, Response, Stream

Handler = Callable[[Request], Awaitable[Response | Stream]]
GET = b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n"


def run(main: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(main(), 30))


async def start(handler: Handler, **options: float) -> HttpServer:
    server = HttpServer(handler, **options)
    await server.start("127.0.0.1", 0)
    return server


@contextlib.asynccontextmanager
async def connected(
    handler: Handler, **options: float
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """A server for ``handler`` and one client connection to it (reading 64 KiB at most
    ahead), both closed at the end."""
    server = await start(handler, **options)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port, limit=1 << 16)
    try:
        yield reader, writer
    finally:
        writer.close()
        await server.shutdown(1)


async def read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = b""
    while True:
        size = int((await reader.readuntil(b"\r\n")).strip(), 16)
        chunk = await reader.readexactly(size + 2)
        if size == 0:
            return body
        body += chunk[:-2]


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One answer: status, headers (lower-cased names), and the body as framed."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode()
    status_line, *lines = head.split("\r\n")
    headers = {}
    for line in lines:
        if line:
            name, _, value = line.partition(":")
            headers[name.lower()] = value.strip()
    if headers.get("transfer-encoding") == "chunked":
        body = await read_chunked(reader)
    else:
        body = await reader.readexactly(int(headers["content-length"]))
    return int(status_line.split()[1]), headers, body


def test_a_failing_handler_answers_500_and_the_connection_serves_on() -> None:
    calls = 0

    async def handler(request: Request) -> Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ValueError("a bug")
        return Response(200, b'{"ok":true}')

    async def main() -> None:
        async with connected(handler) as (reader, writer):
            writer.write(GET)
            status, headers, body = await read_answer(reader)
            assert status == 500
            assert headers["content-type"] == "application/json"
            assert json.loads(body)["error"]["type"] == "server_error"
            writer.write(GET)
            assert (await read_answer(reader))[0] == 200

    run(main)


def test_a_handler_failing_mid_stream_ends_the_connection_without_a_second_answer() -> None:
    async def handler(request: Request) -> Stream:
        stream = Stream(request, 200, {"Content-Type": "text/event-stream"})
        await stream.write(b"data: 1\n\n")
        raise ValueError("a bug after the answer began")

    async def main() -> None:
        async with connected(handler) as (reader, writer):
            writer.write(GET)
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200")
            rest = await asyncio.wait_for(reader.read(), 5)  # up to the close
            assert rest == b"9\r\ndata: 1\n\n\r\n"  # the chunk, and no 500 after it

    run(main)


def test_a_write_after_the_end_of_a_stream_sends_nothing() -> None:
    async def handler(request: Request) -> Stream:
        stream = Stream(request, 200, {"Content-Type": "text/event-stream"})
        await stream.write_eof(b"data: [DONE]\n\n")
        await stream.write(b"data: late\n\n")
        return stream

    async def main() -> None:
        async with connected(handler) as (reader, writer):
            writer.write(GET + GET)  # pipelined: the second answer must parse cleanly
            for _ in range(2):
                status, headers, body = await read_answer(reader)
                assert (status, body) == (200, b"data: [DONE]\n\n")
                assert "connection" not in headers

    run(main)


def test_a_slow_reader_gets_a_large_stream_whole() -> None:
    """Writes wait for the socket to drain (the server does not buffer without bound)."""
    piece = bytes(range(256)) * 1024  # 256 KiB: sent as writelines, not joined
    count = 64  # 16 MiB: more than the socket buffers hold
    written = asyncio.Event()

    async def handler(request: Request) -> Stream:
        stream = Stream(request, 200, {"Content-Type": "application/octet-stream"})
        for _ in range(count):
            await stream.write(piece)
        written.set()
        await stream.write_eof()
        return stream

    async def main() -> None:
        async with connected(handler) as (reader, writer):
            writer.write(GET)
            head = await reader.readuntil(b"\r\n\r\n")
            assert b"transfer-encoding: chunked" in head.lower()
            # Nothing read yet: the handler waits for the socket instead of buffering 16 MiB.
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(written.wait(), 0.5)
            assert await read_chunked(reader) == piece * count
            assert written.is_set()

    run(main)


def test_shutdown_lets_a_request_in_progress_finish_and_closes_after_it() -> None:
    release = asyncio.Event()
    entered = asyncio.Event()

    async def handler(request: Request) -> Response:
        entered.set()
        await release.wait()
        return Response(200, b'{"done":true}')

    async def main() -> None:
        server = await start(handler)
        port = server.port
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(GET)
        await entered.wait()
        shutdown = asyncio.create_task(server.shutdown(10))
        await asyncio.sleep(0)
        with pytest.raises(OSError):  # no longer accepting
            await asyncio.open_connection("127.0.0.1", port)
        assert not shutdown.done()
        release.set()
        status, headers, body = await read_answer(reader)
        assert (status, body) == (200, b'{"done":true}')
        assert headers["connection"] == "close"
        assert await asyncio.wait_for(reader.read(), 5) == b""
        await asyncio.wait_for(shutdown, 5)
        writer.close()

    run(main)


def test_shutdown_past_its_bound_cancels_the_handler() -> None:
    cancelled = asyncio.Event()
    entered = asyncio.Event()

    async def handler(request: Request) -> Response:
        entered.set()
        try:
            await asyncio.Event().wait()  # never answers
        except asyncio.CancelledError:
            cancelled.set()
            raise
        raise AssertionError("unreachable")

    async def main() -> None:
        server = await start(handler)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(GET)
        await entered.wait()
        await server.shutdown(0.2)
        assert cancelled.is_set()
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed, nothing sent
        writer.close()

    run(main)


STALL_S = 0.1  # the servers below sweep every 0.1 s: a stall is cut within 0.2 s


async def closed_by_server(reader: asyncio.StreamReader, within_s: float) -> bool:
    """Whether the server closes (or resets) the connection within ``within_s``, having
    sent nothing."""
    try:
        data = await asyncio.wait_for(reader.read(), within_s)
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True
    assert data == b"", data
    return True


async def echo(request: Request) -> Response:
    return Response(200, await request.read())


def test_a_client_that_stalls_mid_head_or_trickles_it_is_cut_off() -> None:
    async def main() -> None:
        async with connected(echo, stall_s=STALL_S) as (reader, writer):
            writer.write(b"POST /x HTTP/1.1\r\nHost: t\r\n")  # and no more
            assert await closed_by_server(reader, 5)
        async with connected(echo, stall_s=STALL_S) as (reader, writer):

            async def trickle() -> None:
                for byte in b"POST /x HTTP/1.1\r\nX-Slow: " + b"a" * 1000:
                    writer.write(bytes([byte]))
                    await asyncio.sleep(STALL_S / 4)

            trickling = asyncio.create_task(trickle())
            try:
                assert await closed_by_server(reader, 5)
            finally:
                trickling.cancel()

    run(main)


def test_a_client_that_stops_sending_its_body_is_cut_off_and_its_handler_cancelled() -> None:
    cancelled = asyncio.Event()

    async def handler(request: Request) -> Response:
        try:
            return Response(200, await request.read())
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def main() -> None:
        async with connected(handler, stall_s=STALL_S) as (reader, writer):
            writer.write(b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n0123456789")
            assert await closed_by_server(reader, 5)
            await asyncio.wait_for(cancelled.wait(), 5)

    run(main)


def test_idle_keep_alive_connections_and_slow_handlers_are_not_stalls() -> None:
    async def slow(request: Request) -> Response:
        body = await request.read()
        await asyncio.sleep(STALL_S * 5)  # many sweeps while the upstream "thinks"
        return Response(200, body)

    async def main() -> None:
        async with connected(slow, stall_s=STALL_S) as (reader, writer):
            writer.write(b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi")
            assert (await read_answer(reader))[::2] == (200, b"hi")
            # Idle between requests, across many sweeps: a keep-alive connection, kept.
            assert not await closed_by_server(reader, STALL_S * 5)
            # A head in two parts, the pause shorter than STALL_S; then a body that keeps
            # coming, slowly, across many sweeps: neither is a stall.
            writer.write(b"POST /x HTTP/1.1\r\nHost: t\r\n")
            await asyncio.sleep(STALL_S * 0.9)
            writer.write(b"Content-Length: 6\r\n\r\n")
            for piece in (b"sl", b"ow", b"ly"):
                await asyncio.sleep(STALL_S * 0.6)
                writer.write(piece)
            assert (await read_answer(reader))[::2] == (200, b"slowly")

    run(main)
