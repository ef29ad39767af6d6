"""routes.yaml, read once into the frozen objects of ``router.config.specs``.

The file is read with a safe loader only (``yamlfile``) and validated by the models of
``schema``, which forbid unknown keys, so a typo is an error with its YAML path
(``routes.demo.endpoints[2].provider: unknown provider 'x'``), never a silent default.
Every part is checked on its own and checking goes on past a bad one, so that
``router check`` reports every problem of the file at once.

Partial ``timeouts``/``retry``/``breaker``/``stats`` blocks merge field by field down the
chain defaults -> provider -> route -> endpoint before the complete blocks are validated,
so every ``EndpointSpec`` carries fully resolved settings. The version is a hash of the
file's bytes: the same file is the same version.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml
from pydantic import BaseModel, SecretStr, ValidationError

import policies
from providers import KINDS
from providers.base import ProviderSettings
from router.config.blocks import BLOCKS
from router.config.keys import resolve_keys, resolve_state
from router.config.schema import (
    POLICY_SECTIONS,
    DefaultsSection,
    EndpointSection,
    FileSection,
    Overrides,
    PolicySection,
    ProviderSection,
    RouteHead,
    ServerSection,
    StorageSection,
)
from router.config.specs import (
    Config,
    ConfigError,
    EndpointSpec,
    PolicySpec,
    ProviderSpec,
    RouteSpec,
)
from router.config.yamlfile import read, yaml_path

Where = Sequence[str | int]
Layers = Sequence[tuple[Where, Mapping[str, Any] | None]]


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
    """A config from the bytes of a routes file (``env`` stands for ``os.environ``)."""
    env = os.environ if env is None else env
    raw_bytes = data.encode() if isinstance(data, str) else data
    try:
        raw, duplicates = read(raw_bytes)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "?"
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(path, [f"(yaml) {where}: {problem}"]) from exc
    if not isinstance(raw, dict):
        raise ConfigError(path, ["(top): the file must be a mapping with a 'routes' key"])
    builder = _Builder(raw, env, duplicates)
    server, storage, routes = builder.build()
    key_warnings: list[str] = []
    route_names = set(raw["routes"]) if isinstance(raw.get("routes"), dict) else set()
    keys = resolve_keys(raw.get("keys"), route_names, env, builder.problems, key_warnings)
    state, state_url = resolve_state(raw.get("state"), env, builder.problems)
    keys_env = server.api_keys_env if server is not None else None  # None: server is invalid
    client_keys = parse_client_keys(env.get(keys_env, "")) if keys_env else {}
    for spec in keys.values():
        value = spec.secret.get_secret_value()
        if value in client_keys:
            builder.problems.append(
                f"keys.{spec.name}.key_env: the same key as {client_keys[value]!r} of {keys_env}"
            )
        client_keys[value] = spec.name
    if builder.problems:
        raise ConfigError(path, list(dict.fromkeys(builder.problems)))

    admin_raw = (env.get(server.admin_key_env, "") if server.admin_key_env else "").strip()
    if env.get("ROUTER_DATABASE_URL"):
        storage = storage.model_copy(update={"url": env["ROUTER_DATABASE_URL"]})
    return Config(
        path=path,
        version=hashlib.sha256(raw_bytes).hexdigest()[:8],
        loaded_at=datetime.now(UTC),
        server=server,
        storage=storage,
        # Read-only views: a frozen dataclass holding plain dicts could still be mutated.
        providers=MappingProxyType(builder.providers),
        policies=MappingProxyType(builder.policies),
        routes=MappingProxyType(routes),
        client_keys=MappingProxyType(client_keys),
        admin_key=SecretStr(admin_raw) if admin_raw else None,
        warnings=tuple(_warnings(routes) + key_warnings),
        keys=MappingProxyType(keys),
        state=state,
        state_url=state_url,
    )


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


def _problems(exc: ValidationError, prefix: Where = (), tag: str | None = None) -> list[str]:
    """pydantic's errors as ``path: message`` lines.

    ``tag`` is the discriminator value of a union member: pydantic puts it first in the
    location, where the file has nothing.
    """
    problems = []
    for err in exc.errors():
        loc = list(err["loc"])
        if tag is not None and loc and loc[0] == tag:
            loc = loc[1:]
        loc = [part for part in loc if part != "[key]"]
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        problems.append(f"{yaml_path([*prefix, *loc]) or '(top)'}: {msg}")
    return problems


class _Builder:
    """One pass over a file's parts, noting every problem on the way."""

    def __init__(self, raw: dict[str, Any], env: Mapping[str, str], problems: list[str]) -> None:
        self.raw = raw
        self.env = env
        self.problems = problems
        self.providers: dict[str, ProviderSpec] = {}
        self.policies: dict[str, PolicySpec] = {}
        self.defaults = DefaultsSection()

    def build(self) -> tuple[ServerSection, StorageSection, dict[str, RouteSpec]]:
        raw = self.raw
        for key in raw:
            if key not in FileSection.model_fields:
                self.problems.append(f"{key}: unknown key")
        server = self._valid(ServerSection, raw.get("server"), ["server"])
        storage = self._valid(StorageSection, raw.get("storage"), ["storage"])
        self.defaults = (
            self._valid(DefaultsSection, raw.get("defaults"), ["defaults"]) or DefaultsSection()
        )
        self.providers_raw = self._mapping("providers")
        self.policies_raw = self._mapping("policies")
        self.routes_raw = self._mapping("routes")
        if not raw.get("routes"):
            self.problems.append("routes: at least one route is required")
        for name, body in self.providers_raw.items():
            self._provider(name, body)
        for name, body in self.policies_raw.items():
            self._policy(name, body)
        routes: dict[str, RouteSpec] = {}
        for name, body in self.routes_raw.items():
            route = self._route(name, body)
            if route is not None:
                routes[name] = route
        return server, storage, routes

    def _valid(self, model: type[BaseModel], data: Any, where: Where) -> Any:
        """``model`` validated from ``data`` (None reads as empty), or None if it is bad."""
        try:
            return model.model_validate({} if data is None else data)
        except ValidationError as exc:
            self.problems.extend(_problems(exc, where))
            return None

    def _mapping(self, key: str) -> dict[str, Any]:
        value = self.raw.get(key)
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.problems.append(f"{key}: must be a mapping, got {type(value).__name__}")
            return {}
        for name in value:
            if not isinstance(name, str):
                self.problems.append(f"{key}.{name}: names must be strings")
        return {k: v for k, v in value.items() if isinstance(k, str)}

    def _provider(self, name: str, body: Any) -> None:
        kind = body.get("kind") if isinstance(body, dict) else None
        if not isinstance(kind, str) or kind not in KINDS:
            known = ", ".join(KINDS)
            self.problems.append(f"providers.{name}.kind: must be one of {known}, got {kind!r}")
            return
        try:
            section: ProviderSettings = ProviderSection.validate_python(body)
        except ValidationError as exc:
            self.problems.extend(_problems(exc, ["providers", name], tag=kind))
            return
        key_env = section.key_env()
        key = self.env.get(key_env) if key_env else None
        self.providers[name] = ProviderSpec(
            name=name,
            kind=kind,
            section=section,
            api_key=SecretStr(key) if key else None,
            missing_key_env=key_env if key_env and not key else None,
        )

    def _policy(self, name: str, body: Any) -> None:
        where = ["policies", name]
        strategy = body.get("strategy") if isinstance(body, dict) else None
        if not isinstance(strategy, str) or strategy not in POLICY_SECTIONS:
            known = ", ".join(sorted(POLICY_SECTIONS))
            self.problems.append(
                f"{yaml_path([*where, 'strategy'])}: unknown strategy {strategy!r}; known: {known}"
            )
            return
        try:
            section = PolicySection.validate_python(body)
        except ValidationError as exc:
            for problem in _problems(exc, where, tag=strategy):
                if problem.endswith(": unknown key"):
                    problem += f" (not an option of strategy {strategy!r})"
                self.problems.append(problem)
            return
        options = section.options()
        try:
            policies.make(strategy, **options)  # the strategy's own checks of its options
        except policies.OptionError as exc:
            self.problems.append(f"{yaml_path([*where, exc.option])}: {exc}")
            return
        self.policies[name] = PolicySpec(
            name, strategy, MappingProxyType(options), section.hedge, section.affinity
        )

    def _route_policy(self, route: RouteHead, where: Where) -> PolicySpec:
        policy = self.policies.get(route.policy)
        if policy is not None:
            return policy
        if route.policy in policies.STRATEGIES:
            return PolicySpec(route.policy, route.policy)
        if route.policy not in self.policies_raw:  # else the policy is bad: reported above
            self.problems.append(
                f"{yaml_path([*where, 'policy'])}: unknown policy {route.policy!r}; "
                f"define it under 'policies' or name a strategy"
            )
        return PolicySpec("priority", "priority")

    def _route(self, name: str, body: Any) -> RouteSpec | None:
        where: list[str | int] = ["routes", name]
        if not isinstance(body, dict):
            self.problems.append(f"{yaml_path(where)}: must be a mapping with 'endpoints'")
            return None
        head = {k: v for k, v in body.items() if k != "endpoints"}
        route: RouteHead = self._valid(RouteHead, head, where) or RouteHead.model_validate({})
        raw_eps = body.get("endpoints")
        if not isinstance(raw_eps, list) or not raw_eps:
            self.problems.append(
                f"{yaml_path([*where, 'endpoints'])}: a non-empty list of endpoints is required"
            )
            raw_eps = []
        policy = self._route_policy(route, where)
        for i, fallback in enumerate(route.fallbacks):
            at = yaml_path([*where, "fallbacks", i])
            if fallback not in self.routes_raw:
                self.problems.append(f"{at}: unknown route {fallback!r}")
            elif fallback == name:
                self.problems.append(f"{at}: a route cannot fall back to itself")
        layers: list[tuple[Where, Any]] = [(["defaults"], self.defaults), (where, route)]
        endpoints: list[EndpointSpec] = []
        seen: set[str] = set()
        for i, ep in enumerate(raw_eps):
            spec = self._endpoint(name, route, [*where, "endpoints", i], ep, seen, len(endpoints))
            if spec is not None:
                endpoints.append(spec)
        return RouteSpec(
            name=name,
            policy=policy,
            fallbacks=tuple(route.fallbacks),
            endpoints=tuple(endpoints),
            timeouts=self._block("timeouts", layers),
            retry=self._block("retry", layers),
        )

    def _endpoint(
        self, route_name: str, route: RouteHead, where: Where, body: Any, seen: set[str], index: int
    ) -> EndpointSpec | None:
        ep: EndpointSection | None = self._valid(EndpointSection, body, where)
        if ep is None:
            return None
        pspec = self.providers.get(ep.provider)
        if pspec is None and ep.provider not in self.providers_raw:
            self.problems.append(
                f"{yaml_path([*where, 'provider'])}: unknown provider {ep.provider!r}"
            )
        eid = ep.id or ep.provider
        duplicate = eid in seen
        if duplicate:
            self.problems.append(
                f"{yaml_path([*where, 'id'])}: duplicate endpoint id {eid!r} in route"
            )
        seen.add(eid)
        owner = pspec.section if pspec is not None else None
        layers: list[tuple[Where, Any]] = [
            (["defaults"], self.defaults),
            (["providers", ep.provider], owner),
            (where[:2], route),
            (where, ep),
        ]
        blocks = {b: self._block(b, layers) for b in BLOCKS}  # checked even if unused
        if pspec is None or duplicate:
            return None  # reported above
        reason = None
        if ep.disabled:
            reason = "disabled in config"
        elif pspec.missing_key_env:
            reason = f"key variable {pspec.missing_key_env} is not set"
        return EndpointSpec(
            route=route_name,
            id=eid,
            index=index,
            provider=pspec,
            model=ep.model,
            weight=ep.weight,
            price=ep.price,
            max_concurrency=ep.max_concurrency,
            disabled_reason=reason,
            **blocks,
        )

    def _block(self, name: str, layers: Sequence[tuple[Where, Any]]) -> Any:
        """Merge one block down its chain and validate it, blaming the layer that broke it.

        Every layer is checked on its own (each field has a default, so a partial block is
        a valid block), so a bad layer is reported and skipped while the others still merge.
        """
        model = BLOCKS[name]
        merged: dict[str, Any] = {}
        for where, owner in layers:
            layer = getattr(owner, name, None) if isinstance(owner, Overrides) else None
            if not layer:
                continue
            try:
                model.model_validate(layer)
            except ValidationError as exc:
                self.problems.extend(_problems(exc, [*where, name]))
                continue
            merged.update(layer)
        return model.model_validate(merged)  # each layer passed, so their merge does too


def _warnings(routes: Mapping[str, RouteSpec]) -> list[str]:
    """What loads but will not do what it says."""
    out = []
    for route in routes.values():
        hedge = route.policy.hedge
        if hedge is not None and route.retry.attempts == 1:
            out.append(
                f"routes.{route.name}: policy {route.policy.name!r} hedges, but retry.attempts "
                "is 1 and hedges are attempts: no hedge will be sent (set attempts >= 2)"
            )
    return out
