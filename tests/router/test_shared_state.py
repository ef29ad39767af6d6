"""The shared-state interface: the in-process store on a fake clock, and the Redis store
against a real Redis (ROUTER_TEST_REDIS_URL), including Redis being unreachable."""

from __future__ import annotations

import asyncio
import os
import secrets
import time

import pytest

from router.state.clock import FakeClock
from router.state.shared import (
    BUDGET_EXCEEDED,
    RATE_LIMITED,
    Admission,
    Quota,
    StateUnavailable,
    budget_windows,
)
from router.state.shared.memory import MemoryState

REDIS_URL = os.environ.get("ROUTER_TEST_REDIS_URL")
needs_redis = pytest.mark.skipif(
    not REDIS_URL, reason="ROUTER_TEST_REDIS_URL is not set (e.g. redis://127.0.0.1:6379/0)"
)
T0 = 1_767_225_600.0 + 3600  # 2026-01-01 01:00 UTC


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def shown(admission: Admission, what: str) -> str:
    """An x-ratelimit-* header's value in the admission's lines (``remaining-requests``)."""
    lines = dict(line.split(": ", 1) for line in admission.rate.split("\r\n") if line)
    return lines[f"x-ratelimit-{what}"]


# -- the in-process store ------------------------------------------------------------------


def test_rpm_admits_the_limit_at_once_then_one_every_interval() -> None:
    clock = FakeClock(T0)
    store = MemoryState(clock)
    quota = Quota("team", rpm=6)  # one request back every 10 s
    verdicts = [store.admit_now(quota) for _ in range(8)]
    assert [v.admitted for v in verdicts] == [True] * 6 + [False] * 2
    refused = verdicts[-1]
    assert refused.code == RATE_LIMITED and refused.limit == "rpm"
    assert refused.retry_after_s == pytest.approx(10.0)
    assert shown(refused, "remaining-requests") == "0"
    assert shown(refused, "reset-requests") == "1m0s"
    assert shown(refused, "limit-requests") == "6"
    clock.advance(9.9)
    assert not store.admit_now(quota).admitted
    clock.advance(0.1)
    ok = store.admit_now(quota)
    assert ok.admitted and shown(ok, "remaining-requests") == "0"
    clock.advance(60)
    fresh = store.admit_now(quota)
    assert shown(fresh, "remaining-requests") == "5"


def test_tokens_are_reserved_then_corrected_by_usage() -> None:
    clock = FakeClock(T0)
    store = MemoryState(clock)
    quota = Quota("team", tpm=1000)
    first = store.admit_now(quota, tokens=600)
    assert first.admitted and first.reserved == 600
    assert shown(first, "remaining-tokens") == "400"
    assert "x-ratelimit-limit-requests" not in first.rate  # no rpm: no request window
    refused = store.admit_now(quota, tokens=600)
    assert not refused.admitted and refused.limit == "tpm"
    store.settle(first, tokens_used=100, cost_usd=0.0)  # the answer was short: 500 back
    second = store.admit_now(quota, tokens=600)
    assert second.admitted and shown(second, "remaining-tokens") == "300"
    store.settle(second, tokens_used=1300, cost_usd=0.0)  # longer than reserved: debt
    third = store.admit_now(quota, tokens=1)
    assert not third.admitted and third.retry_after_s > 20


def test_a_request_larger_than_tpm_needs_the_whole_bucket() -> None:
    store = MemoryState(FakeClock(T0))
    quota = Quota("team", tpm=100)
    big = store.admit_now(quota, tokens=5000)
    assert big.admitted and big.reserved == 100
    assert not store.admit_now(quota, tokens=1).admitted


def test_concurrency_slots_are_freed_by_settlement_once() -> None:
    store = MemoryState(FakeClock(T0))
    quota = Quota("team", concurrent=2)
    a, b = store.admit_now(quota), store.admit_now(quota)
    third = store.admit_now(quota)
    assert a.admitted and b.admitted and not third.admitted
    assert third.limit == "concurrent" and third.retry_after_s == 1.0
    store.settle(a, None, 0.0)
    store.settle(a, None, 0.0)  # a second settlement frees nothing more
    assert store.admit_now(quota).admitted
    assert not store.admit_now(quota).admitted


