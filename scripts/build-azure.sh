#!/usr/bin/env bash
# Builds the static Linux handler for Azure and assembles the app to publish in target/azure/app: host.json, the
# function folders and handler. One switch picks the blob trigger's source:
#   scripts/build-azure.sh               polling (Premium, Dedicated): the repository's own function.json files
#   scripts/build-azure.sh --event-grid  "source": "EventGrid" on the blob trigger, which Flex Consumption requires
# Then: (cd target/azure/app && func azure functionapp publish <app>). The handler is also copied to ./handler, so
# publishing from the repository root (polling only) keeps working.
set -euo pipefail
cd "$(dirname "$0")/.."
event_grid=()
case "${1:-}" in
  "") ;;
  --event-grid) event_grid=(--event-grid) ;;
  *) echo "usage: $0 [--event-grid]" >&2; exit 2 ;;
esac
target=x86_64-unknown-linux-musl
rustup target add "$target" >/dev/null
# ring compiles a little C; without musl-tools, the system C compiler builds it fine for this target.
if ! command -v x86_64-linux-musl-gcc >/dev/null && ! command -v musl-gcc >/dev/null; then
  export CC_x86_64_unknown_linux_musl="${CC_x86_64_unknown_linux_musl:-cc}"
fi
cargo build --release --locked --target "$target" --bin handler
handler="target/$target/release/handler"
cp "$handler" ./handler
rm -rf target/azure/app
cargo run --quiet --locked -p devstack -- package target/azure/app "${event_grid[@]}" --handler "$handler"
ls -l target/azure/app target/azure/app/handler
