"""Per-endpoint time series for the model page: minute buckets over the last 24 hours.

Fed by ``SeriesBook.record``, one of the service's sinks: it gets each finished request's
``RequestRecord`` after the answer has gone, and adds its attempts to their endpoints'
open minute (``minutes.py``): a few integer adds and, for the attempt that served, one
append to each bounded sample.

Percentiles come from a reservoir sample of ``SAMPLES`` answers per minute (Li's
algorithm L, with the book's own seeded random source): every answer of the minute has
the same chance to be in it, and an answer that is not sampled costs one comparison.

An attempt counts as a request of its endpoint when it got a verdict: served, or failed
for the endpoint's sake. Attempts cancelled (a hedge lost, the client left) or refused as
the client's fault count only towards the time the endpoint was busy (``in_flight`` is
that busy time over the minute: Little's law).
"""

from __future__ import annotations

import math
import random
import time
from collections import deque
from collections.abc import Iterable
from typing import Any

from router.errors import CLIENT_FAULT_STATUSES
from router.obs.minutes import SAMPLES, EndpointSeries, Minute, judged
from router.requestlog.records import RequestRecord

FAILURES = 100  # recent failures kept for the page
RELOADS = 100
NO_VERDICT = frozenset({"hedge_lost", "cancelled", "client_closed"})
# Failures that are answers which came back 200 but broken: output errors too.
OUTPUT_FAILURES = frozenset({"stream_broken", "bad_response"})


