"""One upstream attempt, from sending to its first token, and the race that hedges it.

An attempt holds a ``Lease`` on its endpoint for as long as it lives (``lease.py``),
which ends once with the outcome, whichever way the attempt ends.

An attempt is *open* once it has a first token (streams) or its whole body (non-streams):
only then may the pipeline commit it to the client. ``race`` runs one attempt and, when
the policy hedges, starts the next-ranked endpoint as well if no first token has arrived
by the hedge delay; the first to open wins, the others are cancelled.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson

from providers.base import UpstreamRequest, UpstreamResponse
from providers.errors import (
    IdleTimeout,
    TotalTimeout,
    TTFTTimeout,
    UnsupportedField,
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
from router.errors import BadRequest
from router.obs.logs import REQUEST, RequestContext
from router.requestlog.records import AttemptRecord, Usage
from router.routing.lease import RATE_LIMIT_DEFAULT_S, Lease
from router.routing.sse import ProtocolViolation
from router.runtime import Endpoint
from router.state.clock import Clock

HEDGE_LOST = "hedge_lost"


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
        api: ClientApi,
        payload: dict[str, Any],
        stream: bool,
        client_wants_usage: bool,
        request_id: str,
        deadline: float,
        clock: Clock,
        headers: dict[str, str] | None = None,
        reasoning: Reasoning | None = None,
        context: RequestContext | None = None,
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
        self.context = context  # the request's log fields: this attempt's endpoint and number

    async def open(
        self, route: str, ep: Endpoint, *, hedged: bool = False, racing: bool = False
    ) -> Opened:
        """Send to ``ep`` and wait for its first token (or whole body); ``racing``: as one
        of several attempts at once, in a task of its own."""
        assert ep.provider is not None
        self.count += 1
        ctx = self.context
        if ctx is not None:
            if racing:  # its own fields, in its own task's context
                ctx = ctx.fork()
                REQUEST.set(ctx)
            ctx.route, ctx.endpoint, ctx.attempt = route, ep.id, self.count
        ttft = ep.spec.timeouts.ttft_s
        budget = self.deadline - self.clock()
        bound_by_total = budget < ttft
        api, payload, json, translation, dropped = self._way(ep)
        # An HTTP provider's own timer holds ttft_s (to the first token, or a non-streamed
        # answer's head) and total_s as deadlines from sending, whatever the upstream's
        # pace. Only other providers need a timer of ours (an asyncio.timeout per attempt).
        native = ep.provider.native_timeouts
        request = self._request(ep, api, payload, translation is None, budget, native)
        lease = Lease(ep, self.clock)
        try:
            try:
                # Sent, then read up to the first token or the whole body (what ttft_s bounds);
                # sent here, not in _answer: an await level less (~570 instructions a request).
                if native:  # no ``async with`` at all (it cost ~2,800 instructions a request)
                    response = await ep.provider.send(request)
                    opened = await self._answer(
                        route, ep, lease, response, hedged, api, payload, json, translation
                    )
                else:
                    async with asyncio.timeout(max(0.0, min(ttft, budget))):
                        response = await ep.provider.send(request)
                        opened = await self._answer(
                            route, ep, lease, response, hedged, api, payload, json, translation
                        )
            except TimeoutError as exc:
                if bound_by_total:
                    raise TotalTimeout(f"total_s ran out waiting for {ep.id}") from exc
                raise TTFTTimeout(f"no first token from {ep.id} within {ttft}s") from exc
            except ProtocolViolation as exc:
                raise UpstreamProtocolError(str(exc)) from exc
        except UpstreamError as exc:
            # exc itself, or what it became (chained to it): no new cause to name
            raise self._failed(route, ep, lease, exc, hedged, translation)  # noqa: B904
        except orjson.JSONEncodeError as exc:
            # The client's JSON nests deeper than an encoder goes (orjson: 254 levels; a
            # decoder takes 1,024): it cannot be sent anywhere. The client's error.
            self._cancelled(route, ep, lease, exc, hedged)
            raise BadRequest(f"the request's JSON cannot be forwarded: {exc}") from exc
        except BaseException as exc:
            # Cancelled (a hedge won, the client left) or a bug: never leak the slot.
            self._cancelled(route, ep, lease, exc, hedged)
            raise
        self._record(route, ep, lease, opened.response.status, None, hedged)
        if translation is not None or (self.reasoning is not None and not self.reasoning.show):
            self._transform(opened, translation, dropped)
        return opened

    def _cancelled(
        self,
        route: str,
        ep: Endpoint,
        lease: Lease,
        exc: BaseException,
        hedged: bool,
    ) -> None:
        """An attempt given up (a hedge lost, the client left) or broken by a bug."""
        lost = isinstance(exc, asyncio.CancelledError) and exc.args == (HEDGE_LOST,)
        lease.cancel(censored=lost)
        self._record(route, ep, lease, None, "hedge_lost" if lost else "cancelled", hedged)

    def _transform(
        self, opened: Opened, translation: Translation | None, dropped: list[str] | None
    ) -> None:
        """What rewrites the answer for the client: the translation back to its API, and
        the reasoning text left out when it asked so."""
        if translation is not None:
            opened.transform = translation.transform(self.payload, self.client_wants_usage)
            opened.dropped = dropped
        if self.reasoning is not None and not self.reasoning.show:
            thoughts: Transform = Thoughts(self.api.name)
            if opened.transform is not None:
                thoughts = Chained(opened.transform, thoughts)
            opened.transform = thoughts

    def _request(
        self,
        ep: Endpoint,
        api: ClientApi,
        payload: dict[str, Any],
        native_api: bool,
        budget: float,
        native: bool,
    ) -> UpstreamRequest:
        """What ``ep`` is sent, in ``api`` (the client's own when ``native_api``)."""
        timeouts = ep.spec.timeouts
        ttft = timeouts.ttft_s
        # By position, in the fields' order: keywords cost a dict per call to a class.
        return UpstreamRequest(
            api.operation,
            payload,
            self.stream,
            self.request_id,
            self.headers if native_api else None,
            timeouts.connect_s,
            max(ttft, timeouts.idle_s) if self.stream and not native else ttft,  # read_s
            ttft,  # first_s
            budget if budget > 0.0 else 0.0,  # total_s (a compare: max() parses keywords per call)
        )

    def _failed(
        self,
        route: str,
        ep: Endpoint,
        lease: Lease,
        exc: UpstreamError,
        hedged: bool,
        translation: Translation | None,
    ) -> UpstreamError:
        """The attempt's failure, as the endpoint's (recorded, and its lease ended)."""
        if translation is not None and isinstance(exc, UpstreamHTTPError) and exc.body:
            exc.body = translation.error(exc.status or 500, exc.body)  # the client's shape
        if self.reasoning is not None and _refused_reasoning(exc):
            # The host lacks the reasoning field it was sent: its failure, not the
            # client's, so the request fails over rather than ending in a 400.
            refused = UnsupportedField(f"{ep.id} refused the reasoning field (HTTP 400)")
            refused.__cause__ = exc
            exc = refused
        exc.endpoint = ep.id
        lease.fail(exc)
        self._record(route, ep, lease, exc.status, exc.reason, hedged)
        return exc

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

    async def _answer(
        self,
        route: str,
        ep: Endpoint,
        lease: Lease,
        response: UpstreamResponse,
        hedged: bool,
        api: ClientApi,
        payload: dict[str, Any],
        json: bool,
        translation: Translation | None,
    ) -> Opened:
        """Reads up to the first token (a stream) or the whole body (else); closes the
        response when that fails."""
        try:
            if not self.stream:
                body = await response.read()
                usage, tools_ok, broken = api.inspect_body(body, json)
                lease.succeed(usage, 0, tools_ok, broken)
                return Opened(ep, route, lease, response, body, None, None, usage, hedged)
            # A translated stream's usage feeds the translation, not the client.
            wants_usage = self.client_wants_usage or translation is not None
            inspector = api.inspector(payload, wants_usage, json)
            limit = lease.started + ep.spec.timeouts.ttft_s  # on the clock
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
            joined = b"".join(held)
            return Opened(ep, route, lease, response, joined, inspector, chunks, None, hedged)
        except BaseException:
            response.close()
            raise

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
            AttemptRecord(  # by position, as UpstreamRequest above
                route,
                ep.id,
                status,
                reason,
                (now - lease.started) * 1000.0,  # duration_ms
                hedged,
                None if ttft is None else (ttft - lease.started) * 1000.0,  # ttft_ms
            )
        )


def _refused_reasoning(exc: UpstreamError) -> bool:
    return (
        isinstance(exc, UpstreamHTTPError)
        and exc.status in (400, 422)
        and reasoning_refused(exc.body)
    )


def _no_first_token(ep: Endpoint) -> TTFTTimeout:
    return TTFTTimeout(f"no first token from {ep.id} within {ep.spec.timeouts.ttft_s}s")


__all__ = ["HEDGE_LOST", "RATE_LIMIT_DEFAULT_S", "Attempts", "Lease", "Opened"]
