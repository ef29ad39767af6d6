"""routes.yaml, parsed once into frozen, validated objects.

The file is loaded with ``yaml.safe_load`` only and validated by pydantic models that
forbid unknown keys, so a typo is an error with its YAML path
(``routes.demo.endpoints[2].provider: unknown provider 'x'``), never a silent default.
Partial ``timeouts``/``retry``/``breaker``/``stats`` blocks merge field by field down the
chain defaults -> provider -> route -> endpoint before the complete blocks are validated,
so every ``EndpointSpec`` carries fully resolved settings and nothing is merged per request.
A reload builds a whole new ``Config`` and the service swaps it in one assignment.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from policies import STRATEGIES

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

# -- the raw file ------------------------------------------------------------------------


class _Partial(BaseModel):
    """Overrides of the blocks: any subset of fields, each checked when merged."""

    model_config = ConfigDict(extra="forbid", frozen=True)
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


class StorageSection(_Strict):
    url: str | None = "sqlite+aiosqlite:///router.db"
    retention_days: float = Field(30.0, gt=0)
    queue_size: int = Field(10_000, ge=10, le=10_000_000)
    batch_size: int = Field(500, ge=1, le=100_000)
    flush_interval_s: float = Field(1.0, gt=0, le=3600)


class DefaultsSection(_Partial):
    pass


# How a host takes reasoning requests (``router.apis.reasoning``): ``passthrough`` leaves
# the body as the client sent it.
ReasoningForm = Literal["passthrough", "openai", "anthropic", "openrouter", "tokenlx"]


class OpenAIProviderSection(_Partial):
    kind: Literal["openai"]
    base_url: str
    api_key_env: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    reasoning: ReasoningForm = "passthrough"
    max_connections: int = Field(4096, ge=1, le=100_000)

    @field_validator("base_url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return v.rstrip("/")


class LiteLLMProviderSection(_Partial):
    kind: Literal["litellm"]
    base_url: str | None = None
    api_key_env: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    params: dict[str, Any] = Field(default_factory=dict)


class SimulatedProviderSection(_Partial):
    kind: Literal["simulated"]
    ttft_ms: float = Field(50.0, ge=0)
    tokens_per_s: float = Field(100.0, gt=0)
    tokens: int = Field(16, ge=1, le=100_000)
    error_rate: float = Field(0.0, ge=0, le=1)
    jitter: float = Field(0.0, ge=0, le=10)
    tail_prob: float = Field(0.0, ge=0, le=1)
    tail_ms: float = Field(0.0, ge=0)
    seed: int | None = None
    hang: bool = False
    disconnect_mid_stream: bool = False
    status: int | None = Field(None, ge=400, le=599)
    retry_after_s: float | None = Field(None, ge=0)
    reasoning: ReasoningForm = "passthrough"


PROVIDER_SECTIONS: dict[str, type[_Partial]] = {
    "openai": OpenAIProviderSection,
    "litellm": LiteLLMProviderSection,
    "simulated": SimulatedProviderSection,
}
ProviderSection = OpenAIProviderSection | LiteLLMProviderSection | SimulatedProviderSection

ScoreMetric = Literal[
    "latency", "ttft", "throughput", "error_rate", "output_error_rate", "price", "in_flight"
]


class HedgeSection(_Strict):
    after: Literal["p50", "p90", "p95", "p99"] | None = None
    after_ms: float = Field(1000.0, gt=0)
    max_extra: int = Field(1, ge=1, le=4)


class PolicySection(_Strict):
    strategy: str
    weights: dict[ScoreMetric, float] | None = None
    pick: Literal["best", "p2c", "weighted"] | None = None
    hedge: HedgeSection | None = None

    @field_validator("strategy")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in STRATEGIES:
            raise ValueError(f"unknown strategy {v!r}; known: {', '.join(sorted(STRATEGIES))}")
        return v

    @field_validator("weights")
    @classmethod
    def _weights(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        if v is not None:
            for k, w in v.items():
                if w < 0:
                    raise ValueError(f"weight of {k} must be >= 0")
            if not any(v.values()):
                raise ValueError("at least one weight must be > 0")
        return v


class EndpointSection(_Partial):
    provider: str
    model: str
    id: str | None = None
    weight: float = Field(1.0, gt=0)
    price: Price | None = None
    max_concurrency: int | None = Field(None, ge=1)
    disabled: bool = False


class RouteSection(_Partial):
    policy: str = "priority"
    fallbacks: list[str] = Field(default_factory=list)
    endpoints: list[EndpointSection] = Field(min_length=1)


class _RouteHead(_Partial):
    """A route without its endpoints: each endpoint is validated on its own, so one bad
    endpoint hides no other problem of the file."""

    policy: str = "priority"
    fallbacks: list[str] = Field(default_factory=list)


class FileSection(_Strict):
    server: ServerSection = Field(default_factory=lambda: ServerSection.model_validate({}))
    storage: StorageSection = Field(default_factory=lambda: StorageSection.model_validate({}))
    defaults: DefaultsSection = Field(default_factory=DefaultsSection)
    providers: dict[str, dict[str, Any]] = Field(default_factory=dict)
    policies: dict[str, PolicySection] = Field(default_factory=dict)
    routes: dict[str, RouteSection] = Field(min_length=1)


# -- the resolved config -----------------------------------------------------------------


class Secret:
    """A key read from the environment; never shows itself in a repr or a log."""

    __slots__ = ("value",)

    def __init__(self, value: str) -> None:
        self.value = value

    def __repr__(self) -> str:
        return "Secret('***')"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other.value == self.value

    def __hash__(self) -> int:
        return hash(self.value)


@dataclass(frozen=True, slots=True)
class ProviderSpec:
    name: str
    kind: str
    section: ProviderSection
    api_key: Secret | None
    missing_key_env: str | None  # set when api_key_env names an unset variable

    def identity(self) -> tuple[Any, ...]:
        """What must be equal for a reload to keep this provider's connection pool."""
        return (self.kind, self.section.model_dump_json(), self.api_key)


