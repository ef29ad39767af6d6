"""The router's own log, as an operator reads it: every event of a request names it."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.support import RouterProcess, poll, routes_yaml

CONFIG = routes_yaml(
    "  demo:\n    endpoints:\n      - {provider: sim, model: demo-1}\n",
    "  sim: {kind: simulated, ttft_ms: 1, tokens_per_s: 100000}\n",
    extra="server: {api_keys_env: null, admin_key_env: null}\n",
)


def test_a_debug_route_decision_carries_the_request_id_and_route(tmp_path: Path) -> None:
    with RouterProcess(CONFIG, tmp_path, env={"LOG_LEVEL": "debug"}) as router:
        body = {"model": "demo", "messages": [{"role": "user", "content": "hi"}]}
        resp = httpx.post(
            f"{router.base_url}/chat/completions",
            json=body,
            headers={"x-request-id": "trace-me-1"},
            timeout=10,
        )
        assert resp.status_code == 200, resp.text

        def decision() -> dict[str, object] | None:
            found = [e for e in router.logs() if e.get("event") == "route_decision"]
            return found[0] if found else None

        assert poll(lambda: decision() is not None, 5.0), router.log_text()
        event = decision()
        assert event is not None
        assert (event["request_id"], event["route"]) == ("trace-me-1", "demo")
        assert event["level"] == "debug"
