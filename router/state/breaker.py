"""A circuit breaker per endpoint: stop sending traffic to a host that keeps failing.

Closed (``healthy``) until ``consecutive_failures`` in a row, or an error rate above
``error_rate`` over the last ``window_s`` with at least ``min_requests`` answers; then
open (``cooldown``) for ``cooldown_s``. When the cooldown ends the breaker lets one probe
through (``half_open``): success closes it, failure opens it again for twice as long,
capped at ``MAX_BACKOFF`` times ``cooldown_s``. An endpoint due for its probe is explored
first by the live-stats policies (``RouteRuntime.candidates``), so the probe happens on the
next request rather than whenever scoring happens to pick it; when the probe succeeds the
endpoint's outage-era errors are forgiven (``on_close``), so it gets its traffic back.
An auth failure or a refused connection opens it directly for a given time and reason.
The window is ten buckets of ``window_s / 10``: counting costs O(1) per answer whatever
the traffic.

A rate limit is not a failure: a 429 is the host saying "not now", not "broken". It sets
the endpoint aside until its ``Retry-After`` (``rate_limited``), beside the state machine:
no failure counted, no cooldown opened, no backoff level raised, so a host that keeps
answering 429 is tried again as soon as it said, never after an escalating cooldown.
Every time a peer gives is clamped to ``MAX_SET_ASIDE_S``: a ``Retry-After`` of 1e400
must not set an endpoint aside for ever, nor overflow a date in ``/health``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Literal

from router.config import Breaker as BreakerConfig

State = Literal["healthy", "cooldown", "half_open"]
MAX_BACKOFF = 8
_BUCKETS = 10
HISTORY = 64  # state changes kept for the model page's timeline
# The longest an upstream's word sets an endpoint aside (also providers.base's clamp of
# Retry-After): an hour, as long as any real host asks; docs/limits.md.
MAX_SET_ASIDE_S = 3600.0
RATE_LIMITED = "rate_limited"


def _bounded(seconds: float) -> float:
    """``seconds`` within [0, MAX_SET_ASIDE_S]; NaN is 0."""
    return (
        seconds if 0.0 <= seconds <= MAX_SET_ASIDE_S else (MAX_SET_ASIDE_S if seconds > 0 else 0.0)
    )


class CircuitBreaker:
    def __init__(self, config: BreakerConfig, on_close: Callable[[], None] | None = None) -> None:
        self.config = config
        self.on_close = on_close  # called when a probe closes the breaker again
        self.state: State = "healthy"
        self.reason: str | None = None
        self.until: float = 0.0
        self.consecutive = 0
        self.level = 0  # how many times in a row a probe has failed
        self.probe_in_flight = False
        self.limited_until = 0.0  # set aside by a rate limit until then (not a state)
        self._span = config.window_s / _BUCKETS
        self._ok = [0] * _BUCKETS
        self._bad = [0] * _BUCKETS
        self._epoch = [0] * _BUCKETS
        # (clock time, new state, reason, cooldown end) of recent changes, and changes into
        # each state since start: the page's timeline and /metrics' counters. Changes are rare.
        self.history: deque[tuple[float, State, str | None, float | None]] = deque(maxlen=HISTORY)
        self.changes: dict[str, int] = {"healthy": 0, "cooldown": 0, "half_open": 0}
        self.changes[RATE_LIMITED] = 0  # set-asides by a rate limit (not a state change)
        self.set_asides: deque[tuple[float, float]] = deque(maxlen=HISTORY)  # (from, until)

    def _changed(
        self, now: float, state: State, reason: str | None, until: float | None = None
    ) -> None:
        self.history.append((now, state, reason, until))
        self.changes[state] += 1

    def reconfigure(self, config: BreakerConfig) -> None:
        if config != self.config:
            self.config = config
            self._span = config.window_s / _BUCKETS

    # -- gate -----------------------------------------------------------------------

    def available(self, now: float) -> bool:
        """May a new request be sent here now (without taking the probe slot)?"""
        if now < self.limited_until:
            return False
        if self.state == "healthy":
            return True
        if self.state == "cooldown":
            return now >= self.until
        return not self.probe_in_flight

    def acquire(self, now: float) -> None:
        """A request is being sent: a cooldown turns into the half-open probe.

        Only a due cooldown, or one tried anyway because every endpoint of the route is
        cooling down (the panic path), gets here; either way this request is the probe
        whose outcome closes the breaker or re-opens it for longer.
        """
        if self.state == "cooldown":
            self.state = "half_open"
            self._changed(now, "half_open", self.reason)
        if self.state == "half_open":
            self.probe_in_flight = True

    # -- outcomes -------------------------------------------------------------------

    def _slot(self, now: float) -> int:
        """The bucket for ``now``, emptied if it last held an older span."""
        epoch = int(now / self._span)
        slot = epoch % _BUCKETS
        if self._epoch[slot] != epoch:
            self._epoch[slot] = epoch
            self._ok[slot] = 0
            self._bad[slot] = 0
        return slot

    def _failure_counts(self, now: float) -> tuple[int, int]:
        """Counts one failure; (successes, failures) over the window, for the error rate.
        Summed only here: a success needs no verdict, so it only adds to its bucket."""
        slot = self._slot(now)
        self._bad[slot] += 1
        oldest = int(now / self._span) - _BUCKETS + 1
        good = bad = 0
        for i in range(_BUCKETS):
            if self._epoch[i] >= oldest:
                good += self._ok[i]
                bad += self._bad[i]
        return good, bad

    def success(self, now: float) -> None:
        self.consecutive = 0
        state = self.state
        if state != "healthy":
            if state == "half_open" or (state == "cooldown" and now >= self.until):
                self._close(now)
            else:
                return  # still cooling down: not counted
        self._ok[self._slot(now)] += 1

    def failure(self, now: float, reason: str) -> None:
        self.consecutive += 1
        if self.state == "half_open":
            self.probe_in_flight = False
            self.level = min(self.level + 1, MAX_BACKOFF.bit_length())
            self._open(now, reason, self.config.cooldown_s * min(2**self.level, MAX_BACKOFF))
            return
        if self.state != "healthy":
            return
        good, bad = self._failure_counts(now)
        cfg = self.config
        total = good + bad
        if self.consecutive >= cfg.consecutive_failures:
            self._open(now, f"{reason}: {self.consecutive} failures in a row", cfg.cooldown_s)
        elif total >= cfg.min_requests and bad / total > cfg.error_rate:
            self._open(now, f"{reason}: error rate {bad / total:.0%} over {total}", cfg.cooldown_s)

    def trip(self, now: float, reason: str, seconds: float) -> None:
        """Open now, for a known time (a bad key, a refused connection)."""
        self.probe_in_flight = False
        self._open(now, reason, _bounded(seconds))

    def rate_limited(self, now: float, seconds: float) -> None:
        """The host asked for ``seconds`` of rest (a 429, a ``Retry-After``): set aside
        until then, the host's latest word replacing an earlier one. No verdict on its
        health: a probe in flight is released, the state machine is left as it was."""
        until = self.limited_until = now + _bounded(seconds)
        self.probe_in_flight = False
        asides = self.set_asides
        if asides and asides[-1][0] <= now < asides[-1][1]:
            asides[-1] = (asides[-1][0], until)  # the host's latest word on the same rest
        else:
            asides.append((now, until))
            self.changes[RATE_LIMITED] += 1

    def is_rate_limited(self, now: float) -> bool:
        return now < self.limited_until

    def free_at(self) -> float:
        """When it may be tried again, as far as this breaker knows (the past: now)."""
        if self.state == "cooldown" and self.until > self.limited_until:
            return self.until
        return self.limited_until

    def release_probe(self) -> None:
        """The probe ended without a verdict (cancelled): let another one through."""
        self.probe_in_flight = False

    def _open(self, now: float, reason: str, seconds: float) -> None:
        until = now + seconds
        if self.state == "cooldown" and self.until > until:
            until = self.until  # never shorten a cooldown already running
        if self.state != "cooldown":
            self._changed(now, "cooldown", reason, until)
        self.state = "cooldown"
        self.reason = reason
        self.until = until
        self.probe_in_flight = False

    def probe_due(self, now: float) -> bool:
        """The cooldown is over and nobody is probing: the next request should probe."""
        if self.state == "cooldown":
            return now >= self.until
        return self.state == "half_open" and not self.probe_in_flight

    def _close(self, now: float) -> None:
        if self.state != "healthy":
            self._changed(now, "healthy", None)
            if self.on_close is not None:
                self.on_close()
        self.state = "healthy"
        self.reason = None
        self.level = 0
        self.probe_in_flight = False
        self.consecutive = 0
        self._ok = [0] * _BUCKETS
        self._bad = [0] * _BUCKETS

    def view(self, now: float) -> tuple[str, str | None, float | None]:
        """(state, reason, seconds until the cooldown ends) for /health; an endpoint set
        aside by a rate limit shows as a cooldown with reason ``rate_limited``."""
        limited = now < self.limited_until
        if self.state == "cooldown" and now < self.until:
            left = max(self.until, self.limited_until) - now
            return "cooldown", self.reason, left
        if limited:
            return "cooldown", RATE_LIMITED, self.limited_until - now
        if self.state == "cooldown":
            return "half_open", self.reason, None
        return self.state, self.reason, None
