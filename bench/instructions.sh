#!/usr/bin/env bash
# User-space instructions per status check, counted by valgrind's callgrind, for the handler (a QueueMonitor
# invocation on the terminal path, driven by wrk) and for the original app's check (bench/original_check.py: the
# `openai` package's AzureOpenAI.batches.retrieve), both against the same nginx fake. Unlike wall-clock throughput,
# these counts hardly move with machine noise. Each count is net of a run that starts and stops without checking.
# Both handler runs start with one warm-up check, so one-time work (building the HTTP client, loading the trust store)
# cancels out; completion events are off, so a check does what the original's does: one retrieve and a log line.
# bench/run.sh runs this after its table (it writes the nginx fake and the wrk script under target/bench, and the
# venv). Usage: bench/instructions.sh [handler] [handler-secs] [python-checks]
set -euo pipefail
cd "$(dirname "$0")/.."
handler=${1:-target/release/handler}
secs=${2:-4}
checks=${3:-300}
conf=target/bench/nginx/nginx.conf
script=target/bench/terminal.lua
python=target/bench/venv/bin/python
[ -f "$conf" ] && [ -f "$script" ] || { echo "run bench/run.sh first (it writes $conf and $script)" >&2; exit 1; }
command -v valgrind >/dev/null || { echo "needs valgrind: apt-get install valgrind" >&2; exit 1; }
port=$(sed -n 's/.*listen 127.0.0.1:\([0-9]*\).*/\1/p' "$conf" | head -1)
done_id=$(sed -n 's|.*location = /openai/batches/\(batch_[0-9a-f-]*\) .*"completed".*|\1|p' "$conf" | head -1)
nginx -c "$PWD/$conf" -p "$PWD/target/bench/nginx" >/dev/null 2>&1 &
nginx_pid=$!
trap 'kill $nginx_pid 2>/dev/null' EXIT
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.05; done
out=$(mktemp -d)
# The check's envelope, as the wrk script sends it (between its long-bracket quotes).
body="$out/check.json"
sed -n 's/^wrk.body = \[==\[\(.*\)\]==\]$/\1/p' "$script" > "$body"
[ -s "$body" ] || { echo "no request body in $script" >&2; exit 1; }
account="DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;BlobEndpoint=http://127.0.0.1:$port/devstoreaccount1;QueueEndpoint=http://127.0.0.1:$port/devstoreaccount1;"
total() { awk '/^(summary|totals):/{print $2; exit}' "$1"; }
# Prints "<requests> <instructions>" for one handler run with `$1` seconds of load (0: start and stop only).
measure_handler() {
  FUNCTIONS_CUSTOMHANDLER_PORT=42199 OPENAI_ENDPOINT="http://127.0.0.1:$port" OPENAI_API_KEY=bench-key \
    BATCH_OUTPUT_CONTAINER=batch-output BlobStorageConnection="$account" BATCH_COMPLETED_QUEUE='' \
    valgrind --tool=callgrind --callgrind-out-file="$out/cg" "$handler" >/dev/null 2>"$out/valgrind.log" &
  local pid=$! n=0
  for _ in $(seq 200); do curl -s -o /dev/null http://127.0.0.1:42199/ && break; sleep 0.1; done
  curl -s -o /dev/null -H "Content-Type: application/json" --data-binary @"$body" http://127.0.0.1:42199/QueueMonitor
  if [ "$1" != 0 ]; then
    n=$(wrk -t1 -c8 -d"$1" -s "$script" http://127.0.0.1:42199/QueueMonitor | awk '/requests in/{print $1}')
  fi
  kill -INT $pid; wait $pid || true
  echo "$n $(total "$out/cg")"
}
# Prints the instructions of one Python run doing `$1` checks.
measure_python() {
  valgrind --tool=callgrind --callgrind-out-file="$out/py" "$python" bench/original_check.py \
    "http://127.0.0.1:$port" "$done_id" --count "$1" >/dev/null 2>"$out/py.log"
  total "$out/py"
}
read -r _ base < <(measure_handler 0)
read -r requests handler_total < <(measure_handler "$secs")
handler_per=$(( (handler_total - base) / requests ))
echo "handler: $requests checks; instructions per check: $handler_per"
if [ -x "$python" ]; then
  py_base=$(measure_python 0)
  py_total=$(measure_python "$checks")
  py_per=$(( (py_total - py_base) / checks ))
  echo "original (Python openai): $checks checks; instructions per check: $py_per"
  awk -v p="$py_per" -v h="$handler_per" 'BEGIN { printf "the original check runs %.1f× the handler'"'"'s instructions (target: >= 15)\n", p / h }'
fi
rm -rf "$out"
