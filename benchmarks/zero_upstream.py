"""A fixed-cost fake OpenAI-compatible upstream for the benchmarks.

Why it exists: a gateway benchmark must measure the gateway, so the upstream has to cost
(nearly) nothing and the same for every target. Answers are pre-built bytes cached per
(model, tokens, stream, usage), so serving one is a dictionary look-up and one write.

- ``POST /v1/chat/completions`` and ``POST /v1/completions``: ``max_tokens`` (or
  ``max_completion_tokens``) in the body sets the answer length, else ``--tokens``.
  ``stream: true`` answers SSE chunks ending in ``data: [DONE]``, with a usage chunk when
  ``stream_options.include_usage`` is set; the non-streamed answer carries ``usage``.
- ``--ttft-ms`` delays the first token; ``--interval-ms`` paces the tokens that follow
  (one write per token). With both at 0 (the default) the whole stream is written at once:
  the fastest an upstream can be, and the same bytes for every target. ``--per-token``
  writes one event per write even then (no pause), as a token-by-token host does: the
  gateway then sees many small reads instead of one large one.
- ``POST /v1/messages``: the same answer in Anthropic's Messages shape (a message, or
  its event stream from ``message_start`` to ``message_stop``), for the Messages API's
  native pass-through.
- ``POST /v1/responses``: the same answer in OpenAI's Responses shape (a response
  object, or its event stream from ``response.created`` to ``response.completed``, one
  ``response.output_text.delta`` per token), for the Responses API's native pass-through;
  ``max_output_tokens`` sets the length.
- ``GET /health``, ``GET /v1/models``.

Run: ``python benchmarks/zero_upstream.py --port 9001`` (uvloop when installed).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from typing import Any

import orjson
from aiohttp import web

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import raise_nofile

_CREATED = int(time.time())
_Key = tuple[str, int, bool, bool, str]


def _usage(n: int) -> dict[str, int]:
    return {"prompt_tokens": 8, "completion_tokens": n, "total_tokens": 8 + n}


def build_answer(model: str, n: int, stream: bool, usage: bool, chat: bool) -> list[bytes]:
    """The answer as bytes: one item non-streamed, else one SSE event per item."""
    cid = "chatcmpl-bench" if chat else "cmpl-bench"
    # Distinct tokens: LiteLLM aborts a stream that repeats one chunk 100 times.
    text = [f"t{i} " for i in range(n)]
    if not stream:
        if chat:
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": "".join(text)},
                "finish_reason": "stop",
            }
            obj = "chat.completion"
        else:
            choice = {"index": 0, "text": "".join(text), "finish_reason": "stop"}
            obj = "text_completion"
        body = {
            "id": cid,
            "object": obj,
            "created": _CREATED,
            "model": model,
            "choices": [choice],
            "usage": _usage(n),
        }
        return [orjson.dumps(body)]
    obj = "chat.completion.chunk" if chat else "text_completion"
    base = {"id": cid, "object": obj, "created": _CREATED, "model": model}

    def event(choice: dict[str, Any] | None, **extra: Any) -> bytes:
        payload = {**base, "choices": [choice] if choice is not None else [], **extra}
        return b"data: " + orjson.dumps(payload) + b"\n\n"

    events = []
    for i, tok in enumerate(text):
        if chat:
            delta = {"role": "assistant", "content": tok} if i == 0 else {"content": tok}
            events.append(event({"index": 0, "delta": delta, "finish_reason": None}))
        else:
            events.append(event({"index": 0, "text": tok, "finish_reason": None}))
    stop = (
        {"index": 0, "delta": {}, "finish_reason": "stop"}
        if chat
        else {"index": 0, "text": "", "finish_reason": "stop"}
    )
    events.append(event(stop))
    if usage:
        events.append(event(None, usage=_usage(n)))
    events.append(b"data: [DONE]\n\n")
    return events


def build_messages_answer(model: str, n: int, stream: bool) -> list[bytes]:
    """Anthropic's Messages answer as bytes: one item non-streamed, else one per event."""
    text = [f"t{i} " for i in range(n)]
    usage = {"input_tokens": 8, "output_tokens": n}
    message: dict[str, Any] = {
        "id": "msg_bench",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": "".join(text)}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": usage,
    }
    if not stream:
        return [orjson.dumps(message)]

    def event(kind: str, **data: Any) -> bytes:
        return b"event: %b\ndata: %b\n\n" % (kind.encode(), orjson.dumps({"type": kind, **data}))

    start = {**message, "content": [], "stop_reason": None, "usage": {**usage, "output_tokens": 1}}
    events = [event("message_start", message=start)]
    events[0] += event("content_block_start", index=0, content_block={"type": "text", "text": ""})
    for tok in text:
        events.append(
            event("content_block_delta", index=0, delta={"type": "text_delta", "text": tok})
        )
    delta = {"stop_reason": "end_turn", "stop_sequence": None}
    events.append(
        event("content_block_stop", index=0)
        + event("message_delta", delta=delta, usage={"output_tokens": n})
        + event("message_stop")
    )
    return events


