"""Provider kinds: how to reach a host. A provider sends one request; it knows no routing.

A kind is one module here with its settings (a ``ProviderSettings`` subclass whose
``kind`` is a literal, and whose ``build`` makes the provider) plus one line in ``KINDS``.
The config loader validates a provider's block as the discriminated union of these
settings on ``kind``; the runtime calls ``build`` only for the endpoints it uses.
"""

from __future__ import annotations

from collections.abc import Mapping

from providers.anthropic import AnthropicSettings
from providers.base import ProviderSettings
from providers.litellm import LiteLLMSettings
from providers.openai import OpenAISettings
from providers.simulated import SimulatedSettings

KINDS: Mapping[str, type[ProviderSettings]] = {
    "openai": OpenAISettings,
    "anthropic": AnthropicSettings,
    "litellm": LiteLLMSettings,
    "simulated": SimulatedSettings,
}

__all__ = ["KINDS", "ProviderSettings"]
