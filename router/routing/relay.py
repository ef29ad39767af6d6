"""Relaying a committed stream to the client, after its first token.

Before the first token every failure fails over (``attempts``, ``pipeline``); after it
the stream is the client's, and a failure ends it: the caller writes the client API's
error event. The lease on the endpoint ends here, with the stream's outcome.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from providers.errors import StreamBroken, TotalTimeout, UpstreamError
from router.apis.base import Inspector, Transform
from router.routing.attempts import Opened
from router.routing.sse import ProtocolViolation
from router.state.clock import Clock

Write = Callable[[bytes], Awaitable[None]]


async def relay(opened: Opened, deadline: float, clock: Clock, write: Write, finish: Write) -> None:
    """Writes the committed stream: what was held up to the first token, then the rest,
    up to and including ``[DONE]`` (raises if the stream ends without it), then reads
    and drops the upstream's end so its connection goes back to the pool.

    The bytes that hold ``[DONE]`` go out through ``finish``, with the end of the
    client's response in the same write (a whole short answer, held up to its first
    token, is then one write). A coroutine that writes, not an async generator that
    yields: no generator protocol per chunk, and the lease still ends in ``finally``
    however it stops. One coroutine, not one that awaits another: each read of the
    stream would resume both.

    The endpoint's own key is redacted from what was held up to the first token (where a
    host that echoes its request puts it), and from what goes out once a stream breaks,
    as from a non-streamed answer: a search once per stream. Not from every read after
    the first token: a search per read costs 4 to 6% of a token-per-read stream's
    instructions (docs/limits.md).
    """
    lease = opened.lease
    inspector = opened.inspector
    chunks = opened.chunks
    assert inspector is not None and chunks is not None
    if opened.transform is not None:
        # Rewritten on the way (translated, or reasoning left out): the inspector
        # read the upstream's events, the client gets the transform's.
        write, finish = _through(opened.transform, write, finish)
    secret = opened.endpoint.secret
    try:
        if inspector.done:
            await finish(_clean(opened.body, secret))
        else:
            if opened.body:
                await write(_clean(opened.body, secret))
            async for data in chunks:
                try:
                    out = inspector.feed(data)
                except ProtocolViolation as exc:
                    # the valid events before the bad one
                    await write(_clean(exc.forward, secret))
                    raise
                if inspector.done:
                    await finish(out)
                    break
                if out:
                    await write(out)
                if clock() > deadline:
                    raise TotalTimeout("total_s ran out mid-stream")
            else:
                tail = inspector.leftover()
                if tail:
                    await write(_clean(tail, secret))
                if not inspector.done:
                    raise StreamBroken("upstream closed the stream before [DONE]")
        # The client has the whole answer: whatever happens next (it hangs up while the
        # upstream's end is read) does not make it less than delivered.
        opened.delivered = True
        _succeed(opened, inspector)
        try:
            async for _ in chunks:  # the idle timer bounds this read
                pass
        except UpstreamError:
            pass
        except BaseException:  # cancelled meanwhile: the client hung up
            opened.response.close()
            raise
    except ProtocolViolation as exc:
        err = StreamBroken(str(exc))
        opened.response.close()
        lease.fail(err)
        raise err from exc
    except UpstreamError as exc:
        # Close the upstream too: after an idle or total timeout it is still open.
        opened.response.close()
        lease.fail(exc)
        raise
    finally:
        if not lease.done:
            if inspector.done:
                _succeed(opened, inspector)
            else:
                opened.abandon()  # the client went away: stop the upstream at once


def _succeed(opened: Opened, inspector: Inspector) -> None:
    opened.lease.succeed(
        inspector.usage,
        inspector.events,
        inspector.tool_calls_valid(),
        inspector.output_error(),
    )


def _through(transform: Transform, write: Write, finish: Write) -> tuple[Write, Write]:
    async def write_through(data: bytes) -> None:
        out = transform.feed(data)
        if out:
            await write(out)

    async def finish_through(data: bytes) -> None:
        await finish(transform.feed(data))

    return write_through, finish_through


def _clean(data: bytes, secret: bytes | None) -> bytes:
    """``data`` with ``secret`` replaced by ``***`` (a copy only when it is there)."""
    if secret is not None and data.find(secret) != -1:  # find, not ``in``: see SseInspector
        return data.replace(secret, b"***")
    return data
