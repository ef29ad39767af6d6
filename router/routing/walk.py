"""The failover path: the ranking walked onwards, the attempts left, the backoff between.

A ranking is walked from its head, skipping endpoints that became unavailable meanwhile
(cooldown, rate limit, full), and over from the top when it runs out; when none is
available the one free first is next, and ``hold`` says how long until then, which the
pipeline waits (never sooner than a ``Retry-After``). Backoff is exponential with full
jitter, drawn from the runtime's seeded rng.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from tenacity import RetryCallState

from router.runtime import Endpoint
from router.state.clock import Clock


class Walk:
    """The ranking as a failover path: onwards, skipping endpoints that became
    unavailable meanwhile, and over from the top when it runs out; and the attempts the
    request may still make on it (hedges included): ``retry.attempts``. (One object for
    both: an object made per request costs a call of its class.)"""

    __slots__ = ("_clock", "_pos", "left", "ranking")

    def __init__(self, ranking: list[Endpoint], clock: Clock, attempts: int) -> None:
        self.ranking = ranking
        self._pos = 0
        self._clock = clock
        self.left = attempts

    def spend(self) -> bool:
        """Takes one attempt, or says there is none left."""
        if self.left <= 0:
            return False
        self.left -= 1
        return True

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


def full_jitter(rng: random.Random, base: float, cap: float) -> Callable[[RetryCallState], float]:
    """Exponential backoff with full jitter (tenacity's ``wait_random_exponential``),
    drawn from ``rng``: the runtime's, seeded in tests, never the global ``random``.
    Before retry n: uniform in [0, min(cap, base * 2 ** (n - 1))]."""

    def wait(state: RetryCallState) -> float:
        n = min(state.attempt_number, 64)  # 2 ** 64 * base: past any cap, and no overflow
        return rng.uniform(0.0, min(cap, base * 2.0 ** (n - 1)))

    return wait
