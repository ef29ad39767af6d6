"""The Messages API module: its body checks, its stream inspector and its error shapes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from providers.errors import StreamBroken
from router.apis.messages import API, MessagesInspector, inspect_body
from router.errors import AllAttemptsFailed, AttemptRecord, BadRequest, NotFound
from router.routing.sse import EMPTY, ProtocolViolation

STREAM = (
    Path(__file__).parent.parent / "fixtures" / "messages" / "messages_stream.sse"
).read_bytes()
TURNS = [{"role": "user", "content": "hi"}]


def refusal(payload: dict[str, Any]) -> BadRequest:
    with pytest.raises(BadRequest) as info:
        API.validate(payload)
    return info.value


@pytest.mark.parametrize(
    ("payload", "param", "code"),
    [
        ({"messages": TURNS, "max_tokens": 5}, "model", "missing_field"),
        ({"model": "m", "messages": TURNS}, "max_tokens", "missing_field"),
        ({"model": "m", "messages": [], "max_tokens": 5}, "messages", "invalid_type"),
        ({"model": "m", "messages": TURNS, "max_tokens": "5"}, "max_tokens", "invalid_type"),
        ({"model": "m", "messages": [{"role": 5, "content": "x"}], "max_tokens": 5},
         "messages[0].role", "invalid_type"),
        ({"model": "m", "messages": [{"role": "user", "content": 3}], "max_tokens": 5},
         "messages[0].content", "invalid_type"),
        ({"model": "m", "messages": TURNS, "max_tokens": 5, "stream": "yes"}, "stream",
         "invalid_type"),
    ],
)  # fmt: skip
def test_a_bad_body_names_its_field(payload: dict[str, Any], param: str, code: str) -> None:
    err = refusal(payload)
    assert (err.param, err.code) == (param, code)


def test_errors_take_anthropics_shape_with_the_same_status() -> None:
    body = json.loads(API.error_body(NotFound("unknown model 'x'", param="model")))
    assert body == {
        "type": "error",
        "error": {
            "type": "not_found_error",
            "message": "unknown model 'x'",
            "code": "model_not_found",
            "param": "model",
        },
    }
    failed = AllAttemptsFailed([AttemptRecord("r", "a", 500, "http_5xx", 3.0)])
    err = json.loads(API.error_body(failed))["error"]
    assert err["type"] == "api_error" and err["attempts"][0]["endpoint"] == "a"


def test_a_broken_stream_ends_with_an_error_event() -> None:
    event = API.stream_error(StreamBroken("cut"))
    assert event.startswith(b"event: error\ndata: ")
    data = json.loads(event.split(b"data: ", 1)[1])
    assert data["type"] == "error" and "stream_broken" in data["error"]["message"]


def run(chunks: list[bytes], tools: bool = True) -> tuple[bytes, MessagesInspector]:
    insp = MessagesInspector(tools=tools, json=False)
    out = b"".join(insp.feed(c) for c in chunks) + insp.leftover()
    return out, insp


def test_the_whole_stream_passes_untouched_and_is_read() -> None:
    out, insp = run([STREAM])
    assert out == STREAM
    assert insp.first_token and insp.done
    assert insp.usage is not None
    assert (insp.usage.prompt_tokens, insp.usage.completion_tokens) == (472 + 100 + 2048, 89)
    assert (insp.usage.cached_tokens, insp.usage.cache_write_tokens) == (2048, 100)
    assert insp.tool_calls_valid() is True
    assert insp.output_error() is None


@given(st.lists(st.integers(min_value=1, max_value=600), min_size=1, max_size=15))
def test_any_split_gives_the_same_bytes_and_the_same_end(cuts: list[int]) -> None:
    chunks, pos = [], 0
    for c in cuts:
        chunks.append(STREAM[pos : pos + c])
        pos += c
    chunks.append(STREAM[pos:])
    out, insp = run([c for c in chunks if c])
    assert out == STREAM
    assert insp.done and insp.first_token
    assert insp.usage is not None and insp.usage.completion_tokens == 89


def test_the_first_token_is_the_first_delta_with_content() -> None:
    insp = MessagesInspector(tools=False, json=False)
    head, rest = STREAM.split(b"event: content_block_delta", 1)
    insp.feed(head)  # message_start, the thinking block's start: no token yet
    assert not insp.first_token and not insp.done
    insp.feed(b"event: content_block_delta" + rest)
    assert insp.first_token and insp.content and insp.done


def test_an_error_event_before_the_first_token_is_the_upstreams_failure() -> None:
    error = (
        b"event: error\n"
        b'data: {"type":"error","error":{"type":"overloaded_error","message":"busy"}}\n\n'
    )
    insp = MessagesInspector(tools=False, json=False)
    with pytest.raises(ProtocolViolation, match="busy"):
        insp.feed(STREAM.split(b"event: content_block_start", 1)[0] + error)


def test_broken_tool_input_is_noticed() -> None:
    bad = STREAM.replace(b'" \\"San Francisco, CA\\"}"', b'" \\"San Fr"')
    _, insp = run([bad])
    assert insp.tool_calls_valid() is False


def test_a_stream_without_message_stop_is_not_done() -> None:
    cut = STREAM.split(b"event: message_stop", 1)[0]
    _, insp = run([cut])
    assert insp.first_token and not insp.done


def test_an_unterminated_message_stop_still_ends_it() -> None:
    _, insp = run([STREAM.rstrip(b"\n")])
    assert insp.done


def test_a_whole_message_is_read() -> None:
    message = {
        "id": "msg_1",
        "type": "message",
        "content": [{"type": "tool_use", "id": "t", "name": "w", "input": {}}],
        "usage": {"input_tokens": 3, "cache_read_input_tokens": 4, "output_tokens": 5},
    }
    usage, tools_ok, broken = inspect_body(json.dumps(message).encode(), False)
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (7, 5)
    assert (tools_ok, broken) == (True, None)
    message["content"] = []
    assert inspect_body(json.dumps(message).encode(), False)[2] == EMPTY
    with pytest.raises(ProtocolViolation):
        inspect_body(b'{"type":"error","error":{"type":"api_error","message":"x"}}', False)
