"""The four override blocks every level of routes.yaml may carry (``timeouts``, ``retry``,
``breaker``, ``stats``) as an endpoint ends up with them, complete, and ``price``.

The file gives them as partial dicts at every level; the loader merges those field by
field and validates the complete block here (``BLOCKS``) once per endpoint.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class Strict(BaseModel):
    """Unknown keys are errors (the loader names their YAML path); a parsed block is frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Timeouts(Strict):
    connect_s: float = Field(
        5.0, gt=0, le=3600, description="Seconds to open a connection to the upstream."
    )
    ttft_s: float = Field(
        60.0,
        gt=0,
        le=3600,
        description="Seconds to a stream's first token, or to a whole answer's first byte.",
    )
    idle_s: float = Field(
        60.0, gt=0, le=3600, description="Seconds of silence allowed between streamed chunks."
    )
    total_s: float = Field(
        600.0,
        gt=0,
        le=86400,
        description="Seconds for the whole request, retries and the stream included.",
    )


RetryClass = Literal["timeout", "connect"]


class Retry(Strict):
    attempts: int = Field(
        3, ge=1, le=20, description="Upstream attempts per request: the first, retries and hedges."
    )
    backoff_s: float = Field(
        0.05,
        ge=0,
        le=60,
        description="Base of the exponential backoff between attempts (full jitter).",
    )
    backoff_max_s: float = Field(2.0, ge=0, le=600, description="Longest backoff between attempts.")
    on: tuple[int | RetryClass, ...] = Field(
        (429, 500, 502, 503, 504, "timeout", "connect"),
        description="What is retried: HTTP statuses, `timeout`, `connect`.",
    )

    @field_validator("on", mode="before")
    @classmethod
    def _classes(cls, v: Any) -> Any:
        # One clear message instead of pydantic's one per member of the int | Literal union.
        if isinstance(v, list | tuple):
            for item in v:
                if isinstance(item, str) and item not in ("timeout", "connect"):
                    raise ValueError(f"{item!r} is not an HTTP status, 'timeout' or 'connect'")
        return v

    @field_validator("on")
    @classmethod
    def _statuses(cls, v: tuple[int | str, ...]) -> tuple[int | str, ...]:
        for item in v:
            if isinstance(item, int) and not 400 <= item <= 599:
                raise ValueError(f"{item} is not an HTTP error status (400-599)")
        return v


class Breaker(Strict):
    consecutive_failures: int = Field(
        5, ge=1, le=10_000, description="Failures in a row that open the breaker."
    )
    error_rate: float = Field(
        0.5, gt=0, le=1, description="Error rate over `window_s` that opens the breaker."
    )
    min_requests: int = Field(
        20, ge=1, le=1_000_000, description="Answers within `window_s` before `error_rate` counts."
    )
    window_s: float = Field(
        60.0, gt=0, le=86400, description="The window the error rate is measured over."
    )
    cooldown_s: float = Field(
        30.0,
        gt=0,
        le=86400,
        description=(
            "How long an open breaker keeps the endpoint out; doubles after a failed probe."
        ),
    )


class Stats(Strict):
    halflife_s: float = Field(
        30.0,
        gt=0,
        le=86400,
        description="Seconds for live stats to lose half their weight: how fast they forget.",
    )


class Price(Strict):
    """USD per million tokens."""

    input: float = Field(0.0, ge=0, description="USD per million input tokens.")
    output: float = Field(
        0.0, ge=0, description="USD per million output tokens (reasoning included)."
    )
    cache_read: float | None = Field(
        None, ge=0, description="USD per million cached input tokens read."
    )
    cache_write: float | None = Field(
        None, ge=0, description="USD per million input tokens written to the cache."
    )


BLOCKS: dict[str, type[Strict]] = {
    "timeouts": Timeouts,
    "retry": Retry,
    "breaker": Breaker,
    "stats": Stats,
}
