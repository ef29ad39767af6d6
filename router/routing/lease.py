"""An attempt's claim on its endpoint, ended once with the outcome (tower's ``Handle::drop``).

A ``Lease`` holds the in-flight count, the breaker's half-open probe slot and the stats
token for as long as its attempt lives, and ends exactly once, whichever way the attempt
ends: answered, failed, timed out, cancelled by a hedge winner or by a client that went
away. The outcome is the endpoint's evidence: stats, breaker, cooldowns.
"""

from __future__ import annotations

from providers.errors import (
    StreamBroken,
    UpstreamConnectError,
    UpstreamError,
    UpstreamHTTPError,
    UpstreamProtocolError,
)
from router.errors import CLIENT_FAULT_STATUSES
from router.requestlog.records import Usage
from router.runtime import RATE_LIMITED, Endpoint
from router.state.clock import Clock

# How long a 429 without a Retry-After sets its endpoint aside (docs/limits.md): about
# what OpenAI's SDKs wait before their first retry, doubled.
RATE_LIMIT_DEFAULT_S = 1.0


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
        self._token = endpoint.stats.start(self.started)
        breaker = endpoint.breaker
        if breaker.state != "healthy":  # a healthy breaker has no probe slot to take
            breaker.acquire(self.started)
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
        generation_s = (now - first) if first is not None and now > first else now - self.started
        # By position, in finish's order: keywords cost ~500 instructions a call.
        ep.stats.finish(
            self._token,
            True,  # ok
            now - self.started,  # latency_s
            tokens,  # completion_tokens
            generation_s,
            tool_calls_valid,
            output_error is None,  # output_ok
            None,  # error
            now,
        )
        if first is not None and usage is not None and usage.prompt_tokens:
            cached = 2 * usage.cached_tokens >= usage.prompt_tokens
            ep.stats.cache_split(first - self.started, cached)
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
                self._token,
                ok=False,
                error=exc.reason,
                output_ok=False if broken else None,
                now=now,
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
