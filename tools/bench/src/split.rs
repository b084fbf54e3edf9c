//! A file far over one job's limits (a million requests of about 1 KB, 1 GB) in a real Azurite: uploaded in 8 MB
//! blocks (the baseline), split into parts by the handler (`{"split": …}`), and the parts' results joined
//! (`{"merge": …}`), each timed against a baseline measured in the same run, with the handler's peak memory. Both
//! ways of copying are measured: the storage service copying (Azurite 3.37 does Put Block From URL, as Azure does),
//! and through the handler, behind a front that answers 501 to it (as older Azurite releases did).

use std::time::{Duration, Instant};

use anyhow::Context;

use blob_batch_monitor::http_client::HttpClient;
use blob_batch_monitor::jobs::parts::{file_id, planned};
use blob_batch_monitor::jobs::plan::{Limits, Plan};
use blob_batch_monitor::jobs::record::{JobRecord, PartState, RecordState};
use blob_batch_monitor::jobs::records::RecordStore;
use blob_batch_monitor::jobs::validate::Validator;
use blob_batch_monitor::storage::blob::Condition;
use blob_batch_monitor::storage::block::block_id;
use blob_batch_monitor::storage::{StorageAccount, StorageClient};
use bytes::Bytes;
use devstack::azurite::{Azurite, AzuriteOptions, Persistence};

use super::nginx::Nginx;
use super::procs::status_kb;
use super::scenarios::{handler_with, post_queue};
use super::{BenchOptions, Report};

/// The baseline's block size.
const UPLOAD_BLOCK: usize = 8 << 20;
/// Parts the file is cut into.
const PARTS: u64 = 10;

