"""A Messages client served by a chat host: the request out, the answer back.

``request`` turns the client's Messages body into a chat body and names what it could
not carry (``top_k``, Anthropic's server tools, documents, earlier turns' thinking
blocks, ``cache_control``); ``MessagesFromChat`` turns the chat answer, whole or as its
stream of chunks, into Messages' (events converted as they arrive, never buffered).
Reasoning asks are left to ``router.apis.reasoning``, which sends each host its own form.
"""

from __future__ import annotations

from typing import Any

import orjson

from router.apis.translate.common import (
    PLAIN_TEXT,
    REASONING_FIELDS,
    STOP_TO_MESSAGES,
    Dropped,
    chat_usage_to_messages,
    message_id,
    obj_of,
    tool_input,
    tool_use_id,
)
from router.routing.sse import data_of

_MESSAGES_MAPPED = frozenset(
    {
        "model", "messages", "system", "max_tokens", "temperature", "top_p", "stop_sequences",
        "stream", "tools", "tool_choice", "metadata", "output_format",
    }
)  # fmt: skip


def messages_to_chat(payload: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """A Messages request (validated by ``router.apis.messages``) as a chat request."""
    dropped = Dropped()
    turns: list[dict[str, Any]] = []
    system = payload.get("system")
    if system:
        turns.append({"role": "system", "content": _text_of(system, dropped)})
    for turn in payload["messages"]:
        role = turn["role"]
        if role == "user":
            turns.extend(_user_to_chat(turn["content"], dropped))
        elif role == "assistant":
            turns.append(_assistant_to_chat(turn["content"], dropped))
        elif role == "system":  # mid-conversation system text (a Claude Code beta)
            turns.append({"role": "system", "content": _text_of(turn["content"], dropped)})
        else:
            dropped.add(f"{role} turn")
    out: dict[str, Any] = {"model": payload["model"], "messages": turns}
    out["max_completion_tokens"] = payload["max_tokens"]
    for name in ("temperature", "top_p"):
        if payload.get(name) is not None:
            out[name] = payload[name]
    if payload.get("stop_sequences"):
        out["stop"] = payload["stop_sequences"]
    if payload.get("stream") is True:
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    tools = [_tool_to_chat(t, dropped) for t in payload.get("tools") or ()]
    if any(tools):
        out["tools"] = [t for t in tools if t]
    choice = payload.get("tool_choice")
    if isinstance(choice, dict):
        _choice_to_chat(choice, out)
    metadata = payload.get("metadata")
    if isinstance(metadata, dict) and isinstance(metadata.get("user_id"), str):
        out["user"] = metadata["user_id"]
    fmt = payload.get("output_format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        schema = {"name": "output", "schema": fmt.get("schema") or {}}
        out["response_format"] = {"type": "json_schema", "json_schema": schema}
    for name in payload:
        if name not in _MESSAGES_MAPPED and name not in REASONING_FIELDS:
            dropped.add(name)
    return out, dropped.list()


def _text_of(content: Any, dropped: Dropped) -> str:
    """A system prompt or tool result as plain text (string, or text blocks joined)."""
    if isinstance(content, str):
        return content
    parts = []
    for block in content if isinstance(content, list) else ():
        if not isinstance(block, dict):
            continue
        if "cache_control" in block:
            dropped.add("cache_control")
        if block.get("type") == "text" and isinstance(block.get("text"), str):
            parts.append(block["text"])
        else:
            dropped.add(f"{block.get('type')} block")
    return "\n\n".join(parts)


def _user_to_chat(content: Any, dropped: Dropped) -> list[dict[str, Any]]:
    """A user turn: its tool results first (chat wants them right after the call), then
    what the user said."""
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    out: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for block in content:
        kind = block.get("type")
        if "cache_control" in block:
            dropped.add("cache_control")
        if kind == "text":
            parts.append({"type": "text", "text": block.get("text", "")})
        elif kind == "image":
            image = _image_to_chat(block.get("source"))
            if image is None:
                dropped.add("image block")
            else:
                parts.append(image)
        elif kind == "tool_result":
            text = _text_of(block.get("content") or "", dropped)
            if block.get("is_error"):
                text = f"Error: {text}"
            out.append({"role": "tool", "tool_call_id": block.get("tool_use_id"), "content": text})
        else:
            dropped.add(f"{kind} block")
    if parts:
        if len(parts) == 1 and parts[0]["type"] == "text":
            out.append({"role": "user", "content": parts[0]["text"]})
        else:
            out.append({"role": "user", "content": parts})
    return out


def _image_to_chat(source: Any) -> dict[str, Any] | None:
    if not isinstance(source, dict):
        return None
    url: Any
    if source.get("type") == "base64":
        url = f"data:{source.get('media_type')};base64,{source.get('data')}"
    elif source.get("type") == "url":
        url = source.get("url")
    else:
        return None
    return {"type": "image_url", "image_url": {"url": url}}


def _assistant_to_chat(content: Any, dropped: Dropped) -> dict[str, Any]:
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in content:
        kind = block.get("type")
        if kind == "text":
            texts.append(block.get("text", ""))
        elif kind == "tool_use":
            arguments = orjson.dumps(block.get("input") or {}).decode()
            function = {"name": block.get("name"), "arguments": arguments}
            calls.append({"id": block.get("id"), "type": "function", "function": function})
        elif kind in ("thinking", "redacted_thinking"):
            dropped.add("thinking blocks")  # a chat host takes no earlier reasoning back
        else:
            dropped.add(f"{kind} block")
    turn: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or None}
    if calls:
        turn["tool_calls"] = calls
    return turn


def _tool_to_chat(tool: dict[str, Any], dropped: Dropped) -> dict[str, Any] | None:
    if "input_schema" not in tool:  # a server tool (bash_..., web_search_...): Anthropic's own
        dropped.add(f"tool {tool.get('type') or tool.get('name')}")
        return None
    if "cache_control" in tool:
        dropped.add("cache_control")
    function = {"name": tool.get("name"), "parameters": tool.get("input_schema")}
    if tool.get("description"):
        function["description"] = tool["description"]
    return {"type": "function", "function": function}


def _choice_to_chat(choice: dict[str, Any], out: dict[str, Any]) -> None:
    kind = choice.get("type")
    if kind == "any":
        out["tool_choice"] = "required"
    elif kind == "tool":
        out["tool_choice"] = {"type": "function", "function": {"name": choice.get("name")}}
    elif kind in ("auto", "none"):
        out["tool_choice"] = kind
    if choice.get("disable_parallel_tool_use") is True:
        out["parallel_tool_calls"] = False


def chat_answer_to_messages(body: bytes) -> bytes:
    obj = orjson.loads(body)
    choices = obj.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    msg = obj_of(choice.get("message"))
    content: list[dict[str, Any]] = []
    thought = msg.get("reasoning_content") or msg.get("reasoning")
    if isinstance(thought, str) and thought:
        content.append({"type": "thinking", "thinking": thought, "signature": ""})
    text = msg.get("content")
    if isinstance(text, list):
        text = "".join(p.get("text", "") for p in text if isinstance(p, dict))
    if text:
        content.append({"type": "text", "text": text})
    if msg.get("refusal"):
        content.append({"type": "text", "text": msg["refusal"]})
    for call in msg.get("tool_calls") or ():
        function = call.get("function") or {}
        content.append(
            {
                "type": "tool_use",
                "id": call.get("id") or tool_use_id(),
                "name": function.get("name"),
                "input": tool_input(function.get("arguments")),
            }
        )
    return orjson.dumps(
        {
            "id": message_id(obj.get("id")),
            "type": "message",
            "role": "assistant",
            "model": obj.get("model"),
            "content": content,
            "stop_reason": STOP_TO_MESSAGES.get(str(choice.get("finish_reason")), "end_turn"),
            "stop_sequence": None,
            "usage": chat_usage_to_messages(obj.get("usage")),
        }
    )


_EVENT = b"event: %b\ndata: %b\n\n"
_TEXT_HEAD = (
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":%d,'
    b'"delta":{"type":"text_delta","text":'
)
_THINKING = (
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":%d,'
    b'"delta":{"type":"thinking_delta","thinking":%b}}\n\n'
)
_ARGS = (
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":%d,'
    b'"delta":{"type":"input_json_delta","partial_json":%b}}\n\n'
)


_TEXT_BLOCK = {"type": "text", "text": ""}
_THINKING_BLOCK = {"type": "thinking", "thinking": "", "signature": ""}


def _event(kind: str, body: dict[str, Any]) -> bytes:
    return _EVENT % (kind.encode(), orjson.dumps({"type": kind, **body}))


class MessagesFromChat:
    """Chat's answer as Messages' (a ``router.apis.base.Transform``): whole, or its stream
    of chunks (each read's whole events) as Messages events, block by block.

    Chat says the input tokens only at the end, so ``message_start`` carries none and
    ``message_delta`` the whole usage, which Anthropic's SDKs read from either.
    """

    def __init__(self) -> None:
        self.started = False
        self.block = -1  # index of the open content block, -1 before the first
        self.open: str | None = None  # "thinking", "text" or "tool:<chat index>"
        self.stop: str | None = None
        self.usage: Any = None
        self.text_head = b""  # a text delta event of the open block, up to its text

    def body(self, body: bytes) -> bytes:
        return chat_answer_to_messages(body)

    def feed(self, data: bytes) -> bytes:
        out: list[bytes] = []
        for event in data.split(b"\n\n"):
            if not event:
                continue
            if self.open == "text" and event.startswith(b"data: "):
                # Most events of a long answer: one more piece of the open text block,
                # its JSON string copied as it came (no parse, no re-encoding).
                plain = PLAIN_TEXT(event)
                if plain is not None:
                    piece = plain[1]
                    if piece != b'""':
                        out.append(self.text_head + piece + b"}}\n\n")
                    continue
            payload = data_of(event)
            if payload is None:
                continue
            if payload == b"[DONE]":
                out.append(self._end())
                continue
            try:
                obj = orjson.loads(payload)
            except orjson.JSONDecodeError:
                continue
            if isinstance(obj, dict):
                self._chunk(obj, out)
        return b"".join(out)

    def _chunk(self, obj: dict[str, Any], out: list[bytes]) -> None:
        if not self.started:
            out.append(self._start(obj))
        if isinstance(obj.get("usage"), dict):
            self.usage = obj["usage"]
        for choice in obj.get("choices") or ():
            delta = choice.get("delta") if isinstance(choice, dict) else None
            if isinstance(delta, dict):
                thought = delta.get("reasoning_content") or delta.get("reasoning")
                if isinstance(thought, str) and thought:
                    out.append(self._to("thinking", _THINKING_BLOCK))
                    out.append(_THINKING % (self.block, orjson.dumps(thought)))
                text = delta.get("content")
                if isinstance(text, str) and text:
                    out.append(self._to("text", _TEXT_BLOCK))
                    out.append(self.text_head + orjson.dumps(text) + b"}}\n\n")
                for call in delta.get("tool_calls") or ():
                    if isinstance(call, dict):
                        self._tool(call, out)
            if isinstance(choice, dict) and choice.get("finish_reason"):
                self.stop = STOP_TO_MESSAGES.get(choice["finish_reason"], "end_turn")

    def _tool(self, call: dict[str, Any], out: list[bytes]) -> None:
        key = f"tool:{call.get('index', 0)}"
        function = obj_of(call.get("function"))
        if key != self.open:
            block: dict[str, Any] = {
                "type": "tool_use",
                "id": call.get("id") or tool_use_id(),
                "name": function.get("name"),
                "input": {},
            }
            out.append(self._close())
            self.block += 1
            self.open = key
            out.append(_event("content_block_start", {"index": self.block, "content_block": block}))
        args = function.get("arguments")
        if isinstance(args, str) and args:
            out.append(_ARGS % (self.block, orjson.dumps(args)))

    def _to(self, kind: str, block: dict[str, Any]) -> bytes:
        """Opens ``block`` (of type ``kind``) unless a block of ``kind`` is open."""
        if self.open == kind:
            return b""
        closed = self._close()
        self.block += 1
        self.open = kind
        if kind == "text":
            self.text_head = _TEXT_HEAD % self.block
        return closed + _event("content_block_start", {"index": self.block, "content_block": block})

    def _close(self) -> bytes:
        if self.open is None:
            return b""
        self.open = None
        return _event("content_block_stop", {"index": self.block})

    def _start(self, obj: dict[str, Any]) -> bytes:
        self.started = True
        message: dict[str, Any] = {
            "id": message_id(obj.get("id")),
            "type": "message",
            "role": "assistant",
            "model": obj.get("model"),
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        return _event("message_start", {"message": message})

    def _end(self) -> bytes:
        head = b"" if self.started else self._start({})
        delta = {"stop_reason": self.stop or "end_turn", "stop_sequence": None}
        usage = chat_usage_to_messages(self.usage)
        return (
            head
            + self._close()
            + _event("message_delta", {"delta": delta, "usage": usage})
            + _event("message_stop", {})
        )
