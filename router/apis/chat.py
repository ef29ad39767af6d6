"""OpenAI's Chat Completions API: ``POST /v1/chat/completions``.

- Body: ``model`` and a non-empty ``messages``; the sampling and tool fields below are
  type-checked, everything else passes as it came.
- Stream: ``stream: true``; the router asks for usage (``stream_options.include_usage``)
  whatever the client said, and cuts that chunk out when the client did not ask for it.
- First token: the first chunk whose delta has content, reasoning, tool calls or a
  refusal, or a finish reason (the role-only chunk is not one).
- Usage: the ``usage`` object of the last chunk that has one (``completion_tokens_details
  .reasoning_tokens``, ``prompt_tokens_details.cached_tokens``).
- A stream that breaks after its first byte ends with ``data: {"error": {...}}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, ClassVar

import orjson
from pydantic import Field, StrictBool, StrictFloat, StrictInt, StrictStr

from router.apis.base import Body, ClientApi, Inspector
from router.requestlog.records import Usage
from router.routing.sse import (
    EMPTY,
    NOT_JSON,
    ProtocolViolation,
    SseInspector,
    brief,
    is_json,
    read_json,
)

_NUMBER = "a number"


class ChatBody(Body):
    model: StrictStr = Field(min_length=1, description="a non-empty string")
    messages: Annotated[list[Any], Field(min_length=1, description="a non-empty array")]
    stream: StrictBool | None = Field(None, description="a boolean")
    temperature: StrictInt | StrictFloat | None = Field(None, description=_NUMBER)
    top_p: StrictInt | StrictFloat | None = Field(None, description=_NUMBER)
    max_tokens: StrictInt | None = Field(None, description="an integer")
    max_completion_tokens: StrictInt | None = Field(None, description="an integer")
    n: StrictInt | None = Field(None, description="an integer")
    tools: list[Any] | None = Field(None, description="an array")
    stop: StrictStr | list[Any] | None = Field(None, description="a string or an array")
    stream_options: dict[str, Any] | None = Field(None, description="an object")
    response_format: dict[str, Any] | None = Field(None, description="an object")


def ask_for_usage(payload: dict[str, Any], stream: bool) -> bool:
    """Asks a stream for its usage (it feeds stats and cost); True when the client asked."""
    if not stream:
        return False
    opts = payload.get("stream_options")
    wants = isinstance(opts, dict) and bool(opts.get("include_usage"))
    if not wants:
        payload["stream_options"] = {**(opts or {}), "include_usage": True}
    return wants


class ChatInspector(SseInspector):
    """A stream of OpenAI chunks: chat's, or legacy completions' (``TextInspector``).

    No ``__init__`` of its own: one per stream, its frame and ``super()`` call cost 0.35%
    of the policy lab's instructions per request."""

    chat = True  # False: legacy completions' choices, with their ``text``

    def _note(self, obj: dict[str, Any]) -> bool:
        """Records usage and tool-call fragments; False = drop this event."""
        usage = obj.get("usage")
        choices = obj.get("choices")
        if isinstance(usage, dict):
            self.usage = Usage.parse(usage)
            if not self.client_wants_usage and not choices:
                return False
        if self.chat and isinstance(choices, list):
            for choice in choices:
                delta = choice.get("delta") if isinstance(choice, dict) else None
                calls = delta.get("tool_calls") if isinstance(delta, dict) else None
                if isinstance(calls, list):
                    for call in calls:
                        if isinstance(call, dict):
                            fn = call.get("function")
                            args = fn.get("arguments") if isinstance(fn, dict) else None
                            self._tool_part(call.get("index", 0), args)
        text = self._text
        if text is not None and isinstance(choices, list):
            for choice in choices:
                if not isinstance(choice, dict):
                    continue
                part = choice.get("delta") if self.chat else choice
                if not isinstance(part, dict):
                    continue
                got = part.get("content" if self.chat else "text")
                if isinstance(got, str):
                    text.append(got)
        return True

    def _is_token(self, obj: dict[str, Any]) -> bool:
        choices = obj.get("choices")
        if not isinstance(choices, list):
            return False
        for choice in choices:
            if not isinstance(choice, dict):
                continue
            if self.chat:
                delta = choice.get("delta")
                if isinstance(delta, dict) and (
                    delta.get("content")
                    or delta.get("reasoning_content")
                    or delta.get("reasoning")
                    or delta.get("tool_calls")
                    or delta.get("refusal")
                ):
                    self.content = True
                    return True
            elif choice.get("text"):
                self.content = True
                return True
            if choice.get("finish_reason"):
                return True
        return False


