"""What a prompt cache saved, through the real service: two turns of one conversation
with a big system prompt, the second read from the simulated host's cache; the request
log's cost prices the cached tokens at ``cache_read``, and ``/admin/usage`` and the model
page's data show the hit rate and the saving."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.support import RouterProcess

ADMIN = "cache-usage-admin-7d1e"
INPUT, OUTPUT, CACHE_READ = 3.0, 15.0, 0.3
PRICE = f"{{input: {INPUT}, output: {OUTPUT}, cache_read: {CACHE_READ}}}"
CONFIG = f"""
server: {{admin_key_env: CACHE_TEST_ADMIN_KEY}}
storage: {{url: "sqlite+aiosqlite:///router.db", flush_interval_s: 0.05}}
providers:
  sim:
    kind: simulated
    ttft_ms: 5
    tokens_per_s: 2000
    tokens: 4
    prompt_cache: {{ttl_s: 600, min_tokens: 256, ttft_factor: 0.3}}
routes:
  agent:
    policy: round_robin
    endpoints:
      - {{provider: sim, model: m, price: {PRICE}}}
"""
SYSTEM = "You are a careful coding agent. " * 200


def admin_get(router: RouterProcess, path: str, **params: str) -> dict[str, Any]:
    resp = httpx.get(
        f"{router.url}{path}",
        params=params,
        headers={"Authorization": f"Bearer {ADMIN}"},
        timeout=10,
    )
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


def test_usage_and_page_show_what_the_cache_saved(
    router_factory: Callable[..., RouterProcess],
) -> None:
    router = router_factory(CONFIG, env={"CACHE_TEST_ADMIN_KEY": ADMIN})
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "fix the parser"},
    ]
    usages = []
    for i in range(2):
        resp = httpx.post(
            f"{router.base_url}/chat/completions",
            json={"model": "agent", "messages": messages},
            timeout=10,
        )
        assert resp.status_code == 200, resp.text
        usages.append(resp.json()["usage"])
        answer = resp.json()["choices"][0]["message"]["content"]
        messages += [{"role": "assistant", "content": answer}, {"role": "user", "content": f"{i}"}]
    cached = [(u.get("prompt_tokens_details") or {}).get("cached_tokens", 0) for u in usages]
    assert cached[0] == 0 and cached[1] > 256
    prompt = sum(u["prompt_tokens"] for u in usages)
    cost = (
        sum(
            (u["prompt_tokens"] - c) * INPUT + c * CACHE_READ + u["completion_tokens"] * OUTPUT
            for u, c in zip(usages, cached, strict=True)
        )
        / 1e6
    )

    deadline = time.monotonic() + 10  # the log writes in batches, off the request path
    usage = admin_get(router, "/admin/usage", group_by="endpoint")
    while usage["total"]["requests"] < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
        usage = admin_get(router, "/admin/usage", group_by="endpoint")
    total = usage["total"]
    assert total["requests"] == 2
    assert total["prompt_tokens"] == prompt and total["cached_tokens"] == cached[1]
    assert total["cost"] == pytest.approx(cost, rel=1e-9)
    assert total["cache_hit_rate"] == pytest.approx(cached[1] / prompt, abs=1e-6)
    saved = cached[1] * (INPUT - CACHE_READ) / 1e6
    assert total["cache_saved_usd"] == pytest.approx(saved, rel=1e-6)
    [group] = usage["groups"]
    assert group["key"] == "sim" and group["cache_saved_usd"] == total["cache_saved_usd"]

    page = admin_get(router, "/admin/stats", route="agent", window="1h")
    [row] = page["pricing"]["endpoints"]
    assert row["cache_hit_rate"] == total["cache_hit_rate"]
    assert row["cache_saved_usd"] == pytest.approx(saved, rel=1e-6)
