#!/usr/bin/env bash
# What the request log costs: the router with its log off, on SQLite and on PostgreSQL,
# measured interleaved in one run (benchmarks/requestlog_cost.py: interleaved cells, then all side by side; ~4 min).
#   bash benchmarks/requestlog_cost.sh [--pg postgresql+asyncpg://postgres@127.0.0.1:5432/test]
#                                      [--rounds 6] [--duration 2] [--reps 6]
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python benchmarks/requestlog_cost.py "$@"
