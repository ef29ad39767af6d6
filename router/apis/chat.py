"""OpenAI's Chat Completions API: ``POST /v1/chat/completions``.

- Body: ``model`` and a non-empty ``messages``; the sampling and tool fields below are
  type-checked, everything else passes as it came.
- Stream: ``stream: true``; the router asks for usage (``stream_options.include_usage``)
  whatever the client said, and cuts that chunk out when the client did not ask for it.
- First token: the first chunk whose delta has content, reasoning, tool calls or a
  refusal, or a finish reason (the role-only chunk is not one).
- Usage: the ``usage`` object of the last chunk that has one (``completion_tokens_details
  .reasoning_tokens``, ``prompt_tokens_details.cached_tokens``).
- A stream that breaks after its first byte ends with ``data: {"error": {...}}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, ClassVar

from pydantic import Field, StrictBool, StrictFloat, StrictInt, StrictStr

from router.apis.base import Body, ClientApi, Inspector
from router.requestlog.records import Usage
from router.routing.sse import StreamInspector, inspect_body, wants_json

_NUMBER = "a number"


class ChatBody(Body):
    model: StrictStr = Field(min_length=1, description="a non-empty string")
    messages: Annotated[list[Any], Field(min_length=1, description="a non-empty array")]
    stream: StrictBool | None = Field(None, description="a boolean")
    temperature: StrictInt | StrictFloat | None = Field(None, description=_NUMBER)
    top_p: StrictInt | StrictFloat | None = Field(None, description=_NUMBER)
    max_tokens: StrictInt | None = Field(None, description="an integer")
    max_completion_tokens: StrictInt | None = Field(None, description="an integer")
    n: StrictInt | None = Field(None, description="an integer")
    tools: list[Any] | None = Field(None, description="an array")
    stop: StrictStr | list[Any] | None = Field(None, description="a string or an array")
    stream_options: dict[str, Any] | None = Field(None, description="an object")
    response_format: dict[str, Any] | None = Field(None, description="an object")


def ask_for_usage(payload: dict[str, Any], stream: bool) -> bool:
    """Asks a stream for its usage (it feeds stats and cost); True when the client asked."""
    if not stream:
        return False
    opts = payload.get("stream_options")
    wants = isinstance(opts, dict) and bool(opts.get("include_usage"))
    if not wants:
        payload["stream_options"] = {**(opts or {}), "include_usage": True}
    return wants


class Chat(ClientApi):
    name: ClassVar[str] = "chat"
    path: ClassVar[str] = "/v1/chat/completions"
    operation: ClassVar[str] = "chat/completions"
    body = ChatBody

    def prepare(self, payload: dict[str, Any], stream: bool) -> bool:
        return ask_for_usage(payload, stream)

    def wants_json(self, payload: Mapping[str, Any]) -> bool:
        return wants_json(payload)

    def inspector(
        self, payload: Mapping[str, Any], client_wants_usage: bool, json: bool
    ) -> Inspector:
        return StreamInspector(
            chat=True,
            client_wants_usage=client_wants_usage,
            tools=bool(payload.get("tools")),
            json=json,
        )

    def inspect_body(self, body: bytes, json: bool) -> tuple[Usage | None, bool | None, str | None]:
        return inspect_body(body, json)


API = Chat()
