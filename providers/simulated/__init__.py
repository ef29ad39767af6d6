"""A simulated model host speaking every client API, in-process or behind
``router sim-upstream``: chat, completions, embeddings, OpenAI's Responses and
Anthropic's Messages, with tools, JSON answers and reasoning.

``core`` decides when and whether an answer comes (timing, faults); ``reply`` what it
says, read from the request whatever its API; ``chat``, ``responses`` and ``messages``
how it looks, whole or streamed; ``render`` plays it; ``provider`` is the in-process
provider kind. Tests, demos and benchmarks see the same behaviour either way.
"""

from providers.simulated.core import Pacer, Plan, SimParams, Simulator, error_json, prompt_tokens
from providers.simulated.provider import SimulatedProvider, SimulatedSettings
from providers.simulated.render import body, delay, play, script

__all__ = [
    "Pacer",
    "Plan",
    "SimParams",
    "SimulatedProvider",
    "SimulatedSettings",
    "Simulator",
    "body",
    "delay",
    "error_json",
    "play",
    "prompt_tokens",
    "script",
]
