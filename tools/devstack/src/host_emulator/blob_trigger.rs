//! Blob triggers as the polling source runs them (azure-storage-rest.md §11): scan the container, keep a receipt per
//! blob version (name + ETag) under `azure-webjobs-hosts/blobreceipts/…`, enqueue work on the internal queue
//! `azure-webjobs-blobtrigger-<hostId>`, and invoke from that queue, retrying up to `poisonBlobThreshold` times before
//! writing the poison record to `webjobs-blobtrigger-poison`. A rewritten blob (new ETag) triggers again; an
//! unchanged one never does, also across restarts, because the receipts live in storage.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use blob_batch_monitor::storage::blob::{unquote_etag, Condition};
use blob_batch_monitor::storage::{StorageClient, StorageError};

use crate::storage_ops::{BlobOps, QueueMessage, QueueOps};
use bytes::Bytes;
use serde_json::{json, Value};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use super::app::{Binding, Function};
use super::envelope::{blob_envelope, iso_from_http_date, BlobInfo};
use super::Ctx;

const RECEIPTS: &str = "azure-webjobs-hosts";
const POISON: &str = "webjobs-blobtrigger-poison";

pub(super) fn spawn(ctx: Arc<Ctx>, function: Function, trigger: Binding) -> anyhow::Result<Vec<JoinHandle<()>>> {
    let path = trigger.path.clone().ok_or_else(|| anyhow::anyhow!("{}: blobTrigger without path", function.name))?;
    let (container, pattern) =
        path.split_once('/').map(|(c, p)| (c.to_string(), p.to_string())).unwrap_or((path.clone(), "{name}".into()));
    let account = ctx.account(&trigger.connection)?.clone();
    let internal = internal_queue(&ctx);
    let mut tasks = Vec::new();
    // An Event Grid source is fed by its webhook (`event_grid`), not by container scans.
    if !trigger.event_grid() {
        tasks.push(tokio::spawn(scanner(
            ctx.clone(),
            function.clone(),
            account.clone(),
            container,
            pattern,
            internal.clone(),
        )));
    }
    tasks.push(tokio::spawn(executor(ctx, function, trigger, account, internal)));
    Ok(tasks)
}

/// The host's internal queue of blob work, `azure-webjobs-blobtrigger-<hostId>`.
pub(super) fn internal_queue(ctx: &Ctx) -> String {
    format!("azure-webjobs-blobtrigger-{}", ctx.options.host_id)
}

pub(super) fn function_id(f: &Function) -> String {
    format!("Host.Functions.{}", f.name)
}

/// Whether `name` matches a path pattern such as `{name}` or `in/{name}.jsonl` (literal prefix and suffix).
fn matches(pattern: &str, name: &str) -> bool {
    match (pattern.find('{'), pattern.rfind('}')) {
        (Some(a), Some(b)) => {
            name.len() >= a + (pattern.len() - b - 1)
                && name.starts_with(&pattern[..a])
                && name.ends_with(&pattern[b + 1..])
        }
        _ => pattern == name,
    }
}

async fn scanner(
    ctx: Arc<Ctx>,
    f: Function,
    account: StorageClient,
    container: String,
    pattern: String,
    internal: String,
) {
    loop {
        if let Err(e) = scan_once(&ctx, &f, &account, &container, &pattern, &internal).await {
            tracing::warn!(target: "host", "{}: scanning {container} failed: {e:#}", f.name);
        }
        tokio::time::sleep(ctx.options.blob_scan_interval).await;
    }
}

