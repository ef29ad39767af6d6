"""The simulator played in-process: the ``simulated`` provider kind."""

from __future__ import annotations

import asyncio

from providers.base import BufferedResponse, UpstreamRequest
from providers.errors import UpstreamHTTPError
from providers.simulated.core import SimParams, Simulator
from providers.simulated.render import body, delay, play, script


class SimulatedProvider:
    """No socket, same timings, faults and shapes as ``router sim-upstream``."""

    kind = "simulated"
    native_timeouts = False

    def __init__(self, params: SimParams, name: str = "sim") -> None:
        self.simulator = Simulator(params, name)

    async def send(self, request: UpstreamRequest) -> BufferedResponse:
        operation, payload = request.operation, request.payload
        plan = self.simulator.plan(operation, payload)
        if plan.hang:
            await asyncio.Event().wait()  # until the caller's timeout cancels us
        if plan.status != 200:
            await asyncio.sleep(min(plan.ttft_s, 0.005))
            raise UpstreamHTTPError(plan.status, plan.error, retry_after_s=plan.retry_after_s)
        if not request.stream or operation == "embeddings":
            await asyncio.sleep(delay(plan))
            return BufferedResponse(body(operation, payload, plan))
        events = script(operation, payload, plan)
        return BufferedResponse(stream=play(events, plan), content_type="text/event-stream")

    async def aclose(self) -> None:
        """Nothing to release: no sockets, no pool."""
