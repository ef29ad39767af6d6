"""Translation between client APIs, for endpoints that do not speak the client's.

A ``Translation`` serves a client of one API from a host speaking another: ``request``
turns the client's body into the host's (and names what it could not carry, for the
answer header ``x-router-dropped``), ``transform`` turns the host's answer back, whole
or event by event as the stream arrives (a ``router.apis.base.Transform``), and
``error`` turns the host's error body into the client's shape. Each pair is a module of
pure functions, tested on recorded examples both ways.

Responses -> chat is ours too: litellm's bridge costs ~200x ours on a 256-token stream
(``benchmarks/responses_translation.py``).

Messages <-> chat is ours rather than litellm's Anthropic adapter, which builds pydantic
objects per chunk: on a 256-token stream it takes ~30 ms of CPU to our ~0.4 ms (77x),
and 8x ours on a tool-loop request (``benchmarks/messages_translation.py``); through the
router, a translated 256-token stream from a host streaming token by token costs about
1.5x a native one, 3.4-3.7x when the whole answer comes in one read (``benchmarks/
instructions.py --agents``, the table in docs/agents.md).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from router.apis.base import Transform
from router.apis.translate import chat_via_messages, messages_via_chat, responses_via_chat
from router.apis.translate.common import chat_error_to_messages, messages_error_to_chat
from router.apis.translate.responses_events import ResponsesFromChat


@dataclass(frozen=True, slots=True)
class Translation:
    client: str  # the client's API (``router.apis`` names)
    upstream: str  # the host's
    request: Callable[[dict[str, Any]], tuple[dict[str, Any], list[str]]]
    # Given the client's body and whether it wants stream usage.
    transform: Callable[[Mapping[str, Any], bool], Transform]
    error: Callable[[int, bytes], bytes]  # the host's error body (status, body) as the client's


TRANSLATIONS: Mapping[tuple[str, str], Translation] = MappingProxyType(
    {
        ("messages", "chat"): Translation(
            "messages",
            "chat",
            messages_via_chat.messages_to_chat,
            lambda _request, _usage: messages_via_chat.MessagesFromChat(),
            chat_error_to_messages,
        ),
        ("chat", "messages"): Translation(
            "chat",
            "messages",
            chat_via_messages.chat_to_messages,
            lambda _request, usage: chat_via_messages.ChatFromMessages(usage),
            messages_error_to_chat,
        ),
        ("responses", "chat"): Translation(
            "responses",
            "chat",
            responses_via_chat.responses_to_chat,
            lambda request, _usage: ResponsesFromChat(request),
            lambda _status, body: body,  # both speak OpenAI's error shape
        ),
    }
)
# The host's API a translation goes to, first that the host speaks.
_PREFERRED = ("chat", "messages", "responses")


def find(client: str, speaks: Collection[str]) -> Translation | None:
    """How a host speaking ``speaks`` serves a client of ``client``, or None when it cannot
    (a host speaking the client's API needs no translation: not asked)."""
    for upstream in _PREFERRED:
        if upstream in speaks:
            found = TRANSLATIONS.get((client, upstream))
            if found is not None:
                return found
    return None
