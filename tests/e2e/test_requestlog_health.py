"""``/health`` tells an operator when the request log cannot write, and when it can again."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.support import FakeUpstream, RouterProcess, poll


def test_health_is_degraded_while_the_request_log_cannot_write(tmp_path: Path) -> None:
    folder = tmp_path / "not-yet"  # SQLite cannot create a file in a missing folder
    with FakeUpstream() as fake:
        config = (
            f"storage: {{url: 'sqlite+aiosqlite:///{folder / 'log.db'}', flush_interval_s: 0.1}}\n"
            f"providers:\n  up: {{kind: openai, base_url: '{fake.base_url}'}}\n"
            "routes:\n  r: {endpoints: [{provider: up, model: m}]}\n"
        )
        with RouterProcess(config, tmp_path) as router:
            body = {"model": "r", "messages": [{"role": "user", "content": "hi"}]}
            for _ in range(3):  # requests are served all the same
                r = httpx.post(f"{router.base_url}/chat/completions", json=body, timeout=10)
                assert r.status_code == 200

            def failing() -> bool:
                view = httpx.get(f"{router.url}/health", timeout=5).json().get("requestlog")
                return bool(view) and view["state"] == "failing" and view["queued"] == 3

            assert poll(failing, timeout=15)
            r = httpx.get(f"{router.url}/health", timeout=5)
            assert r.status_code == 503
            view = r.json()
            assert view["status"] == "degraded"
            assert "unable to open database file" in view["requestlog"]["last_error"]
            metrics = httpx.get(f"{router.url}/metrics", timeout=5).text
            assert "router_request_log_failing 1.0" in metrics

            folder.mkdir()
            assert poll(lambda: router.health()["requestlog"]["state"] == "ok", timeout=40)
            r = httpx.get(f"{router.url}/health", timeout=5)
            assert r.status_code == 200
            assert r.json()["status"] == "ok"
            assert poll(lambda: router.health()["requestlog"]["written"] == 3, timeout=10)
