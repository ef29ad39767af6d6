"""A host speaking Anthropic's Messages API natively (api.anthropic.com, or any proxy of it).

The same fast HTTP path as ``providers.openai`` (one pooled origin, the head rendered
once, bodies and answers as bytes), with Anthropic's way of authenticating: the key goes
in ``x-api-key``, and every request carries ``anthropic-version`` (the client's when it
sent one, else this provider's default). A client's ``anthropic-beta`` is passed on.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar, Literal

from pydantic import Field

from providers.base import UpstreamRequest
from providers.openai import MAX_ANSWER_BYTES, HttpHostSettings, OpenAIProvider, OpenAIResponse

DEFAULT_VERSION = "2023-06-01"  # the version every current Messages feature is under


class AnthropicProvider(OpenAIProvider):
    kind = "anthropic"

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        headers: Mapping[str, str] | None = None,
        max_connections: int = 4096,
        max_answer_bytes: int = MAX_ANSWER_BYTES,
    ) -> None:
        given = dict(headers or {})
        # A version set in the config is the default that a client's own replaces.
        versions = [k for k in given if k.lower() == "anthropic-version"]
        self.version = given[versions[0]] if versions else DEFAULT_VERSION
        fields = {k: v for k, v in given.items() if k not in versions}
        if api_key:
            fields["x-api-key"] = api_key
        super().__init__(
            base_url,
            None,
            headers=fields,
            max_connections=max_connections,
            max_answer_bytes=max_answer_bytes,
        )

    async def send(self, request: UpstreamRequest) -> OpenAIResponse:
        sent = request.headers
        if not sent or "anthropic-version" not in sent:
            request.headers = {**(sent or {}), "anthropic-version": self.version}
        return await super().send(request)


class AnthropicSettings(HttpHostSettings):
    """``kind: anthropic``: a host that speaks Anthropic's Messages API natively."""

    kind: Literal["anthropic"]
    DEFAULT_APIS: ClassVar[frozenset[str]] = frozenset({"messages"})
    base_url: str = Field(
        "https://api.anthropic.com/v1", description=("The API's base URL, without credentials.")
    )
    api_key_env: str | None = Field(
        None,
        description=(
            "Variable holding the key (sent as `x-api-key`); unset: its endpoints are disabled."
        ),
    )
    headers: dict[str, str] = Field(
        default_factory=dict,
        description=("Extra headers sent upstream (`anthropic-version`, `anthropic-beta`)."),
    )

    def build(self, name: str, api_key: str | None) -> AnthropicProvider:
        return self.provider(AnthropicProvider, api_key)
