#!/usr/bin/env bash
# The benchmark suite: builds the release handler (and the static musl build), then measures it against its targets
# and prints a Markdown table (record it in docs/performance.md), followed by user-space instructions per status check
# for the handler and for the original app's Python check (bench/instructions.sh). Needs wrk, nginx and valgrind
# (installed with apt-get when missing and running as root) and Python 3 with venv (the original's `openai` client is
# installed from bench/requirements.txt into target/bench/venv). Usage: bench/run.sh [--smoke] [--only PART,...]
# (PART: startup, checks, memory, scale, large-blob, page, size; see `cargo run -p bench -- --help`)
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v wrk >/dev/null || need+=(wrk)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
command -v valgrind >/dev/null || need+=(valgrind)
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
    service nginx stop >/dev/null 2>&1 || true
  else
    echo "bench/run.sh needs: sudo apt-get install ${need[*]}" >&2; exit 1
  fi
fi
venv=target/bench/venv
if ! "$venv/bin/python" -c 'import openai' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r bench/requirements.txt
fi
cargo build --release --locked --bin handler
musl=()
if ./scripts/build-azure.sh >/dev/null 2>&1; then
  musl=(--musl target/x86_64-unknown-linux-musl/release/handler)
fi
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(date -u +%F)"
cargo run --quiet --profile tools -p bench -- --handler target/release/handler "${musl[@]}" \
  --python "$venv/bin/python" "$@"
if [[ " $* " == *" --only"* ]]; then
  exit 0  # one part re-measured: the instruction counts belong to the checks
elif [ "${1:-}" = --smoke ]; then
  ./bench/instructions.sh target/release/handler 1 20
else
  ./bench/instructions.sh
fi
