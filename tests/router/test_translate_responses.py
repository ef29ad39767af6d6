"""Responses <-> chat translation, on recorded examples, both ways.

The request is a Codex turn (``tests/fixtures/responses/codex_request.json``); the chat
answers are what OpenAI's chat API sends (whole, and streamed with a reasoning host's
``reasoning_content``). The chat body is checked against the ``openai`` SDK's request
types, and every Responses event against its event types, strictly (pydantic).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.types.chat import completion_create_params
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from router.apis.translate.responses_answer import chat_answer_to_responses
from router.apis.translate.responses_events import ResponsesFromChat
from router.apis.translate.responses_via_chat import responses_to_chat

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "responses"
EVENT = TypeAdapter(ResponseStreamEvent)
CHAT_REQUEST = TypeAdapter(completion_create_params.CompletionCreateParamsStreaming)


def _codex() -> dict[str, Any]:
    return json.loads((FIXTURES / "codex_request.json").read_text())


def test_a_codex_turn_as_a_chat_request() -> None:
    chat, dropped = responses_to_chat(_codex())
    CHAT_REQUEST.validate_python(chat)
    messages = chat["messages"]
    assert [m["role"] for m in messages] == [
        "system",  # instructions
        "system",  # the developer message
        "user",
        "assistant",  # the shell call
        "tool",
        "assistant",  # the patch (a custom tool) as a function call
        "tool",
        "assistant",
        "user",
    ]
    assert messages[0]["content"] == "You are a coding agent running in a terminal."
    assert messages[2]["content"][1] == {
        "type": "image_url",
        "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"},
    }
    call = messages[3]["tool_calls"][0]
    assert call == {
        "id": "call_abc",
        "type": "function",
        "function": {"name": "shell", "arguments": '{"command":["ls"]}'},
    }
    assert messages[4] == {
        "role": "tool",
        "tool_call_id": "call_abc",
        "content": "README.md\nsrc\n",
    }
    patch = json.loads(messages[5]["tool_calls"][0]["function"]["arguments"])
    assert patch == {"input": "*** Begin Patch\n*** End Patch"}
    assert messages[7] == {"role": "assistant", "content": "There are two entries."}
    assert [t["function"]["name"] for t in chat["tools"]] == ["shell", "apply_patch"]
    assert chat["tool_choice"] == "auto" and chat["parallel_tool_calls"] is False
    assert chat["reasoning_effort"] == "medium"
    assert chat["stream"] is True and chat["stream_options"] == {"include_usage": True}
    assert chat["prompt_cache_key"] == "0199a1b2-c3d4"
    assert dropped == [
        "input[reasoning]",
        "tools[web_search]",
        "text.verbosity",
        "reasoning.summary",
        "include",
    ]


def test_structured_output_and_limits_carry_over() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    chat, dropped = responses_to_chat(
        {
            "model": "m",
            "input": "hi",
            "text": {
                "format": {"type": "json_schema", "name": "a", "schema": schema, "strict": True}
            },
            "max_output_tokens": 50,
            "tool_choice": {"type": "function", "name": "f"},
            "tools": [{"type": "function", "name": "f", "parameters": {}}],
            "previous_response_id": "resp_1",
        }
    )
    assert chat["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "a", "schema": schema, "strict": True},
    }
    assert chat["max_tokens"] == 50
    assert chat["tool_choice"] == {"type": "function", "function": {"name": "f"}}
    assert chat["messages"] == [{"role": "user", "content": "hi"}]
    assert dropped == ["previous_response_id"]


def test_a_whole_chat_answer_as_a_responses_object() -> None:
    body = (FIXTURES / "chat_answer.json").read_bytes()
    obj = orjson.loads(chat_answer_to_responses({"model": "agent", "input": "x"}, body))
    answer = Response.model_validate(obj)
    assert [item.type for item in answer.output] == ["reasoning", "message", "function_call"]
    assert answer.output_text == "Let me check."
    call = answer.output[2]
    assert call.type == "function_call" and call.call_id == "call_DdmO9pD3xa9XTPNJ32zg2hcA"
    assert json.loads(call.arguments) == {"location": "Paris"}
    assert answer.usage is not None
    assert (answer.usage.input_tokens, answer.usage.output_tokens) == (82, 17)
    assert answer.usage.output_tokens_details.reasoning_tokens == 5
    assert answer.status == "completed"


def _feed_in_reads(stream: bytes, seed: int) -> list[bytes]:
    """The stream's whole events, grouped into reads at random (as an inspector forwards)."""
    events = [e + b"\n\n" for e in stream.split(b"\n\n") if e.strip()]
    rng = random.Random(seed)
    reads, i = [], 0
    while i < len(events):
        n = rng.randint(1, 3)
        reads.append(b"".join(events[i : i + n]))
        i += n
    return reads


