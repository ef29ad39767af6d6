"""Added latency of the litellm path vs the OpenAI-compatible path, through the real router.

Run from the repository root:  .venv/bin/python benchmarks/litellm_overhead.py [N]
Three single-endpoint routes on one router process, upstreams answer at once:
  openai            kind: openai  -> tests.support.FakeUpstream (OpenAI-compatible)
  litellm-openai    kind: litellm, model openai/bench -> the same FakeUpstream
  litellm-anthropic kind: litellm, model anthropic/claude-sonnet-4-6 -> tests.fakes.anthropic
N sequential non-streamed requests per route (after 20 warm-up ones), one keep-alive client.
"""

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import httpx

from tests.fakes.anthropic import FakeAnthropic
from tests.support import FakeUpstream, RouterProcess, routes_yaml

N = int(sys.argv[1]) if len(sys.argv) > 1 else 200
TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """utime + stime of the router process (and its threads: litellm uses an executor)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


with FakeAnthropic() as anth, FakeUpstream() as compat, tempfile.TemporaryDirectory() as tmp:
    config = routes_yaml(
        "  openai:\n    endpoints:\n      - {provider: compat, model: bench}\n"
        "  litellm-openai:\n    endpoints:\n      - {provider: viallm, model: openai/bench}\n"
        "  litellm-anthropic:\n    endpoints:\n      - {provider: anth, model: anthropic/claude-sonnet-4-6}\n",
        f"  compat: {{kind: openai, base_url: '{compat.base_url}'}}\n"
        f"  viallm: {{kind: litellm, base_url: '{compat.base_url}', api_key_env: BENCH_KEY}}\n"
        f"  anth: {{kind: litellm, base_url: '{anth.url}', api_key_env: BENCH_KEY}}\n",
    )
    with RouterProcess(config, Path(tmp), env={"BENCH_KEY": "k", "LOG_LEVEL": "warning"}) as router:
        with httpx.Client(base_url=router.base_url, timeout=30) as client:
            body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 16}
            for route in ("openai", "litellm-openai", "litellm-anthropic"):
                for _ in range(20):
                    client.post(
                        "/chat/completions", json={**body, "model": route}
                    ).raise_for_status()
                ms = []
                cpu0 = cpu_s(router.proc.pid)
                for _ in range(N):
                    t = time.perf_counter()
                    r = client.post("/chat/completions", json={**body, "model": route})
                    r.raise_for_status()
                    ms.append((time.perf_counter() - t) * 1000)
                cpu = (cpu_s(router.proc.pid) - cpu0) * 1000 / N
                q = statistics.quantiles(ms, n=10)
                print(
                    f"{route:18s} n={N} median={statistics.median(ms):.2f} ms p90={q[8]:.2f} ms "
                    f"mean={statistics.fmean(ms):.2f} ms  router CPU {cpu:.2f} ms/req"
                )
