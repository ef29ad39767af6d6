"""The simulator's prompt cache: longest remembered prefix, TTL, minimum size, bound."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from providers.base import UpstreamRequest
from providers.errors import UpstreamHTTPError
from providers.simulated import SimParams, SimulatedProvider, Simulator, body
from providers.simulated.prompt_cache import CacheSettings, PromptCache, prefixes, segments
from router.state.clock import FakeClock

SYSTEM = "x" * 8000  # 2,000 tokens


def conversation(turns: int) -> dict[str, object]:
    msgs: list[dict[str, str]] = [{"role": "system", "content": SYSTEM}]
    for i in range(turns):
        msgs.append({"role": "user", "content": f"question {i}"})
        msgs.append({"role": "assistant", "content": f"answer {i}"})
    return {"messages": msgs[:-1]}


def test_a_growing_conversation_hits_its_previous_prefix() -> None:
    clock = FakeClock()
    cache = PromptCache(CacheSettings(ttl_s=60, min_tokens=1024), clock)
    first = prefixes(segments("chat/completions", conversation(1)))
    assert cache.use(first) == 0
    second = prefixes(segments("chat/completions", conversation(2)))
    hit = cache.use(second)
    assert hit == first[-1][1]  # all of turn 1's prompt, not the new question
    assert 0 < hit < second[-1][1]


def test_entries_expire_and_short_prompts_are_not_cached() -> None:
    clock = FakeClock()
    cache = PromptCache(CacheSettings(ttl_s=10, min_tokens=1024), clock)
    p = prefixes(segments("chat/completions", conversation(1)))
    cache.use(p)
    clock.advance(11)
    assert cache.use(p) == 0
    short = prefixes([{"role": "user", "content": "hi"}])
    cache.use(short)
    assert cache.use(short) == 0


def test_a_cache_full_in_tokens_pushes_out_the_least_recently_used() -> None:
    clock = FakeClock()
    cache = PromptCache(CacheSettings(ttl_s=300, min_tokens=1024, max_tokens=5000), clock)
    a = prefixes([{"role": "system", "content": "a" * 8000}])  # 2,000 tokens each
    b = prefixes([{"role": "system", "content": "b" * 8000}])
    c = prefixes([{"role": "system", "content": "c" * 8000}])
    cache.use(a)
    cache.use(b)
    assert cache.use(a) == a[-1][1]  # a is the most recent use now; b the oldest
    cache.use(c)  # 6,000 tokens held > 5,000: b goes
    assert cache.held <= 5000
    assert cache.use(b) == 0
    assert cache.use(c) == c[-1][1]
    # A shared prefix counts once: a conversation's growth holds only what each turn adds.
    grown = prefixes([{"role": "system", "content": "c" * 8000}, {"role": "user", "content": "u"}])
    before = cache.held
    cache.use(grown)
    assert cache.held - before == grown[-1][1] - c[-1][1]  # the new message alone


def test_expired_prefixes_free_their_room() -> None:
    clock = FakeClock()
    cache = PromptCache(CacheSettings(ttl_s=10, min_tokens=1024, max_tokens=10_000), clock)
    cache.use(prefixes(["x" * 8000]))
    assert cache.held > 0
    clock.advance(11)
    cache.use(prefixes(["y" * 8000]))
    assert len(cache) == 1 and cache.held == 2000


def test_apis_put_tools_and_system_first() -> None:
    msg = {"tools": [{"name": "t"}], "system": "s", "messages": [{"role": "user", "content": "u"}]}
    assert segments("messages", msg) == [[{"name": "t"}], "s", {"role": "user", "content": "u"}]
    resp = {"instructions": "i", "input": "hello"}
    assert segments("responses", resp) == ["i", "hello"]


def test_the_cache_is_bounded_and_scales_ttft() -> None:
    cache = PromptCache(CacheSettings(min_tokens=1, ttft_factor=0.2), FakeClock(), max_entries=5)
    for i in range(20):
        cache.use(prefixes([f"prompt {i}"]))
    assert len(cache) == 5
    assert cache.ttft_scale(0, 100) == 1.0
    assert abs(cache.ttft_scale(100, 100) - 0.2) < 1e-9
    assert abs(cache.ttft_scale(50, 100) - 0.6) < 1e-9


def _request(payload: dict[str, object], stream: bool = False) -> UpstreamRequest:
    return UpstreamRequest("chat/completions", {"model": "m", **payload}, stream, "r1")


def test_the_simulator_reports_cached_tokens_and_answers_sooner() -> None:
    params = SimParams(
        ttft_ms=100, tokens=4, prompt_cache={"ttl_s": 60, "min_tokens": 1024, "ttft_factor": 0.2}
    )
    sim = Simulator(params)
    first = sim.plan("chat/completions", conversation(1))
    second = sim.plan("chat/completions", conversation(2))
    assert first.reply.cached_tokens == 0 and first.ttft_s == 0.1
    assert second.reply.cached_tokens > 1000
    assert second.ttft_s < 0.1
    usage = orjson.loads(body("chat/completions", conversation(2), second))["usage"]
    assert usage["prompt_tokens_details"]["cached_tokens"] == second.reply.cached_tokens
    with pytest.raises(TypeError):
        params.update({"prompt_cache": {"ttl": 1}})


def test_a_host_at_capacity_answers_429_until_a_slot_frees() -> None:
    async def scenario() -> None:
        provider = SimulatedProvider(SimParams(ttft_ms=1, tokens=2, capacity=1, retry_after_s=0.5))
        held = await provider.send(_request({"messages": [{"role": "user", "content": "a"}]}, True))
        with pytest.raises(UpstreamHTTPError) as refused:
            await provider.send(_request({"messages": [{"role": "user", "content": "b"}]}))
        assert refused.value.status == 429 and refused.value.retry_after_s == 0.5
        held.close()  # a stream given up unread frees its slot too
        answer = await provider.send(_request({"messages": [{"role": "user", "content": "c"}]}))
        assert await answer.read()
        assert provider.simulator.busy == 0

    asyncio.run(scenario())