async fn scan_once(
    ctx: &Ctx,
    f: &Function,
    account: &StorageClient,
    container: &str,
    pattern: &str,
    internal: &str,
) -> anyhow::Result<()> {
    let blobs = match account.list_all_blobs(container, None).await {
        Ok(b) => b,
        Err(StorageError::Status { code, .. }) if code == "ContainerNotFound" => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let host = ctx.host_account(account);
    let prefix = format!("blobreceipts/{}/{}/", ctx.options.host_id, function_id(f));
    let receipts: HashMap<String, bool> = match host.list_all_blobs(RECEIPTS, Some(&prefix)).await {
        Ok(items) => items
            .into_iter()
            .map(|i| {
                let incomplete = i.metadata.as_ref().is_some_and(|m| m.contains_key("incomplete"));
                (i.name, incomplete)
            })
            .collect(),
        Err(StorageError::Status { code, .. }) if code == "ContainerNotFound" => {
            host.create_container(RECEIPTS).await?;
            HashMap::new()
        }
        Err(e) => return Err(e.into()),
    };
    for blob in blobs.iter().filter(|b| matches(pattern, &b.name)) {
        let etag = unquote_etag(&blob.properties.etag);
        // The host writes the ETag with its quotes (Azure.ETag's ToString).
        let receipt = receipt_path(&prefix, etag, container, &blob.name);
        match receipts.get(&receipt) {
            Some(false) => continue, // done
            Some(true) => {}         // a previous run died between receipt and enqueue: enqueue again
            None => {
                match host
                    .put_blob(
                        RECEIPTS,
                        &receipt,
                        Bytes::new(),
                        "application/octet-stream",
                        Condition::IfNotExists,
                        &[("incomplete", "true")],
                    )
                    .await
                {
                    Ok(_) => {}
                    Err(StorageError::Status { code, .. }) if code == "BlobAlreadyExists" => continue,
                    Err(e) => return Err(e.into()),
                }
            }
        }
        let work = json!({"Type": "BlobTrigger", "FunctionId": function_id(f), "BlobType": "BlockBlob",
            "ContainerName": container, "BlobName": blob.name, "ETag": blob.properties.etag});
        host.put_message(internal, work.to_string().as_bytes(), ctx.app.host.message_encoding, Duration::ZERO).await?;
        ctx.wakeup("__internal", internal).notify_waiters();
        host.set_metadata(RECEIPTS, &receipt, &[]).await?;
        tracing::info!(target: "host", "{}: new blob {container}/{} (ETag {etag})", f.name, blob.name);
    }
    Ok(())
}

async fn executor(ctx: Arc<Ctx>, f: Function, trigger: Binding, account: StorageClient, internal: String) {
    let host = ctx.host_account(&account).clone();
    let _ = host.create_queue(&internal).await;
    let slots = Arc::new(Semaphore::new(ctx.app.host.blob_parallelism.max(1)));
    let wakeup = ctx.wakeup("__internal", &internal);
    let mut delay = Duration::from_millis(100);
    loop {
        let free = slots.available_permits().min(32);
        let mut got = 0;
        if free > 0 {
            match host.get_messages(&internal, free as u8, ctx.options.lease).await {
                Ok(messages) => {
                    got = messages.len();
                    for m in messages {
                        let Ok(permit) = slots.clone().acquire_owned().await else {
                            return;
                        };
                        let (ctx, f, t, a, h, q) =
                            (ctx.clone(), f.clone(), trigger.clone(), account.clone(), host.clone(), internal.clone());
                        tokio::spawn(async move {
                            execute(&ctx, &f, &t, &a, &h, &q, m).await;
                            drop(permit);
                        });
                    }
                }
                Err(e) => {
                    tracing::warn!(target: "host", "{}: receiving blob work failed: {e}", f.name)
                }
            }
        }
        delay = if got > 0 { Duration::from_millis(100) } else { (delay * 2).min(ctx.app.host.max_polling_interval) };
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = wakeup.notified() => { delay = Duration::from_millis(100); }
        }
    }
}

