"""A Responses client served by a chat host: the request out, the whole answer back.

``responses_to_chat`` turns the client's Responses body into a chat body and names what
it could not carry (the answer shows the list in ``x-router-dropped``);
a whole chat completion becomes a Responses object in ``responses_answer`` and a chat
stream Responses events in ``responses_events``.
Pure functions over bodies. Reasoning asks are left to ``router.apis.reasoning``, which
sends each host its own form.

=========================  =================================================
Responses                  Chat Completions
=========================  =================================================
``instructions``           a first ``system`` message
``input`` (a string)       one ``user`` message
message items              messages (``developer`` becomes ``system``); parts:
                           ``input_text``/``output_text`` text, ``input_image``
                           ``image_url``, ``input_file`` ``file``
``function_call``          ``tool_calls`` of the assistant message before it
``function_call_output``   a ``tool`` message
``custom_tool_call`` (+    a function call whose one argument ``input`` holds
output), ``custom`` tools  the text (so Codex's ``apply_patch`` survives)
``tools`` (function)       ``tools`` as ``{"type": "function", "function": ...}``
``tool_choice``            ``tool_choice`` (a named tool re-nested)
``text.format``            ``response_format`` (``json_schema``, ``json_object``)
``reasoning.effort``       ``reasoning_effort``
``max_output_tokens``      ``max_tokens``
``temperature``, ``top_p``, ``parallel_tool_calls``, ``user``, ``service_tier``,
``prompt_cache_key``, ``safety_identifier``, ``top_logprobs``: as they are
=========================  =================================================

Not carried (listed): ``previous_response_id`` and ``conversation`` (chat keeps no
state), reasoning items of earlier turns, hosted tools (web or file search, computer,
MCP, ...) and their calls, ``include``, ``text.verbosity``, ``reasoning.summary``,
``truncation``, ``background``, ``prompt``, ``max_tool_calls``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

# Fields passed as they are, and fields chat has no use for that say nothing the answer
# depends on (not listed as dropped).
_SAME = (
    "temperature",
    "top_p",
    "parallel_tool_calls",
    "user",
    "service_tier",
    "prompt_cache_key",
    "safety_identifier",
    "top_logprobs",
    "stream",
)
_SILENT = frozenset({"model", "input", "instructions", "store", "metadata", "stream_options"})
_HANDLED = frozenset(
    {"tools", "tool_choice", "text", "reasoning", "max_output_tokens", "provider", *_SAME}
)
CUSTOM_ARGUMENT = "input"  # the one argument a custom (free-text) tool gets as a function
_CUSTOM_SCHEMA = {
    "type": "object",
    "properties": {CUSTOM_ARGUMENT: {"type": "string"}},
    "required": [CUSTOM_ARGUMENT],
    "additionalProperties": False,
}


def responses_to_chat(request: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The chat body for a Responses ``request``, and what it could not carry."""
    dropped: list[str] = []
    chat: dict[str, Any] = {"model": request.get("model")}
    messages: list[dict[str, Any]] = []
    instructions = request.get("instructions")
    if isinstance(instructions, str) and instructions:
        messages.append({"role": "system", "content": instructions})
    given = request.get("input")
    if isinstance(given, str):
        messages.append({"role": "user", "content": given})
    elif isinstance(given, list):
        _input_items(given, messages, dropped)
    chat["messages"] = messages
    for key in _SAME:
        if key in request:
            chat[key] = request[key]
    if request.get("top_logprobs"):
        chat["logprobs"] = True
    if isinstance(request.get("max_output_tokens"), int):
        chat["max_tokens"] = request["max_output_tokens"]
    tools = request.get("tools")
    if isinstance(tools, list) and tools:
        chat_tools = _tools(tools, dropped)
        if chat_tools:
            chat["tools"] = chat_tools
    if "tool_choice" in request and "tools" in chat:
        choice = _tool_choice(request["tool_choice"], dropped)
        if choice is not None:
            chat["tool_choice"] = choice
    _text(request.get("text"), chat, dropped)
    reasoning = request.get("reasoning")
    if isinstance(reasoning, dict):
        if reasoning.get("effort") is not None:
            chat["reasoning_effort"] = reasoning["effort"]
        if reasoning.get("summary") is not None:
            dropped.append("reasoning.summary")
    if chat.get("stream"):
        chat["stream_options"] = {"include_usage": True}
    for key, value in request.items():
        if key in _SILENT or key in _HANDLED or value in (None, False, [], {}, ""):
            continue
        if key == "truncation" and value == "disabled":
            continue
        dropped.append(key)
    return chat, dropped


