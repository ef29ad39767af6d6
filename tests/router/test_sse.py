"""The SSE inspector: what it forwards, what it cuts, what it notices."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from router.apis.chat import ChatInspector, inspect_body, wants_json
from router.routing.sse import ProtocolViolation


def event(obj: object) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def delta(content: str | None = None, **extra: object) -> bytes:
    d: dict[str, object] = {} if content is None else {"content": content}
    d.update(extra)
    return event({"choices": [{"index": 0, "delta": d, "finish_reason": None}], "usage": None})


USAGE = event(
    {
        "choices": [],
        "usage": {
            "prompt_tokens": 3,
            "completion_tokens": 4,
            "completion_tokens_details": {"reasoning_tokens": 1},
        },
    }
)
STREAM = [
    delta(role="assistant", content=""),
    delta("Hel"),
    delta("lo"),
    event({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}),
    USAGE,
    b"data: [DONE]\n\n",
]


def run(chunks: list[bytes], *, wants_usage: bool) -> tuple[bytes, ChatInspector]:
    insp = ChatInspector(client_wants_usage=wants_usage)
    out = b"".join(insp.feed(c) for c in chunks) + insp.leftover()
    return out, insp


@pytest.mark.parametrize("wants_usage", [True, False])
def test_whole_stream_in_one_read(wants_usage: bool) -> None:
    out, insp = run([b"".join(STREAM)], wants_usage=wants_usage)
    assert insp.first_token and insp.done
    assert insp.usage is not None and insp.usage.completion_tokens == 4
    assert insp.usage.reasoning_tokens == 1
    assert (USAGE in out) is wants_usage
    assert out.replace(USAGE, b"") == b"".join(STREAM).replace(USAGE, b"")


@given(st.lists(st.integers(min_value=1, max_value=400), min_size=1, max_size=12))
def test_any_split_gives_the_same_bytes(cuts: list[int]) -> None:
    whole = b"".join(STREAM)
    chunks, pos = [], 0
    for c in cuts:
        chunks.append(whole[pos : pos + c])
        pos += c
    chunks.append(whole[pos:])
    out, insp = run([c for c in chunks if c], wants_usage=True)
    assert out == whole
    assert insp.done and insp.first_token


def test_the_role_chunk_is_not_a_token() -> None:
    insp = ChatInspector(client_wants_usage=False)
    assert insp.feed(STREAM[0])  # held by the caller until the first token
    assert not insp.first_token
    insp.feed(STREAM[1])
    assert insp.first_token


def test_error_event_before_the_first_token_is_a_protocol_violation() -> None:
    insp = ChatInspector(client_wants_usage=False)
    with pytest.raises(ProtocolViolation, match="error event"):
        insp.feed(event({"error": {"message": "overloaded"}}))


def test_garbage_is_a_protocol_violation() -> None:
    insp = ChatInspector(client_wants_usage=False)
    with pytest.raises(ProtocolViolation):
        insp.feed(b"data: <html>bad gateway</html>\n\n")


def test_tool_call_arguments_are_checked() -> None:
    def call(args: str) -> bytes:
        return delta(tool_calls=[{"index": 0, "function": {"name": "f", "arguments": args}}])

    _, good = run([call('{"a": '), call("1}"), b"data: [DONE]\n\n"], wants_usage=False)
    assert good.tool_calls_valid() is True
    _, bad = run([call('{"a": '), call("1"), b"data: [DONE]\n\n"], wants_usage=False)
    assert bad.tool_calls_valid() is False
    _, none = run(STREAM, wants_usage=False)
    assert none.tool_calls_valid() is None


def test_tool_calls_are_not_looked_for_when_the_request_offered_no_tools() -> None:
    call = delta(tool_calls=[{"index": 0, "function": {"name": "f", "arguments": "{oops"}}])
    stream = [delta("a"), call, USAGE, b"data: [DONE]\n\n"]
    for tools, valid in ((True, False), (False, None)):
        insp = ChatInspector(client_wants_usage=False, tools=tools)
        out = b"".join(insp.feed(c) for c in [b"".join(stream)])
        assert insp.tool_calls_valid() is valid
        assert out == b"".join(stream).replace(USAGE, b"")  # the usage chunk cut either way
        assert insp.usage is not None and insp.usage.completion_tokens == 4


def test_usage_chunk_followed_by_null_usage_chunks_is_still_read() -> None:
    # Some hosts send the usage chunk before a last chunk that says "usage": null.
    tail = event({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "usage": None})
    stream = [delta("a"), USAGE, tail, b"data: [DONE]\n\n"]
    out, insp = run([b"".join(stream)], wants_usage=False)
    assert insp.usage is not None and insp.usage.completion_tokens == 4
    assert out == b"".join(stream).replace(USAGE, b"")


def test_non_streamed_body() -> None:
    body = json.dumps(
        {
            "choices": [
                {
                    "message": {
                        "content": "x",
                        "tool_calls": [{"function": {"name": "f", "arguments": "{oops"}}],
                    }
                }
            ],
            "usage": {
                "prompt_tokens": 9,
                "completion_tokens": 2,
                "prompt_tokens_details": {"cached_tokens": 4},
            },
        }
    ).encode()
    usage, valid, _ = inspect_body(body)
    assert usage is not None and usage.cached_tokens == 4 and usage.prompt_tokens == 9
    assert valid is False
    with pytest.raises(ProtocolViolation):
        inspect_body(b"<html>")


@pytest.mark.parametrize("whole", [True, False])
def test_compact_json_usage_found_past_null_usages(whole: bool) -> None:
    """Hosts that write JSON without spaces ("usage":{ and "usage":null) are read alike."""

    def compact(obj: object) -> bytes:
        return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"

    usage = compact({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 7}})
    stop = compact({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "usage": None})
    tokens = [
        compact({"choices": [{"index": 0, "delta": {"content": t}}], "usage": None})
        for t in ("a", "b", "c")
    ]
    stream = [*tokens, usage, stop, b"data: [DONE]\n\n"]
    out, insp = run([b"".join(stream)] if whole else stream, wants_usage=False)
    assert insp.usage is not None and insp.usage.completion_tokens == 7
    assert insp.done
    assert out == b"".join(stream).replace(usage, b"")


def _chunk(delta: dict[str, object], finish: str | None = None) -> bytes:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return b"data: " + json.dumps({"choices": [choice]}).encode() + b"\n\n"


@pytest.mark.parametrize(
    ("events", "json_wanted", "ok"),
    [
        ([_chunk({"content": "hi"}), _chunk({}, "stop")], False, True),
        ([_chunk({"role": "assistant", "content": ""}), _chunk({}, "stop")], False, False),
        ([_chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]})], False, True),
        (
            [_chunk({"content": '{"a": '}), _chunk({"content": "1}"}), _chunk({}, "stop")],
            True,
            True,
        ),
        (
            [_chunk({"content": '{"a": '}), _chunk({"content": "1"}), _chunk({}, "stop")],
            True,
            False,
        ),
    ],
    ids=["content", "empty", "tool-call", "json", "broken-json"],
)
def test_output_verdict_of_a_stream(events: list[bytes], json_wanted: bool, ok: bool) -> None:
    inspector = ChatInspector(client_wants_usage=False, json=json_wanted)
    out = b"".join(inspector.feed(e) for e in [*events, b"data: [DONE]\n\n"])
    assert inspector.done
    assert out.endswith(b"data: [DONE]\n\n")
    assert (inspector.output_error() is None) is ok


@pytest.mark.parametrize(
    ("message", "json_wanted", "ok"),
    [
        ({"content": "hello"}, False, True),
        ({"content": ""}, False, False),
        ({"content": None, "tool_calls": [{"function": {"arguments": "{}"}}]}, False, True),
        ({"content": '{"x": [1, 2]}'}, True, True),
        ({"content": "Sure! {x: 1}"}, True, False),
    ],
    ids=["content", "empty", "tool-call", "json", "not-json"],
)
def test_output_verdict_of_an_answer(
    message: dict[str, object], json_wanted: bool, ok: bool
) -> None:
    body = json.dumps({"choices": [{"index": 0, "message": message}]}).encode()
    assert (inspect_body(body, json_wanted)[2] is None) is ok
    assert wants_json({"response_format": {"type": "json_schema"}})
    assert not wants_json({"response_format": {"type": "text"}})
