"""The fleet as providers: answers decided by a behaviour, played on the virtual clock.

``LabProvider`` stands where an HTTP provider stands in the service: the pipeline sends it
an ``UpstreamRequest`` and reads the answer through the same ``UpstreamResponse`` face.
One provider serves every endpoint of its provider name; the endpoint's ``model`` picks
the behaviour. Each attempt's answer is decided when it is sent (``Behaviour.answer``)
and played as the smallest stream the router's stream inspection accepts: the first
token at the TTFT, then the end of the stream with its usage (prompt, cached and
completion tokens) when the generation is over. ``send`` and ``read`` hand back futures
that a timer of the virtual loop settles (no coroutine per attempt); a stream is an async
generator awaiting two such futures.

Like the service's HTTP provider (``native_timeouts``), it enforces ``read_s`` itself: an
answer slower than that fails with the same timeout errors at ``read_s``, and a stream
whose tokens come further apart than the idle timeout set after its first token fails
with ``IdleTimeout``.

Prompt caching: when the behaviour's host caches and the request names a session, a
session's prefix seen on this host within the cache's ``ttl_s`` is read from cache (the
shorter of the two prompts, when at least ``min_tokens``), and so is the host's prefix
common to conversations (``shared_prefix_tokens``, fitted from first turns) while any
prompt within ``ttl_s`` keeps it; its TTFT shrinks as the simulator's does
(``ttft_factor`` on the cached share). Without a session, the trace's own cached-token
count is replayed where the host caches.
"""

from __future__ import annotations

import asyncio
from asyncio import Future
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

import orjson

from providers.base import UpstreamRequest
from providers.errors import (
    IdleTimeout,
    StreamBroken,
    TTFTTimeout,
    UpstreamConnectError,
    UpstreamError,
    UpstreamHTTPError,
    UpstreamProtocolError,
)
from router.lab.fleet import BREAK, Answer, Behaviour
from router.lab.loop import VirtualLoop
from router.lab.trace import BROKEN, CONNECT, HANG, HTTP, OK, TraceRequest

_TOKEN = b'data: {"choices":[{"index":0,"delta":{"content":"x"},"finish_reason":null}]}\n\n'
_CHAT_TAIL = b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
_TEXT_TOKEN = b'data: {"choices":[{"index":0,"text":"x","finish_reason":null}]}\n\n'
_TEXT_TAIL = b'data: {"choices":[{"index":0,"text":"","finish_reason":"stop"}]}\n\n'
_DONE = b"data: [DONE]\n\n"
# A stream's last read is its tail, the usage chunk {"choices":[],"usage":...} and [DONE]:
# the usage is serialised alone between the two halves made here.
_USAGE_OPEN = b'data: {"choices":[],"usage":'
_CHAT_END = _CHAT_TAIL + _USAGE_OPEN
_TEXT_END = _TEXT_TAIL + _USAGE_OPEN
_USAGE_CLOSE = b"}\n\n" + _DONE
_ERROR_BODY = b'{"error":{"message":"simulated by the policy lab","type":"server_error"}}'


