"""A model host's prompt cache, as the simulator plays one.

Hosts cache a prompt by prefix: tools, then the system prompt, then the conversation, so a
conversation that comes back within the cache's lifetime pays the cached price for all it
resent and gets its first token sooner (Anthropic's prompt caching, OpenAI's automatic
prefix caching). Here a prompt is a list of segments in that order; each prefix of it is
named by a running BLAKE2 digest and remembered with its token count for ``ttl_s`` after
it was last used. A prompt's cached tokens are those of its longest remembered prefix, if
that reaches ``min_tokens`` (hosts cache nothing shorter: Anthropic 1,024, OpenAI 1,024).

A prefix stays ``ttl_s`` after its last use (Anthropic: 5 minutes, refreshed by each hit;
OpenAI: 5 to 10 minutes idle). A host's cache also has a size: with ``max_tokens``, the
least recently used prefixes go first once the prefixes held (each counted for the tokens
its last segment adds, as a KV cache stores a shared prefix once) exceed it, so a
conversation that wandered off and comes back late may find its prefix pushed out by
others'. Without it only an entry count bounds the memory. The cache takes its clock, so
the policy lab can play it in virtual time.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import orjson

BYTES_PER_TOKEN = 4  # the simulator's rough count everywhere: 4 bytes of JSON a token


@dataclass(frozen=True, slots=True)
class CacheSettings:
    ttl_s: float = 300.0
    min_tokens: int = 1024
    ttft_factor: float = 0.3  # TTFT of a fully cached prompt, as a share of an uncached one
    max_tokens: int | None = None  # the host's cache size in tokens; None: unbounded


def prefixes(segments: Iterable[object]) -> list[tuple[bytes, int]]:
    """Each prefix of the prompt as (digest, tokens up to and including that segment)."""
    h = hashlib.blake2b(digest_size=16)
    out: list[tuple[bytes, int]] = []
    tokens = 0
    for segment in segments:
        data = segment if isinstance(segment, bytes) else orjson.dumps(segment)
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
        tokens += max(1, len(data) // BYTES_PER_TOKEN)
        out.append((h.copy().digest(), tokens))
    return out


class PromptCache:
    """The prefixes a host has seen, each kept ``ttl_s`` after its last use, the least
    recently used pushed out past ``max_tokens``. All share one TTL, so the order of use
    is the order of expiry: expired prefixes are dropped from the front."""

    def __init__(
        self,
        settings: CacheSettings,
        clock: Callable[[], float] = time.monotonic,
        max_entries: int = 100_000,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.max_entries = max_entries
        self._seen: OrderedDict[bytes, tuple[float, int]] = OrderedDict()  # -> expiry, own
        self.held = 0  # tokens held: each prefix's own (its last segment's)

    def __len__(self) -> int:
        return len(self._seen)

    def use(self, prompt: list[tuple[bytes, int]]) -> int:
        """The prompt's cached tokens; then every prefix of it is cached (refreshed)."""
        now = self.clock()
        seen = self._seen
        while seen:  # expired prefixes first: the front is the oldest use
            digest, (expiry, own) = next(iter(seen.items()))
            if expiry > now:
                break
            del seen[digest]
            self.held -= own
        cached = 0
        for digest, tokens in reversed(prompt):
            if digest in seen:
                cached = tokens
                break
        if cached < self.settings.min_tokens:
            cached = 0
        expiry = now + self.settings.ttl_s
        before = 0
        for digest, tokens in prompt:
            own, before = tokens - before, tokens
            if tokens < self.settings.min_tokens:
                continue  # a host does not cache what is too short to pay
            old = seen.pop(digest, None)
            if old is not None:
                self.held -= old[1]
            seen[digest] = (expiry, own)
            self.held += own
        cap = self.settings.max_tokens
        while seen and (len(seen) > self.max_entries or (cap is not None and self.held > cap)):
            _, (_, own) = seen.popitem(last=False)
            self.held -= own
        return cached

    def ttft_scale(self, cached: int, prompt_tokens: int) -> float:
        """How much of the TTFT is left: the cached share of the prompt is read at
        ``ttft_factor`` of the cost of computing it."""
        if cached <= 0 or prompt_tokens <= 0:
            return 1.0
        share = min(1.0, cached / prompt_tokens)
        return 1.0 - share * (1.0 - self.settings.ttft_factor)


def segments(operation: str, payload: dict[str, object]) -> list[object]:
    """A request's prompt in the order hosts cache it: tools, system, conversation."""
    out: list[object] = []
    tools = payload.get("tools")
    if tools:
        out.append(tools)
    if operation == "messages":
        system = payload.get("system")
        if system:
            out.append(system)
        conversation = payload.get("messages")
    elif operation == "responses":
        instructions = payload.get("instructions")
        if instructions:
            out.append(instructions)
        conversation = payload.get("input")
        if isinstance(conversation, str):
            conversation = [conversation]
    else:
        conversation = payload.get("messages") or payload.get("prompt")
        if isinstance(conversation, str):
            conversation = [conversation]
    if isinstance(conversation, list):
        out.extend(conversation)
    return out
