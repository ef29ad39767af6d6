"""The live service state: the current runtime, reloads, and what outlives requests.

A reload reads and validates the whole file first; only a valid config becomes a new
``Runtime``, swapped in with one assignment, so requests in flight finish on the runtime
they started with and a broken file never replaces a working one. The file is watched by
polling its (inode, size, mtime): it costs one ``stat`` every half second, needs no
dependency, and sees editors that save by rename as well as those that write in place.
A half-written file fails validation or changes again before the next poll, so it is
never applied as valid.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog

from providers.base import Provider
from router.config import Config, ConfigError, load
from router.obs.logs import REDACTOR
from router.obs.minutes import recent
from router.obs.series import SeriesBook
from router.requestlog.records import RequestRecord
from router.runtime import SCOPE_SEP, RouteRuntime, Runtime, build_runtime
from router.state.clock import Clock
from router.state.shared import SharedState, make_state
from router.state.shared.memory import MemoryState

log = structlog.get_logger("router.service")

Sink = Callable[[RequestRecord], None]


@dataclass(slots=True)
class ReloadResult:
    ok: bool
    version: str | None
    errors: list[str]


class Service:
    def __init__(self, config_path: str, *, clock: Clock = time.monotonic) -> None:
        self.config_path = config_path
        self.clock = clock
        self.runtime: Runtime | None = None
        self.last_error: list[str] | None = None
        self.last_error_at: datetime | None = None
        self.sinks: list[Sink] = []
        self.on_reload: list[Callable[[bool], None]] = []
        self.in_flight = 0
        # The request log's writer once it is started (router.app): /health shows it.
        self.requestlog: Any = None
        self.series: SeriesBook | None = None  # the model page's series, when kept
        self._stamp: tuple[int, int, int] | None = None
        self._retired: set[asyncio.Task[None]] = set()
        # Limits, budgets, bindings and hard cooldowns: in this process until a config
        # names a Redis (state.url_env); replaced only when that part of the config changes.
        self.state: SharedState = MemoryState()
        self._state_made_from: tuple[Any, ...] | None = None
        self._state_started = False

    @property
    def config(self) -> Config | None:
        return self.runtime.config if self.runtime else None

    def _file_stamp(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.config_path)
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def reload(self, reason: str = "manual") -> ReloadResult:
        stamp = self._file_stamp()
        try:
            config = load(self.config_path)
        except ConfigError as exc:
            self._stamp = stamp
            self.last_error = exc.problems
            self.last_error_at = datetime.now(UTC)
            log.error("config_invalid", path=self.config_path, reason=reason, errors=exc.problems)
            for hook in self.on_reload:
                hook(False)
            return ReloadResult(False, None, exc.problems)
        self._stamp = stamp
        previous = self.runtime
        self._apply_state(config)
        runtime, retired = build_runtime(
            config, previous, clock=self.clock, share=self._share_cooldown
        )
        self.runtime = runtime
        for scope, (until, reason) in self.state.cooldowns().items():
            self._heard_cooldown(scope, until, reason)  # for endpoints new in this config
        self.last_error = None
        self.last_error_at = None
        REDACTOR.update(config.secrets())
        for provider in retired:
            self._retire(provider, previous)
        log.info(
            "config_loaded",
            path=self.config_path,
            version=config.version,
            reason=reason,
            routes=len(config.routes),
        )
        for warning in config.warnings:
            log.warning("config_warning", path=self.config_path, warning=warning)
        for hook in self.on_reload:
            hook(True)
        return ReloadResult(True, config.version, [])

    # -- shared state -------------------------------------------------------------------

    def _apply_state(self, config: Config) -> None:
        """A new store when ``state:`` changed (the first reload included); the old one
        writes what it holds and closes in the background."""
        url = config.state_url.get_secret_value() if config.state_url else None
        section = config.state
        made_from = (url, section.on_error, section.prefix, section.timeout_ms, section.allowances)
        lease_s = max((r.timeouts.total_s for r in config.routes.values()), default=600.0) + 60
        if made_from == self._state_made_from:
            return
        old, started = self.state, self._state_started
        self.state = make_state(
            url,
            on_error=section.on_error,
            prefix=section.prefix,
            timeout_s=section.timeout_ms / 1000.0,
            lease_s=lease_s,
            allowances=section.allowances,
        )
        self.state.watch_cooldowns(self._heard_cooldown)
        self._state_made_from = made_from
        self._state_started = False
        log.info("state_store", mode=self.state.mode, on_error=section.on_error)
        if started:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return
            task = loop.create_task(self._swap_state(old))
            self._retired.add(task)
            task.add_done_callback(self._retired.discard)

    async def _swap_state(self, old: SharedState) -> None:
        await self.start_state()
        await old.aclose()

    async def start_state(self) -> None:
        """Connect the store and start its background work (once per store)."""
        if not self._state_started:
            self._state_started = True
            await self.state.start()

    def _share_cooldown(self, scope: str, until: float, reason: str) -> None:
        self.state.cool(scope, until, reason)

    def _heard_cooldown(self, scope: str, until: float, reason: str) -> None:
        """Another replica put an endpoint aside (its key refused, a ``Retry-After``):
        so does this one, for the same time."""
        runtime = self.runtime
        if runtime is None:
            return
        route_name, _, endpoint_id = scope.partition(SCOPE_SEP)
        route = runtime.routes.get(route_name)
        endpoint = route.by_id.get(endpoint_id) if route is not None else None
        seconds = until - time.time()
        if endpoint is None or not endpoint.usable or seconds <= 0:
            return
        if not endpoint.set_aside(self.clock(), reason, seconds):
            return  # already aside as long (its own trip, heard back)
        log.info(
            "cooldown_shared",
            route=route_name,
            endpoint=endpoint_id,
            reason=reason,
            seconds=round(seconds, 3),
        )

    def _retire(self, provider: Provider, previous: Runtime | None) -> None:
        """Close a provider the new config no longer uses, once its requests are done."""
        grace = 600.0
        if previous is not None:
            grace = max((r.spec.timeouts.total_s for r in previous.routes.values()), default=grace)

        async def close_when_idle() -> None:
            deadline = self.clock() + grace
            users = [
                e
                for r in (previous.routes.values() if previous else ())
                for e in r.endpoints
                if e.provider is provider
            ]
            # Polling is fine here: a rare, slow path with no event to wait on.
            while any(e.stats.in_flight for e in users) and self.clock() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.5)
            await provider.aclose()

        try:
            task = asyncio.get_running_loop().create_task(close_when_idle())
        except RuntimeError:
            return  # no loop (router check): nothing open to close
        self._retired.add(task)
        task.add_done_callback(self._retired.discard)

    async def watch(self, interval: float = 0.5) -> None:
        """Reload when the file changes (runs for the life of the app)."""
        while True:
            await asyncio.sleep(interval)
            stamp = self._file_stamp()
            if stamp is not None and stamp != self._stamp:
                # Let a writer finish: wait until the stamp holds still for one interval.
                await asyncio.sleep(min(interval, 0.2))
                if self._file_stamp() != stamp:
                    continue
                self.reload("file changed")

    def emit(self, record: RequestRecord) -> None:
        for sink in self.sinks:
            try:
                sink(record)
            except Exception:  # a broken sink must never fail a request
                log.exception("sink_failed", sink=getattr(sink, "__qualname__", repr(sink)))

    async def aclose(self) -> None:
        for task in list(self._retired):
            task.cancel()
        await self.state.aclose()  # writes the settlements it still holds
        if self.runtime is not None:
            for provider in self.runtime.providers.values():
                await provider.aclose()

    def health(self) -> tuple[int, dict[str, Any]]:
        """The /health body and its status code."""
        rt = self.runtime
        cfg_view = self._config_view()
        if rt is None:
            return 503, {"status": "down", "pid": os.getpid(), "config": cfg_view, "routes": {}}
        now = self.clock()
        routes: dict[str, Any] = {}
        without = []
        served = 0
        for name in rt.route_names:
            route = rt.routes[name]
            usable = any(e.usable for e in route.endpoints)
            # A route whose every endpoint is disabled by config (no key set) is the
            # operator's choice, not a failure: shown, but it does not degrade the service.
            _, available = route.availability(now)
            if usable:
                served += 1
                if available == 0:
                    without.append(name)
            routes[name] = {
                "policy": route.policy.name,
                "strategy": route.policy.strategy,
                "fallbacks": list(route.spec.fallbacks),
                "available": available,
                "disabled": not usable,
                "endpoints": self._endpoint_views(route, now),
            }
        if served == 0 or len(without) == served:
            status = "down"
        elif without:
            status = "degraded"
        else:
            status = "ok"
        body = {"status": status, "pid": os.getpid(), "config": cfg_view, "routes": routes}
        body["state"] = self.state.status()  # the shared store; its URL is never shown
        requestlog = self.requestlog
        if requestlog is not None and requestlog.enabled:
            view = body["requestlog"] = requestlog.health()
            # Requests are still served, but what they leave behind is not being kept.
            if view["state"] == "failing" and status == "ok":
                body["status"] = status = "degraded"
        return (200 if status == "ok" else 503), body

    def _config_view(self) -> dict[str, Any]:
        rt = self.runtime
        return {
            "path": self.config_path,
            "version": rt.config.version if rt else None,
            "loaded_at": rt.config.loaded_at.isoformat() if rt else None,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at.isoformat() if self.last_error_at else None,
            # An edit that failed validation while the config above keeps serving.
            "rejected": None
            if self.last_error is None
            else {
                "at": self.last_error_at.isoformat() if self.last_error_at else None,
                "errors": self.last_error,
            },
        }

    def _endpoint_views(self, route: RouteRuntime, now: float) -> list[dict[str, Any]]:
        """Each endpoint of ``route`` as /health shows it: state, score, live stats."""
        wall = time.time()
        book = self.series.routes if self.series is not None else None
        usable = [e for e in route.endpoints if e.usable]
        candidates = route.candidates(usable, now) if usable else []
        scores = route.strategy.scores(candidates) if candidates else {}
        eps = []
        for e in route.endpoints:
            if not e.usable:
                state, reason, left = "disabled", e.spec.disabled_reason, None
            else:
                state, reason, left = e.breaker.view(now)
            view = {
                "id": e.id,
                "provider": e.spec.provider.name,
                "kind": e.spec.provider.kind,
                "model": e.spec.model,
                "state": state,
                "reason": reason,
                "score": scores.get(e.id),
            }
            view.update(e.stats.view())
            # error_rate is decayed (half-life stats.halflife_s); this is a plain count.
            errors_5m = None
            if book is not None:
                series = book.get(route.name, {}).get(e.id)
                errors_5m = 0 if series is None else round(recent(series, wall, 300, "errors"))
            view["errors_last_5m"] = errors_5m
            view["cooldown_left_s"] = round(left, 1) if left else None
            view["cooldown_until"] = (
                datetime.fromtimestamp(wall + left, UTC).isoformat() if left else None
            )
            eps.append(view)
        return eps

    def readiness(self) -> tuple[bool, list[str]]:
        rt = self.runtime
        if rt is None:
            return False, ["no valid config is loaded"]
        now = self.clock()
        counts = {name: route.availability(now) for name, route in rt.routes.items()}
        missing = [
            f"route {name!r} has no available endpoint"
            for name, (usable, available) in counts.items()
            if usable and not available
        ]
        if not any(usable for usable, _ in counts.values()):
            missing.append("no route has a usable endpoint")
        return not missing, missing
