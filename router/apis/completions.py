"""OpenAI's legacy Completions API: ``POST /v1/completions``.

- Body: ``model`` and ``prompt`` (a string or an array); sampling fields type-checked.
- Stream, usage and the broken-stream event: as chat (``router.apis.chat``).
- First token: the first chunk whose choice has ``text`` or a finish reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from pydantic import Field, StrictBool, StrictFloat, StrictInt, StrictStr

from router.apis.base import Body, Inspector
from router.apis.chat import Chat, TextInspector

_NUMBER = "a number"


class CompletionsBody(Body):
    model: StrictStr = Field(min_length=1, description="a non-empty string")
    prompt: StrictStr | list[Any] = Field(description="a string or an array")
    stream: StrictBool | None = Field(None, description="a boolean")
    temperature: StrictInt | StrictFloat | None = Field(None, description=_NUMBER)
    top_p: StrictInt | StrictFloat | None = Field(None, description=_NUMBER)
    max_tokens: StrictInt | None = Field(None, description="an integer")
    n: StrictInt | None = Field(None, description="an integer")
    stop: StrictStr | list[Any] | None = Field(None, description="a string or an array")
    stream_options: dict[str, Any] | None = Field(None, description="an object")


class Completions(Chat):
    """Chat's usage request, JSON mode and body judge; its own inspector (no tools)."""

    name: ClassVar[str] = "completions"
    path: ClassVar[str] = "/v1/completions"
    operation: ClassVar[str] = "completions"
    body = CompletionsBody

    def inspector(
        self, payload: Mapping[str, Any], client_wants_usage: bool, json: bool
    ) -> Inspector:
        return TextInspector(client_wants_usage=client_wants_usage, json=json)


API = Completions()
