"""What one request leaves behind: its attempts, usage, cost and outcome.

The pipeline fills a ``RequestRecord`` as the request runs; at the end it goes to the
sinks (the log line, metrics, the request log) in one call, off the hot path's critical
section. Usage is read from the upstream's ``usage`` object in OpenAI's shape.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from router.config import Price


@dataclass(slots=True)
class AttemptRecord:
    """One upstream attempt as the client and the request log see it (not frozen: a
    frozen dataclass pays ``object.__setattr__`` per field, and one is made per attempt)."""

    route: str
    endpoint: str
    status: int | None
    reason: str | None  # None = this attempt served the request
    duration_ms: float
    hedged: bool = False
    ttft_ms: float | None = None

    def public(self) -> dict[str, Any]:
        return {
            "route": self.route,
            "endpoint": self.endpoint,
            "status": self.status,
            "reason": self.reason,
            "duration_ms": round(self.duration_ms, 1),
        }


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0

    @classmethod
    def parse(cls, usage: Any) -> Usage | None:
        """An OpenAI-shaped ``usage`` (litellm's too: its ``prompt_tokens`` include cache
        reads and writes), or Anthropic's Messages ``usage`` (``input_tokens`` without a
        ``prompt_tokens``)."""
        if not isinstance(usage, dict):
            return None
        prompt = usage.get("prompt_tokens")
        if prompt is None and "prompt_tokens" not in usage and "input_tokens" in usage:
            return cls.parse_messages(usage)
        completion = usage.get("completion_tokens")
        # The usual counts are plain ints: checked inline, the odd one through _int.
        u = cls(
            prompt if type(prompt) is int and prompt >= 0 else _int(prompt),
            completion if type(completion) is int and completion >= 0 else _int(completion),
        )
        details = usage.get("completion_tokens_details")
        if isinstance(details, dict):
            u.reasoning_tokens = _int(details.get("reasoning_tokens"))
        pdetails = usage.get("prompt_tokens_details")
        if isinstance(pdetails, dict):
            u.cached_tokens = _int(pdetails.get("cached_tokens"))
            u.cache_write_tokens = _int(pdetails.get("cache_creation_tokens"))
        # Anthropic-style fields, as litellm passes them through (checked only when there:
        # most answers have neither, and this runs on every one).
        if not u.cached_tokens:
            read = usage.get("cache_read_input_tokens")
            if read is not None:
                u.cached_tokens = _int(read)
        if not u.cache_write_tokens:
            written = usage.get("cache_creation_input_tokens")
            if written is not None:
                u.cache_write_tokens = _int(written)
        return u

    @classmethod
    def parse_messages(cls, usage: dict[str, Any]) -> Usage:
        """Anthropic's ``usage``: ``input_tokens`` counts neither cache reads nor cache
        writes, so the prompt is all three."""
        read = _int(usage.get("cache_read_input_tokens"))
        written = _int(usage.get("cache_creation_input_tokens"))
        return cls(
            prompt_tokens=_int(usage.get("input_tokens")) + read + written,
            completion_tokens=_int(usage.get("output_tokens")),
            cached_tokens=read,
            cache_write_tokens=written,
        )

    def cost(self, price: Price | None) -> float:
        """USD, from per-million prices; cached prompt tokens at ``cache_read`` when set."""
        if price is None:
            return 0.0
        cached = min(self.cached_tokens, self.prompt_tokens)
        written = min(self.cache_write_tokens, self.prompt_tokens - cached)
        fresh = self.prompt_tokens - cached - written
        cache_read = price.cache_read if price.cache_read is not None else price.input
        cache_write = price.cache_write if price.cache_write is not None else price.input
        return (
            fresh * price.input
            + cached * cache_read
            + written * cache_write
            + self.completion_tokens * price.output
        ) / 1_000_000.0


def _int(v: Any) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else 0


@dataclass(slots=True)
class RequestRecord:
    request_id: str
    operation: str
    key_name: str | None
    route: str | None = None
    endpoint: str | None = None
    status: int = 0
    stream: bool = False
    started: float = field(default_factory=time.time)
    latency_ms: float = 0.0
    ttft_ms: float | None = None
    usage: Usage | None = None
    cost: float = 0.0
    error: str | None = None  # the error class when the request failed
    attempts: list[AttemptRecord] = field(default_factory=list)
    hedges: int = 0
    # The answer that served: why it was broken though it came back 200 (``empty``,
    # ``not_json``, ``stream_broken``, ``bad_response``), and its tool calls' validity.
    output_error: str | None = None
    tool_calls_valid: bool | None = None
    # The serving attempt's whole span (an attempt record ends when it opens: for a stream,
    # at its first token), for the model page's upstream latency and throughput.
    served_ms: float | None = None
    # The conversation (``routing.sessions``), as prompt-cache affinity named it or, with
    # no affinity, as the proxy names it for the request log (None without a log).
    session: str | None = None
