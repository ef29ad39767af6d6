"""Several real routers sharing one Redis (``state.url_env``): limits, budgets and hard
cooldowns hold for all of them together; Redis going away loses no request.

Needs ROUTER_TEST_REDIS_URL (skips otherwise); the outage drill starts its own
``redis-server`` on a free port (skips when there is none installed).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import secrets
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import redis

from tests.support import FakeUpstream, RouterProcess, free_port, status

REDIS_URL = os.environ.get("ROUTER_TEST_REDIS_URL")
pytestmark = pytest.mark.skipif(
    not REDIS_URL, reason="ROUTER_TEST_REDIS_URL is not set (e.g. redis://127.0.0.1:6379/0)"
)
ADMIN = "admin-key-for-replicas"
KEYS = {
    "LIMITED_KEY": "sk-limited-1234",
    "BUDGET_KEY": "sk-budget-1234",
    "WIDE_KEY": "sk-wide-1234",
}
PLAIN = "sk-plain-1234"  # from ROUTER_API_KEYS: no limits
Fleet = tuple[list[RouterProcess], FakeUpstream]  # three routers on one Redis, the 401 host
PRICE = "price: {input: 100000, output: 100000}"  # $0.8 per answer of the fake upstream


def start_all(routers: list[RouterProcess]) -> None:
    with concurrent.futures.ThreadPoolExecutor(len(routers)) as pool:
        list(pool.map(lambda r: r.start(), routers))


def drop_keys(url: str, prefix: str) -> None:
    client = redis.Redis.from_url(url)
    keys = list(client.scan_iter(match=prefix + "*"))
    if keys:
        client.delete(*keys)
    client.close()


@contextlib.contextmanager
def replicas(
    tmp: Path, config: str, env: dict[str, str], prefix: str
) -> Iterator[list[RouterProcess]]:
    """Three routers on one config and one Redis; their keys (under ``prefix``) dropped
    after."""
    routers = []
    for i in range(3):
        sub = tmp / f"r{i}"
        sub.mkdir()
        routers.append(RouterProcess(config, sub, env=env))
    start_all(routers)
    try:
        yield routers
    finally:
        for r in routers:
            r.stop()
        assert REDIS_URL is not None
        drop_keys(REDIS_URL, prefix)


def ask(router: RouterProcess, key: str, model: str = "r") -> httpx.Response:
    return httpx.post(
        f"{router.base_url}/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": "hi"}]},
        headers={"Authorization": f"Bearer {key}"},
        timeout=10,
    )


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    assert REDIS_URL is not None
    tmp: Path = tmp_path_factory.mktemp("replicas")
    prefix = f"test-{secrets.token_hex(4)}:"
    with FakeUpstream() as good, FakeUpstream() as bad:
        bad.behaviour = status(401, message="invalid upstream key")
        config = f"""
storage: {{url: ''}}
state: {{url_env: ROUTER_REDIS_URL, prefix: '{prefix}'}}
providers:
  good: {{kind: openai, base_url: '{good.base_url}'}}
  bad: {{kind: openai, base_url: '{bad.base_url}'}}
routes:
  r: {{endpoints: [{{provider: good, model: m, {PRICE}}}]}}
  auth:
    policy: priority
    endpoints: [{{provider: bad, model: m}}, {{provider: good, model: m}}]
keys:
  limited: {{key_env: LIMITED_KEY, limits: {{rpm: 10}}}}
  budget: {{key_env: BUDGET_KEY, budget_usd: {{day: 1.0}}}}
  wide: {{key_env: WIDE_KEY, limits: {{rpm: 6400, tpm: 10000000, concurrent: 640}}}}
