"""The simulator's shapes, read by the real SDKs from ``router sim-upstream``.

The SDKs' stream helpers (``responses.stream``, ``messages.stream``) rebuild the final
object from the events and refuse a sequence out of order, so they check the event
grammar as well as the fields. Tool arguments and JSON answers are checked against
their schemas with ``jsonschema``.
"""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest

from providers.simulated.schema import minimal
from tests.support import SimProcess

jsonschema = pytest.importorskip("jsonschema")

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "minLength": 5},
        "unit": {"enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
        "when": {"type": "string", "format": "date"},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2},
        "where": {"$ref": "#/$defs/place"},
    },
    "required": ["city", "unit", "days", "tags", "where"],
    "additionalProperties": False,
    "$defs": {
        "place": {
            "type": "object",
            "properties": {"lat": {"type": "number", "exclusiveMinimum": 0}},
            "required": ["lat"],
        }
    },
}


@pytest.fixture(scope="module")
def sim() -> Iterator[SimProcess]:
    with SimProcess("--ttft-ms", "1", "--tokens-per-s", "5000") as proc:
        yield proc


@pytest.fixture(scope="module")
def oai(sim: SimProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=sim.base_url, api_key="x", max_retries=0)


@pytest.fixture(scope="module")
def claude(sim: SimProcess) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=sim.url, api_key="x", max_retries=0)


@pytest.mark.parametrize(
    "schema",
    [
        WEATHER,
        {"type": "array", "prefixItems": [{"type": "boolean"}, {"const": 3}], "minItems": 3},
        {"anyOf": [{"type": "null"}, {"type": "number", "minimum": 2.5, "multipleOf": 0.5}]},
        {"allOf": [{"properties": {"a": {"type": "string"}}, "required": ["a"]}, {"required": []}]},
        {
            "type": "object",
            "properties": {"n": {"type": ["null", "integer"], "exclusiveMaximum": 0}},
            "minProperties": 1,
        },
        {"type": "string", "maxLength": 2},
    ],
)
def test_minimal_values_validate(schema: dict[str, Any]) -> None:
    jsonschema.validate(minimal(schema), schema)


def test_minimal_value_of_a_self_referencing_schema_ends() -> None:
    tree = {"type": "object", "properties": {"kid": {"$ref": "#"}}, "required": ["kid"]}
    value = minimal(tree)
    depth = 0
    while isinstance(value, dict):
        value, depth = value.get("kid"), depth + 1
    assert 0 < depth < 40


def _fn_tool() -> dict[str, Any]:
    return {"type": "function", "function": {"name": "weather", "parameters": WEATHER}}


def test_chat_tool_call_valid_for_schema_stream_and_not(oai: openai.OpenAI) -> None:
    msgs: Any = [{"role": "user", "content": "weather?"}]
    done = oai.chat.completions.create(model="m", messages=msgs, tools=[_fn_tool()])
    call = done.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert done.choices[0].finish_reason == "tool_calls"
    jsonschema.validate(json.loads(call.function.arguments), WEATHER)  # type: ignore[union-attr]
    args = ""
    with oai.chat.completions.create(
        model="m", messages=msgs, tools=[_fn_tool()], stream=True, tool_choice="required"
    ) as stream:
        for chunk in stream:
            for tc in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
                args += tc.function.arguments or ""  # type: ignore[union-attr]
    jsonschema.validate(json.loads(args), WEATHER)
    # After the tool's result the model answers in words, so an agent's loop ends.
    after = [
        *msgs,
        done.choices[0].message.model_dump(),
        {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
    ]
    text = oai.chat.completions.create(model="m", messages=after, tools=[_fn_tool()])
    assert text.choices[0].message.content and not text.choices[0].message.tool_calls


def test_chat_json_schema_and_reasoning(oai: openai.OpenAI) -> None:
    fmt: Any = {"type": "json_schema", "json_schema": {"name": "w", "schema": WEATHER}}
    done = oai.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "hi"}],
        response_format=fmt,
        reasoning_effort="high",
    )
    jsonschema.validate(json.loads(done.choices[0].message.content or ""), WEATHER)
    assert done.usage and done.usage.completion_tokens_details
    assert done.usage.completion_tokens_details.reasoning_tokens > 0
    assert done.choices[0].message.model_extra["reasoning_content"]  # type: ignore[index]
    plain = oai.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "hi"}],
        response_format={"type": "json_object"},
    )
    assert isinstance(json.loads(plain.choices[0].message.content or ""), dict)


