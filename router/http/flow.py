"""Flow control for one connection: when to stop reading, and waiting for writes to drain.

Reading pauses for reasons, and resumes only when none is left: a request body buffered
past its high-water mark, requests parsed ahead of the one being answered (pipelining).
Either alone bounds what a client can make the server hold, whatever it sends. Writing
follows the transport: past its high-water mark it calls ``pause_writing``, and writers
wait in ``drain`` until ``resume_writing`` (the shape of uvicorn's ``flow_control.py``).
"""

from __future__ import annotations

import asyncio

BODY = 1  # a request body holds more than its high-water mark, unread
PIPELINE = 2  # requests are parsed and waiting behind the one being answered


class FlowControl:
    """Reading and writing state of one transport."""

    __slots__ = ("_drained", "_reasons", "_transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._reasons = 0  # why reading is paused: a mask of BODY and PIPELINE
        self._drained: asyncio.Future[None] | None = None  # set while writing is paused

    @property
    def reading_paused(self) -> bool:
        return self._reasons != 0

    def pause_reading(self, reason: int) -> None:
        if not self._reasons and not self._transport.is_closing():
            self._transport.pause_reading()
        self._reasons |= reason

    def resume_reading(self, reason: int) -> None:
        if self._reasons & reason:
            self._reasons &= ~reason
            if not self._reasons and not self._transport.is_closing():
                self._transport.resume_reading()

    @property
    def write_paused(self) -> bool:
        return self._drained is not None

    def pause_writing(self) -> None:
        if self._drained is None:
            self._drained = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        """The transport drained, or the connection is gone (writers then find it closing)."""
        drained, self._drained = self._drained, None
        if drained is not None and not drained.done():
            drained.set_result(None)

    async def drain(self) -> None:
        """Wait until the transport takes writes again (at once if it does)."""
        drained = self._drained
        if drained is not None:
            # Shielded: one writer giving up must not fail the wait of another.
            await asyncio.shield(drained)
