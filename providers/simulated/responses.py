"""A simulated reply in OpenAI's Responses API shape, whole or as its event stream.

Output items in the order a reasoning model sends them: a ``reasoning`` item (its text
as ``reasoning_text`` content, left out when hidden), a ``message`` with one
``output_text`` part, then ``function_call`` items. The stream is the sequence OpenAI
sends: ``response.created``, ``response.in_progress``, per item ``output_item.added``,
its part and deltas (``response.reasoning_text.delta``, ``response.output_text.delta``,
``response.function_call_arguments.delta``), their ``.done`` events and
``output_item.done``, then ``response.completed`` (``response.incomplete`` when
``max_output_tokens`` cut it) with the usage. Every event carries ``sequence_number``.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson

from providers.simulated.reply import Reply


def _id(prefix: str) -> str:
    return prefix + uuid.uuid4().hex[:24]


def usage(reply: Reply) -> dict[str, Any]:
    n = reply.completion_tokens
    return {
        "input_tokens": reply.prompt_tokens,
        "input_tokens_details": {"cached_tokens": reply.cached_tokens, "cache_write_tokens": 0},
        "output_tokens": n,
        "output_tokens_details": {"reasoning_tokens": reply.reasoning_tokens},
        "total_tokens": reply.prompt_tokens + n,
    }


class _Items:
    """The output items of one reply, with ids fixed once (the stream and the final
    object must name the same items)."""

    def __init__(self, reply: Reply) -> None:
        self.reply = reply
        self.order: list[tuple[str, int]] = []  # (kind, tool index) per output index
        if reply.reasoning:
            self.order.append(("reasoning", 0))
        if reply.text:
            self.order.append(("text", 0))
        self.order += [("tool", i) for i in range(len(reply.tool_calls))]
        self.ids = {
            ("reasoning", 0): _id("rs_"),
            ("text", 0): _id("msg_"),
            **{("tool", i): _id("fc_") for i in range(len(reply.tool_calls))},
        }

    def item(self, kind: str, index: int, *, done: bool, text: str = "") -> dict[str, Any]:
        """An item as ``output_item.added`` (``done`` False: empty) or finished shows it."""
        status = "completed" if done else "in_progress"
        item_id = self.ids[(kind, index)]
        reply = self.reply
        if kind == "reasoning":
            out: dict[str, Any] = {"id": item_id, "type": "reasoning", "summary": []}
            if done and reply.show_reasoning:
                out["content"] = [{"type": "reasoning_text", "text": reply.reasoning_joined}]
            return out
        if kind == "text":
            content = [_text_part(reply.text_joined)] if done else []
            return {
                "id": item_id,
                "type": "message",
                "status": status,
                "role": "assistant",
                "content": content,
            }
        call = reply.tool_calls[index]
        return {
            "id": item_id,
            "type": "function_call",
            "status": status,
            "call_id": call.id,
            "name": call.name,
            "arguments": call.arguments if done else "",
        }

    def output(self) -> list[dict[str, Any]]:
        return [self.item(kind, i, done=True) for kind, i in self.order]


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def response_object(
    payload: dict[str, Any],
    reply: Reply,
    *,
    rid: str,
    created: int,
    output: list[dict[str, Any]],
    final: bool,
) -> dict[str, Any]:
    status = "in_progress"
    incomplete = None
    if final:
        status = "completed"
        if reply.finish == "length":
            status, incomplete = "incomplete", {"reason": "max_output_tokens"}
    text = payload.get("text")
    reasoning = payload.get("reasoning")
    return {
        "id": rid,
        "object": "response",
        "created_at": created,
        "status": status,
        "model": payload.get("model", "sim"),
        "output": output,
        "usage": usage(reply) if final else None,
        "error": None,
        "incomplete_details": incomplete,
        "instructions": payload.get("instructions"),
        "max_output_tokens": payload.get("max_output_tokens"),
        "parallel_tool_calls": payload.get("parallel_tool_calls", True),
        "previous_response_id": payload.get("previous_response_id"),
        "reasoning": reasoning
        if isinstance(reasoning, dict)
        else {"effort": None, "summary": None},
        "temperature": payload.get("temperature", 1.0),
        "text": text if isinstance(text, dict) else {"format": {"type": "text"}},
        "tool_choice": payload.get("tool_choice", "auto"),
        "tools": payload.get("tools") or [],
        "top_p": payload.get("top_p", 1.0),
        "truncation": "disabled",
        "metadata": payload.get("metadata") or {},
        "store": payload.get("store", True),
    }


def body(payload: dict[str, Any], reply: Reply) -> bytes:
    items = _Items(reply)
    return orjson.dumps(
        response_object(
            payload,
            reply,
            rid=_id("resp_"),
            created=int(time.time()),
            output=items.output(),
            final=True,
        )
    )


class ResponsesStream:
    """The Responses API's events for one reply, one step at a time."""

    def __init__(self, payload: dict[str, Any], reply: Reply) -> None:
        self.payload = payload
        self.reply = reply
        self.steps = reply.steps()
        self.items = _Items(reply)
        self.rid = _id("resp_")
        self.created = int(time.time())
        self._seq = 0
        self._open: tuple[str, int] | None = None  # the item now streaming
        self._index = -1  # its output index

    def _event(self, kind: str, fields: dict[str, Any]) -> bytes:
        data = {"type": kind, "sequence_number": self._seq, **fields}
        self._seq += 1
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"

    def _response(self, kind: str, final: bool) -> bytes:
        output = self.items.output() if final else []
        obj = response_object(
            self.payload, self.reply, rid=self.rid, created=self.created, output=output, final=final
        )
        return self._event(kind, {"response": obj})

    def head(self) -> bytes:
        return self._response("response.created", False) + self._response(
            "response.in_progress", False
        )

    def _where(self) -> dict[str, Any]:
        assert self._open is not None
        return {"item_id": self.items.ids[self._open], "output_index": self._index}

    def _start(self, key: tuple[str, int]) -> bytes:
        out = self._finish() if self._open is not None else b""
        self._open = key
        self._index += 1
        kind, index = key
        item = self.items.item(kind, index, done=False)
        out += self._event(
            "response.output_item.added", {"output_index": self._index, "item": item}
        )
        if kind == "text":
            part = _text_part("")
            out += self._event(
                "response.content_part.added", {**self._where(), "content_index": 0, "part": part}
            )
        elif kind == "reasoning" and self.reply.show_reasoning:
            part = {"type": "reasoning_text", "text": ""}
            out += self._event(
                "response.content_part.added", {**self._where(), "content_index": 0, "part": part}
            )
        return out

    def _finish(self) -> bytes:
        assert self._open is not None
        kind, index = self._open
        where = self._where()
        reply = self.reply
        out = b""
        if kind == "text":
            text = reply.text_joined
            out += self._event(
                "response.output_text.done",
                {**where, "content_index": 0, "text": text, "logprobs": []},
            )
            out += self._event(
                "response.content_part.done",
                {**where, "content_index": 0, "part": _text_part(text)},
            )
        elif kind == "reasoning" and reply.show_reasoning:
            text = reply.reasoning_joined
            out += self._event(
                "response.reasoning_text.done", {**where, "content_index": 0, "text": text}
            )
            part = {"type": "reasoning_text", "text": text}
            out += self._event(
                "response.content_part.done", {**where, "content_index": 0, "part": part}
            )
        elif kind == "tool":
            call = reply.tool_calls[index]
            fields = {**where, "name": call.name, "arguments": call.arguments}
            out += self._event("response.function_call_arguments.done", fields)
        item = self.items.item(kind, index, done=True)
        out += self._event("response.output_item.done", {"output_index": self._index, "item": item})
        self._open = None
        return out

    def step(self, i: int) -> bytes:
        kind, index, piece = self.steps[i]
        key = (kind, index)
        out = self._start(key) if key != self._open else b""
        if kind == "text":
            fields = {**self._where(), "content_index": 0, "delta": piece, "logprobs": []}
            return out + self._event("response.output_text.delta", fields)
        if kind == "reasoning":
            if not self.reply.show_reasoning:
                return out
            fields = {**self._where(), "content_index": 0, "delta": piece}
            return out + self._event("response.reasoning_text.delta", fields)
        return out + self._event(
            "response.function_call_arguments.delta", {**self._where(), "delta": piece}
        )

    def tail(self) -> bytes:
        out = self._finish() if self._open is not None else b""
        final = "response.incomplete" if self.reply.finish == "length" else "response.completed"
        return out + self._response(final, True)
