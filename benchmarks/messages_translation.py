"""CPU of Messages <-> chat translation: ours against litellm's Anthropic adapter, in one
process.

Run from the repository root:  .venv/bin/python benchmarks/messages_translation.py [--reps N]

Why: the issue's budget is a translated stream at most twice a native one, and litellm
has the adapter its proxy uses to serve ``/v1/messages`` from chat models
(``LiteLLMAnthropicMessagesAdapter`` for the request, ``AnthropicStreamWrapper`` for
the stream). This drives both the way litellm does (chat chunks parsed into its
``ModelResponseStream`` objects, each Anthropic event serialised as SSE) against ours
(``MessagesFromChat`` fed one chat event per read, the worst case; ``messages_to_chat``
for the request). Same input, same process, ratios in one run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from _translation import chat_chunks, print_rows  # noqa: E402

from router.apis.translate.messages_via_chat import (  # noqa: E402
    MessagesFromChat,
    messages_to_chat,
)

TOKENS = 256
REQUEST = json.loads((ROOT / "tests/fixtures/messages/messages_request.json").read_text())


def ours_stream(reads: list[bytes], reps: int) -> float:
    start = time.process_time()
    for _ in range(reps):
        translate = MessagesFromChat()
        for read in reads:
            translate.feed(read)
    return (time.process_time() - start) / reps * 1000


def ours_request(reps: int) -> float:
    start = time.process_time()
    for _ in range(reps):
        messages_to_chat(REQUEST)
    return (time.process_time() - start) / reps * 1000


def litellm_stream(chunks: list[dict[str, Any]], reps: int) -> float:
    import litellm
    from litellm.llms.anthropic.pass_through.adapters.streaming_iterator import (
        AnthropicStreamWrapper,
    )
    from litellm.types.utils import ModelResponseStream

    litellm.suppress_debug_info = True
    raw = [json.dumps(c) for c in chunks]

    def one() -> None:
        parsed = (ModelResponseStream(**json.loads(text)) for text in raw)  # off the wire
        for _ in AnthropicStreamWrapper(parsed, model="b").anthropic_sse_wrapper():
            pass

    one()  # warm-up: first-use imports
    start = time.process_time()
    for _ in range(reps):
        one()
    return (time.process_time() - start) / reps * 1000


def litellm_request(reps: int) -> float:
    from litellm.llms.anthropic.pass_through.adapters import LiteLLMAnthropicMessagesAdapter

    adapter = LiteLLMAnthropicMessagesAdapter()
    body = {k: v for k, v in REQUEST.items() if k != "top_k"}
    adapter.translate_anthropic_to_openai(body)  # warm-up
    start = time.process_time()
    for _ in range(reps):
        adapter.translate_anthropic_to_openai(body)
    return (time.process_time() - start) / reps * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=20, help="litellm streams per figure")
    args = ap.parse_args()
    chunks = chat_chunks(TOKENS)
    reads = [b"data: " + json.dumps(c, separators=(",", ":")).encode() + b"\n\n" for c in chunks]
    reads.append(b"data: [DONE]\n\n")
    ours_stream(reads, 20)  # warm-up
    rows = [
        (
            "stream of 256 tokens, ms CPU",
            ours_stream(reads, 50 * args.reps),
            litellm_stream(chunks, args.reps),
        ),
        (
            "tool-loop request, ms CPU",
            ours_request(100 * args.reps),
            litellm_request(10 * args.reps),
        ),
    ]
    print_rows(rows)


if __name__ == "__main__":
    main()
