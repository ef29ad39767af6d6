"""The request pipeline: filter, rank, attempt, retry, fall back, relay.

For each route in the chain (the requested one, then its ``fallbacks``):

1. Health filtering, separate from scoring: endpoints that are disabled, in cooldown or
   at ``max_concurrency`` are set aside; if that leaves nothing, the ones whose cooldown
   ends first are tried anyway (Envoy's panic threshold) rather than failing outright.
2. The policy ranks what is left from live loads; the ranking is the failover path.
3. The first attempt runs (hedged if the policy says so). On a retryable failure the rest
   run under tenacity: exponential backoff with full jitter, never sooner than a
   ``Retry-After``, walking the ranking and starting over from the top, until
   ``retry.attempts`` upstream attempts (hedges included) or ``total_s`` are spent.

A stream is committed to the client only once it has a first token, so every failure
before that fails over; after it, ``relay`` turns a failure into an SSE error event.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception

from policies import SORTS, STRATEGIES
from providers.errors import StreamBroken, TotalTimeout, UpstreamError, UpstreamHTTPError
from router.apis.base import ClientApi, Transform
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
from router.routing.sse import ProtocolViolation
from router.runtime import Endpoint, RouteRuntime, Runtime
from router.state.clock import Clock

log = structlog.get_logger("router.pipeline")


@dataclass(frozen=True, slots=True)
class RoutingPrefs:
    """OpenRouter's per-request ``provider`` object."""

    order: tuple[str, ...] = ()
    only: frozenset[str] | None = None
    ignore: frozenset[str] = frozenset()
    allow_fallbacks: bool = True
    sort: str | None = None
    max_prompt: float | None = None
    max_completion: float | None = None

    @classmethod
    def parse(cls, raw: Any) -> RoutingPrefs:
        if not isinstance(raw, dict):
            raise BadRequest("'provider' must be an object", param="provider")
        known = {"order", "only", "ignore", "allow_fallbacks", "sort", "max_price"}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise BadRequest(
                f"unknown field(s) in 'provider': {', '.join(unknown)}", param="provider"
            )

        def ids(name: str) -> tuple[str, ...] | None:
            v = raw.get(name)
            if v is None:
                return None
            if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                raise BadRequest(
                    f"'provider.{name}' must be a list of endpoint ids", param=f"provider.{name}"
                )
            return tuple(v)

        allow = raw.get("allow_fallbacks", True)
        if not isinstance(allow, bool):
            raise BadRequest(
                "'provider.allow_fallbacks' must be a boolean", param="provider.allow_fallbacks"
            )
        sort = raw.get("sort")
        if sort is not None and sort not in SORTS:
            raise BadRequest(
                f"'provider.sort' must be one of {', '.join(SORTS)}; got {sort!r}",
                param="provider.sort",
            )
        max_prompt = max_completion = None
        mp = raw.get("max_price")
        if mp is not None:
            if not isinstance(mp, dict) or set(mp) - {"prompt", "completion"}:
                raise BadRequest(
                    "'provider.max_price' must be an object with 'prompt' and/or 'completion'",
                    param="provider.max_price",
                )
            for k, v in mp.items():
                if not isinstance(v, int | float) or isinstance(v, bool) or v < 0:
                    raise BadRequest(
                        f"'provider.max_price.{k}' must be a number >= 0",
                        param="provider.max_price",
                    )
            max_prompt, max_completion = mp.get("prompt"), mp.get("completion")
        only = ids("only")
        return cls(
            order=ids("order") or (),
            only=frozenset(only) if only is not None else None,
            ignore=frozenset(ids("ignore") or ()),
            allow_fallbacks=allow,
            sort=sort,
            max_prompt=max_prompt,
            max_completion=max_completion,
        )

    def named(self) -> set[str]:
        return set(self.order) | set(self.only or ()) | set(self.ignore)

    def admits(self, ep: Endpoint) -> bool:
        if self.only is not None and ep.id not in self.only:
            return False
        if ep.id in self.ignore:
            return False
        p_in, p_out = ep.price
        if self.max_prompt is not None and p_in > self.max_prompt:
            return False
        return not (self.max_completion is not None and p_out > self.max_completion)


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