class SeriesBook:
    """Every endpoint's series, the recent failures and the reloads; a service sink."""

    __slots__ = ("_random", "failures", "reloads", "routes")

    def __init__(self, seed: int | None = None) -> None:
        self.routes: dict[str, dict[str, EndpointSeries]] = {}
        self.failures: deque[dict[str, Any]] = deque(maxlen=FAILURES)
        self.reloads: deque[dict[str, Any]] = deque(maxlen=RELOADS)
        self._random = random.Random(seed).random

    def series(self, route: str, endpoint: str) -> EndpointSeries:
        eps = self.routes.get(route)
        if eps is None:
            eps = self.routes[route] = {}
        s = eps.get(endpoint)
        if s is None:
            s = eps[endpoint] = EndpointSeries()
        return s

    def record(self, rec: RequestRecord, _samples: int = SAMPLES) -> None:
        """Add one finished request (a sink: sync, on the loop, after the answer).
        (``_samples`` is a local for speed: a global is a dictionary lookup.)"""
        attempts = rec.attempts
        if len(attempts) == 1 and rec.error is None and attempts[0].reason is None:
            # The usual request, served by its one attempt: ``_served`` inlined (a call
            # is a fifth of this path's cost).
            a = attempts[0]
            eps = self.routes.get(a.route)
            s = eps.get(a.endpoint) if eps is not None else None
            if s is None:
                s = self.series(a.route, a.endpoint)
            e2e = rec.latency_ms
            at = (rec.started + e2e * 0.001) // 60.0  # the minute it ended in (a float)
            m = s.open
            if m.at < at:  # (one that ended just before the open minute joins it)
                m = s.roll(int(at))
            d = rec.served_ms
            if d is None:
                d = a.duration_ms
            m.busy_ms += d
            served = m.served = m.served + 1
            if served <= _samples:
                m.latency.append(d)
                m.e2e.append(e2e)
                if served == _samples:
                    m.lat_w, m.lat_next = self._skip(1.0, served)
            elif served == m.lat_next:
                j = int(self._random() * _samples)
                m.latency[j] = d
                m.e2e[j] = e2e
                m.lat_w, m.lat_next = self._skip(m.lat_w, served)
            ttft = a.ttft_ms
            if ttft is not None:
                seen = m.ttft_seen = m.ttft_seen + 1
                if seen <= _samples:
                    m.ttft.append(ttft)
                    if seen == _samples:
                        m.ttft_w, m.ttft_next = self._skip(1.0, seen)
                elif seen == m.ttft_next:
                    m.ttft[int(self._random() * _samples)] = ttft
                    m.ttft_w, m.ttft_next = self._skip(m.ttft_w, seen)
                d -= ttft
            usage = rec.usage
            if usage is not None:
                tokens = usage.completion_tokens
                if tokens:
                    m.tokens += tokens
                    m.generation_ms += d
            if rec.tool_calls_valid is not None or rec.output_error is not None:
                judged(m, rec)
            return
        self._attempts(rec)

    def _attempts(self, rec: RequestRecord) -> None:
        """Any other request: each attempt to its endpoint, its failures to the page."""
        attempts = rec.attempts
        if not attempts:
            if rec.status >= 500:  # nothing upstream was tried: the route had no endpoint
                self._failed(rec, rec.route, None, rec.error, rec.status)
            return
        at = int(rec.started + rec.latency_ms * 0.001) // 60
        for a in attempts:
            s = self.series(a.route, a.endpoint)
            m = s.open
            if m.at < at:
                m = s.roll(at)
            d = a.duration_ms
            m.busy_ms += d
            reason = a.reason
            if reason is None:
                reason = rec.error  # served, but may have broken mid-stream since
                if reason is None:
                    if rec.served_ms is not None:  # the whole span, not up to its opening
                        m.busy_ms += rec.served_ms - d
                        d = rec.served_ms
                    self._served(m, rec, d, a.ttft_ms)
                    continue
            if reason in NO_VERDICT or a.status in CLIENT_FAULT_STATUSES:
                continue
            m.errors += 1
            if reason in OUTPUT_FAILURES:
                m.output_answers += 1
                m.output_errors += 1
            self._failed(rec, a.route, a.endpoint, reason, a.status)

    def _served(self, m: Minute, rec: RequestRecord, d: float, ttft: float | None) -> None:
        served = m.served = m.served + 1
        e2e = rec.latency_ms
        if served <= SAMPLES:
            m.latency.append(d)
            m.e2e.append(e2e)
            if served == SAMPLES:
                m.lat_w, m.lat_next = self._skip(1.0, served)
        elif served == m.lat_next:
            j = int(self._random() * SAMPLES)
            m.latency[j] = d
            m.e2e[j] = e2e
            m.lat_w, m.lat_next = self._skip(m.lat_w, served)
        if ttft is not None:
            seen = m.ttft_seen = m.ttft_seen + 1
            if seen <= SAMPLES:
                m.ttft.append(ttft)
                if seen == SAMPLES:
                    m.ttft_w, m.ttft_next = self._skip(1.0, seen)
            elif seen == m.ttft_next:
                m.ttft[int(self._random() * SAMPLES)] = ttft
                m.ttft_w, m.ttft_next = self._skip(m.ttft_w, seen)
            d -= ttft
        usage = rec.usage
        if usage is not None and usage.completion_tokens:
            m.tokens += usage.completion_tokens
            m.generation_ms += d
        if rec.tool_calls_valid is not None or rec.output_error is not None:
            judged(m, rec)

    def _skip(self, w: float, i: int) -> tuple[float, int]:
        """Algorithm L (Li, 1994): a full reservoir's next weight and the count at which
        the next item replaces a random one of its samples; the items between are
        skipped at the cost of a comparison each."""
        rand = self._random
        w *= math.exp(math.log(1.0 - rand()) / SAMPLES)
        if w >= 1.0:
            return w, i + 1
        return w, i + int(math.log(1.0 - rand()) / math.log(1.0 - w)) + 1

    def _failed(
        self,
        rec: RequestRecord,
        route: str | None,
        endpoint: str | None,
        reason: str | None,
        status: int | None,
    ) -> None:
        self.failures.append(
            {
                "at": round(rec.started, 3),
                "request_id": rec.request_id,
                "route": route,
                "endpoint": endpoint,
                "reason": reason,
                "status": status,
            }
        )

    def reloaded(self, ok: bool, version: str | None, errors: list[str] | None) -> None:
        self.reloads.append(
            {"at": round(time.time(), 3), "ok": ok, "version": version, "errors": errors or []}
        )

    def keep_only(self, endpoints: Iterable[tuple[str, str]]) -> None:
        """After a reload: drop the series of endpoints the config no longer has."""
        keep = set(endpoints)
        for route, eps in list(self.routes.items()):
            for ep in list(eps):
                if (route, ep) not in keep:
                    del eps[ep]
            if not eps:
                del self.routes[route]
