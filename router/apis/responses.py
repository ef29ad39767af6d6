"""OpenAI's Responses API: ``POST /v1/responses``.

- Body: ``model`` and ``input`` (a string or an array of items); the fields below are
  type-checked, everything else passes as it came.
- Stream: ``stream: true``; events named ``response.*``, no ``[DONE]``: the stream ends
  with ``response.completed`` (``response.incomplete`` when cut short by
  ``max_output_tokens``, ``response.failed`` when the host failed it).
- First token: ``response.output_text.delta``, ``response.reasoning_text.delta`` or
  ``response.reasoning_summary_text.delta``, ``response.function_call_arguments.delta``,
  ``response.custom_tool_call_input.delta``, ``response.refusal.delta``.
- Usage: ``response.usage`` of the final event (``input_tokens``, ``output_tokens``,
  ``output_tokens_details.reasoning_tokens``, ``input_tokens_details.cached_tokens``).
  The final event is found from the end of a read with one search, and only it is
  parsed after the first token: tool-call validity and the JSON check read its output.
- A stream that breaks after its first byte ends with an ``error`` event and
  ``response.failed`` (status ``failed``, ``error.code`` ``stream_broken``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import orjson
from pydantic import Field, StrictBool, StrictFloat, StrictInt, StrictStr

from providers.errors import UpstreamError
from router.apis.base import Body, ClientApi, Inspector
from router.requestlog.records import Usage
from router.routing.sse import EMPTY, NOT_JSON, ProtocolViolation, data_of

_NUMBER = "a number"
_MAX_HELD = 1 << 20  # bytes before the first token, then the upstream is sending garbage
TOKEN_EVENTS = frozenset(
    {
        "response.output_text.delta",
        "response.reasoning_text.delta",
        "response.reasoning_summary_text.delta",
        "response.function_call_arguments.delta",
        "response.custom_tool_call_input.delta",
        "response.refusal.delta",
    }
)
FINAL_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})


class ResponsesBody(Body):
    model: StrictStr = Field(min_length=1, description="a non-empty string")
    input: StrictStr | list[Any] = Field(description="a string or an array")
    instructions: StrictStr | list[Any] | None = Field(None, description="a string")
    stream: StrictBool | None = Field(None, description="a boolean")
    temperature: StrictInt | StrictFloat | None = Field(None, description=_NUMBER)
    top_p: StrictInt | StrictFloat | None = Field(None, description=_NUMBER)
    max_output_tokens: StrictInt | None = Field(None, description="an integer")
    tools: list[Any] | None = Field(None, description="an array")
    tool_choice: StrictStr | dict[str, Any] | None = Field(
        None, description="a string or an object"
    )
    text: dict[str, Any] | None = Field(None, description="an object")
    reasoning: dict[str, Any] | None = Field(None, description="an object")
    parallel_tool_calls: StrictBool | None = Field(None, description="a boolean")
    previous_response_id: StrictStr | None = Field(None, description="a string")
    store: StrictBool | None = Field(None, description="a boolean")
    include: list[Any] | None = Field(None, description="an array")


def usage_of(obj: Any) -> Usage | None:
    """A Responses usage object as the router's ``Usage``."""
    if not isinstance(obj, dict):
        return None
    u = Usage(
        prompt_tokens=_int(obj.get("input_tokens")),
        completion_tokens=_int(obj.get("output_tokens")),
    )
    out = obj.get("output_tokens_details")
    if isinstance(out, dict):
        u.reasoning_tokens = _int(out.get("reasoning_tokens"))
    given = obj.get("input_tokens_details")
    if isinstance(given, dict):
        u.cached_tokens = _int(given.get("cached_tokens"))
        u.cache_write_tokens = _int(given.get("cache_write_tokens"))
    return u


def _int(v: Any) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else 0


def judge(response: Any, json: bool) -> tuple[bool | None, str | None]:
    """Tool-call validity and output error of a finished response object's ``output``."""
    output = response.get("output") if isinstance(response, dict) else None
    if not isinstance(output, list):
        return None, EMPTY
    valid: bool | None = None
    found = False
    text: list[str] = []
    for item in output:
        if not isinstance(item, dict):
            continue
        kind = item.get("type")
        if kind == "function_call":
            found = True
            valid = (valid is not False) and _is_json(item.get("arguments") or "{}")
        elif kind == "message":
            for part in item.get("content") or ():
                if isinstance(part, dict) and (part.get("text") or part.get("refusal")):
                    found = True
                    text.append(part.get("text") or "")
        elif kind is not None:
            found = True  # reasoning, a custom or hosted tool's call: something came
    if not found:
        return valid, EMPTY
    if json and not _is_json("".join(text)):
        return valid, NOT_JSON
    return valid, None


