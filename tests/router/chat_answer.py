"""The chat API and one small buffered chat answer, shared by the in-process pipeline
tests (pipeline, rate limits, affinity) so they script their hosts from one copy."""

from __future__ import annotations

import orjson

from router.apis import BY_PATH

CHAT = BY_PATH["/v1/chat/completions"]
ANSWER = orjson.dumps(
    {
        "id": "x",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1},
    }
)