def test_budget_blocks_until_the_day_ends_and_the_month_holds() -> None:
    clock = FakeClock(T0)
    store = MemoryState(clock)
    quota = Quota("team", day_usd=1.0, month_usd=1.5)
    ok = store.admit_now(quota)
    store.settle(ok, None, 1.2)
    refused = store.admit_now(quota)
    assert not refused.admitted and refused.code == BUDGET_EXCEEDED and refused.limit == "day"
    assert refused.retry_after_s == pytest.approx(23 * 3600)
    clock.advance(23 * 3600)  # the next UTC day
    again = store.admit_now(quota)
    assert again.admitted
    store.settle(again, None, 0.4)
    month = store.admit_now(quota)
    assert not month.admitted and month.limit == "month"
    assert month.retry_after_s == pytest.approx(30 * 86400)  # to February 1st
    spent = run(store.spent(["team", "other"]))
    assert spent["team"].day == pytest.approx(0.4) and spent["team"].month == pytest.approx(1.6)
    assert spent["other"].month == 0.0


def test_refused_requests_reserve_nothing() -> None:
    store = MemoryState(FakeClock(T0))
    quota = Quota("team", rpm=100, tpm=100, concurrent=1)
    assert store.admit_now(quota, tokens=10).admitted
    refused = store.admit_now(quota, tokens=10)  # concurrency says no
    assert not refused.admitted
    assert shown(refused, "remaining-requests") == "99"
    assert shown(refused, "remaining-tokens") == "90"


def test_bindings_expire_and_stay_bounded() -> None:
    clock = FakeClock(T0)
    store = MemoryState(clock, max_bindings=3)
    run(store.set("s1", "ep-a", ttl_s=10))
    assert run(store.get("s1")) == "ep-a"
    assert store.admit_now(None, binding_key="s1").binding == "ep-a"
    clock.advance(10)
    assert run(store.get("s1")) is None
    for i in range(5):
        store.bind(f"k{i}", "x", ttl_s=100)
    assert [run(store.get(f"k{i}")) for i in range(5)] == [None, None, "x", "x", "x"]
    store.unbind("k4")
    assert run(store.get("k4")) is None


def test_cooldowns_expire() -> None:
    clock = FakeClock(T0)
    store = MemoryState(clock)
    store.cool("demo/ep", T0 + 30, "auth")
    store.cool("demo/ep", T0 + 10, "auth")  # never shortened
    assert store.cooldowns() == {"demo/ep": (T0 + 30, "auth")}
    clock.advance(30)
    assert store.cooldowns() == {}


def test_budget_windows_cross_the_year() -> None:
    day, day_end, month, month_end = budget_windows(1_767_225_599.0)  # 2025-12-31 23:59:59
    assert (day, month) == ("20251231", "202512")
    assert day_end == month_end == 1_767_225_600.0


# -- Redis ---------------------------------------------------------------------------------


