"""The run-time side of a config: providers, endpoints with their live state, strategies.

A ``Runtime`` is built whole from one ``Config`` and swapped in with one assignment, so a
request sees one consistent config from start to end. What must outlive a reload lives on
``EndpointState`` (stats and breaker), keyed by (route, endpoint id), and providers are
kept when their definition did not change, so their connection pools stay warm.
Providers are made only for endpoints that can be used: a route whose litellm endpoint
has no key never imports litellm.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import orjson

import policies
from policies import Candidate, Strategy
from providers.base import Provider
from router.apis import APIS
from router.apis.translate import Translation
from router.apis.translate import find as find_translation
from router.config import (
    AffinitySection,
    Config,
    EndpointSpec,
    HedgeSection,
    PolicySpec,
    ProviderSpec,
    RouteSpec,
)
from router.state.blend import Prior, loads
from router.state.breaker import CircuitBreaker
from router.state.clock import Clock
from router.state.loads import RouteLoads
from router.state.stats import EndpointStats

RATE_LIMITED = "rate_limited"  # a hard cooldown's reason for a host's Retry-After
SCOPE_SEP = "\x1f"  # between route and endpoint id in a shared cooldown's scope
# Tells the shared state of a hard cooldown: (scope, until as Unix time, reason).
Share = Callable[[str, float, str], None]


def make_provider(spec: ProviderSpec) -> Provider:
    """The provider of a spec: its kind's settings build it (see ``providers.KINDS``)."""
    key = spec.api_key.get_secret_value() if spec.api_key else None
    return spec.section.build(spec.name, key)


@dataclass
class EndpointState:
    """What survives a reload: the endpoint's evidence and its breaker."""

    stats: EndpointStats
    breaker: CircuitBreaker
    waiters: deque[asyncio.Future[None]] = field(default_factory=deque)


class Endpoint:
    """One endpoint of one route, at run time."""

    __slots__ = (
        "breaker", "id", "price", "provider", "scope", "secret", "share", "speaks", "spec",
        "state", "stats", "translations",
    )  # fmt: skip

    def __init__(
        self,
        spec: EndpointSpec,
        provider: Provider | None,
        state: EndpointState,
        share: Share | None = None,
    ) -> None:
        self.spec = spec
        self.id = spec.id
        self.scope = f"{spec.route}{SCOPE_SEP}{spec.id}"  # its name in the shared state
        self.share = share
        self.provider = provider
        self.state = state
        self.stats = state.stats
        self.breaker = state.breaker
        price = spec.price
        self.price = (price.input, price.output) if price else (0.0, 0.0)
        # Its upstream's key, which an answer of that upstream may quote (and nothing
        # else it could know): answers are searched for it before they go out.
        key = spec.provider.api_key.get_secret_value() if spec.provider.api_key else ""
        self.secret = key.encode() if len(key) >= 4 else None
        # The client APIs its host speaks, and how it serves the others it can.
        self.speaks = spec.provider.section.speaks()
        self.translations: dict[str, Translation] = {}
        for api in APIS:
            if api.name not in self.speaks:
                found = find_translation(api.name, self.speaks)
                if found is not None:
                    self.translations[api.name] = found

    def serves(self, api: str) -> bool:
        return api in self.speaks or api in self.translations

    @property
    def usable(self) -> bool:
        return self.provider is not None and self.spec.disabled_reason is None

    def full(self) -> bool:
        limit = self.spec.max_concurrency
        return limit is not None and self.stats.in_flight >= limit

    def hard_cooldown(self, now: float, reason: str, seconds: float) -> None:
        """Put aside for a known time (its key refused, a ``Retry-After``): here at once,
        and on every other replica through the shared state."""
        self.set_aside(now, reason, seconds)
        if self.share is not None:
            self.share(self.scope, time.time() + seconds, reason)

    def set_aside(self, now: float, reason: str, seconds: float) -> bool:
        """A hard cooldown here only (one heard from another replica); False when this
        endpoint was already aside at least as long."""
        breaker = self.breaker
        if breaker.free_at() >= now + seconds:
            return False
        if reason == RATE_LIMITED:
            breaker.rate_limited(now, seconds)  # "not now": no verdict on its health
        else:
            breaker.trip(now, reason, seconds)
        return True

    def wake_one(self) -> None:
        """A slot freed up: let one request waiting for capacity try again."""
        waiters = self.state.waiters
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return


