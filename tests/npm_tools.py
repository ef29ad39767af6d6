"""Command-line agents from npm (Claude Code, Codex) for the end-to-end tests.

Each is installed once into a cache directory (``ROUTER_TEST_CACHE``, else
``~/.cache/llm-router-tests``) with npm, and found there by the path of its native
binary: both ship it in an npm optional dependency of their platform
(``@anthropic-ai/claude-code-<platform>``, ``@openai/codex-<platform>``), so nothing is
downloaded from outside the registry, and npm 11 skipping a postinstall does not matter.
A test that needs one is skipped, with the reason, when npm or the install fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support import RouterProcess, routes_yaml

CACHE = Path(os.environ.get("ROUTER_TEST_CACHE", Path.home() / ".cache" / "llm-router-tests"))
INSTALL_S = 300


def npm_binary(package: str, directory: str, pattern: str) -> Path:
    """The binary matching ``pattern`` (a glob under ``node_modules``) of ``package``,
    installed into ``CACHE / directory`` if it is not there yet; skips the test if it
    cannot be."""
    prefix = CACHE / directory
    binary = _find(prefix, pattern)
    if binary is not None:
        return binary
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip(f"npm is not installed: cannot install {package}")
    prefix.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(
            [npm, "install", "--prefix", str(prefix), "--no-audit", "--no-fund", package],
            capture_output=True,
            timeout=INSTALL_S,
        )
    except subprocess.TimeoutExpired:
        pytest.skip(f"npm install {package} took over {INSTALL_S} s")
    binary = _find(prefix, pattern)
    if done.returncode != 0 or binary is None:
        tail = done.stderr.decode(errors="replace")[-300:]
        pytest.skip(f"npm install {package} failed (exit {done.returncode}): {tail}")
    return binary


def _find(prefix: Path, pattern: str) -> Path | None:
    found = sorted(p for p in prefix.glob(f"node_modules/{pattern}") if os.access(p, os.X_OK))
    return found[0] if found else None


@contextmanager
def agent_router(
    tmp_path_factory: pytest.TempPathFactory, name: str, model: str
) -> Iterator[RouterProcess]:
    """The router the agents talk to: route ``agent`` on a simulated endpoint serving
    ``model`` in the agent's own API, ``agent-chat`` on one that speaks only chat (so
    the router translates)."""
    providers = """
  sim: {kind: simulated, ttft_ms: 1, tokens_per_s: 5000}
  sim-chat: {kind: simulated, ttft_ms: 1, tokens_per_s: 5000, apis: [chat]}
"""
    routes = f"""
  agent:
    endpoints: [{{provider: sim, model: {model}}}]
  agent-chat:
    endpoints: [{{provider: sim-chat, model: chat-sim}}]
"""
    tmp = Path(tmp_path_factory.mktemp(name))
    (tmp / "routes.yaml").write_text(routes_yaml(routes, providers))
    with RouterProcess(tmp / "routes.yaml", tmp) as proc:
        yield proc
