//! What an Event Grid subscription does for a local run: each new blob version in a container becomes a
//! `Microsoft.Storage.BlobCreated` event (Event Grid schema) posted to the host's blobs webhook, optionally twice, as
//! Event Grid may deliver an event more than once. Blobs already there when it starts are not announced.

use std::collections::HashSet;
use std::time::Duration;

use blob_batch_monitor::storage::StorageClient;
use serde_json::{json, Value};

/// How often the container is listed.
const EVERY: Duration = Duration::from_millis(500);

/// Watches `container` of `storage` and posts an event per new blob version to `webhook` (`…/runtime/webhooks/
/// blobs?functionName=Host.Functions.<Name>`), `copies` times each, until the task is dropped.
pub async fn watch(storage: StorageClient, container: String, webhook: String, copies: usize) {
    let http = reqwest::Client::new();
    let mut seen: HashSet<(String, String)> = versions(&storage, &container).await.into_iter().collect();
    loop {
        tokio::time::sleep(EVERY).await;
        for (name, etag) in versions(&storage, &container).await {
            if !seen.insert((name.clone(), etag.clone())) {
                continue;
            }
            let event = blob_created(&storage, &container, &name, &etag);
            for _ in 0..copies.max(1) {
                let body = serde_json::to_vec(&json!([event])).unwrap_or_default();
                let sent = http
                    .post(&webhook)
                    .header("aeg-event-type", "Notification")
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status().is_success() => {}
                    Ok(r) => {
                        tracing::warn!(target: "event-grid", "the webhook answered {} for {container}/{name}", r.status())
                    }
                    Err(e) => {
                        tracing::warn!(target: "event-grid", "posting the event for {container}/{name} failed: {e}")
                    }
                }
            }
            tracing::info!(target: "event-grid", "BlobCreated {container}/{name} (ETag {etag}) posted {copies} time(s)");
        }
    }
}

async fn versions(storage: &StorageClient, container: &str) -> Vec<(String, String)> {
    match storage.list_all_blobs(container, None).await {
        Ok(items) => items.into_iter().map(|b| (b.name, b.properties.etag)).collect(),
        Err(_) => Vec::new(),
    }
}

/// A `Microsoft.Storage.BlobCreated` event as Event Grid sends it (Event Grid schema).
pub fn blob_created(storage: &StorageClient, container: &str, name: &str, etag: &str) -> Value {
    let url = storage.blob_url(&format!("{container}/{name}"));
    json!({
        "id": uuid::Uuid::new_v4().to_string(),
        "topic": "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/local/providers/Microsoft.Storage/storageAccounts/devstoreaccount1",
        "subject": format!("/blobServices/default/containers/{container}/blobs/{name}"),
        "eventType": "Microsoft.Storage.BlobCreated",
        "eventTime": humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        "dataVersion": "",
        "metadataVersion": "1",
        "data": {
            "api": "PutBlob", "clientRequestId": uuid::Uuid::new_v4().to_string(), "requestId": uuid::Uuid::new_v4().to_string(),
            "eTag": etag, "contentType": "application/jsonl", "contentLength": 0, "blobType": "BlockBlob",
            "url": url.to_string(), "sequencer": "0000000000000000000000000000000000000000000000000000000000000000",
            "storageDiagnostics": {"batchId": uuid::Uuid::new_v4().to_string()}
        }
    })
}