def test_embeddings_base64_is_little_endian_float32(sim: SimProcess, oai: openai.OpenAI) -> None:
    floats = oai.embeddings.create(model="m", input="hello", encoding_format="float")
    raw = httpx.post(
        f"{sim.base_url}/embeddings",
        json={"model": "m", "input": "hello", "encoding_format": "base64"},
        timeout=10,
    ).json()["data"][0]["embedding"]
    decoded = struct.unpack("<8f", base64.b64decode(raw))
    assert decoded == pytest.approx(floats.data[0].embedding, abs=1e-6)
    # The SDK asks for base64 by default and decodes it itself.
    sdk = oai.embeddings.create(model="m", input="hello")
    assert sdk.data[0].embedding == pytest.approx(floats.data[0].embedding, abs=1e-6)


def _resp_tool() -> dict[str, Any]:
    return {"type": "function", "name": "weather", "parameters": WEATHER}


def test_responses_text_reasoning_and_usage(oai: openai.OpenAI) -> None:
    done = oai.responses.create(model="m", input="hi", reasoning={"effort": "low"})
    assert done.status == "completed" and done.output_text
    kinds = [item.type for item in done.output]
    assert kinds == ["reasoning", "message"]
    assert done.usage and done.usage.output_tokens_details.reasoning_tokens > 0
    with oai.responses.stream(model="m", input="hi", reasoning={"effort": "low"}) as stream:
        seen = [event.type for event in stream]
        final = stream.get_final_response()
    assert seen[:2] == ["response.created", "response.in_progress"]
    assert "response.reasoning_text.delta" in seen and "response.output_text.delta" in seen
    assert seen[-1] == "response.completed"
    assert final.output_text and final.usage and final.usage.total_tokens > 0


