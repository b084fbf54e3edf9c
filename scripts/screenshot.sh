#!/usr/bin/env bash
# Regenerates docs/jobs-page.png, the README's picture of the operators' page: the browser test (tests/it/browser.rs)
# fills a page with jobs in every state, renders it in headless Chromium and saves what it shows.
set -euo pipefail
cd "$(dirname "$0")/.."
JOBS_PAGE_SCREENSHOT="$PWD/docs/jobs-page.png" cargo test --locked --test it browser -- --nocapture
echo "wrote docs/jobs-page.png"
