#!/usr/bin/env bash
# Tests of logql-rules (and the LogQL checker in tools/logql). Run from anywhere:
#   bash logql-rules/test.sh
# Installs what is missing first: Debian packages prometheus (promtool) and
# prometheus-alertmanager (amtool, alertmanager), and the checker's npm packages
# (npm ci --prefix tools/logql). Needs python3 with PyYAML and node >= 20.
# Ends with one line `N passed, M failed`; exit code 1 if anything failed.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
RULES="$ROOT/logql-rules"
PASSED=0
FAILED=0
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

log() { printf '\n==> %s\n' "$*"; }
pass() { PASSED=$((PASSED + 1)); echo "ok - $1"; }
fail() {
  FAILED=$((FAILED + 1))
  echo "not ok - $1"
  [ -n "${2:-}" ] && sed 's/^/    /' <<<"$2" | tail -n 40
  return 0
}
# check NAME COMMAND...: one check, passes when COMMAND exits 0.
check() {
  local name=$1 out
  shift
  if out=$("$@" 2>&1); then pass "$name"; else fail "$name" "$out"; fi
}
# count_lines FILE: add the `ok - ` / `not ok - ` lines of a sub-suite to the totals.
count_lines() {
  local ok bad
  ok=$(grep -c '^ok - ' "$1" || true)
  bad=$(grep -c '^not ok - ' "$1" || true)
  PASSED=$((PASSED + ok))
  FAILED=$((FAILED + bad))
}
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# ---------------------------------------------------------------------------------------
log "setup"
missing=()
command -v promtool >/dev/null || missing+=(prometheus)
command -v amtool >/dev/null || missing+=(prometheus-alertmanager)
if ! command -v prometheus-alertmanager >/dev/null && ! command -v alertmanager >/dev/null; then
  missing+=(prometheus-alertmanager)
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "apt-get install ${missing[*]}"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends \
    $(printf '%s\n' "${missing[@]}" | sort -u) >/dev/null
fi
if [ ! -d "$ROOT/tools/logql/node_modules/@grafana/lezer-logql" ]; then
  echo "npm ci --prefix tools/logql"
  npm ci --prefix "$ROOT/tools/logql" --no-audit --no-fund --loglevel=error >/dev/null
fi
PY=${PYTHON:-python3}
if ! "$PY" -c 'import yaml' 2>/dev/null; then
  echo "python3 needs PyYAML (pip install PyYAML, or run through scripts/test.sh which uses .venv)" >&2
  echo "0 passed, 1 failed"
  exit 1
fi
promtool --version 2>&1 | head -n 1
amtool --version 2>&1 | head -n 1
node --version

