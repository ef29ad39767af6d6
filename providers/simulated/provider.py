"""The simulator played in-process: the ``simulated`` provider kind."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import fields
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from providers.base import BufferedResponse, ProviderSettings, ReasoningForm, UpstreamRequest
from providers.errors import UpstreamHTTPError
from providers.simulated.core import SimParams, Simulator
from providers.simulated.render import body, delay, play, script


class _Slot:
    """The host's capacity taken by one answer, given back once, however it ends."""

    __slots__ = ("_sim",)

    def __init__(self, sim: Simulator) -> None:
        self._sim: Simulator | None = sim

    def free(self) -> None:
        if self._sim is not None:
            self._sim.done()
            self._sim = None

    async def around(self, stream: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        try:
            async for data in stream:
                yield data
        finally:
            self.free()


class _StreamResponse(BufferedResponse):
    """A stream whose slot is freed also when it is closed before it was read."""

    def __init__(self, slot: _Slot, stream: AsyncIterator[bytes]) -> None:
        super().__init__(stream=stream, content_type="text/event-stream")
        self._slot = slot

    def close(self) -> None:
        super().close()
        self._slot.free()


class PromptCacheSettings(BaseModel):
    """The simulated host's prompt cache (``providers.simulated.prompt_cache``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    ttl_s: float = Field(300.0, gt=0, le=86400, description="A cached prefix lives this long.")
    min_tokens: int = Field(1024, ge=0, description="Shortest prefix cached.")
    ttft_factor: float = Field(
        0.3, ge=0, le=1, description=("TTFT of a cached prompt, as a share of the uncached one.")
    )
    max_tokens: int | None = Field(
        None,
        gt=0,
        description="The cache's size in tokens: past it, the least recently used prefixes go.",
    )


class SimulatedProvider:
    """No socket, same timings, faults and shapes as ``router sim-upstream``."""

    kind = "simulated"
    native_timeouts = False

    def __init__(self, params: SimParams, name: str = "sim") -> None:
        self.simulator = Simulator(params, name)

    async def send(self, request: UpstreamRequest) -> BufferedResponse:
        operation, payload = request.operation, request.payload
        sim = self.simulator
        plan = sim.plan(operation, payload)
        slot = _Slot(sim) if plan.status == 200 else None
        try:
            if plan.hang:
                await asyncio.Event().wait()  # until the caller's timeout cancels us
            if slot is None:
                await asyncio.sleep(min(plan.ttft_s, 0.005))
                raise UpstreamHTTPError(plan.status, plan.error, retry_after_s=plan.retry_after_s)
            if not request.stream or operation == "embeddings":
                await asyncio.sleep(delay(plan))
                slot.free()
                return BufferedResponse(body(operation, payload, plan))
        except BaseException:
            if slot is not None:
                slot.free()
            raise
        stream = slot.around(play(script(operation, payload, plan), plan))
        return _StreamResponse(slot, stream)

    async def aclose(self) -> None:
        """Nothing to release: no sockets, no pool."""


class SimulatedSettings(ProviderSettings):
    """``kind: simulated``: the simulator in-process, for demos and tests; no keys."""

    kind: Literal["simulated"]
    DEFAULT_APIS: ClassVar[frozenset[str]] = frozenset(
        {"chat", "completions", "embeddings", "responses", "messages"}
    )
    ttft_ms: float = Field(50.0, ge=0, description="Milliseconds to the first token.")
    tokens_per_s: float = Field(100.0, gt=0, description="Tokens per second after it.")
    tokens: int = Field(
        16, ge=1, le=100_000, description=("Answer length in tokens (at most `max_tokens`).")
    )
    error_rate: float = Field(0.0, ge=0, le=1, description="Share of requests answered 500.")
    jitter: float = Field(0.0, ge=0, le=10, description="Log-normal sigma of the TTFT.")
    tail_prob: float = Field(0.0, ge=0, le=1, description="Chance of a tail TTFT.")
    tail_ms: float = Field(0.0, ge=0, description="The tail TTFT in milliseconds.")
    seed: int | None = Field(None, description="Random seed; none: random.")
    hang: bool = Field(False, description="Never answer.")
    disconnect_mid_stream: bool = Field(False, description="Drop streams halfway.")
    status: int | None = Field(
        None, ge=400, le=599, description=("Answer every request with this status.")
    )
    retry_after_s: float | None = Field(None, ge=0, description="`Retry-After` sent with `status`.")
    reasoning: ReasoningForm = Field(
        "passthrough",
        description=(
            "How the host takes reasoning requests; `passthrough` leaves the body as sent."
        ),
    )
    capacity: int | None = Field(
        None, ge=1, description=("Answers at once at most; past it, 429 with `Retry-After`.")
    )  # past this many at once: 429 with Retry-After
    prompt_cache: PromptCacheSettings | None = Field(
        None, description=("A prompt cache: `{ttl_s, min_tokens, ttft_factor, max_tokens}`.")
    )  # type: ignore[assignment]  # a model here

    def build(self, name: str, api_key: str | None) -> SimulatedProvider:
        mine = type(self).model_fields
        params = SimParams(
            **{f.name: getattr(self, f.name) for f in fields(SimParams) if f.name in mine}
        )
        if self.prompt_cache is not None:
            params.prompt_cache = self.prompt_cache.model_dump()
        return SimulatedProvider(params, name)
