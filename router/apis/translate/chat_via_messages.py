"""A chat client served by a Messages host: the request out, the answer back.

``request`` turns the client's chat body into a Messages body and names what it could
not carry: Anthropic refuses unknown fields, so what it has no field for (``n``,
penalties, ``logprobs``, ``seed``, ``response_format``...) is left out and listed.
``ChatFromMessages`` turns the Messages answer, whole or as its event stream, into
chat's (events converted as they arrive, never buffered).
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from router.apis.translate.common import (
    REASONING_FIELDS,
    STOP_TO_CHAT,
    Dropped,
    chat_id,
    messages_usage_to_chat,
    obj_of,
    tool_input,
    tool_use_id,
)
from router.routing.sse import data_of

# Anthropic requires max_tokens; chat does not. What a chat request without one gets.
DEFAULT_MAX_TOKENS = 4096

_CHAT_MAPPED = frozenset(
    {
        "model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p",
        "stop", "stream", "stream_options", "tools", "tool_choice", "parallel_tool_calls",
        "user",
    }
)  # fmt: skip


def chat_to_messages(payload: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """A chat request (validated by ``router.apis.chat``) as a Messages request."""
    dropped = Dropped()
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for msg in payload["messages"]:
        role = msg.get("role") if isinstance(msg, dict) else None
        if role in ("system", "developer"):
            system.append(_plain(msg.get("content")))
        elif role == "user":
            _add_turn(turns, "user", _user_blocks(msg.get("content"), dropped))
        elif role == "assistant":
            _add_turn(turns, "assistant", _assistant_blocks(msg))
        elif role == "tool":
            result = {
                "type": "tool_result",
                "tool_use_id": msg.get("tool_call_id"),
                "content": _plain(msg.get("content")),
            }
            _add_turn(turns, "user", [result])
        else:
            dropped.add(f"{role} message")
    out: dict[str, Any] = {"model": payload["model"], "messages": turns}
    if system:
        out["system"] = "\n\n".join(system)
    limit = payload.get("max_completion_tokens") or payload.get("max_tokens")
    out["max_tokens"] = limit if isinstance(limit, int) else DEFAULT_MAX_TOKENS
    if payload.get("temperature") is not None:
        out["temperature"] = min(payload["temperature"], 1.0)  # chat's range is 0-2
    if payload.get("top_p") is not None:
        out["top_p"] = payload["top_p"]
    stop = payload.get("stop")
    if stop:
        out["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    if payload.get("stream") is True:
        out["stream"] = True
    tools = [_tool_to_messages(t, dropped) for t in payload.get("tools") or ()]
    if any(tools):
        out["tools"] = [t for t in tools if t]
    choice = _choice_to_messages(payload.get("tool_choice"))
    if payload.get("parallel_tool_calls") is False:
        choice = {**(choice or {"type": "auto"}), "disable_parallel_tool_use": True}
    if choice is not None:
        out["tool_choice"] = choice
    if isinstance(payload.get("user"), str):
        out["metadata"] = {"user_id": payload["user"]}
    for name, value in payload.items():
        if name in _CHAT_MAPPED or name in REASONING_FIELDS or value is None:
            continue
        if name == "n" and value == 1:
            continue
        dropped.add(name)
    return out, dropped.list()


def _plain(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def _add_turn(turns: list[dict[str, Any]], role: str, blocks: list[dict[str, Any]]) -> None:
    """Consecutive turns of one role become one (tool results and the user's next words)."""
    if not blocks:
        return
    if turns and turns[-1]["role"] == role:
        turns[-1]["content"].extend(blocks)
    else:
        turns.append({"role": role, "content": blocks})


def _user_blocks(content: Any, dropped: Dropped) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    blocks: list[dict[str, Any]] = []
    for part in content if isinstance(content, list) else ():
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            blocks.append({"type": "text", "text": part.get("text", "")})
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            block = _image_to_messages(url)
            if block is None:
                dropped.add("image_url part")
            else:
                blocks.append(block)
        else:
            dropped.add(f"{kind} part")
    return blocks


def _image_to_messages(url: Any) -> dict[str, Any] | None:
    if not isinstance(url, str):
        return None
    if url.startswith("data:"):
        head, sep, data = url.partition(",")
        if not sep or not head.endswith(";base64"):
            return None
        media = head[5 : -len(";base64")]
        return {"type": "image", "source": {"type": "base64", "media_type": media, "data": data}}
    if url.startswith(("http://", "https://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    return None


def _assistant_blocks(msg: dict[str, Any]) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    text = _plain(msg.get("content"))
    if text:
        blocks.append({"type": "text", "text": text})
    for call in msg.get("tool_calls") or ():
        function = call.get("function") or {}
        blocks.append(
            {
                "type": "tool_use",
                "id": call.get("id") or tool_use_id(),
                "name": function.get("name"),
                "input": tool_input(function.get("arguments")),
            }
        )
    return blocks


def _tool_to_messages(tool: Any, dropped: Dropped) -> dict[str, Any] | None:
    function = tool.get("function") if isinstance(tool, dict) else None
    if not isinstance(function, dict) or tool.get("type", "function") != "function":
        dropped.add(f"tool {tool.get('type') if isinstance(tool, dict) else tool}")
        return None
    schema = function.get("parameters") or {"type": "object", "properties": {}}
    out = {"name": function.get("name"), "input_schema": schema}
    if function.get("description"):
        out["description"] = function["description"]
    return out


def _choice_to_messages(choice: Any) -> dict[str, Any] | None:
    if choice == "required":
        return {"type": "any"}
    if choice in ("auto", "none"):
        return {"type": choice}
    if isinstance(choice, dict):
        function = choice.get("function")
        if isinstance(function, dict) and function.get("name"):
            return {"type": "tool", "name": function["name"]}
    return None


def messages_answer_to_chat(body: bytes) -> bytes:
    obj = orjson.loads(body)
    texts: list[str] = []
    thoughts: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in obj.get("content") or ():
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            texts.append(block.get("text", ""))
        elif kind == "thinking":
            thoughts.append(block.get("thinking", ""))
        elif kind == "tool_use":
            arguments = orjson.dumps(block.get("input") or {}).decode()
            function = {"name": block.get("name"), "arguments": arguments}
            calls.append({"id": block.get("id"), "type": "function", "function": function})
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or None}
    if thoughts:
        message["reasoning_content"] = "".join(thoughts)
    if calls:
        message["tool_calls"] = calls
    choice = {
        "index": 0,
        "message": message,
        "finish_reason": STOP_TO_CHAT.get(obj.get("stop_reason"), "stop"),
        "logprobs": None,
    }
    return orjson.dumps(
        {
            "id": chat_id(obj.get("id")),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": obj.get("model"),
            "choices": [choice],
            "usage": messages_usage_to_chat(obj.get("usage")),
        }
    )


class ChatFromMessages:
    """Messages' answer as chat's (a ``router.apis.base.Transform``): whole, or its event
    stream (each read's whole events) as chat chunks ending in ``data: [DONE]``; the usage
    chunk only when the client asked for it (``stream_options.include_usage``)."""

    def __init__(self, client_wants_usage: bool) -> None:
        self.client_wants_usage = client_wants_usage
        self.head = b""  # the start of every chunk, once message_start has said id and model
        self.tail = b',"finish_reason":null}]}\n\n'
        self.usage: dict[str, Any] = {}
        self.tools: dict[Any, int] = {}  # Messages block index -> chat tool-call index
        self.id = chat_id(None)
        self.model: Any = None
        self.created = int(time.time())

    def body(self, body: bytes) -> bytes:
        return messages_answer_to_chat(body)

    def feed(self, data: bytes) -> bytes:
        out: list[bytes] = []
        for event in data.split(b"\n\n"):
            payload = data_of(event) if event else None
            if payload is None:
                continue
            try:
                obj = orjson.loads(payload)
            except orjson.JSONDecodeError:
                continue
            if isinstance(obj, dict):
                self._event(obj, out)
        return b"".join(out)

    def _event(self, obj: dict[str, Any], out: list[bytes]) -> None:
        kind = obj.get("type")
        if kind == "content_block_delta":
            delta = obj_of(obj.get("delta"))
            what = delta.get("type")
            if what == "text_delta":
                out.append(self._chunk(b'{"content":%b}' % orjson.dumps(delta.get("text", ""))))
            elif what == "thinking_delta":
                thought = orjson.dumps(delta.get("thinking", ""))
                out.append(self._chunk(b'{"reasoning_content":%b}' % thought))
            elif what == "input_json_delta" and obj.get("index") in self.tools:
                call = {
                    "index": self.tools[obj.get("index")],
                    "function": {"arguments": delta.get("partial_json", "")},
                }
                out.append(self._chunk(orjson.dumps({"tool_calls": [call]})))
        elif kind == "content_block_start":
            block = obj.get("content_block")
            if isinstance(block, dict) and block.get("type") == "tool_use":
                self.tools[obj.get("index")] = n = len(self.tools)
                call = {
                    "index": n,
                    "id": block.get("id"),
                    "type": "function",
                    "function": {"name": block.get("name"), "arguments": ""},
                }
                out.append(self._chunk(orjson.dumps({"tool_calls": [call]})))
        elif kind == "message_start":
            self._start(obj.get("message"), out)
        elif kind == "message_delta":
            self._add_usage(obj.get("usage"))
            delta = obj_of(obj.get("delta"))
            finish = STOP_TO_CHAT.get(str(delta.get("stop_reason")), "stop")
            out.append(self._whole({"delta": {}, "finish_reason": finish}))
        elif kind == "message_stop":
            if self.client_wants_usage:
                usage = messages_usage_to_chat(self.usage)
                out.append(self._whole(None, usage))
            out.append(b"data: [DONE]\n\n")

    def _start(self, message: Any, out: list[bytes]) -> None:
        if isinstance(message, dict):
            self.id = chat_id(message.get("id"))
            self.model = message.get("model")
            self._add_usage(message.get("usage"))
        self.head = (
            b'data: {"id":%b,"object":"chat.completion.chunk","created":%d,"model":%b,'
            % (
                orjson.dumps(self.id),
                self.created,
                orjson.dumps(self.model),
            )
            + b'"choices":[{"index":0,"delta":'
        )
        out.append(self._chunk(b'{"role":"assistant","content":""}'))

    def _add_usage(self, raw: Any) -> None:
        if isinstance(raw, dict):
            self.usage.update((k, v) for k, v in raw.items() if v is not None)

    def _chunk(self, delta: bytes) -> bytes:
        return self.head + delta + self.tail

    def _whole(self, choice: dict[str, Any] | None, usage: Any = None) -> bytes:
        chunk: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [] if choice is None else [{"index": 0, **choice}],
        }
        if usage is not None:
            chunk["usage"] = usage
        return b"data: " + orjson.dumps(chunk) + b"\n\n"
