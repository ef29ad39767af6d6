"""Shared fixtures. The real service runs as a subprocess; upstreams are real sockets."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import FakeUpstream, RouterProcess

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")


@pytest.fixture
def fake() -> Iterator[FakeUpstream]:
    with FakeUpstream() as upstream:
        yield upstream


@pytest.fixture
def fake2() -> Iterator[FakeUpstream]:
    with FakeUpstream(text="hello from second") as upstream:
        yield upstream


@pytest.fixture
def router_factory(tmp_path: Path) -> Iterator[object]:
    """Start routers with ``router_factory(config_text, env={...})``; all stopped at the end."""
    started: list[RouterProcess] = []

    def start(config: str, env: dict[str, str] | None = None) -> RouterProcess:
        proc = RouterProcess(config, tmp_path, env=env).start()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()
