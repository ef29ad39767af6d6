"""Reasoning through the litellm provider: each client form reaches the host in its own.

The router rewrites the reasoning fields for a ``kind: litellm`` endpoint before the
provider sends (``router.apis.reasoning``: ``thinking`` for Claude models,
``reasoning_effort`` for the rest). Here that body goes through the real provider to a
fake Anthropic and a fake OpenAI-compatible host, and each records what litellm sent:
TokenLX's form no longer reaches Anthropic untranslated (a 400 that blocked failover),
and ``openai/...`` no longer loses it. A host's 400 on a reasoning field reads as one.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from providers.base import UpstreamRequest
from providers.errors import UpstreamHTTPError
from providers.litellm import LiteLLMProvider
from router.apis.reasoning import apply, form_for, parse, rejected
from tests.fakes.anthropic import FakeAnthropic
from tests.support import FakeUpstream

pytestmark = [
    # litellm builds its answer models at first use, and pydantic warns about the ReadOnly
    # items of litellm's TypedDicts (as in test_litellm.py).
    pytest.mark.filterwarnings(r"ignore:Item .* is using the `ReadOnly` qualifier:UserWarning"),
]
FORMS = [
    {"thinking": {"enabled": True, "budget_tokens": 3000, "return_thoughts": True}},  # TokenLX
    {"thinking": {"type": "enabled", "budget_tokens": 3000}},  # Anthropic
    {"reasoning": {"max_tokens": 3000}},  # OpenRouter
    {"reasoning_effort": "low"},  # OpenAI
]


def _request(model: str, client_body: dict[str, Any]) -> UpstreamRequest:
    payload = {"model": model, "messages": [{"role": "user", "content": "hi"}], **client_body}
    ask = parse(payload)
    assert ask is not None
    apply(payload, ask, form_for("litellm", None, model), "chat")
    return UpstreamRequest("chat/completions", payload, False, "req-1", connect_s=2, read_s=10)


def _send(base_url: str, request: UpstreamRequest) -> bytes:
    async def main() -> bytes:
        provider = LiteLLMProvider(base_url=base_url, api_key="k")
        try:
            response = await asyncio.wait_for(provider.send(request), 20)
            return await response.read()
        finally:
            await provider.aclose()

    return asyncio.run(main())


@pytest.mark.parametrize("client_body", FORMS)
def test_claude_through_litellm_gets_anthropics_thinking(client_body: dict[str, Any]) -> None:
    with FakeAnthropic() as fake:
        _send(fake.url, _request("anthropic/claude-sonnet-4-6", client_body))
        sent = fake.received[-1].body
    budget = 2048 if "reasoning_effort" in client_body else 3000  # low: 2048 by the table
    assert sent["thinking"] == {"type": "enabled", "budget_tokens": budget}
    assert sent["max_tokens"] > budget
    assert "reasoning_effort" not in sent and "reasoning" not in sent


@pytest.mark.parametrize("client_body", FORMS)
def test_openai_models_through_litellm_get_reasoning_effort(client_body: dict[str, Any]) -> None:
    with FakeUpstream() as fake:
        _send(fake.base_url, _request("openai/o3-mini", client_body))
        sent = fake.received[-1].body
    assert sent.get("reasoning_effort") == "low"  # 3000 tokens and "low" alike
    assert "thinking" not in sent


def test_anthropics_400_on_thinking_reads_as_a_refused_reasoning_field() -> None:
    with FakeAnthropic() as fake:
        fake.fail(400)
        with pytest.raises(UpstreamHTTPError) as info:
            _send(fake.url, _request("anthropic/claude-sonnet-4-6", FORMS[0]))
    assert info.value.status == 400
    # The fake's 400 says nothing of thinking: not taken for a refused field.
    assert not rejected(info.value.body)
    assert rejected(
        b'{"type":"error","error":{"type":"invalid_request_error",'
        b'"message":"thinking: Extra inputs are not permitted"}}'
    )