def _settle(fut: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if not fut.done():  # cancelled meanwhile: a hedge won, a timeout fired
        if exc is None:
            fut.set_result(result)
        else:
            fut.set_exception(exc)


def _usage(prompt: int, completion: int, cached: int) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if cached:
        usage["prompt_tokens_details"] = {"cached_tokens": cached}
    return usage


class LabStream:
    """A streamed answer: the first token at its TTFT, the end after the generation."""

    status = 200
    content_type = "text/event-stream"

    def __init__(
        self,
        loop: VirtualLoop,
        answer: Answer,
        sent: float,
        read_s: float,
        chat: bool,
        usage: dict[str, Any],
        ended: Callable[[], None],
    ) -> None:
        self._loop = loop
        self._answer = answer
        self._sent = sent
        self._read_s = read_s
        self._chat = chat
        self._usage = usage
        self._ended: Callable[[], None] | None = ended  # the host's slot, given back once

    async def chunks(self) -> AsyncIterator[bytes]:
        """An async generator, as an HTTP provider's stream is: its end is then a
        ``StopAsyncIteration`` raised in C (a Python ``__anext__`` raising it cost 4,000
        instructions per stream, which the relay reads to its end)."""
        if self._ended is None:  # closed before it was read
            return
        loop = self._loop
        answer = self._answer
        fut: asyncio.Future[bytes] = Future()  # on the running loop: see send()
        first_at = self._sent + answer.first_s
        if answer.first_s > self._read_s:
            loop.at(self._sent + self._read_s, _settle, fut, None, _idle())
        else:
            loop.at(first_at, _settle, fut, _TOKEN if self._chat else _TEXT_TOKEN, None)
        yield await fut
        if self._ended is None:
            return
        fut = Future()
        exc: UpstreamError | None
        if answer.gap_s > self._read_s:  # the idle timeout, set after the first token
            at, result, exc = first_at + self._read_s, None, _idle()
        elif answer.outcome == BREAK:
            at, result, exc = (
                first_at + answer.rest_s,
                None,
                StreamBroken("simulated disconnect mid-stream"),
            )
        else:
            head = _CHAT_END if self._chat else _TEXT_END
            result = head + orjson.dumps(self._usage) + _USAGE_CLOSE
            at, exc = first_at + answer.rest_s, None
        loop.at(at, self._end, fut, result, exc)
        yield await fut

    def _end(
        self, fut: asyncio.Future[bytes], result: bytes | None, exc: UpstreamError | None
    ) -> None:
        _settle(fut, result, exc)
        self.close()

    def read(self) -> asyncio.Future[bytes]:
        raise RuntimeError("a stream is read by chunks()")

    def set_idle_timeout(self, seconds: float) -> None:
        self._read_s = seconds

    def close(self) -> None:
        ended, self._ended = self._ended, None
        if ended is not None:
            ended()


class LabBody:
    """A non-streamed answer, whole when it arrives."""

    status = 200
    content_type = "application/json"

    def __init__(self, loop: VirtualLoop, body: bytes) -> None:
        self._loop = loop
        self._body = body

    def read(self) -> asyncio.Future[bytes]:
        fut: asyncio.Future[bytes] = self._loop.create_future()
        fut.set_result(self._body)
        return fut

    def chunks(self) -> AsyncIterator[bytes]:
        raise RuntimeError("a whole answer is read by read()")

    def set_idle_timeout(self, seconds: float) -> None:
        pass

    def close(self) -> None:
        pass


def _idle() -> IdleTimeout:
    return IdleTimeout("no chunk within the idle timeout (simulated)")


def _ended(behaviour: Behaviour) -> Callable[[asyncio.Future[Any]], None]:
    return lambda _: behaviour.done()


def _failure(answer: Answer) -> UpstreamError:
    outcome = answer.outcome
    if outcome == HTTP:
        return UpstreamHTTPError(answer.status, _ERROR_BODY, retry_after_s=answer.retry_after_s)
    if outcome == CONNECT:
        return UpstreamConnectError("simulated connection failure")
    if outcome == BROKEN:
        return UpstreamProtocolError("simulated broken answer")
    raise AssertionError(f"not a failure: {outcome}")


class LabProvider:
    """Every endpoint of one provider name, answering from its behaviour (by model)."""

    kind = "lab"
    native_timeouts = True  # read_s is enforced here, as an HTTP provider's read timer does

    def __init__(
        self,
        loop: VirtualLoop,
        behaviours: Mapping[str, Behaviour],
        requests: Sequence[TraceRequest],
        trace_time: Callable[[float], float],
    ) -> None:
        self._loop = loop
        self._behaviours = behaviours
        self._requests = requests
        self._trace_time = trace_time
        self._sessions: dict[tuple[str, str], tuple[float, int]] = {}  # -> (expires, prompt)
        self._warm: dict[str, float] = {}  # model -> until when its shared prefix is cached

    def send(self, request: UpstreamRequest) -> asyncio.Future[Any]:
        loop = self._loop
        now = loop.time()
        model = request.payload["model"]
        behaviour = self._behaviours[model]
        req = self._requests[int(request.request_id)]
        operation = request.operation
        streamed = request.stream
        tokens = 0 if operation == "embeddings" else req.completion_tokens
        answer = behaviour.answer(self._trace_time(now), streamed, tokens, not streamed)
        # loop.create_future(), inlined, and without its ``loop=``: a keyword to a class
        # costs a dict per call, and the loop running this is the lab's.
        fut: asyncio.Future[Any] = Future()
        read_s = request.read_s
        outcome = answer.outcome
        if outcome != OK and outcome != BREAK:
            if outcome == HANG or answer.first_s > read_s:
                timeout = TTFTTimeout("no answer before the read timeout (simulated)")
                loop.at(now + read_s, _settle, fut, None, timeout)
            else:
                loop.at(now + answer.first_s, _settle, fut, None, _failure(answer))
            return fut
        cached = 0
        if behaviour.cache is not None and operation != "embeddings":
            cached = self._cached(behaviour, model, req, now)
        if cached and behaviour.cache is not None:
            # As the simulator's cache: the cached share of the prompt is read at
            # ``ttft_factor`` of the cost of computing it.
            share = min(1.0, cached / req.prompt_tokens)
            answer.first_s *= 1.0 - share * (1.0 - behaviour.cache.ttft_factor)
        usage = _usage(req.prompt_tokens, tokens, cached)
        if streamed:
            chat = operation == "chat/completions"
            stream = LabStream(loop, answer, now, read_s, chat, usage, behaviour.done)
            fut.set_result(stream)  # the headers come at once
            return fut
        fut.add_done_callback(_ended(behaviour))  # answered, timed out or cancelled
        if answer.first_s > read_s:
            timeout = TTFTTimeout("no complete answer before the read timeout (simulated)")
            loop.at(now + read_s, _settle, fut, None, timeout)
        else:
            body = LabBody(loop, orjson.dumps(_whole(operation, usage)))
            loop.at(now + answer.first_s, _settle, fut, body, None)
        return fut

    def _cached(self, behaviour: Behaviour, model: str, req: TraceRequest, now: float) -> int:
        cache = behaviour.cache
        if cache is None:
            return 0
        if req.session is None:
            return min(req.cached_tokens, req.prompt_tokens)
        key = (model, req.session)
        seen = self._sessions.get(key)
        expires = now + cache.ttl_s
        self._sessions[key] = (expires, req.prompt_tokens)
        prefix = 0 if seen is None or seen[0] < now else min(seen[1], req.prompt_tokens)
        shared = behaviour.shared_prefix_tokens
        if shared:  # the prefix common to conversations, while any prompt keeps it warm
            if self._warm.get(model, -1.0) >= now:
                prefix = max(prefix, min(shared, req.prompt_tokens))
            self._warm[model] = expires
        return prefix if prefix >= cache.min_tokens else 0

    async def aclose(self) -> None:
        """Nothing to release."""


def _whole(operation: str, usage: dict[str, Any]) -> dict[str, Any]:
    if operation == "embeddings":
        return {"object": "list", "data": [], "usage": usage}
    if operation == "completions":
        return {"choices": [{"index": 0, "text": "x", "finish_reason": "stop"}], "usage": usage}
    message = {"role": "assistant", "content": "x"}
    return {"choices": [{"index": 0, "message": message, "finish_reason": "stop"}], "usage": usage}
