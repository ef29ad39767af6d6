"""One upstream attempt, from sending to its first token, and the race that hedges it.

An attempt holds a ``Lease`` on its endpoint for as long as it lives: the in-flight
count, the breaker's half-open probe slot and the stats token. The lease ends exactly
once, with the outcome, whichever way the attempt ends: answered, failed, timed out,
cancelled by a hedge winner or by a client that went away (tower's ``Handle::drop``).

An attempt is *open* once it has a first token (streams) or its whole body (non-streams):
only then may the pipeline commit it to the client. ``race`` runs one attempt and, when
the policy hedges, starts the next-ranked endpoint as well if no first token has arrived
by the hedge delay; the first to open wins, the others are cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from providers.base import UpstreamRequest, UpstreamResponse
from providers.errors import (
    IdleTimeout,
    StreamBroken,
    TotalTimeout,
    TTFTTimeout,
    UnsupportedField,
    UpstreamConnectError,
    UpstreamError,
    UpstreamHTTPError,
    UpstreamProtocolError,
)
from router.apis import BY_NAME
from router.apis.base import Chained, ClientApi, Inspector, Transform
from router.apis.reasoning import Reasoning, form_for
from router.apis.reasoning import apply as apply_reasoning
from router.apis.reasoning import rejected as reasoning_refused
from router.apis.thoughts import Thoughts
from router.apis.translate import Translation
from router.config import HedgeSection
from router.errors import CLIENT_FAULT_STATUSES
from router.requestlog.records import AttemptRecord, Usage
from router.routing.sse import ProtocolViolation
from router.runtime import RATE_LIMITED, Endpoint
from router.state.clock import Clock

HEDGE_LOST = "hedge_lost"
# How long a 429 without a Retry-After sets its endpoint aside (docs/limits.md): about
# what OpenAI's SDKs wait before their first retry, doubled.
RATE_LIMIT_DEFAULT_S = 1.0
_NO_TIMER = contextlib.nullcontext()


class Lease:
    """An attempt's claim on an endpoint; ``end`` runs once, whatever the outcome."""

    __slots__ = (
        "_done",
        "_token",
        "clock",
        "ended",
        "endpoint",
        "first_token_at",
        "output_error",
        "started",
        "tool_calls_valid",
    )

    def __init__(self, endpoint: Endpoint, clock: Clock) -> None:
        self.endpoint = endpoint
        self.clock = clock
        self.started = clock()
        self.first_token_at: float | None = None
        self.ended: float | None = None  # when it succeeded: a stream's whole span with started
        self.output_error: str | None = None  # why a 200 answer was broken, once it ended
        self.tool_calls_valid: bool | None = None
        self._token = endpoint.stats.start()
        endpoint.breaker.acquire(self.started)
        self._done = False

    def first_token(self) -> None:
        """A stream's first token arrived. A non-streamed answer has none: its first byte
        comes after the whole generation, so it gives no TTFT anywhere (stats, log, metrics)."""
        if self.first_token_at is None:
            self.first_token_at = now = self.clock()
            self.endpoint.stats.first_token(self._token, now)

    def succeed(
        self,
        usage: Usage | None,
        events: int,
        tool_calls_valid: bool | None,
        output_error: str | None = None,
    ) -> None:
        if self._done:
            return
        self._done = True
        self.output_error = output_error
        self.tool_calls_valid = tool_calls_valid
        now = self.ended = self.clock()
        ep = self.endpoint
        first = self.first_token_at
        tokens = usage.completion_tokens if usage and usage.completion_tokens else events
        # Tokens per second after the first token for a stream; for a non-streamed answer
        # (no first token) over the whole answer, the only span it shows.
        ep.stats.finish(
            self._token,
            ok=True,
            latency_s=now - self.started,
            completion_tokens=tokens,
            generation_s=(now - first) if first is not None and now > first else now - self.started,
            tool_calls_valid=tool_calls_valid,
            output_ok=output_error is None,
        )
        ep.breaker.success(now)
        ep.wake_one()

    def fail(self, exc: UpstreamError) -> None:
        if self._done:
            return
        self._done = True
        now = self.clock()
        ep = self.endpoint
        status = exc.status
        if status in CLIENT_FAULT_STATUSES:
            # The request was at fault, not the endpoint: no verdict on its health.
            ep.stats.finish(self._token, ok=None)
            ep.breaker.release_probe()
        else:
            # A 200 that broke (cut short, not the protocol) is an output error too.
            broken = isinstance(exc, StreamBroken | UpstreamProtocolError)
            if broken:
                self.output_error = exc.reason
            ep.stats.finish(
                self._token, ok=False, error=exc.reason, output_ok=False if broken else None
            )
            if status in (401, 403):
                ep.hard_cooldown(now, "auth", ep.spec.breaker.cooldown_s)
            elif isinstance(exc, UpstreamConnectError) and exc.refused:
                # Nothing listens at that address: waiting for more failures would only
                # send more requests to a host that is certainly down.
                ep.breaker.failure(now, exc.reason)
                ep.breaker.trip(now, "connect: connection refused", ep.spec.breaker.cooldown_s)
            elif status == 429:
                # "Not now", not "broken": set aside for its Retry-After, no breaker verdict
                # (a 429 counted as a failure escalated the cooldown to minutes).
                wait = exc.retry_after_s if isinstance(exc, UpstreamHTTPError) else None
                ep.hard_cooldown(now, RATE_LIMITED, RATE_LIMIT_DEFAULT_S if wait is None else wait)
            elif isinstance(exc, UpstreamHTTPError) and exc.retry_after_s:
                ep.breaker.failure(now, exc.reason)  # a 503 asking for time: both
                ep.hard_cooldown(now, RATE_LIMITED, exc.retry_after_s)
            else:
                ep.breaker.failure(now, exc.reason)
        ep.wake_one()

    def cancel(self, *, censored: bool = False) -> None:
        """Ended without a verdict: a hedge lost, or the client went away.

        A hedge loser still waiting for its first token has shown that its TTFT is at
        least its age: that lower bound goes into the stats (``censored``), so the peak
        rule marks the slow endpoint as slow.
        """
        if self._done:
            return
        self._done = True
        if censored and self.first_token_at is None:
            self.endpoint.stats.first_token(self._token, self.clock())
        self.endpoint.stats.finish(self._token, ok=None)
        self.endpoint.breaker.release_probe()
        self.endpoint.wake_one()

    @property
    def done(self) -> bool:
        return self._done