def _cache_read(spec: EndpointSpec) -> float:
    price = spec.price
    if price is None:
        return 0.0
    return price.input if price.cache_read is None else price.cache_read


def _says_caches(spec: EndpointSpec) -> bool:
    return bool(getattr(spec.provider.section, "prompt_cache", None))


class RouteRuntime:
    def __init__(
        self, spec: RouteSpec, endpoints: tuple[Endpoint, ...], policies_: Mapping[str, PolicySpec]
    ) -> None:
        self.spec = spec
        self.name = spec.name
        self.endpoints = endpoints
        self.by_id = {e.id: e for e in endpoints}
        # Fixed for this runtime's life (a key or provider change is a reload): the
        # pipeline's filters read these instead of testing every endpoint per request.
        self.usable = [e for e in endpoints if e.usable]
        # Per client API, the usable endpoints that serve it (natively or translated):
        # the very ``usable`` list when all do, as on most routes.
        self.serving: dict[str, list[Endpoint]] = {}
        for api in APIS:
            some = [e for e in self.usable if e.serves(api.name)]
            self.serving[api.name] = self.usable if len(some) == len(self.usable) else some
        # The client APIs some endpoint serves, usable now or not (a 400 for the others).
        self.apis = frozenset(a.name for a in APIS if any(e.serves(a.name) for e in endpoints))
        self.limited = any(e.spec.max_concurrency is not None for e in self.usable)
        self._policy_specs = policies_
        self._strategies: dict[str, tuple[Strategy, HedgeSection | None]] = {}
        self.prior = Prior()  # the route's best live values, refreshed by every ranking
        self._all = list(endpoints)
        self._live = RouteLoads(
            [e.spec for e in endpoints],
            [e.stats for e in endpoints],
            [e.price for e in endpoints],
            self.prior,
        )
        self.policy = spec.policy
        self.strategy, self.hedge = self.strategy_for(spec.policy.name)
        # Prompt-cache affinity: the endpoints where a cached prefix pays (by index), and
        # what a cached token costs there.
        self.cache_read = [_cache_read(e.spec) for e in endpoints]
        self.caching = frozenset(
            e.spec.index
            for e in endpoints
            if e.usable and (self.cache_read[e.spec.index] < e.price[0] or _says_caches(e.spec))
        )

    def strategy_for(self, policy_name: str) -> tuple[Strategy, HedgeSection | None]:
        """The strategy object of a named policy for this route (made once: it may hold state)."""
        found = self._strategies.get(policy_name)
        if found is None:
            pspec = self._policy_specs.get(policy_name)
            if pspec is None:
                pspec = PolicySpec(policy_name, policy_name)  # a bare strategy name
            strategy = policies.make(pspec.strategy, **pspec.options)
            found = (strategy, pspec.hedge)
            self._strategies[policy_name] = found
        return found

    def affinity_for(self, policy_name: str | None) -> AffinitySection | None:
        """The affinity settings of the policy in effect (the route's, or a request's own)."""
        if policy_name is None:
            return self.policy.affinity
        spec = self._policy_specs.get(policy_name)
        return spec.affinity if spec is not None else None

    def availability(self, now: float) -> tuple[int, int]:
        """(endpoints usable by config, those of them not cooling down): what /health,
        /health/ready and the service status are judged on."""
        usable = available = 0
        for e in self.endpoints:
            if e.usable:
                usable += 1
                if e.breaker.view(now)[0] != "cooldown":
                    available += 1
        return usable, available

    def candidates(self, endpoints: list[Endpoint], now: float) -> Sequence[Candidate]:
        """The live loads of ``endpoints`` (some of this route's, in its order).

        An endpoint due for its half-open probe is explored first, so the probe happens on
        this request. The route's ``RouteLoads`` answers from its cache; where it cannot
        (see ``RouteLoads.at``), ``loads`` computes the candidates directly.
        """
        keys = None if endpoints == self._all else [e.spec.index for e in endpoints]
        forced: Sequence[int] = ()
        for e in endpoints:  # a loop, not a set of states: nothing made per request
            if e.breaker.state != "healthy":  # only then can a probe be due
                forced = [
                    e.spec.index
                    for e in endpoints
                    if e.breaker.state != "healthy" and e.breaker.probe_due(now)
                ]
                break
        live = self._live.at(keys, now, forced)
        if live is not None:
            return live
        out = loads(
            [(e.spec, e.stats) for e in endpoints], now, [e.price for e in endpoints], self.prior
        )
        for c in out:
            if c.index in forced:
                c.explore, c.probing = True, False
        return out


