"""Allowances on Redis (``router/state/shared/allowance.py``): far from its limits, a key
is admitted from a share reserved in the shared buckets, without a round trip; near them,
or with limits too small to share, every admission goes to Redis. Against a real Redis
(ROUTER_TEST_REDIS_URL)."""

from __future__ import annotations

import asyncio
import random
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest

from router.state.clock import FakeClock
from router.state.shared import Admission, Quota
from router.state.shared.allowance import FIRST
from tests.router.test_shared_state import REDIS_URL, _drop, needs_redis, shown

pytestmark = needs_redis


def run(main: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(main(), 60))  # type: ignore[arg-type]


@asynccontextmanager
async def stores(n: int, clock: FakeClock | None = None) -> AsyncIterator[list]:  # type: ignore[type-arg]
    from router.state.shared.redis_store import RedisState

    assert REDIS_URL is not None
    prefix = f"test-{secrets.token_hex(4)}:"
    extra = {"clock": clock} if clock is not None else {}
    made = [RedisState(REDIS_URL, prefix=prefix, **extra) for _ in range(n)]  # type: ignore[arg-type]
    for s in made:
        await s.start()
    try:
        yield made
    finally:
        for s in made:
            await s.aclose()
        await _drop(prefix)


async def units_ahead(prefix: str, key: str, limit: int) -> float:
    """How many units a GCRA bucket holds reserved now (Redis's clock)."""
    import redis.asyncio as aioredis

    assert REDIS_URL is not None
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        tat = float(await client.get(prefix + key) or 0.0)
        secs, micros = await client.time()
        now = secs + micros / 1e6
    finally:
        await client.aclose()
    return max(0.0, tat - now) * limit / 60.0


async def zcard(prefix: str, key: str) -> int:
    import redis.asyncio as aioredis

    assert REDIS_URL is not None
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        return int(await client.zcard(prefix + key))
    finally:
        await client.aclose()


def test_far_from_its_limits_a_key_is_admitted_without_a_round_trip() -> None:
    async def main() -> None:
        async with stores(1) as (store,):
            quota = Quota("team", rpm=640, tpm=6_400_000, concurrent=640, day_usd=1000.0)
            started = time.monotonic()
            first = await store.admit(quota, tokens=100)
            assert first.admitted and first.allowance is None  # asked Redis, got a share
            store.settle(first, 100, 0.01)
            sent = store.client.proto.waiters  # nothing goes to Redis from here on
            admitted: list[Admission] = []
            slots = []
            for _ in range(FIRST):  # one request after the other, as one client sends
                asked = store.admit(quota, tokens=100)
                assert not sent
                admitted.append(await asked)
                slots.append(admitted[-1].lease)
                store.settle(admitted[-1], 100, 0.01)
            assert store.allowed == FIRST
            assert all(a.admitted and a.allowance is not None for a in admitted)
            back = (time.monotonic() - started) * 640 / 60  # refilled meanwhile (< 1)
            left = [int(shown(a, "remaining-requests")) for a in [first, *admitted]]
            assert left == sorted(left, reverse=True)  # each counted, as Redis would
            assert 640 - FIRST - 1 <= left[-1] <= 640 - FIRST + back
            assert all(a.reserved == 100 for a in admitted)
            assert all(slots) and len(set(slots)) == 1  # one slot of the share, reused
            # The share ran out: the next admission asks Redis (and for a larger share).
            await store.admit(quota, tokens=100)
            assert store.allowed == FIRST
            assert store._sizes["team"].requests == 2 * FIRST

    run(main)


def test_what_an_allowance_did_not_use_goes_back_to_the_buckets() -> None:
    async def main() -> None:
        async with stores(1) as (store,):
            prefix = store.prefix
            quota = Quota("team", rpm=640, tpm=64_000, concurrent=640)
            held = [await store.admit(quota, tokens=100) for _ in range(3)]  # 1 + 2 of 8
            assert store.allowed == 2
            # Redis holds the share whole: 1 + 8 requests, 1 + 2 slots.
            assert 8.0 < await units_ahead(prefix, "{team}:r", 640) <= 9.0  # 1 back / 94 ms
            assert await zcard(prefix, "{team}:c") == 3
            for a in held:
                store.settle(a, 50, 0.0)  # each used 50 of its 100 tokens
            await store.aclose()  # ends the allowance: the rest goes back
            await store.flush()
            assert 1.5 < await units_ahead(prefix, "{team}:r", 640) <= 3.0  # not 9
            # 3 x 50 tokens used, not the 800 of the share; 1 comes back every 0.94 ms.
            assert await units_ahead(prefix, "{team}:t", 64_000) <= 150
            assert await zcard(prefix, "{team}:c") == 0

    run(main)


