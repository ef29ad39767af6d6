"""A simulated reply in OpenAI's chat, completions and embeddings shapes.

Reasoning goes out as ``reasoning_content`` (the field DeepSeek, vLLM and TokenLX use)
with ``completion_tokens_details.reasoning_tokens``; tool calls as ``tool_calls`` whose
arguments stream in pieces; usage details only when they are not zero, as most
OpenAI-compatible hosts send them.
"""

from __future__ import annotations

import base64
import random
import struct
import time
import uuid
from typing import Any

import orjson

from providers.simulated.reply import Reply


def usage(reply: Reply) -> dict[str, Any]:
    n = reply.completion_tokens
    out: dict[str, Any] = {
        "prompt_tokens": reply.prompt_tokens,
        "completion_tokens": n,
        "total_tokens": reply.prompt_tokens + n,
    }
    if reply.reasoning:
        out["completion_tokens_details"] = {"reasoning_tokens": reply.reasoning_tokens}
    if reply.cached_tokens:
        out["prompt_tokens_details"] = {"cached_tokens": reply.cached_tokens}
    return out


def chat_body(payload: dict[str, Any], reply: Reply) -> bytes:
    message: dict[str, Any] = {"role": "assistant", "content": reply.text_joined or None}
    if reply.reasoning and reply.show_reasoning:
        message["reasoning_content"] = reply.reasoning_joined
    if reply.tool_calls:
        message["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            }
            for call in reply.tool_calls
        ]
    elif message["content"] is None:
        message["content"] = ""
    return orjson.dumps(
        {
            "id": "chatcmpl-" + uuid.uuid4().hex[:24],
            "object": "chat.completion",
            "created": int(time.time()),
            "model": payload.get("model", "sim"),
            "choices": [{"index": 0, "message": message, "finish_reason": reply.finish}],
            "usage": usage(reply),
        }
    )


def completion_body(payload: dict[str, Any], reply: Reply) -> bytes:
    return orjson.dumps(
        {
            "id": "cmpl-" + uuid.uuid4().hex[:24],
            "object": "text_completion",
            "created": int(time.time()),
            "model": payload.get("model", "sim"),
            "choices": [
                {
                    "index": 0,
                    "text": reply.text_joined,
                    "finish_reason": reply.finish,
                    "logprobs": None,
                }
            ],
            "usage": usage(reply),
        }
    )


def embeddings_body(payload: dict[str, Any], reply: Reply) -> bytes:
    inputs = payload.get("input")
    items = inputs if isinstance(inputs, list) else [inputs]
    dims_raw = payload.get("dimensions")
    dims = dims_raw if isinstance(dims_raw, int) and not isinstance(dims_raw, bool) else 8
    as_base64 = payload.get("encoding_format") == "base64"
    data = []
    for i, item in enumerate(items):
        vector = _vector(str(item), dims)
        # base64: little-endian float32s, as OpenAI sends them (the Node SDK's default).
        embedding: Any = (
            base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
            if as_base64
            else vector
        )
        data.append({"object": "embedding", "index": i, "embedding": embedding})
    p_tok = reply.prompt_tokens
    return orjson.dumps(
        {
            "object": "list",
            "data": data,
            "model": payload.get("model", "sim"),
            "usage": {"prompt_tokens": p_tok, "total_tokens": p_tok},
        }
    )


def _vector(text: str, dims: int) -> list[float]:
    rng = random.Random(text)
    return [round(rng.uniform(-1, 1), 6) for _ in range(max(1, min(dims, 4096)))]


class ChatStream:
    """The SSE events of a streamed chat or completions answer, one step at a time."""

    def __init__(self, operation: str, payload: dict[str, Any], reply: Reply) -> None:
        self.chat = operation == "chat/completions"
        self.reply = reply
        self.steps = reply.steps()
        self.model = payload.get("model", "sim")
        opts = payload.get("stream_options")
        self.include_usage = isinstance(opts, dict) and bool(opts.get("include_usage"))
        self.id = ("chatcmpl-" if self.chat else "cmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())
        self._tool = -1  # the tool call whose head (id, name) has gone out

    def _chunk(self, delta_or_text: Any, finish: str | None) -> bytes:
        if self.chat:
            choice = {"index": 0, "delta": delta_or_text, "finish_reason": finish}
            obj = "chat.completion.chunk"
        else:
            choice = {"index": 0, "text": delta_or_text, "finish_reason": finish, "logprobs": None}
            obj = "text_completion"
        body: dict[str, Any] = {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": self.model,
            "choices": [choice],
        }
        if self.include_usage:
            body["usage"] = None
        return b"data: " + orjson.dumps(body) + b"\n\n"

    def head(self) -> bytes:
        """Sent with the response headers, before the first token (as OpenAI does)."""
        if self.chat:
            return self._chunk({"role": "assistant", "content": ""}, None)
        return b""

    def step(self, i: int) -> bytes:
        kind, index, piece = self.steps[i]
        if kind == "text":
            return self._chunk({"content": piece} if self.chat else piece, None)
        if not self.chat:
            return b""  # no reasoning or tools in a text completion
        if kind == "reasoning":
            return (
                self._chunk({"reasoning_content": piece}, None)
                if self.reply.show_reasoning
                else b""
            )
        call: dict[str, Any] = {"index": index, "function": {"arguments": piece}}
        if index != self._tool:
            self._tool = index
            tool = self.reply.tool_calls[index]
            call = {
                "index": index,
                "id": tool.id,
                "type": "function",
                "function": {"name": tool.name, "arguments": piece},
            }
        return self._chunk({"tool_calls": [call]}, None)

    def tail(self) -> bytes:
        out = self._chunk({} if self.chat else "", self.reply.finish)
        if self.include_usage:
            body = {
                "id": self.id,
                "object": "chat.completion.chunk" if self.chat else "text_completion",
                "created": self.created,
                "model": self.model,
                "choices": [],
                "usage": usage(self.reply),
            }
            out += b"data: " + orjson.dumps(body) + b"\n\n"
        return out + b"data: [DONE]\n\n"
