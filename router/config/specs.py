"""The resolved config: frozen objects the runtime is built from, nothing left to merge.

Every ``EndpointSpec`` carries its fully merged blocks, so nothing is merged per request.
Mappings are read-only views, so a frozen ``Config`` cannot be changed through them. A
reload builds a whole new ``Config`` and the service swaps it in one assignment.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from pydantic import SecretStr

from providers.base import ProviderSettings
from router.config.blocks import Breaker, Price, Retry, Stats, Timeouts
from router.config.schema import (
    AffinitySection,
    HedgeSection,
    ServerSection,
    StateSection,
    StorageSection,
)
from router.state.shared import Quota

# A key read from the environment; never shows itself in a repr or a log.
Secret = SecretStr


@dataclass(frozen=True, slots=True)
class ProviderSpec:
    name: str
    kind: str
    section: ProviderSettings  # the kind's settings, with its override blocks
    api_key: SecretStr | None
    missing_key_env: str | None  # set when api_key_env names an unset variable

    def identity(self) -> tuple[Any, ...]:
        """What must be equal for a reload to keep this provider's connection pool."""
        return (self.kind, self.section.model_dump_json(), self.api_key)


@dataclass(frozen=True, slots=True)
class PolicySpec:
    name: str
    strategy: str
    options: Mapping[str, Any] = field(default_factory=dict)  # the strategy's own
    hedge: HedgeSection | None = None
    affinity: AffinitySection | None = None


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
    admin_key: SecretStr | None = field(repr=False)
    # What is valid but probably not meant (hedging that can never fire): `router check`
    # prints these and a reload logs them; none stops the file from loading.
    warnings: tuple[str, ...] = ()
    keys: Mapping[str, KeySpec] = field(default_factory=dict)  # name -> a key of ``keys:``
    state: StateSection = field(default_factory=lambda: StateSection.model_validate({}))
    state_url: SecretStr | None = field(default=None, repr=False)  # may hold a password

    def secrets(self) -> list[str]:
        """Every configured secret, for redaction of anything the router emits."""
        out = list(self.client_keys)
        if self.admin_key:
            out.append(self.admin_key.get_secret_value())
        if self.state_url is not None:
            url = self.state_url.get_secret_value()
            out.append(url)
            password = urlsplit(url).password
            if password:
                out.append(password)
        out += [p.api_key.get_secret_value() for p in self.providers.values() if p.api_key]
        return [s for s in out if len(s) >= 4]


@dataclass(frozen=True, slots=True)
class KeySpec:
    """A client key of ``keys:``: the routes it may use (None: all) and its limits
    (``quota``; None for a key with none)."""

    name: str
    secret: SecretStr = field(repr=False)
    routes: frozenset[str] | None
    quota: Quota | None


class ConfigError(Exception):
    """Every problem found in a routes file, each with its YAML path."""

    def __init__(self, path: str, problems: Sequence[str]) -> None:
        self.path = path
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


def summary(config: Config) -> str:
    """What `router check` prints for a good file: its routes and each endpoint's state."""
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