@dataclass(frozen=True, slots=True)
class PolicySpec:
    name: str
    strategy: str
    weights: Mapping[str, float] | None = None
    pick: str | None = None
    hedge: HedgeSection | None = None


@dataclass(frozen=True, slots=True)
class EndpointSpec:
    route: str
    id: str
    index: int
    provider: ProviderSpec
    model: str
    weight: float
    price: Price | None
    max_concurrency: int | None
    timeouts: Timeouts
    retry: Retry
    breaker: Breaker
    stats: Stats
    disabled_reason: str | None  # None = usable

    @property
    def retry_on(self) -> frozenset[int | str]:
        return frozenset(self.retry.on)


@dataclass(frozen=True, slots=True)
class RouteSpec:
    name: str
    policy: PolicySpec
    fallbacks: tuple[str, ...]
    endpoints: tuple[EndpointSpec, ...]
    timeouts: Timeouts
    retry: Retry


@dataclass(frozen=True, slots=True)
class Config:
    path: str
    version: str
    loaded_at: datetime
    server: ServerSection
    storage: StorageSection
    providers: Mapping[str, ProviderSpec]
    policies: Mapping[str, PolicySpec]
    routes: Mapping[str, RouteSpec]
    client_keys: Mapping[str, str] = field(repr=False)  # key -> name
    admin_key: Secret | None = field(repr=False)

    def secrets(self) -> list[str]:
        """Every configured secret, for redaction of anything the router emits."""
        out = list(self.client_keys)
        if self.admin_key:
            out.append(self.admin_key.value)
        out += [p.api_key.value for p in self.providers.values() if p.api_key]
        return [s for s in out if len(s) >= 4]


class ConfigError(Exception):
    """Every problem found in a routes file, each with its YAML path."""

    def __init__(self, path: str, problems: Sequence[str]) -> None:
        self.path = path
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


