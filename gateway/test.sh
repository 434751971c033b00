#!/usr/bin/env bash
# Runs every gateway test: Rust unit + integration tests, then the official
# openai Python SDK tests against the built binaries.
# Needs: cargo; python3 with `openai` and `pytest` (pip install openai pytest).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test -p gateway
cargo build -p gateway -p sim
python3 -m pytest -q -p no:cacheprovider gateway/tests/python
