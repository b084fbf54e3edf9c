#!/usr/bin/env bash
# User-space instructions per QueueMonitor check (terminal path), counted by valgrind's callgrind: unlike wall-clock
# throughput, this count hardly moves with machine noise, so it shows what a code change saves. Run bench/run.sh once
# first (it writes the nginx fake and the wrk script under target/bench). Usage: bench/instructions.sh [handler] [secs]
set -euo pipefail
cd "$(dirname "$0")/.."
handler=${1:-target/release/handler}
secs=${2:-4}
conf=target/bench/nginx/nginx.conf
script=target/bench/terminal.lua
[ -f "$conf" ] && [ -f "$script" ] || { echo "run bench/run.sh first (it writes $conf and $script)" >&2; exit 1; }
command -v valgrind >/dev/null || { echo "needs valgrind: apt-get install valgrind" >&2; exit 1; }
port=$(sed -n 's/.*listen 127.0.0.1:\([0-9]*\).*/\1/p' "$conf" | head -1)
nginx -c "$PWD/$conf" -p "$PWD/target/bench/nginx" >/dev/null 2>&1 &
nginx_pid=$!
trap 'kill $nginx_pid 2>/dev/null' EXIT
out=$(mktemp -d)
account="DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;BlobEndpoint=http://127.0.0.1:$port/devstoreaccount1;QueueEndpoint=http://127.0.0.1:$port/devstoreaccount1;"
# Prints "<requests> <instructions>" for one run with `$1` seconds of load (0: start and stop only).
measure() {
  FUNCTIONS_CUSTOMHANDLER_PORT=42199 OPENAI_ENDPOINT="http://127.0.0.1:$port" OPENAI_API_KEY=bench-key \
    BATCH_OUTPUT_CONTAINER=batch-output BlobStorageConnection="$account" \
    valgrind --tool=callgrind --callgrind-out-file="$out/cg" "$handler" >/dev/null 2>"$out/valgrind.log" &
  local pid=$! n=0
  for _ in $(seq 200); do curl -s -o /dev/null http://127.0.0.1:42199/ && break; sleep 0.1; done
  if [ "$1" != 0 ]; then
    n=$(wrk -t1 -c8 -d"$1" -s "$script" http://127.0.0.1:42199/QueueMonitor | awk '/requests in/{print $1}')
  fi
  kill -INT $pid; wait $pid || true
  echo "$n $(awk '/^(summary|totals):/{print $2; exit}' "$out/cg")"
}
read -r _ base < <(measure 0)
read -r requests total < <(measure "$secs")
echo "requests: $requests; instructions per check: $(( (total - base) / requests ))"
rm -rf "$out"