# -- loading -----------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` with YAML 1.2 booleans: only true/false.

    YAML 1.1 reads ``on``, ``off``, ``yes`` and ``no`` as booleans, which would turn the
    contract's ``retry: {on: [...]}`` key into ``True``.
    """


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)


def _loc(parts: Sequence[str | int]) -> str:
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _problems(exc: ValidationError, prefix: Sequence[str | int] = ()) -> list[str]:
    problems = []
    for err in exc.errors():
        loc = [*prefix, *err["loc"]]
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        problems.append(f"{_loc(loc) or '(top)'}: {msg}")
    return problems


def parse_client_keys(raw: str) -> dict[str, str]:
    """``name:key`` or bare ``key`` entries, comma-separated -> {key: name}."""
    keys: dict[str, str] = {}
    for entry in raw.split(","):
        entry = entry.strip()
        if not entry:
            continue
        name, sep, key = entry.partition(":")
        if not sep:
            key = name
            name = "key-" + hashlib.sha256(key.encode()).hexdigest()[:8]
        keys[key.strip()] = name.strip()
    return keys


def _block(
    name: str,
    layers: Sequence[tuple[Sequence[str | int], Mapping[str, Any] | None]],
    problems: list[str],
) -> Any:
    """Merge one block down its chain and validate it, blaming the layer that broke it.

    Every layer is checked on its own (each field has a default, so a partial block is a
    valid block), so a bad layer is reported and skipped while the others still merge.
    """
    model = BLOCKS[name]
    merged: dict[str, Any] = {}
    for where, layer in layers:
        if not layer:
            continue
        try:
            model.model_validate(layer)
        except ValidationError as exc:
            problems.extend(_problems(exc, [*where, name]))
            continue
        merged.update(layer)
    try:
        return model.model_validate(merged)
    except ValidationError as exc:  # pragma: no cover - no cross-field bounds today
        problems.extend(_problems(exc, [*layers[-1][0], name]))
        return model()


def _valid(
    model: type[BaseModel], data: Any, where: Sequence[str | int], problems: list[str]
) -> Any:
    """``model`` validated from ``data`` (None reads as empty), or None with its problems noted."""
    try:
        return model.model_validate({} if data is None else data)
    except ValidationError as exc:
        problems.extend(_problems(exc, where))
        return None


def _mapping(raw: Mapping[str, Any], key: str, problems: list[str]) -> dict[str, Any]:
    value = raw.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        problems.append(f"{key}: must be a mapping, got {type(value).__name__}")
        return {}
    for name in value:
        if not isinstance(name, str):
            problems.append(f"{key}.{name}: names must be strings")
    return {k: v for k, v in value.items() if isinstance(k, str)}


def load(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Config:
    """Read, validate and resolve a routes file. Raises ConfigError listing every problem."""
    path = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(path, [f"{path}: cannot read: {exc.strerror or exc}"]) from exc
    return loads(data, path=path, env=env)


def loads(
    data: bytes | str, *, path: str = "<string>", env: Mapping[str, str] | None = None
) -> Config:
    env = os.environ if env is None else env
    raw_bytes = data.encode() if isinstance(data, str) else data
    try:
        raw = yaml.load(raw_bytes, Loader=_Loader)  # _Loader is a yaml.SafeLoader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "?"
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(path, [f"(yaml) {where}: {problem}"]) from exc
    if not isinstance(raw, dict):
        raise ConfigError(path, ["(top): the file must be a mapping with a 'routes' key"])

    # Each part is validated on its own and checking goes on past a bad one, so that
    # `router check` reports every problem of the file at once, not the first layer's.
    problems: list[str] = []
    for key in raw:
        if key not in FileSection.model_fields:
            problems.append(f"{key}: unknown key")
    server: ServerSection = _valid(ServerSection, raw.get("server"), ["server"], problems)
    storage: StorageSection = _valid(StorageSection, raw.get("storage"), ["storage"], problems)
    defaults: DefaultsSection = (
        _valid(DefaultsSection, raw.get("defaults"), ["defaults"], problems) or DefaultsSection()
    )
    providers_raw = _mapping(raw, "providers", problems)
    policies_raw = _mapping(raw, "policies", problems)
    routes_raw = _mapping(raw, "routes", problems)
    if raw.get("routes") is None or raw.get("routes") == {}:
        problems.append("routes: at least one route is required")

    providers: dict[str, ProviderSpec] = {}
    provider_sections: dict[str, _Partial] = {}
    for name, body in providers_raw.items():
        kind = body.get("kind") if isinstance(body, dict) else None
        model = PROVIDER_SECTIONS.get(kind) if isinstance(kind, str) else None
        if model is None:
            known = ", ".join(PROVIDER_SECTIONS)
            problems.append(f"providers.{name}.kind: must be one of {known}, got {kind!r}")
            continue
        try:
            psec = model.model_validate(body)
        except ValidationError as exc:
            problems.extend(_problems(exc, ["providers", name]))
            continue
        provider_sections[name] = psec
        key_env = getattr(psec, "api_key_env", None)
        key = env.get(key_env) if key_env else None
        providers[name] = ProviderSpec(
            name=name,
            kind=psec.kind,  # type: ignore[attr-defined]
            section=psec,  # type: ignore[arg-type]
            api_key=Secret(key) if key else None,
            missing_key_env=key_env if key_env and not key else None,
        )

    policies: dict[str, PolicySpec] = {}
    for name, body in policies_raw.items():
        pol = _valid(PolicySection, body, ["policies", name], problems)
        if pol is None:
            continue
        if pol.strategy != "score" and (pol.weights is not None or pol.pick is not None):
            problems.append(f"policies.{name}: 'weights' and 'pick' apply only to strategy 'score'")
        policies[name] = PolicySpec(name, pol.strategy, pol.weights, pol.pick, pol.hedge)

    routes: dict[str, RouteSpec] = {}
    for rname, body in routes_raw.items():
        rloc: list[str | int] = ["routes", rname]
        if not isinstance(body, dict):
            problems.append(f"{_loc(rloc)}: must be a mapping with 'endpoints'")
            continue
        head = {k: v for k, v in body.items() if k != "endpoints"}
        route: _RouteHead = _valid(_RouteHead, head, rloc, problems) or _RouteHead()
        raw_eps = body.get("endpoints")
        if not isinstance(raw_eps, list) or not raw_eps:
            where = _loc([*rloc, "endpoints"])
            problems.append(f"{where}: a non-empty list of endpoints is required")
            raw_eps = []
        route_eps = [
            (i, _valid(EndpointSection, ep, [*rloc, "endpoints", i], problems))
            for i, ep in enumerate(raw_eps)
        ]
        policy = policies.get(route.policy)
        if policy is None:
            if route.policy in STRATEGIES:
                policy = PolicySpec(route.policy, route.policy)
            elif route.policy in policies_raw:
                policy = PolicySpec("priority", "priority")  # invalid policy: reported above
            else:
                problems.append(
                    f"{_loc([*rloc, 'policy'])}: unknown policy {route.policy!r}; "
                    f"define it under 'policies' or name a strategy"
                )
                policy = PolicySpec("priority", "priority")
        for i, fb in enumerate(route.fallbacks):
            if fb not in routes_raw:
                problems.append(f"{_loc([*rloc, 'fallbacks', i])}: unknown route {fb!r}")
            elif fb == rname:
                problems.append(
                    f"{_loc([*rloc, 'fallbacks', i])}: a route cannot fall back to itself"
                )

        route_layers: dict[str, list[tuple[Sequence[str | int], Mapping[str, Any] | None]]] = {
            b: [(["defaults"], getattr(defaults, b)), (rloc, getattr(route, b))] for b in BLOCKS
        }
        route_timeouts = _block("timeouts", route_layers["timeouts"], problems)
        route_retry = _block("retry", route_layers["retry"], problems)

        endpoints: list[EndpointSpec] = []
        seen: set[str] = set()
        for i, ep in route_eps:
            if ep is None:
                continue
            eloc: list[str | int] = [*rloc, "endpoints", i]
            pspec = providers.get(ep.provider)
            if pspec is None and ep.provider not in providers_raw:
                problems.append(f"{_loc([*eloc, 'provider'])}: unknown provider {ep.provider!r}")
            eid = ep.id or ep.provider
            duplicate = eid in seen
            if duplicate:
                problems.append(f"{_loc([*eloc, 'id'])}: duplicate endpoint id {eid!r} in route")
            seen.add(eid)
            owner = provider_sections.get(ep.provider)
            resolved = {
                b: _block(
                    b,
                    [
                        (["defaults"], getattr(defaults, b)),
                        (["providers", ep.provider], getattr(owner, b, None)),
                        (rloc, getattr(route, b)),
                        (eloc, getattr(ep, b)),
                    ],
                    problems,
                )
                for b in BLOCKS
            }
            if pspec is None or duplicate:
                continue  # reported above; its blocks were still checked
            reason = None
            if ep.disabled:
                reason = "disabled in config"
            elif pspec.missing_key_env:
                reason = f"key variable {pspec.missing_key_env} is not set"
            endpoints.append(
                EndpointSpec(
                    route=rname,
                    id=eid,
                    index=len(endpoints),
                    provider=pspec,
                    model=ep.model,
                    weight=ep.weight,
                    price=ep.price,
                    max_concurrency=ep.max_concurrency,
                    timeouts=resolved["timeouts"],
                    retry=resolved["retry"],
                    breaker=resolved["breaker"],
                    stats=resolved["stats"],
                    disabled_reason=reason,
                )
            )
        routes[rname] = RouteSpec(
            name=rname,
            policy=policy,
            fallbacks=tuple(route.fallbacks),
            endpoints=tuple(endpoints),
            timeouts=route_timeouts,
            retry=route_retry,
        )

    if problems:
        raise ConfigError(path, list(dict.fromkeys(problems)))

    client_keys = parse_client_keys(env.get(server.api_keys_env, "")) if server.api_keys_env else {}
    admin_raw = env.get(server.admin_key_env, "") if server.admin_key_env else ""
    if env.get("ROUTER_DATABASE_URL"):
        storage = storage.model_copy(update={"url": env["ROUTER_DATABASE_URL"]})
    return Config(
        path=path,
        version=hashlib.sha256(raw_bytes).hexdigest()[:8],
        loaded_at=datetime.now(UTC),
        server=server,
        storage=storage,
        # Read-only views: a frozen dataclass holding plain dicts could still be mutated.
        providers=MappingProxyType(providers),
        policies=MappingProxyType(policies),
        routes=MappingProxyType(routes),
        client_keys=MappingProxyType(client_keys),
        admin_key=Secret(admin_raw.strip()) if admin_raw.strip() else None,
    )


def summary(config: Config) -> str:
    n_eps = sum(len(r.endpoints) for r in config.routes.values())
    lines = [
        f"{config.path}: ok (version {config.version})",
        f"  {len(config.routes)} routes, {n_eps} endpoints, {len(config.providers)} providers, "
        f"{len(config.policies)} policies",
    ]
    for route in config.routes.values():
        usable = sum(1 for e in route.endpoints if e.disabled_reason is None)
        fb = f", fallbacks: {', '.join(route.fallbacks)}" if route.fallbacks else ""
        lines.append(
            f"  route {route.name}: policy {route.policy.name} ({route.policy.strategy}), "
            f"{usable}/{len(route.endpoints)} endpoints usable{fb}"
        )
        for ep in route.endpoints:
            state = f"disabled: {ep.disabled_reason}" if ep.disabled_reason else "ok"
            lines.append(
                f"    - {ep.id}: {ep.provider.name} ({ep.provider.kind}) {ep.model} [{state}]"
            )
    return "\n".join(lines)
