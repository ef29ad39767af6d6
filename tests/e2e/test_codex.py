"""Codex CLI, the real one, through the router (``codex exec``), offline.

Codex is installed from npm into a cache directory the first time (``tests.npm_tools``);
the test is skipped, with the reason, when that cannot be done. A throwaway
``CODEX_HOME`` holds a ``config.toml`` whose model provider is the router
(``wire_api = "responses"``, ``base_url`` its ``/v1``, the key from an env variable);
simulated endpoints answer, natively in the Responses API or through chat (the router
translating). The simulated model calls the tool it is offered (Codex's shell, with a
made-up command that exists nowhere), so one run is a whole tool loop: Codex runs the
command in its read-only sandbox in an empty directory and sends its output back. No
update checks, no analytics, no retries; each run is bounded in time.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.npm_tools import agent_router, npm_binary
from tests.support import RouterProcess, poll

RUN_S = 120


@pytest.fixture(scope="module")
def codex() -> Path:
    # The version this was written against: --strict-config refuses a key a later one renames.
    return npm_binary("@openai/codex@0.171.0", "codex", "@openai/codex-*/vendor/*/bin/codex")


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterProcess]:
    with agent_router(tmp_path_factory, "codex", "gpt-sim") as proc:
        yield proc


def config_toml(router: RouterProcess, model: str) -> str:
    return f"""\
model = "{model}"
model_provider = "router"
check_for_update_on_startup = false

[analytics]
enabled = false

[model_providers.router]
name = "the router"
base_url = "{router.base_url}"
env_key = "ROUTER_CLIENT_KEY"
wire_api = "responses"
request_max_retries = 0
stream_max_retries = 0
"""


def run_codex(codex: Path, router: RouterProcess, model: str, tmp: Path) -> list[dict[str, Any]]:
    """``codex exec --json``'s events."""
    home, work = tmp / "codex-home", tmp / "work"
    home.mkdir()
    work.mkdir()
    (home / "config.toml").write_text(config_toml(router, model))
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "CODEX_HOME": str(home),
        "ROUTER_CLIENT_KEY": "dummy",
    }
    args = [str(codex), "exec", "--json", "--strict-config", "--skip-git-repo-check"]
    args += ["--sandbox", "read-only", "Say hello."]
    done = subprocess.run(
        args, cwd=work, env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=RUN_S
    )
    out = done.stdout.decode(errors="replace")
    assert done.returncode == 0, (
        f"codex exited {done.returncode}: {out[-800:]} {done.stderr[-500:]!r}"
    )
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


@pytest.mark.parametrize("model", ["agent", "agent-chat"], ids=["native", "translated"])
def test_codex_exec_answers_through_the_router(
    codex: Path, router: RouterProcess, model: str, tmp_path: Path
) -> None:
    events = run_codex(codex, router, model, tmp_path)
    kinds = [e["type"] for e in events]
    assert "turn.failed" not in kinds and "error" not in kinds, events
    items = [e["item"] for e in events if e["type"] == "item.completed"]
    answers = [i["text"] for i in items if i["type"] == "agent_message"]
    assert answers and answers[-1].strip()
    # The model's tool call reached Codex as a shell command, which it ran; its output
    # went back in a second request, whose answer is the text above.
    assert any(i["type"] == "command_execution" for i in items)
    usage = next(e["usage"] for e in events if e["type"] == "turn.completed")
    assert usage["input_tokens"] > 0 and usage["output_tokens"] > 0

    def served() -> list[dict[str, Any]]:
        return [e for e in router.logs() if e.get("event") == "request" and e["route"] == model]

    assert poll(lambda: len(served()) >= 2)
    assert all(e["operation"] == "responses" and e["status"] == 200 for e in served())
    assert all(e["stream"] and e["completion_tokens"] > 0 for e in served())
