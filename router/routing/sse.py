"""Peeking at an SSE stream on its way through, without re-serialising it.

Until the first token, every event is parsed (a handful of small JSON objects): the
router must know when a real token has arrived (TTFT, hedging, the point after which a
stream can no longer fail over), and must catch an upstream that sends an error or
garbage instead of tokens. After the first token, bytes pass through untouched; an event
is parsed only when a substring test says it carries ``usage`` (looked for from the end)
or a tool call (looked for only when the request offered tools), or that it may not be an
event to pass on: an ``"error":`` key (a host's error event mid-stream), or a data event
that does not end in ``}`` (garbage, an HTML page, a cut event; one count per read more
than the event count finds it). Those are parsed strictly and end the stream as broken
(``ProtocolViolation``, carrying the valid events before them), rather than reach the
client as tokens.

``SseInspector`` is that machinery; what an event means (which one is a token, where the
usage is, what to cut out) is said by each client API's subclass in ``router.apis``.

It also judges the answer's output (``output_error``): an answer with no content and no
tool call is broken, and so is one that is not valid JSON where the request asked for
JSON (only then is every event's text collected: such requests are rare, and the fast
path stays untouched for the others).
"""

from __future__ import annotations

from typing import Any

import orjson

from router.requestlog.records import Usage

_MAX_HELD = 1 << 20  # bytes an upstream may send before its first token, then it is garbage
DONE = b"data: [DONE]"
EMPTY = "empty"  # output errors: an answer with nothing in it,
NOT_JSON = "not_json"  # or not the JSON that response_format asked for


class ProtocolViolation(Exception):
    """The upstream's stream is not OpenAI-style SSE, or it carried an error event.

    ``forward``: the valid events of the same read before the bad one, still to go to
    the client (after its first token) before the stream ends as broken."""

    def __init__(self, message: str, forward: bytes = b"") -> None:
        super().__init__(message)
        self.forward = forward


def _events(block: bytes) -> list[bytes]:
    return [e for e in block.split(b"\n\n") if e.strip()]


def _joined(events: list[bytes]) -> bytes:
    """Events back in a stream, each closed by its blank line (a join, not a generator
    expression: that is a frame of its own)."""
    return b"\n\n".join(events) + b"\n\n" if events else b""


def data_of(event: bytes) -> bytes | None:
    """The payload of an event's data lines (joined), or None for comments/other fields.
    Stripped at both ends: a host's ``[DONE]`` with a trailing blank or a lone CR (a
    stream whose Content-Length cut its last CRLF) is the end wherever it is read, by
    the inspector and by every translator alike."""
    # A slice's compare, cheaper than startswith() (which parses its arguments).
    if event[:5] == b"data:" and event.find(b"\n") == -1:  # the usual one-line event
        return event[5:].strip()
    parts = [line[5:].strip() for line in event.split(b"\n") if line.startswith(b"data:")]
    if not parts:
        return None
    return b"\n".join(parts)


