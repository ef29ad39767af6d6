"""``keys:`` and ``state:`` in routes.yaml: resolved from the environment, every mistake
reported with its place."""

from __future__ import annotations

import pytest

from router.config import ConfigError, loads

BASE = """
providers:
  up: {kind: simulated}
routes:
  r: {endpoints: [{provider: up, model: m}]}
  r2: {endpoints: [{provider: up, model: m}]}
"""


def test_keys_resolve_with_their_limits_routes_and_secret() -> None:
    config = loads(
        BASE
        + """
keys:
  team-a:
    key_env: TEAM_A
    routes: [r]
    limits: {rpm: 600, tpm: 200000, concurrent: 20}
    budget_usd: {day: 50, month: 1000}
  plain: {key_env: PLAIN}
  gone: {key_env: NOT_SET}
state: {url_env: REDIS, on_error: closed}
""",
        env={"TEAM_A": "sk-a-123", "PLAIN": "sk-p-123", "REDIS": "redis://:pw-123@h:6379/2"},
    )
    a = config.keys["team-a"]
    assert a.routes == frozenset({"r"}) and a.quota is not None
    assert (a.quota.rpm, a.quota.tpm, a.quota.concurrent) == (600, 200000, 20)
    assert (a.quota.day_usd, a.quota.month_usd) == (50, 1000)
    assert "sk-a-123" not in repr(a)
    assert config.keys["plain"].quota is None and config.keys["plain"].routes is None
    assert "gone" not in config.keys
    assert any("NOT_SET" in w for w in config.warnings)
    assert config.client_keys["sk-a-123"] == "team-a"  # authenticates like any key
    assert config.state.on_error == "closed"
    assert config.state_url is not None
    assert "pw-123" in config.secrets()  # the Redis password is redacted everywhere


@pytest.mark.parametrize(
    ("extra", "env", "problem"),
    [
        ("keys: {a: {key_env: A, routes: [nope]}}", {"A": "k1"}, "keys.a.routes[0]: unknown route"),
        ("keys: {a: {key_env: A, limits: {rpm: 0}}}", {"A": "k1"}, "keys.a.limits.rpm"),
        ("keys: {a: {key_env: A, limits: {rps: 1}}}", {"A": "k1"}, "keys.a.limits.rps"),
        ("keys: {a: {key_env: A}, b: {key_env: B}}", {"A": "k1", "B": "k1"}, "keys.b.key_env"),
        ("keys: {a: {key_env: A}}", {"A": "k1", "ROUTER_API_KEYS": "x:k1"}, "keys.a.key_env"),
        ("state: {url_env: R}", {"R": "http://h"}, "state.url_env"),
        ("state: {on_error: maybe}", {}, "state.on_error"),
    ],
)
def test_mistakes_are_errors_with_their_place(
    extra: str, env: dict[str, str], problem: str
) -> None:
    with pytest.raises(ConfigError) as exc:
        loads(BASE + extra + "\n", env=env)
    assert any(p.startswith(problem) for p in exc.value.problems), exc.value.problems
