"""Cached and cache-creation tokens read from each API's usage object, as the hosts send
them, and priced at ``cache_read`` / ``cache_write``."""

from __future__ import annotations

import orjson
import pytest

from router.apis.chat import inspect_body
from router.apis.responses import usage_of
from router.apis.translate.responses_answer import usage_from_chat
from router.config.blocks import Price
from router.requestlog.records import Usage

PRICE = Price(input=3.0, output=15.0, cache_read=0.3, cache_write=3.75)

# OpenAI Chat Completions (a cache hit on a 2006-token prompt).
OPENAI_CHAT = {
    "prompt_tokens": 2006,
    "completion_tokens": 300,
    "total_tokens": 2306,
    "prompt_tokens_details": {"cached_tokens": 1920, "audio_tokens": 0},
    "completion_tokens_details": {
        "reasoning_tokens": 0,
        "audio_tokens": 0,
        "accepted_prediction_tokens": 0,
        "rejected_prediction_tokens": 0,
    },
}
# OpenAI Responses: the same request.
OPENAI_RESPONSES = {
    "input_tokens": 2006,
    "input_tokens_details": {"cached_tokens": 1920},
    "output_tokens": 300,
    "output_tokens_details": {"reasoning_tokens": 128},
    "total_tokens": 2306,
}
# Anthropic Messages: input_tokens counts neither cache reads nor cache writes.
ANTHROPIC_WRITE = {
    "input_tokens": 21,
    "cache_creation_input_tokens": 188086,
    "cache_read_input_tokens": 0,
    "output_tokens": 393,
    "service_tier": "standard",
}
ANTHROPIC_READ = {
    **ANTHROPIC_WRITE,
    "cache_creation_input_tokens": 0,
    "cache_read_input_tokens": 188086,
}
# litellm's chat usage for that first Anthropic answer: cache tokens inside prompt_tokens.
LITELLM_ANTHROPIC = {
    "prompt_tokens": 188107,
    "completion_tokens": 393,
    "total_tokens": 188500,
    "prompt_tokens_details": {"cached_tokens": 0, "cache_creation_tokens": 188086},
    "cache_creation_input_tokens": 188086,
    "cache_read_input_tokens": 0,
}


def usd(fresh: int, read: int, written: int, output: int) -> float:
    return (fresh * 3.0 + read * 0.3 + written * 3.75 + output * 15.0) / 1e6


def test_openai_chat_cached_tokens_cost_cache_read() -> None:
    u = Usage.parse(OPENAI_CHAT)
    assert u == Usage(2006, 300, 0, 1920, 0)
    assert u.cost(PRICE) == pytest.approx(usd(86, 1920, 0, 300))
    body = orjson.dumps({"choices": [{"message": {"content": "ok"}}], "usage": OPENAI_CHAT})
    assert inspect_body(body)[0] == u


def test_responses_cached_tokens_cost_cache_read() -> None:
    u = usage_of(OPENAI_RESPONSES)
    assert u == Usage(2006, 300, 128, 1920, 0)
    assert u.cost(PRICE) == pytest.approx(usd(86, 1920, 0, 300))


@pytest.mark.parametrize(
    ("usage", "read", "written"),
    [(ANTHROPIC_WRITE, 0, 188086), (ANTHROPIC_READ, 188086, 0)],
)
def test_anthropic_prompt_is_input_plus_cache_reads_and_writes(
    usage: dict[str, int], read: int, written: int
) -> None:
    u = Usage.parse(usage)
    assert u == Usage(188107, 393, 0, read, written)
    assert u.cost(PRICE) == pytest.approx(usd(21, read, written, 393))


def test_litellm_anthropic_usage_is_not_counted_twice() -> None:
    u = Usage.parse(LITELLM_ANTHROPIC)
    assert u == Usage(188107, 393, 0, 0, 188086)
    assert u.cost(PRICE) == pytest.approx(usd(21, 0, 188086, 393))
    # Translated for a Responses client, the cache write is kept.
    assert usage_of(usage_from_chat(LITELLM_ANTHROPIC)) == u


def test_without_cache_prices_cached_tokens_cost_input() -> None:
    u = Usage.parse(OPENAI_CHAT)
    assert u is not None
    assert u.cost(Price(input=3.0, output=15.0)) == pytest.approx(usd(2006, 0, 0, 300))