def _is_json(text: str) -> bool:
    try:
        orjson.loads(text)
    except orjson.JSONDecodeError:
        return False
    return True


class ResponsesInspector:
    """Peeks at a Responses stream: every event parsed until the first token, then only
    the final one (found by one search from the end of each read)."""

    def __init__(self, *, json: bool = False) -> None:
        self.json = json
        self.first_token = False
        self.done = False
        self.usage: Usage | None = None
        self.events = 0
        self._carry = b""
        self._valid: bool | None = None
        self._error: str | None = EMPTY

    def feed(self, data: bytes) -> bytes:
        if data.find(b"\r") != -1:
            data = data.replace(b"\r\n", b"\n")
        if self._carry:
            data = self._carry + data
            self._carry = b""
        end = data.rfind(b"\n\n")
        if end == -1:
            self._carry = data
            if len(data) > _MAX_HELD:
                raise ProtocolViolation("no SSE event boundary in the first megabyte")
            return b""
        if end + 2 < len(data):
            self._carry = data[end + 2 :]
            data = data[: end + 2]
        if not self.first_token:
            # Event by event up to the first token (not a split of the whole read: a
            # whole answer often comes in one).
            pos, n = 0, len(data)
            while pos < n and not self.first_token:
                stop = data.find(b"\n\n", pos)
                event = data[pos:stop]
                pos = stop + 2
                if event.strip():
                    self._before_first_token(event)
        if self.first_token and not self.done:
            data = self._pass(data)
        return data

    def _pass(self, data: bytes) -> bytes:
        """``data`` up to the final event if it is there (nothing after a stream's end
        passes on), checked. The final event was parsed by ``_final``: only the events
        before it are checked, unless it is ``response.failed`` (which ends the stream as
        broken) — a whole answer in one read is not parsed again for its ``"error": null``."""
        final = self._final(data)
        if final is None:
            self._check(data, len(data))
            return data
        start, end, failed = final
        self._carry = b""
        data = data[:end]
        self._check(data, end if failed else start)
        return data

    def _check(self, data: bytes, stop: int) -> None:
        """After the first token events pass unparsed, unless the read may hold one not to
        pass on: a data event that does not end in ``}`` (garbage, an HTML page, a cut
        event; one count per read, and one more when it holds several events) or an
        ``"error"`` (a host's error event or ``response.failed``), in ``data[:stop]``.
        Those end the stream as broken (``ProtocolViolation``, carrying the valid events
        before them), as for chat."""
        events = data.count(b"data:", 0, stop)
        framed = data[stop - 3] == 0x7D if events == 1 else events == data.count(b"}\n\n", 0, stop)
        if framed and data.find(b'"error"', 0, stop) == -1:
            return
        pos = 0
        for event in data[:stop].split(b"\n\n"):
            payload = data_of(event) if event.strip() else None
            if payload is not None and payload != b"[DONE]":
                try:
                    obj = _load(payload)
                except ProtocolViolation as exc:
                    exc.forward = data[:pos]
                    raise
                if obj is not None and obj.get("type") in ("error", "response.failed"):
                    message = obj.get("message") or (obj.get("response") or {}).get("error")
                    raise ProtocolViolation(
                        f"upstream sent an error event: {str(message)[:200]}", data[:pos]
                    )
            pos += len(event) + 2

    def _before_first_token(self, event: bytes) -> None:
        obj = _parse(event)
        if obj is None:
            return
        self.events += 1
        kind = obj.get("type")
        if kind == "error" or kind == "response.failed":
            message = obj.get("message") or (obj.get("response") or {}).get("error")
            raise ProtocolViolation(f"upstream sent an error event: {str(message)[:200]}")
        if kind in TOKEN_EVENTS:
            self.first_token = True
        elif kind in FINAL_EVENTS:
            self.first_token = True  # finished without a token: judged empty below

    def _final(self, data: bytes) -> tuple[int, int, bool] | None:
        """Where the final event starts and ends in ``data``, and whether it is
        ``response.failed`` (None when it is not there). Only events holding a
        ``"response":`` object are parsed, found by searching from the end (a whole
        answer in one read is not scanned), past anything that holds one but is not a
        final event (``response.in_progress``, garbage). The first final event ends the
        stream: a host that sends another after it (``response.failed`` after
        ``response.completed``) has already answered."""
        found: tuple[int, int, dict[str, Any]] | None = None
        at = data.rfind(b'"response":')
        while at != -1:
            start = data.rfind(b"\n\n", 0, at)
            start = 0 if start == -1 else start + 2
            end = data.find(b"\n\n", at)
            end = len(data) if end == -1 else end + 2
            try:
                obj = _parse(data[start:end])
            except ProtocolViolation:
                obj = None  # not an event: dropped after the end, judged by _check before
            if obj is not None and obj.get("type") in FINAL_EVENTS:
                found = (start, end, obj)
            at = data.rfind(b'"response":', 0, start)
        if found is None:
            return None
        start, end, obj = found
        self._finish(obj)
        return start, end, obj.get("type") == "response.failed"

    def _finish(self, obj: dict[str, Any]) -> None:
        self.done = True
        response = obj.get("response")
        if isinstance(response, dict):
            self.usage = usage_of(response.get("usage"))
            self._valid, self._error = judge(response, self.json)
        if obj.get("type") == "response.failed":
            self._error = "failed"

    def leftover(self) -> bytes:
        """A last event the upstream did not end with a blank line (its stream closed,
        or its Content-Length ran out). Parsed whatever its last byte: an event cut
        inside its JSON may still end in ``}``, which the check of a read takes as whole
        (``ProtocolViolation``, as chat's inspector does)."""
        data, self._carry = self._carry, b""
        if not data.strip():
            return b""
        data += b"\n\n"
        if self.first_token and not self.done:
            _parse(data)  # the carry is one event: no blank line in it
            data = self._pass(data)
        return data

    def tool_calls_valid(self) -> bool | None:
        return self._valid

    def output_error(self) -> str | None:
        return self._error


