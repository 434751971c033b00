#!/usr/bin/env bash
# Measures the latency the gateway adds and its memory with many streams.
# Builds release binaries, starts vllm-sim (instant answers) and llm-gateway
# (events to a file, metrics on), and runs loadgen against both.
#   RATE=1000 DURATION=20 STREAMS=1000 gateway/scripts/overhead.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
RATE=${RATE:-1000}
DURATION=${DURATION:-20}
STREAMS=${STREAMS:-1000}
cargo build --release -p gateway -p sim >&2
BIN=${CARGO_TARGET_DIR:-target}/release
tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$tmp"; }
trap cleanup EXIT

launch() { # name cmd... ; starts in the background, pid in ${name}_pid
  local name=$1; shift
  "$@" 2>"$tmp/$name.err" >/dev/null &
  pids+=($!)
  eval "${name}_pid=$!"
}
addr() { # name ; prints the address from "listening on ADDR"
  local name=$1
  for _ in $(seq 100); do
    if grep -q '^listening on ' "$tmp/$name.err"; then
      grep -m1 '^listening on ' "$tmp/$name.err" | cut -d' ' -f3; return
    fi
    sleep 0.1
  done
  echo "$name did not start" >&2; cat "$tmp/$name.err" >&2; exit 1
}

launch sim $BIN/vllm-sim --listen 127.0.0.1:0 --model m --ttft-ms 0 --tokens-per-second 0 \
  --max-tokens-default 16 --max-concurrency 100000 --kv-cache-tokens 1000000000
SIM=$(addr sim)
launch gw $BIN/llm-gateway --listen 127.0.0.1:0 --upstream "http://$SIM" --events "$tmp/events.log"
GW=$(addr gw)

echo "== non-streaming, $RATE req/s for ${DURATION}s: direct to the simulator"
$BIN/loadgen steady --target "http://$SIM" --model m --rate "$RATE" --duration-secs "$DURATION" \
  --concurrency 2000 --max-tokens 16 --no-stream
echo "== same through llm-gateway"
$BIN/loadgen steady --target "http://$GW" --model m --rate "$RATE" --duration-secs "$DURATION" \
  --concurrency 2000 --max-tokens 16 --no-stream
echo "events written: $(wc -l < "$tmp/events.log")"
grep -E '^process_resident_memory_bytes|^process_cpu_seconds_total' <(curl -s "http://$GW/metrics")

echo "== $STREAMS concurrent streams (slow decode) through llm-gateway; gateway RSS while they run"
launch slow $BIN/vllm-sim --listen 127.0.0.1:0 --model m --ttft-ms 10 --tokens-per-second 5 \
  --max-tokens-default 100 --max-concurrency 100000 --kv-cache-tokens 1000000000
SLOW=$(addr slow)
launch gw2 $BIN/llm-gateway --listen 127.0.0.1:0 --upstream "http://$SLOW" --events "$tmp/events2.log"
GW2=$(addr gw2)
GW2PID=$gw2_pid
$BIN/loadgen latency-spike --target "http://$GW2" --model m --concurrency "$STREAMS" --duration-secs 15 \
  --max-tokens 100 >"$tmp/streams.out" 2>&1 &
lg=$!
peak=0
for _ in $(seq 14); do
  sleep 1
  rss=$(awk '/VmRSS/ {print $2}' /proc/$GW2PID/status)
  inflight=$(curl -s "http://$GW2/metrics" | awk '/^llm_gateway_in_flight_requests/ {s+=$2} END {print s+0}')
  [ "$rss" -gt "$peak" ] && peak=$rss
  echo "in flight $inflight  rss ${rss} kB"
done
wait $lg || true
tail -5 "$tmp/streams.out"
echo "peak gateway RSS: $((peak / 1024)) MiB"