class SseInspector:
    """Feed it raw upstream bytes; it returns the bytes to forward and notes what it saw.

    Subclasses say what events mean (``_note``, ``_is_token``) and which bytes mark an
    event carrying a piece of a tool call (``TOOL_MARKER``).
    """

    TOOL_MARKER = b'"tool_calls"'

    def __init__(self, client_wants_usage: bool, tools: bool = True, json: bool = False) -> None:
        # Tool calls come only when the request offered tools: without them, no block is
        # scanned for the marker (a scan of every byte, the costliest step of a long stream).
        self.tools = tools
        self.client_wants_usage = client_wants_usage
        self.first_token = False
        self.content = False  # the first token carried content, a tool call or reasoning
        self.done = False
        self.usage: Usage | None = None
        self.events = 0
        self._carry = b""
        self._tool_args: dict[int, list[str]] | None = None
        self._text: list[str] | None = [] if json else None  # the answer's text, to parse

    def feed(self, data: bytes) -> bytes:
        """Returns the complete events in ``data`` (plus any carried part), to forward."""
        # find, not ``in``: for bytes, ``in`` first tries its operand as an integer, and
        # raises and formats a TypeError inside, at every read of every stream.
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
            return self._before_first_token(data)
        return self._after_first_token(data, 0, 0)

    def _after_first_token(self, data: bytes, start: int, head: int) -> bytes:
        """``data[head:]``, with the events from ``start`` on that carry usage or tool calls
        parsed (those before the first such marker pass untouched: a whole answer in one
        read ends with its usage chunk). The usage marker is looked for from the end: the
        usage chunk closes the stream, and when several carry usage the last one counts."""
        if data[-8:] == b"[DONE]\n\n":  # cheaper than endswith(), which parses its arguments
            self.done = True
        # One search per read in the usual case (no usage here); a "usage": null, which
        # some hosts put in every chunk, sends it on to the one before.
        first = data.rfind(b'"usage":', start) if start else data.rfind(b'"usage":')
        while first != -1:
            # A byte by its index (an int, no copy): the read ends in a blank line, after it.
            if data[first + 8] == 0x7B or data[first + 8 : first + 10] == b" {":
                break
            first = data.rfind(b'"usage":', start, first)
        if self.tools:
            tools = data.find(self.TOOL_MARKER, start, len(data) if first == -1 else first)
            if tools != -1:
                first = tools
        if self._text is not None:
            first = start  # JSON asked for: every event's text is collected
        # A host's error event (an "error" key, "object": "error", a choice that finished
        # with "error"): one search per read finds the marker, the event is then parsed.
        bad = data.find(b'"error"', start) if start else data.find(b'"error"')
        if bad != -1 and (first == -1 or bad < first):
            first = bad
        if first == -1:
            events = data.count(b"data:", start) if start else data.count(b"data:")
            # Every data event ends in "}" (but [DONE]), or one is no JSON object: for the
            # usual read of one event its last bytes say it, else one more count.
            if events == 1 and not start:
                framed = data[-3] == 0x7D or self.done  # "}", then the blank line
            else:
                framed = events == data.count(b"}\n\n", start) + (1 if self.done else 0)
            if not framed:
                return self._inspect(data, start, start, head)
            # Events passed through unparsed: only a fallback for the token count, so it
            # is not kept up once usage gives it.
            usage = self.usage
            if usage is None or not usage.completion_tokens:
                self.events += events
            return data[head:] if head else data
        # The events before the one holding ``first`` (found once, here, for whichever
        # marker came first) pass unparsed: framed as above.
        cut = data.rfind(b"\n\n", start, first)
        cut = start if cut == -1 else cut + 2
        if data.count(b"data:", start, cut) != data.count(b"}\n\n", start, cut):
            return self._inspect(data, start, start, head)
        return self._inspect(data, start, cut, head)

    def _before_first_token(self, block: bytes) -> bytes:
        """Parses events one by one until the first token; the rest of the block takes the
        fast path (a whole answer often arrives in one read)."""
        keep: list[bytes] | None = None  # the events kept, once one has been dropped
        pos = 0
        n = len(block)
        while pos < n:
            end = block.find(b"\n\n", pos)
            if end == -1:
                end = n
            start, pos = pos, end + 2
            if self.first_token:
                kept = b"" if keep is None else _joined(keep)
                try:
                    rest = self._after_first_token(block, start, 0 if keep is None else start)
                except ProtocolViolation as exc:
                    exc.forward = kept + exc.forward
                    raise
                return kept + rest
            event = block[start:end]
            if not event or event.isspace():
                continue
            self.events += 1
            payload = data_of(event)
            if payload is None:
                if keep is not None:
                    keep.append(event)
                continue
            if payload == b"[DONE]":  # the end: nothing after it is passed on
                self.done = True
                self.first_token = True
                if keep is None:
                    return block[:pos]
                keep.append(event)
                return _joined(keep)
            try:
                obj = orjson.loads(payload)
            except orjson.JSONDecodeError as exc:
                raise ProtocolViolation("stream event is not JSON") from exc
            if not isinstance(obj, dict):
                raise ProtocolViolation("stream event is not a JSON object")
            if obj.get("error"):
                raise ProtocolViolation(f"upstream sent an error event: {brief(obj['error'])}")
            if not self._note(obj):
                if keep is None:
                    keep = _events(block[:start])
                continue
            if not self.first_token and self._is_token(obj):
                self.first_token = True
            if keep is not None:
                keep.append(event)
        return block if keep is None else _joined(keep)

    def _inspect(self, data: bytes, start: int, cut: int, head: int) -> bytes:
        """``data[head:]``, the events from ``cut`` (an event's start) on parsed, those from
        ``start`` to it counted; one that is not a JSON object or [DONE], or that is an
        error, ends the stream."""
        keep = []
        dropped = blank = False
        ended = self.done  # by the [DONE] that ends this read, whose event stops the loop
        # The split's pieces one by one (blank ones skipped): no list comprehension, a
        # frame of its own, for the one or two events of the usual read.
        for event in data[cut:].split(b"\n\n"):
            if not event or event.isspace():
                blank = True  # not passed on if the events are joined anew
                continue
            self.events += 1
            # The usual [DONE], that ends the usual last read, is known at a compare.
            payload = b"[DONE]" if event == DONE else data_of(event)
            if payload is None:
                keep.append(event)  # a comment, or a field other than data: valid SSE
                continue
            if payload == b"[DONE]":  # the end: nothing after it is passed on
                self.done = True
                keep.append(event)
                # The usual last read ends with it, and passes as it came (no join): when
                # the first [DONE] from ``cut`` on is its last bytes, nothing follows.
                if blank or data.find(b"[DONE]", cut) != len(data) - 8:
                    dropped = True
                break
            try:
                obj = orjson.loads(payload)
            except orjson.JSONDecodeError:
                obj = _NOT_JSON
            why = _invalid(obj)
            if why is not None:
                passed = data[head:cut] + _joined(keep)
                raise ProtocolViolation(why, passed)
            assert isinstance(obj, dict)
            if not self._note(obj):
                dropped = True
                continue
            keep.append(event)
            if self.done and not ended:  # the API's own end event (Messages' message_stop)
                dropped = True  # nothing after it is passed on
                break
        if self.usage is None or not self.usage.completion_tokens:
            self.events += data.count(b"data:", start, cut)
        if not dropped:
            return data[head:] if head else data
        return data[head:cut] + _joined(keep)

    def _note(self, obj: dict[str, Any]) -> bool:
        """Records what an event says (usage, tool-call fragments, text); False = drop it."""
        raise NotImplementedError

    def _is_token(self, obj: dict[str, Any]) -> bool:
        """Is this event the first token (it sets ``content`` when it carries some)?"""
        raise NotImplementedError

    def _tool_part(self, index: Any, args: Any) -> None:
        """A fragment of a tool call's argument string, for ``tool_calls_valid``."""
        if self._tool_args is None:
            self._tool_args = {}
        parts = self._tool_args.setdefault(index if isinstance(index, int) else 0, [])
        if isinstance(args, str):
            parts.append(args)

    def tool_calls_valid(self) -> bool | None:
        """None when the answer had no tool calls; else whether every argument string parses."""
        if not self._tool_args:
            return None
        for parts in self._tool_args.values():
            text = "".join(parts)
            if not text:
                continue
            try:
                orjson.loads(text)
            except orjson.JSONDecodeError:
                return False
        return True

    def output_error(self) -> str | None:
        """Why the answer is broken, or None: ``empty`` (no content, tool call or
        reasoning), ``not_json`` (not valid JSON where JSON was asked for)."""
        if not self.content:
            return EMPTY
        if self._text is not None and not is_json("".join(self._text)):
            return NOT_JSON
        return None

    def leftover(self) -> bytes:
        """A final event the upstream did not terminate with a blank line, checked as any
        other (a cut event is no event: ``ProtocolViolation``)."""
        data, self._carry = self._carry, b""
        if not data.strip():
            return b""
        if data.strip() == DONE:
            self.done = True
            return data + (b"\n\n" if not data.endswith(b"\n\n") else b"")
        data += b"\n\n"
        if not self.first_token:
            return self._before_first_token(data)
        return self._inspect(data, 0, 0, 0)


