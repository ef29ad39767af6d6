"""What routes.yaml may say: pydantic models, frozen, bounds beside the fields.

Unknown keys are errors (``extra="forbid"``), reported by the loader with their YAML path.
Provider blocks are a discriminated union on ``kind`` over the settings each provider
module declares (``providers.KINDS``), each with the override blocks added; policy blocks
are a discriminated union on ``strategy`` whose options are the keyword parameters of the
strategy's constructor (``policies.STRATEGIES``). So a provider kind or a strategy is one
new module plus one registry line, and nothing here changes.

The four override blocks (``timeouts``, ``retry``, ``breaker``, ``stats``) appear at
every level as partial dicts; the loader merges them field by field and validates the
complete block (``BLOCKS``) once per endpoint.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, create_model, field_validator

from policies import STRATEGIES
from providers import KINDS

# -- complete blocks (what every endpoint ends up with) ---------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Timeouts(_Strict):
    connect_s: float = Field(5.0, gt=0, le=3600)
    ttft_s: float = Field(60.0, gt=0, le=3600)
    idle_s: float = Field(60.0, gt=0, le=3600)
    total_s: float = Field(600.0, gt=0, le=86400)


RetryClass = Literal["timeout", "connect"]


class Retry(_Strict):
    attempts: int = Field(3, ge=1, le=20)
    backoff_s: float = Field(0.05, ge=0, le=60)
    backoff_max_s: float = Field(2.0, ge=0, le=600)
    on: tuple[int | RetryClass, ...] = (429, 500, 502, 503, 504, "timeout", "connect")

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


class Breaker(_Strict):
    consecutive_failures: int = Field(5, ge=1, le=10_000)
    error_rate: float = Field(0.5, gt=0, le=1)
    min_requests: int = Field(20, ge=1, le=1_000_000)
    window_s: float = Field(60.0, gt=0, le=86400)
    cooldown_s: float = Field(30.0, gt=0, le=86400)


class Stats(_Strict):
    halflife_s: float = Field(30.0, gt=0, le=86400)


class Price(_Strict):
    """USD per million tokens."""

    input: float = Field(0.0, ge=0)
    output: float = Field(0.0, ge=0)
    cache_read: float | None = Field(None, ge=0)
    cache_write: float | None = Field(None, ge=0)


BLOCKS: dict[str, type[_Strict]] = {
    "timeouts": Timeouts,
    "retry": Retry,
    "breaker": Breaker,
    "stats": Stats,
}

# -- the file's sections -----------------------------------------------------------------


class Overrides(_Strict):
    """Overrides of the blocks: any subset of fields, each checked when merged."""

    timeouts: dict[str, Any] | None = None
    retry: dict[str, Any] | None = None
    breaker: dict[str, Any] | None = None
    stats: dict[str, Any] | None = None


class ServerSection(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    api_keys_env: str | None = "ROUTER_API_KEYS"
    admin_key_env: str | None = "ROUTER_ADMIN_KEY"
    max_body_mb: float = Field(20.0, gt=0, le=1024)
    # A client that has not sent a whole request head (the first one included), or stops
    # sending its body, for this long (to twice this) is cut off: nginx's 60 s.
    client_timeout_s: float = Field(60.0, gt=0, le=3600)
    # Open client connections at most; unset: half the process's descriptor limit.
    max_connections: int | None = Field(None, ge=1, le=1_000_000)


class StorageSection(_Strict):
    url: str | None = "sqlite+aiosqlite:///router.db"
    retention_days: float = Field(30.0, gt=0)
    queue_size: int = Field(10_000, ge=10, le=10_000_000)
    batch_size: int = Field(500, ge=1, le=100_000)
    flush_interval_s: float = Field(1.0, gt=0, le=3600)


class DefaultsSection(Overrides):
    pass


# One section model per provider kind: the kind's own settings plus the override blocks.
PROVIDER_SECTIONS: dict[str, type[BaseModel]] = {
    kind: create_model(f"{settings.__name__}Section", __base__=(settings, Overrides))
    for kind, settings in KINDS.items()
}
ProviderSection = TypeAdapter[Any](
    # A Union built at run time from the registry: mypy cannot see it as a type.
    Annotated[Union[tuple(PROVIDER_SECTIONS.values())], Field(discriminator="kind")]  # type: ignore[arg-type]  # noqa: UP007
)


class HedgeSection(_Strict):
    after: Literal["p50", "p90", "p95", "p99"] | None = None
    after_ms: float = Field(1000.0, gt=0)
    max_extra: int = Field(1, ge=1, le=4)


class AffinitySection(_Strict):
    """Prompt-cache affinity (``policies.affinity`` has the stay-or-move rule)."""

    ttl_s: float = Field(600.0, gt=0, le=86400)  # a binding lives this long after its last use
    usd_per_s: float = Field(0.05, ge=0, le=1000)  # what a second of waiting is worth


_NOT_OPTIONS = ("strategy", "hedge", "affinity")  # what every policy may say, beside options


class _PolicyBase(_Strict):
    strategy: str
    hedge: HedgeSection | None = None
    affinity: AffinitySection | None = None

    def options(self) -> dict[str, Any]:
        """The strategy's own options, as its constructor takes them."""
        return {k: getattr(self, k) for k in type(self).model_fields if k not in _NOT_OPTIONS}


