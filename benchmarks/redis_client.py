"""CPU per admission on Redis: our RESP client (router/state/shared/resp.py) against
redis-py's asyncio client, with its pure-Python parser and with hiredis when installed.

Why it exists: the shared state could speak to Redis through redis-py (public API, well
kept) or through its own small client; this is the measurement that chooses. Every
client sends the same admission (an EVALSHA of ``scripts.ADMIT`` with the key's limits,
its tokens and a concurrency slot) and parses the answer the same way
(``AdmitCodec.answer``). Settlements are left out: batched, they are one more
command per batch for any client. The figure is this process's CPU time (user and
system: the kernel's share of each write and read counts) over the admissions, at 1
caller (nothing to share a write with) and 16 callers at once:

- ``ours``: the router's own path, ``RedisState.admit``: one connection,
  every command of one event-loop turn in one write, replies matched in order;
- ``redis-py``: ``Redis.evalsha`` per admission (a pooled connection per caller in
  flight);
- ``redis-py, batched``: the same client, but the admissions of one event-loop turn go
  as one ``pipeline(transaction=False)`` (what a redis-py store would do to share writes
  under load, like ours).

Rounds alternate; the median is kept. Redis's own CPU is the same for all (the same
commands) and is not counted.

    python benchmarks/redis_client.py [--redis URL] [--admissions 4000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import uvloop

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import redis
import redis.asyncio as aioredis
from redis.asyncio.connection import _AsyncHiredisParser, _AsyncRESP2Parser
from redis.utils import HIREDIS_AVAILABLE

from router.state.shared import Admission, Quota
from router.state.shared.admit import AdmitCodec
from router.state.shared.redis_store import RedisState
from router.state.shared.scripts import ADMIT

PREFIX = "bench-client:"
QUOTA = Quota("team", rpm=10**9, tpm=10**12, concurrent=10**6, day_usd=10.0**9)

Admit = Callable[[int], Awaitable[Admission]]


async def timed(admit: Admit, n: int, callers: int) -> float:
    """CPU microseconds per admission for ``n`` admissions over ``callers`` at once."""

    async def caller(count: int) -> None:
        for _ in range(count):
            await admit(100)

    for _ in range(2):  # warm: connections open, scripts loaded, code paths taken
        await asyncio.gather(*(caller(20) for _ in range(callers)))
    per = n // callers
    started = time.process_time()
    await asyncio.gather(*(caller(per) for _ in range(callers)))
    return (time.process_time() - started) / (per * callers) * 1e6


class Ours:
    name = "ours (resp.py)"

    def __init__(self, url: str) -> None:
        self.store = RedisState(url, prefix=PREFIX)

    async def start(self) -> None:
        await self.store.start()

    async def admit(self, tokens: int) -> Admission:
        return await self.store.admit(QUOTA, tokens)

    async def close(self) -> None:
        await self.store.aclose()


class RedisPy:
    """What a store on redis-py would do: the key's unchanging arguments built once, one
    ``evalsha`` per admission (or one pipeline per event-loop turn), the same parsing."""

    def __init__(self, url: str, parser: type, batched: bool) -> None:
        self.client = aioredis.Redis.from_url(url, parser_class=parser)
        self.batched = batched
        kind = "hiredis" if parser is _AsyncHiredisParser else "Python parser"
        self.name = f"redis-py, {kind}{', batched' if batched else ''}"
        self.replica = secrets.token_hex(6)
        self.count = 0
        self.admit_sha = ""
        p = f"{PREFIX}{{team}}:"
        self.keys = [p + "b:none", p + "r", p + "t", p + "c", f"{p}d:20261203", f"{p}m:202612"]
        self.static = [10**9, 10**12, 10**6, 10.0**9, -1, 660.0, 1.8e9, 1.8e9]
        self.queue: list[tuple[list[Any], asyncio.Future[Any]]] = []

    async def start(self) -> None:
        self.admit_sha = await self.client.script_load(ADMIT)

    async def admit(self, tokens: int) -> Admission:
        self.count += 1
        lease = f"{self.replica}:{self.count}"
        args = [*self.static, tokens, lease, 0]
        if self.batched:
            fut = asyncio.get_running_loop().create_future()
            if not self.queue:
                asyncio.get_running_loop().call_soon(self._send_batch)
            self.queue.append((args, fut))
            reply = await fut
        else:
            reply = await self.client.evalsha(self.admit_sha, 6, *self.keys, *args)
        return AdmitCodec.answer(reply, QUOTA, lease)

    def _send_batch(self) -> None:
        queue, self.queue = self.queue, []
        pipe = self.client.pipeline(transaction=False)
        for args, _ in queue:
            pipe.evalsha(self.admit_sha, 6, *self.keys, *args)
        task = asyncio.ensure_future(pipe.execute())

        def done(task: asyncio.Task[list[Any]]) -> None:
            for (_, fut), reply in zip(queue, task.result(), strict=True):
                fut.set_result(reply)

        task.add_done_callback(done)

    async def close(self) -> None:
        await self.client.aclose()


async def run(args: argparse.Namespace) -> None:
    parsers: list[type] = [_AsyncRESP2Parser] + ([_AsyncHiredisParser] if HIREDIS_AVAILABLE else [])
    makers: list[Callable[[], Any]] = [lambda: Ours(args.redis)]
    for parser in parsers:
        for batched in (False, True):
            makers.append(lambda p=parser, b=batched: RedisPy(args.redis, p, b))
    results: dict[tuple[str, int], list[float]] = {}
    for _ in range(args.rounds):
        for make in makers:
            for callers in (1, 16):
                client = make()
                await client.start()
                try:
                    cpu = await timed(client.admit, args.admissions, callers)
                finally:
                    await client.close()
                results.setdefault((client.name, callers), []).append(cpu)
    print(f"hiredis: {'installed' if HIREDIS_AVAILABLE else 'not installed'}\n")
    print(f"| client | CPU us / admission, 1 caller | 16 callers | (median of {args.rounds})")
    print("|---|---|---|")
    names = list(dict.fromkeys(name for name, _ in results))
    base = {c: statistics.median(results[(names[0], c)]) for c in (1, 16)}
    for name in names:
        cells = []
        for callers in (1, 16):
            value = statistics.median(results[(name, callers)])
            vs = "" if name == names[0] else f" (x{value / base[callers]:.2f})"
            cells.append(f"{value:.1f}{vs}")
        print(f"| {name} | {cells[0]} | {cells[1]} |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--redis", default=os.environ.get("ROUTER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    )
    ap.add_argument("--admissions", type=int, default=4000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    try:
        uvloop.run(run(args))
    finally:
        client = redis.Redis.from_url(args.redis)
        keys = list(client.scan_iter(match=PREFIX + "*"))
        if keys:
            client.delete(*keys)
    return 0


if __name__ == "__main__":
    sys.exit(main())