"""
        env = {
            **KEYS,
            "ROUTER_API_KEYS": f"plain:{PLAIN}",
            "ROUTER_REDIS_URL": REDIS_URL,
            "ROUTER_ADMIN_KEY": ADMIN,
        }
        with replicas(tmp, config, env, prefix) as routers:
            yield routers, bad


def test_a_limit_of_10_rpm_over_3_replicas_admits_exactly_10(
    fleet: Fleet,
) -> None:
    routers, _ = fleet
    with concurrent.futures.ThreadPoolExecutor(15) as pool:
        answers = list(pool.map(lambda i: ask(routers[i % 3], KEYS["LIMITED_KEY"]), range(30)))
    codes = [a.status_code for a in answers]
    assert codes.count(200) == 10 and codes.count(429) == 20, codes
    served_by = {i % 3 for i, a in enumerate(answers) if a.status_code == 200}
    assert len(served_by) > 1  # the 10 were spread over the replicas, not one's own count
    refused = [a for a in answers if a.status_code == 429]
    assert all(a.json()["error"]["code"] == "rate_limit_exceeded" for a in refused)
    assert all(1 <= int(a.headers["Retry-After"]) <= 6 for a in refused)
    remaining = sorted(int(a.headers["x-ratelimit-remaining-requests"]) for a in answers)
    assert remaining[-10:] == list(range(10))  # each admission saw the shared count


def test_a_key_far_from_its_limits_is_admitted_from_the_replicas_allowances(
    fleet: Fleet,
) -> None:
    """Past its first admission on a replica, a key far from its limits is admitted
    there without asking Redis (``allowance_admissions`` in /health)."""
    routers, _ = fleet
    before = [r.health()["state"]["allowance_admissions"] for r in routers]
    answers = [ask(routers[i % 3], KEYS["WIDE_KEY"]) for i in range(60)]
    assert all(a.status_code == 200 for a in answers)
    after = [r.health()["state"]["allowance_admissions"] for r in routers]
    assert all(a - b >= 5 for a, b in zip(after, before, strict=True)), (before, after)
    for a in answers:  # OpenAI's headers on each, from Redis's count or the allowance's
        assert a.headers["x-ratelimit-limit-requests"] == "6400"
        assert 6400 - 60 <= int(a.headers["x-ratelimit-remaining-requests"]) < 6400


def test_a_budget_charged_on_one_replica_blocks_on_the_others(
    fleet: Fleet,
) -> None:
    routers, _ = fleet
    key = KEYS["BUDGET_KEY"]
    assert ask(routers[0], key).status_code == 200  # $0.8 of $1.0
    # The charge is written after the answer, in the next batch: wait until another
    # replica's /admin/usage (read from Redis) shows it.
    deadline = time.monotonic() + 5
    spent = 0.0
    while time.monotonic() < deadline and spent < 0.8:
        usage = httpx.get(
            f"{routers[1].url}/admin/usage?group_by=key",
            headers={"Authorization": f"Bearer {ADMIN}"},
            timeout=5,
        ).json()
        spent = usage["budgets"]["budget"]["day"]["spent_usd"]
    assert spent == pytest.approx(0.8)
    assert ask(routers[1], key).status_code == 200  # $1.6 now: over
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        usage = httpx.get(
            f"{routers[2].url}/admin/usage?group_by=key",
            headers={"Authorization": f"Bearer {ADMIN}"},
            timeout=5,
        ).json()
        if usage["budgets"]["budget"]["day"]["remaining_usd"] == 0:
            break
    for router in routers:
        refused = ask(router, key)
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "budget_exceeded"


def test_a_401_on_one_replica_sets_the_endpoint_aside_on_the_others_within_1s(
    fleet: Fleet,
) -> None:
    routers, bad = fleet
    answer = ask(routers[0], PLAIN, model="auth")
    assert answer.status_code == 200 and answer.headers["x-router-endpoint"] == "good"
    assert len(bad.received) == 1  # its key was refused: failed over to "good"
    started = time.monotonic()
    states: list[str] = []
    while time.monotonic() - started < 1.0:
        views = [r.health()["routes"]["auth"]["endpoints"][0] for r in routers[1:]]
        states = [f"{v['state']}:{v['reason']}" for v in views]
        if states == ["cooldown:auth", "cooldown:auth"]:
            break
    assert states == ["cooldown:auth", "cooldown:auth"], states
    for router in routers[1:]:  # they no longer try it at all
        again = ask(router, PLAIN, model="auth")
        assert again.status_code == 200 and again.headers["x-router-attempts"] == "1"
    assert len(bad.received) == 1


def wait_for(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


class RedisServer:
    """A ``redis-server`` of the test's own, on a free port, that the test can kill."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.tmp = tmp
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        exe = shutil.which("redis-server")
        assert exe is not None
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""],
            cwd=self.tmp,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis(port=self.port, socket_timeout=0.5).ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="no redis-server installed")
