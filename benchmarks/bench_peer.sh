#!/usr/bin/env bash
# `make bench-peer`: install LiteLLM Proxy (the incumbent) into its own venv, .bench-peer/
# (git-ignored, never mixed with the router's .venv), then run the benchmark with it as
# one more target. `benchmarks/bench_peer.sh --install-only` stops after the install;
# any other arguments go to benchmarks/perf.py (e.g. --quick).
#
# The version is pinned: 1.106.2, the release the issue's numbers were taken with.
# 1.82.7 and 1.82.8 are refused outright (compromised releases).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
PEER=.bench-peer
VERSION=${LITELLM_PEER_VERSION:-1.106.2}

case "$VERSION" in
  1.82.7|1.82.8) echo "bench-peer: refusing litellm $VERSION (compromised release)" >&2; exit 1 ;;
esac

installed() {
  [ -x "$PEER/bin/litellm" ] && "$PEER/bin/python" - "$VERSION" <<'EOF'
import sys
from importlib.metadata import version
sys.exit(0 if version("litellm") == sys.argv[1] else 1)
EOF
}

if ! installed; then
  echo "bench-peer: installing litellm[proxy]==$VERSION into $PEER/ (a few minutes)" >&2
  [ -x "$PEER/bin/python" ] || "$PYTHON" -m venv "$PEER"
  "$PEER/bin/python" -m pip install -qq --disable-pip-version-check --upgrade pip
  "$PEER/bin/python" -m pip install -qq --disable-pip-version-check "litellm[proxy]==$VERSION"
  installed || { echo "bench-peer: litellm $VERSION did not install" >&2; exit 1; }
fi
echo "bench-peer: $("$PEER/bin/python" -c 'from importlib.metadata import version; print("litellm", version("litellm"))') ready in $PEER/" >&2

if [ "${1:-}" = "--install-only" ]; then
  exit 0
fi
if [ ! -x .venv/bin/python ]; then
  echo "bench-peer: .venv is missing; run 'make bench' to build it and benchmark" >&2
  exit 0
fi
exec .venv/bin/python benchmarks/perf.py "$@"