def _input_items(items: list[Any], messages: list[dict[str, Any]], dropped: list[str]) -> None:
    for item in items:
        if not isinstance(item, dict):
            continue
        kind = item.get("type", "message")
        if kind == "message":
            message = _message(item, dropped)
            if message is not None:
                messages.append(message)
        elif kind in ("function_call", "custom_tool_call"):
            arguments = item.get("arguments", "")
            if kind == "custom_tool_call":
                arguments = orjson.dumps({CUSTOM_ARGUMENT: item.get("input", "")}).decode()
            call = {
                "id": item.get("call_id") or item.get("id"),
                "type": "function",
                "function": {"name": item.get("name"), "arguments": arguments},
            }
            last = messages[-1] if messages else None
            if last is None or last.get("role") != "assistant":
                last = {"role": "assistant", "content": None}
                messages.append(last)
            last.setdefault("tool_calls", []).append(call)
        elif kind in ("function_call_output", "custom_tool_call_output"):
            messages.append(
                {
                    "role": "tool",
                    "tool_call_id": item.get("call_id"),
                    "content": _output_text(item.get("output")),
                }
            )
        else:
            _once(dropped, f"input[{kind}]")


def _message(item: dict[str, Any], dropped: list[str]) -> dict[str, Any] | None:
    role = item.get("role", "user")
    if role == "developer":
        role = "system"
    content = item.get("content")
    if isinstance(content, str):
        out: dict[str, Any] = {"role": role, "content": content}
    elif isinstance(content, list):
        parts = [p for p in (_part(part, dropped) for part in content) if p is not None]
        if role in ("assistant", "system") or all(p.get("type") == "text" for p in parts):
            # Assistant and system turns take text only on many hosts: one string.
            out = {"role": role, "content": "".join(p.get("text", "") for p in parts)}
        else:
            out = {"role": role, "content": parts}
    else:
        return None
    return out


def _part(part: Any, dropped: list[str]) -> dict[str, Any] | None:
    if not isinstance(part, dict):
        return None
    kind = part.get("type")
    if kind in ("input_text", "output_text", "text"):
        return {"type": "text", "text": part.get("text", "")}
    if kind == "refusal":
        return {"type": "text", "text": part.get("refusal", "")}
    if kind == "input_image" and isinstance(part.get("image_url"), str):
        image = {"url": part["image_url"]}
        if part.get("detail") in ("low", "high", "auto"):
            image["detail"] = part["detail"]
        return {"type": "image_url", "image_url": image}
    if kind == "input_file" and (part.get("file_data") or part.get("file_id")):
        file = {k: part[k] for k in ("file_data", "file_id", "filename") if part.get(k)}
        return {"type": "file", "file": file}
    _once(dropped, f"input.content[{kind}]")
    return None


def _output_text(output: Any) -> Any:
    if isinstance(output, str):
        return output
    if isinstance(output, list):
        texts = [p.get("text", "") for p in output if isinstance(p, dict) and "text" in p]
        return "".join(texts)
    return "" if output is None else str(output)


def _tools(tools: list[Any], dropped: list[str]) -> list[dict[str, Any]]:
    out = []
    for tool in tools:
        if not isinstance(tool, dict):
            continue
        kind = tool.get("type")
        if kind == "function":
            fn = {k: tool[k] for k in ("name", "description", "parameters", "strict") if k in tool}
            out.append({"type": "function", "function": fn})
        elif kind == "custom" and isinstance(tool.get("name"), str):
            description = tool.get("description") or ""
            fn = {
                "name": tool["name"],
                "description": f"{description} (pass the whole text as '{CUSTOM_ARGUMENT}')",
                "parameters": _CUSTOM_SCHEMA,
            }
            out.append({"type": "function", "function": fn})
        else:
            _once(dropped, f"tools[{kind}]")
    return out


def custom_tools(request: Mapping[str, Any]) -> frozenset[str]:
    """Names of the request's custom (free-text) tools: their calls go back as
    ``custom_tool_call`` items."""
    tools = request.get("tools")
    if not isinstance(tools, list):
        return frozenset()
    return frozenset(
        t["name"]
        for t in tools
        if isinstance(t, dict) and t.get("type") == "custom" and isinstance(t.get("name"), str)
    )


def _tool_choice(choice: Any, dropped: list[str]) -> Any:
    if choice in ("auto", "none", "required"):
        return choice
    if isinstance(choice, dict):
        if choice.get("type") in ("function", "custom") and isinstance(choice.get("name"), str):
            return {"type": "function", "function": {"name": choice["name"]}}
        if choice.get("type") == "allowed_tools" and choice.get("mode") in ("auto", "required"):
            _once(dropped, "tool_choice.tools")
            return choice["mode"]
    _once(dropped, "tool_choice")
    return None


def _text(text: Any, chat: dict[str, Any], dropped: list[str]) -> None:
    if not isinstance(text, dict):
        return
    fmt = text.get("format")
    if isinstance(fmt, dict):
        kind = fmt.get("type")
        if kind == "json_schema":
            schema = {k: fmt[k] for k in ("name", "schema", "strict", "description") if k in fmt}
            chat["response_format"] = {"type": "json_schema", "json_schema": schema}
        elif kind == "json_object":
            chat["response_format"] = {"type": "json_object"}
    if text.get("verbosity") is not None:
        dropped.append("text.verbosity")


def _once(dropped: list[str], name: str) -> None:
    if name not in dropped:
        dropped.append(name)
