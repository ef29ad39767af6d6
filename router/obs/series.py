"""Per-endpoint time series for the model page: minute buckets over the last 24 hours.

Fed by ``SeriesBook.record``, one of the service's sinks: it gets each finished request's
``RequestRecord`` after the answer has gone, and adds its attempts to their endpoints'
open minute: a few integer adds and, for the attempt that served, one append to each
bounded sample. When a request lands in a new minute, the open minute is closed into a
tuple of sums and percentiles in a ring of ``MINUTES`` slots (one per minute of the day),
so memory per endpoint is bounded whatever the traffic, and reading a day costs a pass
over 1,440 tuples, on the admin request that asks.

Percentiles come from a reservoir sample of ``SAMPLES`` answers per minute (Li's
algorithm L, with the book's own seeded random source): every answer of the minute has
the same chance to be in it, and an answer that is not sampled costs one comparison.
Coarser points (the 24 h view) sum the counts of their minutes and weigh the minutes'
percentiles by their answers.

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
from router.requestlog.records import RequestRecord

MINUTES = 1440  # a day of minute buckets per endpoint
SAMPLES = 128  # answers sampled per minute for each percentile
FAILURES = 100  # recent failures kept for the page
RELOADS = 100
NO_VERDICT = frozenset({"hedge_lost", "cancelled", "client_closed"})
# Failures that are answers which came back 200 but broken: output errors too.
OUTPUT_FAILURES = frozenset({"stream_broken", "bad_response"})

# A closed minute: (minute, requests, errors, served, tool_answers, tool_errors,
# output_answers, output_errors, tokens, generation_ms, busy_ms, latency p50, p95,
# e2e p50, p95, ttft p50, p95, ttft samples). Counts before the percentiles.
Closed = tuple[Any, ...]
_COUNTS = 11  # fields 1..10 are sums
FIELDS = (
    "requests",
    "errors",
    "served",
    "tool_answers",
    "tool_errors",
    "output_answers",
    "output_errors",
    "tokens",
    "generation_ms",
    "busy_ms",
)


class Minute:
    """The open minute of one endpoint: sums and bounded samples."""

    __slots__ = (
        "at",
        "busy_ms",
        "e2e",
        "errors",
        "generation_ms",
        "lat_next",
        "lat_w",
        "latency",
        "output_answers",
        "output_errors",
        "served",
        "tokens",
        "tool_answers",
        "tool_errors",
        "ttft",
        "ttft_next",
        "ttft_seen",
        "ttft_w",
    )  # no ``requests``: served + errors

    def __init__(self, at: int) -> None:
        self.at = at  # minutes since the epoch (UTC)
        self.errors = self.served = 0  # requests: their sum (counted at close)
        self.tool_answers = self.tool_errors = 0
        # Every served answer is judged: output answers are those plus broken failures.
        self.output_answers = self.output_errors = 0
        self.tokens = 0
        self.generation_ms = 0.0
        self.busy_ms = 0.0
        self.latency: list[float] = []
        self.e2e: list[float] = []
        self.ttft: list[float] = []
        self.ttft_seen = 0
        # Past SAMPLES answers: the count at which the next one is sampled (Algorithm L).
        self.lat_w = self.ttft_w = 1.0
        self.lat_next = self.ttft_next = 0

    def close(self) -> Closed:
        lat, e2e, ttft = sorted(self.latency), sorted(self.e2e), sorted(self.ttft)
        return (
            self.at,
            self.served + self.errors,
            self.errors,
            self.served,
            self.tool_answers,
            self.tool_errors,
            self.output_answers + self.served,
            self.output_errors,
            self.tokens,
            self.generation_ms,
            self.busy_ms,
            _pct(lat, 0.5),
            _pct(lat, 0.95),
            _pct(e2e, 0.5),
            _pct(e2e, 0.95),
            _pct(ttft, 0.5),
            _pct(ttft, 0.95),
            self.ttft_seen,
        )


def _judged(m: Minute, rec: RequestRecord) -> None:
    """A served answer's tool calls and output, when either has something to say."""
    valid = rec.tool_calls_valid
    if valid is not None:
        m.tool_answers += 1
        if not valid:
            m.tool_errors += 1
    if rec.output_error is not None:
        m.output_errors += 1


