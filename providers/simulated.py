"""A simulated OpenAI-compatible model host, in-process or behind ``router sim-upstream``.

One ``Simulator`` decides every answer: how long until the first token (``ttft_ms``,
log-normal ``jitter``, and a heavy tail: with ``tail_prob`` the TTFT is ``tail_ms``),
how fast tokens follow (``tokens_per_s``), and which faults fire (``error_rate`` HTTP
500s, a fixed ``status`` such as 429 with ``retry_after_s``, ``hang`` before answering,
``disconnect_mid_stream``). ``SimulatedProvider`` plays the answer in-process; the HTTP
server in ``router/sim_upstream.py`` plays the same answer over a socket, so tests,
demos and benchmarks see identical behaviour either way. Params are mutable so a running
simulator can be switched (the routing benchmark makes a fast host slow mid-run).
"""

from __future__ import annotations

import asyncio
import math
import random
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, fields
from typing import Any

import orjson

from providers.base import BufferedResponse, UpstreamRequest
from providers.errors import StreamBroken, UpstreamHTTPError

_WORDS = [
    "the",
    "router",
    "picks",
    "a",
    "healthy",
    "endpoint",
    "for",
    "every",
    "request",
    "and",
    "streams",
    "tokens",
    "back",
    "quickly",
    "while",
    "live",
    "stats",
    "decay",
    "towards",
    "a",
    "prior",
    "so",
    "recovered",
    "hosts",
    "are",
    "tried",
    "again",
]


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

    def update(self, changes: dict[str, Any]) -> None:
        names = {f.name for f in fields(self)}
        for key, value in changes.items():
            if key not in names:
                raise ValueError(f"unknown simulator parameter {key!r}")
            setattr(self, key, value)


@dataclass(slots=True)
class Plan:
    """One answer, decided up front."""

    status: int
    retry_after_s: float | None
    ttft_s: float
    token_gap_s: float
    words: list[str]
    hang: bool
    break_after: int | None  # tokens sent before the connection drops, or None