async def _drop(prefix: str) -> None:
    import redis.asyncio as aioredis

    assert REDIS_URL is not None
    client = aioredis.Redis.from_url(REDIS_URL)
    keys = [k async for k in client.scan_iter(match=prefix + "*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


@needs_redis
def test_redis_admits_exactly_the_limit_across_stores() -> None:
    async def main() -> None:
        from router.state.shared.redis_store import RedisState

        assert REDIS_URL is not None
        prefix = f"test-{secrets.token_hex(4)}:"
        stores = [RedisState(REDIS_URL, prefix=prefix) for _ in range(3)]
        for s in stores:
            await s.start()
        try:
            quota = Quota("team", rpm=10, tpm=10_000, concurrent=50)
            verdicts = await asyncio.gather(
                *(stores[i % 3].admit(quota, tokens=100) for i in range(30))
            )
            admitted = [v for v in verdicts if v.admitted]
            assert len(admitted) == 10
            refused = [v for v in verdicts if not v.admitted]
            assert all(v.code == RATE_LIMITED and v.limit == "rpm" for v in refused)
            assert all(5.0 < v.retry_after_s <= 6.01 for v in refused)
            left = sorted(int(shown(v, "remaining-requests")) for v in admitted)
            assert left == list(range(10))
            assert all(shown(v, "limit-tokens") == "10000" for v in verdicts)
            assert all(v.reserved == 100 and v.lease for v in admitted)
        finally:
            for s in stores:
                await s.aclose()
            await _drop(prefix)

    run(main())


@needs_redis
def test_redis_settles_budgets_bindings_and_cooldowns_across_stores() -> None:
    async def main() -> None:
        from router.state.shared.redis_store import RedisState

        assert REDIS_URL is not None
        prefix = f"test-{secrets.token_hex(4)}:"
        a = RedisState(REDIS_URL, prefix=prefix)
        b = RedisState(REDIS_URL, prefix=prefix)
        await a.start()
        await b.start()
        heard: asyncio.Queue[tuple[str, float, str]] = asyncio.Queue()
        b.watch_cooldowns(lambda *c: heard.put_nowait(c))
        try:
            quota = Quota("team", day_usd=1.0, concurrent=1)
            first = await a.admit(quota)
            assert first.admitted
            assert not (await b.admit(quota)).admitted  # the one slot is held on a
            a.settle(first, None, 1.5)
            await a.flush()
            refused = await b.admit(quota)
            assert not refused.admitted and refused.code == BUDGET_EXCEEDED
            assert (await b.spent(["team"]))["team"].day == pytest.approx(1.5)

            a.bind("session-1", "ep-a", 30)
            await a.flush()
            seen = await b.admit(None, binding_key="session-1")
            assert seen.binding == "ep-a" and await b.get("session-1") == "ep-a"
            await b.delete("session-1")
            assert await a.get("session-1") is None

            until = time.time() + 30
            await asyncio.sleep(0.1)  # b's subscription is up
            a.cool("demo/ep", until, "auth")
            scope, heard_until, reason = await asyncio.wait_for(heard.get(), 1.0)
            assert (scope, reason) == ("demo/ep", "auth")
            assert heard_until == pytest.approx(until)
            assert "demo/ep" in b.cooldowns()
            late = RedisState(REDIS_URL, prefix=prefix)  # a replica that starts afterwards
            late_heard: asyncio.Queue[tuple[str, float, str]] = asyncio.Queue()
            late.watch_cooldowns(lambda *c: late_heard.put_nowait(c))
            await late.start()
            assert (await asyncio.wait_for(late_heard.get(), 2.0))[0] == "demo/ep"
            await late.aclose()
        finally:
            await a.aclose()
            await b.aclose()
            await _drop(prefix)

    run(main())


@needs_redis
def test_redis_settlements_ride_the_next_admission() -> None:
    """A key with one concurrency slot, one request after the other: each request's
    release goes ahead of the next admission in the same write, so none is refused (a
    release left to a timer would still hold the slot when the next one asks)."""

    async def main() -> None:
        from router.state.shared.redis_store import RedisState

        assert REDIS_URL is not None
        prefix = f"test-{secrets.token_hex(4)}:"
        store = RedisState(REDIS_URL, prefix=prefix)
        await store.start()
        try:
            quota = Quota("team", concurrent=1, tpm=1_000_000, day_usd=100.0)
            for _ in range(20):
                admission = await store.admit(quota, tokens=100)
                assert admission.admitted, admission.code
                store.settle(admission, 10, 0.01)
            await store.flush()
            assert (await store.spent(["team"]))["team"].day == pytest.approx(0.2)
        finally:
            await store.aclose()
            await _drop(prefix)

    run(main())


@needs_redis
def test_the_admission_script_writes_resets_as_the_headers_do() -> None:
    import redis

    from router.state.shared import duration
    from router.state.shared.scripts import SPAN

    assert REDIS_URL is not None
    values = [*range(0, 2001, 7), 59_999, 60_000, 60_001, 61_500, 90_010, 3_599_999]
    values += [3_600_000, 3_661_001, 86_400_000]
    script = SPAN + "local out = {} for i, v in ipairs(ARGV) do out[i] = span(tonumber(v)) end"
    with redis.Redis.from_url(REDIS_URL) as client:
        got = client.eval(script + " return out", 0, *values)
    assert [g.decode() for g in got] == [duration(v / 1000) for v in values]


def test_unreachable_redis_open_serves_locally_and_closed_refuses() -> None:
    from router.state.shared.redis_store import RedisState
    from tests.support import free_port

    async def main() -> None:
        url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
        opened = RedisState(url, on_error="open", timeout_s=0.2)
        closed = RedisState(url, on_error="closed", timeout_s=0.2)
        await opened.start()
        await closed.start()
        try:
            quota = Quota("team", rpm=2)
            started = time.monotonic()
            verdicts = [await opened.admit(quota) for _ in range(3)]
            assert [v.admitted for v in verdicts] == [True, True, False]
            assert all(v.local for v in verdicts)
            assert time.monotonic() - started < 1.0  # the breaker stops asking at once
            assert opened.status()["reachable"] is False
            with pytest.raises(StateUnavailable):
                await closed.admit(quota)
            assert (await closed.admit(None, binding_key="s")).binding is None
        finally:
            await opened.aclose()
            await closed.aclose()

    run(main())
