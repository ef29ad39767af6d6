"""Time as something handed in, not read: every piece of live state takes a ``Clock``.

The service passes ``time.monotonic``; tests and the policy lab pass a clock they advance
themselves, so decay, cooldowns, backoff and deadlines run without sleeping.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

Clock = Callable[[], float]


class FakeClock:
    """A clock that moves only when told to (tests, virtual-time replays)."""

    __slots__ = ("now",)

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    async def sleep(self, seconds: float) -> None:
        """``asyncio.sleep`` in this clock's time: it moves on at once, then yields."""
        self.now += max(0.0, seconds)
        await asyncio.sleep(0)
