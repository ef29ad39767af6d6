"""A plan played out: the whole answer, or its stream paced token by token.

``body`` and ``script`` pick the shape for the request's API; ``play`` paces a script
(first token after the TTFT, then one token per ``token_gap_s``) and breaks it where
the plan says, the same way in-process and behind ``router sim-upstream``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, Protocol

from providers.errors import StreamBroken
from providers.simulated import chat, messages, responses
from providers.simulated.core import Pacer, Plan


class Script(Protocol):
    """A stream rendered one step (one token) at a time, between a head and a tail."""

    steps: list[tuple[str, int, str]]

    def head(self) -> bytes: ...

    def step(self, i: int) -> bytes: ...

    def tail(self) -> bytes: ...


def body(operation: str, payload: dict[str, Any], plan: Plan) -> bytes:
    """The non-streamed answer in the shape of ``operation``'s API."""
    reply = plan.reply
    if operation == "responses":
        return responses.body(payload, reply)
    if operation == "messages":
        return messages.body(payload, reply)
    if operation == "embeddings":
        return chat.embeddings_body(payload, reply)
    if operation == "completions":
        return chat.completion_body(payload, reply)
    return chat.chat_body(payload, reply)


def script(operation: str, payload: dict[str, Any], plan: Plan) -> Script:
    if operation == "responses":
        return responses.ResponsesStream(payload, plan.reply)
    if operation == "messages":
        return messages.MessagesStream(payload, plan.reply)
    return chat.ChatStream(operation, payload, plan.reply)


def delay(plan: Plan) -> float:
    """How long a non-streamed answer takes: its first token, then every other."""
    return plan.ttft_s + plan.token_gap_s * plan.tokens


async def play(events: Script, plan: Plan) -> AsyncIterator[bytes]:
    """The stream's bytes as they would arrive; raises StreamBroken where the plan
    drops the connection (the HTTP simulator turns that into an aborted socket)."""
    head = events.head()
    if head:
        yield head
    await asyncio.sleep(plan.ttft_s)
    pacer = Pacer()
    for i in range(len(events.steps)):
        if plan.break_after is not None and i == plan.break_after:
            raise StreamBroken("simulated disconnect mid-stream")
        if i:
            await pacer.wait(plan.token_gap_s)
        out = events.step(i)
        if out:
            yield out
    yield events.tail()