def test_replicas_with_allowances_never_admit_over_the_limit() -> None:
    """Three replicas, a burst of 900 asks at a limit of 640: the allowances serve while
    the key is under half its limit, Redis one by one after; never over the limit (plus
    what refilled meanwhile), and short of it at most by the shares still held."""

    async def main() -> None:
        async with stores(3) as replicas:
            quota = Quota("team", rpm=640)
            rng = random.Random(7)
            started = time.monotonic()
            admitted = 0
            for _ in range(30):
                batch = [replicas[rng.randrange(3)].admit(quota) for _ in range(30)]
                admitted += sum(v.admitted for v in await asyncio.gather(*batch))
            refilled = (time.monotonic() - started) * 640 / 60 + 1
            assert sum(s.allowed for s in replicas) > 50  # allowances did serve
            assert admitted <= 640 + refilled
            assert admitted >= 640 - 3 * 640 // 64

    run(main)


def test_limits_too_small_to_share_go_to_redis_every_time() -> None:
    async def main() -> None:
        async with stores(1) as (store,):
            for quota in (Quota("a", rpm=63), Quota("b", concurrent=7), Quota("c", tpm=6_000)):
                for _ in range(5):
                    assert (await store.admit(quota, tokens=100)).admitted
                assert store.allowed == 0 and not store._held

    run(main)


def test_near_its_limit_a_key_gets_no_allowance() -> None:
    async def main() -> None:
        async with stores(1) as (store,):
            quota = Quota("team", rpm=640)
            for _ in range(400):  # well past half the limit (a unit comes back per 94 ms)
                await store.admit(quota)
            if "team" in store._held:  # one granted before half: given back
                store._retire(store._held["team"])
            await store.flush()
            before = store.allowed
            for _ in range(20):
                assert (await store.admit(quota)).admitted
            assert store.allowed == before and not store._held

    run(main)


def test_spend_counts_against_the_allowance_share_of_the_budget() -> None:
    async def main() -> None:
        async with stores(1) as (store,):
            quota = Quota("team", rpm=64_000, day_usd=64.0)  # a share is $1
            first = await store.admit(quota)
            second = await store.admit(quota)
            assert second.allowance is not None
            store.settle(first, None, 0.6)  # asked Redis, still this replica's spend
            assert (await store.admit(quota)).allowance is not None  # $0.6 of $1
            store.settle(second, None, 0.6)
            after = store.allowed
            third = await store.admit(quota)  # $1.2: the share is spent
            assert third.admitted and third.allowance is None and store.allowed == after
            await store.flush()
            assert (await store.spent(["team"]))["team"].day == pytest.approx(1.2)

    run(main)


def test_an_allowance_ends_with_its_second_and_with_its_key_reloaded() -> None:
    async def main() -> None:
        clock = FakeClock(time.time())
        async with stores(1, clock) as (store,):
            quota = Quota("team", rpm=64_000)
            await store.admit(quota)
            assert (await store.admit(quota)).allowance is not None
            clock.advance(1.0)
            assert (await store.admit(quota)).allowance is None  # expired: asked Redis
            assert (await store.admit(quota)).allowance is not None  # a new one
            reloaded = Quota("team", rpm=64_000)  # the same limits, a new config
            assert (await store.admit(reloaded)).allowance is None
            assert (await store.admit(reloaded)).allowance.quota is reloaded  # type: ignore[union-attr]

    run(main)


def test_a_request_with_a_binding_asks_redis_for_it() -> None:
    async def main() -> None:
        async with stores(1) as (store,):
            quota = Quota("team", rpm=64_000)
            await store.admit(quota)
            await store.set("session", "ep-a", 30)
            bound = await store.admit(quota, binding_key="session")
            assert bound.allowance is None and bound.binding == "ep-a"
            assert (await store.admit(quota)).allowance is not None  # the share stays

    run(main)


@pytest.mark.parametrize("seed", [1, 2])
def test_tokens_and_slots_balance_after_random_traffic(seed: int) -> None:
    """Random admissions, settlements and ends of allowances on two replicas: once all
    is settled and written, no slot is held and the token bucket holds what was used."""

    async def main() -> None:
        rng = random.Random(seed)
        async with stores(2) as replicas:
            prefix = replicas[0].prefix
            quota = Quota("team", tpm=640_000, concurrent=6400)  # 10,667 tokens back a second
            open_: list[tuple[object, Admission]] = []
            used = 0
            started = time.monotonic()
            for _ in range(400):
                store = replicas[rng.randrange(2)]
                roll = rng.random()
                if roll < 0.5 or not open_:
                    a = await store.admit(quota, tokens=rng.randrange(1, 500))
                    assert a.admitted
                    open_.append((store, a))
                elif roll < 0.95:
                    owner, a = open_.pop(rng.randrange(len(open_)))
                    tokens = rng.randrange(0, 600)
                    used += tokens
                    owner.settle(a, tokens, 0.0)  # type: ignore[attr-defined]
                else:
                    held = store._held.get("team")
                    if held is not None:
                        store._retire(held)
            for owner, a in open_:
                used += 10
                owner.settle(a, 10, 0.0)  # type: ignore[attr-defined]
            for store in replicas:
                for held in list(store._held.values()):
                    store._retire(held)
                await store.flush()
            assert await zcard(prefix, "{team}:c") == 0
            ahead = await units_ahead(prefix, "{team}:t", 640_000)
            back = (time.monotonic() - started) * 640_000 / 60
            assert used - back - 1 <= ahead <= used + 1  # no more, no less than was used
            assert sum(s.allowed for s in replicas) > 100

    run(main)