def _options(factory: Callable[..., Any]) -> dict[str, Any]:
    """A strategy's options: its constructor's keyword parameters, typed by their hints."""
    fields: dict[str, Any] = {}
    # eval_str: the strategies' modules use postponed annotations (strings).
    for name, param in inspect.signature(factory, eval_str=True).parameters.items():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        hint = Any if param.annotation is inspect.Parameter.empty else param.annotation
        default = None if param.default is inspect.Parameter.empty else param.default
        fields[name] = (hint, default)
    return fields


POLICY_SECTIONS: dict[str, type[_PolicyBase]] = {
    name: create_model(
        f"{name.title().replace('_', '')}Policy",
        __base__=_PolicyBase,
        strategy=(Literal[name], ...),  # type: ignore[arg-type]  # a Literal made at run time
        **_options(factory),
    )
    for name, factory in STRATEGIES.items()
}
PolicySection = TypeAdapter[Any](
    # A Union built at run time from the registry: mypy cannot see it as a type.
    Annotated[Union[tuple(POLICY_SECTIONS.values())], Field(discriminator="strategy")]  # type: ignore[arg-type]  # noqa: UP007
)


class EndpointSection(Overrides):
    provider: str
    model: str
    id: str | None = None
    weight: float = Field(1.0, gt=0)
    price: Price | None = None
    max_concurrency: int | None = Field(None, ge=1)
    disabled: bool = False


class RouteHead(Overrides):
    """A route without its endpoints: each endpoint is validated on its own, so one bad
    endpoint hides no other problem of the file."""

    policy: str = "priority"
    fallbacks: list[str] = Field(default_factory=list)


class RouteSection(RouteHead):
    endpoints: list[EndpointSection] = Field(min_length=1)


# -- client keys with limits, and where they are kept (docs/teams.md) --------------------


class KeyLimits(_Strict):
    rpm: int | None = Field(None, ge=1)
    tpm: int | None = Field(None, ge=1)
    concurrent: int | None = Field(None, ge=1)


class KeyBudget(_Strict):
    day: float | None = Field(None, ge=0)
    month: float | None = Field(None, ge=0)


class KeySection(_Strict):
    key_env: str = Field(min_length=1)  # the key itself lives in the environment
    routes: list[str] | None = None  # None: every route
    limits: KeyLimits = Field(default_factory=lambda: KeyLimits.model_validate({}))
    budget_usd: KeyBudget = Field(default_factory=lambda: KeyBudget.model_validate({}))


class StateSection(_Strict):
    url_env: str | None = None  # redis://...; unset: in-process state (one node)
    on_error: Literal["open", "closed"] = "open"  # Redis unreachable: count locally, or 503
    prefix: str = Field("router:", min_length=1)  # several deployments on one Redis
    timeout_ms: float = Field(250.0, gt=0, le=10_000)  # every Redis call's bound


class FileSection(_Strict):
    """The whole file, for its list of top-level keys and for the reference docs."""

    server: ServerSection = Field(default_factory=lambda: ServerSection.model_validate({}))
    storage: StorageSection = Field(default_factory=lambda: StorageSection.model_validate({}))
    defaults: DefaultsSection = Field(default_factory=DefaultsSection)
    providers: dict[str, dict[str, Any]] = Field(default_factory=dict)
    policies: dict[str, dict[str, Any]] = Field(default_factory=dict)
    routes: dict[str, RouteSection] = Field(min_length=1)
    keys: dict[str, KeySection] = Field(default_factory=dict)
    state: StateSection = Field(default_factory=lambda: StateSection.model_validate({}))
