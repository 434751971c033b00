#!/usr/bin/env bash
# Benchmarks of the gateway and the log shipper: one command, loopback only, bounded in time.
#
#   bench/run.sh            full run (~20-25 min on 2 cores)
#   bench/run.sh --quick    smoke run (~3 min)
#   bench/run.sh --pin      pin the load generator to CPU 0 and the servers to CPU 1
#   bench/run.sh --skip litellm,shipper,...   (see bench/bench.py --help)
#   bench/run.sh --litellm-workers 1          (LiteLLM proxies to compare: default 1 and 2 workers)
#
# Builds the release binaries, installs nginx-light (Debian) and LiteLLM into bench/.venv
# (if it can), runs
# bench/bench.py, writes bench/results/<date>.md and .json and prints a summary.
# Raw per-window loadgen output and process logs go to bench/out/<timestamp>/.
set -euo pipefail
cd "$(dirname "$0")/.."

ARGS=()
INSTALL=1
for a in "$@"; do
  case "$a" in
    --no-install) INSTALL=0 ;;
    *) ARGS+=("$a") ;;
  esac
done

# 1,000 concurrent streams need file descriptors in the gateway, the sim and loadgen.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

echo "== building release binaries" >&2
cargo build --release --locked -p gateway -p sim -p log-shipper

mkdir -p bench/out
if [ "$INSTALL" = 1 ]; then
  # perf (profiles) and taskset (pinning) are optional: the run goes on without them.
  if ! command -v perf >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "== installing linux-perf (optional)" >&2
    (apt-get install -y -qq linux-perf >/dev/null 2>&1 ||
      { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq linux-perf >/dev/null 2>&1; }) ||
      echo "   linux-perf not installed: the profile section will be skipped" >&2
  fi
  # nginx (Debian nginx-light): the plain reverse proxy every run compares with (bench/nginx.conf).
  if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ] && command -v apt-get >/dev/null 2>&1 &&
    [ "$(id -u)" = 0 ]; then
    echo "== installing nginx-light" >&2
    (apt-get install -y -qq nginx-light >/dev/null 2>&1 ||
      { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq nginx-light >/dev/null 2>&1; }) ||
      echo "   nginx-light not installed: the nginx column will say so" >&2
  fi
  # LiteLLM proxy, pinned, in a private venv; a failure is recorded, not fatal.
  STATUS=bench/out/litellm-install-status
  if [ ! -x bench/.venv/bin/litellm ]; then
    echo "== installing litellm[proxy]==1.103.7 into bench/.venv" >&2
    if python3 -m venv bench/.venv >bench/out/litellm-install.log 2>&1 &&
      timeout 900 bench/.venv/bin/pip install -q 'litellm[proxy]==1.103.7' >>bench/out/litellm-install.log 2>&1; then
      rm -f "$STATUS"
    else
      { echo "pip install 'litellm[proxy]==1.103.7' failed:"; tail -n 15 bench/out/litellm-install.log; } >"$STATUS"
      echo "   LiteLLM could not be installed (see $STATUS); the run goes on without it" >&2
    fi
  fi
fi

echo "== running benchmarks" >&2
# Hard bound on the whole measurement (the phases are bounded themselves).
exec timeout --signal=INT --kill-after=30 1800 python3 bench/bench.py --command "bench/run.sh" "${ARGS[@]}"
