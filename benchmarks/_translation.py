"""What the translation benchmarks (messages_translation.py, responses_translation.py)
share: the chat stream both translate, and the table they print."""

from __future__ import annotations

from typing import Any


def chat_chunks(n: int) -> list[dict[str, Any]]:
    """A chat stream of ``n`` tokens: role, ``n`` content deltas, stop, then usage."""
    base = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1, "model": "b"}
    out = [{**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}]
    out += [
        {**base, "choices": [{"index": 0, "delta": {"content": f"t{i} "}, "finish_reason": None}]}
        for i in range(n)
    ]
    out.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    usage = {"prompt_tokens": 8, "completion_tokens": n, "total_tokens": 8 + n}
    out.append({**base, "choices": [], "usage": usage})
    return out


def print_rows(rows: list[tuple[str, float, float]]) -> None:
    """Ours against litellm's, ms of CPU each, and the ratio."""
    print(f"{'':32s} {'ours':>10s} {'litellm':>10s} {'litellm/ours':>13s}")
    for name, mine, theirs in rows:
        print(f"{name:32s} {mine:10.3f} {theirs:10.3f} {theirs / mine:12.0f}x")
