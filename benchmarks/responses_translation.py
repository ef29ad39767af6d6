"""CPU of Responses <-> chat translation: ours against litellm's bridge, in one process.

Run from the repository root:  .venv/bin/python benchmarks/responses_translation.py [--reps N]

Why: the issue's budget is a translated stream at most twice a native one, and litellm
has a Responses-over-chat bridge (``litellm.responses`` for chat-only providers). Its
public entry point cannot run here at all: litellm 1.106 imports its MCP gateway, which
needs the uninstalled ``mcp`` package, on every ``responses()`` call. So this drives the
bridge's own parts the way ``responses()`` does (litellm's ``CustomStreamWrapper`` over
chat chunks, its ``LiteLLMCompletionStreamingIterator`` on top, each event serialised),
against ours (``ResponsesFromChat`` fed one chat event per read, the worst case), and the
request side (a Codex turn) both ways. Same input, same process, ratios in one run.
"""

from __future__ import annotations

import argparse
import asyncio
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

from router.apis.translate.responses_events import ResponsesFromChat  # noqa: E402
from router.apis.translate.responses_via_chat import responses_to_chat  # noqa: E402

TOKENS = 256
CODEX = json.loads((ROOT / "tests/fixtures/responses/codex_request.json").read_text())


def ours_stream(reads: list[bytes], reps: int) -> float:
    start = time.process_time()
    for _ in range(reps):
        translate = ResponsesFromChat({"model": "m", "input": "hi"})
        for read in reads:
            translate.feed(read)
    return (time.process_time() - start) / reps * 1000


def ours_request(reps: int) -> float:
    start = time.process_time()
    for _ in range(reps):
        responses_to_chat(CODEX)
    return (time.process_time() - start) / reps * 1000


def litellm_stream(chunks: list[dict[str, Any]], reps: int) -> float:
    import litellm
    from litellm.litellm_core_utils.litellm_logging import Logging
    from litellm.responses.litellm_completion_transformation.streaming_iterator import (
        LiteLLMCompletionStreamingIterator,
    )
    from litellm.types.utils import ModelResponseStream

    litellm.suppress_debug_info = True
    raw = [json.dumps(c) for c in chunks]

    async def one() -> None:
        async def gen() -> Any:
            for text in raw:  # parsed from the wire, as a provider would
                yield ModelResponseStream(**json.loads(text))

        log = Logging(
            model="b",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            call_type="acompletion",
            start_time=time.time(),
            litellm_call_id="bench",
            function_id="bench",
        )
        wrapper = litellm.CustomStreamWrapper(
            completion_stream=gen(), model="b", logging_obj=log, custom_llm_provider="openai"
        )
        events = LiteLLMCompletionStreamingIterator(
            model="b",
            litellm_custom_stream_wrapper=wrapper,
            request_input="hi",
            responses_api_request={},
            custom_llm_provider="openai",
        )
        async for event in events:
            event.model_dump_json()

    async def run() -> float:
        await one()  # warm-up: first-use imports
        start = time.process_time()
        for _ in range(reps):
            await one()
        return (time.process_time() - start) / reps * 1000

    return asyncio.run(run())


def litellm_request(reps: int) -> float:
    from litellm.responses.litellm_completion_transformation.transformation import (
        LiteLLMCompletionResponsesConfig as Config,
    )

    params = {k: v for k, v in CODEX.items() if k not in ("input", "model")}
    start = time.process_time()
    for _ in range(reps):
        Config.transform_responses_api_request_to_chat_completion_request(
            model="b", input=CODEX["input"], responses_api_request=params, stream=True
        )
    return (time.process_time() - start) / reps * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=20, help="litellm streams per figure")
    args = ap.parse_args()
    chunks = chat_chunks(TOKENS)
    reads = [b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks]
    reads.append(b"data: [DONE]\n\n")
    ours_stream(reads, 20)  # warm-up
    rows = [
        (
            "stream of 256 tokens, ms CPU",
            ours_stream(reads, 50 * args.reps),
            litellm_stream(chunks, args.reps),
        ),
        ("Codex request, ms CPU", ours_request(100 * args.reps), litellm_request(10 * args.reps)),
    ]
    print_rows(rows)


if __name__ == "__main__":
    main()
