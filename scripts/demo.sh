#!/usr/bin/env bash
# Runs the gateway in front of a simulated vLLM with traffic, events and metrics flowing.
#
#   scripts/demo.sh                 # until Ctrl-C
#   DEMO_SECS=30 scripts/demo.sh    # stop by itself after 30 s
#   DEMO_PORT=9090 scripts/demo.sh  # another port (default 8080)
#
# It builds the release binaries, starts `llm-gateway --demo` (an in-process simulated
# vLLM upstream serving llama-3.1-8b-instruct and qwen2.5-32b-instruct), sends a steady
# trickle of chat requests with `loadgen` (5 % of the simulated answers are refusals, 1 %
# errors), and prints every JSON event as the gateway writes it. Events go to
# demo-out/events.jsonl; metrics are on http://127.0.0.1:$DEMO_PORT/metrics.
set -euo pipefail
cd "$(dirname "$0")/.."

PORT=${DEMO_PORT:-8080}
SECS=${DEMO_SECS:-0}
RATE=${DEMO_RATE:-4}
OUT=demo-out
BASE="http://127.0.0.1:${PORT}"

echo "==> building (first run: a few minutes)" >&2
cargo build --release --locked -q -p gateway -p sim --bins

mkdir -p "$OUT"
: >"$OUT/events.jsonl"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  echo >&2
  echo "==> stopped. Events: $OUT/events.jsonl ($(wc -l <"$OUT/events.jsonl") lines), gateway log: $OUT/gateway.log" >&2
}
trap cleanup EXIT
trap 'exit 0' INT TERM

target/release/llm-gateway --demo --listen "127.0.0.1:${PORT}" --events "$OUT/events.jsonl" \
  2>"$OUT/gateway.log" &
pids+=($!)

for _ in $(seq 1 100); do
  curl -fsS "$BASE/readyz" >/dev/null 2>&1 && break
  if ! kill -0 "${pids[0]}" 2>/dev/null; then
    echo "llm-gateway exited; its log:" >&2
    cat "$OUT/gateway.log" >&2
    exit 1
  fi
  sleep 0.1
done
curl -fsS "$BASE/readyz" >/dev/null || { echo "llm-gateway not ready; see $OUT/gateway.log" >&2; exit 1; }

cat >&2 <<MSG
==> llm-gateway is listening on ${BASE} (simulated vLLM upstream)
    try:     curl -s ${BASE}/v1/chat/completions -H 'content-type: application/json' \\
               -d '{"model":"llama-3.1-8b-instruct","messages":[{"role":"user","content":"hello"}]}'
    metrics: curl -s ${BASE}/metrics | grep '^llm_gateway_requests_total'
    models:  curl -s ${BASE}/v1/models
==> sending ${RATE} req/s with loadgen; events follow (Ctrl-C to stop)
MSG

# A trickle of traffic on both demo models, streaming and not.
duration=$([ "$SECS" -gt 0 ] && echo "$SECS" || echo 86400)
target/release/loadgen steady --target "$BASE" --model llama-3.1-8b-instruct --rate "$RATE" \
  --duration-secs "$duration" --quiet >"$OUT/loadgen-llama.txt" 2>&1 &
pids+=($!)
target/release/loadgen steady --target "$BASE" --model qwen2.5-32b-instruct --rate 1 --no-stream \
  --duration-secs "$duration" --quiet >"$OUT/loadgen-qwen.txt" 2>&1 &
pids+=($!)

tail -n +1 -f "$OUT/events.jsonl" &
pids+=($!)

if [ "$SECS" -gt 0 ]; then
  sleep "$SECS"
  sleep 2
  echo >&2
  echo "==> metrics after ${SECS}s:" >&2
  curl -fsS "$BASE/metrics" | grep -E '^llm_gateway_(requests_total|refusals_total|cost_usd_total)' | head -20 >&2 || true
else
  wait "${pids[0]}"
fi
