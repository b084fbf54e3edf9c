#!/usr/bin/env bash
# The whole test suite: unit tests, integration and end-to-end tests against a real Azurite, fuzzing, the load
# test and the benchmark smoke pass (bench/run.sh's harness, in tests/it). Installs what it needs on a fresh machine
# with Rust, Node.js and Python 3: Azurite (npm, pinned in package.json); for the benchmark smoke pass, wrk and nginx
# (apt-get, when running as root) and the original app's `openai` client (pip, pinned in bench/requirements.txt, in
# target/bench/venv); for the browser test of the operators' page, Debian's chromium and chromium-driver (apt-get).
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

if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
  echo "== installing chromium and chromium-driver for the browser test"
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
  else
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
  fi
fi

venv=target/bench/venv
if ! "$venv/bin/python" -c 'import openai, azure.storage.queue' 2>/dev/null; then
  echo "== installing the original app's client and the Azure queue SDK (pip, bench/ and tests/requirements.txt)"
  if ! python3 -m venv "$venv" >/dev/null 2>&1; then
    rm -rf "$venv"
    apt-get install -y -qq python3-venv >/dev/null 2>&1 || sudo apt-get install -y -qq python3-venv >/dev/null
    python3 -m venv "$venv"
  fi
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r bench/requirements.txt -r tests/requirements.txt
fi

# The tests that load the machine (1,000, 300 and 200 blobs through the whole stack, the benchmark smoke pass, 10,000
# records) run on their own, one at a time, after the rest: beside timing-sensitive tests on two cores they would
# make those flaky, and each other slower.
heavy=(load:: bench_smoke:: ten_thousand_records events_for_300_blobs)
skips=()
for t in "${heavy[@]}"; do skips+=(--skip "$t"); done

echo "== cargo test --workspace (all but the heavy tests)"
cargo test --workspace --locked -- "${skips[@]}"

echo "== the heavy tests, one at a time: ${heavy[*]}"
cargo test --locked --test it -- --test-threads=1 "${heavy[@]}"

