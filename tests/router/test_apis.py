"""The client APIs' body checks: what is refused, with which message, ``param`` and code."""

from __future__ import annotations

from typing import Any

import pytest

from router.apis import BY_NAME, BY_PATH
from router.errors import BadRequest

MESSAGES = [{"role": "user", "content": "hi"}]


def refusal(api: str, payload: dict[str, Any]) -> BadRequest:
    with pytest.raises(BadRequest) as info:
        BY_NAME[api].validate(payload)
    return info.value


@pytest.mark.parametrize(
    ("api", "payload", "param", "code", "message"),
    [
        ("chat", {"messages": MESSAGES}, "model", "missing_field", "missing required field"),
        ("chat", {"model": 7, "messages": MESSAGES}, "model", "invalid_type", "non-empty string"),
        ("chat", {"model": "", "messages": MESSAGES}, "model", "invalid_type", "non-empty"),
        ("chat", {"model": "m", "messages": []}, "messages", "invalid_type", "non-empty array"),
        (
            "chat",
            {"model": "m", "messages": MESSAGES, "stream": "yes"},
            "stream",
            "invalid_type",
            "'stream' must be a boolean",
        ),
        (
            "chat",
            {"model": "m", "messages": MESSAGES, "max_tokens": True},
            "max_tokens",
            "invalid_type",
            "an integer",
        ),
        (
            "chat",
            {"model": "m", "messages": MESSAGES, "temperature": "hot"},
            "temperature",
            "invalid_type",
            "a number",
        ),
        (
            "chat",
            {"model": "m", "messages": MESSAGES, "stop": 3},
            "stop",
            "invalid_type",
            "a string or an array",
        ),
        ("completions", {"model": "m"}, "prompt", "missing_field", "'prompt'"),
        (
            "completions",
            {"model": "m", "prompt": 5},
            "prompt",
            "invalid_type",
            "a string or an array",
        ),
        ("embeddings", {"model": "m", "input": {"a": 1}}, "input", "invalid_type", "an array"),
    ],
)
def test_a_bad_body_names_its_field(
    api: str, payload: dict[str, Any], param: str, code: str, message: str
) -> None:
    err = refusal(api, payload)
    assert err.status == 400
    assert (err.param, err.code) == (param, code)
    assert message in err.message


def test_a_good_body_is_left_as_it_came() -> None:
    payload = {"model": "m", "messages": MESSAGES, "thinking": {"type": "enabled"}, "n": 1}
    before = repr(payload)
    BY_NAME["chat"].validate(payload)
    assert repr(payload) == before  # validated, not rebuilt: unknown fields kept


def test_each_path_has_one_api() -> None:
    assert {api.path for api in BY_PATH.values()} == set(BY_PATH)
    assert BY_PATH["/v1/chat/completions"].operation == "chat/completions"
    assert not BY_NAME["embeddings"].stream_flag({"stream": True})
    assert BY_NAME["chat"].stream_flag({"stream": True})


def test_chat_asks_a_stream_for_usage_and_says_whether_the_client_did() -> None:
    chat = BY_NAME["chat"]
    payload: dict[str, Any] = {"stream_options": {"x": 1}}
    assert chat.prepare(payload, True) is False
    assert payload["stream_options"] == {"x": 1, "include_usage": True}
    assert chat.prepare({"stream_options": {"include_usage": True}}, True) is True
    untouched: dict[str, Any] = {}
    assert chat.prepare(untouched, False) is False and untouched == {}
