"""Client keys with limits and budgets (``keys:``), on the in-process state, through the
real service with the OpenAI SDK and raw HTTP."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.support import FakeUpstream, RouterProcess

ADMIN = "admin-key-for-keys"
KEYS = {
    "TEAM_A_KEY": "sk-team-a-123456",
    "TEAM_B_KEY": "sk-team-b-123456",
    "TEAM_C_KEY": "sk-team-c-123456",
}
# The fake upstream reports 5 prompt + 3 completion tokens: $0.8 at these prices.
PRICE = "price: {input: 100000, output: 100000}"


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterProcess]:
    tmp: Path = tmp_path_factory.mktemp("keys")
    with FakeUpstream() as fake:
        config = f"""
storage: {{url: 'sqlite+aiosqlite:///{tmp / "log.db"}', flush_interval_s: 0.1}}
providers:
  up: {{kind: openai, base_url: '{fake.base_url}'}}
routes:
  r: {{endpoints: [{{provider: up, model: m, {PRICE}}}]}}
  r2: {{endpoints: [{{provider: up, model: m, {PRICE}}}]}}
  hidden: {{endpoints: [{{provider: up, model: m}}]}}
keys:
  team-a:
    key_env: TEAM_A_KEY
    routes: [r]
    limits: {{rpm: 3, tpm: 2000}}
  team-b:
    key_env: TEAM_B_KEY
    routes: [r, r2]
    budget_usd: {{day: 1.0, month: 100}}
  team-c: {{key_env: TEAM_C_KEY, limits: {{tpm: 1000}}}}
  team-unset: {{key_env: TEAM_UNSET_KEY, limits: {{rpm: 1}}}}
