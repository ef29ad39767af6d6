"""An asyncio event loop that runs on a ``FakeClock``: timers fire without waiting.

When nothing is ready to run, the loop would block in its selector until the next timer;
here the selector moves the clock to that timer at once instead. So ``asyncio.sleep``,
``asyncio.timeout``, ``asyncio.wait(timeout=...)`` and tenacity's backoff all run in
virtual time, in the order real time would give them, and a test of hedging or total_s
takes microseconds and gives the same result every run. Real I/O still works (it is
polled without blocking), but a loop with nothing scheduled and nothing ready would wait
forever: it raises instead, so a test that would hang fails at once.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Coroutine
from typing import Any, TypeVar

from router.state.clock import FakeClock

T = TypeVar("T")


class Stalled(RuntimeError):
    """Nothing scheduled, nothing ready: in real time this would hang forever."""


class _Selector(selectors.SelectSelector):
    def __init__(self, clock: FakeClock) -> None:
        super().__init__()
        self.clock = clock

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = super().select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None:
            raise Stalled("the event loop has nothing to wait for: the test would hang")
        self.clock.advance(timeout)  # to the next timer, at once
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """``loop.time()`` is ``clock()``; waiting for a timer moves the clock to it."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        super().__init__(_Selector(clock))

    def time(self) -> float:
        return self.clock()


def run(clock: FakeClock, coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to the end on a virtual-time loop over ``clock``."""
    with asyncio.Runner(loop_factory=lambda: VirtualTimeLoop(clock)) as runner:
        return runner.run(coro)
