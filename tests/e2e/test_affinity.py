"""Prompt-cache affinity through the real service: a conversation stays where its cache
is (x-router-affinity: new, then hit, with cached tokens reported), whatever session id
the client sends, and a route without a paying cache says off."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from tests.support import RouterProcess

PRICE = "{input: 3.0, output: 15.0, cache_read: 0.3}"
CACHE = "{ttl_s: 600, min_tokens: 256, ttft_factor: 0.3}"
CONFIG = f"""
storage: {{url: null}}
providers:
  a: {{kind: simulated, ttft_ms: 5, tokens_per_s: 2000, tokens: 4, prompt_cache: {CACHE}}}
  b: {{kind: simulated, ttft_ms: 5, tokens_per_s: 2000, tokens: 4, prompt_cache: {CACHE}}}
  c: {{kind: simulated, ttft_ms: 5, tokens_per_s: 2000, tokens: 4, prompt_cache: {CACHE}}}
policies:
  spread: {{strategy: round_robin, affinity: {{ttl_s: 600}}}}
routes:
  agent:
    policy: spread
    endpoints:
      - {{provider: a, model: m, price: {PRICE}}}
      - {{provider: b, model: m, price: {PRICE}}}
      - {{provider: c, model: m, price: {PRICE}}}
  plain:
    policy: round_robin
    endpoints: [{{provider: a, model: m}}, {{provider: b, model: m}}]
"""
SYSTEM = "You are a careful coding agent. " * 200


def turn(
    router: RouterProcess, messages: list[dict[str, Any]], headers: dict[str, str] | None = None
) -> httpx.Response:
    resp = httpx.post(
        f"{router.base_url}/chat/completions",
        json={"model": "agent", "messages": messages},
        headers=headers or {},
        timeout=10,
    )
    assert resp.status_code == 200, resp.text
    return resp


def conversation(
    router: RouterProcess, task: str, turns: int, headers: dict[str, str] | None = None
) -> list[httpx.Response]:
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": task},
    ]
    out = []
    for i in range(turns):
        resp = turn(router, messages, headers)
        out.append(resp)
        answer = resp.json()["choices"][0]["message"]["content"]
        messages += [{"role": "assistant", "content": answer}, {"role": "user", "content": f"{i}"}]
    return out


def test_a_conversation_stays_on_its_cache(router_factory: Callable[..., RouterProcess]) -> None:
    router = router_factory(CONFIG)
    answers = conversation(router, "fix the parser", 6)
    endpoints = {r.headers["x-router-endpoint"] for r in answers}
    assert len(endpoints) == 1  # round_robin alone would have used all three
    assert [r.headers["x-router-affinity"] for r in answers] == ["new"] + ["hit"] * 5
    cached = [
        (r.json()["usage"].get("prompt_tokens_details") or {}).get("cached_tokens", 0)
        for r in answers
    ]
    assert cached[0] == 0 and all(c > 0 for c in cached[1:])
    # another conversation is bound on its own (round_robin spreads the new ones)
    others = {
        conversation(router, f"task {i}", 2)[0].headers["x-router-endpoint"] for i in range(3)
    }
    assert len(others) > 1


def test_session_headers_name_the_conversation(
    router_factory: Callable[..., RouterProcess],
) -> None:
    router = router_factory(CONFIG)
    for headers in ({"x-session-id": "s-1"}, {"x-claude-code-session-id": "cc-1"}):
        system = {"role": "system", "content": SYSTEM}  # a prefix worth staying for
        first = turn(router, [system, {"role": "user", "content": "one"}], headers)
        # a different first message: only the header ties it to the same conversation
        again = turn(router, [system, {"role": "user", "content": "two"}], headers)
        assert again.headers["x-router-endpoint"] == first.headers["x-router-endpoint"]
        assert again.headers["x-router-affinity"] == "hit"
    unrelated = turn(
        router, [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "3"}]
    )
    assert unrelated.headers["x-router-affinity"] == "new"


def test_a_route_without_affinity_says_off(router_factory: Callable[..., RouterProcess]) -> None:
    router = router_factory(CONFIG)
    resp = httpx.post(
        f"{router.base_url}/chat/completions",
        json={"model": "plain", "messages": [{"role": "user", "content": "hi"}]},
        timeout=10,
    )
    assert resp.status_code == 200 and resp.headers["x-router-affinity"] == "off"


def test_the_request_log_keeps_the_session_affinity_named(
    router_factory: Callable[..., RouterProcess], tmp_path: Path
) -> None:
    """What the policy lab replays conversations from: the session of each request, as
    affinity named it, and where the policy has none as affinity would have for a
    prompt a host could cache (the lab can then try affinity on a log recorded without
    it)."""
    db = tmp_path / "log.db"
    config = CONFIG.replace(
        "storage: {url: null}",
        f"storage: {{url: 'sqlite+aiosqlite:///{db}', flush_interval_s: 0.05}}",
    )
    router = router_factory(config)
    conversation(router, "fix the parser", 2, {"x-session-id": "s-9"})
    conversation(router, "fix the lexer", 1)  # no id: the conversation's fingerprint
    # A route without affinity: the session the client names, or a fingerprint for a
    # prompt long enough for a host to cache (SYSTEM is 6 KB); none for a short one.
    for content, headers in ((SYSTEM, {}), ("hi", {"x-session-id": "s-10"}), ("hi", {})):
        plain = httpx.post(
            f"{router.base_url}/chat/completions",
            json={"model": "plain", "messages": [{"role": "user", "content": content}]},
            headers=headers,
            timeout=10,
        )
        assert plain.status_code == 200 and plain.headers["x-router-affinity"] == "off"
    # An embedding is no conversation. A body nested deeper than JSON encoders go (254
    # levels; decoders take 1,024) cannot be forwarded: a 400, and its row all the same
    # (the fingerprint samples it without recursing).
    nested = "[" * 1000 + "]" * 1000
    for path, body, status in (
        ("/embeddings", '{"model": "agent", "input": "some text"}', 200),
        ("/chat/completions", '{"model": "plain", "messages": [{"role": "user", "content": "x"}],'
                              f' "tools": [{nested}]}}', 400),
    ):  # fmt: skip
        resp = httpx.post(f"{router.base_url}{path}", content=body, timeout=10,
                          headers={"content-type": "application/json"})  # fmt: skip
        assert resp.status_code == status, resp.text
    router.stop()  # the log is flushed before the process exits
    with sqlite3.connect(db) as conn:  # by arrival (a batch's rows of each shape go apart)
        rows = conn.execute("SELECT route, session FROM requests ORDER BY ts").fetchall()
    assert rows[:2] == [("agent", "h:s-9"), ("agent", "h:s-9")]
    assert rows[2][0] == "agent" and rows[2][1].startswith("f:") and len(rows[2][1]) == 34
    assert rows[3][0] == "plain" and rows[3][1].startswith("f:") and rows[3][1] != rows[2][1]
    assert rows[4:6] == [("plain", "h:s-10"), ("plain", None)]
    assert rows[6] == ("agent", None)  # the embedding: no session, though the route has affinity
    assert rows[7:] == [("plain", None)]  # the nested one: logged (short, and no id)
