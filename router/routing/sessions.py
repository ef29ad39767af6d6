"""Which conversation a request belongs to, for prompt-cache affinity.

The session is the first of: the header ``x-session-id``; the body's ``prompt_cache_key``
(OpenAI's name for the same thing); a coding agent's own session header
(``x-claude-code-session-id`` from Claude Code, ``session_id`` or ``session-id`` from
Codex); else a fingerprint of what a conversation never changes: the route, the system
prompt, the tools and the first user message.

The fingerprint must cost little on a 200 KB agent request and be the same on every
replica (so no ``hash()``, which is salted per process). It is a SHA-256 digest of a
sample: each part as JSON, a long one cut to its length and its first and last 2 KB; the
tools by their names. Two conversations that share a route, a system prompt's length, start and end,
the tool names and the first user message's sample are treated as one; they share a
cache prefix anyway.

Also here: the prefix a request resends (what a cache hit saves) and its turn count, both
estimated from the parsed body without serialising it again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import orjson

HEADERS = ("x-session-id",)
AGENT_HEADERS = ("x-claude-code-session-id", "session_id", "session-id")
_SAMPLE = 2048
BYTES_PER_TOKEN = 4
# No host caches a prompt shorter than 1,024 tokens (Anthropic's and OpenAI's minimum):
# a body under this many bytes has no cache for a session to find.
CACHEABLE_BYTES = 1024 * BYTES_PER_TOKEN
MAX_KEY = 200  # a client's session id longer than this is hashed, not stored as it is


def client_session(payload: Mapping[str, Any], headers: Mapping[str, str]) -> str | None:
    """The session the client named (header, ``prompt_cache_key``, agent header), or None:
    a few dictionary lookups."""
    for name in HEADERS:
        value = headers.get(name)
        if value:
            return _bounded("h:", value)
    key = payload.get("prompt_cache_key")
    if isinstance(key, str) and key:
        return _bounded("k:", key)
    for name in AGENT_HEADERS:
        value = headers.get(name)
        if value:
            return _bounded("a:", value)
    return None


def session_of(route: str, api: str, payload: Mapping[str, Any], headers: Mapping[str, str]) -> str:
    return client_session(payload, headers) or "f:" + fingerprint(route, api, payload)


def _bounded(prefix: str, value: str) -> str:
    if len(value) <= MAX_KEY:
        return prefix + value
    return prefix + hashlib.blake2b(value.encode("utf-8", "replace"), digest_size=16).hexdigest()


def fingerprint(route: str, api: str, payload: Mapping[str, Any]) -> str:
    system, conversation = _parts(api, payload)
    tools = payload.get("tools")
    names = [_tool_name(t) for t in tools] if isinstance(tools, list) else None
    h = hashlib.sha256()  # SHA-NI: a third of BLAKE2's cost here
    for part in (route, system, names, _first_user(conversation)):
        h.update(_sample(part))
    return h.hexdigest()[:32]


def _parts(api: str, payload: Mapping[str, Any]) -> tuple[Any, list[Any]]:
    """(system prompt, conversation items) in any client API's body."""
    if api == "messages":
        conversation = payload.get("messages")
        return payload.get("system"), conversation if isinstance(conversation, list) else []
    if api == "responses":
        items = payload.get("input")
        if isinstance(items, str):
            items = [{"role": "user", "content": items}]
        return payload.get("instructions"), items if isinstance(items, list) else []
    messages = payload.get("messages")
    if not isinstance(messages, list):
        prompt = payload.get("prompt")
        return None, [{"role": "user", "content": prompt}] if prompt is not None else []
    system = [m.get("content") for m in messages[:2] if _role(m) in ("system", "developer")]
    return system or None, messages


def _role(item: Any) -> str | None:
    return item.get("role") if isinstance(item, dict) else None


def _first_user(conversation: list[Any]) -> Any:
    for item in conversation[:8]:
        if _role(item) == "user":
            return item.get("content")
    return None


def _tool_name(tool: Any) -> Any:
    if not isinstance(tool, dict):
        return tool
    fn = tool.get("function")
    if isinstance(fn, dict):
        return fn.get("name")
    return tool.get("name") or tool.get("type")


def _sample(value: Any) -> bytes:
    """``value`` as JSON (orjson serialises 200 KB in about 15 us), cut to its length,
    head and tail when long: hashing is what costs, at about 0.6 us a KB."""
    try:
        data = orjson.dumps(value)
    except TypeError:  # not JSON, or nested past orjson's limit (254), where repr recurses
        data = type(value).__name__.encode()
    if len(data) > 2 * _SAMPLE:
        data = b"%d:" % len(data) + data[:_SAMPLE] + data[-_SAMPLE:]
    return b"%d|" % len(data) + data


def prefix_tokens(body_size: int) -> int:
    """What a cache hit would save, roughly: every token but the newest turn's, and the
    newest turn is small next to an agent's resent prefix; the body's size is the only
    measure that costs nothing (4 bytes of JSON a token, as the simulator counts)."""
    return body_size // BYTES_PER_TOKEN


def user_turns(api: str, payload: Mapping[str, Any]) -> int:
    _, conversation = _parts(api, payload)
    return sum(1 for item in conversation if _role(item) == "user")