# ---------------------------------------------------------------------------------------
log "promtool check rules"
for f in "$RULES"/prometheus/*.rules.yml; do
  check "promtool check rules prometheus/$(basename "$f")" promtool check rules "$f"
done

log "promtool test rules"
for f in "$RULES"/prometheus/tests/*.test.yml; do
  check "promtool test rules prometheus/tests/$(basename "$f")" promtool test rules "$f"
done

log "the promtool tests can fail"
# Mutation: raise VllmP95LatencyHigh's threshold from 8 s to 80 s in a copy; its firing case
# must then fail.
cp -r "$RULES/prometheus" "$WORK/mutant"
sed -i 's/model_name:vllm_e2e_request_latency_seconds:p95_rate5m > 8$/model_name:vllm_e2e_request_latency_seconds:p95_rate5m > 80/' \
  "$WORK/mutant/vllm.rules.yml"
if grep -q 'p95_rate5m > 80$' "$WORK/mutant/vllm.rules.yml" &&
  ! promtool test rules "$WORK/mutant/tests/vllm.test.yml" >/dev/null 2>&1; then
  pass "a changed alert threshold makes promtool test rules fail"
else
  fail "a changed alert threshold makes promtool test rules fail" "mutant not detected"
fi

# ---------------------------------------------------------------------------------------
log "alertmanager"
check "amtool check-config alertmanager/alertmanager.yml (secret files need not exist)" \
  amtool check-config "$RULES/alertmanager/alertmanager.yml"

# ---------------------------------------------------------------------------------------
log "conventions, coverage, runbooks, LogQL, routes, inhibitions"
rc=0
"$PY" "$RULES/tests/checks.py" conventions coverage runbooks logql routes inhibitions \
  >"$WORK/checks.out" 2>&1 || rc=$?
grep -v '^ok - ' "$WORK/checks.out" || true
echo "($(grep -c '^ok - ' "$WORK/checks.out" || true) checks ok)"
count_lines "$WORK/checks.out"
if [ "$rc" -ne 0 ] && ! grep -q '^not ok - ' "$WORK/checks.out"; then
  fail "tests/checks.py ran" "exit code $rc"
fi

log "LogQL checker's own tests (tools/logql)"
if node --test "$ROOT"/tools/logql/test/ >"$WORK/node.out" 2>&1; then node_rc=0; else node_rc=$?; fi
n_pass=$(sed -nE 's/^# pass ([0-9]+)$/\1/p' "$WORK/node.out")
n_fail=$(sed -nE 's/^# fail ([0-9]+)$/\1/p' "$WORK/node.out")
PASSED=$((PASSED + ${n_pass:-0}))
FAILED=$((FAILED + ${n_fail:-0}))
echo "node --test: ${n_pass:-0} passed, ${n_fail:-0} failed"
if [ "$node_rc" -ne 0 ]; then
  grep -E '^not ok|error' "$WORK/node.out" | head -n 20 || true
  [ "${n_fail:-0}" -eq 0 ] && fail "node --test tools/logql/test" "exit code $node_rc"
fi

# ---------------------------------------------------------------------------------------
log "generated Kubernetes forms"
check "deploy/k8s/base/rules matches logql-rules (python3 logql-rules/generate-k8s.py --check)" \
  "$PY" "$RULES/generate-k8s.py" --check
# The generated PrometheusRule holds exactly the source rules.
"$PY" - "$ROOT/deploy/k8s/base/rules/prometheus-rules.yaml" "$WORK/k8s-rules.yml" <<'EOF'
import sys, yaml
doc = yaml.safe_load(open(sys.argv[1], encoding="utf-8"))
yaml.safe_dump({"groups": doc["spec"]["groups"]}, open(sys.argv[2], "w", encoding="utf-8"))
EOF
check "the generated PrometheusRule's groups pass promtool check rules" \
  promtool check rules "$WORK/k8s-rules.yml"

log "runbook URLs come from settings.yml"
# In a copy: another pattern, regenerate; every runbook_url of the Prometheus rules, the Loki
# rules, the promtool tests and both Kubernetes forms must carry it, and the tests still pass.
mkdir -p "$WORK/root/deploy/k8s/base"
cp -r "$RULES" "$WORK/root/logql-rules"
cp -r "$ROOT/deploy/k8s/base/rules" "$WORK/root/deploy/k8s/base/rules"
sed -i 's|^runbook_url_pattern:.*|runbook_url_pattern: "https://runbooks.example.org/llm/%s"|' \
  "$WORK/root/logql-rules/settings.yml"
"$PY" "$WORK/root/logql-rules/generate-k8s.py" >/dev/null
runbook_urls_follow() {
  local stale
  stale=$(grep -rhoE 'runbook_url: *\S+' "$WORK/root/logql-rules/prometheus" "$WORK/root/logql-rules/loki" \
    "$WORK/root/deploy/k8s/base/rules" | grep -v 'runbook_url: *https://runbooks.example.org/llm/[a-z0-9]*$' || true)
  [ -z "$stale" ] || { echo "not from the pattern:"; echo "$stale" | head; return 1; }
  grep -q 'runbook_url: https://runbooks.example.org/llm/vllmenginedead$' "$WORK/root/deploy/k8s/base/rules/prometheus-rules.yaml" &&
    grep -q 'runbook_url: https://runbooks.example.org/llm/gatewayeventsmissing$' "$WORK/root/deploy/k8s/base/rules/loki-rules-configmap.yaml" &&
    promtool test rules "$WORK/root/logql-rules/prometheus/tests/vllm.test.yml" >/dev/null
}
check "a new runbook_url_pattern reaches the Prometheus and Loki rules, their tests and the Kubernetes forms" \
  runbook_urls_follow
# Drift: a hand-edited link must make --check fail.
sed -i '0,/runbook_url:/s|runbook_url: .*|runbook_url: https://example.com/hand-edited|' \
  "$WORK/root/logql-rules/prometheus/vllm.rules.yml"
if "$PY" "$WORK/root/logql-rules/generate-k8s.py" --check >/dev/null 2>&1; then
  fail "a hand-edited runbook_url makes generate-k8s.py --check fail" "not detected"
else
  pass "a hand-edited runbook_url makes generate-k8s.py --check fail"
fi

echo
echo "${PASSED} passed, ${FAILED} failed"
[ "$FAILED" -eq 0 ]
