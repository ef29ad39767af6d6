"""A simulated reply in Anthropic's Messages API shape, whole or as its event stream.

Content blocks in Claude's order: ``thinking`` (with a ``signature``), ``text``, then
``tool_use``. The stream is Anthropic's: ``message_start``, ``ping``, per block
``content_block_start``, its deltas (``thinking_delta`` then one ``signature_delta``,
``text_delta``, ``input_json_delta``) and ``content_block_stop``, then ``message_delta``
with the stop reason and output tokens, and ``message_stop``.

Signatures are an HMAC of the thinking text under a key every simulator shares, and a
request whose assistant turns carry a thinking block with a wrong signature is refused
with a 400, as Anthropic refuses an altered block: so a test can tell that a tool loop
passed the blocks back untouched.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import uuid
from typing import Any

import orjson

from providers.simulated.reply import Reply

_SIGNING_KEY = b"router-simulator-thinking"  # shared by all simulators: any may verify
_STOP = {"stop": "end_turn", "tool_calls": "tool_use", "length": "max_tokens"}


def sign(thinking: str) -> str:
    digest = hmac.new(_SIGNING_KEY, thinking.encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def bad_signature(payload: dict[str, Any]) -> str | None:
    """Where a thinking block of the request was altered, or None."""
    turns = payload.get("messages")
    if not isinstance(turns, list):
        return None
    for i, turn in enumerate(turns):
        content = turn.get("content") if isinstance(turn, dict) else None
        if not isinstance(content, list) or turn.get("role") != "assistant":
            continue
        for j, block in enumerate(content):
            if not isinstance(block, dict) or block.get("type") != "thinking":
                continue
            thinking, signature = block.get("thinking"), block.get("signature")
            if not isinstance(thinking, str) or not isinstance(signature, str):
                return f"messages.{i}.content.{j}: thinking block lacks its signature"
            if not hmac.compare_digest(signature, sign(thinking)):
                return f"messages.{i}.content.{j}: Invalid `signature` in `thinking` block"
    return None


def error_json(status: int, message: str) -> bytes:
    kind = {
        400: "invalid_request_error",
        401: "authentication_error",
        403: "permission_error",
        404: "not_found_error",
        413: "request_too_large",
        429: "rate_limit_error",
        529: "overloaded_error",
    }.get(status, "api_error")
    return orjson.dumps({"type": "error", "error": {"type": kind, "message": message}})


def usage(reply: Reply, output_tokens: int | None = None) -> dict[str, Any]:
    # Anthropic counts cache reads apart from input_tokens; thinking is in output_tokens.
    return {
        "input_tokens": reply.prompt_tokens - reply.cached_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": reply.cached_tokens,
        "output_tokens": reply.completion_tokens if output_tokens is None else output_tokens,
    }


def _thinking_text(reply: Reply) -> str:
    return reply.reasoning_joined if reply.show_reasoning else ""


def _tool_id(call_id: str) -> str:
    return "toolu_" + call_id.removeprefix("call_")


def body(payload: dict[str, Any], reply: Reply) -> bytes:
    content: list[dict[str, Any]] = []
    if reply.reasoning:
        text = _thinking_text(reply)
        content.append({"type": "thinking", "thinking": text, "signature": sign(text)})
    if reply.text:
        content.append({"type": "text", "text": reply.text_joined})
    for call in reply.tool_calls:
        content.append(
            {
                "type": "tool_use",
                "id": _tool_id(call.id),
                "name": call.name,
                "input": orjson.loads(call.arguments),
            }
        )
    return orjson.dumps(
        {
            "id": "msg_" + uuid.uuid4().hex[:24],
            "type": "message",
            "role": "assistant",
            "model": payload.get("model", "sim"),
            "content": content,
            "stop_reason": _STOP.get(reply.finish, "end_turn"),
            "stop_sequence": None,
            "usage": usage(reply),
        }
    )


def _event(kind: str, data: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({"type": kind, **data}) + b"\n\n"


class MessagesStream:
    """Anthropic's stream events for one reply, one step at a time."""

    def __init__(self, payload: dict[str, Any], reply: Reply) -> None:
        self.payload = payload
        self.reply = reply
        self.steps = reply.steps()
        self._open: tuple[str, int] | None = None
        self._block = -1

    def head(self) -> bytes:
        message = {
            "id": "msg_" + uuid.uuid4().hex[:24],
            "type": "message",
            "role": "assistant",
            "model": self.payload.get("model", "sim"),
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": usage(self.reply, output_tokens=1),
        }
        return _event("message_start", {"message": message}) + _event("ping", {})

    def _start(self, key: tuple[str, int]) -> bytes:
        out = self._stop() if self._open is not None else b""
        self._open = key
        self._block += 1
        kind, index = key
        block: dict[str, Any]
        if kind == "reasoning":
            block = {"type": "thinking", "thinking": "", "signature": ""}
        elif kind == "text":
            block = {"type": "text", "text": ""}
        else:
            call = self.reply.tool_calls[index]
            block = {"type": "tool_use", "id": _tool_id(call.id), "name": call.name, "input": {}}
        return out + _event("content_block_start", {"index": self._block, "content_block": block})

    def _stop(self) -> bytes:
        out = b""
        if self._open is not None and self._open[0] == "reasoning":
            signature = sign(_thinking_text(self.reply))
            delta = {"type": "signature_delta", "signature": signature}
            out = _event("content_block_delta", {"index": self._block, "delta": delta})
        self._open = None
        return out + _event("content_block_stop", {"index": self._block})

    def step(self, i: int) -> bytes:
        kind, index, piece = self.steps[i]
        key = (kind, index)
        out = self._start(key) if key != self._open else b""
        delta: dict[str, Any]
        if kind == "reasoning":
            if not self.reply.show_reasoning:
                return out
            delta = {"type": "thinking_delta", "thinking": piece}
        elif kind == "text":
            delta = {"type": "text_delta", "text": piece}
        else:
            delta = {"type": "input_json_delta", "partial_json": piece}
        return out + _event("content_block_delta", {"index": self._block, "delta": delta})

    def tail(self) -> bytes:
        out = self._stop() if self._open is not None else b""
        stop = _STOP.get(self.reply.finish, "end_turn")
        out += _event(
            "message_delta",
            {
                "delta": {"stop_reason": stop, "stop_sequence": None},
                "usage": {"output_tokens": self.reply.completion_tokens},
            },
        )
        return out + _event("message_stop", {})
