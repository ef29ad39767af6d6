"""Claude Code, the real CLI, through the router in print mode (``claude -p``), offline.

Claude Code is installed from npm into a cache directory the first time
(``tests.npm_tools``); the test is skipped, with the reason, when that cannot be done.
``ANTHROPIC_BASE_URL`` points at the router; simulated endpoints answer, natively in the
Messages API or through chat (the router translating). The CLI is kept offline: no
telemetry, no update checks, no error reports, a throwaway home, and its one tool
(``Read``) confined to an empty working directory. Each run is bounded in time.
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
def claude() -> Path:
    return npm_binary(
        "@anthropic-ai/claude-code", "claude-code", "@anthropic-ai/claude-code-*/claude"
    )


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterProcess]:
    with agent_router(tmp_path_factory, "claude-code", "claude-sim") as proc:
        yield proc


def run_claude(claude: Path, router: RouterProcess, model: str, home: Path) -> dict[str, Any]:
    work = home / "work"
    work.mkdir(parents=True)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "ANTHROPIC_BASE_URL": router.url,
        "ANTHROPIC_API_KEY": "dummy",
        "ANTHROPIC_MODEL": model,
        "ANTHROPIC_SMALL_FAST_MODEL": model,
        "DISABLE_TELEMETRY": "1",
        "DISABLE_AUTOUPDATER": "1",
        "DISABLE_ERROR_REPORTING": "1",
        "DISABLE_BUG_COMMAND": "1",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    }
    args = [str(claude), "-p", "Say hello.", "--model", model, "--tools", "Read"]
    args += ["--max-turns", "3", "--output-format", "json"]
    done = subprocess.run(
        args,
        cwd=work,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=RUN_S,
    )
    out = done.stdout.decode(errors="replace")
    assert done.returncode == 0, (
        f"claude exited {done.returncode}: {out[-500:]} {done.stderr[-500:]!r}"
    )
    result: dict[str, Any] = json.loads(out)
    return result


@pytest.mark.parametrize("model", ["agent", "agent-chat"], ids=["native", "translated"])
def test_claude_code_answers_through_the_router(
    claude: Path, router: RouterProcess, model: str, tmp_path: Path
) -> None:
    result = run_claude(claude, router, model, tmp_path)
    assert result["type"] == "result" and result["is_error"] is False
    assert result["result"].strip()
    # The simulated model calls the tool it is offered, then answers: a whole tool loop
    # (with its signed thinking, sent back as it came) went through the router.
    assert result["num_turns"] >= 2

    def served() -> list[dict[str, Any]]:
        return [e for e in router.logs() if e.get("event") == "request" and e["route"] == model]

    assert poll(lambda: len(served()) >= 2)
    assert all(e["operation"] == "messages" and e["status"] == 200 for e in served())
    assert any(e["stream"] for e in served())