class TextInspector(ChatInspector):
    """A stream of legacy completions' chunks: their ``text``, and no tool calls."""

    chat = False

    def __init__(self, *, client_wants_usage: bool, json: bool = False) -> None:
        super().__init__(client_wants_usage=client_wants_usage, tools=False, json=json)


def wants_json(payload: Mapping[str, Any]) -> bool:
    """Did the request's ``response_format`` ask for JSON (``json_object``, ``json_schema``)?"""
    fmt = payload.get("response_format")
    return isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema")


def _output_error(obj: dict[str, Any], json: bool) -> str | None:
    """A non-streamed answer's output error, as ``ChatInspector.output_error``: None for
    choices with content, a tool call or reasoning (JSON where asked for), or embeddings'
    data."""
    choices = obj.get("choices")
    if not isinstance(choices, list):
        # Embeddings: their vectors; another shape: not ours to judge.
        return EMPTY if "data" in obj and not obj["data"] else None
    found = False
    for choice in choices:
        if not isinstance(choice, dict):
            continue
        msg = choice.get("message")
        text = msg.get("content") if isinstance(msg, dict) else choice.get("text")
        if text:
            if json and not (isinstance(text, str) and is_json(text)):
                return NOT_JSON
            found = True
        elif isinstance(msg, dict) and (
            msg.get("tool_calls") or msg.get("refusal") or msg.get("reasoning_content")
        ):
            found = True
    return None if found else EMPTY


def inspect_body(body: bytes, json: bool = False) -> tuple[Usage | None, bool | None, str | None]:
    """Usage, tool-call validity and the output error (``output_error``) of a non-streamed
    answer; raises on non-JSON."""
    obj = read_json(body)
    if "error" in obj and obj["error"] and "choices" not in obj and "data" not in obj:
        raise ProtocolViolation(f"upstream answered 200 with an error: {brief(obj['error'])}")
    usage = Usage.parse(obj.get("usage"))
    valid: bool | None = None
    choices = obj.get("choices")
    if isinstance(choices, list):
        for choice in choices:
            msg = choice.get("message") if isinstance(choice, dict) else None
            calls = msg.get("tool_calls") if isinstance(msg, dict) else None
            if isinstance(calls, list) and calls:
                valid = True if valid is None else valid
                for call in calls:
                    fn = call.get("function") if isinstance(call, dict) else None
                    args = fn.get("arguments") if isinstance(fn, dict) else None
                    if isinstance(args, str) and args:
                        try:
                            orjson.loads(args)
                        except orjson.JSONDecodeError:
                            valid = False
    return usage, valid, _output_error(obj, json)


class Chat(ClientApi):
    name: ClassVar[str] = "chat"
    path: ClassVar[str] = "/v1/chat/completions"
    operation: ClassVar[str] = "chat/completions"
    body: ClassVar[type[Body]] = ChatBody

    def prepare(self, payload: dict[str, Any], stream: bool) -> bool:
        return ask_for_usage(payload, stream)

    def wants_json(self, payload: Mapping[str, Any]) -> bool:
        return wants_json(payload)

    def inspector(
        self, payload: Mapping[str, Any], client_wants_usage: bool, json: bool
    ) -> Inspector:
        # client_wants_usage, tools, json: positional, as a class called with keywords
        # gathers them in a dict for its __init__ (0.33% of the lab's instructions).
        return ChatInspector(client_wants_usage, bool(payload.get("tools")), json)

    def inspect_body(self, body: bytes, json: bool) -> tuple[Usage | None, bool | None, str | None]:
        return inspect_body(body, json)


API = Chat()
