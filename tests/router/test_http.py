"""The server layer (router/http/server.py) with handlers of its own, over real sockets: what
happens when a handler fails before or after its answer began, back-pressure from a slow
reader, and draining on shutdown. (tests/e2e/test_http.py covers HTTP/1.1 on the wire
through the whole service.)"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
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


# -- what a client can make the server hold ---------------------------------------------------


async def until(check: Callable[[], bool], within_s: float = 5.0) -> None:
    """Wait until ``check`` holds (polled every 10 ms); fail after ``within_s``."""
    for _ in range(int(within_s / 0.01)):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the condition never held")


def test_a_client_pipelining_100_requests_behind_a_slow_one_is_held_to_a_bounded_backlog() -> None:
    """100 requests of 16 KiB each (1.6 MiB) pipelined behind one the handler holds: the
    server parses no more than a read or two of them ahead and stops reading, then answers
    all of them, in order, once the slow one is done."""
    release = asyncio.Event()
    body = b"x" * (16 << 10)

    async def handler(request: Request) -> Response:
        data = await request.read()
        if request.path == "/slow":
            await release.wait()
        return Response(200, request.path.encode() + b" " + str(len(data)).encode())

    async def main() -> None:
        server = await start(handler)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port, limit=1 << 16)
        try:
            writer.write(GET.replace(b"/x", b"/slow"))
            for i in range(100):
                writer.write(b"POST /%d HTTP/1.1\r\nHost: t\r\n" % i)
                writer.write(b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            sending = asyncio.create_task(writer.drain())  # the server will not take it all
            [conn] = server.connections
            await until(lambda: conn.flow.reading_paused)
            await asyncio.sleep(0.2)  # time to read more, if it would
            waiting, held = conn.backlog()
            assert conn.flow.reading_paused
            assert waiting < 100  # not everything was parsed ahead
            assert held <= 2 * (256 << 10), held  # at most a read or two of bodies
            release.set()
            status, _, answer = await read_answer(reader)
            assert (status, answer) == (200, b"/slow 0")
            for i in range(100):
                status, _, answer = await read_answer(reader)
                assert (status, answer) == (200, b"/%d %d" % (i, len(body)))
            await asyncio.wait_for(sending, 5)
        finally:
            writer.close()
            await server.shutdown(1)

    run(main)


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: t\r\n\r\n", 414),
        (b"GET /x HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", 431),
        (b"GET /x HTTP/1.1\r\nHost: t\r\n" + b"X-A: b\r\n" * 200 + b"\r\n", 431),
        (b"", 0),
    ],
    ids=["long-target", "long-field", "many-fields", "fields-over-64k"],
)
def test_a_head_past_its_limits_is_refused_in_openai_shape_and_closed(
    head: bytes, status: int
) -> None:
    async def main() -> None:
        async with connected(echo) as (reader, writer):
            if status:
                writer.write(head)
            else:  # many fields each under the limit, sent in reads: the head's total counts
                writer.write(b"GET /x HTTP/1.1\r\nHost: t\r\n")
                with contextlib.suppress(ConnectionError):  # refused before the last
                    for i in range(12):
                        await asyncio.sleep(0.01)
                        writer.write(b"X-Some-%d: %s\r\n" % (i, b"b" * 8000))
            got, headers, body = await read_answer(reader)
            assert got == (status or 431)
            assert headers["connection"] == "close"
            error = json.loads(body)["error"]
            assert error["type"] == "invalid_request_error"
            assert error["code"] == "bad_http_request"
            assert await closed_by_server(reader, 5)

    run(main)


def test_header_values_that_are_not_utf8_reach_the_handler_as_valid_text() -> None:
    seen: dict[str, str | None] = {}

    async def handler(request: Request) -> Response:
        for name in ("x-request-id", "authorization", "x-other"):
            seen[name] = request.headers.get(name)
        return Response(200, b"{}", headers={"x-request-id": seen["x-request-id"] or ""})

    async def main() -> None:
        async with connected(handler) as (reader, writer):
            writer.write(
                b"GET /x HTTP/1.1\r\nHost: t\r\nX-Request-Id: a\xff\r\n"
                b"Authorization: Bearer k\xc3\x28ey\r\nX-Other: caf\xc3\xa9\r\n\r\n"
            )
            status, headers, _ = await read_answer(reader)
            assert status == 200
            assert headers["x-request-id"] == "a\ufffd"
        assert seen == {
            "x-request-id": "a\ufffd",
            "authorization": "Bearer k\ufffd(ey",
            "x-other": "caf\u00e9",  # valid UTF-8 stays as sent
        }
        for value in seen.values():
            assert value is not None
            value.encode("utf-8")  # every one encodes: logs, the request log, heads

    run(main)


# -- connections: the head bound and the cap ------------------------------------------------


async def silent(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


def test_connections_that_never_send_a_whole_head_are_closed_within_twice_the_bound() -> None:
    async def main() -> None:
        server = await start(echo, stall_s=STALL_S)
        try:
            quiet = [await silent(server.port) for _ in range(10)]
            partial = await silent(server.port)
            partial[1].write(b"GET /x HTTP/1.1\r\n")
            for reader, _ in [*quiet, partial]:
                assert await closed_by_server(reader, 5)
            assert not server.connections
            # A keep-alive connection that has been served is idle, not stalled: kept.
            reader, writer = await silent(server.port)
            writer.write(GET)
            assert (await read_answer(reader))[0] == 200
            assert not await closed_by_server(reader, STALL_S * 5)
            for _, w in [*quiet, partial, (reader, writer)]:
                w.close()
        finally:
            await server.shutdown(1)

    run(main)


def test_at_the_connection_cap_the_longest_idle_connection_makes_room() -> None:
    async def main() -> None:
        server = await start(echo, max_connections=5)
        try:
            quiet = [await silent(server.port) for _ in range(5)]
            await asyncio.sleep(0.05)
            assert len(server.connections) == 5
            # Ten more silent ones: each closes the longest idle before it.
            more = [await silent(server.port) for _ in range(10)]
            for reader, _ in quiet:
                assert await closed_by_server(reader, 5)
            # A client with a request still gets in, and is served.
            reader, writer = await silent(server.port)
            writer.write(GET)
            assert (await read_answer(reader))[0] == 200
            assert len(server.connections) <= 5
            for _, w in [*quiet, *more, (reader, writer)]:
                w.close()
        finally:
            await server.shutdown(1)

    run(main)


def test_at_the_cap_with_every_connection_busy_a_newcomer_gets_503_and_a_close() -> None:
    release = asyncio.Event()

    async def busy(request: Request) -> Response:
        await release.wait()
        return Response(200, b"{}")

    async def main() -> None:
        server = await start(busy, max_connections=3)
        try:
            held = []
            for _ in range(3):
                reader, writer = await silent(server.port)
                writer.write(GET)
                held.append((reader, writer))
            await until(lambda: sum(not c.idle for c in server.connections) == 3)
            for _ in range(2):
                reader, writer = await silent(server.port)
                status, headers, body = await read_answer(reader)
                assert status == 503
                assert headers["connection"] == "close"
                assert headers["retry-after"] == "1"
                assert json.loads(body)["error"]["code"] == "too_many_connections"
                assert await closed_by_server(reader, 5)
                writer.close()
            release.set()
            for reader, writer in held:  # the busy ones were not disturbed
                assert (await read_answer(reader))[0] == 200
                writer.close()
        finally:
            await server.shutdown(1)

    run(main)


def test_a_stream_that_must_end_its_connection_does_not_look_whole_or_reusable() -> None:
    """``force_close`` (our own failure mid-stream): the answer ends without its last
    chunk, so a client that pools connections (aiohttp) sees it cut short and does not
    send its next request into the closing socket: every next request is served."""

    async def handler(request: Request) -> Response | Stream:
        if request.path == "/ok":
            return Response(200, b'{"ok":true}')
        stream = Stream(request, 200, {"Content-Type": "text/event-stream"})
        await stream.write(b"data: 1\n\n")
        await stream.write(b'data: {"error": {}}\n\n')
        stream.force_close()
        return stream

    async def main() -> None:
        server = await start(handler)
        url = f"http://127.0.0.1:{server.port}"
        try:
            connector = aiohttp.TCPConnector(limit=1)
            async with aiohttp.ClientSession(url, connector=connector) as session:
                for _ in range(20):
                    async with session.get("/cut") as resp:
                        with pytest.raises(aiohttp.ClientPayloadError):
                            await resp.read()
                    async with session.get("/ok") as resp:
                        assert (resp.status, await resp.json()) == (200, {"ok": True})
        finally:
            await server.shutdown(1)

    run(main)
