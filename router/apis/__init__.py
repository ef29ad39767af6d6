"""The client APIs the router answers, one module each, and the registry of their paths.

Adding an API is one module (a ``ClientApi`` subclass and its ``API``) plus one line here.
"""

from __future__ import annotations

from types import MappingProxyType

from router.apis import chat, completions, embeddings, messages, responses
from router.apis.base import ClientApi

APIS: tuple[ClientApi, ...] = (
    chat.API,
    completions.API,
    embeddings.API,
    responses.API,
    messages.API,
)
BY_PATH = MappingProxyType({api.path: api for api in APIS})
BY_NAME = MappingProxyType({api.name: api for api in APIS})

__all__ = ["APIS", "BY_NAME", "BY_PATH", "ClientApi"]
