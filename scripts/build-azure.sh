#!/usr/bin/env bash
# Builds the static Linux handler for Azure and copies it to ./handler, next to host.json, ready for
# `func azure functionapp publish <app>`.
set -euo pipefail
cd "$(dirname "$0")/.."
target=x86_64-unknown-linux-musl
rustup target add "$target" >/dev/null
# ring compiles a little C; without musl-tools, the system C compiler builds it fine for this target.
if ! command -v x86_64-linux-musl-gcc >/dev/null && ! command -v musl-gcc >/dev/null; then
  export CC_x86_64_unknown_linux_musl="${CC_x86_64_unknown_linux_musl:-cc}"
fi
cargo build --release --locked --target "$target" --bin handler
cp "target/$target/release/handler" ./handler
ls -l handler
