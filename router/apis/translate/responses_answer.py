"""A chat host's answer as the Responses object its client asked for: whole
(``chat_answer_to_responses``), and the pieces the stream's events (``responses_events``)
share: usage, the response object echoing the request, a finished tool call's item.
Pure functions over bodies.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import orjson

from router.apis.translate.responses_via_chat import CUSTOM_ARGUMENT, custom_tools


def usage_from_chat(usage: Any) -> dict[str, Any] | None:
    """Chat usage in the Responses shape (cached and reasoning tokens kept)."""
    if not isinstance(usage, dict):
        return None
    prompt = usage.get("prompt_tokens") or 0
    completion = usage.get("completion_tokens") or 0
    prompt_details = usage.get("prompt_tokens_details") or {}
    completion_details = usage.get("completion_tokens_details") or {}
    return {
        "input_tokens": prompt,
        "input_tokens_details": {
            "cached_tokens": prompt_details.get("cached_tokens") or 0,
            "cache_write_tokens": prompt_details.get("cache_creation_tokens")
            or usage.get("cache_creation_input_tokens")
            or 0,
        },
        "output_tokens": completion,
        "output_tokens_details": {
            "reasoning_tokens": completion_details.get("reasoning_tokens") or 0
        },
        "total_tokens": usage.get("total_tokens") or prompt + completion,
    }


def response_object(
    request: Mapping[str, Any],
    *,
    rid: str,
    created: float,
    model: Any,
    output: list[dict[str, Any]],
    usage: dict[str, Any] | None,
    status: str,
    incomplete: str | None = None,
    error: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A Responses object echoing the request's settings, as OpenAI's does."""
    text = request.get("text")
    return {
        "id": rid,
        "object": "response",
        "created_at": int(created),
        "status": status,
        "model": model if model is not None else request.get("model"),
        "output": output,
        "usage": usage,
        "error": error,
        "incomplete_details": {"reason": incomplete} if incomplete else None,
        "instructions": request.get("instructions"),
        "max_output_tokens": request.get("max_output_tokens"),
        "parallel_tool_calls": request.get("parallel_tool_calls", True),
        "previous_response_id": request.get("previous_response_id"),
        "reasoning": request.get("reasoning") or {"effort": None, "summary": None},
        "temperature": request.get("temperature"),
        "text": text if isinstance(text, dict) else {"format": {"type": "text"}},
        "tool_choice": request.get("tool_choice", "auto"),
        "tools": request.get("tools") or [],
        "top_p": request.get("top_p"),
        "truncation": request.get("truncation", "disabled"),
        "metadata": request.get("metadata") or {},
        "store": False,
    }


INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


def function_item(call_id: str, name: str, arguments: str, custom: bool) -> dict[str, Any]:
    """A finished tool call as its output item (a custom tool's text unwrapped)."""
    item_id = "fc_" + call_id.removeprefix("call_")
    if custom:
        try:
            parsed = orjson.loads(arguments or "{}")
            text = parsed.get(CUSTOM_ARGUMENT, "") if isinstance(parsed, dict) else arguments
        except orjson.JSONDecodeError:
            text = arguments
        return {
            "id": item_id,
            "type": "custom_tool_call",
            "status": "completed",
            "call_id": call_id,
            "name": name,
            "input": text,
        }
    return {
        "id": item_id,
        "type": "function_call",
        "status": "completed",
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
    }


def chat_answer_to_responses(request: Mapping[str, Any], body: bytes) -> bytes:
    """A whole chat completion as the Responses object the client asked for."""
    answer = orjson.loads(body)
    if not isinstance(answer, dict):
        return body
    choices = answer.get("choices") or []
    choice = choices[0] if choices and isinstance(choices[0], dict) else {}
    message = choice.get("message") or {}
    base = str(answer.get("id") or "chat")
    output: list[dict[str, Any]] = []
    thought = message.get("reasoning_content") or message.get("reasoning")
    if isinstance(thought, str) and thought:
        output.append(
            {
                "id": "rs_" + base,
                "type": "reasoning",
                "summary": [],
                "content": [{"type": "reasoning_text", "text": thought}],
            }
        )
    parts = []
    if isinstance(message.get("content"), str) and message["content"]:
        parts.append({"type": "output_text", "text": message["content"], "annotations": []})
    if isinstance(message.get("refusal"), str) and message["refusal"]:
        parts.append({"type": "refusal", "refusal": message["refusal"]})
    if parts:
        output.append(
            {
                "id": "msg_" + base,
                "type": "message",
                "status": "completed",
                "role": "assistant",
                "content": parts,
            }
        )
    custom = custom_tools(request)
    for call in message.get("tool_calls") or []:
        if not isinstance(call, dict):
            continue
        fn = call.get("function") or {}
        name = fn.get("name") or ""
        output.append(
            function_item(str(call.get("id")), name, fn.get("arguments") or "", name in custom)
        )
    incomplete = INCOMPLETE.get(choice.get("finish_reason") or "")
    obj = response_object(
        request,
        rid="resp_" + base,
        created=answer.get("created") or time.time(),
        model=answer.get("model"),
        output=output,
        usage=usage_from_chat(answer.get("usage")),
        status="incomplete" if incomplete else "completed",
        incomplete=incomplete,
    )
    return orjson.dumps(obj)
