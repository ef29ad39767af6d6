"""``router check`` as a user runs it: ``python -m router check PATH``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support import ROOT

VALID = """
storage: {url: null}
providers:
  fast: {kind: simulated, ttft_ms: 10}
  paid: {kind: openai, base_url: "https://api.example.com/v1", api_key_env: CLI_TEST_KEY}
policies:
  quick: {strategy: score, pick: p2c}
routes:
  demo:
    policy: quick
    retry: {on: [500, timeout]}
    endpoints:
      - {provider: fast, model: demo-1}
      - {provider: paid, model: big}
  backup: {endpoints: [{provider: fast, model: demo-2}]}
"""

INVALID = """
storage: {url: null}
server: {port: 8080, colour: blue}
providers:
  p: {kind: simulated}
  w: {kind: warp}
policies:
  bad: {strategy: fastest}
routes:
  demo:
    policy: nope
    fallbacks: [elsewhere]
    retry: {on: [500, never]}
    endpoints:
      - {provider: p, model: m}
      - {provider: p, model: m, timeouts: {ttft_s: soon}}
      - {provider: x, model: m}
      - {provider: p, model: m, id: extra, typo: 1}
"""


def check(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("ROUTER_", "CLI_TEST_"))}
    return subprocess.run(
        [sys.executable, "-m", "router", "check", *args],
        capture_output=True,
        text=True,
        env={**base, "PYTHONPATH": str(ROOT), **(env or {})},
        cwd=cwd or ROOT,
        timeout=60,
    )


def test_a_valid_file_prints_a_summary_and_exits_0(tmp_path: Path) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text(VALID)
    result = check(str(path))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "2 routes, 3 endpoints, 2 providers, 1 policies" in out
    assert "route demo: policy quick (score)" in out
    assert "route backup" in out
    # an unset key disables its endpoint; it is reported, not an error
    assert "key variable CLI_TEST_KEY is not set" in out
    assert "1/2 endpoints usable" in out

    with_key = check(str(path), env={"CLI_TEST_KEY": "sk-cli-secret-1"})
    assert with_key.returncode == 0
    assert "2/2 endpoints usable" in with_key.stdout
    assert "sk-cli-secret-1" not in with_key.stdout + with_key.stderr


def test_an_invalid_file_prints_every_error_with_its_path_and_exits_1(tmp_path: Path) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text(INVALID)
    result = check(str(path))
    assert result.returncode == 1
    text = result.stdout + result.stderr
    for expected in (
        "server.colour: unknown key",
        "providers.w.kind: must be one of",
        "policies.bad.strategy: unknown strategy 'fastest'",
        "routes.demo.policy: unknown policy 'nope'",
        "routes.demo.fallbacks[0]: unknown route 'elsewhere'",
        "routes.demo.retry.on",
        "routes.demo.endpoints[1].id: duplicate endpoint id 'p' in route",
        "routes.demo.endpoints[1].timeouts.ttft_s:",
        "routes.demo.endpoints[2].provider: unknown provider 'x'",
        "routes.demo.endpoints[3].typo: unknown key",
    ):
        assert expected in text, (expected, text)
    assert "10 error(s)" in text


def test_check_reads_routes_config_from_the_environment_then_cwd(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("routes: {r: {endpoints: [{provider: nowhere, model: m}]}}\n")
    result = check(env={"ROUTER_CONFIG": str(bad)})
    assert result.returncode == 1
    assert "routes.r.endpoints[0].provider: unknown provider 'nowhere'" in result.stderr
    (tmp_path / "routes.yaml").write_text(VALID)
    result = check(cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "route demo" in result.stdout


def test_unreadable_and_unparseable_files_exit_1(tmp_path: Path) -> None:
    missing = check(str(tmp_path / "nope.yaml"))
    assert missing.returncode == 1
    assert "cannot read" in missing.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text("routes:\n  demo: {endpoints: [\n")
    result = check(str(broken))
    assert result.returncode == 1
    assert "(yaml) line" in result.stderr


def test_the_shipped_routes_file_passes() -> None:
    result = check(str(ROOT / "routes.yaml"))
    assert result.returncode == 0, result.stderr
    assert "route demo" in result.stdout
    assert "route claude-sonnet-4-6" in result.stdout
    assert "TOKENLX_API_KEY" in result.stdout


def test_version_prints_the_package_version() -> None:
    from importlib.metadata import version

    out = subprocess.run(
        [sys.executable, "-m", "router", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert out.stdout.strip() == f"router {version('llm-router')}"
