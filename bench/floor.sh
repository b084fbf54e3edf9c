#!/usr/bin/env bash
# The kernel's floor under the invocation-overhead ratio: the time two processes pinned to one core need for one
# 200-byte request/response exchange, over loopback TCP (as a check and the fake API talk) and over a pipe, with no
# user-space work around it. Each figure is the median of 5 runs of 100,000 exchanges. Needs a C compiler and taskset.
# Usage: bench/floor.sh [--smoke]   (--smoke: one short run of each, to prove the script works; scripts/test.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
out=target/bench/roundtrip
mkdir -p target/bench
cc -O2 -Wall -Werror -o "$out" bench/roundtrip.c
runs=5 exchanges=100000
if [ "${1:-}" = --smoke ]; then runs=1 exchanges=2000; fi
pin=(taskset -c 0)
command -v taskset >/dev/null || pin=()
for kind in tcp pipe; do
  for _ in $(seq "$runs"); do "${pin[@]}" "$out" "$kind" "$exchanges"; done | sort -t: -k2 -n | sed -n "$(( (runs + 1) / 2 ))p"
done
