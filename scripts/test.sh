#!/usr/bin/env bash
# The whole test suite: unit tests, integration and end-to-end tests against a real Azurite, fuzzing, the load
# test and the benchmark smoke passes (bench/run.sh's harness in tests/it, bench/floor.sh at the end). Installs what
# it needs on a fresh machine with Rust and Node.js: Azurite (npm, pinned in package.json) and, for the benchmark
# smoke pass, wrk and nginx (apt-get, when running as root). bench/floor.sh needs a C compiler (cc).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x node_modules/.bin/azurite ]; then
  echo "== installing Azurite (npm ci)"
  npm ci --no-audit --no-fund --loglevel=error
fi

if ! command -v wrk >/dev/null || ! { command -v nginx >/dev/null || [ -x /usr/sbin/nginx ]; }; then
  echo "== installing wrk and nginx for the benchmark smoke pass"
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk nginx-light >/dev/null
  else
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk nginx-light >/dev/null
  fi
  # The package starts a system nginx on port 80; the benchmarks run their own.
  service nginx stop >/dev/null 2>&1 || true
fi

echo "== cargo test --workspace"
cargo test --workspace --locked

echo "== bench/floor.sh --smoke"
./bench/floor.sh --smoke