pub fn split(
    o: &BenchOptions,
    nginx: &Nginx,
    runtime: &tokio::runtime::Runtime,
    report: &mut Report,
) -> anyhow::Result<()> {
    let dir = o.work_dir.join("azurite-split");
    let _ = std::fs::remove_dir_all(&dir);
    let options = AzuriteOptions { persistence: Persistence::Folder(dir.clone()), ..AzuriteOptions::default() };
    let azurite = runtime.block_on(Azurite::start(&o.app_root, &options))?;
    let conn = azurite.devstore_connection_string();
    let account = StorageAccount::parse(&conn)?;
    let storage = StorageClient::new(HttpClient::new(devstack::TOOL_BODY_LIMIT, &Default::default())?, account.clone());
    let requests = o.split_requests;
    let (etag, bytes, upload) = runtime.block_on(upload(&storage, requests))?;
    let limits = Limits { max_requests: requests.div_ceil(PARTS), ..Limits::default() };
    let plan = plan(requests, limits);
    let size = format!("{requests} requests, {:.2} GB", bytes as f64 / 1e9);
    for streamed in [false, true] {
        let way = if streamed {
            "copied through the handler (behind a front that refuses copies)"
        } else {
            "copied by the storage service"
        };
        let front = streamed.then(|| runtime.block_on(refusing_front(&account))).transpose()?;
        let blob_endpoint = front.as_deref().unwrap_or(account.blob_endpoint.as_str()).to_string();
        let handler_conn =
            conn.replace(account.blob_endpoint.as_str().trim_end_matches('/'), blob_endpoint.trim_end_matches('/'));
        let key = runtime.block_on(planned_record(&storage, &account, &etag, &plan, streamed))?;
        let (proc, port) = handler_with(o, None, nginx.port, nginx.port, &[("BlobStorageConnection", &handler_conn)])?;
        let started = Instant::now();
        runtime.block_on(post_queue(port, &format!(r#"{{"split":"{key}"}}"#)))?;
        let took = started.elapsed();
        let peak = status_kb(proc.pid(), "VmHWM").unwrap_or(0) as f64 / 1024.0;
        drop(proc);
        report.add(
            &format!("Split ({size}) into {PARTS} parts, {way}: time ÷ uploading it in 8 MB blocks"),
            ratio(took, upload),
            "×",
            Some(("<=", 2.0)),
            format!("{} ms vs {} ms", took.as_millis(), upload.as_millis()),
        );
        report.add(&format!("Split, {way}: handler peak memory (VmHWM)"), peak, "MB", Some(("<", 64.0)), "");
        // The merge joins the parts as if they were the parts' results: the same bytes.
        runtime.block_on(ended_parts(&storage, &blob_endpoint, &key))?;
        let baseline = runtime.block_on(streamed_copy(&storage, &key))?;
        let (proc, port) = handler_with(
            o,
            None,
            nginx.port,
            nginx.port,
            &[("BlobStorageConnection", &handler_conn), ("BATCH_COMPLETED_QUEUE", "")],
        )?;
        let started = Instant::now();
        runtime.block_on(post_queue(port, &format!(r#"{{"merge":"{key}"}}"#)))?;
        let took = started.elapsed();
        let peak = status_kb(proc.pid(), "VmHWM").unwrap_or(0) as f64 / 1024.0;
        drop(proc);
        runtime.block_on(merged_whole(&storage, &key, bytes)).with_context(|| format!("the merge {way}"))?;
        report.add(
            &format!("Merge of the {PARTS} parts' results ({size}), {way}: time ÷ a plain streamed copy"),
            ratio(took, baseline),
            "×",
            Some(("<=", 2.0)),
            format!(
                "{} ms vs {} ms (the bench reading and writing the same bytes, 8 MB blocks)",
                took.as_millis(),
                baseline.as_millis()
            ),
        );
        report.add(&format!("Merge, {way}: handler peak memory (VmHWM)"), peak, "MB", Some(("<", 64.0)), "");
    }
    drop(azurite);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64().max(1e-9)
}

/// Line `i` of the file: a chat request of about 1 KB.
fn line(i: u64) -> String {
    let filler = "lorem ipsum dolor sit amet ".repeat(32);
    format!(
        "{{\"custom_id\":\"task-{i}\",\"method\":\"POST\",\"url\":\"/chat/completions\",\"body\":{{\"model\":\"gpt-4o-batch\",\"messages\":[{{\"role\":\"user\",\"content\":\"{i}: {filler}\"}}]}}}}\n"
    )
}

/// The file's bytes, generated `UPLOAD_BLOCK` at a time.
fn blocks(requests: u64) -> impl Iterator<Item = Vec<u8>> {
    let mut i = 0;
    std::iter::from_fn(move || {
        if i >= requests {
            return None;
        }
        let mut block = Vec::with_capacity(UPLOAD_BLOCK + 2048);
        while block.len() < UPLOAD_BLOCK && i < requests {
            block.extend_from_slice(line(i).as_bytes());
            i += 1;
        }
        Some(block)
    })
}

/// Uploads the file in 8 MB blocks; returns its ETag, size and how long the upload took.
async fn upload(storage: &StorageClient, requests: u64) -> anyhow::Result<(String, u64, Duration)> {
    storage.create_container("batch-input").await?;
    let (mut ids, mut bytes) = (Vec::new(), 0u64);
    let started = Instant::now();
    for (n, block) in blocks(requests).enumerate() {
        bytes += block.len() as u64;
        let id = block_id(n as u64);
        storage.put_block("batch-input", "million.jsonl", &id, Bytes::from(block)).await?;
        ids.push(id);
    }
    let etag = storage.put_block_list("batch-input", "million.jsonl", &ids, "application/jsonl").await?;
    Ok((etag.trim_matches('"').to_string(), bytes, started.elapsed()))
}

/// The file's plan, from the handler's own validator over the same bytes.
fn plan(requests: u64, limits: Limits) -> Plan {
    let mut v = Validator::new(limits);
    for block in blocks(requests) {
        v.feed(&block);
    }
    v.finish().plan
}

/// The file's record as BlobMonitor leaves it for a split (parts planned, none written); returns its key.
async fn planned_record(
    storage: &StorageClient,
    account: &StorageAccount,
    etag: &str,
    plan: &Plan,
    streamed: bool,
) -> anyhow::Result<String> {
    let blob = format!("batch-input/million{}.jsonl", if streamed { "-streamed" } else { "" });
    let key = RecordStore::key(&blob, etag);
    let parts = planned("batch-parts", &blob, etag, plan);
    let record = JobRecord {
        // Both records split the one uploaded file.
        blob: "batch-input/million.jsonl".into(),
        blob_url: format!("{}/batch-input/million.jsonl", account.blob_endpoint.as_str().trim_end_matches('/')),
        etag: etag.to_string(),
        state: RecordState::Submitting,
        parts,
        ..JobRecord::default()
    };
    RecordStore::new(storage.clone(), "batch-records".into()).put(&key, &record, Condition::None).await?;
    Ok(key)
}

/// Marks every part ended with its own blob as its results, for the merge (URLs at the blob endpoint the handler
/// is given).
async fn ended_parts(storage: &StorageClient, blob_endpoint: &str, key: &str) -> anyhow::Result<()> {
    let store = RecordStore::new(storage.clone(), "batch-records".into());
    let root = blob_endpoint.trim_end_matches('/').to_string();
    store
        .update(key, None, |r| {
            r.state = RecordState::Submitted;
            for p in &mut r.parts {
                p.state = PartState::Ended;
                p.status = Some("completed".into());
                p.output_blob = Some(format!("{root}/{}", p.blob));
            }
            true
        })
        .await?;
    Ok(())
}

/// Checks that the merge ended the file with one result of all `bytes`: a figure is only worth what it measured.
async fn merged_whole(storage: &StorageClient, key: &str, bytes: u64) -> anyhow::Result<()> {
    let record = RecordStore::new(storage.clone(), "batch-records".into()).read(key).await?.map(|v| v.record);
    let record = record.context("the record is gone")?;
    anyhow::ensure!(record.state == RecordState::Ended, "the merge did not end the file: {:?}", record.state);
    anyhow::ensure!(record.output_blob.is_some(), "the merge wrote no result");
    let size = storage.blob_size("batch-output", &format!("{}/results.jsonl", file_id(key))).await?.unwrap_or(0);
    anyhow::ensure!(size == bytes, "the merged result has {size} bytes, not {bytes}");
    Ok(())
}

/// The baseline of the merge: the bench reads every part and writes them into one blob, 8 MB at a time.
async fn streamed_copy(storage: &StorageClient, key: &str) -> anyhow::Result<Duration> {
    let record = RecordStore::new(storage.clone(), "batch-records".into())
        .read(key)
        .await?
        .map(|v| v.record)
        .unwrap_or_default();
    storage.create_container("batch-output").await?;
    let started = Instant::now();
    let mut ids = Vec::new();
    for part in &record.parts {
        let (container, name) = part.blob.split_once('/').unwrap_or_default();
        let size = storage.blob_size(container, name).await?.unwrap_or(0);
        let mut at = 0;
        while at < size {
            let to = (at + UPLOAD_BLOCK as u64).min(size);
            let bytes = storage.get_range(container, name, at, to).await?;
            let id = block_id(ids.len() as u64);
            storage.put_block("batch-output", "baseline-copy.jsonl", &id, bytes).await?;
            ids.push(id);
            at = to;
        }
    }
    storage.put_block_list("batch-output", "baseline-copy.jsonl", &ids, "application/jsonl").await?;
    Ok(started.elapsed())
}

/// A front to Azurite's blob service that answers Put Block From URL 501 and passes everything else on; returns its
/// blob endpoint.
async fn refusing_front(account: &StorageAccount) -> anyhow::Result<String> {
    use axum::extract::{Request, State};
    use axum::response::{IntoResponse, Response};
    async fn front(State(origin): State<String>, request: Request) -> Response {
        let (parts, body) = request.into_parts();
        if parts.headers.contains_key("x-ms-copy-source") {
            return (reqwest::StatusCode::NOT_IMPLEMENTED, [("x-ms-error-code", "NotImplemented")]).into_response();
        }
        let body = axum::body::to_bytes(body, 64 << 20).await.unwrap_or_default();
        let mut forwarded =
            reqwest::Client::new().request(parts.method.clone(), format!("{origin}{}", parts.uri)).body(body);
        for (k, v) in parts.headers.iter().filter(|(k, _)| *k != "host") {
            forwarded = forwarded.header(k, v);
        }
        let head = parts.method == axum::http::Method::HEAD;
        let Ok(answer) = forwarded.send().await else { return reqwest::StatusCode::BAD_GATEWAY.into_response() };
        let mut response = Response::builder().status(answer.status());
        // A HEAD answer's Content-Length is the blob's size, not this body's: it must pass.
        let hop = |k: &str| matches!(k, "transfer-encoding" | "connection") || (k == "content-length" && !head);
        for (k, v) in answer.headers().iter().filter(|(k, _)| !hop(k.as_str())) {
            response = response.header(k, v);
        }
        response.body(axum::body::Body::from(answer.bytes().await.unwrap_or_default())).unwrap_or_default()
    }
    let base = &account.blob_endpoint;
    let origin = format!("http://{}:{}", base.host_str().unwrap_or(""), base.port().unwrap_or(80));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, axum::Router::new().fallback(front).with_state(origin)).await });
    Ok(format!("http://{address}{}", base.path().trim_end_matches('/')))
}
