"""Reasoning normalisation: each client form read, each host form written, text stripped."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from router.apis.reasoning import BUDGETS, Reasoning, apply, effort_for, form_for, parse, rejected
from router.apis.thoughts import Thoughts
from router.errors import BadRequest


@pytest.mark.parametrize(
    ("body", "want"),
    [
        # TokenLX
        (
            {"thinking": {"enabled": True, "budget_tokens": 3000, "return_thoughts": False}},
            Reasoning(on=True, budget=3000, show=False),
        ),
        ({"thinking": {"enabled": False}}, Reasoning(on=False)),
        # Anthropic
        (
            {"thinking": {"type": "enabled", "budget_tokens": 10000}},
            Reasoning(on=True, budget=10000),
        ),
        ({"thinking": {"type": "disabled"}}, Reasoning(on=False)),
        ({"thinking": {"type": "adaptive"}}, Reasoning(on=True, adaptive=True)),
        # OpenAI chat and Responses
        ({"reasoning_effort": "high"}, Reasoning(on=True, effort="high")),
        ({"reasoning_effort": "none"}, Reasoning(on=False)),
        (
            {"reasoning": {"effort": "low", "summary": "auto"}},
            Reasoning(on=True, effort="low", summary="auto"),
        ),
        # OpenRouter
        (
            {"reasoning": {"max_tokens": 2000, "exclude": True}},
            Reasoning(on=True, budget=2000, show=False),
        ),
        ({"reasoning": {"enabled": True}}, Reasoning(on=True)),
        (
            {"reasoning": {"effort": "medium", "exclude": False}},
            Reasoning(on=True, effort="medium"),
        ),
        ({"reasoning": {"enabled": False}}, Reasoning(on=False)),
    ],
)
def test_every_client_form_is_read(body: dict[str, Any], want: Reasoning) -> None:
    assert parse(body) == want


def test_no_reasoning_field_reads_as_none() -> None:
    assert parse({"model": "m", "messages": []}) is None


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"thinking": {"type": "on"}}, "thinking.type"),
        ({"thinking": {"type": "enabled", "budget_tokens": "lots"}}, "thinking.budget_tokens"),
        ({"thinking": {"enabled": "yes"}}, "thinking.enabled"),
        ({"thinking": "on"}, "thinking"),
        ({"reasoning_effort": "extreme"}, "reasoning_effort"),
        ({"reasoning": {"effort": 3}}, "reasoning.effort"),
        ({"reasoning": {"max_tokens": -1}}, "reasoning.max_tokens"),
        ({"reasoning": []}, "reasoning"),
    ],
)
def test_bad_values_are_the_clients_fault(body: dict[str, Any], param: str) -> None:
    with pytest.raises(BadRequest) as info:
        parse(body)
    assert info.value.param == param


def _sent(ask: Reasoning, form: str, api: str = "chat", **body: Any) -> dict[str, Any]:
    payload = {"model": "m", "thinking": {"x": 1}, "reasoning_effort": "low", **body}
    apply(payload, ask, form, api)
    return payload


def test_openai_form() -> None:
    assert _sent(Reasoning(on=True, budget=10000), "openai")["reasoning_effort"] == "medium"
    assert "thinking" not in _sent(Reasoning(on=True, budget=10000), "openai")
    got = _sent(Reasoning(on=True, effort="high", summary="auto"), "openai", "responses")
    assert got["reasoning"] == {"effort": "high", "summary": "auto"}
    assert "reasoning_effort" not in got
    # Off, or adaptive: nothing sent, the host's default holds; on with no amount: medium.
    assert set(_sent(Reasoning(on=False), "openai")) == {"model"}
    assert set(_sent(Reasoning(on=True, adaptive=True), "openai")) == {"model"}
    assert _sent(Reasoning(on=True), "openai")["reasoning_effort"] == "medium"


def test_anthropic_form_keeps_max_tokens_above_the_budget() -> None:
    got = _sent(Reasoning(on=True, effort="high"), "anthropic", "messages", max_tokens=1000)
    assert got["thinking"] == {"type": "enabled", "budget_tokens": BUDGETS["high"]}
    assert got["max_tokens"] == BUDGETS["high"] + 1000
    small = _sent(Reasoning(on=True, budget=100), "anthropic", max_tokens=50000)
    assert small["thinking"]["budget_tokens"] == 1024 and small["max_tokens"] == 50000
    unset = _sent(Reasoning(on=True), "anthropic")
    assert unset["max_tokens"] > unset["thinking"]["budget_tokens"] == BUDGETS["medium"]
    assert _sent(Reasoning(on=False), "anthropic")["thinking"] == {"type": "disabled"}
    hidden = _sent(Reasoning(on=True, adaptive=True, show=False), "anthropic")
    assert hidden["thinking"] == {"type": "adaptive", "display": "omitted"}
    # The Messages API has only Anthropic's form, whatever the provider says.
    assert "thinking" in _sent(Reasoning(on=True, effort="low"), "openai", "messages")


def test_openrouter_and_tokenlx_forms() -> None:
    assert _sent(Reasoning(on=True, budget=3000, show=False), "openrouter")["reasoning"] == {
        "max_tokens": 3000,
        "exclude": True,
    }
    assert _sent(Reasoning(on=True, effort="low"), "openrouter")["reasoning"] == {"effort": "low"}
    assert _sent(Reasoning(on=False), "openrouter")["reasoning"] == {"enabled": False}
    assert _sent(Reasoning(on=True, effort="medium", show=False), "tokenlx")["thinking"] == {
        "enabled": True,
        "budget_tokens": BUDGETS["medium"],
        "return_thoughts": False,
    }
    assert "reasoning_effort" not in _sent(Reasoning(on=True), "tokenlx")


def test_passthrough_leaves_the_body_alone() -> None:
    body = {"model": "m", "thinking": {"enabled": True}}
    apply(body, Reasoning(on=True), "passthrough", "chat")
    assert body == {"model": "m", "thinking": {"enabled": True}}


def test_forms_by_provider_kind() -> None:
    assert form_for("openai", None, "x") == "passthrough"
    assert form_for("openai", "tokenlx", "x") == "tokenlx"
    assert form_for("anthropic", None, "claude") == "anthropic"
    assert form_for("litellm", None, "anthropic/claude-sonnet-4-6") == "anthropic"
    assert form_for("litellm", None, "bedrock/us.anthropic.claude-3-7") == "anthropic"
    assert form_for("litellm", None, "openai/gpt-5") == "openai"


@given(st.sampled_from(["low", "medium", "high"]))
def test_effort_to_budget_and_back_is_the_same_effort(effort: str) -> None:
    assert effort_for(BUDGETS[effort]) == effort


@given(st.integers(min_value=1, max_value=200_000), st.integers(min_value=1, max_value=200_000))
def test_a_bigger_budget_never_maps_to_less_effort(a: int, b: int) -> None:
    order = ["low", "medium", "high"]
    if a <= b:
        assert order.index(effort_for(a)) <= order.index(effort_for(b))


def test_rejection_of_a_reasoning_field_is_recognised() -> None:
    assert rejected(b'{"error": {"message": "Unrecognized request argument supplied: thinking"}}')
    assert rejected(b'{"error": {"message": "reasoning_effort is not supported with this model"}}')
    assert not rejected(b'{"error": {"message": "messages: at least one message is required"}}')


# -- the text left out ---------------------------------------------------------------------


def _sse(*objs: Any, kinds: tuple[str, ...] = ()) -> bytes:
    out = b""
    for i, obj in enumerate(objs):
        head = f"event: {kinds[i]}\n".encode() if kinds else b""
        out += head + b"data: " + orjson.dumps(obj) + b"\n\n"
    return out


def _events(data: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(e.split(b"data: ", 1)[1]) for e in data.split(b"\n\n") if e]


def test_chat_reasoning_text_is_left_out_usage_kept() -> None:
    t = Thoughts("chat")
    body = {
        "choices": [{"message": {"content": "4", "reasoning_content": "2+2"}}],
        "usage": {"completion_tokens_details": {"reasoning_tokens": 3}},
    }
    out = orjson.loads(t.body(orjson.dumps(body)))
    assert out["choices"][0]["message"] == {"content": "4"}
    assert out["usage"]["completion_tokens_details"]["reasoning_tokens"] == 3
    stream = (
        _sse(
            {"choices": [{"delta": {"reasoning_content": "think"}, "finish_reason": None}]},
            {"choices": [{"delta": {"content": "4", "reasoning": None}, "finish_reason": None}]},
        )
        + b"data: [DONE]\n\n"
    )
    kept = t.feed(stream)
    assert kept.count(b"data:") == 2 and b"think" not in kept and b"[DONE]" in kept


def test_responses_reasoning_events_dropped_items_kept() -> None:
    t = Thoughts("responses")
    item = {"id": "rs_1", "type": "reasoning", "summary": [{"type": "summary_text", "text": "s"}]}
    item["content"] = [{"type": "reasoning_text", "text": "deep"}]
    stream = _sse(
        {
            "type": "response.output_item.added",
            "item": {"id": "rs_1", "type": "reasoning", "summary": []},
        },
        {"type": "response.reasoning_text.delta", "delta": "deep"},
        {"type": "response.output_item.done", "item": item},
        {"type": "response.output_text.delta", "delta": "hi"},
        kinds=("a", "b", "c", "d"),
    )
    events = _events(t.feed(stream))
    assert [e["type"] for e in events] == [
        "response.output_item.added",
        "response.output_item.done",
        "response.output_text.delta",
    ]
    assert events[1]["item"] == {"id": "rs_1", "type": "reasoning", "summary": []}


def test_messages_thinking_text_left_out_signature_kept() -> None:
    t = Thoughts("messages")
    body = {
        "content": [
            {"type": "thinking", "thinking": "deep", "signature": "sig"},
            {"type": "text", "text": "4"},
        ]
    }
    out = orjson.loads(t.body(orjson.dumps(body)))
    assert out["content"][0] == {"type": "thinking", "thinking": "", "signature": "sig"}
    stream = _sse(
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "thinking_delta", "thinking": "deep"},
        },
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "signature_delta", "signature": "s"},
        },
        kinds=("content_block_delta", "content_block_delta"),
    )
    events = _events(t.feed(stream))
    assert [e["delta"]["type"] for e in events] == ["signature_delta"]