def test_an_allowances_slots_outlive_it_only_when_in_use(monkeypatch: pytest.MonkeyPatch) -> None:
    """Slots granted with an allowance expire in Redis within SLOT_HOLD_S unless its end
    makes those in use long-lived: a replica that dies holding one frees them soon; a
    request in flight keeps its slot until it settles."""
    from router.state.shared import redis_store

    monkeypatch.setattr(redis_store, "SLOT_HOLD_S", 0.3)

    async def main() -> None:
        async with stores(2) as (a, b):
            prefix = a.prefix
            quota = Quota("team", concurrent=640)
            first = await a.admit(quota)  # its own slot, and 2 of the allowance
            second = await a.admit(quota)  # from the allowance: one of its 2 in use
            assert second.allowance is not None
            assert await zcard(prefix, "{team}:c") == 3
            a._retire(second.allowance)
            await a.flush()
            assert await zcard(prefix, "{team}:c") == 2  # the free one went
            b_first = await b.admit(quota)
            assert await zcard(prefix, "{team}:c") == 5  # b's own and its allowance's 2
            b.client.close()  # b dies: nothing of it is given back
            b._held.clear()
            await asyncio.sleep(0.5)
            await a.admit(quota, binding_key="x")  # any admission sweeps expired slots
            # Held: a's two in flight, b's own request's (the slot lifetime, as before),
            # and this admission's own and its new allowance's two; b's allowance's two
            # expired.
            assert await zcard(prefix, "{team}:c") == 6
            assert b_first.lease and first.lease

    run(main)


@pytest.mark.parametrize("limit", [16, 20, 128])
def test_concurrency_is_never_exceeded_across_replicas_with_allowances(limit: int) -> None:
    """Three replicas admit and settle at random against ``concurrent: limit`` (shares of
    up to a sixteenth of it): requests admitted and not yet settled never exceed the
    limit, they come near it (some are refused), and allowances served some."""

    async def main() -> None:
        rng = random.Random(limit)
        async with stores(3) as replicas:
            quota = Quota("team", concurrent=limit)
            open_: list[tuple[object, Admission]] = []
            refused = most = 0
            for _ in range(80):
                for _ in range(rng.randrange(1, 14)):
                    store = replicas[rng.randrange(3)]
                    a = await store.admit(quota)
                    if a.admitted:
                        open_.append((store, a))
                    else:
                        refused += 1
                    assert len(open_) <= limit
                    most = max(most, len(open_))
                for _ in range(rng.randrange(0, 8)):
                    if open_:
                        owner, a = open_.pop(rng.randrange(len(open_)))
                        owner.settle(a, None, 0.0)  # type: ignore[attr-defined]
                if rng.random() < 0.2:
                    await asyncio.sleep(0.02)  # batches written
            # Refusals come a little early: releases another replica has not written yet
            # (10 ms), slots another's allowance holds (a second at most).
            assert refused > 0 and most >= limit * 3 // 4
            assert sum(s.allowed for s in replicas) > 0

    run(main)


def test_without_allowances_every_admission_asks_redis() -> None:
    async def main() -> None:
        from router.state.shared import make_state

        assert REDIS_URL is not None
        prefix = f"test-{secrets.token_hex(4)}:"
        store = make_state(REDIS_URL, prefix=prefix, allowances=False)
        await store.start()
        try:
            quota = Quota("team", rpm=64_000, concurrent=640)
            for _ in range(10):
                assert (await store.admit(quota)).allowance is None
            assert store.status()["allowance_admissions"] == 0
            assert store.status()["allowances"] is False
        finally:
            await store.aclose()
            await _drop(prefix)

    run(main)


def test_a_give_back_after_the_bucket_emptied_leaves_no_lasting_key() -> None:
    async def main() -> None:
        import redis.asyncio as aioredis

        async with stores(1) as (store,):
            quota = Quota("team", rpm=64_000)
            await store.admit(quota)
            held = store._held["team"]
            client = aioredis.Redis.from_url(REDIS_URL)  # type: ignore[arg-type]
            try:
                await client.delete(store.prefix + "{team}:r")  # as if it had expired
                store._retire(held)
                await store.flush()
                assert 0 < await client.pttl(store.prefix + "{team}:r") <= 61_000
            finally:
                await client.aclose()

    run(main)


def test_a_request_too_large_for_an_allowance_asks_redis_and_the_allowance_stays() -> None:
    async def main() -> None:
        async with stores(1) as (store,):
            quota = Quota("team", rpm=64_000, tpm=640_000)  # shares of at most 10,000 tokens
            await store.admit(quota, tokens=100)
            held = store._held["team"]
            large = await store.admit(quota, tokens=50_000)
            assert large.admitted and large.allowance is None and large.reserved == 50_000
            assert store._held["team"] is held and held.current
            assert (await store.admit(quota, tokens=100)).allowance is held

    run(main)
