"""Anthropic's Messages API: ``POST /v1/messages``, what Claude Code and the Anthropic SDKs speak.

- Body: ``model``, a non-empty ``messages`` (each a turn with a ``role`` and a ``content``
  that is a string or a list of blocks) and ``max_tokens``, as Anthropic requires;
  ``system``, sampling fields, ``tools`` and ``thinking`` type-checked.
- Headers: the client's key as ``x-api-key`` or Bearer; ``anthropic-version`` and
  ``anthropic-beta`` passed on upstream as they came.
- Stream: ``stream: true``; usage always comes (``message_start`` and ``message_delta``).
- First token: a ``content_block_delta`` with text, tool input (``input_json_delta``) or
  thinking; or a ``message_delta`` (a stop with nothing said).
- End: the ``message_stop`` event.
- Usage: ``message_start``'s, updated by ``message_delta``'s. Anthropic counts cache reads
  and writes apart from ``input_tokens``; the prompt is their sum, as OpenAI counts it.
- Errors: ``{"type": "error", "error": {"type", "message"}}`` with the same statuses as
  the other APIs; a stream that breaks after its first byte ends with ``event: error``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, ClassVar

import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

from providers.errors import UpstreamError
from router.apis.base import Body, ClientApi, Inspector
from router.errors import RouterError
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
# Anthropic's error types by status; 503 and 504 are the router's own (no endpoint could
# take the request; none answered in time).
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}


class Turn(BaseModel):
    """A turn: ``user`` or ``assistant`` (or ``system`` mid-conversation, a beta Claude Code
    uses), its content a string or a list of blocks. Roles are not listed, so that a new
    one reaches a host that knows it rather than a 400 from us."""

    model_config = ConfigDict(extra="ignore")
    role: StrictStr = Field(min_length=1)
    content: StrictStr | list[dict[str, Any]]


class MessagesBody(Body):
    model: StrictStr = Field(min_length=1, description="a non-empty string")
    messages: Annotated[list[Turn], Field(min_length=1, description="a non-empty array")]
    max_tokens: StrictInt = Field(ge=1, description="a positive integer")
    system: StrictStr | list[dict[str, Any]] | None = Field(
        None, description="a string or an array of text blocks"
    )
    stream: StrictBool | None = Field(None, description="a boolean")
    temperature: StrictInt | StrictFloat | None = Field(None, description=_NUMBER)
    top_p: StrictInt | StrictFloat | None = Field(None, description=_NUMBER)
    top_k: StrictInt | None = Field(None, description="an integer")
    stop_sequences: list[StrictStr] | None = Field(None, description="an array of strings")
    tools: list[dict[str, Any]] | None = Field(None, description="an array of tools")
    tool_choice: dict[str, Any] | None = Field(None, description="an object")
    thinking: dict[str, Any] | None = Field(None, description="an object")
    metadata: dict[str, Any] | None = Field(None, description="an object")


def anthropic_usage(raw: Mapping[str, Any]) -> Usage:
    """Anthropic's usage in the router's terms: cache reads and writes are part of the
    prompt (Anthropic's ``input_tokens`` leaves them out); thinking is in the output."""
    read = _count(raw.get("cache_read_input_tokens"))
    written = _count(raw.get("cache_creation_input_tokens"))
    return Usage(
        prompt_tokens=_count(raw.get("input_tokens")) + read + written,
        completion_tokens=_count(raw.get("output_tokens")),
        cached_tokens=read,
        cache_write_tokens=written,
    )


def _count(v: Any) -> int:
    return v if isinstance(v, int) and v >= 0 else 0


class MessagesInspector(SseInspector):
    """A stream of Messages events."""

    TOOL_MARKER = b'"input_json_delta"'

    def __init__(self, *, tools: bool, json: bool) -> None:
        super().__init__(client_wants_usage=True, tools=tools, json=json)
        self._raw: dict[str, Any] = {}

    def _feed_to_the_end(self, data: bytes) -> bytes:
        """``feed`` once ``message_delta`` has come: after the first token events pass
        unparsed, so ``message_stop`` is looked for in the bytes, and what follows its
        event in the same read is never passed on (a ping, garbage: the stream is over).
        Only the last read or two of a stream pay for it (the usual ``feed`` is the
        base's, untouched)."""
        if data.find(b"\r") != -1:
            data = data.replace(b"\r\n", b"\n")
        if self._carry:  # an event cut between reads: looked at whole
            data, self._carry = self._carry + data, b""
        at = data.find(b'"message_stop"')
        if at != -1:
            end = data.find(b"\n\n", at)
            if end != -1:
                data = data[: end + 2]
        out = SseInspector.feed(self, data)
        if not self.done and at != -1:
            self._check_end(out)
        return out

    def _before_first_token(self, block: bytes) -> bytes:
        """The base's; when ``message_delta`` was the first token (a stop with nothing
        said), what followed it in the read passed unparsed: its ``message_stop`` is
        looked for as in later reads, and nothing after it passed on."""
        out = super()._before_first_token(block)
        if self.done or self.feed != self._feed_to_the_end:
            return out
        at = out.find(b'"message_stop"')
        if at != -1:
            end = out.find(b"\n\n", at)
            out = out if end == -1 else out[: end + 2]
            self._check_end(out)
            if self.done:
                self._carry = b""
        return out

    def leftover(self) -> bytes:
        out = super().leftover()
        if out and not self.done:
            self._check_end(out)
        return out

    def _check_end(self, out: bytes) -> None:
        start = out.rfind(b"\n\n", 0, len(out) - 2)
        last = out[start + 2 if start != -1 else 0 :]
        for line in last.split(b"\n"):
            if line.startswith(b"data:"):
                try:
                    obj = orjson.loads(line[5:])
                except orjson.JSONDecodeError:
                    return
                if isinstance(obj, dict) and obj.get("type") == "message_stop":
                    self.done = True
                return

    def _note(self, obj: dict[str, Any]) -> bool:
        kind = obj.get("type")
        if kind == "content_block_delta":
            delta = obj.get("delta")
            if isinstance(delta, dict):
                if delta.get("type") == "input_json_delta":
                    self._tool_part(obj.get("index"), delta.get("partial_json"))
                elif self._text is not None and delta.get("type") == "text_delta":
                    text = delta.get("text")
                    if isinstance(text, str):
                        self._text.append(text)
        elif kind == "message_start":
            message = obj.get("message")
            self._add_usage(message.get("usage") if isinstance(message, dict) else None)
        elif kind == "message_delta":
            self._add_usage(obj.get("usage"))
            # The stream's end is next: from now on each read is searched for it.
            self.feed = self._feed_to_the_end  # type: ignore[method-assign]  # per instance
        elif kind == "message_stop":
            self.done = True
        return True

    def _add_usage(self, raw: Any) -> None:
        if isinstance(raw, dict):
            self._raw.update((k, v) for k, v in raw.items() if v is not None)
            self.usage = anthropic_usage(self._raw)

    def _is_token(self, obj: dict[str, Any]) -> bool:
        kind = obj.get("type")
        if kind == "content_block_delta":
            delta = obj.get("delta")
            if not isinstance(delta, dict):
                return False
            what = delta.get("type")
            if (
                (what == "text_delta" and delta.get("text"))
                or what == "input_json_delta"
                or (what == "thinking_delta" and delta.get("thinking"))
            ):
                self.content = True
                return True
            return False
        return kind in ("message_delta", "message_stop")


def inspect_body(body: bytes, json: bool) -> tuple[Usage | None, bool | None, str | None]:
    """Usage, tool-call validity and output error of a whole Messages answer."""
    obj = read_json(body)
    if obj.get("type") == "error" or "content" not in obj:
        raise ProtocolViolation(f"upstream answered 200 with no message: {brief(obj.get('error'))}")
    raw = obj.get("usage")
    usage = anthropic_usage(raw) if isinstance(raw, dict) else None
    content = obj.get("content")
    blocks = [b for b in content if isinstance(b, dict)] if isinstance(content, list) else []
    kinds = {b.get("type") for b in blocks}
    tools_ok = True if "tool_use" in kinds else None  # its input is an object, not a string
    text = "".join(b["text"] for b in blocks if b.get("type") == "text" and b.get("text"))
    error = None
    if not (text or kinds & {"tool_use", "thinking", "redacted_thinking", "server_tool_use"}):
        error = EMPTY
    elif json and not is_json(text):
        error = NOT_JSON
    return usage, tools_ok, error


def error_object(status: int, message: str, **extra: Any) -> bytes:
    """Anthropic's error body."""
    err: dict[str, Any] = {"type": ERROR_TYPES.get(status, "api_error"), "message": message}
    err.update(extra)
    return orjson.dumps({"type": "error", "error": err})


class Messages(ClientApi):
    name: ClassVar[str] = "messages"
    path: ClassVar[str] = "/v1/messages"
    operation: ClassVar[str] = "messages"
    body = MessagesBody
    forwarded_headers: ClassVar[tuple[str, ...]] = ("anthropic-version", "anthropic-beta")

    def wants_json(self, payload: Mapping[str, Any]) -> bool:
        fmt = payload.get("output_format")  # structured outputs
        return isinstance(fmt, dict) and fmt.get("type") == "json_schema"

    def inspector(
        self, payload: Mapping[str, Any], client_wants_usage: bool, json: bool
    ) -> Inspector:
        return MessagesInspector(tools=bool(payload.get("tools")), json=json)

    def inspect_body(self, body: bytes, json: bool) -> tuple[Usage | None, bool | None, str | None]:
        return inspect_body(body, json)

    def error_body(self, exc: RouterError) -> bytes:
        extra = exc.extra()
        if exc.code is not None:
            extra["code"] = exc.code
        if exc.param is not None:
            extra["param"] = exc.param
        return error_object(exc.status, exc.message, **extra)

    def stream_error(self, exc: BaseException) -> bytes:
        reason = exc.reason if isinstance(exc, UpstreamError) else "internal_error"
        body = error_object(502, f"upstream stream failed after it started: {reason}")
        return b"event: error\ndata: " + body + b"\n\n"


API = Messages()