def test_redis_stopped_mid_run_loses_no_request_and_recovers(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)
    server.start()
    with FakeUpstream() as up:
        routers = []
        for mode in ("open", "closed"):
            config = f"""
storage: {{url: ''}}
state: {{url_env: ROUTER_REDIS_URL, on_error: {mode}, timeout_ms: 200}}
providers:
  up: {{kind: openai, base_url: '{up.base_url}'}}
routes:
  r: {{endpoints: [{{provider: up, model: m}}]}}
keys:
  limited: {{key_env: LIMITED_KEY, limits: {{rpm: 100000, concurrent: 50}}}}
"""
            sub = tmp_path / mode
            sub.mkdir()
            env = {**KEYS, "ROUTER_API_KEYS": f"plain:{PLAIN}", "ROUTER_REDIS_URL": server.url}
            routers.append(RouterProcess(config, sub, env=env))
        start_all(routers)
        opened, closed = routers
        codes: list[int] = []
        stop = threading.Event()

        def load() -> None:
            with httpx.Client(timeout=10) as client:
                while not stop.is_set():
                    answer = client.post(
                        f"{opened.base_url}/chat/completions",
                        json={"model": "r", "messages": [{"role": "user", "content": "hi"}]},
                        headers={"Authorization": f"Bearer {KEYS['LIMITED_KEY']}"},
                    )
                    codes.append(answer.status_code)

        threads = [threading.Thread(target=load) for _ in range(4)]
        try:
            for t in threads:
                t.start()
            wait_for(lambda: len(codes) >= 10)  # traffic on Redis
            server.kill()
            during = len(codes)
            wait_for(lambda: len(codes) >= during + 20)  # traffic with Redis gone
            assert opened.health()["state"]["reachable"] is False
            refused = ask(closed, KEYS["LIMITED_KEY"])  # on_error: closed says no
            assert refused.status_code == 503
            assert refused.json()["error"]["code"] == "state_unavailable"
            assert ask(closed, PLAIN).status_code == 200  # a key without limits never asks
            server.start()  # the same port, empty
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not opened.health()["state"]["reachable"]:
                time.sleep(0.1)
            assert opened.health()["state"]["reachable"] is True
            keys = redis.Redis(port=server.port).keys("router:*")
            assert keys  # admissions went back to Redis by themselves
            # The closed replica's breaker may still wait out its backoff (0.5 s after the
            # refusal above): it asks Redis again by itself once that is over.
            wait_for(lambda: ask(closed, KEYS["LIMITED_KEY"]).status_code == 200, 6.0)
        finally:
            stop.set()
            for t in threads:
                t.join(15)
            for r in routers:
                r.stop()
            server.kill()
    assert len(codes) > during > 0
    assert set(codes) == {200}, {c: codes.count(c) for c in set(codes)}


def test_a_concurrency_limit_holds_at_the_upstream_across_replicas(tmp_path: Path) -> None:
    """The contract's kind of team key (``concurrent: 20``, shares of one slot) on three
    replicas, 40 clients at once on an upstream that holds each answer 50 ms: the
    upstream never has more than 20 of the key's requests at a time, every request is
    answered 200 or 429, and allowances admitted some of them."""
    from aiohttp import web

    from tests.support import ok_json

    seen = {"now": 0, "peak": 0}

    async def held(fake: FakeUpstream, request: web.Request, body: dict) -> web.StreamResponse:  # type: ignore[type-arg]
        seen["now"] += 1
        seen["peak"] = max(seen["peak"], seen["now"])
        try:
            await asyncio.sleep(0.05)
            return await ok_json(fake, request, body)
        finally:
            seen["now"] -= 1

    assert REDIS_URL is not None
    prefix = f"test-{secrets.token_hex(4)}:"
    key = "sk-team-20-1234"
    with FakeUpstream() as up:
        up.behaviour = held
        config = f"""
storage: {{url: ''}}
state: {{url_env: ROUTER_REDIS_URL, prefix: '{prefix}'}}
providers:
  up: {{kind: openai, base_url: '{up.base_url}'}}
routes:
  r: {{endpoints: [{{provider: up, model: m}}]}}
keys:
  team: {{key_env: TEAM_KEY, limits: {{rpm: 60000, concurrent: 20}}}}
"""
        env = {"TEAM_KEY": key, "ROUTER_REDIS_URL": REDIS_URL}
        with replicas(tmp_path, config, env, prefix) as routers:
            with concurrent.futures.ThreadPoolExecutor(40) as pool:
                answers = list(pool.map(lambda i: ask(routers[i % 3], key), range(400)))
            codes = [a.status_code for a in answers]
            assert set(codes) <= {200, 429}, codes
            assert codes.count(200) >= 100 and codes.count(429) > 0
            assert seen["peak"] <= 20, seen
            # Allowances served part of it (about a quarter in trial runs), Redis the rest.
            assert sum(r.health()["state"]["allowance_admissions"] for r in routers) >= 10
