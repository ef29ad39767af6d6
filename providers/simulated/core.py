"""The simulator's decisions: when an answer starts, how fast it goes, which faults fire.

One ``Simulator`` decides every answer: how long until the first token (``ttft_ms``,
log-normal ``jitter``, and a heavy tail: with ``tail_prob`` the TTFT is ``tail_ms``),
how fast tokens follow (``tokens_per_s``), and which faults fire (``error_rate`` HTTP
500s, a fixed ``status`` such as 429 with ``retry_after_s``, ``hang`` before answering,
``disconnect_mid_stream``). What the answer says is ``providers.simulated.reply``'s
job; how it looks in each API, the shape modules'. Params are mutable so a running
simulator can be switched (the routing benchmark makes a fast host slow mid-run).
"""

from __future__ import annotations

import asyncio
import math
import random
from dataclasses import dataclass, fields
from typing import Any

import orjson

from providers.simulated import messages
from providers.simulated.prompt_cache import CacheSettings, PromptCache, prefixes, segments
from providers.simulated.reply import Reply, build


@dataclass(slots=True)
class SimParams:
    ttft_ms: float = 50.0
    tokens_per_s: float = 100.0
    tokens: int = 16
    error_rate: float = 0.0
    jitter: float = 0.0
    tail_prob: float = 0.0
    tail_ms: float = 0.0
    seed: int | None = None
    hang: bool = False
    disconnect_mid_stream: bool = False
    status: int | None = None
    retry_after_s: float | None = None
    # A host's prompt cache ({ttl_s, min_tokens, ttft_factor, max_tokens}); None: every
    # prompt is new.
    prompt_cache: dict[str, Any] | None = None
    # Requests the host serves at once; past that it answers 429 with ``retry_after_s``
    # (or 1 s), as a provider's capacity or rate limit does.
    capacity: int | None = None

    def update(self, changes: dict[str, Any]) -> None:
        names = {f.name for f in fields(self)}
        for key, value in changes.items():
            if key not in names:
                raise ValueError(f"unknown simulator parameter {key!r}")
            if key == "prompt_cache" and value is not None:
                CacheSettings(**value)  # reject unknown or ill-typed settings now
            setattr(self, key, value)


@dataclass(slots=True)
class Plan:
    """One answer, decided up front."""

    status: int
    retry_after_s: float | None
    ttft_s: float
    token_gap_s: float
    reply: Reply
    hang: bool
    break_after: int | None  # tokens sent before the connection drops, or None
    error: bytes = b""  # the body of a non-200 answer, in the request's API shape

    @property
    def tokens(self) -> int:
        """Tokens generated, hidden reasoning included: what the answer's timing covers."""
        return self.reply.completion_tokens


class Simulator:
    def __init__(self, params: SimParams, name: str = "sim") -> None:
        self.params = params
        self.name = name
        self.rng = random.Random(params.seed)
        self.received = 0
        self.busy = 0  # answers under way, against ``capacity``
        self._cache: PromptCache | None = None
        self._cache_settings: dict[str, Any] | None = None

    def plan(self, operation: str, payload: dict[str, Any]) -> Plan:
        p = self.params
        rng = self.rng
        self.received += 1
        status = 200
        error = b""
        retry_after_s = p.retry_after_s
        if p.status is not None:
            status = p.status
        elif p.capacity is not None and self.busy >= p.capacity:
            status = 429
            retry_after_s = 1.0 if retry_after_s is None else retry_after_s
        elif p.error_rate and rng.random() < p.error_rate:
            status = 500
        elif operation == "messages":
            problem = messages.bad_signature(payload)
            if problem is not None:  # as Anthropic: a thinking block changed on its way back
                status, error = 400, messages.error_json(400, problem)
        ttft = p.ttft_ms / 1000.0
        if p.jitter:
            ttft *= math.exp(rng.gauss(0.0, p.jitter))
        if p.tail_prob and rng.random() < p.tail_prob:
            ttft = p.tail_ms / 1000.0
        prompt = prompt_tokens(payload)
        cached, ttft_factor = (
            self.prompt_cache(operation, payload, prompt) if status == 200 else (0, 1.0)
        )
        if operation == "embeddings":
            reply = Reply([], [], [], True, prompt, cached, "stop")
        else:
            reply = build(operation, payload, p.tokens, self.received, prompt, cached)
        n = reply.completion_tokens
        if status != 200 and not error:
            error = error_json(status, operation)
        if status == 200:
            self.busy += 1  # until ``done``: the player calls it when the answer ends
        return Plan(
            status=status,
            retry_after_s=retry_after_s,
            ttft_s=max(ttft * ttft_factor, 0.0),
            token_gap_s=1.0 / p.tokens_per_s,
            reply=reply,
            hang=p.hang,
            break_after=max(1, n // 2) if p.disconnect_mid_stream else None,
            error=error,
        )

    def done(self) -> None:
        """An answer planned with status 200 ended, however it ended."""
        self.busy = max(0, self.busy - 1)

    def prompt_cache(
        self, operation: str, payload: dict[str, Any], prompt: int
    ) -> tuple[int, float]:
        """(prompt tokens read from the host's cache, factor on the TTFT). Each shape
        reports the cached count in its API's usage (``prompt_tokens_details.cached_tokens``,
        ``input_tokens_details.cached_tokens``, ``cache_read_input_tokens``)."""
        settings = self.params.prompt_cache
        if not settings or operation == "embeddings":
            return 0, 1.0
        if self._cache is None or settings != self._cache_settings:
            self._cache = PromptCache(CacheSettings(**settings))
            self._cache_settings = dict(settings)
        cache = self._cache
        cached = min(cache.use(prefixes(segments(operation, payload))), prompt)
        return cached, cache.ttft_scale(cached, prompt)


def prompt_tokens(payload: dict[str, Any]) -> int:
    """A rough count (4 bytes a token), stable for the same prompt."""
    source = payload.get("messages") or payload.get("prompt") or payload.get("input") or ""
    size = len(orjson.dumps(source))
    for extra in ("system", "instructions", "tools"):
        if payload.get(extra):
            size += len(orjson.dumps(payload[extra]))
    return max(1, size // 4)


def error_json(status: int, operation: str = "chat/completions") -> bytes:
    """A simulated failure's body, OpenAI-shaped (Anthropic-shaped for Messages)."""
    if operation == "messages":
        return messages.error_json(status, f"simulated HTTP {status}")
    kind = "rate_limit_error" if status == 429 else "server_error"
    return orjson.dumps(
        {
            "error": {
                "message": f"simulated HTTP {status}",
                "type": kind,
                "code": None,
                "param": None,
            }
        }
    )


class Pacer:
    """Sleeps for token gaps, batching gaps under a millisecond into one sleep."""

    __slots__ = ("_owed",)

    def __init__(self) -> None:
        self._owed = 0.0

    async def wait(self, seconds: float) -> None:
        self._owed += seconds
        if self._owed >= 0.001:
            owed, self._owed = self._owed, 0.0
            await asyncio.sleep(owed)