class Simulator:
    def __init__(self, params: SimParams, name: str = "sim") -> None:
        self.params = params
        self.name = name
        self.rng = random.Random(params.seed)
        self.received = 0

    def plan(self, operation: str, payload: dict[str, Any]) -> Plan:
        p = self.params
        rng = self.rng
        self.received += 1
        status = 200
        if p.status is not None:
            status = p.status
        elif p.error_rate and rng.random() < p.error_rate:
            status = 500
        ttft = p.ttft_ms / 1000.0
        if p.jitter:
            ttft *= math.exp(rng.gauss(0.0, p.jitter))
        if p.tail_prob and rng.random() < p.tail_prob:
            ttft = p.tail_ms / 1000.0
        n = p.tokens
        max_tokens = payload.get("max_tokens") or payload.get("max_completion_tokens")
        if isinstance(max_tokens, int) and max_tokens > 0:
            n = min(n, max_tokens)
        words = [_WORDS[(i + self.received) % len(_WORDS)] for i in range(n)]
        return Plan(
            status=status,
            retry_after_s=p.retry_after_s,
            ttft_s=max(ttft, 0.0),
            token_gap_s=1.0 / p.tokens_per_s,
            words=words,
            hang=p.hang,
            break_after=max(1, n // 2) if p.disconnect_mid_stream else None,
        )


def prompt_tokens(payload: dict[str, Any]) -> int:
    """A rough count (4 bytes a token), stable for the same prompt."""
    source = payload.get("messages") or payload.get("prompt") or payload.get("input") or ""
    return max(1, len(orjson.dumps(source)) // 4)


def error_json(status: int) -> bytes:
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


def full_body(operation: str, payload: dict[str, Any], plan: Plan) -> bytes:
    """A non-streamed answer in OpenAI's shape."""
    model = payload.get("model", "sim")
    now = int(time.time())
    p_tok = prompt_tokens(payload)
    if operation == "embeddings":
        inputs = payload.get("input")
        items = inputs if isinstance(inputs, list) else [inputs]
        dims_raw = payload.get("dimensions")
        dims = dims_raw if isinstance(dims_raw, int) else 8
        data = [
            {"object": "embedding", "index": i, "embedding": _vector(str(item), dims)}
            for i, item in enumerate(items)
        ]
        usage = {"prompt_tokens": p_tok, "total_tokens": p_tok}
        return orjson.dumps({"object": "list", "data": data, "model": model, "usage": usage})
    text = " ".join(plan.words)
    usage = {
        "prompt_tokens": p_tok,
        "completion_tokens": len(plan.words),
        "total_tokens": p_tok + len(plan.words),
    }
    if operation == "completions":
        return orjson.dumps(
            {
                "id": "cmpl-" + uuid.uuid4().hex[:24],
                "object": "text_completion",
                "created": now,
                "model": model,
                "choices": [{"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}],
                "usage": usage,
            }
        )
    return orjson.dumps(
        {
            "id": "chatcmpl-" + uuid.uuid4().hex[:24],
            "object": "chat.completion",
            "created": now,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }
            ],
            "usage": usage,
        }
    )


def _vector(text: str, dims: int) -> list[float]:
    rng = random.Random(text)
    return [round(rng.uniform(-1, 1), 6) for _ in range(max(1, min(dims, 4096)))]


class StreamEvents:
    """The SSE events of a streamed answer, rendered one at a time."""

    def __init__(self, operation: str, payload: dict[str, Any], plan: Plan) -> None:
        self.chat = operation == "chat/completions"
        self.plan = plan
        self.model = payload.get("model", "sim")
        opts = payload.get("stream_options")
        self.include_usage = isinstance(opts, dict) and bool(opts.get("include_usage"))
        self.prompt_tokens = prompt_tokens(payload)
        self.id = ("chatcmpl-" if self.chat else "cmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())

    def _chunk(self, delta_or_text: Any, finish: str | None) -> bytes:
        if self.chat:
            choice = {"index": 0, "delta": delta_or_text, "finish_reason": finish}
            obj = "chat.completion.chunk"
        else:
            choice = {"index": 0, "text": delta_or_text, "finish_reason": finish, "logprobs": None}
            obj = "text_completion"
        body: dict[str, Any] = {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": self.model,
            "choices": [choice],
        }
        if self.include_usage:
            body["usage"] = None
        return b"data: " + orjson.dumps(body) + b"\n\n"

    def head(self) -> bytes:
        """Sent with the response headers, before the first token (as OpenAI does)."""
        if self.chat:
            return self._chunk({"role": "assistant", "content": ""}, None)
        return b""

    def token(self, i: int) -> bytes:
        word = self.plan.words[i] + ("" if i == len(self.plan.words) - 1 else " ")
        return self._chunk({"content": word} if self.chat else word, None)

    def tail(self) -> bytes:
        out = self._chunk({} if self.chat else "", "stop")
        if self.include_usage:
            n = len(self.plan.words)
            usage = {
                "prompt_tokens": self.prompt_tokens,
                "completion_tokens": n,
                "total_tokens": self.prompt_tokens + n,
            }
            body = {
                "id": self.id,
                "object": "chat.completion.chunk" if self.chat else "text_completion",
                "created": self.created,
                "model": self.model,
                "choices": [],
                "usage": usage,
            }
            out += b"data: " + orjson.dumps(body) + b"\n\n"
        return out + b"data: [DONE]\n\n"


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


class SimulatedProvider:
    """The simulator, played in-process: no socket, same timings and faults."""

    kind = "simulated"
    native_timeouts = False

    def __init__(self, params: SimParams, name: str = "sim") -> None:
        self.simulator = Simulator(params, name)

    async def send(self, request: UpstreamRequest) -> BufferedResponse:
        plan = self.simulator.plan(request.operation, request.payload)
        if plan.hang:
            await asyncio.Event().wait()  # until the caller's timeout cancels us
        if plan.status != 200:
            await asyncio.sleep(min(plan.ttft_s, 0.005))
            raise UpstreamHTTPError(
                plan.status, error_json(plan.status), retry_after_s=plan.retry_after_s
            )
        if not request.stream or request.operation == "embeddings":
            await asyncio.sleep(plan.ttft_s + plan.token_gap_s * len(plan.words))
            return BufferedResponse(full_body(request.operation, request.payload, plan))
        events = StreamEvents(request.operation, request.payload, plan)
        return BufferedResponse(stream=_play(events, plan), content_type="text/event-stream")

    async def aclose(self) -> None:
        """Nothing to release: no sockets, no pool."""


async def _play(events: StreamEvents, plan: Plan) -> AsyncIterator[bytes]:
    head = events.head()
    if head:
        yield head
    await asyncio.sleep(plan.ttft_s)
    pacer = Pacer()
    for i in range(len(plan.words)):
        if plan.break_after is not None and i == plan.break_after:
            raise StreamBroken("simulated disconnect mid-stream")
        if i:
            await pacer.wait(plan.token_gap_s)
        yield events.token(i)
    yield events.tail()
