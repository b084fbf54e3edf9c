#!/usr/bin/env bash
# One command to Azure, with no keys anywhere. Creates or reuses: the resource group, the storage account (its
# containers and queues), the function app with a system-assigned managed identity (Flex Consumption by default,
# Elastic Premium with --plan premium), the role assignments (the app on the storage account and on the Azure OpenAI
# resource; the Azure OpenAI resource's own identity on the storage account, which blob mode needs), the app settings;
# builds the static handler and publishes it with Core Tools; on Flex, then creates the Event Grid subscription of
# batch-input to the blobs webhook, once the blobs_extension key exists. Running it twice changes nothing.
#
# Usage:
#   scripts/deploy-azure.sh --app NAME --openai NAME --openai-group GROUP [--group GROUP] [--location LOCATION]
#                           [--storage NAME] [--plan flex|premium] [--dry-run]
# --dry-run prints every command, one a line on stderr, without running any (no az, func or cargo needed); values
# that commands would return show as <placeholders>.
# Needs: az (logged in, with Owner or User Access Administrator on the group, for the role assignments), Core Tools
# (func), cargo (the handler's static build). See the README, "Deploying to Azure".
set -euo pipefail
cd "$(dirname "$0")/.."

app="" openai="" openai_group="" group="" location="swedencentral" storage="" plan="flex" dry_run=false
while [ $# -gt 0 ]; do
  case "$1" in
    --app) app=$2; shift 2 ;;
    --openai) openai=$2; shift 2 ;;
    --openai-group) openai_group=$2; shift 2 ;;
    --group) group=$2; shift 2 ;;
    --location) location=$2; shift 2 ;;
    --storage) storage=$2; shift 2 ;;
    --plan) plan=$2; shift 2 ;;
    --dry-run) dry_run=true; shift ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done
[ -n "$app" ] && [ -n "$openai" ] && [ -n "$openai_group" ] || { echo "--app, --openai and --openai-group are required" >&2; exit 2; }
case "$plan" in flex|premium) ;; *) echo "--plan is flex or premium" >&2; exit 2 ;; esac
group=${group:-rg-$app}
# Storage account names: 3-24 lowercase letters and digits.
storage=${storage:-$(printf '%s' "st${app}" | tr -cd 'a-z0-9' | cut -c1-24)}

# Runs a command, or prints it under --dry-run.
run() {
  if $dry_run; then
    printf '%q ' "$@" | sed 's/ $//' >&2; echo >&2
  else
    "$@"
  fi
}

# Prints a command's output (one value), or, under --dry-run, the command and then the placeholder standing for it.
capture() {
  local placeholder=$1; shift
  if $dry_run; then
    printf '%q ' "$@" | sed 's/ $//' >&2; echo >&2
    echo "$placeholder"
  else
    "$@"
  fi
}

# Grants `role` to `principal` on `scope` unless it is granted already.
grant() {
  local principal=$1 role=$2 scope=$3
  local existing
  # By principal id, not --assignee: a new identity may not have reached the directory yet.
  existing=$(capture "" az role assignment list --role "$role" --scope "$scope" --query "[?principalId=='$principal'].id | [0]" -o tsv)
  if [ -z "$existing" ]; then
    run az role assignment create --assignee-object-id "$principal" --assignee-principal-type ServicePrincipal \
      --role "$role" --scope "$scope" -o none
  fi
}

echo "# 1. Resource group and storage account (containers and queues through the management plane: no data role needed)" >&2
run az group create --name "$group" --location "$location" -o none
# Flex needs no key at all; Elastic Premium keeps its content share on Azure Files, which the platform reaches with a
# key, so shared keys stay allowed there (the app itself still uses its identity).
shared_key=true
[ "$plan" = flex ] && shared_key=false
run az storage account create --name "$storage" --resource-group "$group" --location "$location" --sku Standard_LRS \
  --kind StorageV2 --min-tls-version TLS1_2 --allow-blob-public-access false --allow-shared-key-access "$shared_key" -o none
storage_id=$(capture "<storage-account-id>" az storage account show --name "$storage" --resource-group "$group" --query id -o tsv)
for container in batch-input batch-output batch-records batch-parts deployments; do
  run az storage container-rm create --storage-account "$storage" --resource-group "$group" --name "$container" -o none
done
for queue in monitorjobs monitorjobs-poison batch-completed; do
  run az resource create --resource-group "$group" --resource-type Microsoft.Storage/storageAccounts/queueServices/queues \
    --name "$storage/default/$queue" --properties '{}' -o none
done

