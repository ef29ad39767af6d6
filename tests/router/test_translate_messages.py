"""Messages <-> chat translation on recorded examples, both ways: requests, answers,
streams and errors (``router.apis.translate``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from router.apis.translate import find
from router.apis.translate.chat_via_messages import (
    DEFAULT_MAX_TOKENS,
    ChatFromMessages,
    chat_to_messages,
    messages_answer_to_chat,
)
from router.apis.translate.common import chat_error_to_messages, messages_error_to_chat
from router.apis.translate.messages_via_chat import (
    MessagesFromChat,
    chat_answer_to_messages,
    messages_to_chat,
)

RECORDED = Path(__file__).parent.parent / "fixtures" / "messages"
MESSAGES_REQUEST = json.loads((RECORDED / "messages_request.json").read_text())
CHAT_STREAM = (RECORDED / "chat_stream.sse").read_bytes()
MESSAGES_STREAM = (RECORDED / "messages_stream.sse").read_bytes()


def events_of(stream: bytes) -> list[tuple[str | None, Any]]:
    """(event name, parsed data) of each SSE event."""
    out: list[tuple[str | None, Any]] = []
    for block in stream.split(b"\n\n"):
        if not block.strip():
            continue
        name, data = None, None
        for line in block.split(b"\n"):
            if line.startswith(b"event:"):
                name = line[6:].strip().decode()
            elif line.startswith(b"data:"):
                raw = line[5:].strip()
                data = raw.decode() if raw == b"[DONE]" else json.loads(raw)
        out.append((name, data))
    return out


def whole_events(stream: bytes) -> list[bytes]:
    return [e + b"\n\n" for e in stream.split(b"\n\n") if e.strip()]


# -- Messages client, chat host ---------------------------------------------------------


def test_a_messages_request_becomes_chat() -> None:
    chat, dropped = messages_to_chat(MESSAGES_REQUEST)
    turns = chat["messages"]
    assert turns[0] == {
        "role": "system",
        "content": "You are a careful assistant.\n\nAnswer briefly.",
    }
    assert turns[1]["content"][1] == {
        "type": "image_url",
        "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="},
    }
    call = turns[2]["tool_calls"][0]
    assert call["id"] == "toolu_01A09q90qw90lq917835lq9"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris", "unit": "celsius"}
    assert turns[2]["content"] == "A cat. Let me check the weather."
    # The tool result comes right after the call, before what the user said next.
    assert turns[3] == {
        "role": "tool",
        "tool_call_id": "toolu_01A09q90qw90lq917835lq9",
        "content": "18 degrees, cloudy",
    }
    assert turns[4] == {"role": "user", "content": "Thanks. Anything else?"}
    assert chat["max_completion_tokens"] == 1024
    assert chat["stop"] == ["\n\nHuman:"]
    assert chat["stream_options"] == {"include_usage": True}
    assert [t["function"]["name"] for t in chat["tools"]] == ["get_weather"]
    assert chat["tools"][0]["function"]["parameters"]["required"] == ["city"]
    assert (chat["tool_choice"], chat["parallel_tool_calls"]) == ("auto", False)
    assert chat["user"] == "user-1234"
    assert "thinking" not in chat and "top_k" not in chat  # reasoning goes its own way
    assert dropped == ["cache_control", "thinking blocks", "tool bash_20250124", "top_k"]


def test_a_chat_stream_becomes_messages_events() -> None:
    out = MessagesFromChat().feed(CHAT_STREAM)
    seen = events_of(out)
    assert [name for name, _ in seen] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert all(data["type"] == name for name, data in seen)
    text = "".join(
        d["delta"]["text"] for n, d in seen if d.get("delta", {}).get("type") == "text_delta"
    )
    assert text == "Let me check."
    tool = seen[5][1]["content_block"]
    assert (tool["type"], tool["id"], tool["name"]) == (
        "tool_use",
        "call_DdmO9pD3xa9XTPNJ32zg2hcA",
        "get_weather",
    )
    args = "".join(d["delta"].get("partial_json", "") for _, d in seen[6:8])
    assert json.loads(args) == {"city": "Paris"}
    assert {d["index"] for _, d in seen[5:9]} == {1}
    end = seen[9][1]
    assert end["delta"]["stop_reason"] == "tool_use"
    # 82 prompt tokens, 64 of them read from the cache: Anthropic counts those apart.
    assert end["usage"] == {
        "input_tokens": 18,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 64,
        "output_tokens": 17,
    }


@given(st.lists(st.integers(min_value=1, max_value=9), max_size=9))
def test_a_stream_converts_the_same_however_its_events_are_grouped(cuts: list[int]) -> None:
    evs = whole_events(CHAT_STREAM)
    groups, pos = [], 0
    for n in cuts:
        groups.append(b"".join(evs[pos : pos + n]))
        pos += n
    groups.append(b"".join(evs[pos:]))
    transform = MessagesFromChat()
    assert b"".join(transform.feed(g) for g in groups) == MessagesFromChat().feed(CHAT_STREAM)


def test_reasoning_deltas_become_a_thinking_block_before_the_text() -> None:
    chunks = [
        {
            "id": "c1",
            "model": "m",
            "choices": [{"index": 0, "delta": {"reasoning_content": "Hmm"}}],
        },
        {"id": "c1", "model": "m", "choices": [{"index": 0, "delta": {"content": "Hi"}}]},
        {
            "id": "c1",
            "model": "m",
            "choices": [{"index": 0, "delta": {}, "finish_reason": "length"}],
        },
    ]
    stream = b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks)
    seen = events_of(MessagesFromChat().feed(stream + b"data: [DONE]\n\n"))
    blocks = [d["content_block"]["type"] for n, d in seen if n == "content_block_start"]
    assert blocks == ["thinking", "text"]
    assert seen[2][1]["delta"] == {"type": "thinking_delta", "thinking": "Hmm"}
    assert seen[-2][1]["delta"]["stop_reason"] == "max_tokens"


def test_a_whole_chat_answer_becomes_a_message() -> None:
    answer = {
        "id": "chatcmpl-abc",
        "object": "chat.completion",
        "created": 1741569952,
        "model": "gpt-4.1",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Checking.",
                    "reasoning_content": "Need the tool.",
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                        }
                    ],
                },
                "finish_reason": "tool_calls",
            }
        ],
        "usage": {
            "prompt_tokens": 100,
            "completion_tokens": 20,
            "total_tokens": 120,
            "prompt_tokens_details": {"cached_tokens": 40},
            "completion_tokens_details": {"reasoning_tokens": 5},
        },
    }
    message = json.loads(chat_answer_to_messages(json.dumps(answer).encode()))
    assert message["type"] == "message" and message["role"] == "assistant"
    assert message["content"] == [
        {"type": "thinking", "thinking": "Need the tool.", "signature": ""},
        {"type": "text", "text": "Checking."},
        {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
    ]
    assert message["stop_reason"] == "tool_use"
    assert message["usage"] == {
        "input_tokens": 60,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 40,
        "output_tokens": 20,  # reasoning included, as both bill it
    }


# -- chat client, Messages host ---------------------------------------------------------


CHAT_REQUEST: dict[str, Any] = {
    "model": "claude",
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "developer", "content": [{"type": "text", "text": "Use tools."}]},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Weather here and there?"},
                {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
                {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQ"}},
                {"type": "input_audio", "input_audio": {"data": "AAA", "format": "wav"}},
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_a",
                    "type": "function",
                    "function": {"name": "w", "arguments": '{"c":"A"}'},
                },
                {
                    "id": "call_b",
                    "type": "function",
                    "function": {"name": "w", "arguments": '{"c":"B"}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "call_a", "content": "sunny"},
        {"role": "tool", "tool_call_id": "call_b", "content": "rain"},
        {"role": "user", "content": "And tomorrow?"},
    ],
    "tools": [{"type": "function", "function": {"name": "w", "parameters": {"type": "object"}}}],
    "tool_choice": "required",
    "parallel_tool_calls": False,
    "temperature": 1.6,
    "stop": "END",
    "n": 1,
    "seed": 7,
    "response_format": {"type": "json_object"},
    "reasoning_effort": "high",
    "stream": True,
    "stream_options": {"include_usage": True},
    "user": "u-9",
}


def test_a_chat_request_becomes_messages() -> None:
    body, dropped = chat_to_messages(CHAT_REQUEST)
    assert body["system"] == "Be brief.\n\nUse tools."
    turns = body["messages"]
    assert [t["role"] for t in turns] == ["user", "assistant", "user"]
    assert turns[0]["content"] == [
        {"type": "text", "text": "Weather here and there?"},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}},
        {
            "type": "image",
            "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9j/4AAQ"},
        },
    ]
    assert turns[1]["content"] == [
        {"type": "tool_use", "id": "call_a", "name": "w", "input": {"c": "A"}},
        {"type": "tool_use", "id": "call_b", "name": "w", "input": {"c": "B"}},
    ]
    # Both results and the next question in one user turn, as Anthropic wants them.
    assert turns[2]["content"] == [
        {"type": "tool_result", "tool_use_id": "call_a", "content": "sunny"},
        {"type": "tool_result", "tool_use_id": "call_b", "content": "rain"},
        {"type": "text", "text": "And tomorrow?"},
    ]
    assert body["max_tokens"] == DEFAULT_MAX_TOKENS
    assert body["temperature"] == 1.0  # chat's 0-2 range clamped to Anthropic's 0-1
    assert body["stop_sequences"] == ["END"]
    assert body["tools"] == [{"name": "w", "input_schema": {"type": "object"}}]
    assert body["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    assert body["metadata"] == {"user_id": "u-9"}
    assert body["stream"] is True and "stream_options" not in body
    assert "reasoning_effort" not in body  # router.apis.reasoning writes Anthropic's form
    assert dropped == ["input_audio part", "seed", "response_format"]


def test_a_messages_stream_becomes_chat_chunks() -> None:
    out = ChatFromMessages(client_wants_usage=True).feed(MESSAGES_STREAM)
    seen = events_of(out)
    assert seen[-1] == (None, "[DONE]")
    chunks = [d for _, d in seen[:-1]]
    assert {c["id"] for c in chunks} == {"chatcmpl-014p7gG3wDgGV9EUtLvnow3U"}
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert deltas[0] == {"role": "assistant", "content": ""}
    assert "".join(d.get("reasoning_content", "") for d in deltas) == "I need the weather."
    text = "".join(d.get("content") or "" for d in deltas)
    assert text == "Okay, let's check the weather for San Francisco, CA:"
    calls = [c for d in deltas for c in d.get("tool_calls", ())]
    assert calls[0]["id"] == "toolu_01T1x1fJ34qAmk2tNTrN7Up6"
    assert calls[0]["function"]["name"] == "get_weather"
    args = "".join(c["function"]["arguments"] for c in calls)
    assert json.loads(args) == {"location": "San Francisco, CA"}
    assert {c["index"] for c in calls} == {0}
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["prompt_tokens"] == 472 + 100 + 2048
    assert chunks[-1]["usage"]["completion_tokens"] == 89
    assert chunks[-1]["usage"]["prompt_tokens_details"] == {
        "cached_tokens": 2048,
        "cache_creation_tokens": 100,
    }


def test_the_usage_chunk_only_when_the_client_asked() -> None:
    seen = events_of(ChatFromMessages(client_wants_usage=False).feed(MESSAGES_STREAM))
    assert not any("usage" in d for _, d in seen if isinstance(d, dict))
    assert seen[-1] == (None, "[DONE]")


def test_a_whole_message_becomes_a_chat_answer() -> None:
    message = {
        "id": "msg_01",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-6",
        "content": [
            {"type": "thinking", "thinking": "Let me see.", "signature": "sig"},
            {"type": "text", "text": "Calling."},
            {"type": "tool_use", "id": "toolu_1", "name": "w", "input": {"c": "A"}},
        ],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 10,
            "cache_read_input_tokens": 30,
            "cache_creation_input_tokens": 5,
            "output_tokens": 7,
        },
    }
    answer = json.loads(messages_answer_to_chat(json.dumps(message).encode()))
    choice = answer["choices"][0]
    assert answer["object"] == "chat.completion" and answer["id"] == "chatcmpl-01"
    assert choice["message"]["content"] == "Calling."
    assert choice["message"]["reasoning_content"] == "Let me see."
    assert choice["message"]["tool_calls"] == [
        {"id": "toolu_1", "type": "function", "function": {"name": "w", "arguments": '{"c":"A"}'}}
    ]
    assert choice["finish_reason"] == "tool_calls"
    assert answer["usage"]["prompt_tokens"] == 45
    assert answer["usage"]["prompt_tokens_details"]["cached_tokens"] == 30
    assert answer["usage"]["total_tokens"] == 52


@pytest.mark.parametrize(
    ("stop", "finish"),
    [("end_turn", "stop"), ("max_tokens", "length"), ("stop_sequence", "stop"),
     ("tool_use", "tool_calls"), ("refusal", "content_filter")],
)  # fmt: skip
def test_stop_reasons_map_both_ways(stop: str, finish: str) -> None:
    message = {"id": "m", "content": [{"type": "text", "text": "x"}], "stop_reason": stop}
    answer = json.loads(messages_answer_to_chat(json.dumps(message).encode()))
    assert answer["choices"][0]["finish_reason"] == finish
    if stop not in ("stop_sequence",):
        chat = {"id": "c", "choices": [{"message": {"content": "x"}, "finish_reason": finish}]}
        assert json.loads(chat_answer_to_messages(json.dumps(chat).encode()))["stop_reason"] == stop


def test_errors_take_the_clients_shape() -> None:
    openai_error = b'{"error": {"message": "bad tool schema", "type": "invalid_request_error"}}'
    assert json.loads(chat_error_to_messages(400, openai_error)) == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "bad tool schema"},
    }
    anthropic_error = b'{"type": "error", "error": {"type": "not_found_error", "message": "no"}}'
    err = json.loads(messages_error_to_chat(404, anthropic_error))["error"]
    assert (err["message"], err["type"]) == ("no", "not_found_error")
    assert (
        json.loads(chat_error_to_messages(500, b"<html>oops"))["error"]["message"] == "<html>oops"
    )


def test_a_conversation_survives_messages_to_chat_and_back() -> None:
    chat, _ = messages_to_chat(MESSAGES_REQUEST)
    back, _ = chat_to_messages(chat)
    original = MESSAGES_REQUEST["messages"]
    assert back["messages"][0]["content"] == original[0]["content"]
    kept = [b for b in original[1]["content"] if b["type"] != "thinking"]
    assert back["messages"][1]["content"] == kept
    result = back["messages"][2]["content"][0]
    assert result["tool_use_id"] == original[2]["content"][0]["tool_use_id"]
    assert result["content"] == "18 degrees, cloudy"
    assert back["tools"][0]["input_schema"] == MESSAGES_REQUEST["tools"][0]["input_schema"]


def test_which_translation_serves_which_host() -> None:
    assert find("messages", {"chat", "completions"}).upstream == "chat"  # type: ignore[union-attr]
    assert find("chat", {"messages"}).upstream == "messages"  # type: ignore[union-attr]
    assert find("embeddings", {"messages"}) is None


@given(
    st.text(),
    st.sampled_from(["", ',"logprobs":null']),
    st.sampled_from(["", ',"usage":null']),
)
def test_any_text_comes_through_whatever_the_chunk_looks_like(
    text: str, logprobs: str, usage: str
) -> None:
    """Plain text events are copied from their bytes, others parsed: same result."""
    head = b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m",'
    piece = json.dumps(text).encode()  # ASCII-escaped, as some hosts send it
    raw = text.encode()
    events = [
        head + b'"choices":[{"index":0,"delta":{"content":"a"},"finish_reason":null}]}',
        head + b'"choices":[{"index":0,"delta":{"content":' + piece + b"}"
        + logprobs.encode() + b',"finish_reason":null}]' + usage.encode() + b"}",
        head + b'"choices":[{"index":0,"delta":{"content":"' + raw.replace(b"\\", b"\\\\")
        .replace(b'"', b'\\"').replace(b"\n", b"\\n").replace(b"\r", b"\\r")
        + b'"},"finish_reason":null}]}',
        head + b'"choices":[{"index":0,"delta":{"content":"z"},"finish_reason":"stop"}]}',
    ]  # fmt: skip
    try:
        [json.loads(e[6:]) for e in events]
    except json.JSONDecodeError:
        return  # control characters a host would have escaped: not a chat stream
    out = MessagesFromChat().feed(b"".join(e + b"\n\n" for e in events) + b"data: [DONE]\n\n")
    seen = events_of(out)
    texts = [d["delta"]["text"] for n, d in seen if n == "content_block_delta"]
    assert "".join(texts) == "a" + text + text + "z"
    assert seen[-2][1]["delta"]["stop_reason"] == "end_turn"


def test_events_that_are_more_than_text_are_parsed() -> None:
    head = b'data: {"id":"c","choices":[{"index":0,"delta":'
    stream = (
        head + b'{"content":"a"},"finish_reason":null}]}\n\n'
        + head + b'{"content":"b","tool_calls":[{"index":0,"id":"t","function":'
        b'{"name":"f","arguments":"{}"}}]},"finish_reason":null}]}\n\n'
        + head + b'{"content":"c"},"finish_reason":null}],"usage":{"prompt_tokens":3,'
        b'"completion_tokens":2}}\n\ndata: [DONE]\n\n'
    )  # fmt: skip
    seen = events_of(MessagesFromChat().feed(stream))
    starts = [d["content_block"]["type"] for n, d in seen if n == "content_block_start"]
    assert starts == ["text", "tool_use", "text"]
    assert seen[-2][1]["usage"]["output_tokens"] == 2
