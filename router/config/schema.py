"""What routes.yaml may say: pydantic models, frozen, bounds beside the fields.

Unknown keys are errors (``extra="forbid"``), reported by the loader with their YAML path.
Provider blocks are a discriminated union on ``kind`` over the settings each provider
module declares (``providers.KINDS``), each with the override blocks added; policy blocks
are a discriminated union on ``strategy`` whose options are the keyword parameters of the
strategy's constructor (``policies.STRATEGIES``). So a provider kind or a strategy is one
new module plus one registry line, and nothing here changes.

The four override blocks (``timeouts``, ``retry``, ``breaker``, ``stats``) appear at
every level as partial dicts; the loader merges them field by field and validates the
complete block (``blocks.py``) once per endpoint.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, Field, TypeAdapter, create_model

from policies import STRATEGIES
from providers import KINDS
from router.config.blocks import Price, Strict

# -- the file's sections -----------------------------------------------------------------


class Overrides(Strict):
    """Overrides of the blocks: any subset of fields, each checked when merged."""

    timeouts: dict[str, Any] | None = None
    retry: dict[str, Any] | None = None
    breaker: dict[str, Any] | None = None
    stats: dict[str, Any] | None = None


class ServerSection(Strict):
    host: str = Field("127.0.0.1", description="Address to listen on.")
    port: int = Field(8080, ge=0, le=65535, description="Port to listen on.")
    api_keys_env: str | None = Field(
        "ROUTER_API_KEYS",
        description=(
            "Variable holding client keys (`name:key`, comma-separated); "
            "unset or empty: no client auth."
        ),
    )
    admin_key_env: str | None = Field(
        "ROUTER_ADMIN_KEY",
        description="Variable holding the admin key for `/admin/*`; unset: those paths answer 404.",
    )
    max_body_mb: float = Field(
        20.0,
        gt=0,
        le=1024,
        description="Largest request body in MB, after decompression (413 past it).",
    )
    # A client that has not sent a whole request head (the first one included), or stops
    # sending its body, for this long (to twice this) is cut off: nginx's 60 s.
    client_timeout_s: float = Field(
        60.0,
        gt=0,
        le=3600,
        description="A client that stalls mid-head or mid-body this long (up to twice) is cut off.",
    )
    # Open client connections at most; unset: half the process's descriptor limit.
    max_connections: int | None = Field(
        None,
        ge=1,
        le=1_000_000,
        description="Open client connections at most; unset: half the descriptor limit.",
    )


class StorageSection(Strict):
    url: str | None = Field(
        "sqlite+aiosqlite:///router.db",
        description=(
            "The request log's database (async SQLAlchemy URL); null: no "
            "log. `ROUTER_DATABASE_URL` overrides it."
        ),
    )
    retention_days: float = Field(30.0, gt=0, description="Rows older than this are deleted.")
    queue_size: int = Field(
        10_000,
        ge=10,
        le=10_000_000,
        description=(
            "Records waiting to be written at most; past it the oldest are dropped and counted."
        ),
    )
    batch_size: int = Field(500, ge=1, le=100_000, description="Rows per write.")
    flush_interval_s: float = Field(
        1.0, gt=0, le=3600, description="Longest wait before a partial batch is written."
    )


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


class HedgeSection(Strict):
    after: Literal["p50", "p90", "p95", "p99"] | None = Field(
        None,
        description=(
            "Hedge after this live TTFT percentile of the first endpoint "
            "(`after_ms` until it has 20 samples)."
        ),
    )
    after_ms: float = Field(
        1000.0, gt=0, description="Hedge after this many milliseconds without a first token."
    )
    max_extra: int = Field(
        1,
        ge=1,
        le=4,
        description="Extra attempts a hedge may start (each counts in `retry.attempts`).",
    )


class AffinitySection(Strict):
    """Prompt-cache affinity (``policies.affinity`` has the stay-or-move rule)."""

    ttl_s: float = Field(
        600.0,
        gt=0,
        le=86400,
        description="A conversation's binding lives this long after its last use.",
    )  # a binding lives this long after its last use
    usd_per_s: float = Field(
        0.05,
        ge=0,
        le=1000,
        description="What a second of waiting is worth against the cache's saving: when to move.",
    )  # what a second of waiting is worth


_NOT_OPTIONS = ("strategy", "hedge", "affinity")  # what every policy may say, beside options


class PolicyCommon(Strict):
    strategy: str = Field(description="The strategy that ranks the endpoints (the table above).")
    hedge: HedgeSection | None = Field(
        None, description="Start the next endpoint too when the first is slow (below)."
    )
    affinity: AffinitySection | None = Field(
        None, description="Keep a conversation where its prompt cache is (below); off when absent."
    )

    def options(self) -> dict[str, Any]:
        """The strategy's own options, as its constructor takes them."""
        return {k: getattr(self, k) for k in type(self).model_fields if k not in _NOT_OPTIONS}