def build_responses_answer(model: str, n: int, stream: bool) -> list[bytes]:
    """OpenAI's Responses answer as bytes: one item non-streamed, else one per event
    (the head and the tail grouped with the first and last token, as hosts send them)."""
    text = [f"t{i} " for i in range(n)]
    usage = {
        "input_tokens": 8,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": n,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 8 + n,
    }
    part = {"type": "output_text", "text": "".join(text), "annotations": []}
    item = {"id": "msg_bench", "type": "message", "status": "completed", "role": "assistant"}
    done_item = {**item, "content": [part]}
    response: dict[str, Any] = {
        "id": "resp_bench",
        "object": "response",
        "created_at": _CREATED,
        "status": "completed",
        "model": model,
        "output": [done_item],
        "usage": usage,
    }
    if not stream:
        return [orjson.dumps(response)]
    seq = 0

    def event(kind: str, **data: Any) -> bytes:
        nonlocal seq
        seq += 1
        body = orjson.dumps({"type": kind, "sequence_number": seq - 1, **data})
        return b"event: %b\ndata: %b\n\n" % (kind.encode(), body)

    going = {**response, "status": "in_progress", "output": [], "usage": None}
    where = {"item_id": "msg_bench", "output_index": 0, "content_index": 0}
    head = event("response.created", response=going) + event("response.in_progress", response=going)
    head += event("response.output_item.added", output_index=0, item={**item, "content": []})
    head += event("response.content_part.added", **where, part={**part, "text": ""})
    events = [event("response.output_text.delta", **where, delta=tok, logprobs=[]) for tok in text]
    events[0] = head + events[0]
    events[-1] += (
        event("response.output_text.done", **where, text=part["text"], logprobs=[])
        + event("response.content_part.done", **where, part=part)
        + event("response.output_item.done", output_index=0, item=done_item)
        + event("response.completed", response=response)
    )
    return events


class Upstream:
    def __init__(
        self, tokens: int, ttft_ms: float, interval_ms: float, per_token: bool = False
    ) -> None:
        self.tokens = tokens
        self.per_token = per_token
        self.ttft = ttft_ms / 1000.0
        self.interval = interval_ms / 1000.0
        self._cache: dict[_Key, list[bytes]] = {}

    def _answer(self, key: _Key) -> list[bytes]:
        found = self._cache.get(key)
        if found is None:
            if len(self._cache) > 256:  # bounded: model names come from clients
                self._cache.clear()
            model, n, stream, usage, api = key
            if api == "messages":
                found = build_messages_answer(model, n, stream)
            elif api == "responses":
                found = build_responses_answer(model, n, stream)
            else:
                found = build_answer(model, n, stream, usage, api == "chat")
            self._cache[key] = found
        return found

    async def completions(self, request: web.Request) -> web.StreamResponse:
        try:
            payload = orjson.loads(await request.read())
            if not isinstance(payload, dict):
                raise ValueError("not an object")
        except ValueError:
            return web.json_response(
                {
                    "error": {
                        "message": "invalid JSON",
                        "type": "invalid_request_error",
                        "code": None,
                        "param": None,
                    }
                },
                status=400,
            )
        n = (
            payload.get("max_tokens")
            or payload.get("max_completion_tokens")
            or payload.get("max_output_tokens")
            or self.tokens
        )
        n = max(1, min(int(n), 100_000))
        stream = bool(payload.get("stream"))
        opts = payload.get("stream_options") or {}
        usage = bool(stream and isinstance(opts, dict) and opts.get("include_usage"))
        path = request.path
        api = path.rsplit("/", 1)[-1]  # completions (chat or text), messages, responses
        if api == "completions":
            api = "chat" if "/chat/" in path else "text"
        parts = self._answer((str(payload.get("model", "bench")), n, stream, usage, api))
        if not stream:
            if self.ttft:
                await asyncio.sleep(self.ttft)
            return web.Response(body=parts[0], content_type="application/json")
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await resp.prepare(request)
        if self.ttft:
            await asyncio.sleep(self.ttft)
        if not self.interval and not self.per_token:
            await resp.write(b"".join(parts))
        else:
            for i, part in enumerate(parts):
                if i and i <= n and self.interval:  # the gap between tokens; then the tail
                    await asyncio.sleep(self.interval)
                await resp.write(part)
        await resp.write_eof()
        return resp

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "object": "list",
                "data": [
                    {"id": "bench", "object": "model", "created": _CREATED, "owned_by": "bench"}
                ],
            }
        )

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})


def make_app(
    tokens: int = 16, ttft_ms: float = 0.0, interval_ms: float = 0.0, per_token: bool = False
) -> web.Application:
    up = Upstream(tokens, ttft_ms, interval_ms, per_token)
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/chat/completions", up.completions)
    app.router.add_post("/v1/completions", up.completions)
    app.router.add_post("/v1/messages", up.completions)
    app.router.add_post("/v1/responses", up.completions)
    app.router.add_get("/v1/models", up.models)
    app.router.add_get("/health", up.health)
    return app


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=9001)
    ap.add_argument("--tokens", type=int, default=16, help="answer length without max_tokens")
    ap.add_argument("--ttft-ms", type=float, default=0.0)
    ap.add_argument("--interval-ms", type=float, default=0.0, help="gap between tokens")
    ap.add_argument("--per-token", action="store_true", help="one write per event")
    ap.add_argument("--backlog", type=int, default=4096)
    args = ap.parse_args()
    raise_nofile()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    web.run_app(
        make_app(args.tokens, args.ttft_ms, args.interval_ms, args.per_token),
        host=args.host,
        port=args.port,
        backlog=args.backlog,
        access_log=None,
        print=None,
        handle_signals=True,
    )


if __name__ == "__main__":
    main()
