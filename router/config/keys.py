"""``keys:`` (client keys with limits and budgets) and ``state:`` (where they are kept),
resolved against the environment (see docs/teams.md).

```yaml
keys:
  team-a:
    key_env: TEAM_A_KEY              # the key itself lives in the environment
    routes: [claude-sonnet-4-6, demo] # default: every route
    limits: {rpm: 600, tpm: 200000, concurrent: 20}
    budget_usd: {day: 50, month: 1000}
state:
  url_env: ROUTER_REDIS_URL          # unset = in-process state (one node)
  on_error: open                     # Redis unreachable: open = count locally; closed = 503
```

A key whose variable is unset is left out with a warning, as an endpoint without its key
is disabled: the file stays valid. Keys from ``server.api_keys_env`` keep working beside
these, without limits; the same key twice (here, or here and there) is an error, since
its name in the request log would be ambiguous.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import SecretStr, ValidationError

from router.config.schema import KeySection, StateSection
from router.config.specs import KeySpec
from router.state.shared import Quota

_URL_SCHEMES = ("redis://", "rediss://", "unix://")


def _problems(exc: ValidationError, where: str) -> list[str]:
    out = []
    for err in exc.errors(include_url=False):
        loc = where + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"])
        out.append(f"{loc}: {err['msg']}")
    return out


def resolve_keys(
    raw: Any,
    route_names: set[str],
    env: Mapping[str, str],
    problems: list[str],
    warnings: list[str],
) -> dict[str, KeySpec]:
    """``keys:`` -> {name: KeySpec}; problems and warnings appended with their YAML path."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        problems.append("keys: must be a mapping of key names")
        return {}
    out: dict[str, KeySpec] = {}
    seen: dict[str, str] = {}  # key -> name
    for name, body in raw.items():
        where = f"keys.{name}"
        try:
            section = KeySection.model_validate(body)
        except ValidationError as exc:
            problems.extend(_problems(exc, where))
            continue
        for i, route in enumerate(section.routes or ()):
            if route not in route_names:
                problems.append(f"{where}.routes[{i}]: unknown route {route!r}")
        value = env.get(section.key_env, "").strip()
        if not value:
            warnings.append(f"{where}: key variable {section.key_env} is not set; key left out")
            continue
        if value in seen:
            problems.append(f"{where}.key_env: the same key as keys.{seen[value]}")
            continue
        seen[value] = name
        limits, budget = section.limits, section.budget_usd
        quota = Quota(
            name,
            rpm=limits.rpm,
            tpm=limits.tpm,
            concurrent=limits.concurrent,
            day_usd=budget.day,
            month_usd=budget.month,
        )
        limited = quota.budgeted or any(
            v is not None for v in (quota.rpm, quota.tpm, quota.concurrent)
        )
        out[name] = KeySpec(
            name=name,
            secret=SecretStr(value),
            routes=frozenset(section.routes) if section.routes is not None else None,
            quota=quota if limited else None,
        )
    return out


def resolve_state(
    raw: Any, env: Mapping[str, str], problems: list[str]
) -> tuple[StateSection, SecretStr | None]:
    """``state:`` and the Redis URL its ``url_env`` names (None: in-process state)."""
    try:
        section = StateSection.model_validate(raw or {})
    except ValidationError as exc:
        problems.extend(_problems(exc, "state"))
        return StateSection.model_validate({}), None
    url = env.get(section.url_env, "").strip() if section.url_env else ""
    if url and not url.startswith(_URL_SCHEMES):
        problems.append(
            f"state.url_env: {section.url_env} must hold a redis://, rediss:// or unix:// URL"
        )
        return section, None
    return section, SecretStr(url) if url else None
