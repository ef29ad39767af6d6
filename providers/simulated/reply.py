"""What a simulated answer says, decided from the request whatever API it came in.

A ``Reply`` is API-neutral: reasoning pieces, text pieces and tool calls, one token per
piece, with the usage they add up to. The shapes (``chat``, ``responses``, ``messages``)
only render it. The request is read the way a real host would read it:

- tools (chat ``tools[].function``, Responses' flat function tools, Messages'
  ``input_schema``) and ``tool_choice``: a call when the choice forces one, or when it
  is ``auto`` and the last turn is the user's (after a tool result the model answers in
  text, so an agent's loop ends), with arguments valid for the tool's schema;
- ``response_format`` / ``text.format`` / ``output_format``: the text is a JSON document
  (valid for the schema when one is given);
- reasoning in any of its forms (``reasoning_effort``, ``reasoning: {effort, max_tokens,
  exclude}``, ``thinking: {type, budget_tokens}`` or ``{enabled, budget_tokens,
  return_thoughts}``): reasoning pieces first, hidden but still counted when the request
  asks for them to be left out.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import orjson

from providers.simulated.schema import minimal

WORDS = [
    "the",
    "router",
    "picks",
    "a",
    "healthy",
    "endpoint",
    "for",
    "every",
    "request",
    "and",
    "streams",
    "tokens",
    "back",
    "quickly",
    "while",
    "live",
    "stats",
    "decay",
    "towards",
    "a",
    "prior",
    "so",
    "recovered",
    "hosts",
    "are",
    "tried",
    "again",
]
_THOUGHTS = [
    "first",
    "consider",
    "what",
    "the",
    "user",
    "asks",
    "then",
    "check",
    "the",
    "tools",
    "at",
    "hand",
    "and",
    "pick",
    "the",
    "simplest",
    "answer",
    "that",
    "fits",
]
# Share of the answer's tokens spent reasoning, per effort; a budget in tokens maps to a
# count of pieces at one piece per 512 budget tokens (a 1024 budget: 2 pieces).
_EFFORT_SHARE = {"minimal": 0.0, "low": 0.25, "medium": 0.5, "high": 1.0, "xhigh": 1.0}
_BUDGET_PER_PIECE = 512
_OFF = ("none", "disabled")


@dataclass(slots=True)
class ToolCall:
    id: str
    name: str
    pieces: list[str]

    @property
    def arguments(self) -> str:
        return "".join(self.pieces)


@dataclass(slots=True)
class Reply:
    reasoning: list[str]
    text: list[str]
    tool_calls: list[ToolCall]
    show_reasoning: bool  # False: the reasoning is billed but its text is left out
    prompt_tokens: int
    cached_tokens: int  # prompt tokens served from a prompt cache (0 until one is modelled)
    finish: str  # "stop", "tool_calls" or "length"

    @property
    def completion_tokens(self) -> int:
        return len(self.reasoning) + len(self.text) + sum(len(c.pieces) for c in self.tool_calls)

    @property
    def reasoning_tokens(self) -> int:
        return len(self.reasoning)

    @property
    def text_joined(self) -> str:
        return "".join(self.text)

    @property
    def reasoning_joined(self) -> str:
        return "".join(self.reasoning)

    def steps(self) -> list[tuple[str, int, str]]:
        """The pieces in the order they stream: (kind, tool index, piece)."""
        out = [("reasoning", 0, p) for p in self.reasoning]
        out += [("text", 0, p) for p in self.text]
        for i, call in enumerate(self.tool_calls):
            out += [("tool", i, p) for p in call.pieces]
        return out


def build(
    operation: str, payload: dict[str, Any], tokens: int, offset: int, prompt: int, cached: int
) -> Reply:
    """The reply to ``payload``: ``tokens`` pieces of answer at most, words from ``offset``."""
    limit = _max_tokens(payload)
    n = min(tokens, limit) if limit else tokens
    reasoning: list[str] = []
    effort, budget, show = _reasoning(payload)
    if effort is not None or budget is not None:
        share = _EFFORT_SHARE.get(effort or "medium", 0.5)
        count = budget // _BUDGET_PER_PIECE if budget else int(tokens * share)
        count = max(1, min(tokens, count))
        reasoning = [_THOUGHTS[i % len(_THOUGHTS)] + " " for i in range(count)]
    tool = _tool_to_call(operation, payload)
    if tool is not None:
        name, schema = tool
        arguments = orjson.dumps(minimal(schema) if schema else {}).decode()
        call = ToolCall("call_" + uuid.uuid4().hex[:24], name, _split(arguments, n))
        return Reply(reasoning, [], [call], show, prompt, cached, "tool_calls")
    fmt = _json_format(operation, payload)
    if fmt is not None:
        words = [WORDS[(i + offset) % len(WORDS)] for i in range(max(1, n // 2))]
        doc = minimal(fmt) if fmt else {"answer": " ".join(words)}
        text = _split(orjson.dumps(doc).decode(), n)
    else:
        text = [WORDS[(i + offset) % len(WORDS)] + " " for i in range(n)]
        if text:
            text[-1] = text[-1][:-1]
    finish = "length" if limit and limit < tokens else "stop"
    return Reply(reasoning, text, [], show, prompt, cached, finish)


def _split(text: str, n: int) -> list[str]:
    """``text`` in ``n`` pieces at most (fewer for a short text), none empty."""
    if not text:
        return []
    size = max(1, -(-len(text) // max(1, n)))
    return [text[i : i + size] for i in range(0, len(text), size)]


def _max_tokens(payload: dict[str, Any]) -> int | None:
    for key in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
        value = payload.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _reasoning(payload: dict[str, Any]) -> tuple[str | None, int | None, bool]:
    """(effort, budget tokens, show the text) of whatever reasoning form the request uses;
    (None, None, True) when it asks for none."""
    effort: str | None = None
    budget: int | None = None
    show = True
    thinking = payload.get("thinking")
    if isinstance(thinking, dict):
        kind = thinking.get("type")
        on = kind in ("enabled", "adaptive") or thinking.get("enabled") is True
        if on:
            effort = "medium"
            budget = _int(thinking.get("budget_tokens"))
        if thinking.get("return_thoughts") is False:
            show = False
    reasoning = payload.get("reasoning")
    if isinstance(reasoning, dict):
        value = reasoning.get("effort")
        if isinstance(value, str) and value not in _OFF:
            effort = value
        budget = _int(reasoning.get("max_tokens")) or budget
        if budget and effort is None:
            effort = "medium"
        if reasoning.get("enabled") is True and effort is None:
            effort = "medium"
        if reasoning.get("exclude") is True:
            show = False
    value = payload.get("reasoning_effort")
    if isinstance(value, str) and value not in _OFF:
        effort = value
    if effort == "minimal" and not budget:
        budget = _BUDGET_PER_PIECE  # one piece: minimal still reasons a little
    return effort, budget, show


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _tools(operation: str, payload: dict[str, Any]) -> list[tuple[str, Any]]:
    """(name, JSON schema of its arguments) of each function tool offered."""
    tools = payload.get("tools")
    if not isinstance(tools, list):
        return []
    out = []
    for tool in tools:
        if not isinstance(tool, dict):
            continue
        if operation == "messages":
            if tool.get("type") in (None, "custom") and isinstance(tool.get("name"), str):
                out.append((tool["name"], tool.get("input_schema")))
        elif tool.get("type") == "function":
            fn = tool.get("function") if operation != "responses" else tool
            if isinstance(fn, dict) and isinstance(fn.get("name"), str):
                out.append((fn["name"], fn.get("parameters")))
    return out


def _tool_to_call(operation: str, payload: dict[str, Any]) -> tuple[str, Any] | None:
    tools = _tools(operation, payload)
    if not tools:
        return None
    choice = payload.get("tool_choice")
    if isinstance(choice, dict):
        fn = choice.get("function")
        name = fn.get("name") if isinstance(fn, dict) else choice.get("name")
        if isinstance(name, str):  # one named tool (chat, Responses, Messages' "tool")
            return next((t for t in tools if t[0] == name), tools[0])
        choice = choice.get("type")  # Messages' {"type": "auto" | "any" | "none"}
    if choice == "none":
        return None
    if choice in ("required", "any"):
        return tools[0]
    return None if _after_tool_result(operation, payload) else tools[0]


def _after_tool_result(operation: str, payload: dict[str, Any]) -> bool:
    """Whether the last turn carries a tool's result (then the model answers in text)."""
    if operation == "responses":
        items = payload.get("input")
        last = items[-1] if isinstance(items, list) and items else None
        return isinstance(last, dict) and str(last.get("type", "")).endswith("_call_output")
    messages = payload.get("messages")
    last = messages[-1] if isinstance(messages, list) and messages else None
    if not isinstance(last, dict):
        return False
    if last.get("role") in ("tool", "function"):
        return True
    content = last.get("content")
    return isinstance(content, list) and any(
        isinstance(b, dict) and b.get("type") == "tool_result" for b in content
    )


def _json_format(operation: str, payload: dict[str, Any]) -> Any:
    """None: free text; {} : any JSON object; else the schema the text must satisfy."""
    fmt: Any = None
    if operation == "responses":
        text = payload.get("text")
        fmt = text.get("format") if isinstance(text, dict) else None
    elif operation == "messages":
        fmt = payload.get("output_format")
        config = payload.get("output_config")
        if fmt is None and isinstance(config, dict):
            fmt = config.get("format")
    else:
        fmt = payload.get("response_format")
    if not isinstance(fmt, dict):
        return None
    kind = fmt.get("type")
    if kind == "json_object":
        return {}
    if kind != "json_schema":
        return None
    inner = fmt.get("json_schema") if operation not in ("responses", "messages") else fmt
    schema = inner.get("schema") if isinstance(inner, dict) else None
    return schema if isinstance(schema, dict) and schema else {}
