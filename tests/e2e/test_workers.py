"""``router serve --workers N``: N processes on one port, one shared request log."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.support import FakeUpstream, RouterProcess

ADMIN = "admin-key-for-workers"


def served(text: str) -> float:
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "router_requests_total"
    )


def test_two_workers_share_the_port_and_the_log(tmp_path: Path) -> None:
    db = tmp_path / "log.db"
    with FakeUpstream() as fake:
        config = (
            f"storage: {{url: 'sqlite+aiosqlite:///{db}', flush_interval_s: 0.2}}\n"
            f"providers:\n  up: {{kind: openai, base_url: '{fake.base_url}'}}\n"
            "routes:\n  r: {endpoints: [{provider: up, model: m}]}\n"
        )
        router = RouterProcess(
            config, tmp_path, env={"ROUTER_ADMIN_KEY": ADMIN}, args=("--workers", "2")
        )
        router.start()
        try:
            pids = set()
            deadline = time.monotonic() + 20
            n = 0
            # New connections are spread by the kernel; both workers must show up.
            while (len(pids) < 2 or n < 20) and time.monotonic() < deadline:
                with httpx.Client(timeout=10) as client:  # a fresh connection each time
                    r = client.post(
                        f"{router.base_url}/chat/completions",
                        json={"model": "r", "messages": [{"role": "user", "content": "hi"}]},
                    )
                assert r.status_code == 200
                n += 1
                health = httpx.get(f"{router.url}/health", timeout=5).json()
                pids.add(health.get("pid"))
            assert len(pids) == 2, pids
            # /metrics sums both workers (the other's part lags by up to half a second)
            # and never goes backwards, whichever worker answers each scrape.
            seen: list[float] = []
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and (len(seen) < 8 or seen[-1] != n):
                with httpx.Client(timeout=5) as client:  # a fresh connection each time
                    seen.append(served(client.get(f"{router.url}/metrics").text))
            assert seen[-1] == n and seen == sorted(seen), seen
            health = httpx.get(f"{router.url}/health", timeout=5).json()
            assert health["status"] == "ok"
            assert {w["pid"] for w in health["workers"]} == pids
            assert {w["status"] for w in health["workers"]} == {"ok"}
        finally:
            assert router.proc is not None
            router.proc.send_signal(signal.SIGTERM)
            assert router.proc.wait(20) == 0
            router.stop()
        # Both workers flushed on exit; a fresh router reads the shared log.
        with RouterProcess(config, tmp_path, env={"ROUTER_ADMIN_KEY": ADMIN}) as reader:
            usage = httpx.get(
                f"{reader.url}/admin/usage?group_by=route",
                headers={"Authorization": f"Bearer {ADMIN}"},
                timeout=10,
            ).json()
        assert usage["total"]["requests"] == n
