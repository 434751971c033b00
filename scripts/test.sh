#!/usr/bin/env bash
# Runs every test of the project on a fresh machine: installs what it needs first
# (Debian: prometheus for promtool, prometheus-alertmanager for amtool; Python packages
# into .venv; the LogQL checker's and the Node SDK test's npm packages), then runs each stage and ends with
# one summary line `total: N passed, M failed`.
#
#   scripts/test.sh            # everything
#   scripts/test.sh rust rules # only some stages (see STAGES below)
set -uo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
STAGES=(setup lint rust python rules dashboards deploy e2e)
[ $# -gt 0 ] && STAGES=("$@")

RESULTS=$(mktemp)
trap 'rm -f "$RESULTS"' EXIT
FAILED_STAGES=()

log() { printf '\n==> %s\n' "$*"; }
# record STAGE PASSED FAILED
record() { echo "$1 $2 $3" >>"$RESULTS"; }

need_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

stage_setup() {
  local missing=()
  command -v promtool >/dev/null || missing+=(prometheus)
  command -v amtool >/dev/null || missing+=(prometheus-alertmanager)
  command -v jq >/dev/null || missing+=(jq)
  # prlimit and setpriv: the shipper's fd-limit and permission-fault tests.
  { command -v prlimit && command -v setpriv; } >/dev/null || missing+=(util-linux)
  if [ ${#missing[@]} -gt 0 ]; then
    log "apt-get install ${missing[*]}"
    need_root apt-get update -qq &&
      DEBIAN_FRONTEND=noninteractive need_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || return 1
  fi
  if [ ! -x .venv/bin/python ]; then
    log "python venv"
    python3 -m venv .venv || return 1
  fi
  .venv/bin/pip install -q --disable-pip-version-check -r requirements-test.txt || return 1
  if [ -f tools/logql/package.json ]; then
    log "npm ci tools/logql"
    npm ci --prefix tools/logql --no-audit --no-fund --loglevel=error >/dev/null || return 1
  fi
  # The official openai Node SDK, driven by the python stage (gateway/tests/node/sdk.mjs).
  log "npm ci gateway/tests/node"
  npm ci --prefix gateway/tests/node --no-audit --no-fund --loglevel=error >/dev/null || return 1
  record setup 1 0
}

stage_lint() {
  local ok=0 bad=0
  log "cargo fmt --check"
  if cargo fmt --all -- --check; then ok=$((ok + 1)); else bad=$((bad + 1)); fi
  log "cargo clippy --all-targets -D warnings"
  if cargo clippy --workspace --all-targets --locked -- -D warnings; then ok=$((ok + 1)); else bad=$((bad + 1)); fi
  record lint "$ok" "$bad"
  [ "$bad" -eq 0 ]
}

stage_rust() {
  log "cargo nextest run --workspace"
  local out rc
  out=$(mktemp)
  cargo nextest run --workspace --locked --no-fail-fast 2>&1 | tee "$out"
  rc=${PIPESTATUS[0]}
  # nextest summary: "Summary [ 12.3s] 120 tests run: 118 passed, 2 failed, 0 skipped"
  local line passed failed
  line=$(grep -E 'tests? run:' "$out" | tail -n 1)
  passed=$(sed -nE 's/.* ([0-9]+) passed.*/\1/p' <<<"$line")
  failed=$(sed -nE 's/.* ([0-9]+) failed.*/\1/p' <<<"$line")
  rm -f "$out"
  record rust "${passed:-0}" "${failed:-$([ "$rc" -eq 0 ] && echo 0 || echo 1)}"
  return "$rc"
}

# Runs a sub-suite script that ends with a line "N passed, M failed".
run_suite() {
  local name=$1; shift
  local out rc
  out=$(mktemp)
  "$@" 2>&1 | tee "$out"
  rc=${PIPESTATUS[0]}
  local line passed failed
  line=$(grep -E '^([A-Za-z-]+: )?[0-9]+ passed, [0-9]+ failed' "$out" | tail -n 1)
  passed=$(sed -nE 's/^([A-Za-z-]+: )?([0-9]+) passed.*/\2/p' <<<"$line")
  failed=$(sed -nE 's/.* ([0-9]+) failed.*/\1/p' <<<"$line")
  rm -f "$out"
  if [ -z "$line" ] && [ "$rc" -ne 0 ]; then failed=1; fi
  if [ "$rc" -ne 0 ] && [ "${failed:-0}" -eq 0 ]; then failed=1; fi
  record "$name" "${passed:-0}" "${failed:-0}"
  return "$rc"
}

stage_python() {
  log "pytest (official openai SDK against the gateway)"
  local out rc
  out=$(mktemp)
  # Same feature set as the nextest build, so nothing is recompiled after the rust stage.
  cargo test --workspace --no-run --locked -q || { record python 0 1; return 1; }
  LLM_GATEWAY_BIN="$ROOT/target/debug/llm-gateway" VLLM_SIM_BIN="$ROOT/target/debug/vllm-sim" \
    .venv/bin/python -m pytest -q gateway/tests/python bench/test_routing.py 2>&1 | tee "$out"
  rc=${PIPESTATUS[0]}
  local passed failed
  passed=$(grep -Eo '[0-9]+ passed' "$out" | tail -n 1 | grep -Eo '[0-9]+')
  failed=$(grep -Eo '[0-9]+ (failed|error)' "$out" | awk '{s+=$1} END {print s+0}')
  rm -f "$out"
  [ "$rc" -ne 0 ] && [ "${failed:-0}" -eq 0 ] && failed=1
  record python "${passed:-0}" "${failed:-0}"
  return "$rc"
}

stage_rules() { log "logql-rules"; PATH="$ROOT/.venv/bin:$PATH" run_suite rules bash logql-rules/test.sh; }
stage_dashboards() { log "dashboards"; PATH="$ROOT/.venv/bin:$PATH" run_suite dashboards bash dashboards/test.sh; }
stage_deploy() { log "deploy manifests"; PATH="$ROOT/.venv/bin:$PATH" run_suite deploy bash deploy/test.sh; }
stage_e2e() { log "end-to-end"; PATH="$ROOT/.venv/bin:$PATH" run_suite e2e bash tests/e2e/run.sh; }

for s in "${STAGES[@]}"; do
  if ! declare -F "stage_$s" >/dev/null; then
    echo "unknown stage: $s (stages: setup lint rust python rules dashboards deploy e2e)" >&2
    exit 2
  fi
  if ! "stage_$s"; then
    FAILED_STAGES+=("$s")
    grep -q "^$s " "$RESULTS" || record "$s" 0 1
    # Without the tools there is nothing meaningful left to run.
    [ "$s" = setup ] && break
  fi
done

log "summary"
printf '%-12s %8s %8s\n' stage passed failed
awk '{printf "%-12s %8d %8d\n", $1, $2, $3}' "$RESULTS"
total_passed=$(awk '{s+=$2} END {print s+0}' "$RESULTS")
total_failed=$(awk '{s+=$3} END {print s+0}' "$RESULTS")
[ ${#FAILED_STAGES[@]} -gt 0 ] && echo "failed stages: ${FAILED_STAGES[*]}"
echo "total: ${total_passed} passed, ${total_failed} failed"
[ ${#FAILED_STAGES[@]} -eq 0 ]
