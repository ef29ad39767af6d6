"""A fake Anthropic Messages API (``POST /v1/messages``) on loopback, for fault drills.

It answers the way api.anthropic.com does: a JSON ``message`` or an SSE stream of
``message_start``, ``content_block_start``/``_delta``/``_stop`` (``text_delta``,
``input_json_delta`` for tool use), ``message_delta`` with usage and ``message_stop``;
errors as ``{"type": "error", "error": {...}}`` with Anthropic's statuses (429 with
``retry-after``, 500 ``api_error``, 529 ``overloaded_error``). Every request is recorded
(headers and JSON) so tests can assert on what litellm sent.

The server runs on its own event loop in a daemon thread, so synchronous tests, tests
with their own ``asyncio.run`` and a router in a subprocess can all talk to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


@dataclass
class Received:
    headers: dict[str, str]  # lower-cased names
    body: dict[str, Any]


@dataclass
class Reply:
    """What the fake answers when no failure is queued."""

    text: str = "Hello from the fake Anthropic."
    thinking: str | None = None  # answer with a thinking block first (extended thinking)
    tool: tuple[str, dict[str, Any]] | None = None  # (name, input): answer with a tool_use block
    input_tokens: int = 21
    output_tokens: int = 9
    cache_read_tokens: int = 0
    cache_creation_tokens: int = 0
    stream_fault: str | None = None  # "error": an overloaded event mid-stream; "drop": cut it
    stall: bool = False  # stop mid-stream until ``FakeAnthropic.release()``
    ttft_s: float = 0.0  # wait this long before answering at all (a slow first token)


@dataclass
class _Failure:
    status: int
    retry_after: str | None


@dataclass
class FakeAnthropic:
    reply: Reply = field(default_factory=Reply)
    received: list[Received] = field(default_factory=list)
    _failures: deque[_Failure] = field(default_factory=deque)
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _runner: web.AppRunner | None = None
    _released: asyncio.Event | None = None
    disconnected: threading.Event = field(default_factory=threading.Event)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def release(self) -> None:
        """Let stalled streams go on (called from any thread)."""
        if self._loop is not None and self._released is not None:
            self._loop.call_soon_threadsafe(self._released.set)

    def reset(self) -> None:
        """Back to a plain host: the default reply, no queued failures, nothing received."""
        self.reply = Reply()
        self.received.clear()
        self._failures.clear()
        self.disconnected.clear()

    def fail(self, status: int, *, times: int = 1, retry_after: str | None = None) -> None:
        """The next ``times`` requests get ``status`` (with ``retry-after`` when given)."""
        for _ in range(times):
            self._failures.append(_Failure(status, retry_after))

    # --- serving ---------------------------------------------------------------------------

    def start(self) -> FakeAnthropic:
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()

        def run() -> None:
            assert self._loop is not None
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(self._serve())
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="fake-anthropic", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("fake Anthropic server did not start")
        return self

    async def _serve(self) -> None:
        self._released = asyncio.Event()
        app = web.Application()
        app.router.add_post("/v1/messages", self._messages)
        # handler_cancellation: a client that leaves cancels its handler, so a test can see it.
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    def stop(self) -> None:
        self.release()
        loop, runner = self._loop, self._runner
        if loop is None or runner is None or self._thread is None:
            return
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        self._thread.join(10)
        loop.close()
        self._loop = None

    def __enter__(self) -> FakeAnthropic:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- the API ---------------------------------------------------------------------------

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        try:
            return await self._answer(request)
        except asyncio.CancelledError:
            self.disconnected.set()  # the client closed the connection mid-answer
            raise

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.received.append(Received({k.lower(): v for k, v in request.headers.items()}, body))
        if self._failures:
            failure = self._failures.popleft()
            return self._error(failure)
        if not body.get("messages") or not isinstance(body.get("max_tokens"), int):
            return self._error(_Failure(400, None), "messages and max_tokens are required")
        if self.reply.ttft_s:
            await asyncio.sleep(self.reply.ttft_s)
        if body.get("stream"):
            return await self._stream(request, body)
        return web.json_response(self._message(body, final=True))

    def _error(self, failure: _Failure, message: str | None = None) -> web.Response:
        kind = _ERROR_TYPES.get(failure.status, "api_error")
        headers = {"retry-after": failure.retry_after} if failure.retry_after else None
        payload = {
            "type": "error",
            "error": {"type": kind, "message": message or f"fake {kind} ({failure.status})"},
        }
        return web.json_response(payload, status=failure.status, headers=headers)

    def _usage(self, output_tokens: int) -> dict[str, Any]:
        r = self.reply
        return {
            "input_tokens": r.input_tokens,
            "output_tokens": output_tokens,
            "cache_read_input_tokens": r.cache_read_tokens,
            "cache_creation_input_tokens": r.cache_creation_tokens,
        }

    def _message(self, body: dict[str, Any], *, final: bool) -> dict[str, Any]:
        r = self.reply
        content: list[dict[str, Any]] = []
        if final:
            if r.thinking:
                content.append({"type": "thinking", "thinking": r.thinking, "signature": "c2ln"})
            if r.text:
                content.append({"type": "text", "text": r.text})
            if r.tool:
                name, args = r.tool
                content.append(
                    {"type": "tool_use", "id": "toolu_fake01", "name": name, "input": args}
                )
        return {
            "id": "msg_fake01",
            "type": "message",
            "role": "assistant",
            "model": body.get("model", "claude-fake"),
            "content": content,
            "stop_reason": ("tool_use" if r.tool else "end_turn") if final else None,
            "stop_sequence": None,
            "usage": self._usage(r.output_tokens if final else 1),
        }

    async def _stream(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        # The client may leave (a cancelled or timed-out stream): nothing to finish then.
        with contextlib.suppress(ConnectionResetError):
            await self._play(request, resp, body)
        return resp

    async def _play(
        self, request: web.Request, resp: web.StreamResponse, body: dict[str, Any]
    ) -> None:

        async def event(kind: str, data: dict[str, Any]) -> None:
            await resp.write(
                f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n".encode()
            )

        r = self.reply
        await event("message_start", {"message": self._message(body, final=False)})
        index = 0
        if r.thinking:
            block: dict[str, Any] = {"type": "thinking", "thinking": "", "signature": ""}
            await event("content_block_start", {"index": index, "content_block": block})
            delta = {"type": "thinking_delta", "thinking": r.thinking}
            await event("content_block_delta", {"index": index, "delta": delta})
            delta = {"type": "signature_delta", "signature": "c2ln"}
            await event("content_block_delta", {"index": index, "delta": delta})
            await event("content_block_stop", {"index": index})
            index += 1
        if r.text:
            await event(
                "content_block_start",
                {"index": index, "content_block": {"type": "text", "text": ""}},
            )
            await event("ping", {})
            words = r.text.split(" ")
            for i, word in enumerate(words):
                piece = word if i == len(words) - 1 else word + " "
                delta = {"type": "text_delta", "text": piece}
                await event("content_block_delta", {"index": index, "delta": delta})
                if i == 0 and await self._fault(request, resp):
                    return
            await event("content_block_stop", {"index": index})
            index += 1
        if r.tool:
            name, args = r.tool
            tool_block = {"type": "tool_use", "id": "toolu_fake01", "name": name, "input": {}}
            await event("content_block_start", {"index": index, "content_block": tool_block})
            text = json.dumps(args)
            half = len(text) // 2
            for part in (text[:half], text[half:]):  # arguments arrive in fragments
                delta = {"type": "input_json_delta", "partial_json": part}
                await event("content_block_delta", {"index": index, "delta": delta})
            await event("content_block_stop", {"index": index})
        await event(
            "message_delta",
            {
                "delta": {
                    "stop_reason": "tool_use" if r.tool else "end_turn",
                    "stop_sequence": None,
                },
                "usage": {"output_tokens": r.output_tokens},
            },
        )
        await event("message_stop", {})
        await resp.write_eof()

    async def _fault(self, request: web.Request, resp: web.StreamResponse) -> bool:
        """Plays ``stream_fault``/``stall`` after the first token; True = the stream is over."""
        r = self.reply
        if r.stall:
            assert self._released is not None
            await self._released.wait()
        if r.stream_fault == "error":
            error = {"type": "overloaded_error", "message": "fake overloaded mid-stream"}
            payload = json.dumps({"type": "error", "error": error})
            await resp.write(f"event: error\ndata: {payload}\n\n".encode())
            return True
        if r.stream_fault == "drop":
            assert request.transport is not None
            request.transport.abort()  # a reset, not a clean end of stream
            return True
        return False