def _pct(ordered: list[float], q: float) -> float | None:
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class EndpointSeries:
    """One endpoint's last day: the open minute and a ring of closed ones."""

    __slots__ = ("open", "ring")

    def __init__(self) -> None:
        self.open = Minute(-1)
        self.ring: list[Closed | None] | None = None  # made at the first closed minute

    def roll(self, at: int) -> Minute:
        """Close the open minute (if it held anything) and open minute ``at``."""
        m = self.open
        if m.served or m.errors or m.busy_ms:
            if self.ring is None:
                self.ring = [None] * MINUTES
            self.ring[m.at % MINUTES] = m.close()
        self.open = m = Minute(at)
        return m

    def minutes(self, first: int, last: int) -> list[Closed]:
        """The minutes from ``first`` to ``last`` (inclusive) that hold anything, in order;
        the open one closed on the fly (it stays open)."""
        out: list[Closed] = []
        ring = self.ring
        if ring is not None:
            for at in range(max(first, last - MINUTES + 1), last + 1):
                slot = ring[at % MINUTES]
                if slot is not None and slot[0] == at:
                    out.append(slot)
        m = self.open
        if first <= m.at <= last and (m.served or m.errors or m.busy_ms):
            out = [c for c in out if c[0] != m.at] + [m.close()]
        return out


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
                _judged(m, rec)
            return
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
            _judged(m, rec)

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


def points(s: EndpointSeries, first: int, last: int, step: int) -> dict[str, list[Any]]:
    """Columns of points from minute ``first`` to ``last``, ``step`` minutes each: ``t``
    (the point's start, Unix seconds), sums, rates and percentiles (None where no data).
    ``in_flight`` is the mean number of attempts in flight over the point."""
    n = (last - first) // step + 1
    sums = [[0.0] * n for _ in range(_COUNTS - 1)]
    weighted: list[list[float]] = [[0.0] * n for _ in range(6)]
    weights: list[list[float]] = [[0.0] * n for _ in range(6)]
    for c in s.minutes(first, last):
        i = (c[0] - first) // step
        for f in range(_COUNTS - 1):
            sums[f][i] += c[f + 1]
        for p in range(6):
            value = c[_COUNTS + p]
            if value is not None:
                w = c[17] if p >= 4 else c[3]  # TTFT percentiles weigh by TTFT samples
                weighted[p][i] += value * w
                weights[p][i] += w
    req, err, served, tool_n, tool_e, out_n, out_e, tokens, gen_ms, busy = sums
    span_ms = step * 60_000.0

    def ratio(a: list[float], b: list[float]) -> list[float | None]:
        return [round(x / y, 4) if y else None for x, y in zip(a, b, strict=True)]

    def pct(p: int) -> list[float | None]:
        return [
            round(x / w, 1) if w else None for x, w in zip(weighted[p], weights[p], strict=True)
        ]

    return {
        "t": [(first + i * step) * 60 for i in range(n)],
        "requests": [int(x) for x in req],
        "errors": [int(x) for x in err],
        "error_rate": ratio(err, req),
        "tool_call_error_rate": ratio(tool_e, tool_n),
        "output_error_rate": ratio(out_e, out_n),
        "tokens_per_s": [
            round(t * 1000.0 / g, 1) if g > 0 else None for t, g in zip(tokens, gen_ms, strict=True)
        ],
        "latency_ms_p50": pct(0),
        "latency_ms_p95": pct(1),
        "e2e_ms_p50": pct(2),
        "e2e_ms_p95": pct(3),
        "ttft_ms_p50": pct(4),
        "ttft_ms_p95": pct(5),
        "in_flight": [round(b / span_ms, 3) for b in busy],
        "served": [int(x) for x in served],
    }


def recent(s: EndpointSeries, now: float, seconds: int = 60, field: str = "requests") -> float:
    """A count (``FIELDS``) over about the last ``seconds``: whole minutes, and the oldest
    one in the proportion of it that is still within the span."""
    at = int(now) // 60
    minutes = -(-seconds // 60)  # whole minutes the span reaches into
    index = FIELDS.index(field) + 1
    into = (now - at * 60) / 60.0  # how far into the open minute we are
    total = 0.0
    for c in s.minutes(at - minutes, at):
        total += c[index] * (1.0 - into) if c[0] == at - minutes else c[index]
    return total
