"""What both directions between Messages and chat share: stop reasons, usage, ids,
tool inputs, error bodies, and the list of what a translation could not carry.

Usage: Anthropic counts cache reads and writes apart from ``input_tokens``, OpenAI inside
``prompt_tokens``; reasoning is inside the output either way.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import orjson

from router.apis.messages import ERROR_TYPES, anthropic_usage
from router.requestlog.records import Usage

STOP_TO_MESSAGES = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
STOP_TO_CHAT = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
# A chat event that only adds text: one choice whose delta is exactly {"content": "..."},
# no finish reason and no usage after it, in the compact JSON of OpenAI, vLLM and most
# hosts; group 1 is the text's JSON string literal. One C-level match: most events of a
# long answer skip the parse, which costs about as much again as the rest of their
# translation. Any other event is parsed. (Usage is read from the choice-less last chunk
# and after the choices, where hosts put it, not before them in a chunk with text.)
PLAIN_TEXT = re.compile(
    rb'"choices":\[\{"index":0,"delta":\{"content":("[^"\\\n]*(?:\\.[^"\\\n]*)*")\}'
    rb'(?:,"logprobs":null)?,"finish_reason":null\}\](?:,"usage":null)?\}\Z'
).search

# Carried by router.apis.reasoning in each host's own form, so not listed as dropped.
REASONING_FIELDS = frozenset({"thinking", "reasoning_effort", "reasoning"})


def obj_of(value: Any) -> dict[str, Any]:
    """``value`` if it is a JSON object, else an empty one: bodies are read defensively."""
    return value if isinstance(value, dict) else {}


class Dropped:
    """The names of what a translation could not carry, each once, in order met."""

    def __init__(self) -> None:
        self.names: dict[str, None] = {}

    def add(self, name: str) -> None:
        self.names[name] = None

    def list(self) -> list[str]:
        return list(self.names)


def chat_usage_to_messages(raw: Any) -> dict[str, int]:
    usage = Usage.parse(raw) or Usage()
    cached = min(usage.cached_tokens, usage.prompt_tokens)
    written = min(usage.cache_write_tokens, usage.prompt_tokens - cached)
    return {
        "input_tokens": usage.prompt_tokens - cached - written,
        "cache_creation_input_tokens": written,
        "cache_read_input_tokens": cached,
        "output_tokens": usage.completion_tokens,
    }


def messages_usage_to_chat(raw: Any) -> dict[str, Any]:
    usage = anthropic_usage(raw if isinstance(raw, dict) else {})
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        "prompt_tokens_details": {
            "cached_tokens": usage.cached_tokens,
            "cache_creation_tokens": usage.cache_write_tokens,
        },
    }


def message_id(chat_id: Any) -> str:
    return f"msg_{chat_id}" if isinstance(chat_id, str) and chat_id else tool_use_id("msg_")


def chat_id(message_id: Any) -> str:
    if isinstance(message_id, str) and message_id:
        return "chatcmpl-" + message_id.removeprefix("msg_")
    return "chatcmpl-" + uuid.uuid4().hex[:24]


def tool_use_id(prefix: str = "toolu_") -> str:
    return prefix + uuid.uuid4().hex[:24]


def tool_input(arguments: Any) -> dict[str, Any]:
    """A tool call's argument string as Anthropic's ``input`` object ({} when it is not
    one: the answer is then counted as a broken tool call by the stats)."""
    if isinstance(arguments, dict):
        return arguments
    try:
        value = orjson.loads(arguments) if isinstance(arguments, str) and arguments else {}
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def chat_error_to_messages(status: int, body: bytes) -> bytes:
    """An upstream's OpenAI-shaped error as Anthropic's, same status."""
    message = _error_message(body)
    error = {"type": ERROR_TYPES.get(status, "api_error"), "message": message}
    return orjson.dumps({"type": "error", "error": error})


def _error_message(body: bytes) -> str:
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body[:500].decode("utf-8", "replace")
    err = obj.get("error") if isinstance(obj, dict) else None
    if isinstance(err, dict) and err.get("message"):
        return str(err["message"])
    if isinstance(err, str):
        return err
    return body[:500].decode("utf-8", "replace")


def messages_error_to_chat(status: int, body: bytes) -> bytes:
    """An upstream's Anthropic-shaped error as OpenAI's, same status."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        obj = None
    err = obj.get("error") if isinstance(obj, dict) else None
    if isinstance(err, dict):
        message, kind = str(err.get("message") or ""), str(err.get("type") or "upstream_error")
    else:
        message, kind = body[:500].decode("utf-8", "replace"), "upstream_error"
    return orjson.dumps({"error": {"message": message, "type": kind, "code": None, "param": None}})
