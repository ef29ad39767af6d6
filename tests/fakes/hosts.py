"""A fake host speaking each host API (chat, Anthropic's Messages, OpenAI's Responses),
chosen by the request's path, that misbehaves by the upstream model it is asked for:
``trickle`` (one byte at a time), ``stall`` (two tokens in one write, then nothing),
``broken`` (the connection cut after a token), ``garbage`` (HTML after the first token),
anything else a short valid answer. For ``FakeUpstream(behaviour=dispatch)``.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from tests.support import FakeUpstream, chat_body, chunk


def event(kind: str, **fields: Any) -> bytes:
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **fields})}\n\n".encode()


@dataclass(frozen=True)
class Host:
    """One host API's stream pieces and whole answer."""

    prelude: bytes
    token: Any  # (text) -> bytes
    end: bytes
    answer: Any  # (text) -> dict


USAGE = {"input_tokens": 3, "output_tokens": 2}
MESSAGE = {"id": "msg_1", "type": "message", "role": "assistant", "model": "m", "content": []}
HOSTS = {
    "chat": Host(
        chunk(delta={"role": "assistant", "content": ""}),
        lambda text: chunk(text),
        chunk(finish="stop") + b"data: [DONE]\n\n",
        lambda text: chat_body(text),
    ),
    "messages": Host(
        event("message_start", message={**MESSAGE, "usage": USAGE})
        + event("content_block_start", index=0, content_block={"type": "text", "text": ""}),
        lambda text: event(
            "content_block_delta", index=0, delta={"type": "text_delta", "text": text}
        ),
        event("content_block_stop", index=0)
        + event("message_delta", delta={"stop_reason": "end_turn"}, usage={"output_tokens": 2})
        + event("message_stop"),
        lambda text: {**MESSAGE, "content": [{"type": "text", "text": text}], "usage": USAGE},
    ),
    "responses": Host(
        event("response.created", response={"id": "resp_1", "status": "in_progress"}),
        lambda text: event("response.output_text.delta", item_id="m1", delta=text),
        event(
            "response.completed",
            response={"id": "resp_1", "status": "completed", "output": [], "usage": USAGE},
        ),
        lambda text: {
            "id": "resp_1",
            "object": "response",
            "status": "completed",
            "output": [
                {
                    "type": "message",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": text}],
                }
            ],
            "usage": USAGE,
        },
    ),
}
GARBAGE = b"data: <html>502 Bad Gateway</html>\n\n"


async def _open(request: web.Request, host: Host) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    await resp.write(host.prelude)
    return resp


async def dispatch(fake: FakeUpstream, req: web.Request, body: dict[str, Any]) -> Any:
    """The answer in the host API of the path, by the upstream model the route asked for."""
    api = req.path.rsplit("/", 1)[-1]
    host = HOSTS.get(api, HOSTS["chat"])  # completions and embeddings: chat's shapes do
    model, stream = body.get("model"), body.get("stream") is True
    if model == "trickle" and not stream:
        data = json.dumps(host.answer("x" * 400)).encode()
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.content_length = len(data)
        await resp.prepare(req)
        for byte in data:  # 20 s at this pace, were nothing to stop it
            await resp.write(bytes([byte]))
            await asyncio.sleep(0.05)
        return resp
    if not stream:
        return web.json_response(host.answer("hello"))
    resp = await _open(req, host)
    if model == "trickle":
        await resp.write(host.token("first "))
        for byte in host.token("x" * 400):  # never a whole event again
            await resp.write(bytes([byte]))
            await asyncio.sleep(0.05)
    elif model == "stall":
        await resp.write(host.token("one ") + host.token("two "))  # one read at the router
        await asyncio.sleep(30)
    elif model == "broken":
        await resp.write(host.token("partial "))
        await asyncio.sleep(0.05)
        assert req.transport is not None
        req.transport.abort()
    elif model == "garbage":
        await resp.write(host.token("first "))
        await asyncio.sleep(0.1)  # the first token has gone out: no failover now
        await resp.write(GARBAGE + host.token("never ") + host.end)
    else:
        await resp.write(host.token("hello ") + host.end)
    return resp
