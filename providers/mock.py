"""A provider that answers from a function: httpx's ``MockTransport`` for upstreams.

Tests (and anything that replays traffic in virtual time) swap it in for a real host,
rather than patching one: ``MockProvider(handler)`` calls ``await handler(request)``
for each request and returns what it returns, or lets what it raises (an
``UpstreamError``) fail the attempt. The handler may await anything, timers included, so
with a virtual-time event loop a slow host costs no wall-clock time. Not a provider kind
of routes.yaml: nothing configures it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable

from providers.base import BufferedResponse, UpstreamRequest, UpstreamResponse

Handler = Callable[[UpstreamRequest], Awaitable[UpstreamResponse]]


class MockProvider:
    """Answers every request with ``handler``'s answer; keeps the requests it was sent."""

    kind = "mock"
    native_timeouts = False

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[UpstreamRequest] = []
        self.closed = False

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        self.requests.append(request)
        return await self.handler(request)

    async def aclose(self) -> None:
        self.closed = True


def json_answer(body: bytes) -> BufferedResponse:
    """A whole, non-streamed answer."""
    return BufferedResponse(body)


def sse_answer(events: Iterable[bytes], pace: Callable[[int], Awaitable[None]]) -> BufferedResponse:
    """A streamed answer: each event (a whole ``data: ...`` line) after ``await pace(i)``."""

    async def play() -> AsyncIterator[bytes]:
        for i, event in enumerate(events):
            await pace(i)
            yield event

    return BufferedResponse(stream=play(), content_type="text/event-stream")


__all__ = ["Handler", "MockProvider", "json_answer", "sse_answer"]
