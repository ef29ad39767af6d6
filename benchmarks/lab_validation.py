"""Is the policy lab worth what it predicts? The lab against the real router.

The fast / slow / flaky fleet of ``routing_quality.py`` (three ``router sim-upstream``
processes: TTFT 60 ms; 450 ms; 80 ms with 30% HTTP 500s) behind a real ``router serve``
with its request log on (SQLite), the same seeded workload as that benchmark (streams at
fixed concurrency). Then:

1. **Replay.** Policy A runs for real; the lab reads the router's request log, fits the
   fleet from A's attempts alone, and replays A's recorded arrivals through the same
   config. TTFT p50/p95 (the client's: request start to first token) and each endpoint's
   share of the successful requests are compared with what the clients saw.
2. **Prediction.** From the same fit (A's log only), the lab predicts what other policies
   would do on A's arrivals; each is then run for real and compared.

A figure passes when the lab is within 10% of the real run (shares: 10% of the real
share, or one percentage point, whichever is larger: one point is six requests of 600).
Beside the clients' TTFT the table shows the router's own (its request log's, from the
serving attempt's start): the difference is time outside the router's view (the client,
the sockets, and on a busy machine the wait for a core), which the lab does not add.

    python benchmarks/lab_validation.py [--requests 600] [--concurrency 8]
        [--policy score_p2c] [--predict round_robin,lowest_ttft] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from routing_quality import ENDPOINTS, STRATEGIES
from scenario import Router, Run, Sim, drive, dump, pct, table

from router.config import loads
from router.lab.engine import simulate_config
from router.lab.figures import summarise
from router.lab.trace import Trace, read

POLICIES = dict(STRATEGIES)
# Listed slow first, as routing_quality.py lists them (priority and cheapest see the cost).
ENDPOINT_LINES = (
    "      - {provider: slow, model: m, price: {input: 0.5, output: 1.0}}\n"
    "      - {provider: fast, model: m, price: {input: 3.0, output: 15.0}}\n"
    "      - {provider: flaky, model: m, price: {input: 1.0, output: 2.0}}"
)
DEFAULTS = (
    "defaults:\n"
    "  retry: {attempts: 3, backoff_s: 0.01, backoff_max_s: 0.1}\n"
    "  breaker: {consecutive_failures: 50, error_rate: 0.9, min_requests: 1000}\n"
)


def config(urls: dict[str, str], storage: str | None, routes: dict[str, str]) -> str:
    """``routes``: route name -> policy name (of ``routing_quality.STRATEGIES``);
    ``storage``: the request log's URL, or None for none (the lab's configs)."""
    providers = "\n".join(f"  {n}: {{kind: openai, base_url: '{u}/v1'}}" for n, u in urls.items())
    policies = "\n".join(f"  {name}: {POLICIES[name]}" for name in sorted(set(routes.values())))
    body = "\n".join(
        f"  {route}:\n    policy: {policy}\n    endpoints:\n{ENDPOINT_LINES}"
        for route, policy in routes.items()
    )
    log = "null" if storage is None else f"'{storage}'"
    return (
        f"storage: {{url: {log}, flush_interval_s: 0.2}}\n{DEFAULTS}"
        f"providers:\n{providers}\npolicies:\n{policies}\nroutes:\n{body}\n"
    )


def real_figures(run: Run) -> dict[str, Any]:
    """What the clients saw: TTFT over the successful streams, shares of the successful."""
    ok = [r for r in run.results if r.ok]
    ttfts = [r.ttft * 1000 for r in ok if r.ttft is not None]
    return {
        "n": len(run.results),
        "success": len(ok) / max(1, len(run.results)),
        "ttft_p50": pct(ttfts, 0.5),
        "ttft_p95": pct(ttfts, 0.95),
        "share": {e: sum(r.endpoint == e for r in ok) / max(1, len(ok)) for e in ENDPOINTS},
    }


def lab_figures(summary: dict[str, Any], route: str) -> dict[str, Any]:
    return {
        "n": summary["requests"],
        "success": summary["success_rate"],
        "ttft_p50": summary["ttft_ms"]["p50"],
        "ttft_p95": summary["ttft_ms"]["p95"],
        "share": {e: summary["share"].get(f"{route}/{e}", 0.0) for e in ENDPOINTS},
    }


def only_route(trace: Trace, route: str) -> Trace:
    return Trace(
        trace.source,
        [r for r in trace.requests if r.route == route],
        [a for a in trace.attempts if a.route == route],
    )


def within(lab: float, real: float, floor: float = 0.0) -> bool:
    return abs(lab - real) <= max(0.10 * abs(real), floor)


def rows_for(
    name: str,
    real: dict[str, Any],
    again: dict[str, Any] | None,
    labs: list[dict[str, Any]],
    logged: dict[str, float],
) -> list[list[str]]:
    """One policy's rows: the real run, the real run again (the noise floor: how far two
    real runs of the same policy land apart), the router's own TTFT, the lab (its first
    seed, compared) and the range the lab's seeds span."""
    rows = []
    lab = labs[0]
    for key in ("ttft_p50", "ttft_p95"):
        r, m = real[key], lab[key]
        spread = [x[key] for x in labs]
        rows.append(
            [name, key.replace("_", " ") + " ms", f"{r:.1f}",
             "" if again is None else f"{again[key]:.1f}", f"{logged.get(key, 0):.1f}",
             f"{m:.1f}", f"{min(spread):.1f}-{max(spread):.1f}", f"{(m - r) / r:+.1%}",
             "yes" if within(m, r) else "NO"]
        )  # fmt: skip
    for e in ENDPOINTS:
        r, m = real["share"][e], lab["share"][e]
        spread = [x["share"][e] for x in labs]
        rel = f"{(m - r) / r:+.1%}" if r else "-"
        rows.append(
            [name, f"share {e}", f"{r:.1%}", "" if again is None else f"{again['share'][e]:.1%}",
             "", f"{m:.1%}", f"{min(spread):.1%}-{max(spread):.1%}",
             f"{rel} ({(m - r) * 100:+.1f} pt)", "yes" if within(m, r, 0.01) else "NO"]
        )  # fmt: skip
    return rows