class _Budget:
    __slots__ = ("left",)

    def __init__(self, n: int) -> None:
        self.left = n

    def spend(self) -> bool:
        if self.left <= 0:
            return False
        self.left -= 1
        return True


class _Walk:
    """The ranking as a failover path: onwards, skipping endpoints that became
    unavailable meanwhile, and over from the top when it runs out."""

    __slots__ = ("_clock", "_pos", "ranking")

    def __init__(self, ranking: list[Endpoint], clock: Clock) -> None:
        self.ranking = ranking
        self._pos = 0
        self._clock = clock

    def next(self) -> Endpoint:
        now = self._clock()
        n = len(self.ranking)
        for k in range(n):
            ep = self.ranking[(self._pos + k) % n]
            if ep.breaker.available(now) and not ep.full():
                self._pos += k + 1
                return ep
        # All cooling down or rate limited: the one that is due first.
        ep = min(self.ranking, key=lambda e: e.breaker.free_at())
        self._pos = self.ranking.index(ep) + 1
        return ep

    def skip_head(self) -> None:
        """The head was tried already (by the first attempt): go on from the next."""
        self._pos = 1

    def hold(self) -> float:
        """Seconds until some endpoint of the ranking may be tried (0 if one may now)."""
        now = self._clock()
        if any(ep.breaker.available(now) for ep in self.ranking):
            return 0.0
        return max(0.0, min(ep.breaker.free_at() for ep in self.ranking) - now)


class _NoEndpoint(Exception):
    def __init__(self, reason: str, *, filtered: bool = False) -> None:
        super().__init__(reason)
        self.filtered = filtered


