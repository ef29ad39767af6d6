"""Live reload of routes.yaml: by edit, by rename-save, by SIGHUP, by the admin endpoint.

A bad edit never replaces a working config; stats of endpoints that survive a reload are
kept; a stream in flight finishes on the config it started with; SIGTERM drains.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.support import FakeUpstream, RouterProcess, slow_tokens

ADMIN = "admin-secret-key-123"


def config(
    fake_a: FakeUpstream, fake_b: FakeUpstream, *, first: str = "a", extra_route: str = ""
) -> str:
    order = ["a", "b"] if first == "a" else ["b", "a"]
    urls = {"a": fake_a.base_url, "b": fake_b.base_url}
    eps = "\n".join(f"      - {{id: {n}, provider: {n}, model: model-{n}}}" for n in order)
    return (
        "storage: {url: null}\n"
        "providers:\n"
        f"  a: {{kind: openai, base_url: '{urls['a']}'}}\n"
        f"  b: {{kind: openai, base_url: '{urls['b']}'}}\n"
        f"routes:\n  r:\n    policy: priority\n    endpoints:\n{eps}\n{extra_route}"
    )


def wait_for(predicate: Any, timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def served_by(router: RouterProcess) -> str:
    r = httpx.post(
        f"{router.base_url}/chat/completions",
        json={"model": "r", "messages": [{"role": "user", "content": "hi"}]},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    return r.headers["x-router-endpoint"]


@pytest.fixture
def pair() -> Any:
    with FakeUpstream(text="from a") as a, FakeUpstream(text="from b") as b:
        yield a, b


@pytest.fixture
def router(tmp_path: Path, pair: Any) -> Any:
    a, b = pair
    proc = RouterProcess(config(a, b), tmp_path, env={"ROUTER_ADMIN_KEY": ADMIN}).start()
    yield proc
    proc.stop()


def version(router: RouterProcess) -> str:
    return str(router.health()["config"]["version"])


def test_edit_in_place_is_picked_up(router: RouterProcess, pair: Any) -> None:
    assert served_by(router) == "a"
    before = version(router)
    router.config_path.write_text(config(*pair, first="b"))
    wait_for(lambda: version(router) != before, what="reload after edit")
    assert served_by(router) == "b"


def test_rename_save_is_picked_up(router: RouterProcess, pair: Any, tmp_path: Path) -> None:
    before = version(router)
    tmp = tmp_path / ".routes.yaml.swp"
    tmp.write_text(config(*pair, first="b"))
    os.replace(tmp, router.config_path)  # how vim and many editors save
    wait_for(lambda: version(router) != before, what="reload after rename")
    assert served_by(router) == "b"


def test_invalid_edit_keeps_the_old_config_and_shows_the_error(
    router: RouterProcess, pair: Any
) -> None:
    before = version(router)
    router.config_path.write_text(
        config(*pair).replace("policy: priority", "policy: priority\n    typo_key: 1")
    )
    wait_for(lambda: router.health()["config"]["last_error"], what="last_error")
    health = router.health()
    assert health["config"]["version"] == before
    assert any("typo_key" in e and "unknown key" in e for e in health["config"]["last_error"])
    assert served_by(router) == "a"  # still serving on the old config
    router.config_path.write_text(config(*pair, first="b"))
    wait_for(lambda: router.health()["config"]["last_error"] is None, what="error cleared")
    assert served_by(router) == "b"


def test_sighup_reloads(router: RouterProcess, pair: Any) -> None:
    # Same size, same inode, mtime put back: invisible to the file watcher, so only
    # the signal can make the service see the change.
    path = router.config_path
    old = path.stat()
    new = config(*pair, first="b")
    assert len(new) == old.st_size
    path.write_text(new)
    os.utime(path, ns=(old.st_atime_ns, old.st_mtime_ns))
    time.sleep(1.2)  # two watch intervals: proves the watcher did not pick it up
    assert served_by(router) == "a"
    assert router.proc is not None
    router.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: served_by(router) == "b", what="SIGHUP reload")


def test_admin_reload(router: RouterProcess, pair: Any) -> None:
    url = f"{router.url}/admin/reload"
    assert httpx.post(url, timeout=5).status_code == 401
    assert httpx.post(url, headers={"Authorization": "Bearer wrong"}, timeout=5).status_code == 403
    auth = {"Authorization": f"Bearer {ADMIN}"}
    router.config_path.write_text(config(*pair).replace("priority", "no_such_policy"))
    bad = httpx.post(url, headers=auth, timeout=5)
    assert bad.status_code == 400
    assert any("no_such_policy" in e for e in bad.json()["error"]["errors"])
    assert served_by(router) == "a"
    router.config_path.write_text(config(*pair, first="b"))
    ok = httpx.post(url, headers=auth, timeout=5)
    assert ok.status_code == 200
    assert ok.json()["version"] == version(router)
    assert served_by(router) == "b"
    assert ADMIN not in router.log_text()


def test_admin_is_404_without_an_admin_key(tmp_path: Path, pair: Any) -> None:
    with RouterProcess(config(*pair), tmp_path) as router:
        r = httpx.post(
            f"{router.url}/admin/reload", headers={"Authorization": "Bearer x"}, timeout=5
        )
        assert r.status_code == 404
        assert httpx.get(f"{router.url}/admin/usage", timeout=5).status_code == 404


def test_stats_survive_a_reload(router: RouterProcess, pair: Any) -> None:
    for _ in range(5):
        served_by(router)
    before = next(e for e in router.health()["routes"]["r"]["endpoints"] if e["id"] == "a")
    assert before["requests"] == 5
    router.config_path.write_text(
        config(*pair, extra_route="  other: {endpoints: [{provider: b, model: x}]}\n")
    )
    wait_for(lambda: "other" in router.health()["routes"], what="reload")
    after = next(e for e in router.health()["routes"]["r"]["endpoints"] if e["id"] == "a")
    assert after["requests"] == 5
    assert after["latency_ms"]["ewma"] == before["latency_ms"]["ewma"]


_slow_stream = slow_tokens(0.1, count=10)


def test_stream_in_flight_survives_a_reload(router: RouterProcess, pair: Any) -> None:
    a, b = pair
    a.behaviour = _slow_stream
    client = openai.OpenAI(base_url=router.base_url, api_key="x", max_retries=0)
    stream = client.chat.completions.create(
        model="r", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    parts = []
    for i, c in enumerate(stream):
        if c.choices and c.choices[0].delta.content:
            parts.append(c.choices[0].delta.content)
        if i == 2:
            # Mid-stream: a reload that removes endpoint `a` altogether.
            router.config_path.write_text(
                "storage: {url: null}\n"
                f"providers:\n  b: {{kind: openai, base_url: '{b.base_url}'}}\n"
                "routes:\n  r: {endpoints: [{id: b, provider: b, model: m}]}\n"
            )
    client.close()
    assert "".join(parts).split() == [f"t{i}" for i in range(10)]
    wait_for(
        lambda: [e["id"] for e in router.health()["routes"]["r"]["endpoints"]] == ["b"],
        what="reload",
    )
    assert served_by(router) == "b"


def _sigterm_mid_stream(
    router: RouterProcess, upstream: FakeUpstream, request_id: str
) -> list[str]:
    """Start a slow stream, SIGTERM the router while it runs; the lines the client got."""
    got: list[str] = []
    done = threading.Event()

    def consume() -> None:
        with httpx.stream(
            "POST",
            f"{router.base_url}/chat/completions",
            json={"model": "r", "stream": True, "messages": [{"role": "user", "content": "hi"}]},
            headers={"x-request-id": request_id},
            timeout=10,
        ) as r:
            got.extend(r.iter_lines())
        done.set()

    t = threading.Thread(target=consume)
    t.start()
    wait_for(lambda: len(upstream.received) == 1, what="stream started")
    assert router.proc is not None
    router.proc.send_signal(signal.SIGTERM)
    assert done.wait(10)
    t.join(5)
    assert router.proc.wait(15) == 0
    return got


def test_sigterm_drains_a_stream_and_exits_zero(router: RouterProcess, pair: Any) -> None:
    a, _ = pair
    a.behaviour = _slow_stream
    assert "data: [DONE]" in _sigterm_mid_stream(router, a, "drained-stream-0")


def test_sigterm_during_a_stream_keeps_its_rows(tmp_path: Path, pair: Any) -> None:
    """The stream finishes, the process exits 0, and the request is in the log."""
    import contextlib
    import sqlite3

    a, b = pair
    a.behaviour = _slow_stream
    db = tmp_path / "log.db"
    text = config(a, b).replace(
        "storage: {url: null}", f"storage: {{url: 'sqlite+aiosqlite:///{db}'}}"
    )
    router = RouterProcess(text, tmp_path).start()
    try:
        got = _sigterm_mid_stream(router, a, "drained-stream-1")
    finally:
        router.stop()
    assert "data: [DONE]" in got
    with contextlib.closing(sqlite3.connect(db)) as conn:
        rows = conn.execute(
            "SELECT status, endpoint FROM requests WHERE request_id = ?", ("drained-stream-1",)
        ).fetchall()
        attempts = conn.execute(
            "SELECT count(*) FROM attempts WHERE request_id = ?", ("drained-stream-1",)
        ).fetchone()
    assert rows == [(200, "a")]
    assert attempts == (1,)


def test_started_on_a_broken_file_every_api_answers_503_until_it_is_fixed(
    tmp_path: Path, pair: Any
) -> None:
    """No config is "unavailable, see /health", in each client API's error shape, never a
    500 an SDK would report as a router bug; saving a valid file brings service back."""
    broken = config(*pair).replace("policy: priority", "policy: [priority")
    body = {"model": "r", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
    with RouterProcess(broken, tmp_path) as router:
        assert httpx.get(f"{router.url}/health", timeout=5).status_code == 503
        for path in ("chat/completions", "completions", "embeddings", "responses", "models"):
            method = "GET" if path == "models" else "POST"
            r = httpx.request(method, f"{router.base_url}/{path}", json=body, timeout=5)
            assert r.status_code == 503, (path, r.status_code, r.text)
            error = r.json()["error"]
            assert error["code"] == "no_config" and error["type"] == "service_unavailable"
            assert "/health" in error["message"]
        r = httpx.post(f"{router.base_url}/messages", json=body, timeout=5)
        assert r.status_code == 503
        assert r.json()["type"] == "error"
        assert r.json()["error"]["type"] == "overloaded_error"  # Anthropic's shape for 503
        assert '"status":500' not in router.log_text().replace(" ", "")
        router.config_path.write_text(config(*pair))
        wait_for(lambda: router.health()["status"] == "ok", what="the fixed file loaded")
        assert served_by(router) == "a"
