#!/usr/bin/env bash
# The benchmark suite: builds the release handler (and the static musl build), then measures it against its targets
# and prints a Markdown table (record it in docs/performance.md). Needs wrk and nginx (installed with apt-get when
# missing and running as root). Usage: bench/run.sh [--smoke]
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v wrk >/dev/null || ! { command -v nginx >/dev/null || [ -x /usr/sbin/nginx ]; }; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq wrk nginx-light >/dev/null
    service nginx stop >/dev/null 2>&1 || true
  else
    echo "bench/run.sh needs wrk and nginx: sudo apt-get install wrk nginx-light" >&2; exit 1
  fi
fi
cargo build --release --locked --bin handler
musl=()
if ./scripts/build-azure.sh >/dev/null 2>&1; then
  musl=(--musl target/x86_64-unknown-linux-musl/release/handler)
fi
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(date -u +%F)"
cargo run --quiet --profile tools -p devstack -- bench --handler target/release/handler "${musl[@]}" "$@"
