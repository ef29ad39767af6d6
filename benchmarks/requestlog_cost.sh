#!/usr/bin/env bash
# What the request log costs: the router's throughput and latency with the log on SQLite,
# on PostgreSQL, and off, each measured by the same harness on the same machine.
#   bash benchmarks/requestlog_cost.sh [postgresql+asyncpg://postgres@127.0.0.1:5432/test]
set -euo pipefail
cd "$(dirname "$0")/.."
PG="${1:-${ROUTER_TEST_POSTGRES_URL:-postgresql+asyncpg://postgres@127.0.0.1:5432/test}}"
for storage in off "" "$PG"; do
  label="${storage:-sqlite}"
  echo "### request log: ${label%%@*}"
  .venv/bin/python benchmarks/perf.py --only router --no-workers --modes nonstream16,stream16 \
    --conns 16,64 --duration 4 --repeat 2 --storage "$storage" 2>/dev/null | grep -E "^\| router"
done
