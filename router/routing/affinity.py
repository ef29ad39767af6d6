"""Prompt-cache affinity for one request: find its binding, order the ranking, keep it up.

A policy with ``affinity: {ttl_s}`` binds each conversation (``router.routing.sessions``)
to the endpoint that last served it, in the shared state (Redis across replicas, else this
process), read in the request's one admission round trip. The bound endpoint, when it is
available and ``policies.affinity.keep_bound`` says the cache is worth more than moving to
the ranking's best endpoint with evidence, goes first and the ranking follows as the
failover path; else that best endpoint goes first. The rule's waits come from the live
stats (``waits``): for a stream, each endpoint's TTFTs of cached and of uncached answers,
kept apart; otherwise its latency.

A success binds the conversation to the endpoint that served it (refreshing the TTL),
unless that endpoint was the ranking's exploration pick for a conversation with no
binding: exploring costs one turn, and the next is placed by a ranking that knows more,
rather than the whole conversation staying where an experiment put it. A request that
failed everywhere drops the binding. Writes are queued by the state store: none is
awaited.

Affinity applies only to endpoints where a cache pays: ``price.cache_read`` below
``price.input``, or a provider that says ``prompt_cache: true``. ``provider.order`` in a
request wins over it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from policies.affinity import Stay, Wait, keep_bound, over_horizon, wait_of
from policies.base import Candidate
from router.routing.sessions import prefix_tokens, session_of, user_turns

if TYPE_CHECKING:
    from router.runtime import Endpoint, RouteRuntime
    from router.state.shared import SharedState

HIT, NEW, OFF = "hit", "new", "off"


@dataclass(slots=True)
class Affinity:
    """One request's affinity: where its conversation is bound, and what became of it."""

    key: str  # the binding's key in the shared state
    route: str
    ttl_s: float
    usd_per_s: float
    stay: Stay  # prices filled in from the bound endpoint when one is
    caching: frozenset[int] = frozenset()  # the route's endpoints where a cache pays
    bound: str | None = None  # the endpoint id the conversation is bound to
    first: str | None = None  # the endpoint this request's ranking put first
    trial: str | None = None  # the exploration pick that placed a conversation with no binding
    session: str | None = None  # the conversation (routing.sessions), for the request log

    def order(
        self,
        route: RouteRuntime,
        ranking: list[Endpoint],
        candidates: Sequence[Candidate],
        explores: bool = False,
        now: float = 0.0,
    ) -> list[Endpoint]:
        """The ranking with the bound endpoint first when staying is worth it, else with
        the endpoint the conversation would wait least at first (``_soonest``).
        ``explores``: the strategy ranks on live stats and puts endpoints with stale
        evidence first (``policies.score``, the metric strategies): such a head is an
        experiment, and a new conversation otherwise goes where it would wait least (a
        strategy that does not rank on speed, priority or round robin, places it as it
        ranks). ``now``: when ``candidates`` were read."""
        by_index = {c.index: c for c in candidates}
        bound = route.by_id.get(self.bound) if self.bound is not None else None
        if bound is None or bound not in ranking or bound.spec.index not in route.caching:
            head = by_index.get(ranking[0].spec.index)
            if explores and head is not None and head.explore:
                self.trial = ranking[0].id  # served there, it does not bind (settle)
                return ranking
            best = self._soonest(ranking, by_index, None, now)[0] if explores else None
            return ranking if best is None else [best, *(e for e in ranking if e is not best)]
        mine = by_index.get(bound.spec.index)
        best, best_wait = self._soonest(ranking, by_index, bound, now)
        if mine is not None and best is not None and best_wait is not None:
            price_in, _ = bound.price
            cache_read = route.cache_read[bound.spec.index]
            stay = replace(self.stay, price_in=price_in, price_cache_read=cache_read)
            if not keep_bound(
                waits(bound, mine, self.stay.stream, now),
                best_wait,
                stay,
                self.usd_per_s,
            ):
                return [best, *(e for e in ranking if e is not best)]
        self.first = bound.id
        return [bound, *(e for e in ranking if e is not bound)]

    def _soonest(
        self,
        ranking: list[Endpoint],
        by_index: dict[int, Candidate],
        bound: Endpoint | None,
        now: float,
    ) -> tuple[Endpoint | None, Wait | None]:
        """Where the conversation would wait least over its horizon if it came now, and its
        ``waits`` there: among the ranked endpoints with evidence (not being explored or
        probed: no optimistic prior decides a conversation) and no pricier than the
        ranking's first, other than ``bound``. The ranking's own order is one request's
        view (its estimate mixes cached and uncached answers, believes every hiccup, draws
        between near-equals), a fine failover path but a poor judge of where a conversation
        should live."""
        head = by_index.get(ranking[0].spec.index)
        ceiling = head.price if head is not None else 0.0
        best, best_wait, least = None, None, 0.0
        for e in ranking:
            c = by_index.get(e.spec.index)
            if e is bound or c is None or c.explore or c.probing or c.price > ceiling:
                continue
            w = waits(e, c, self.stay.stream, now)
            wait = over_horizon(w, self.stay.turns)
            if best is None or wait < least:
                best, best_wait, least = e, w, wait
        return best, best_wait

    def verdict(self, served: str | None) -> str:
        """``hit`` when the bound endpoint served; ``new`` otherwise."""
        return HIT if served is not None and served == self.bound else NEW

    def settle(self, state: SharedState, served: Endpoint | None) -> None:
        """Bind the conversation where this route served it, if a cache pays there (a
        fallback route's endpoint is not bound, nor an exploration pick that placed a
        conversation with no binding); drop the binding when nothing served."""
        if served is not None:
            if served.id == self.trial:
                return
            if served.spec.route == self.route and served.spec.index in self.caching:
                state.bind(self.key, served.id, self.ttl_s)
        elif self.bound is not None:
            state.unbind(self.key)