def _options(factory: Callable[..., Any]) -> dict[str, Any]:
    """A strategy's options: its constructor's keyword parameters, typed by their hints."""
    fields: dict[str, Any] = {}
    helps: Mapping[str, str] = getattr(factory, "OPTIONS_HELP", {})  # for the reference docs
    # eval_str: the strategies' modules use postponed annotations (strings).
    for name, param in inspect.signature(factory, eval_str=True).parameters.items():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        hint = Any if param.annotation is inspect.Parameter.empty else param.annotation
        default = None if param.default is inspect.Parameter.empty else param.default
        fields[name] = (hint, Field(default, description=helps.get(name)))
    return fields


POLICY_SECTIONS: dict[str, type[PolicyCommon]] = {
    name: create_model(
        f"{name.title().replace('_', '')}Policy",
        __base__=PolicyCommon,
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
    provider: str = Field(description="The provider (under `providers`) that reaches the endpoint.")
    model: str = Field(description="The model name sent upstream.")
    id: str | None = Field(
        None,
        description=(
            "The endpoint's name in its route (headers, logs, "
            "`provider.order`); default: the provider's name."
        ),
    )
    weight: float = Field(1.0, gt=0, description="Its share under `weighted`.")
    price: Price | None = Field(None, description="USD per million tokens (below).")
    max_concurrency: int | None = Field(
        None, ge=1, description="Requests in flight at most; a full endpoint is skipped."
    )
    disabled: bool = Field(False, description="Keep the endpoint out of service.")


class RouteHead(Overrides):
    """A route without its endpoints: each endpoint is validated on its own, so one bad
    endpoint hides no other problem of the file."""

    policy: str = Field("priority", description="A policy under `policies`, or a strategy's name.")
    fallbacks: list[str] = Field(
        default_factory=list,
        description="Other routes tried, in order, when every endpoint here failed.",
    )


class RouteSection(RouteHead):
    endpoints: list[EndpointSection] = Field(min_length=1)


# -- client keys with limits, and where they are kept (docs/teams.md) --------------------


class KeyLimits(Strict):
    rpm: int | None = Field(None, ge=1, description="Requests per minute.")
    tpm: int | None = Field(None, ge=1, description="Tokens per minute, prompt and completion.")
    concurrent: int | None = Field(None, ge=1, description="Requests in flight at once.")


class KeyBudget(Strict):
    day: float | None = Field(None, ge=0, description="USD per UTC day.")
    month: float | None = Field(None, ge=0, description="USD per UTC month.")


class KeySection(Strict):
    key_env: str = Field(
        min_length=1, description="Variable holding the key."
    )  # the key itself lives in the environment
    routes: list[str] | None = Field(
        None, description="Routes the key may use; default: all."
    )  # None: every route
    limits: KeyLimits = Field(
        default_factory=lambda: KeyLimits.model_validate({}), description="Rate limits (below)."
    )
    budget_usd: KeyBudget = Field(
        default_factory=lambda: KeyBudget.model_validate({}),
        description="Spending limits in USD (below).",
    )


class StateSection(Strict):
    url_env: str | None = Field(
        None,
        description="Variable holding a Redis URL for state shared by replicas; unset: in-process.",
    )  # redis://...; unset: in-process state (one node)
    on_error: Literal["open", "closed"] = Field(
        "open",
        description="Redis unreachable: `open` serves and counts locally, `closed` answers 503.",
    )  # Redis unreachable: count locally, or 503
    prefix: str = Field(
        "router:", min_length=1, description="Key prefix, for several deployments on one Redis."
    )  # several deployments on one Redis
    timeout_ms: float = Field(
        250.0, gt=0, le=10_000, description="Bound on every Redis call."
    )  # every Redis call's bound
    allowances: bool = Field(
        True,
        description="Far from its limits, a key is admitted from a replica's share without "
        "a round trip; false: every admission asks Redis.",
    )  # far from its limits, admit from a replica's share (docs/teams.md)


class FileSection(Strict):
    """The whole file, for its list of top-level keys and for the reference docs."""

    server: ServerSection = Field(default_factory=lambda: ServerSection.model_validate({}))
    storage: StorageSection = Field(default_factory=lambda: StorageSection.model_validate({}))
    defaults: DefaultsSection = Field(default_factory=DefaultsSection)
    providers: dict[str, dict[str, Any]] = Field(default_factory=dict)
    policies: dict[str, dict[str, Any]] = Field(default_factory=dict)
    routes: dict[str, RouteSection] = Field(min_length=1)
    keys: dict[str, KeySection] = Field(default_factory=dict)
    state: StateSection = Field(default_factory=lambda: StateSection.model_validate({}))
