#!/usr/bin/env bash
# Checks every `az` command scripts/deploy-azure.sh runs against the az CLI's own argument parser, without Azure:
# each command of the --dry-run plans (Flex and Premium) is run with no login. A well-formed command gets as far as
# needing a login ("Please run 'az login'"); a malformed one stops at a usage error. Installs azure-cli into
# target/azcli (a Python venv) when `az` is not on the path. Not part of scripts/test.sh: it downloads ~300 MB.
set -euo pipefail
cd "$(dirname "$0")/.."
if command -v az >/dev/null; then
  az=az
else
  if [ ! -x target/azcli/bin/az ]; then
    python3 -m venv target/azcli
    target/azcli/bin/pip install --quiet azure-cli
  fi
  az=$PWD/target/azcli/bin/az
fi
# A config of its own: no login, no telemetry, no prompts.
AZURE_CONFIG_DIR=$(mktemp -d)
export AZURE_CONFIG_DIR AZURE_CORE_COLLECT_TELEMETRY=false AZURE_CORE_ONLY_SHOW_ERRORS=true
trap 'rm -rf "$AZURE_CONFIG_DIR"' EXIT
"$az" version --query '"azure-cli"' -o tsv | sed 's/^/azure-cli /'

commands=$( { scripts/deploy-azure.sh --app bbm-demo --openai aoai-demo --openai-group rg-ai --dry-run 2>&1
              scripts/deploy-azure.sh --app bbm-demo --openai aoai-demo --openai-group rg-ai --plan premium --dry-run 2>&1
            } | grep '^az ' | sort -u)
ok=0 bad=0
while IFS= read -r command; do
  # The plan's lines are shell-quoted (printf %q): eval turns each back into its arguments.
  eval "set -- ${command#az }"
  out=$("$az" "$@" 2>&1 </dev/null || true)
  if grep -q "az login" <<<"$out"; then
    ok=$((ok + 1))
  else
    bad=$((bad + 1))
    printf 'REFUSED: %s\n%s\n\n' "$command" "$(head -5 <<<"$out")"
  fi
done <<<"$commands"
echo "$ok az commands accepted by the parser (stopped at the login), $bad refused"
[ "$bad" -eq 0 ]
