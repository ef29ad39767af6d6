"""OpenAI's Embeddings API: ``POST /v1/embeddings``.

- Body: ``model`` and ``input`` (a string or an array).
- Never streamed: a ``stream`` field is ignored. Usage: the answer's ``usage``.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field, StrictStr

from router.apis.base import Body, ClientApi
from router.apis.chat import inspect_body
from router.requestlog.records import Usage


class EmbeddingsBody(Body):
    model: StrictStr = Field(min_length=1, description="a non-empty string")
    input: StrictStr | list[Any] = Field(description="a string or an array")
    dimensions: int | None = Field(None, strict=True, description="an integer")
    encoding_format: StrictStr | None = Field(None, description="a string")


class Embeddings(ClientApi):
    name: ClassVar[str] = "embeddings"
    path: ClassVar[str] = "/v1/embeddings"
    operation: ClassVar[str] = "embeddings"
    body = EmbeddingsBody
    streams: ClassVar[bool] = False

    def inspect_body(self, body: bytes, json: bool) -> tuple[Usage | None, bool | None, str | None]:
        return inspect_body(body, json)


API = Embeddings()
