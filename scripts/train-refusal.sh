#!/usr/bin/env bash
# Trains the refusal model from the shared labelled data and writes the
# committed weights (gateway/src/refusal/weights.rs). The features are the
# detector's own (gateway/src/refusal/features.rs), so the training runs
# through the gateway binary. gateway/tests/refusal_training.rs fails when
# the committed weights differ from what this produces.
#
#   scripts/train-refusal.sh [DATA_DIR]   (default: ../shared/data/refusal)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
data="${1:-$root/../shared/data/refusal}"
for f in dev.jsonl extra.jsonl; do
    [ -f "$data/$f" ] || { echo "train-refusal: $data/$f not found" >&2; exit 1; }
done
cd "$root"
cargo build --release --locked -p gateway --bin llm-gateway
./target/release/llm-gateway refusal train \
    --labeled "$data/dev.jsonl" "$data/extra.jsonl" \
    --out gateway/src/refusal/weights.rs
# The weights are compiled in: rebuild, then report the scores.
cargo build --release --locked -p gateway --bin llm-gateway
./target/release/llm-gateway refusal eval --loso \
    --labeled "$data/dev.jsonl" "$data/extra.jsonl"
