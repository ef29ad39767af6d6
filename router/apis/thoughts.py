"""The reasoning text left out of an answer, when the client asked not to see it.

``return_thoughts: false`` (TokenLX) and ``exclude: true`` (OpenRouter) ask for the
answer without its reasoning text. A host told so in its own form leaves it out itself;
this catches what comes anyway (hosts whose form cannot say it, or that ignore it), in
the client's API: chat's ``reasoning_content`` / ``reasoning`` / ``reasoning_details``
/ ``thinking_blocks``; Responses' reasoning text and summary events and the text of
reasoning items (the items stay, with their ``encrypted_content``); Messages'
``thinking_delta`` events and the text of thinking blocks (their signatures stay: a
tool loop must send them back). Usage is untouched: the reasoning tokens are billed.

Only events whose bytes mention reasoning are parsed; the rest pass as they came.
"""

from __future__ import annotations

from typing import Any

import orjson

_CHAT_FIELDS = ("reasoning_content", "reasoning", "reasoning_details", "thinking_blocks")
_RESPONSES_DROPPED = frozenset(
    {
        "response.reasoning_text.delta",
        "response.reasoning_text.done",
        "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.done",
        "response.reasoning_summary_part.added",
        "response.reasoning_summary_part.done",
    }
)


class Thoughts:
    """A transform (``router.apis.base.Transform``) for answers in ``api``'s shape."""

    def __init__(self, api: str) -> None:
        self.api = api
        self.marker = b"thinking" if api == "messages" else b"reasoning"

    def body(self, body: bytes) -> bytes:
        if body.find(self.marker) == -1:
            return body
        try:
            obj = orjson.loads(body)
        except orjson.JSONDecodeError:
            return body
        if not isinstance(obj, dict):
            return body
        if self.api == "messages":
            _blocks(obj.get("content"))
        elif self.api == "responses":
            _items(obj.get("output"))
        else:
            for choice in obj.get("choices") or ():
                if isinstance(choice, dict) and isinstance(choice.get("message"), dict):
                    _strip(choice["message"])
        return orjson.dumps(obj)

    def feed(self, data: bytes) -> bytes:
        if data.find(self.marker) == -1:
            return data
        out = []
        for event in data.split(b"\n\n"):
            if not event:
                continue
            if event.find(self.marker) != -1:
                kept = self._event(event)
                if kept is None:
                    continue
                event = kept
            out.append(event + b"\n\n")
        return b"".join(out)

    def _event(self, event: bytes) -> bytes | None:
        """The event without its reasoning text, or None to drop it."""
        if event.startswith(b"data:"):
            head, payload = b"", event[5:]
        else:
            at = event.find(b"\ndata:")
            if at == -1:
                return event
            head, payload = event[: at + 1], event[at + 6 :]
        try:
            obj = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return event
        if not isinstance(obj, dict):
            return event
        if self.api == "messages":
            delta = obj.get("delta")
            if isinstance(delta, dict) and delta.get("type") == "thinking_delta":
                return None
            block = obj.get("content_block")
            if isinstance(block, dict) and block.get("type") == "thinking":
                block["thinking"] = ""
        elif self.api == "responses":
            kind = obj.get("type")
            part = obj.get("part")
            if kind in _RESPONSES_DROPPED or (
                isinstance(part, dict) and part.get("type") == "reasoning_text"
            ):
                return None
            if isinstance(obj.get("item"), dict):
                _items([obj["item"]])
            if isinstance(obj.get("response"), dict):
                _items(obj["response"].get("output"))
        else:
            kept = False
            for choice in obj.get("choices") or ():
                if not isinstance(choice, dict):
                    continue
                delta = choice.get("delta")
                if isinstance(delta, dict):
                    _strip(delta)
                    kept = kept or any(v not in (None, "", [], {}) for v in delta.values())
                kept = kept or bool(choice.get("finish_reason"))
            if not kept and not obj.get("usage"):
                return None
        return head + b"data: " + orjson.dumps(obj)


def _strip(message: dict[str, Any]) -> None:
    for field in _CHAT_FIELDS:
        message.pop(field, None)


def _items(output: Any) -> None:
    for item in output or ():
        if isinstance(item, dict) and item.get("type") == "reasoning":
            item.pop("content", None)
            item["summary"] = []


def _blocks(content: Any) -> None:
    for block in content or ():
        if isinstance(block, dict) and block.get("type") == "thinking":
            block["thinking"] = ""