@pytest.mark.parametrize("seed", range(4))
def test_a_chat_stream_as_responses_events(seed: int) -> None:
    stream = (FIXTURES / "chat_stream.sse").read_bytes()
    translate = ResponsesFromChat(_codex())
    out = b"".join(translate.feed(read) for read in _feed_in_reads(stream, seed))
    events = []
    for block in out.split(b"\n\n"):
        if not block:
            continue
        head, data = block.split(b"\n", 1)
        event = EVENT.validate_python(orjson.loads(data[len(b"data: ") :]))
        assert head == b"event: " + event.type.encode()
        events.append(event)
    assert [e.sequence_number for e in events] == list(range(len(events)))
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == 'Let me check "Paris".'
    thought = "".join(e.delta for e in events if e.type == "response.reasoning_text.delta")
    assert thought == "The user wants the weather."
    args = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    assert json.loads(args) == {"location": "Paris"}
    assert "response.custom_tool_call_input.done" in kinds
    final = events[-1].response  # type: ignore[union-attr]
    assert [item.type for item in final.output] == [
        "reasoning",
        "message",
        "function_call",
        "custom_tool_call",
    ]
    patch = final.output[3]
    assert patch.type == "custom_tool_call" and patch.input == "*** Begin Patch\n*** End Patch"
    assert final.usage is not None and final.usage.input_tokens_details.cached_tokens == 64
    assert final.usage.output_tokens_details.reasoning_tokens == 6
    # Each item's added/done events come in order, with the same output index.
    for item_index in range(4):
        mine = [e.type for e in events if getattr(e, "output_index", None) == item_index]
        assert mine[0] == "response.output_item.added" and mine[-1] == "response.output_item.done"


def test_a_length_finish_is_an_incomplete_response() -> None:
    chunks = [
        {"id": "c1", "model": "m", "choices": [{"index": 0, "delta": {"content": "cut"}}]},
        {
            "id": "c1",
            "model": "m",
            "choices": [{"index": 0, "delta": {}, "finish_reason": "length"}],
        },
    ]
    stream = b"".join(b"data: " + orjson.dumps(c) + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"
    out = ResponsesFromChat({"model": "m", "input": "x"}).feed(stream)
    last = EVENT.validate_python(orjson.loads(out.rsplit(b"data: ", 1)[1]))
    assert last.type == "response.incomplete"
    assert last.response.incomplete_details is not None
    assert last.response.incomplete_details.reason == "max_output_tokens"


_PIECE = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=6
)
_DELTA = st.one_of(
    st.tuples(st.just("reasoning_content"), _PIECE),
    st.tuples(st.just("content"), _PIECE),
    st.tuples(st.just("tool"), st.tuples(st.integers(0, 2), _PIECE)),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(_DELTA, min_size=1, max_size=30), st.integers(0, 1000))
def test_any_chat_stream_makes_a_well_formed_responses_stream(
    deltas: list[tuple[str, Any]], seed: int
) -> None:
    chunks = []
    started: set[int] = set()
    texts = {"reasoning_content": "", "content": ""}
    args: dict[int, str] = {}
    epoch = 0  # a call ends when text follows it: later pieces go to new calls
    for kind, value in deltas:
        if kind == "tool":
            index, piece = value
            index += 3 * epoch
            call: dict[str, Any] = {"index": index, "function": {"arguments": piece}}
            if index not in started:
                started.add(index)
                call |= {"id": f"call_{index}", "type": "function"}
                call["function"]["name"] = f"f{index}"
            args[index] = args.get(index, "") + piece
            delta: dict[str, Any] = {"tool_calls": [call]}
        else:
            texts[kind] += value
            delta = {kind: value}
            epoch += 1 if started else 0
        choice: dict[str, Any] = {"index": 0, "delta": delta}
        if seed % 2:  # OpenAI's exact form: most text chunks take the unparsed path
            choice["finish_reason"] = None
        chunks.append({"id": "c", "model": "m", "choices": [choice]})
    chunks.append(
        {"id": "c", "model": "m", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    )
    stream = b"".join(b"data: " + orjson.dumps(c) + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"
    translate = ResponsesFromChat({"model": "m", "input": "x"})
    out = b"".join(translate.feed(read) for read in _feed_in_reads(stream, seed))
    events = [
        EVENT.validate_python(orjson.loads(block.split(b"\n", 1)[1][len(b"data: ") :]))
        for block in out.split(b"\n\n")
        if block
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[-1].type == "response.completed"
    opened = [e.output_index for e in events if e.type == "response.output_item.added"]
    closed = [e.output_index for e in events if e.type == "response.output_item.done"]
    assert sorted(closed) == opened == list(range(len(opened)))
    done: set[int] = set()
    for e in events:  # nothing comes for an item after its output_item.done
        index = getattr(e, "output_index", None)
        assert index not in done
        if e.type == "response.output_item.done":
            done.add(e.output_index)
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    thought = "".join(e.delta for e in events if e.type == "response.reasoning_text.delta")
    assert (text, thought) == (texts["content"], texts["reasoning_content"])
    final = events[-1].response  # type: ignore[union-attr]
    calls = {item.call_id: item.arguments for item in final.output if item.type == "function_call"}
    assert calls == {f"call_{i}": a for i, a in args.items()}
    said = [part.text for item in final.output if item.type == "message" for part in item.content]
    assert "".join(said) == texts["content"]
