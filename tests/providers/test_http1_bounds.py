"""Time and size bounds of the OpenAI-compatible provider's client (providers/http1.py,
providers/answer.py), against raw TCP upstreams that misbehave on purpose: one that sends
one byte at a time cannot hold a request past ``first_s``/``total_s``; the idle timeout set
after the first token re-arms the timer already running; a non-streamed answer larger than
``max_answer_bytes`` fails (and its connection is not reused).

Every wait is bounded by the test's own timeout; the elapsed-time checks only tell a bound
that held from one that did not (seconds apart), they measure no performance."""

from __future__ import annotations

import asyncio
import gzip
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from providers.base import UpstreamRequest
from providers.errors import (
    AnswerTooLarge,
    IdleTimeout,
    TotalTimeout,
    TTFTTimeout,
    UpstreamError,
)
from providers.openai import OpenAIProvider, OpenAIResponse

Script = Callable[[asyncio.StreamWriter], Awaitable[None]]
SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
)
TOKEN = b'data: {"choices": [{"index": 0, "delta": {"content": "tok"}}]}\n\n'


def chunked(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def request(*, stream: bool = False, first_s: float = 30, total_s: float = 30) -> UpstreamRequest:
    return UpstreamRequest(
        operation="chat/completions",
        payload={"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": stream},
        stream=stream,
        request_id="t",
        connect_s=5,
        read_s=first_s,
        first_s=first_s,
        total_s=total_s,
    )


def run(main: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(main(), 30))


async def trickle(writer: asyncio.StreamWriter, data: bytes, every_s: float = 0.02) -> None:
    """``data`` one byte at a time: the pace that held requests for minutes."""
    for byte in data:
        writer.write(bytes([byte]))
        await writer.drain()
        await asyncio.sleep(every_s)


class Upstream:
    """A raw TCP upstream: reads each request's head and body, then runs ``script``."""

    def __init__(self, script: Script, *, max_connections: int = 4096) -> None:
        self.script = script
        self.max_connections = max_connections
        self.peers: list[object] = []
        self.server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.peers.append(writer.get_extra_info("peername"))
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                await reader.readexactly(length)
                await self.script(writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def __aenter__(self) -> OpenAIProvider:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        self.provider = OpenAIProvider(
            f"http://127.0.0.1:{port}/v1",
            max_connections=self.max_connections,
            max_answer_bytes=1000,
        )
        return self.provider

    async def __aexit__(self, *exc: object) -> None:
        await self.provider.aclose()
        assert self.server is not None
        self.server.close()


async def drain(response: OpenAIResponse) -> AsyncIterator[bytes]:
    async for data in response.chunks():
        yield data


# -- one byte at a time -----------------------------------------------------------------------

JSON_ANSWER = b'{"choices": [{"message": {"content": "' + b"x" * 200 + b'"}}]}'
JSON_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"


def test_a_head_sent_one_byte_at_a_time_is_cut_at_first_s() -> None:
    async def script(writer: asyncio.StreamWriter) -> None:
        await trickle(writer, JSON_HEAD % len(JSON_ANSWER) + JSON_ANSWER)

    async def main() -> None:
        async with Upstream(script) as provider:
            started = time.monotonic()
            with pytest.raises(TTFTTimeout):
                await provider.send(request(first_s=0.3))
            assert time.monotonic() - started < 2  # not the 5 s the whole trickle takes
            # Bound by total_s when it ends first: the timeout says so.
            with pytest.raises(TotalTimeout):
                await provider.send(request(first_s=10, total_s=0.3))

    run(main)


def test_a_non_streamed_body_sent_one_byte_at_a_time_is_cut_at_total_s() -> None:
    async def script(writer: asyncio.StreamWriter) -> None:
        writer.write(JSON_HEAD % len(JSON_ANSWER))  # the head at once, then a trickle
        await trickle(writer, JSON_ANSWER)

    async def main() -> None:
        async with Upstream(script) as provider:
            started = time.monotonic()
            response = await provider.send(request(first_s=10, total_s=0.5))
            with pytest.raises(TotalTimeout):
                await response.read()
            assert time.monotonic() - started < 2.5  # a silence bound alone: ~5 s and on

    run(main)


@pytest.mark.parametrize("phase", ["before-first-token", "after-first-token"])
def test_a_stream_sent_one_byte_at_a_time_is_cut_at_its_deadline(phase: str) -> None:
    async def script(writer: asyncio.StreamWriter) -> None:
        writer.write(SSE_HEAD)
        if phase == "after-first-token":
            writer.write(chunked(TOKEN))
        for byte in TOKEN * 20:  # each byte its own chunk: reads never stop for long
            writer.write(chunked(bytes([byte])))
            await writer.drain()
            await asyncio.sleep(0.02)

    async def main() -> None:
        async with Upstream(script) as provider:
            first, total = (0.4, 30.0) if phase == "before-first-token" else (30.0, 0.6)
            started = time.monotonic()
            response = await provider.send(request(stream=True, first_s=first, total_s=total))
            want: type[UpstreamError] = TTFTTimeout
            with pytest.raises(UpstreamError) as caught:
                async for data in drain(response):
                    if data.endswith(b"\n\n"):  # the first token: relay mode from here
                        response.set_idle_timeout(30)
                        want = TotalTimeout
            assert type(caught.value) is want
            assert time.monotonic() - started < 2.5

    run(main)


# -- the idle timeout re-arms the running timer -----------------------------------------------


@pytest.mark.parametrize("second", ["same-read", "later-read"])
def test_the_idle_timeout_set_after_the_first_token_holds_at_once(second: str) -> None:
    """The first two content chunks come in one read (or the second a little later),
    then the upstream stalls: the stream fails at idle_s after the last read, not at
    the first-token bound still armed when the idle timeout was set."""

    async def script(writer: asyncio.StreamWriter) -> None:
        if second == "same-read":
            writer.write(SSE_HEAD + chunked(TOKEN) + chunked(TOKEN))
        else:
            writer.write(SSE_HEAD + chunked(TOKEN))
            await asyncio.sleep(0.3)
            writer.write(chunked(TOKEN))
        await asyncio.sleep(60)  # the stall

    async def main() -> None:
        async with Upstream(script) as provider:
            response = await provider.send(request(stream=True, first_s=20, total_s=25))
            chunks = drain(response)
            first = await chunks.__anext__()
            assert first.startswith(TOKEN)
            response.set_idle_timeout(0.3)
            started = time.monotonic()
            with pytest.raises(IdleTimeout):
                async for _ in chunks:
                    pass
            assert time.monotonic() - started < 3  # idle_s, not the 20 s first-token bound

    run(main)


def test_a_longer_idle_timeout_lets_a_stream_pause_past_the_first_token_bound() -> None:
    async def script(writer: asyncio.StreamWriter) -> None:
        writer.write(SSE_HEAD + chunked(TOKEN))
        await asyncio.sleep(0.6)  # longer than read_s, shorter than idle_s
        writer.write(chunked(TOKEN) + b"0\r\n\r\n")

    async def main() -> None:
        async with Upstream(script) as provider:
            response = await provider.send(request(stream=True, first_s=0.3, total_s=20))
            chunks = drain(response)
            assert (await chunks.__anext__()).startswith(TOKEN)
            response.set_idle_timeout(5)
            rest = b"".join([data async for data in chunks])
            assert rest == TOKEN

    run(main)


# -- the size of a non-streamed answer --------------------------------------------------------


BIG = b'{"data": "' + b"x" * (2 << 20) + b'"}'  # 2 MiB: past the limit and the read buffer


@pytest.mark.parametrize(
    ("answer", "whole"),
    [
        (JSON_HEAD % len(BIG) + BIG, False),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"".join(chunked(BIG[i : i + 8192]) for i in range(0, len(BIG), 8192))
            + b"0\r\n\r\n",
            False,
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n%s"
            % (len(gzip.compress(BIG)), gzip.compress(BIG)),
            True,  # a few KiB on the wire: all in before it is read
        ),
    ],
    ids=["content-length", "chunked", "gzip-bomb"],
)
def test_an_answer_over_max_answer_bytes_fails(answer: bytes, whole: bool) -> None:
    """The answer fails as soon as its size is known to be over the limit; a connection
    left mid-answer is dropped, one whose answer was whole may serve again."""

    async def script(writer: asyncio.StreamWriter) -> None:
        writer.write(answer)
        await writer.drain()

    async def main() -> None:
        upstream = Upstream(script)
        async with upstream as provider:
            for _ in range(2):
                response = await provider.send(request())
                with pytest.raises(AnswerTooLarge) as caught:
                    await response.read()
                assert caught.value.reason == "answer_too_large"
                response.close()  # as the pipeline does with a failed attempt
            assert len(upstream.peers) == (1 if whole else 2)

    run(main)


def test_an_answer_under_the_limit_is_read_whole_and_decoded() -> None:
    small = b'{"data": "' + b"y" * 800 + b'"}'
    packed = gzip.compress(small)

    async def script(writer: asyncio.StreamWriter) -> None:
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n%s"
            % (len(packed), packed)
        )

    async def main() -> None:
        upstream = Upstream(script)
        async with upstream as provider:
            for _ in range(3):
                response = await provider.send(request())
                assert await response.read() == small
            assert len(upstream.peers) == 1  # kept alive and reused

    run(main)


def test_a_request_waiting_for_a_free_connection_waits_no_longer_than_first_s() -> None:
    async def script(writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(60)  # holds the only connection

    async def main() -> None:
        async with Upstream(script, max_connections=1) as provider:
            first = asyncio.create_task(provider.send(request(first_s=20)))
            await asyncio.sleep(0.1)
            started = time.monotonic()
            with pytest.raises(TTFTTimeout):
                await provider.send(request(first_s=0.3))
            assert time.monotonic() - started < 2
            first.cancel()

    run(main)