@dataclass(slots=True)
class Opened:
    """An attempt that may be committed to the client."""

    endpoint: Endpoint
    route: str
    lease: Lease
    response: UpstreamResponse
    body: bytes  # the whole answer (non-stream) or the bytes up to the first token (stream)
    inspector: Inspector | None
    chunks: AsyncIterator[bytes] | None
    usage: Usage | None
    hedged: bool
    transform: Transform | None = None  # rewrites the answer for the client (None: as it came)
    delivered: bool = False  # a stream's end has gone to the client (relay)
    dropped: list[str] | None = None  # what a translation could not carry (x-router-dropped)

    def abandon(self) -> None:
        self.response.close()
        self.lease.cancel()


class Attempts:
    """Runs attempts for one request and keeps their records."""

    def __init__(
        self,
        *,
        api: ClientApi,
        payload: dict[str, Any],
        stream: bool,
        client_wants_usage: bool,
        request_id: str,
        deadline: float,
        clock: Clock,
        headers: dict[str, str] | None = None,
        reasoning: Reasoning | None = None,
    ) -> None:
        self.api = api
        self.reasoning = reasoning  # the request's reasoning ask, sent in each host's form
        self.operation = api.operation
        self.headers = headers
        self.payload = payload
        self.stream = stream
        self.client_wants_usage = client_wants_usage
        self.request_id = request_id
        self.deadline = deadline
        self.clock = clock
        self.json = api.wants_json(payload)  # the answer must be JSON: judge the output
        self.records: list[AttemptRecord] = []
        self.count = 0
        self.hedges = 0

    async def open(self, route: str, ep: Endpoint, *, hedged: bool = False) -> Opened:
        """Send to ``ep`` and wait for its first token (or whole body)."""
        assert ep.provider is not None
        self.count += 1
        timeouts = ep.spec.timeouts
        now = self.clock()
        budget = self.deadline - now
        ttft = timeouts.ttft_s
        bound_by_total = budget < ttft
        streamed = self.stream
        api, payload, json, translation, dropped = self._way(ep)
        # An HTTP provider's own timer holds ttft_s (to the first token, or a non-streamed
        # answer's head) and total_s as deadlines from sending, whatever the upstream's
        # pace. Only other providers need a timer of ours (an asyncio.timeout per attempt).
        native = ep.provider.native_timeouts
        request = UpstreamRequest(
            operation=api.operation,
            payload=payload,
            stream=self.stream,
            request_id=self.request_id,
            headers=self.headers if translation is None else None,
            connect_s=timeouts.connect_s,
            read_s=max(ttft, timeouts.idle_s) if streamed and not native else ttft,
            first_s=ttft,
            total_s=max(0.0, budget),
        )
        lease = Lease(ep, self.clock)
        response: UpstreamResponse | None = None
        try:
            try:
                async with _NO_TIMER if native else asyncio.timeout(max(0.0, min(ttft, budget))):
                    response = await ep.provider.send(request)
                    if streamed:
                        # A translated stream's usage feeds the translation, not the client.
                        wants_usage = self.client_wants_usage or translation is not None
                        inspector = api.inspector(payload, wants_usage, json)
                        opened = await self._first_token(
                            route, ep, lease, response, hedged, lease.started + ttft, inspector
                        )
                    else:
                        body = await response.read()
                        usage, tools_ok, broken = api.inspect_body(body, json)
                        lease.succeed(usage, 0, tools_ok, broken)
                        opened = Opened(ep, route, lease, response, body, None, None, usage, hedged)
            except TimeoutError as exc:
                if bound_by_total:
                    raise TotalTimeout(f"total_s ran out waiting for {ep.id}") from exc
                raise TTFTTimeout(f"no first token from {ep.id} within {ttft}s") from exc
            except ProtocolViolation as exc:
                raise UpstreamProtocolError(str(exc)) from exc
        except UpstreamError as exc:
            if translation is not None and isinstance(exc, UpstreamHTTPError) and exc.body:
                exc.body = translation.error(exc.status or 500, exc.body)  # the client's shape
            if self.reasoning is not None and _refused_reasoning(exc):
                # The host lacks the reasoning field it was sent: its failure, not the
                # client's, so the request fails over rather than ending in a 400.
                refused = UnsupportedField(f"{ep.id} refused the reasoning field (HTTP 400)")
                refused.__cause__ = exc
                exc = refused
            exc.endpoint = ep.id
            if response is not None:
                response.close()
            lease.fail(exc)
            self._record(route, ep, lease, exc.status, exc.reason, hedged)
            raise exc
        except BaseException as exc:
            # Cancelled (a hedge won, the client left) or a bug: never leak the slot.
            if response is not None:
                response.close()
            lost = isinstance(exc, asyncio.CancelledError) and exc.args == (HEDGE_LOST,)
            lease.cancel(censored=lost)
            self._record(route, ep, lease, None, "hedge_lost" if lost else "cancelled", hedged)
            raise
        self._record(route, ep, lease, response.status, None, hedged)
        if translation is not None:
            opened.transform = translation.transform(self.client_wants_usage)
            opened.dropped = dropped
        if self.reasoning is not None and not self.reasoning.show:
            thoughts: Transform = Thoughts(self.api.name)
            if opened.transform is not None:
                thoughts = Chained(opened.transform, thoughts)
            opened.transform = thoughts
        return opened

    def _way(
        self, ep: Endpoint
    ) -> tuple[ClientApi, dict[str, Any], bool, Translation | None, list[str] | None]:
        """How this attempt speaks to ``ep``: the API its host is spoken to in (the
        client's, or the one a translation goes to), the body it gets, whether its answer
        must be JSON, the translation if any, and what that could not carry."""
        if self.api.name in ep.speaks:
            api, payload = self.api, dict(self.payload)
            translation, dropped = None, None
        else:  # the pipeline admits only endpoints that serve the API one way or the other
            translation = ep.translations[self.api.name]
            payload, dropped = translation.request(self.payload)
            api = BY_NAME[translation.upstream]
        payload["model"] = ep.spec.model
        if self.reasoning is not None:
            spec = ep.spec.provider
            form = form_for(spec.kind, getattr(spec.section, "reasoning", None), ep.spec.model)
            if translation is not None and form == "passthrough":
                # The client's own form means nothing to a host of another API: its own.
                form = "anthropic" if api.name == "messages" else "openai"
            apply_reasoning(payload, self.reasoning, form, api.name)
        json = self.json if translation is None else api.wants_json(payload)
        return api, payload, json, translation, dropped

    async def _first_token(
        self,
        route: str,
        ep: Endpoint,
        lease: Lease,
        response: UpstreamResponse,
        hedged: bool,
        limit: float,
        inspector: Inspector,
    ) -> Opened:
        """Reads up to the first token, by ``limit`` on the clock."""
        chunks = response.chunks().__aiter__()
        held: list[bytes] = []
        try:
            async for data in chunks:
                out = inspector.feed(data)
                if out:
                    held.append(out)
                if inspector.first_token:
                    break
                if self.clock() > limit:
                    raise _no_first_token(ep)
            else:
                tail = inspector.leftover()
                if tail:
                    held.append(tail)
                if not inspector.done:
                    raise ProtocolViolation("stream ended before its first token")
        except IdleTimeout as exc:  # the provider's silence timer, set to ttft_s
            raise _no_first_token(ep) from exc
        lease.first_token()
        response.set_idle_timeout(ep.spec.timeouts.idle_s)
        return Opened(ep, route, lease, response, b"".join(held), inspector, chunks, None, hedged)

    def _record(
        self,
        route: str,
        ep: Endpoint,
        lease: Lease,
        status: int | None,
        reason: str | None,
        hedged: bool,
    ) -> None:
        now = self.clock()
        ttft = lease.first_token_at
        self.records.append(
            AttemptRecord(
                route=route,
                endpoint=ep.id,
                status=status,
                reason=reason,
                duration_ms=(now - lease.started) * 1000.0,
                hedged=hedged,
                ttft_ms=None if ttft is None else (ttft - lease.started) * 1000.0,
            )
        )

    async def race(
        self,
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
            return await self.open(route, first)
        delay = hedge_delay(hedge, first)
        tasks: set[asyncio.Task[Opened]] = {asyncio.ensure_future(self.open(route, first))}
        extra = 0
        last: BaseException | None = None
        won = False
        try:
            while tasks:
                can_hedge = extra < hedge.max_extra
                done, _ = await asyncio.wait(
                    tasks,
                    timeout=delay if can_hedge else None,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if not done:
                    ep = next_endpoint() if spend() else None
                    extra += 1
                    if ep is not None:
                        self.hedges += 1
                        tasks.add(asyncio.ensure_future(self.open(route, ep, hedged=True)))
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


def _refused_reasoning(exc: UpstreamError) -> bool:
    return (
        isinstance(exc, UpstreamHTTPError)
        and exc.status in (400, 422)
        and reasoning_refused(exc.body)
    )


def _no_first_token(ep: Endpoint) -> TTFTTimeout:
    return TTFTTimeout(f"no first token from {ep.id} within {ep.spec.timeouts.ttft_s}s")


def hedge_delay(hedge: HedgeSection, ep: Endpoint) -> float:
    """Seconds to wait for a first token before hedging; a percentile of live TTFT if asked."""
    if hedge.after is not None:
        q = {"p50": 0.5, "p90": 0.9, "p95": 0.95, "p99": 0.99}[hedge.after]
        live = ep.stats.ttft_percentile(q)
        if live is not None and ep.stats.ttft_window_size() >= 20:
            return live
    return hedge.after_ms / 1000.0