def waits(endpoint: Endpoint, candidate: Candidate, stream: bool, now: float) -> Wait:
    """What a turn at ``endpoint`` is expected to wait with its prompt cached and without.

    A stream's are the medians of the endpoint's last few TTFTs of cached and of uncached
    answers (``Recent``: a move re-buys a prefix, so one hiccup must not make it; a host
    that turned slow shows it within a few answers). Where cached answers have not been
    seen there, the uncached wait (no cache is assumed to shorten it); where neither has,
    the ranking's TTFT estimate. Not that estimate otherwise: it mixes the two kinds, and
    rises to the age of any request still waiting for its first token, which on a host
    busy with others' first turns is most of the time. A request waiting longer than an
    uncached turn takes does say the host got slower: both waits scale by how much.
    Otherwise (not a stream) the ranking's latency estimate, for both.
    """
    if not stream:
        return wait_of(candidate.latency_s, candidate.latency_s, candidate.error_rate)
    st = endpoint.stats
    cached, fresh = st.ttft_cached.median, st.ttft_fresh.median
    if fresh is None:
        fresh = max(candidate.ttft_s, cached or 0.0)
    if cached is None:
        cached = fresh
    since = st.waiting_since
    if since is not None and fresh > 0.0 and now - since > fresh:
        slower = (now - since) / fresh
        cached, fresh = cached * slower, fresh * slower
    return wait_of(cached, fresh, candidate.error_rate)


def plan(
    route: RouteRuntime,
    settings: Any,
    api: str,
    payload: Mapping[str, Any],
    headers: Mapping[str, str],
    body_size: int,
    stream: bool,
) -> Affinity | None:
    """The request's affinity under ``settings`` (a policy's ``affinity``), or None when
    the policy has none, no endpoint of the route caches, or the request is an
    embedding (no conversation: every one would share one binding)."""
    if settings is None or not route.caching or api == "embeddings":
        return None
    session = session_of(route.name, api, payload, headers)
    stay = Stay(
        prefix_tokens=prefix_tokens(body_size),
        price_in=0.0,
        price_cache_read=0.0,
        turns=user_turns(api, payload),
        stream=stream,
    )
    return Affinity(
        key=f"aff:{route.name}:{session}",
        route=route.name,
        ttl_s=settings.ttl_s,
        usd_per_s=settings.usd_per_s,
        stay=stay,
        caching=route.caching,
        session=session,
    )
