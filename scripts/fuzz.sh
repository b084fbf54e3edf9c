#!/usr/bin/env bash
# A long fuzzing run of the parsers (the test suite runs 20,000 iterations). Usage: scripts/fuzz.sh [iterations] [seed]
set -euo pipefail
cd "$(dirname "$0")/.."
FUZZ_ITERATIONS="${1:-5000000}" FUZZ_SEED="${2:-$RANDOM$RANDOM}" \
  cargo test --profile tools --test it fuzz::parsers_survive -- --nocapture
