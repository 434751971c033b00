#!/usr/bin/env bash
# End-to-end test: vllm-sim, llm-gateway (events to a file), log-shipper -> loki-receiver, and
# a real Prometheus evaluating logql-rules/prometheus/*.rules.yml every 5 s; loadgen scenarios
# must fire the right alerts, and every request must reach the receiver as exactly one event.
# See tests/README.md. Ends with a line `N passed, M failed`.
#
#   bash tests/e2e/run.sh          # or: scripts/test.sh e2e
#
# Needs: the Rust toolchain (binaries are built here, reusing the test build), Debian
# `prometheus` (installed when missing), python3 with PyYAML (jsonschema optional).
set -uo pipefail

cd "$(dirname "$0")/../.."
ROOT=$(pwd)
E2E_TIMEOUT_SECS=${E2E_TIMEOUT_SECS:-900}

fail() {
  echo "e2e: $*" >&2
  echo "0 passed, 1 failed"
  exit 1
}

need_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# Binaries: the same feature set as the test build, so nothing is recompiled after
# `cargo nextest run` / `cargo test` (integration tests make cargo build the bins too).
if [ -z "${E2E_BIN_DIR:-}" ]; then
  echo "e2e: cargo test --workspace --no-run --locked -q"
  cargo test --workspace --no-run --locked -q || fail "build failed"
  for b in vllm-sim loadgen llm-gateway log-shipper loki-receiver; do
    if [ ! -x "target/debug/$b" ]; then
      cargo build --workspace --bins --locked -q || fail "build failed"
      break
    fi
  done
fi

if [ -z "${PROMETHEUS:-}" ] && ! command -v prometheus >/dev/null; then
  echo "e2e: apt-get install prometheus"
  need_root apt-get update -qq &&
    DEBIAN_FRONTEND=noninteractive need_root apt-get install -y -qq --no-install-recommends prometheus >/dev/null ||
    fail "cannot install prometheus"
fi

PY=python3
[ -x "$ROOT/.venv/bin/python" ] && PY="$ROOT/.venv/bin/python"
"$PY" -c 'import yaml' 2>/dev/null || fail "$PY has no PyYAML (pip install -r requirements-test.txt)"

# The Debian package enables and starts a prometheus service; the test never uses it and
# starts its own on a free port with a temporary data directory.
# On the hard timeout the script gets SIGTERM, stops everything it started and still prints
# its summary; SIGKILL follows 30 s later if it does not.
out=$(mktemp)
trap 'rm -f "$out"' EXIT
timeout --signal=TERM --kill-after=30 "$E2E_TIMEOUT_SECS" "$PY" tests/e2e/e2e.py 2>&1 | tee "$out"
rc=${PIPESTATUS[0]}
if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
  echo "e2e: hard timeout after ${E2E_TIMEOUT_SECS}s" >&2
  grep -Eq '^[0-9]+ passed, [0-9]+ failed$' "$out" || echo "0 passed, 1 failed"
fi
exit "$rc"