def _parse(event: bytes) -> dict[str, Any] | None:
    """An event's JSON data (None for comments and keep-alives); garbage raises."""
    payload = data_of(event)
    return None if payload is None else _load(payload)


def _load(payload: bytes) -> dict[str, Any]:
    try:
        obj = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise ProtocolViolation("stream event is not JSON") from exc
    if not isinstance(obj, dict):
        raise ProtocolViolation("stream event is not a JSON object")
    return obj


def failed_events(message: str, code: str, response_id: str = "resp_failed") -> bytes:
    """An ``error`` event and ``response.failed``: how a Responses stream ends in error."""
    error = {"code": code, "message": message}
    failed: dict[str, Any] = {
        "id": response_id,
        "object": "response",
        "status": "failed",
        "error": error,
        "output": [],
        "incomplete_details": None,
    }
    return (
        b"event: error\ndata: "
        + orjson.dumps({"type": "error", "sequence_number": 0, **error, "param": None})
        + b"\n\nevent: response.failed\ndata: "
        + orjson.dumps({"type": "response.failed", "sequence_number": 1, "response": failed})
        + b"\n\n"
    )


class Responses(ClientApi):
    name: ClassVar[str] = "responses"
    path: ClassVar[str] = "/v1/responses"
    operation: ClassVar[str] = "responses"
    body = ResponsesBody

    def wants_json(self, payload: Mapping[str, Any]) -> bool:
        text = payload.get("text")
        fmt = text.get("format") if isinstance(text, dict) else None
        return isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema")

    def inspector(
        self, payload: Mapping[str, Any], client_wants_usage: bool, json: bool
    ) -> Inspector:
        return ResponsesInspector(json=json)

    def inspect_body(self, body: bytes, json: bool) -> tuple[Usage | None, bool | None, str | None]:
        try:
            obj = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise ProtocolViolation("answer is not JSON") from exc
        if not isinstance(obj, dict):
            raise ProtocolViolation("answer is not a JSON object")
        if obj.get("status") == "failed" or ("error" in obj and "output" not in obj):
            raise ProtocolViolation(
                f"upstream answered 200 with an error: {str(obj.get('error'))[:200]}"
            )
        valid, error = judge(obj, json)
        return usage_of(obj.get("usage")), valid, error

    def stream_error(self, exc: BaseException) -> bytes:
        reason = exc.reason if isinstance(exc, UpstreamError) else "internal_error"
        return failed_events(f"upstream stream failed after it started: {reason}", "stream_broken")


API = Responses()