def test_responses_tool_call_stream_and_not(oai: openai.OpenAI) -> None:
    done = oai.responses.create(model="m", input="weather?", tools=[_resp_tool()])  # type: ignore[list-item]
    call = done.output[0]
    assert call.type == "function_call"
    jsonschema.validate(json.loads(call.arguments), WEATHER)
    with oai.responses.stream(
        model="m",
        input="weather?",
        tools=[_resp_tool()],
        tool_choice="required",  # type: ignore[list-item]
    ) as stream:
        deltas = [e.delta for e in stream if e.type == "response.function_call_arguments.delta"]
        final = stream.get_final_response()
    assert final.output[0].type == "function_call"
    jsonschema.validate(json.loads("".join(deltas)), WEATHER)
    after: Any = [
        {"role": "user", "content": "weather?"},
        {
            "type": "function_call",
            "call_id": call.call_id,
            "name": "weather",
            "arguments": call.arguments,
        },
        {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"},
    ]
    text = oai.responses.create(model="m", input=after, tools=[_resp_tool()])  # type: ignore[list-item]
    assert text.output_text


def test_responses_json_schema_and_limit(oai: openai.OpenAI) -> None:
    fmt: Any = {"format": {"type": "json_schema", "name": "w", "schema": WEATHER}}
    done = oai.responses.create(model="m", input="hi", text=fmt)
    jsonschema.validate(json.loads(done.output_text), WEATHER)
    cut = oai.responses.create(model="m", input="hi", max_output_tokens=3)
    assert cut.status == "incomplete" and cut.usage and cut.usage.output_tokens == 3


def _claude_tool() -> dict[str, Any]:
    return {"name": "weather", "description": "w", "input_schema": WEATHER}


def test_messages_thinking_tool_loop_keeps_signatures(claude: anthropic.Anthropic) -> None:
    thinking: Any = {"type": "enabled", "budget_tokens": 2048}
    msgs: list[Any] = [{"role": "user", "content": "weather?"}]
    first = claude.messages.create(
        model="m",
        max_tokens=4096,
        messages=msgs,
        tools=[_claude_tool()],
        thinking=thinking,  # type: ignore[list-item]
    )
    assert [b.type for b in first.content] == ["thinking", "tool_use"]
    assert first.stop_reason == "tool_use"
    use = first.content[1]
    assert use.type == "tool_use"
    jsonschema.validate(use.input, WEATHER)
    # The blocks go back as they came: the simulator checks the signature, as Anthropic does.
    back = [*msgs, {"role": "assistant", "content": [b.model_dump() for b in first.content]}]
    back.append(
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny"}],
        }
    )
    with claude.messages.stream(
        model="m",
        max_tokens=4096,
        messages=back,
        tools=[_claude_tool()],
        thinking=thinking,  # type: ignore[list-item]
    ) as stream:
        final = stream.get_final_message()
    assert [b.type for b in final.content] == ["thinking", "text"]
    assert final.stop_reason == "end_turn" and final.usage.output_tokens > 0
    altered = json.loads(json.dumps(back))
    altered[1]["content"][0]["thinking"] = "something else"
    with pytest.raises(anthropic.BadRequestError, match="signature"):
        claude.messages.create(model="m", max_tokens=4096, messages=altered, thinking=thinking)


def test_messages_stream_tool_input_and_error_shape(
    sim: SimProcess, claude: anthropic.Anthropic
) -> None:
    with claude.messages.stream(
        model="m",
        max_tokens=100,
        messages=[{"role": "user", "content": "w"}],
        tools=[_claude_tool()],  # type: ignore[list-item]
        tool_choice={"type": "tool", "name": "weather"},
    ) as stream:
        final = stream.get_final_message()
    assert final.content[0].type == "tool_use"
    jsonschema.validate(final.content[0].input, WEATHER)
    sim.control(status=529)
    try:
        with pytest.raises(anthropic.APIStatusError) as info:
            claude.messages.create(
                model="m", max_tokens=10, messages=[{"role": "user", "content": "w"}]
            )
        assert info.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]
    finally:
        sim.control(status=None)


@pytest.mark.parametrize("path", ["responses", "messages"])
def test_every_stream_event_validates_strictly(sim: SimProcess, path: str) -> None:
    """The SDKs build their models without validating; here each event must validate."""
    from anthropic.types import RawMessageStreamEvent
    from openai.types.responses import ResponseStreamEvent
    from pydantic import TypeAdapter

    adapter: TypeAdapter[Any] = TypeAdapter(
        ResponseStreamEvent if path == "responses" else RawMessageStreamEvent
    )
    body: dict[str, Any] = {"model": "m", "stream": True, "max_tokens": 4096}
    if path == "responses":
        body |= {"input": "weather?", "tools": [_resp_tool()], "reasoning": {"effort": "low"}}
        body["tool_choice"] = "required"
    else:
        body |= {"messages": [{"role": "user", "content": "w"}], "tools": [_claude_tool()]}
        body["thinking"] = {"type": "enabled", "budget_tokens": 1024}
    raw = httpx.post(f"{sim.base_url}/{path}", json=body, timeout=10).content
    kinds = []
    for block in raw.split(b"\n\n"):
        if block.strip() and not block.startswith(b"event: ping"):  # Anthropic's keep-alive
            event = adapter.validate_python(json.loads(block.split(b"data: ", 1)[1]))
            kinds.append(event.type)
    assert ("response.function_call_arguments.done" in kinds) or ("message_stop" in kinds)
