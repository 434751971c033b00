#!/usr/bin/env bash
# Tests of the Grafana dashboards: generator drift, then the lint (with its self-tests).
# Installs what is missing first: promtool (Debian package `prometheus`), the LogQL
# checker's npm packages (tools/logql), PyYAML. Ends with one line `N passed, M failed`.
#
#   bash dashboards/test.sh
set -euo pipefail

cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v promtool >/dev/null; then
  echo "installing promtool (apt package prometheus)"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
if [ ! -d tools/logql/node_modules/@grafana/lezer-logql ]; then
  echo "installing the LogQL checker (npm ci --prefix tools/logql)"
  npm ci --prefix tools/logql --no-audit --no-fund --loglevel=error >/dev/null
fi
if ! "$PY" -c 'import yaml' 2>/dev/null; then
  echo "installing PyYAML"
  "$PY" -m pip install -q --disable-pip-version-check 'PyYAML>=6,<7'
fi

passed=0
failed=0

echo "==> generate.py --check (committed JSON and ConfigMaps = generator output)"
if "$PY" dashboards/generate.py --check; then
  passed=$((passed + 1))
else
  failed=$((failed + 1))
fi

echo "==> lint.py --self-test"
out=$(mktemp)
trap 'rm -f "$out"' EXIT
set +e
"$PY" dashboards/lint.py --self-test | tee "$out"
rc=${PIPESTATUS[0]}
set -e
line=$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$out" | tail -n 1 || true)
if [ -n "$line" ]; then
  passed=$((passed + $(sed -E 's/^([0-9]+) passed.*/\1/' <<<"$line")))
  failed=$((failed + $(sed -E 's/.* ([0-9]+) failed$/\1/' <<<"$line")))
fi
if [ "$rc" -ne 0 ] && { [ -z "$line" ] || [ "$(sed -E 's/.* ([0-9]+) failed$/\1/' <<<"$line")" -eq 0 ]; }; then
  failed=$((failed + 1)) # the lint crashed
fi

echo "${passed} passed, ${failed} failed"
[ "$failed" -eq 0 ]