class _RateLimited(Exception):
    """Every endpoint of a route with a free slot is rate limited past the deadline."""


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
        nothing: _NoEndpoint | None = None
        limited = False
        for i, r in enumerate(chain):
            try:
                return await self._serve(runtime, r, call, attempts)
            except UpstreamError as exc:
                if isinstance(exc, UpstreamHTTPError) and exc.status in CLIENT_FAULT_STATUSES:
                    raise UpstreamClientError(exc) from exc
                if not self._retryable(r, exc):
                    break
            except _NoEndpoint as exc:
                if i == 0:
                    nothing = exc
            except _RateLimited:
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

    async def _ranking(
        self, runtime: Runtime, route: RouteRuntime, call: Call, attempts: Attempts
    ) -> tuple[list[Endpoint], HedgeSection | None]:
        """The ranking, after waiting for a free slot if every endpoint is full."""
        while True:
            ranked = self._rank(runtime, route, call)
            if ranked is not None:
                return ranked
            eps = self._admitted(route, call)
            open_now = [e for e in eps if not e.full()]
            if not open_now:
                await self._wait_for_slot(eps, attempts, route)
                continue
            # Each of them asked for rest (a 429): wait for the first to be free, unless
            # that is past what this request can wait.
            free = min(e.breaker.free_at() for e in open_now)
            if free >= attempts.deadline:
                raise _RateLimited
            await self._sleep(free - runtime.clock())

    def _admitted(self, route: RouteRuntime, call: Call) -> list[Endpoint]:
        prefs = call.prefs
        eps = route.serving[call.api.name]
        if not eps:
            if route.usable:
                raise _NoEndpoint(
                    f"no usable endpoint of route {route.name!r} serves the {call.api.name} API"
                )
            raise _NoEndpoint(f"route {route.name!r} has no usable endpoint (all disabled)")
        if prefs is not None:
            eps = [e for e in eps if prefs.admits(e)]
            if not eps:
                raise _NoEndpoint(
                    f"no endpoint of route {route.name!r} matches the 'provider' filters",
                    filtered=True,
                )
        return eps

    def _rank(
        self, runtime: Runtime, route: RouteRuntime, call: Call
    ) -> tuple[list[Endpoint], HedgeSection | None] | None:
        """The ranking now, or None when every admitted endpoint is at max_concurrency or
        rate limited (sync: no coroutine per request for the usual case, which never waits)."""
        prefs = call.prefs
        eps = self._admitted(route, call)
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
            # not one set aside by a rate limit: it said when to come back (_ranking).
            ready = [e for e in open_now if not e.breaker.is_rate_limited(now)]
            if not ready:
                return None
            ranking = sorted(ready, key=lambda e: e.breaker.until)
            if self.debug:
                log.debug("route_panic", route=route.name, order=[e.id for e in ranking])
        else:
            candidates = route.candidates(avail, now)
            ranked = strategy.rank(candidates, runtime.rng)
            endpoints = route.endpoints
            ranking = [endpoints[c.index] for c in ranked]
            if self.debug:
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
            affinity = call.affinity
            ordered = prefs is not None and bool(prefs.order)  # provider.order wins over it
            if affinity is not None and affinity.route == route.name and not ordered:
                ranking = affinity.order(route, ranking, candidates)
        if prefs is not None and prefs.order:
            first = [
                route.by_id[i]
                for i in prefs.order
                if i in route.by_id and route.by_id[i] in ranking
            ]
            ranking = first + [e for e in ranking if e not in first]
        if prefs is not None and not prefs.allow_fallbacks:
            ranking = ranking[:1]
        return ranking, hedge

    async def _wait_for_slot(
        self, eps: list[Endpoint], attempts: Attempts, route: RouteRuntime
    ) -> None:
        """Every endpoint is at max_concurrency: wait for a slot, up to ttft_s."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        for e in eps:
            e.state.waiters.append(fut)
        limit = min(route.spec.timeouts.ttft_s, attempts.deadline - attempts.clock())
        try:
            await asyncio.wait_for(fut, max(0.0, limit))
        except TimeoutError:
            raise _NoEndpoint(
                f"every endpoint of route {route.name!r} is at max_concurrency"
            ) from None

    async def _serve(
        self, runtime: Runtime, route: RouteRuntime, call: Call, attempts: Attempts
    ) -> Opened:
        ranked = self._rank(runtime, route, call)
        if ranked is None:
            ranked = await self._ranking(runtime, route, call, attempts)
        ranking, hedge = ranked
        if hedge is not None and len(ranking) > 1:
            return await self._retrying(runtime, route, call, attempts, ranking, hedge, None)
        # The usual case: one attempt on the best endpoint, with nothing allocated for
        # retries until it fails. The ranking's head is available and not full: _rank
        # kept only such endpoints (or, all cooling down, put the one due first there).
        try:
            return await attempts.open(route.name, ranking[0])
        except UpstreamError as exc:
            failure = exc
        return await self._retrying(runtime, route, call, attempts, ranking, None, failure)

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
        """Races on the ranking under tenacity, after the first try's ``failure`` if any."""
        retry = route.spec.retry
        budget = _Budget(
            1 if call.prefs is not None and not call.prefs.allow_fallbacks else retry.attempts
        )
        walk = _Walk(ranking, runtime.clock)

        async def one_race() -> Opened:
            budget.spend()
            return await attempts.race(route.name, walk.next(), walk.next, hedge, budget.spend)

        if failure is None:
            try:
                return await one_race()
            except UpstreamError as exc:
                failure = exc
        else:
            # The first try went to the ranking's head: the walk goes on from the second.
            # (Not walk.next(): with the head set aside by that failure, it would skip
            # the second instead, and the retry would go back to the head.)
            walk.skip_head()
            budget.spend()
        if (
            not self._retryable(route, failure)
            or budget.left <= 0
            or attempts.clock() >= attempts.deadline
        ):
            raise failure
        pending: UpstreamError | None = failure

        clock = runtime.clock
        backoff = full_jitter(runtime.rng, retry.backoff_s, retry.backoff_max_s)

        def wait(state: RetryCallState) -> float:
            return max(0.0, min(max(backoff(state), walk.hold()), attempts.deadline - clock()))

        def stop(state: RetryCallState) -> bool:
            # A Retry-After or cooldown that outlasts total_s cannot be waited out:
            # answer now rather than sleep until the deadline and fail anyway.
            return budget.left <= 0 or clock() + walk.hold() >= attempts.deadline

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

    async def relay(
        self,
        opened: Opened,
        deadline: float,
        clock: Clock,
        write: Callable[[bytes], Awaitable[None]],
        finish: Callable[[bytes], Awaitable[None]],
    ) -> None:
        """Writes the committed stream: what was held up to the first token, then the rest.

        The bytes that hold ``[DONE]`` go out through ``finish``, with the end of the
        client's response in the same write (a whole short answer, held up to its first
        token, is then one write). A coroutine that writes, not an async generator that
        yields: no generator protocol per chunk, and the lease still ends in ``finally``
        however it stops.
        """
        lease = opened.lease
        inspector = opened.inspector
        assert inspector is not None and opened.chunks is not None
        if opened.transform is not None:
            # Rewritten on the way (translated, or reasoning left out): the inspector
            # read the upstream's events, the client gets the transform's.
            write, finish = _through(opened.transform, write, finish)
        try:
            if inspector.done:
                await finish(opened.body)
            else:
                if opened.body:
                    await write(opened.body)
                async for data in opened.chunks:
                    try:
                        out = inspector.feed(data)
                    except ProtocolViolation as exc:
                        await write(exc.forward)  # the valid events before the bad one
                        raise
                    if inspector.done:
                        await finish(out)
                        break
                    if out:
                        await write(out)
                    if clock() > deadline:
                        raise TotalTimeout("total_s ran out mid-stream")
                else:
                    tail = inspector.leftover()
                    if tail:
                        await write(tail)
                    if not inspector.done:
                        raise StreamBroken("upstream closed the stream before [DONE]")
            # The client has the whole answer: whatever happens next (it hangs up while
            # the upstream's end is read) does not make it less than delivered.
            opened.delivered = True
            lease.succeed(
                inspector.usage,
                inspector.events,
                inspector.tool_calls_valid(),
                inspector.output_error(),
            )
            try:
                with contextlib.suppress(UpstreamError):
                    # Nothing follows [DONE]: read on to the body's end, so that the
                    # connection goes back to the pool (the idle timer bounds this).
                    async for _ in opened.chunks:
                        pass
            except BaseException:  # cancelled meanwhile: the client hung up
                opened.response.close()
                raise
        except ProtocolViolation as exc:
            err = StreamBroken(str(exc))
            opened.response.close()
            lease.fail(err)
            raise err from exc
        except UpstreamError as exc:
            # Close the upstream too: after an idle or total timeout it is still open.
            opened.response.close()
            lease.fail(exc)
            raise
        finally:
            if not lease.done:
                if inspector.done:
                    lease.succeed(
                        inspector.usage,
                        inspector.events,
                        inspector.tool_calls_valid(),
                        inspector.output_error(),
                    )
                else:
                    opened.abandon()  # the client went away: stop the upstream at once


def full_jitter(rng: random.Random, base: float, cap: float) -> Callable[[RetryCallState], float]:
    """Exponential backoff with full jitter (tenacity's ``wait_random_exponential``),
    drawn from ``rng``: the runtime's, seeded in tests, never the global ``random``.
    Before retry n: uniform in [0, min(cap, base * 2 ** (n - 1))]."""

    def wait(state: RetryCallState) -> float:
        n = min(state.attempt_number, 64)  # 2 ** 64 * base: past any cap, and no overflow
        return rng.uniform(0.0, min(cap, base * 2.0 ** (n - 1)))

    return wait


def _through(
    transform: Transform,
    write: Callable[[bytes], Awaitable[None]],
    finish: Callable[[bytes], Awaitable[None]],
) -> tuple[Callable[[bytes], Awaitable[None]], Callable[[bytes], Awaitable[None]]]:
    async def write_through(data: bytes) -> None:
        out = transform.feed(data)
        if out:
            await write(out)

    async def finish_through(data: bytes) -> None:
        await finish(transform.feed(data))

    return write_through, finish_through
