"""A chat stream turned into Responses events as its chunks arrive, never buffered.

Each chat chunk becomes the Responses events it stands for: a reasoning delta opens a
``reasoning`` item and sends ``response.reasoning_text.delta``; content opens a
``message`` item and sends ``response.output_text.delta``; a tool call opens a
``function_call`` item and sends ``response.function_call_arguments.delta`` (a custom
tool's call is held to its end, since its text sits inside JSON arguments). An item
is closed (its ``.done`` events, ``output_item.done``) when the next one opens, except
that tool calls stay open beside each other (hosts may interleave their arguments)
until text follows; at ``[DONE]`` the last ones are, and ``response.completed``
(``response.incomplete`` after a ``length`` finish) carries the whole output and the
usage. ``response.created`` and ``response.in_progress`` go out with the first chunk.

A text delta is the one event of every token: it is written from byte templates made
once per item, with only the text encoded per chunk.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import orjson

from router.apis.translate.common import PLAIN_TEXT
from router.apis.translate.responses_answer import (
    INCOMPLETE,
    chat_answer_to_responses,
    function_item,
    response_object,
    usage_from_chat,
)
from router.apis.translate.responses_via_chat import custom_tools
from router.routing.sse import data_of

_DONE = b"[DONE]"


def event(kind: str, seq: int, fields: dict[str, Any]) -> bytes:
    data = orjson.dumps({"type": kind, "sequence_number": seq, **fields})
    return b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n"


class _Item:
    """One output item being streamed: what it has gathered, and its delta template."""

    __slots__ = ("call_id", "custom", "id", "index", "kind", "name", "parts", "template")

    def __init__(self, kind: str, item_id: str, index: int) -> None:
        self.kind = kind  # "reasoning", "message" or "function_call"
        self.id = item_id
        self.index = index
        self.parts: list[str] = []
        self.call_id = ""
        self.name = ""
        self.custom = False
        self.template = b""  # a delta event, its sequence number and text left to fill in

    def done(self) -> dict[str, Any]:
        text = "".join(self.parts)
        if self.kind == "reasoning":
            content = [{"type": "reasoning_text", "text": text}]
            return {"id": self.id, "type": "reasoning", "summary": [], "content": content}
        if self.kind == "message":
            return {
                "id": self.id,
                "type": "message",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": text, "annotations": []}],
            }
        return function_item(self.call_id, self.name, text, self.custom)


class ResponsesFromChat:
    """Chat's answer as the Responses API's (a ``router.apis.base.Transform``): whole, or
    its stream of chunks (each read's whole events) as Responses events."""

    def __init__(self, request: Mapping[str, Any]) -> None:
        self.request = request
        self.custom = custom_tools(request)
        self.rid = ""
        self.model: Any = None
        self.created = time.time()
        self.seq = 0
        self.items: list[_Item] = []
        self.open: _Item | None = None  # the text or reasoning item now streaming
        self.calls: list[_Item] = []  # tool calls still open: hosts may interleave them
        self.tools: dict[int, _Item] = {}
        self.finish: str | None = None
        self.usage: dict[str, Any] | None = None
        self.finished = False

    def body(self, body: bytes) -> bytes:
        return chat_answer_to_responses(self.request, body)

    def feed(self, data: bytes) -> bytes:
        out: list[bytes] = []
        for block in data.split(b"\n\n"):
            if not block:
                continue
            item = self.open
            if item is not None and item.kind == "message" and block.startswith(b"data: "):
                # Most events of a long answer: more text of the open message, its JSON
                # string copied into the delta event as it came (no parse of the chunk).
                plain = PLAIN_TEXT(block)
                if plain is not None:
                    piece = plain[1]
                    if piece != b'""':
                        item.parts.append(orjson.loads(piece))
                        out.append(item.template % (self.seq, piece))
                        self.seq += 1
                    continue
            payload = data_of(block)
            if payload is None:
                continue
            if payload == _DONE:
                out.append(self.end())
                continue
            try:
                chunk = orjson.loads(payload)
            except orjson.JSONDecodeError:
                continue
            if isinstance(chunk, dict):
                self._chunk(chunk, out)
        return b"".join(out)

    def _emit(self, kind: str, fields: dict[str, Any]) -> bytes:
        self.seq += 1
        return event(kind, self.seq - 1, fields)

    def _response(self, kind: str, status: str, output: list[dict[str, Any]]) -> bytes:
        incomplete = INCOMPLETE.get(self.finish or "") if status != "in_progress" else None
        obj = response_object(
            self.request,
            rid=self.rid,
            created=self.created,
            model=self.model,
            output=output,
            usage=usage_from_chat(self.usage) if status != "in_progress" else None,
            status="incomplete" if incomplete else status,
            incomplete=incomplete,
        )
        return self._emit(kind, {"response": obj})

    def _chunk(self, chunk: dict[str, Any], out: list[bytes]) -> None:
        if not self.rid:
            self.rid = "resp_" + str(chunk.get("id") or int(self.created * 1000))
            self.model = chunk.get("model")
            out.append(self._response("response.created", "in_progress", []))
            out.append(self._response("response.in_progress", "in_progress", []))
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            delta = choice.get("delta")
            if isinstance(delta, dict):
                thought = delta.get("reasoning_content") or delta.get("reasoning")
                if isinstance(thought, str) and thought:
                    out.append(self._text("reasoning", thought))
                content = delta.get("content")
                if isinstance(content, str) and content:
                    out.append(self._text("message", content))
                calls = delta.get("tool_calls")
                if isinstance(calls, list):
                    for call in calls:
                        if isinstance(call, dict):
                            out.append(self._tool(call))
            if choice.get("finish_reason"):
                self.finish = choice["finish_reason"]

    def _start(self, kind: str, item_id: str) -> tuple[_Item, bytes]:
        """A new item, after closing what it follows: text or reasoning closes every open
        item; a tool call closes the text before it, and leaves other calls open."""
        out = self._close(self.open) if self.open is not None else b""
        if kind != "function_call":
            out += b"".join(self._close(call) for call in self.calls)
            self.calls.clear()
        item = _Item(kind, item_id, len(self.items))
        self.items.append(item)
        if kind == "function_call":
            self.calls.append(item)
        else:
            self.open = item
        return item, out

    def _text(self, kind: str, text: str) -> bytes:
        item = self.open
        out = b""
        if item is None or item.kind != kind:
            prefix = "rs_" if kind == "reasoning" else "msg_"
            item, out = self._start(kind, f"{prefix}{self.rid[5:]}_{len(self.items)}")
            where = {"item_id": item.id, "output_index": item.index}
            if kind == "message":
                added: dict[str, Any] = {"id": item.id, "type": "message", "status": "in_progress"}
                added |= {"role": "assistant", "content": []}
                part: dict[str, Any] = {"type": "output_text", "text": "", "annotations": []}
                delta_kind = "response.output_text.delta"
            else:
                added = {"id": item.id, "type": "reasoning", "summary": []}
                part = {"type": "reasoning_text", "text": ""}
                delta_kind = "response.reasoning_text.delta"
            out += self._emit(
                "response.output_item.added", {"output_index": item.index, "item": added}
            )
            out += self._emit(
                "response.content_part.added", {**where, "content_index": 0, "part": part}
            )
            kind_b = delta_kind.encode()
            fixed = orjson.dumps({"item_id": item.id, "output_index": item.index})[1:-1]
            logprobs = b',"logprobs":[]' if kind == "message" else b""
            template = (
                b"event: "
                + kind_b
                + b'\ndata: {"type":"'
                + kind_b
                + b'","sequence_number":%d,'
                + fixed.replace(b"%", b"%%")
                + b',"content_index":0,"delta":%b'
                + logprobs
                + b"}\n\n"
            )
            item.template = template
        item.parts.append(text)
        seq = self.seq
        self.seq += 1
        return out + item.template % (seq, orjson.dumps(text))

    def _tool(self, call: dict[str, Any]) -> bytes:
        index = call.get("index", 0)
        fn = call.get("function") or {}
        item = self.tools.get(index if isinstance(index, int) else 0)
        out = b""
        if item is None:
            call_id = str(call.get("id") or f"call_{self.rid}_{index}")
            item, out = self._start("function_call", "fc_" + call_id.removeprefix("call_"))
            self.tools[index if isinstance(index, int) else 0] = item
            item.call_id = call_id
            item.name = fn.get("name") or ""
            item.custom = item.name in self.custom
            added = {"id": item.id, "type": "function_call", "status": "in_progress"}
            added |= {"call_id": item.call_id, "name": item.name, "arguments": ""}
            if item.custom:
                added = {**added, "type": "custom_tool_call", "input": ""}
                del added["arguments"]
            out += self._emit(
                "response.output_item.added", {"output_index": item.index, "item": added}
            )
        elif item not in self.calls:
            return b""  # more of a call after text followed it: no host sends that
        arguments = fn.get("arguments")
        if isinstance(arguments, str) and arguments:
            item.parts.append(arguments)
            if not item.custom:
                where = {"item_id": item.id, "output_index": item.index}
                out += self._emit(
                    "response.function_call_arguments.delta", {**where, "delta": arguments}
                )
        return out

    def _close(self, item: _Item) -> bytes:
        if item is self.open:
            self.open = None
        done = item.done()
        where = {"item_id": item.id, "output_index": item.index}
        out = b""
        if item.kind in ("message", "reasoning"):
            text = "".join(item.parts)
            kind = "output_text" if item.kind == "message" else "reasoning_text"
            done_fields = {**where, "content_index": 0, "text": text}
            if item.kind == "message":
                done_fields["logprobs"] = []
            out += self._emit(f"response.{kind}.done", done_fields)
            part = done["content"][0]
            out += self._emit(
                "response.content_part.done", {**where, "content_index": 0, "part": part}
            )
        elif item.custom:
            text = done["input"]
            out += self._emit("response.custom_tool_call_input.delta", {**where, "delta": text})
            out += self._emit("response.custom_tool_call_input.done", {**where, "input": text})
        else:
            args = done["arguments"]
            fields = {**where, "name": item.name, "arguments": args}
            out += self._emit("response.function_call_arguments.done", fields)
        return out + self._emit(
            "response.output_item.done", {"output_index": item.index, "item": done}
        )

    def end(self) -> bytes:
        """The events that close the answer (at the chat stream's ``[DONE]``)."""
        if self.finished:
            return b""
        self.finished = True
        out = b""
        if not self.rid:
            out += self._chunk_head()
        if self.open is not None:
            out += self._close(self.open)
        out += b"".join(self._close(call) for call in self.calls)
        self.calls.clear()
        output = [item.done() for item in self.items]
        kind = "response.incomplete" if self.finish in INCOMPLETE else "response.completed"
        return out + self._response(kind, "completed", output)

    def _chunk_head(self) -> bytes:
        out: list[bytes] = []
        self._chunk({}, out)
        return b"".join(out)