class Runtime:
    """Everything built from one config; replaced whole on reload."""

    def __init__(
        self,
        config: Config,
        routes: dict[str, RouteRuntime],
        providers: dict[str, Provider],
        states: dict[tuple[str, str], EndpointState],
        rng: random.Random,
        clock: Clock,
    ) -> None:
        self.config = config
        self.routes = routes
        self.providers = providers
        self.states = states
        self.rng = rng
        self.clock = clock
        self.route_names = sorted(routes)
        self.keys = config.keys  # name -> the key's routes and limits (``keys:``)
        self.max_body_bytes = int(config.server.max_body_mb * 1024 * 1024)
        self.client_keys = tuple(
            (hashlib.sha256(key.encode()).digest(), name)
            for key, name in config.client_keys.items()
        )
        created = int(config.loaded_at.timestamp())
        models = [
            {"id": name, "object": "model", "created": created, "owned_by": "router"}
            for name in self.route_names
        ]
        self.models_body = orjson.dumps({"object": "list", "data": models})
        # GET /v1/models/{id}: each route's model object, rendered once per config.
        self.model_bodies = {m["id"]: orjson.dumps(m) for m in models}


def build_runtime(
    config: Config,
    previous: Runtime | None = None,
    *,
    rng: random.Random | None = None,
    clock: Clock | None = None,
    provider_factory: Callable[[ProviderSpec], Provider] = make_provider,
    share: Share | None = None,
) -> tuple[Runtime, list[Provider]]:
    """A new runtime, and the providers of ``previous`` that it no longer uses."""
    clock = clock or (previous.clock if previous else time.monotonic)
    rng = rng or (previous.rng if previous else random.Random())
    old_specs = previous.config.providers if previous else {}
    old_providers = previous.providers if previous else {}
    old_states = previous.states if previous else {}

    providers: dict[str, Provider] = {}

    def provider_for(spec: ProviderSpec) -> Provider:
        if spec.name in providers:
            return providers[spec.name]
        old = old_specs.get(spec.name)
        if old is not None and spec.name in old_providers and old.identity() == spec.identity():
            providers[spec.name] = old_providers[spec.name]
        else:
            providers[spec.name] = provider_factory(spec)
        return providers[spec.name]

    states: dict[tuple[str, str], EndpointState] = {}
    routes: dict[str, RouteRuntime] = {}
    for rspec in config.routes.values():
        eps = []
        for espec in rspec.endpoints:
            key = (rspec.name, espec.id)
            state = old_states.get(key)
            if state is None:
                stats = EndpointStats(espec.stats.halflife_s, clock)
                state = EndpointState(stats, CircuitBreaker(espec.breaker, stats.forgive_errors))
            else:
                state.stats.halflife = espec.stats.halflife_s
                state.breaker.reconfigure(espec.breaker)
            states[key] = state
            provider = provider_for(espec.provider) if espec.disabled_reason is None else None
            eps.append(Endpoint(espec, provider, state, share))
        routes[rspec.name] = RouteRuntime(rspec, tuple(eps), config.policies)

    retired = [p for name, p in old_providers.items() if providers.get(name) is not p]
    return Runtime(config, routes, providers, states, rng, clock), retired
