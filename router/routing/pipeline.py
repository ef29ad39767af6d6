"""The request pipeline: filter, rank, attempt, retry, fall back, relay.

For each route in the chain (the requested one, then its ``fallbacks``):

1. Health filtering, separate from scoring: endpoints that are disabled, in cooldown or
   at ``max_concurrency`` are set aside; if that leaves nothing, the ones whose cooldown
   ends first are tried anyway (Envoy's panic threshold) rather than failing outright.
2. The policy ranks what is left from live loads; the ranking is the failover path
   (both in ``ranking.py``).
3. The first attempt runs (hedged if the policy says so). On a retryable failure the rest
   run under tenacity: exponential backoff with full jitter, never sooner than a
   ``Retry-After``, walking the ranking and starting over from the top, until
   ``retry.attempts`` upstream attempts (hedges included) or ``total_s`` are spent.

A stream is committed to the client only once it has a first token, so every failure
before that fails over; after it, ``relay`` turns a failure into an SSE error event.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception

from policies import STRATEGIES
from providers.errors import UpstreamError, UpstreamHTTPError
from router.apis.base import ClientApi
from router.apis.reasoning import Reasoning
from router.config import HedgeSection
from router.errors import (
    CLIENT_FAULT_STATUSES,
    AllAttemptsFailed,
    BadRequest,
    NoEndpointAvailable,
    NotFound,
    UpstreamClientError,
    UpstreamRateLimited,
    retryable,
)
from router.routing.affinity import Affinity
from router.routing.attempts import Attempts, Opened
from router.routing.hedging import race
from router.routing.prefs import RoutingPrefs
from router.routing.ranking import NoEndpoint, RateLimited, rank, wait_for_ranking
from router.routing.relay import relay as relay_stream
from router.routing.walk import Walk, full_jitter
from router.runtime import Endpoint, RouteRuntime, Runtime

log = structlog.get_logger("router.pipeline")


@dataclass(slots=True)
class Call:
    """One client request, parsed once."""

    api: ClientApi
    payload: dict[str, Any]
    model: str
    stream: bool
    client_wants_usage: bool
    request_id: str
    prefs: RoutingPrefs | None = None
    policy: str | None = None
    headers: dict[str, str] | None = None  # the client's headers its API passes on
    reasoning: Reasoning | None = None  # what it asks of reasoning, in any of its forms
    affinity: Affinity | None = None  # prompt-cache affinity, when its policy has it
    routes: frozenset[str] | None = None  # the routes the client's key may use (None: all)


def _rested(chain: list[RouteRuntime], now: float) -> float:
    """Seconds until the first endpoint of ``chain`` set aside by a rate limit is free
    (0 when none is set aside any longer)."""
    until = [e.breaker.free_at() for r in chain for e in r.usable if e.breaker.is_rate_limited(now)]
    return max(0.0, min(until, default=now) - now)


class Pipeline:
    def __init__(
        self,
        *,
        debug: bool = False,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.debug = debug
        self._sleep = sleep  # FakeClock.sleep in tests: backoff and waits in virtual time

    def resolve(self, runtime: Runtime, call: Call) -> RouteRuntime:
        """The route and per-request overrides, checked before anything is sent."""
        route = runtime.routes.get(call.model)
        if route is None:
            known = ", ".join(runtime.route_names)
            raise NotFound(f"unknown model {call.model!r}; known routes: {known}", param="model")
        api = call.api.name
        if api not in route.apis and not any(
            api in runtime.routes[name].apis for name in route.spec.fallbacks
        ):
            raise BadRequest(
                f"model {call.model!r} is not served through the {api} API: no endpoint of "
                "its route speaks it or can be translated to it",
                param="model",
                code="unsupported_api",
            )
        if (
            call.policy is not None
            and call.policy not in runtime.config.policies
            and call.policy not in STRATEGIES
        ):
            known = ", ".join(sorted(set(runtime.config.policies) | set(STRATEGIES)))
            raise BadRequest(
                f"unknown policy {call.policy!r} in x-router-policy; known: {known}",
                param="x-router-policy",
                code="unknown_policy",
            )
        if call.prefs is not None:
            ids = set(route.by_id)
            for fb in route.spec.fallbacks:
                ids |= set(runtime.routes[fb].by_id)
            unknown = sorted(call.prefs.named() - ids)
            if unknown:
                raise BadRequest(
                    f"unknown endpoint id(s) in 'provider': {', '.join(unknown)}; "
                    f"route {route.name!r} has: {', '.join(sorted(ids))}",
                    param="provider",
                    code="unknown_endpoint",
                )
        return route

    async def run(
        self, runtime: Runtime, route: RouteRuntime, call: Call, attempts: Attempts
    ) -> Opened:
        """Serve ``call`` from ``route`` or its fallbacks; raises RouterError when nothing could."""
        prefs = call.prefs
        chain = [route]
        if route.spec.fallbacks and (prefs is None or prefs.allow_fallbacks):
            allowed = call.routes  # a fallback the key may not use is skipped
            chain += [
                runtime.routes[name]
                for name in route.spec.fallbacks
                if allowed is None or name in allowed
            ]
        nothing: NoEndpoint | None = None
        limited = False
        for i, r in enumerate(chain):
            try:
                # The route's ranking and its first try, here rather than in a coroutine
                # of their own: one coroutine less per request, an await level less on
                # each resume.
                ranked = rank(runtime, r, call, self.debug)
                if ranked is None:
                    ranked = await wait_for_ranking(
                        runtime, r, call, attempts, self._sleep, self.debug
                    )
                ranking, hedge = ranked
                if hedge is not None and len(ranking) > 1:
                    return await self._retrying(runtime, r, call, attempts, ranking, hedge, None)
                # The usual case: one attempt on the best endpoint, with nothing allocated
                # for retries until it fails. The ranking's head is available and not
                # full: rank kept only such endpoints (or, all cooling down, put the one
                # due first there).
                try:
                    return await attempts.open(r.name, ranking[0])
                except UpstreamError as exc:
                    failure = exc
                return await self._retrying(runtime, r, call, attempts, ranking, None, failure)
            except UpstreamError as exc:
                if isinstance(exc, UpstreamHTTPError) and exc.status in CLIENT_FAULT_STATUSES:
                    raise UpstreamClientError(exc) from exc
                if not self._retryable(r, exc):
                    break
            except NoEndpoint as exc:
                if i == 0:
                    nothing = exc
            except RateLimited:
                limited = True
            if attempts.clock() >= attempts.deadline:
                break
        failed = [a.reason for a in attempts.records if a.reason is not None]
        if (limited or failed) and all(reason == "http_429" for reason in failed):
            raise UpstreamRateLimited(_rested(chain, attempts.clock()), attempts.records)
        if attempts.records:
            raise AllAttemptsFailed(attempts.records)
        if nothing is not None and nothing.filtered:
            raise NotFound(str(nothing), code="no_endpoint_matches", param="provider")
        raise NoEndpointAvailable(str(nothing) if nothing else "no endpoint available")

    def _retryable(self, route: RouteRuntime, exc: UpstreamError) -> bool:
        ep = route.by_id.get(exc.endpoint or "")
        retry_on = ep.spec.retry_on if ep else frozenset(route.spec.retry.on)
        return retryable(exc, retry_on)

    async def _retrying(
        self,
        runtime: Runtime,
        route: RouteRuntime,
        call: Call,
        attempts: Attempts,
        ranking: list[Endpoint],
        hedge: HedgeSection | None,
        failure: UpstreamError | None,
    ) -> Opened:
        """Races on the ranking, after the first try's ``failure`` if any."""
        walk = Walk(
            ranking,
            runtime.clock,
            1
            if call.prefs is not None and not call.prefs.allow_fallbacks
            else route.spec.retry.attempts,
        )
        if failure is None:
            # The first race, as _retry's one_race (not that closure: its cells and frame
            # are for retries only, an await level less on every resume).
            walk.spend()
            try:
                return await race(attempts, route.name, walk.next(), walk.next, hedge, walk.spend)
            except UpstreamError as exc:
                failure = exc
        else:
            # The first try went to the ranking's head: the walk goes on from the second.
            # (Not walk.next(): with the head set aside by that failure, it would skip
            # the second instead, and the retry would go back to the head.)
            walk.skip_head()
            walk.spend()
        if (
            not self._retryable(route, failure)
            or walk.left <= 0
            or attempts.clock() >= attempts.deadline
        ):
            raise failure
        return await self._retry(runtime, route, attempts, walk, hedge, failure)

    async def _retry(
        self,
        runtime: Runtime,
        route: RouteRuntime,
        attempts: Attempts,
        walk: Walk,
        hedge: HedgeSection | None,
        failure: UpstreamError,
    ) -> Opened:
        """Races after ``failure`` under tenacity: backoff (never sooner than the ranking
        frees up), until the walk's attempts or ``total_s`` are spent."""

        async def one_race() -> Opened:
            walk.spend()
            return await race(attempts, route.name, walk.next(), walk.next, hedge, walk.spend)

        retry = route.spec.retry
        clock = runtime.clock
        backoff = full_jitter(runtime.rng, retry.backoff_s, retry.backoff_max_s)
        pending: UpstreamError | None = failure

        def wait(state: RetryCallState) -> float:
            return max(0.0, min(max(backoff(state), walk.hold()), attempts.deadline - clock()))

        def stop(state: RetryCallState) -> bool:
            # A Retry-After or cooldown that outlasts total_s cannot be waited out:
            # answer now rather than sleep until the deadline and fail anyway.
            return walk.left <= 0 or clock() + walk.hold() >= attempts.deadline

        retrying = AsyncRetrying(
            sleep=self._sleep,
            stop=stop,
            wait=wait,
            retry=retry_if_exception(
                lambda e: isinstance(e, UpstreamError) and self._retryable(route, e)
            ),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                if pending is not None:
                    # Hand tenacity the first failure, so its backoff comes before attempt 2.
                    fail, pending = pending, None
                    raise fail
                return await one_race()
        raise AssertionError("unreachable: tenacity reraises the last failure")

    relay = staticmethod(relay_stream)  # the committed stream, after its first token


__all__ = ["Call", "Pipeline", "RoutingPrefs"]
