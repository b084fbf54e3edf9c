#!/usr/bin/env bash
# Supply-chain checks with cargo-deny, offline: advisories (RustSec snapshot from ../shared/advisory-db), licences,
# bans and sources. Installs cargo-deny from crates.io if it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
snapshot="${ADVISORY_DB_SNAPSHOT:-../shared/advisory-db}"
db="target/advisory-db/advisory-db-3157b0e258782691"   # the folder cargo-deny derives from the default URL
if [ ! -d "$db/.git" ]; then
  [ -d "$snapshot" ] || { echo "no advisory snapshot at $snapshot (set ADVISORY_DB_SNAPSHOT)"; exit 1; }
  rm -rf "$db" && mkdir -p "$db" && cp -R "$snapshot/." "$db/"
  chmod -R u+w "$db"
  git -C "$db" init -q
  git -C "$db" add -A
  git -C "$db" -c user.name=deny -c user.email=deny@localhost commit -qm "advisory snapshot"
fi
command -v cargo-deny >/dev/null || cargo install cargo-deny --locked
cargo fetch --locked
cargo deny --offline check advisories licenses bans sources
