"""routes.yaml parsed into frozen, validated objects (``router.config.loads``, in process)."""

from __future__ import annotations

import dataclasses
import hashlib

import pydantic
import pytest

from router.config import ConfigError, Secret, loads, parse_client_keys
from tests.support import ROOT

LAYERED = """
storage: {url: null}
defaults:
  timeouts: {connect_s: 2, ttft_s: 30}
  retry: {attempts: 3, backoff_s: 0.05}
  breaker: {cooldown_s: 15}
  stats: {halflife_s: 20}
providers:
  p: {kind: simulated, retry: {attempts: 4}, timeouts: {idle_s: 9}}
  q: {kind: simulated}
routes:
  r:
    retry: {backoff_s: 0.5}
    timeouts: {total_s: 100}
    endpoints:
      - {provider: p, model: m, retry: {on: [500, timeout]}, breaker: {min_requests: 3}}
      - {provider: q, model: m}
      - {provider: p, model: m2, id: p-two, timeouts: {ttft_s: 7}, stats: {halflife_s: 5}}
"""


def problems_of(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        loads(text, env=env or {})
    return info.value.problems


def test_partial_blocks_merge_field_by_field_down_the_chain() -> None:
    config = loads(LAYERED, env={})
    route = config.routes["r"]
    first, second, third = route.endpoints

    # endpoint <- route <- provider <- defaults, one field at a time
    assert first.retry.attempts == 4  # provider
    assert first.retry.backoff_s == 0.5  # route
    assert first.retry.on == (500, "timeout")  # endpoint; the `on:` key reads as a string
    assert first.retry.backoff_max_s == 2.0  # built-in default
    assert first.timeouts.connect_s == 2  # defaults
    assert first.timeouts.ttft_s == 30  # defaults
    assert first.timeouts.idle_s == 9  # provider
    assert first.timeouts.total_s == 100  # route
    assert first.breaker.cooldown_s == 15  # defaults
    assert first.breaker.min_requests == 3  # endpoint
    assert first.breaker.consecutive_failures == 5  # built-in default
    assert first.stats.halflife_s == 20

    # another provider does not inherit p's overrides
    assert second.retry.attempts == 3
    assert second.timeouts.idle_s == 60
    assert second.retry.backoff_s == 0.5
    assert second.retry.on == (429, 500, 502, 503, 504, "timeout", "connect")

    assert third.timeouts.ttft_s == 7
    assert third.timeouts.idle_s == 9
    assert third.stats.halflife_s == 5

    # the route's own blocks: defaults <- route
    assert route.retry.attempts == 3 and route.retry.backoff_s == 0.5
    assert route.timeouts.total_s == 100 and route.timeouts.connect_s == 2


def test_endpoint_ids_default_to_the_provider_and_keep_their_order() -> None:
    config = loads(LAYERED, env={})
    eps = config.routes["r"].endpoints
    assert [e.id for e in eps] == ["p", "q", "p-two"]
    assert [e.index for e in eps] == [0, 1, 2]
    assert eps[2].model == "m2"
    assert eps[0].provider.name == "p" and eps[0].provider.kind == "simulated"


def test_the_policy_defaults_to_priority_and_named_policies_resolve() -> None:
    text = """
storage: {url: null}
providers: {p: {kind: simulated}}
policies:
  quick: {strategy: score, weights: {ttft: 2.0}, pick: p2c, hedge: {after: p90}}
routes:
  plain: {endpoints: [{provider: p, model: m}]}
  named: {policy: quick, endpoints: [{provider: p, model: m}]}
  bare: {policy: cheapest, endpoints: [{provider: p, model: m}]}
"""
    config = loads(text, env={})
    assert config.routes["plain"].policy.strategy == "priority"
    named = config.routes["named"].policy
    assert (named.name, named.strategy) == ("quick", "score")
    assert dict(named.options) == {"weights": {"ttft": 2.0}, "pick": "p2c"}
    assert named.hedge is not None and named.hedge.after == "p90" and named.hedge.after_ms == 1000.0
    assert config.routes["bare"].policy.strategy == "cheapest"


def test_an_unset_key_variable_disables_the_endpoint_and_names_the_variable() -> None:
    text = """
storage: {url: null}
providers:
  up: {kind: openai, base_url: "http://127.0.0.1:9/v1", api_key_env: UP_KEY_FOR_TEST}
  sim: {kind: simulated}
routes:
  r:
    endpoints:
      - {provider: up, model: m}
      - {provider: sim, model: m}
      - {provider: sim, model: m, id: off, disabled: true}
"""
    config = loads(text, env={})
    up, sim, off = config.routes["r"].endpoints
    assert up.disabled_reason is not None and "UP_KEY_FOR_TEST" in up.disabled_reason
    assert up.provider.api_key is None
    assert sim.disabled_reason is None
    assert off.disabled_reason == "disabled in config"

    config = loads(text, env={"UP_KEY_FOR_TEST": "sk-up-123456"})
    up = config.routes["r"].endpoints[0]
    assert up.disabled_reason is None
    assert up.provider.api_key == Secret("sk-up-123456")
    assert "sk-up-123456" not in repr(up.provider)
    assert "sk-up-123456" in config.secrets()


def test_config_objects_are_frozen() -> None:
    config = loads(LAYERED, env={})
    ep = config.routes["r"].endpoints[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.version = "x"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        ep.model = "other"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.routes["r"].policy.strategy = "weighted"  # type: ignore[misc]
    with pytest.raises(pydantic.ValidationError):
        ep.retry.attempts = 10  # type: ignore[misc]
    with pytest.raises(pydantic.ValidationError):
        config.server.port = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.routes["new"] = config.routes["r"]  # type: ignore[index]
    with pytest.raises(TypeError):
        config.providers["new"] = ep.provider  # type: ignore[index]
    assert isinstance(config.routes["r"].endpoints, tuple)


def test_unknown_keys_are_errors_at_every_level_with_their_path() -> None:
    text = """
storage: {url: null, typo1: 1}
sever: {port: 1}
defaults: {retry: {attempt: 2}}
providers:
  p: {kind: simulated, ttft: 5}
policies:
  fast: {strategy: lowest_ttft, weight: {ttft: 1}}
routes:
  r:
    polcy: priority
    endpoints:
      - {provider: p, model: m, timeouts: {ttft: 3}}
      - {provider: p, model: m, id: b, modle: x}
"""
    problems = problems_of(text)
    for expected in (
        "storage.typo1: unknown key",
        "sever: unknown key",
        "defaults.retry.attempt: unknown key",
        "providers.p.ttft: unknown key",
        "policies.fast.weight: unknown key",
        "routes.r.polcy: unknown key",
        "routes.r.endpoints[0].timeouts.ttft: unknown key",
        "routes.r.endpoints[1].modle: unknown key",
    ):
        assert any(p.startswith(expected) for p in problems), (expected, problems)


def test_every_semantic_error_is_reported_with_its_path() -> None:
    text = """
storage: {url: null}
providers:
  p: {kind: simulated}
  k: {kind: nonsense}
routes:
  demo:
    policy: nope
    fallbacks: [missing, demo]
    endpoints:
      - {provider: p, model: m}
      - {provider: p, model: m2}
      - {provider: x, model: m}
      - {provider: p, model: m, id: w, weight: heavy}
      - {provider: p, model: m, id: v, retry: {on: [600, sometimes]}}
"""
    problems = problems_of(text)
    for expected in (
        "providers.k.kind: must be one of",
        "routes.demo.policy: unknown policy 'nope'",
        "routes.demo.fallbacks[0]: unknown route 'missing'",
        "routes.demo.fallbacks[1]: a route cannot fall back to itself",
        "routes.demo.endpoints[1].id: duplicate endpoint id 'p'",
        "routes.demo.endpoints[2].provider: unknown provider 'x'",
        "routes.demo.endpoints[3].weight:",
        "routes.demo.endpoints[4].retry.on",
    ):
        assert any(p.startswith(expected) for p in problems), (expected, problems)
    assert len(problems) == len(set(problems))


def test_bad_types_and_bounds_are_errors() -> None:
    text = """
storage: {url: null}
server: {port: "eighty", max_body_mb: -1}
defaults: {timeouts: {ttft_s: 0}, retry: {attempts: many}}
providers:
  p: {kind: simulated, error_rate: 2}
  o: {kind: openai, base_url: "ftp://x"}
policies:
  s: {strategy: score, weights: {ttft: -1}}
  t: {strategy: warp}
  u: {strategy: round_robin, pick: p2c}
routes:
  r: {endpoints: [{provider: p, model: m, max_concurrency: 0}]}
  e: {endpoints: []}
"""
    problems = problems_of(text)
    for expected in (
        "server.port:",
        "server.max_body_mb:",
        "defaults.timeouts.ttft_s:",
        "defaults.retry.attempts:",
        "providers.p.error_rate:",
        "providers.o.base_url: must start with http:// or https://",
        "policies.s.weights: weight of ttft must be >= 0",
        "policies.t.strategy: unknown strategy 'warp'",
        "policies.u.pick: unknown key",
        "routes.r.endpoints[0].max_concurrency:",
        "routes.e.endpoints:",
    ):
        assert any(p.startswith(expected) for p in problems), (expected, problems)


def test_a_file_with_no_routes_or_not_a_mapping_is_an_error() -> None:
    assert any(p.startswith("routes:") for p in problems_of("storage: {url: null}\n"))
    assert problems_of("- a\n- b\n") == ["(top): the file must be a mapping with a 'routes' key"]
    [problem] = problems_of("routes: {a: [\n")
    assert problem.startswith("(yaml) line")


def test_yaml_1_1_booleans_do_not_eat_the_on_key() -> None:
    text = """
storage: {url: null}
providers: {p: {kind: simulated}}
routes:
  r:
    retry:
      on: [429, connect]
    endpoints: [{provider: p, model: m}]
"""
    config = loads(text, env={})
    assert config.routes["r"].endpoints[0].retry.on == (429, "connect")
    assert config.routes["r"].endpoints[0].retry_on == frozenset({429, "connect"})


def test_client_keys_named_and_bare() -> None:
    keys = parse_client_keys("team-a:sk-aaa, sk-bare ,,")
    assert keys == {
        "sk-aaa": "team-a",
        "sk-bare": "key-" + hashlib.sha256(b"sk-bare").hexdigest()[:8],
    }
    text = (
        "storage: {url: null}\n"
        "providers: {p: {kind: simulated}}\n"
        "routes: {r: {endpoints: [{provider: p, model: m}]}}\n"
    )
    config = loads(text, env={"ROUTER_API_KEYS": "team-a:sk-aaa", "ROUTER_ADMIN_KEY": "adm-1234"})
    assert dict(config.client_keys) == {"sk-aaa": "team-a"}
    assert config.admin_key == Secret("adm-1234")
    assert set(config.secrets()) == {"sk-aaa", "adm-1234"}
    assert "sk-aaa" not in repr(config) and "adm-1234" not in repr(config)
    assert loads(text, env={}).client_keys == {}


def test_database_url_from_the_environment_overrides_storage() -> None:
    text = (
        "providers: {p: {kind: simulated}}\nroutes: {r: {endpoints: [{provider: p, model: m}]}}\n"
    )
    assert loads(text, env={}).storage.url == "sqlite+aiosqlite:///router.db"
    assert loads(text, env={"ROUTER_DATABASE_URL": "sqlite+aiosqlite:///x.db"}).storage.url == (
        "sqlite+aiosqlite:///x.db"
    )


def test_version_follows_the_content() -> None:
    a = loads(LAYERED, env={})
    b = loads(LAYERED, env={})
    c = loads(LAYERED + "\n# a comment\n", env={})
    assert a.version == b.version
    assert a.version != c.version


def test_the_shipped_routes_file_loads_without_keys() -> None:
    config = loads((ROOT / "routes.yaml").read_bytes(), env={})
    assert "demo" in config.routes
    assert all(e.disabled_reason is None for e in config.routes["demo"].endpoints)
    sonnet = config.routes["claude-sonnet-4-6"]
    assert sonnet.fallbacks == ("claude-haiku-4-5",)
    assert any("TOKENLX_API_KEY" in (e.disabled_reason or "") for e in sonnet.endpoints)


def test_a_key_given_twice_is_an_error_with_its_place() -> None:
    text = """storage: {url: null}
providers: {p: {kind: simulated}}
routes:
  demo:
    endpoints: [{provider: p, model: m}]
  other:
    endpoints: [{provider: p, model: m, model: m2}]
  demo:
    endpoints: [{provider: p, model: m3}]
"""
    problems = problems_of(text)
    assert "routes.demo: duplicate key (line 8; first at line 4)" in problems
    assert "routes.other.endpoints[0].model: duplicate key (line 7; first at line 7)" in problems


def test_merge_keys_may_override_what_they_merge() -> None:
    text = """storage: {url: null}
providers:
  base: &base {kind: simulated, ttft_ms: 5}
  slow: {<<: *base, ttft_ms: 500}
routes: {r: {endpoints: [{provider: slow, model: m}]}}
"""
    config = loads(text, env={})
    assert config.providers["slow"].section.ttft_ms == 500  # type: ignore[attr-defined]


def test_every_error_of_every_section_is_reported_in_one_pass() -> None:
    text = """storage: {url: null, batch_size: 0}
server: {port: -1}
defaults: {retry: {attempts: 0}}
providers:
  p: {kind: simulated, error_rate: 3}
  q: {kind: simulated}
  q: {kind: simulated}
policies:
  s: {strategy: score, pick: sometimes}
routes:
  r:
    policy: s
    endpoints:
      - {provider: p, model: m}
      - {provider: q, model: m, weight: 0}
"""
    problems = problems_of(text)
    for expected in (
        "providers.q: duplicate key",
        "storage.batch_size:",
        "server.port:",
        "defaults.retry.attempts:",
        "providers.p.error_rate:",
        "policies.s.pick:",
        "routes.r.endpoints[1].weight:",
    ):
        assert any(p.startswith(expected) for p in problems), (expected, problems)


def test_credentials_in_a_base_url_are_refused_without_being_echoed() -> None:
    for kind in ("openai", "litellm"):
        text = f"""storage: {{url: null}}
providers:
  up: {{kind: {kind}, base_url: "https://alice:hunter2-secret@api.example.com/v1"}}
routes: {{r: {{endpoints: [{{provider: up, model: m}}]}}}}
"""
        [problem] = problems_of(text)
        assert problem.startswith("providers.up.base_url: must not hold credentials")
        assert "api_key_env" in problem
        assert "hunter2" not in problem and "alice" not in problem


def test_hedging_that_cannot_fire_is_a_warning_not_an_error() -> None:
    text = """storage: {url: null}
providers: {p: {kind: simulated}, q: {kind: simulated}}
policies:
  hedged: {strategy: lowest_ttft, hedge: {after_ms: 200}}
routes:
  single:
    policy: hedged
    retry: {attempts: 1}
    endpoints: [{provider: p, model: m}, {provider: q, model: m}]
  fine:
    policy: hedged
    endpoints: [{provider: p, model: m}, {provider: q, model: m}]
"""
    config = loads(text, env={})
    [warning] = config.warnings
    assert warning.startswith("routes.single: policy 'hedged' hedges, but retry.attempts is 1")
    assert loads(LAYERED, env={}).warnings == ()


def test_router_check_prints_the_warning_and_exits_0(
    tmp_path: pytest.TempPathFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    from router.cli import main

    path = tmp_path / "routes.yaml"  # type: ignore[operator]
    path.write_text(
        "storage: {url: null}\nproviders: {p: {kind: simulated}, q: {kind: simulated}}\n"
        "policies: {h: {strategy: priority, hedge: {after_ms: 50}}}\n"
        "routes: {r: {policy: h, retry: {attempts: 1}, endpoints: "
        "[{provider: p, model: m}, {provider: q, model: m}]}}\n"
    )
    assert main(["check", str(path)]) == 0
    out = capsys.readouterr()
    assert "ok (version" in out.out
    assert "warning: routes.r: policy 'h' hedges, but retry.attempts is 1" in out.err


def test_a_strategy_option_another_strategy_lacks_is_named() -> None:
    text = """storage: {url: null}
providers: {p: {kind: simulated}}
policies: {u: {strategy: round_robin, weights: {ttft: 1}}}
routes: {r: {policy: u, endpoints: [{provider: p, model: m}]}}
"""
    assert problems_of(text) == [
        "policies.u.weights: unknown key (not an option of strategy 'round_robin')"
    ]


def test_the_apis_a_host_speaks_default_by_kind_and_can_be_set() -> None:
    config = loads(
        """
providers:
  oa: {kind: openai, base_url: "http://127.0.0.1:1/v1"}
  an: {kind: anthropic, api_key_env: AK, headers: {anthropic-version: "2023-06-01"}}
  sim: {kind: simulated}
  gw: {kind: openai, base_url: "http://127.0.0.1:1/v1", apis: [chat, messages]}
routes:
  r:
    endpoints: [{provider: oa, model: m}, {provider: an, model: m}, {provider: sim, model: m},
                {provider: gw, model: m}]
""",
        env={"AK": "sk-ant"},
    )
    speaks = {name: p.section.speaks() for name, p in config.providers.items()}
    assert speaks["oa"] == {"chat", "completions", "embeddings", "responses"}
    assert speaks["an"] == {"messages"}
    assert speaks["sim"] == {"chat", "completions", "embeddings", "responses", "messages"}
    assert speaks["gw"] == {"chat", "messages"}
    assert config.providers["an"].section.base_url == "https://api.anthropic.com/v1"


def test_an_unknown_api_is_an_error_with_its_path() -> None:
    found = problems_of(
        "providers:\n  p: {kind: anthropic, apis: [messages, telepathy]}\n"
        "routes:\n  r: {endpoints: [{provider: p, model: m}]}\n"
    )
    assert any(p.startswith("providers.p.apis") and "messages" in p for p in found), found


def test_the_configuration_reference_is_current() -> None:
    """docs/configuration.md's tables are made from the schema; a field added, renamed or
    re-bounded must show there (run ``python -m router.config.reference --write``)."""
    from router.config import reference

    assert reference.current(reference.DOC.read_text()) == reference.render(), (
        "docs/configuration.md is stale: run `python -m router.config.reference --write`"
    )


def test_the_docs_link_only_to_files_in_the_repository() -> None:
    import re

    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    for page in pages:
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", page.read_text()):
            if target.startswith(("http://", "https://")):
                continue
            resolved = (page.parent / target).resolve()
            assert resolved.is_relative_to(ROOT), (page.name, target)
            assert resolved.exists(), (page.name, target)
        assert "../shared" not in page.read_text(), page.name
