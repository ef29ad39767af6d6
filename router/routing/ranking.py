"""Which endpoints a call may try, in what order: the pipeline's first two steps.

1. Health filtering, separate from scoring: endpoints that are disabled, in cooldown or
   at ``max_concurrency`` are set aside; if that leaves nothing, the ones whose cooldown
   ends first are tried anyway (Envoy's panic threshold) rather than failing outright.
2. The policy ranks what is left from live loads (a ``provider.sort`` or an
   ``x-router-policy`` picks another), prompt-cache affinity may put the bound endpoint
   first, and ``provider.order`` wins over both. The ranking is the failover path.

``rank`` is sync: the usual request, which never waits, costs no coroutine here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

import structlog

from policies import SORTS, Candidate, Strategy
from router.config import HedgeSection
from router.routing.attempts import Attempts
from router.runtime import Endpoint, RouteRuntime, Runtime

if TYPE_CHECKING:
    from router.routing.pipeline import Call

log = structlog.get_logger("router.pipeline")

Ranking = tuple[list[Endpoint], HedgeSection | None]  # the order, and the hedge to use


class NoEndpoint(Exception):
    """A route has no endpoint to try (``filtered``: none passes the call's filters)."""

    def __init__(self, reason: str, *, filtered: bool = False) -> None:
        super().__init__(reason)
        self.filtered = filtered


class RateLimited(Exception):
    """Every endpoint of a route with a free slot is rate limited past the deadline."""


async def wait_for_ranking(
    runtime: Runtime,
    route: RouteRuntime,
    call: Call,
    attempts: Attempts,
    sleep: Callable[[float], Awaitable[None]],
    debug: bool,
) -> Ranking:
    """The ranking, after waiting for a free slot if every endpoint is full."""
    while True:
        ranked = rank(runtime, route, call, debug)
        if ranked is not None:
            return ranked
        eps = admitted(route, call)
        open_now = [e for e in eps if not e.full()]
        if not open_now:
            await _wait_for_slot(eps, attempts, route)
            continue
        # Each of them asked for rest (a 429): wait for the first to be free, unless
        # that is past what this request can wait.
        free = min(e.breaker.free_at() for e in open_now)
        if free >= attempts.deadline:
            raise RateLimited
        await sleep(free - runtime.clock())


def admitted(route: RouteRuntime, call: Call) -> list[Endpoint]:
    """The endpoints of ``route`` that serve the call's API and pass its filters."""
    prefs = call.prefs
    eps = route.serving[call.api.name]
    if not eps:
        if route.usable:
            raise NoEndpoint(
                f"no usable endpoint of route {route.name!r} serves the {call.api.name} API"
            )
        raise NoEndpoint(f"route {route.name!r} has no usable endpoint (all disabled)")
    if prefs is not None:
        eps = [e for e in eps if prefs.admits(e)]
        if not eps:
            raise NoEndpoint(
                f"no endpoint of route {route.name!r} matches the 'provider' filters",
                filtered=True,
            )
    return eps


def rank(runtime: Runtime, route: RouteRuntime, call: Call, debug: bool) -> Ranking | None:
    """The ranking now, or None when every admitted endpoint is at max_concurrency or
    rate limited (sync: no coroutine per request for the usual case, which never waits)."""
    prefs = call.prefs
    eps = admitted(route, call)
    now = runtime.clock()
    open_now = [e for e in eps if not e.full()] if route.limited else eps
    if not open_now:
        return None
    avail = [e for e in open_now if e.breaker.available(now)]
    if prefs is not None and prefs.sort is not None:
        strategy, hedge = route.strategy_for(SORTS[prefs.sort])
    elif call.policy is not None:
        strategy, hedge = route.strategy_for(call.policy)
    else:
        strategy, hedge = route.strategy, route.hedge
    if not avail:
        # Every endpoint cooling down: try the one due first rather than fail now, but
        # not one set aside by a rate limit: it said when to come back (wait_for_ranking).
        ready = [e for e in open_now if not e.breaker.is_rate_limited(now)]
        if not ready:
            return None
        ranking = sorted(ready, key=lambda e: e.breaker.until)
        if debug:
            log.debug("route_panic", route=route.name, order=[e.id for e in ranking])
    else:
        candidates = route.candidates(avail, now)
        ranked = strategy.rank(candidates, runtime.rng)
        endpoints = route.endpoints
        ranking = [endpoints[c.index] for c in ranked]
        if debug:
            _log_decision(route, strategy, ranked, candidates, eps, avail)
        affinity = call.affinity
        ordered = prefs is not None and bool(prefs.order)  # provider.order wins over it
        if affinity is not None and affinity.route == route.name and not ordered:
            explores = getattr(strategy, "explores", False)
            ranking = affinity.order(route, ranking, candidates, explores, now)
    if prefs is not None:
        ranking = prefs.reorder(route.by_id, ranking)
    return ranking, hedge


async def _wait_for_slot(eps: list[Endpoint], attempts: Attempts, route: RouteRuntime) -> None:
    """Every endpoint is at max_concurrency: wait for a slot, up to ttft_s."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()
    for e in eps:
        e.state.waiters.append(fut)
    limit = min(route.spec.timeouts.ttft_s, attempts.deadline - attempts.clock())
    try:
        await asyncio.wait_for(fut, max(0.0, limit))
    except TimeoutError:
        raise NoEndpoint(f"every endpoint of route {route.name!r} is at max_concurrency") from None


def _log_decision(
    route: RouteRuntime,
    strategy: Strategy,
    ranked: list[Candidate],
    candidates: Sequence[Candidate],
    eps: list[Endpoint],
    avail: list[Endpoint],
) -> None:
    """The debug ``route_decision`` event: the order and the loads compared."""
    log.debug(
        "route_decision",
        route=route.name,
        strategy=strategy.name,
        order=[c.id for c in ranked],
        loads={
            c.id: {
                "ttft_ms": round(c.ttft_s * 1000, 1),
                "latency_ms": round(c.latency_s * 1000, 1),
                "tokens_per_s": round(c.tokens_per_s, 1),
                "error_rate": round(c.error_rate, 3),
                "in_flight": c.in_flight,
                "explore": c.explore,
                "probing": c.probing,
            }
            for c in candidates
        },
        skipped=[e.id for e in eps if e not in avail],
    )
