#!/usr/bin/env bash
# The whole test suite: unit tests, integration and end-to-end tests against a real Azurite, the bench smoke run.
# Installs what it needs on a fresh machine with Rust and Node.js: Azurite (npm, pinned in package.json).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x node_modules/.bin/azurite ]; then
  echo "== installing Azurite (npm ci)"
  npm ci --no-audit --no-fund --loglevel=error
fi

echo "== cargo test --workspace"
cargo test --workspace --locked