_NOT_JSON = object()


def _invalid(obj: Any) -> str | None:
    """Why a parsed data event after the first token cannot be passed on, or None: not
    a JSON object, or a host's error in any of the shapes hosts send one mid-stream
    (LiteLLM's and TGI's ``error`` key, vLLM's ``"object": "error"``, OpenRouter's
    ``error`` beside a choice that finished with ``"error"``)."""
    if obj is _NOT_JSON:
        return "stream event is not JSON"
    if not isinstance(obj, dict):
        return "stream event is not a JSON object"
    if obj.get("error"):
        return f"upstream sent an error event: {brief(obj['error'])}"
    if obj.get("object") == "error":
        return f"upstream sent an error event: {brief(obj)}"
    choices = obj.get("choices")
    if isinstance(choices, list):
        for c in choices:  # a loop, not any() over a generator: no frame of its own
            if isinstance(c, dict) and c.get("finish_reason") == "error":
                return "upstream ended the answer with finish_reason 'error'"
    return None


def brief(err: Any) -> str:
    """An upstream's error, short enough for a log line or a message."""
    if isinstance(err, dict):
        msg = err.get("message")
        return str(msg)[:200] if msg else str(err)[:200]
    return str(err)[:200]


def is_json(text: str) -> bool:
    try:
        orjson.loads(text)
    except orjson.JSONDecodeError:
        return False
    return True


def read_json(body: bytes) -> dict[str, Any]:
    """A whole answer as a JSON object; ``ProtocolViolation`` when it is not one."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ProtocolViolation("answer is not JSON") from exc
    if not isinstance(obj, dict):
        raise ProtocolViolation("answer is not a JSON object")
    return obj
