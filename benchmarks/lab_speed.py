"""How fast the policy lab replays: simulated requests per second of CPU, on one core.

A synthetic trace (Poisson arrivals at ``--arrival-rate`` a second, three streams in four,
40 to 400 completion tokens) is replayed in process through two configs: the shipped
``routes.yaml``'s ``demo`` route (``score`` with ``p2c`` over the fast / slow / flaky
simulated hosts, 30% of the flaky one's answers failing and retried) and the same route
hedged (``lowest_ttft`` with ``hedge: {after: p90}``). Each is run ``--repeat`` times; the
best run's figures are shown (the machines are shared: the best is the least disturbed).
CPU seconds (``time.process_time``) are the figure to read on a busy machine; wall
seconds are shown beside them.

    python benchmarks/lab_speed.py [--requests 100000] [--repeat 3] [--only "score p2c"]

Instructions per simulated request, which do not move with the machine's load: one config
under callgrind at two sizes, the difference over the 2,500 requests between them
(start-up and warm-up cancel out)::

    setarch -R valgrind --tool=callgrind python benchmarks/lab_speed.py --requests 3000 \
        --repeat 1 --only "score p2c"     # then --requests 500; (Ir_3000 - Ir_500) / 2500

(``setarch -R``: address randomisation off, with ``PYTHONHASHSEED=0``; with it on, the
same code's count moves by up to 0.3% from run to run, as much as many single changes.)
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from router.config import loads  # noqa: E402
from router.lab.engine import simulate_config  # noqa: E402
from router.lab.trace import Trace, TraceRequest  # noqa: E402

CONFIGS = {
    "score p2c": ROOT / "routes.yaml",
    "lowest_ttft hedged p90": None,
}
HEDGED = """
providers:
  sim-fast:  {kind: simulated, ttft_ms: 60,  tokens_per_s: 120, jitter: 0.1}
  sim-slow:  {kind: simulated, ttft_ms: 450, tokens_per_s: 35,  jitter: 0.1}
  sim-flaky: {kind: simulated, ttft_ms: 80,  tokens_per_s: 100, error_rate: 0.3}
policies:
  hedged: {strategy: lowest_ttft, hedge: {after: p90, max_extra: 1}}
routes:
  demo:
    policy: hedged
    endpoints:
      - {provider: sim-fast,  model: demo-1}
      - {provider: sim-slow,  model: demo-1}
      - {provider: sim-flaky, model: demo-1}
"""


def trace(n: int, rate: float, seed: int = 1) -> Trace:
    rng = random.Random(seed)
    t = 1_750_000_000.0
    requests = []
    for i in range(n):
        t += rng.expovariate(rate)
        requests.append(
            TraceRequest(
                ts=t,
                route="demo",
                api="chat",
                stream=i % 4 != 0,
                prompt_tokens=rng.randint(200, 4000),
                completion_tokens=rng.randint(40, 400),
            )
        )
    return Trace("synthetic", requests)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=100_000)
    ap.add_argument("--arrival-rate", type=float, default=50.0, help="requests a second")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--only", choices=list(CONFIGS), help="one config (default: both)")
    args = ap.parse_args()
    tr = trace(args.requests, args.arrival_rate)
    print(
        f"{args.requests:,} requests, {args.arrival_rate:g}/s over {tr.span_s:,.0f} s of "
        f"trace time; best of {args.repeat}"
    )
    print(f"{'config':<24} {'CPU s':>7} {'req/CPU s':>10} {'wall s':>7} {'req/wall s':>11}")
    for name, path in CONFIGS.items():
        if args.only is not None and name != args.only:
            continue
        text = path.read_text() if path else HEDGED
        config = loads(text, path=str(path or "hedged"), env={})
        best = None
        for _ in range(args.repeat):
            run = simulate_config(config, tr, seed=1)
            if best is None or run.cpu_s < best.cpu_s:
                best = run
        assert best is not None
        n = len(best.outcomes)
        print(
            f"{name:<24} {best.cpu_s:>7.2f} {n / best.cpu_s:>10,.0f} "
            f"{best.wall_s:>7.2f} {n / best.wall_s:>11,.0f}"
        )


if __name__ == "__main__":
    main()