"""
        env = {**KEYS, "ROUTER_API_KEYS": "ops:sk-ops-123456", "ROUTER_ADMIN_KEY": ADMIN}
        with RouterProcess(config, tmp, env=env) as proc:
            yield proc


def client(router: RouterProcess, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=router.base_url, api_key=key, max_retries=0)


def ask(router: RouterProcess, key: str, model: str = "r", **extra: object) -> httpx.Response:
    return httpx.post(
        f"{router.base_url}/chat/completions",
        content=body(model, **extra),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        timeout=10,
    )


def body(model: str = "r", **extra: object) -> bytes:
    payload = {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}
    return json.dumps(payload).encode()


def test_rpm_limit_headers_then_429_with_retry_after(router: RouterProcess) -> None:
    key = KEYS["TEAM_A_KEY"]
    with client(router, key) as sdk:
        seen = []
        for _ in range(3):
            raw = sdk.chat.completions.with_raw_response.create(
                model="r", messages=[{"role": "user", "content": "hi"}], max_tokens=50
            )
            assert raw.http_response.status_code == 200
            seen.append(raw.headers)
        assert [h["x-ratelimit-remaining-requests"] for h in seen] == ["2", "1", "0"]
        assert all(h["x-ratelimit-limit-requests"] == "3" for h in seen)
        assert seen[0]["x-ratelimit-reset-requests"] == "20s"  # one request back per 20 s
        assert seen[0]["x-ratelimit-limit-tokens"] == "2000"
        with pytest.raises(openai.RateLimitError) as refused:
            sdk.chat.completions.create(model="r", messages=[{"role": "user", "content": "x"}])
    err = refused.value
    assert err.status_code == 429 and err.code == "rate_limit_exceeded"
    assert err.body["type"] == "rate_limit_error" and "3 requests per minute" in err.message
    retry = float(err.response.headers["Retry-After"])
    assert 1 <= retry <= 20
    assert math.isclose(int(err.response.headers["retry-after-ms"]) / 1000, retry, abs_tol=1)
    assert err.response.headers["x-ratelimit-remaining-requests"] == "0"


def test_tokens_reserved_from_max_tokens_and_corrected_by_usage(router: RouterProcess) -> None:
    key = KEYS["TEAM_C_KEY"]  # tpm 1000
    first = ask(router, key, max_tokens=600)
    assert first.status_code == 200
    # Reserved: the body's bytes / 4 + max_tokens 600 (and a token back per 60 ms since).
    reserved = len(body(max_tokens=600)) // 4 + 600
    left = int(first.headers["x-ratelimit-remaining-tokens"])
    assert 1000 - reserved <= left <= 1000 - reserved + 3, (left, reserved)
    assert first.headers["x-ratelimit-limit-tokens"] == "1000"
    assert "x-ratelimit-limit-requests" not in first.headers  # no rpm for this key
    # The answer used 8 tokens: the rest of the reservation came back, so a second
    # request of the same size fits (without the correction, 375 < 625 would refuse it).
    second = ask(router, key, max_tokens=600)
    assert second.status_code == 200
    again = int(second.headers["x-ratelimit-remaining-tokens"])
    assert again >= left - 8, (again, left)  # 8 used (and some came back meanwhile)
    # Both answers used 16 tokens of the 1000: a request asking for the whole bucket
    # waits until those 16 come back (a second), as a request larger than tpm would.
    third = ask(router, key, max_tokens=5000)
    assert third.status_code == 429 and third.json()["error"]["code"] == "rate_limit_exceeded"
    assert third.headers["Retry-After"] == "1"
    assert "tokens per minute" in third.json()["error"]["message"]


def test_key_sees_only_its_routes(router: RouterProcess) -> None:
    key = KEYS["TEAM_A_KEY"]
    with client(router, key) as sdk:
        assert [m.id for m in sdk.models.list()] == ["r"]
        with pytest.raises(openai.NotFoundError) as hidden:
            sdk.chat.completions.create(model="r2", messages=[{"role": "user", "content": "x"}])
        with pytest.raises(openai.NotFoundError) as unknown:
            sdk.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    # The same answer for a route it may not use as for one that does not exist: no
    # route names leak to the key.
    assert hidden.value.code == unknown.value.code == "model_not_found"
    assert "hidden" not in unknown.value.message and "r2" not in unknown.value.message
    with client(router, KEYS["TEAM_B_KEY"]) as sdk:
        assert sorted(m.id for m in sdk.models.list()) == ["r", "r2"]


def test_budget_blocks_after_the_cost_is_charged(router: RouterProcess) -> None:
    key = KEYS["TEAM_B_KEY"]
    statuses = []
    for _ in range(4):
        resp = ask(router, key, model="r2")
        statuses.append(resp.status_code)
        if resp.status_code == 429:
            break
    # $0.8 each (plus the $0.8 of the test above when it ran first): blocked at or past $1.
    assert statuses[-1] == 429 and statuses[:-1] == [200] * (len(statuses) - 1)
    err = resp.json()["error"]
    assert err["code"] == "budget_exceeded" and "daily budget of $1" in err["message"]
    assert 1 <= int(resp.headers["Retry-After"]) <= 86400
    usage = httpx.get(
        f"{router.url}/admin/usage?group_by=key",
        headers={"Authorization": f"Bearer {ADMIN}"},
        timeout=10,
    ).json()
    day = usage["budgets"]["team-b"]["day"]
    assert day["limit_usd"] == 1.0 and day["spent_usd"] >= 1.0 and day["remaining_usd"] == 0
    assert usage["budgets"]["team-b"]["month"]["remaining_usd"] == pytest.approx(
        100 - day["spent_usd"]
    )
    assert "team-a" not in usage["budgets"]  # no budget, nothing to show


def test_plain_keys_have_no_limits_and_unset_keys_are_refused(router: RouterProcess) -> None:
    for _ in range(5):
        resp = ask(router, "sk-ops-123456")
        assert resp.status_code == 200
        assert not any(h.startswith("x-ratelimit") for h in resp.headers)
    assert ask(router, "sk-not-a-key").status_code == 401
    warnings = [e for e in router.logs() if e.get("event") == "config_warning"]
    assert any("TEAM_UNSET_KEY" in e["warning"] for e in warnings)
