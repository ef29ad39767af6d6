"""A breaker around the shared store itself (not an endpoint's: ``router.state.breaker``).

Without it, every request would wait out the Redis timeout while Redis is down. After a
failed or timed-out call the store is not asked for ``backoff`` seconds (0.5 s, doubling
up to 5 s while it keeps failing); then one call probes it, and its success closes the
breaker: recovery needs no operator.
"""

from __future__ import annotations

import time

from router.state.clock import Clock


class StoreBreaker:
    """Around Redis: after a failure, no call for ``backoff`` seconds, then one probe."""

    MIN_S = 0.5
    MAX_S = 5.0

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self.clock = clock
        self.open = False
        self.until = 0.0
        self.backoff = self.MIN_S
        self.probing = False
        self.failures = 0

    def allows(self) -> bool:
        if not self.open:
            return True
        if self.probing or self.clock() < self.until:
            return False
        self.probing = True
        return True

    def success(self) -> None:
        self.open = self.probing = False
        self.backoff = self.MIN_S

    def failure(self) -> None:
        self.failures += 1
        self.open = True
        self.probing = False
        self.until = self.clock() + self.backoff
        self.backoff = min(self.backoff * 2, self.MAX_S)

    def release(self) -> None:
        """A probe ended without a verdict (cancelled): let the next call probe."""
        self.probing = False