async def logged_ttft(url: str) -> dict[str, dict[str, float]]:
    """Per route, the TTFT the router logged for its successful requests (the serving
    attempt's, from its start): the real run without the client's side of each hop."""
    import sqlalchemy as sa

    from router.requestlog.schema import REQUESTS, make_engine

    engine = make_engine(url)
    r = REQUESTS.c
    try:
        async with engine.connect() as conn:
            rows = (
                await conn.execute(
                    sa.select(r.route, r.ttft_ms).where(r.status == 200, r.ttft_ms.is_not(None))
                )
            ).all()
    finally:
        await engine.dispose()
    by_route: dict[str, list[float]] = {}
    for route, ttft in rows:
        by_route.setdefault(route, []).append(ttft)
    return {
        route: {"ttft_p50": pct(v, 0.5), "ttft_p95": pct(v, 0.95)} for route, v in by_route.items()
    }


async def run_real(url: str, route: str, n: int, conc: int) -> Run:
    return await drive(url, route, n=n, concurrency=conc)


def print_tables(
    header: list[str],
    rows: Callable[[str], list[list[str]]],
    policy: str,
    predict: Iterable[str],
    fleet: dict[str, Any],
) -> None:
    """The replay's table (``policy``), the prediction's (the others), and the fleet as
    fitted: the part of the report both lab validations print alike."""
    print(table([header, *rows(policy)]))
    print(f"\n2. Prediction: the fit from {policy}'s log, other policies on its arrivals")
    print(table([header, *(row for other in predict for row in rows(other))]))
    print("\nThe fleet as fitted:")
    for ep, how in sorted(fleet.items()):
        print(f"  {ep}: " + ", ".join(f"{k} {v}" for k, v in how.items()))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=600)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--policy", default="score_p2c", help="policy A, replayed")
    ap.add_argument("--predict", default="round_robin,lowest_ttft", help="policies predicted")
    ap.add_argument("--seed", type=int, default=0, help="the lab's (first) seed")
    ap.add_argument("--lab-seeds", type=int, default=5, help="lab runs, seeds from --seed on")
    ap.add_argument(
        "--no-again", dest="again", action="store_false",
        help="skip the second real run of each policy (the noise floor)",
    )  # fmt: skip
    ap.add_argument("--json")
    args = ap.parse_args()
    predict = [p for p in args.predict.split(",") if p]
    for name in [args.policy, *predict]:
        if name not in POLICIES:
            ap.error(f"unknown policy {name!r}; known: {', '.join(POLICIES)}")

    tmp = Path(tempfile.mkdtemp(prefix="lab-validation-"))
    log_url = f"sqlite+aiosqlite:///{tmp / 'log.db'}"
    sims = {
        "fast": Sim("fast", "--ttft-ms", "60", "--tokens-per-s", "120", "--seed", "1").start(),
        "slow": Sim("slow", "--ttft-ms", "450", "--tokens-per-s", "35", "--seed", "2").start(),
        "flaky": Sim(
            "flaky", "--ttft-ms", "80", "--tokens-per-s", "100", "--error-rate", "0.3",
            "--seed", "3",
        ).start(),
    }  # fmt: skip
    urls = {name: sim.url for name, sim in sims.items()}
    names = [args.policy, *predict]
    routes = {f"real-{name}": name for name in names}
    if args.again:
        routes.update({f"again-{name}": name for name in names})
    router = Router(config(urls, log_url, routes)).start()
    real: dict[str, dict[str, Any]] = {}
    try:
        for route in routes:
            run = asyncio.run(run_real(router.url, route, args.requests, args.concurrency))
            real[route] = real_figures(run)
            print(f"  {route}: done", file=sys.stderr)
    finally:
        router.stop()  # SIGTERM: the request log is flushed before it exits
        for sim in sims.values():
            sim.stop()

    recorded = only_route(read(log_url), f"real-{args.policy}")
    print(
        f"  request log: {len(recorded.requests)} requests, {len(recorded.attempts)} attempts "
        f"of real-{args.policy}",
        file=sys.stderr,
    )
    lab: dict[str, list[dict[str, Any]]] = {}
    fleet: dict[str, Any] = {}
    route = f"real-{args.policy}"
    for policy in [args.policy, *predict]:
        cfg = loads(config(urls, None, {route: policy}), path=f"lab-{policy}.yaml", env={})
        lab[policy] = []
        for seed in range(args.seed, args.seed + args.lab_seeds):
            run = simulate_config(cfg, recorded, seed=seed)
            summary = summarise(run, policy)
            lab[policy].append(lab_figures(summary, route))
            fleet = summary["fleet"]
        print(f"  lab {policy}: {args.lab_seeds} seeds", file=sys.stderr)

    logged = asyncio.run(logged_ttft(log_url))
    header = [
        "policy", "figure", "real", "real again", "router's log", "lab",
        f"lab, {args.lab_seeds} seeds", "lab vs real", "within 10%",
    ]  # fmt: skip

    def rows(policy: str) -> list[list[str]]:
        again = real.get(f"again-{policy}")
        return rows_for(
            policy, real[f"real-{policy}"], again, lab[policy], logged[f"real-{policy}"]
        )

    print(
        f"\n1. Replay: {args.requests} streaming requests of policy {args.policy} at "
        f"concurrency {args.concurrency}, fitted from its own request log and replayed"
    )
    print_tables(header, rows, args.policy, predict, fleet)
    print(
        "\nreal: what the clients saw; real again: a second real run of the same policy (how"
        " far two real runs land apart); router's log: the serving attempt's TTFT as the"
        " router logged it (no client or transport time); lab: the replay or prediction"
        " (its first seed), and the range its seeds span"
    )
    dump(
        args.json,
        {"real": real, "logged": logged, "lab": lab, "fleet": fleet, "args": vars(args)},
    )


if __name__ == "__main__":
    main()