echo "# 2. The function app, with a system-assigned identity and identity-based storage for the host" >&2
exists=$(capture "" az functionapp show --name "$app" --resource-group "$group" --query name -o tsv 2>/dev/null || true)
if [ -z "$exists" ]; then
  if [ "$plan" = flex ]; then
    run az functionapp create --name "$app" --resource-group "$group" --storage-account "$storage" \
      --flexconsumption-location "$location" --runtime custom --functions-version 4 \
      --deployment-storage-name "$storage" --deployment-storage-container-name deployments \
      --deployment-storage-auth-type SystemAssignedIdentity --assign-identity '[system]' -o none
  else
    run az functionapp plan create --name "plan-$app" --resource-group "$group" --location "$location" --sku EP1 \
      --is-linux true -o none
    run az functionapp create --name "$app" --resource-group "$group" --storage-account "$storage" --plan "plan-$app" \
      --os-type Linux --runtime custom --functions-version 4 --assign-identity '[system]' -o none
  fi
fi
# New apps get a unique default host name (<app>-<hash>.<region>-01.azurewebsites.net), so it is asked, not built.
host_name=$(capture "<app-host-name>" az functionapp show --name "$app" --resource-group "$group" --query defaultHostName -o tsv)
principal=$(capture "<app-principal-id>" az functionapp identity assign --name "$app" --resource-group "$group" --query principalId -o tsv)

echo "# 3. Roles: the app on storage and on Azure OpenAI; Azure OpenAI's own identity on storage (blob mode)" >&2
openai_id=$(capture "<openai-resource-id>" az cognitiveservices account show --name "$openai" --resource-group "$openai_group" --query id -o tsv)
openai_endpoint=$(capture "<openai-endpoint>" az cognitiveservices account show --name "$openai" --resource-group "$openai_group" --query properties.endpoint -o tsv)
openai_principal=$(capture "<openai-principal-id>" az cognitiveservices account identity assign --name "$openai" --resource-group "$openai_group" --query principalId -o tsv)
grant "$principal" "Storage Blob Data Owner" "$storage_id"
grant "$principal" "Storage Queue Data Contributor" "$storage_id"
grant "$principal" "Cognitive Services OpenAI Contributor" "$openai_id"
grant "$openai_principal" "Storage Blob Data Contributor" "$storage_id"

echo "# 4. App settings: endpoints and names, no key or connection string" >&2
run az functionapp config appsettings set --name "$app" --resource-group "$group" -o none --settings \
  "AzureWebJobsStorage__accountName=$storage" \
  "BlobStorageConnection__blobServiceUri=https://$storage.blob.core.windows.net" \
  "BlobStorageConnection__queueServiceUri=https://$storage.queue.core.windows.net" \
  "OPENAI_ENDPOINT=$openai_endpoint" \
  "BATCH_OUTPUT_CONTAINER=batch-output"
# `az functionapp create` writes a connection string with the account key; the host reads __accountName instead.
run az functionapp config appsettings delete --name "$app" --resource-group "$group" --setting-names AzureWebJobsStorage -o none

echo "# 5. Build the static handler and the package (the blob trigger fed by Event Grid on Flex), and publish it" >&2
if [ "$plan" = flex ]; then
  run ./scripts/build-azure.sh --event-grid
else
  run ./scripts/build-azure.sh
fi
# Core Tools, from the package folder: it sets the execute bit on `handler` (other deployment tools can lose it).
if $dry_run; then
  echo "(cd target/azure/app && func azure functionapp publish $app)" >&2
else
  (cd target/azure/app && func azure functionapp publish "$app")
fi

if [ "$plan" = flex ]; then
  echo "# 6. The Event Grid subscription of batch-input to the blobs webhook, once the blobs_extension key exists" >&2
  key=""
  for _ in $(seq 60); do
    key=$(capture "<blobs-extension-key>" az functionapp keys list --name "$app" --resource-group "$group" --query systemKeys.blobs_extension -o tsv)
    [ -n "$key" ] && break
    sleep 5
  done
  [ -n "$key" ] || { echo "the blobs_extension key did not appear within 5 minutes; run this script again" >&2; exit 1; }
  # A storage account has at most one system topic: reuse it if there is one.
  topic=$(capture "" az eventgrid system-topic list --resource-group "$group" --query "[?source=='$storage_id'].name | [0]" -o tsv)
  if [ -z "$topic" ]; then
    topic="$storage-events"
    run az eventgrid system-topic create --name "$topic" --resource-group "$group" --location "$location" \
      --topic-type Microsoft.Storage.StorageAccounts --source "$storage_id" -o none
  fi
  # Event Grid validates the endpoint first (a SubscriptionValidation event the blobs webhook answers).
  run az eventgrid system-topic event-subscription create --name batch-input-blobmonitor --resource-group "$group" \
    --system-topic-name "$topic" --endpoint-type webhook \
    --endpoint "https://$host_name/runtime/webhooks/blobs?functionName=Host.Functions.BlobMonitor&code=$key" \
    --included-event-types Microsoft.Storage.BlobCreated \
    --subject-begins-with /blobServices/default/containers/batch-input/ -o none
fi
if $dry_run; then
  echo "# dry run: nothing was run" >&2
else
  echo "deployed $app ($plan): drop a JSONL file into $storage/batch-input; the jobs page is https://$host_name/api/jobs" >&2
fi
