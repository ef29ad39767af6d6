"""An asyncio event loop whose clock is virtual: it jumps to the next timer when idle.

The policy lab runs the router's own pipeline (tasks, ``asyncio.timeout``, hedging's race,
``asyncio.sleep``, tenacity's backoff) unmodified, so it needs an event loop on which
those work but no time passes while the code runs: ``time()`` returns the virtual now,
and whenever no callback is ready the loop moves the clock to the earliest timer and
runs it. That is discrete-event simulation with asyncio as the event list (the idea of
Twisted's ``task.Clock`` and of simulated-time loops in test suites), so hedging delays,
timeouts, backoff, breaker cooldowns and stats decay all happen at their virtual times,
in order, deterministically, with no sleeping and no sockets.

It implements ``asyncio.AbstractEventLoop`` (the public base for loops written outside
asyncio) with callbacks and timers only: anything that would touch the outside world
(sockets, subprocesses, executors, signals) raises ``NotImplementedError`` as the base
class does. Ready callbacks run first-in first-out and timers at the same instant in the
order they were set, so a run is a function of its inputs and seed.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import sys
from collections import deque
from collections.abc import Coroutine, Generator
from contextvars import copy_context
from heapq import heappop, heappush
from typing import Any, TypeVar

_T = TypeVar("_T")


class _Handle(list[Any]):
    """A callback ready to run, with ``asyncio.Handle``'s public face (cancel, cancelled,
    get_context). A list (cancelled, context, call) made in C, not an object with an
    ``__init__``: the loop makes several per request. ``call`` is the callback and its
    arguments in one tuple, as ``Context.run`` takes them."""

    __slots__ = ()

    def cancel(self) -> None:
        self[0] = True
        self[2] = ()  # drop the references now, as asyncio does

    def cancelled(self) -> bool:
        return bool(self[0])

    def get_context(self) -> contextvars.Context:
        context: contextvars.Context = self[1]
        return context


class _TimerHandle(list[Any]):
    """A callback set for a time, with ``asyncio.TimerHandle``'s public face: a list
    (when, seq, cancelled, context, call) that is its own entry in the timers' heap,
    ordered by time and then by the order timers were set (``seq`` is unique, so the
    comparison never reaches the rest)."""

    __slots__ = ()

    def cancel(self) -> None:
        self[2] = True
        self[4] = ()

    def cancelled(self) -> bool:
        return bool(self[2])

    def when(self) -> float:
        return float(self[0])

    def get_context(self) -> contextvars.Context:
        context: contextvars.Context = self[3]
        return context


class LoopStalled(RuntimeError):
    """Nothing is ready and no timer is set, yet the awaited work is not done: every
    remaining task waits for something that will never happen."""


class VirtualLoop(asyncio.AbstractEventLoop):
    """A loop on virtual time; see the module docstring.

    Typeshed marks the I/O methods of ``AbstractEventLoop`` abstract; at run time they
    raise ``NotImplementedError``, which is what the lab wants, so an instance is made
    with ``make`` rather than by overriding two dozen methods to raise the same.
    """

    @classmethod
    def make(cls, start: float = 0.0) -> VirtualLoop:
        return cls(start)

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._ready: deque[_Handle] = deque()
        self._timers: list[list[Any]] = []  # a heap of _TimerHandle and ``at``'s lists
        self._seq = itertools.count()
        self._bare = contextvars.Context()  # where the lab's own timers run (``at``)
        self._stopping = False
        self._running = False
        self._closed = False
        self.errors: list[dict[str, Any]] = []  # what call_exception_handler was given

    # -- time and scheduling --------------------------------------------------------

    def time(self) -> float:
        return self._now

    # The handles are asyncio.Handle and TimerHandle in all but name (their public face).
    # ``*call`` is the callback and then its arguments (as asyncio's ``callback, *args``),
    # taken in one tuple: the form ``Context.run(*call)`` runs it in.
    def call_soon(  # type: ignore[override]
        self, *call: Any, context: contextvars.Context | None = None
    ) -> _Handle:
        if context is None:
            context = copy_context()
        handle = _Handle((False, context, call))
        self._ready.append(handle)
        return handle

    def call_soon_threadsafe(  # type: ignore[override]
        self, *call: Any, context: contextvars.Context | None = None
    ) -> _Handle:
        return self.call_soon(*call, context=context)  # one thread: nothing to wake

    def call_at(  # type: ignore[override]
        self, when: float, *call: Any, context: contextvars.Context | None = None
    ) -> _TimerHandle:
        if context is None:
            context = copy_context()
        handle = _TimerHandle((when, next(self._seq), False, context, call))
        heappush(self._timers, handle)
        return handle

    def call_later(  # type: ignore[override]
        self, delay: float, *call: Any, context: contextvars.Context | None = None
    ) -> _TimerHandle:
        return self.call_at(self._now + delay, *call, context=context)

    def at(self, when: float, *call: Any) -> None:
        """The lab's own timers (a host's answer coming): ``call_at`` without a handle,
        as nothing cancels them, and in one empty context rather than a copy of the
        caller's, as they set no context variable (a future they settle runs its
        callbacks in the contexts those were added in). A plain list, not a
        ``_TimerHandle``: no handle is handed out, and a list display costs no call."""
        heappush(self._timers, [when, next(self._seq), False, self._bare, call])

    def create_future(self) -> asyncio.Future[Any]:
        return asyncio.Future(loop=self)

    def create_task(
        self,
        coro: Coroutine[Any, Any, _T] | Generator[Any, None, _T],
        *,
        name: str | None = None,
        context: contextvars.Context | None = None,
    ) -> asyncio.Task[_T]:
        return asyncio.Task(coro, loop=self, name=name, context=context)

    # -- running --------------------------------------------------------------------

    def run_until_complete(self, future: Any) -> Any:
        done = asyncio.ensure_future(future, loop=self)
        done.add_done_callback(lambda _: self.stop())
        self.run_forever()
        if not done.done():
            done.cancel()
            raise LoopStalled("the virtual loop ran out of events before the work was done")
        return done.result()

    def run_forever(self) -> None:
        if self._running:
            raise RuntimeError("this loop is already running")
        if self._closed:
            raise RuntimeError("the loop is closed")
        # The hook asyncio exports for loops written outside it (uvloop uses it too):
        # get_running_loop() inside tasks must find this loop.
        previous = asyncio._get_running_loop()
        hooks = sys.get_asyncgen_hooks()
        asyncio._set_running_loop(self)
        sys.set_asyncgen_hooks(firstiter=None, finalizer=self._finalize_asyncgen)
        self._running = True
        try:
            self._run()
        finally:
            self._running = False
            self._stopping = False
            asyncio._set_running_loop(previous)
            sys.set_asyncgen_hooks(*hooks)

    def _run(self) -> None:
        ready, timers = self._ready, self._timers
        pop = ready.popleft
        while not self._stopping:
            # Like asyncio, a stop() takes effect once the callbacks ready now have run.
            while ready:
                cancelled, context, call = pop()
                if cancelled:
                    continue
                try:
                    context.run(*call)
                except (SystemExit, KeyboardInterrupt):
                    raise
                except BaseException as exc:
                    self._failed(exc, call)
            if self._stopping:
                return
            # Idle: the clock jumps to the earliest live timer, which runs at once (it is
            # the only callback ready: nothing else is queued before it).
            while timers:
                when, _, cancelled, context, call = heappop(timers)
                if cancelled:
                    continue
                if when > self._now:
                    self._now = when
                try:
                    context.run(*call)
                except (SystemExit, KeyboardInterrupt):
                    raise
                except BaseException as exc:
                    self._failed(exc, call)
                break
            else:
                return  # nothing left to happen

    def _failed(self, exc: BaseException, call: tuple[Any, ...]) -> None:
        self.call_exception_handler(
            {"message": "exception in callback", "exception": exc, "callback": call[0]}
        )

    def _finalize_asyncgen(self, agen: Any) -> None:
        self.create_task(agen.aclose())

    def stop(self) -> None:
        self._stopping = True

    def is_running(self) -> bool:
        return self._running

    def is_closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        if self._running:
            raise RuntimeError("cannot close a running loop")
        self._closed = True
        self._ready.clear()
        self._timers.clear()

    async def shutdown_asyncgens(self) -> None:
        """Nothing to do: async generators are closed by the finaliser as they go."""

    async def shutdown_default_executor(self) -> None:
        """There is no executor."""

    # -- errors and debug -----------------------------------------------------------

    def call_exception_handler(self, context: dict[str, Any]) -> None:
        self.errors.append(context)

    def default_exception_handler(self, context: dict[str, Any]) -> None:
        self.errors.append(context)

    def get_exception_handler(self) -> None:
        return None

    def set_exception_handler(self, handler: Any) -> None:
        raise NotImplementedError("the lab's loop keeps every error in .errors")

    # Every future asks its loop get_debug() when it is made (several per request): a
    # builtin that answers False costs no Python frame.
    get_debug = staticmethod(bool)

    def set_debug(self, enabled: bool) -> None:
        pass
