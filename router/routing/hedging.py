"""Hedging: an attempt raced by later endpoints of the ranking, each started when the ones
before it have gone ``hedge.after_ms`` (or a live TTFT percentile) without a first token.
The first to a first token wins; the others are cancelled as ``hedge_lost``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from functools import partial
from typing import Any

from providers.errors import UpstreamError
from router.config import HedgeSection
from router.errors import CLIENT_FAULT_STATUSES
from router.routing.attempts import HEDGE_LOST, Attempts, Opened
from router.runtime import Endpoint

_QUANTILES = {"p50": 0.5, "p90": 0.9, "p95": 0.95, "p99": 0.99}  # hedge.after's choices


async def race(
    attempts: Attempts,
    route: str,
    first: Endpoint,
    next_endpoint: Callable[[], Endpoint | None],
    hedge: HedgeSection | None,
    spend: Callable[[], bool],
) -> Opened:
    """``first``, hedged by later endpoints when the policy says so.

    ``next_endpoint`` yields the endpoint a hedge would go to; ``spend`` takes one
    attempt from the budget, or says there is none left.
    """
    if hedge is None:
        return await attempts.open(route, first)
    delay = hedge_delay(hedge, first)
    loop = asyncio.get_running_loop()
    tasks = {asyncio.Task(attempts.open(route, first, racing=True))}
    extra = 0
    last: BaseException | None = None
    won = False
    try:
        while tasks:
            # The done set of asyncio.wait(tasks, timeout=delay while a hedge may still
            # start, return_when=FIRST_COMPLETED), woken in the same loop turns (a task's
            # done callback, then the waiter's), without its generality: no copy of the
            # set, no coroutine check per member, no closure counting completions. Here
            # rather than in a coroutine of its own: one per wait, and an await level more
            # on every resume. The future, task and timer are made directly, not by the
            # loop (asyncio.Task(coro) and Future() are the running loop's; call_later
            # calls call_at with the same time): its methods pass them options by keyword,
            # a dict each. (This router sets no task factory.)
            waiter: asyncio.Future[None] = asyncio.Future()
            release = partial(_release, waiter)
            timer = None
            if extra < hedge.max_extra:
                timer = loop.call_at(loop.time() + delay, release)
            for task in tasks:
                task.add_done_callback(release)
            try:
                await waiter
            finally:
                if timer is not None:
                    timer.cancel()
                for task in tasks:
                    task.remove_done_callback(release)
            done = set(filter(asyncio.Future.done, tasks))  # a comprehension: a frame more
            if not done:
                ep = next_endpoint() if spend() else None
                extra += 1
                if ep is not None:
                    attempts.hedges += 1
                    tasks.add(asyncio.Task(attempts.open(route, ep, hedged=True, racing=True)))
                continue
            for task in done:
                tasks.discard(task)
                exc = task.exception()
                if exc is None:
                    won = True
                    return task.result()
                last = exc
                if isinstance(exc, UpstreamError) and exc.status in CLIENT_FAULT_STATUSES:
                    raise exc
        assert last is not None
        raise last
    finally:
        for task in tasks:
            task.cancel(HEDGE_LOST if won else None)
        for task in tasks:
            try:
                result = await task
            except BaseException:
                continue
            result.abandon()  # opened just as it was cancelled: close it


def _release(waiter: asyncio.Future[None], *_: Any) -> None:
    """A task is done or the hedge delay has passed: wake the race (once)."""
    if not waiter.done():
        waiter.set_result(None)


def hedge_delay(hedge: HedgeSection, ep: Endpoint) -> float:
    """Seconds to wait for a first token before hedging; a percentile of live TTFT if asked."""
    if hedge.after is not None:
        q = _QUANTILES[hedge.after]
        live = ep.stats.ttft_percentile(q)
        if live is not None and ep.stats.ttft_window_size() >= 20:
            return live
    return hedge.after_ms / 1000.0