async fn execute(
    ctx: &Ctx,
    f: &Function,
    trigger: &Binding,
    account: &StorageClient,
    host: &StorageClient,
    internal: &str,
    m: QueueMessage,
) {
    let pop = m.pop_receipt.clone().unwrap_or_default();
    let done = || async {
        let _ = host.delete_message(internal, &m.message_id, &pop).await;
    };
    let Some(work) =
        ctx.app.host.message_encoding.decode(&m.message_text).and_then(|b| serde_json::from_slice::<Value>(&b).ok())
    else {
        return done().await; // the internal queue logs and deletes undecodable messages
    };
    let s = |k: &str| work.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
    if s("FunctionId") != function_id(f) {
        // Another function's work item: leave it for that function's executor.
        let _ = host.update_visibility(internal, &m.message_id, &pop, Duration::ZERO).await;
        return;
    }
    let (container, name, etag) = (s("ContainerName"), s("BlobName"), s("ETag"));
    let blob = match account.get_blob(&container, &name).await {
        Ok(Some(b)) => b,
        Ok(None) => return done().await, // deleted before execution: counts as done
        Err(e) => {
            tracing::warn!(target: "host", "{}: reading {container}/{name} failed: {e}", f.name);
            let _ = host.update_visibility(internal, &m.message_id, &pop, Duration::ZERO).await;
            return;
        }
    };
    // Polling work names a version: a blob changed since is the scanner's to pick up again. Event Grid work is run
    // for the blob as it is now, and again for every event, even of the same version (no receipts).
    if s("Source") != "EventGrid" && unquote_etag(&blob.etag) != unquote_etag(&etag) {
        return done().await;
    }
    let url = format!(
        "{}/{container}/{}",
        account.account().blob_endpoint.as_str().trim_end_matches('/'),
        encode_path(&name)
    );
    let last_modified = match account.head_blob(&container, &name).await {
        Ok(Some((_, lm))) => iso_from_http_date(&lm),
        _ => String::new(),
    };
    let info = BlobInfo {
        url: &url,
        name: &name,
        etag: &blob.etag,
        last_modified: &last_modified,
        content_type: "application/octet-stream",
    };
    let body = blob_envelope(&f.name, &trigger.name, &blob.content, &info);
    let outcome = ctx.invoke(f, format!("blob {container}/{name} try {}", m.dequeue_count), body).await;
    if outcome.succeeded() {
        done().await;
    } else if m.dequeue_count >= ctx.app.host.poison_blob_threshold {
        let record = json!({"FunctionId": function_id(f), "BlobType": "BlockBlob", "ContainerName": container, "BlobName": name, "ETag": etag});
        tracing::error!(target: "host", "{}: blob {container}/{name} failed {} times → {POISON}", f.name, m.dequeue_count);
        if account
            .put_message(POISON, record.to_string().as_bytes(), ctx.app.host.message_encoding, Duration::ZERO)
            .await
            .is_ok()
        {
            done().await;
        }
    } else {
        // Blob-trigger retries are immediate.
        let _ = host.update_visibility(internal, &m.message_id, &pop, Duration::ZERO).await;
    }
}

fn encode_path(name: &str) -> String {
    name.split('/')
        .map(|seg| {
            percent_encoding::utf8_percent_encode(seg, percent_encoding::NON_ALPHANUMERIC)
                .to_string()
                .replace("%2E", ".")
                .replace("%2D", "-")
                .replace("%5F", "_")
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// `<prefix>"<ETag>"/<container>/<blob>`: the receipt of one blob version.
fn receipt_path(prefix: &str, etag: &str, container: &str, blob: &str) -> String {
    format!("{prefix}\"{etag}\"/{container}/{blob}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        assert!(matches("{name}", "a/b.jsonl"));
        assert!(matches("{name}.jsonl", "a.jsonl"));
        assert!(!matches("{name}.jsonl", "a.txt"));
        assert!(matches("in/{name}", "in/x"));
        assert!(!matches("in/{name}", "out/x"));
    }

    #[test]
    fn receipts_carry_the_quoted_etag() {
        assert_eq!(
            receipt_path("blobreceipts/host/fn/", "0x8DD1", "batch-input", "a/b.jsonl"),
            "blobreceipts/host/fn/\"0x8DD1\"/batch-input/a/b.jsonl"
        );
    }
}
