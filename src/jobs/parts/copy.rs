//! The two copying steps of a split file: writing its parts from the input blob, and joining the parts' results.
//! Both copy byte ranges block by block ([`Copier`]): by the storage service itself where it can, through the
//! handler a few MB at a time where it cannot, so memory stays the same whatever the file's size.

use std::collections::BTreeSet;

use tracing::{info, warn};

use crate::storage::blob::unquote_etag;
use crate::storage::block::Copier;
use crate::storage::{StorageClient, StorageError};

use super::super::context::Jobs;
use super::super::record::{JobRecord, PartState, RecordState};
use super::super::{Outcome, RetryNow};
use super::{announce, file_status, pace, update};

/// Blocks numbered per source: a source's blocks start at its index times this.
const BLOCKS_PER_SOURCE: u64 = 1_000_000;

/// Writes the file's parts that are not written yet, then hands the first ones to submission. The input must still
/// be the version that was checked: a file rewritten meanwhile is dead-lettered (its new version has its own job).
pub async fn split(jobs: &Jobs, key: &str) -> Result<Outcome, RetryNow> {
    let record = read(jobs, key).await?;
    if record.state != RecordState::Submitting {
        pace(jobs, key).await?;
        return Ok(Outcome::Nothing { reason: format!("{} is already split", record.blob) });
    }
    let Some((container, name)) = record.blob.split_once('/') else {
        return Err(RetryNow(anyhow::anyhow!("the record {key} names no container")));
    };
    if !unchanged(&jobs.storage, container, name, &record.etag).await? {
        let reason = format!("{} was rewritten while it was being split; its new version has its own job", record.blob);
        return end_dead(jobs, key, &reason).await;
    }
    let copier = Copier::default();
    for (i, part) in record.parts.iter().enumerate().filter(|(_, p)| p.etag.is_none()) {
        let (parts_container, part_name) = part.blob.split_once('/').unwrap_or_default();
        let etag = write_blob(jobs, &copier, (parts_container, part_name), &[(container, name, part.start, part.end)])
            .await
            .map_err(|e| RetryNow::because(e, "writing a part of the file"))?;
        update(jobs, key, None, |r| {
            r.parts[i].etag = Some(unquote_etag(&etag).to_string());
            r.parts[i].state = PartState::Written;
        })
        .await?;
    }
    if !unchanged(&jobs.storage, container, name, &record.etag).await? {
        let reason = format!("{} was rewritten while it was being split; its new version has its own job", record.blob);
        return end_dead(jobs, key, &reason).await;
    }
    info!(parts = record.parts.len(), streamed = copier.streams(), "wrote the parts of the file");
    let submitted = pace(jobs, key).await?;
    Ok(Outcome::Split { parts: record.parts.len().max(submitted) })
}

/// Joins every part's results and errors into one file each, under `BATCH_OUTPUT_CONTAINER/<file id>/`, then ends
/// the file: summed counts and usage, its status, one event, one final line.
pub async fn merge(jobs: &Jobs, key: &str) -> Result<Outcome, RetryNow> {
    let record = read(jobs, key).await?;
    if record.state == RecordState::Ended {
        return Ok(Outcome::Nothing { reason: format!("{} has already ended", record.blob) });
    }
    let folder = format!("{}/{}", jobs.settings.output_container, file_id(key));
    let copier = Copier::default();
    let results: Vec<&str> = record.parts.iter().filter_map(|p| p.output_blob.as_deref()).collect();
    let errors: Vec<&str> = record.parts.iter().filter_map(|p| p.error_blob.as_deref()).collect();
    let output = join(jobs, &copier, &format!("{folder}/results.jsonl"), &results).await?;
    let error = join(jobs, &copier, &format!("{folder}/errors.jsonl"), &errors).await?;
    let status = file_status(&record.parts);
    let mut ended = record.clone();
    ended.state = RecordState::Ended;
    ended.status = Some(status.to_string());
    ended.output_blob = output;
    ended.error_blob = error;
    ended.request_counts = Some(summed_counts(&record));
    ended.usage = summed_usage(&record);
    let sent = announce(jobs, &ended, status).await?;
    ended.event_id = sent;
    let written = ended.clone();
    update(jobs, key, None, |r| *r = JobRecord { updated_at: r.updated_at, ..written.clone() }).await?;
    let counts = ended.request_counts.clone().unwrap_or_default();
    let line = format!(
        "{} ended {status} in {} parts: {counts} output_blob={} error_blob={}",
        record.blob,
        record.parts.len(),
        ended.output_blob.as_deref().unwrap_or("-"),
        ended.error_blob.as_deref().unwrap_or("-"),
    );
    if status == "completed" {
        info!("{line}");
    } else {
        warn!("{line}");
    }
    Ok(Outcome::Ended { report: line })
}

/// Commits `sources` (blob URLs of this account, those that exist) one after another as the blob `target`
/// (`container/name`); returns its URL, or `None` when no source exists.
async fn join(jobs: &Jobs, copier: &Copier, target: &str, sources: &[&str]) -> Result<Option<String>, RetryNow> {
    let mut ranges = Vec::new();
    for url in sources {
        let Some((container, name)) = jobs.storage.split_blob_url(url) else {
            warn!(url = %url, "a part's results are not in this account; they are left out of the joined file");
            continue;
        };
        let size = jobs.storage.blob_size(&container, &name).await;
        // No file (an errors file of a part without failed requests) leaves nothing to join.
        if let Some(size) = size.map_err(|e| RetryNow::because(e, "sizing a part's results"))? {
            ranges.push((container, name, size));
        }
    }
    if ranges.is_empty() {
        return Ok(None);
    }
    let (container, name) = target.split_once('/').unwrap_or_default();
    let sources: Vec<(&str, &str, u64, u64)> =
        ranges.iter().map(|(c, n, size)| (c.as_str(), n.as_str(), 0, *size)).collect();
    write_blob(jobs, copier, (container, name), &sources)
        .await
        .map_err(|e| RetryNow::because(e, "joining the parts' results"))?;
    Ok(Some(jobs.storage.blob_url(target).to_string()))
}

/// Writes the byte ranges `sources` (`container`, `name`, `start`, `end`), in order, as the blob `target`; returns its
/// ETag. A missing target container is created.
async fn write_blob(
    jobs: &Jobs,
    copier: &Copier,
    (container, name): (&str, &str),
    sources: &[(&str, &str, u64, u64)],
) -> Result<String, StorageError> {
    let mut ids = Vec::new();
    for (i, (source_container, source_name, start, end)) in sources.iter().enumerate() {
        let first = i as u64 * BLOCKS_PER_SOURCE;
        let copied = match copier
            .copy_range(&jobs.storage, (container, name), (source_container, source_name), (*start, *end), first)
            .await
        {
            Err(StorageError::Status { code, .. }) if code == "ContainerNotFound" => {
                jobs.storage.create_container(container).await?;
                copier
                    .copy_range(
                        &jobs.storage,
                        (container, name),
                        (source_container, source_name),
                        (*start, *end),
                        first,
                    )
                    .await
            }
            other => other,
        }?;
        ids.extend(copied);
    }
    jobs.storage.put_block_list(container, name, &ids, "application/jsonl").await
}

/// Whether the blob still has the ETag that was checked.
async fn unchanged(storage: &StorageClient, container: &str, name: &str, etag: &str) -> Result<bool, RetryNow> {
    let head =
        storage.head_blob(container, name).await.map_err(|e| RetryNow::because(e, "reading the blob's properties"))?;
    Ok(head.is_some_and(|(now, _)| unquote_etag(&now) == unquote_etag(etag)))
}

/// Ends a file that cannot be split: dead-lettered, with its ending announced.
async fn end_dead(jobs: &Jobs, key: &str, reason: &str) -> Result<Outcome, RetryNow> {
    let mut dead = read(jobs, key).await?;
    dead.state = RecordState::DeadLettered;
    dead.reason = Some(reason.to_string());
    dead.event_id = announce(jobs, &dead, "dead-lettered").await?;
    let written = dead.clone();
    update(jobs, key, None, |r| *r = JobRecord { updated_at: r.updated_at, ..written.clone() }).await?;
    warn!("{reason}");
    Ok(Outcome::DeadLettered { reason: reason.to_string() })
}

async fn read(jobs: &Jobs, key: &str) -> Result<JobRecord, RetryNow> {
    jobs.records
        .read(key)
        .await
        .map_err(|e| RetryNow::because(e, "reading the job record"))?
        .map(|v| v.record)
        .ok_or_else(|| RetryNow(anyhow::anyhow!("the job record {key} disappeared")))
}

/// The merged result's folder name: stable for the file version, like a job id.
pub fn file_id(key: &str) -> String {
    use siphasher::sip128::{Hasher128, SipHasher13};
    use std::hash::Hasher;
    let mut h = SipHasher13::new();
    h.write(key.as_bytes());
    format!("file_{:032x}", h.finish128().as_u128())
}

fn summed_counts(record: &JobRecord) -> crate::batch_api::RequestCounts {
    let sum = |f: fn(&crate::batch_api::RequestCounts) -> Option<u64>| {
        record.parts.iter().filter_map(|p| p.request_counts.as_ref().and_then(f)).sum::<u64>()
    };
    crate::batch_api::RequestCounts {
        total: Some(sum(|c| c.total)),
        completed: Some(sum(|c| c.completed)),
        failed: Some(sum(|c| c.failed)),
    }
}

/// The parts' usage summed field by field (numbers only), when any part reported it.
fn summed_usage(record: &JobRecord) -> Option<serde_json::Value> {
    let usages: Vec<&serde_json::Value> = record.parts.iter().filter_map(|p| p.usage.as_ref()).collect();
    if usages.is_empty() {
        return None;
    }
    let keys: BTreeSet<&str> = ["input_tokens", "output_tokens", "total_tokens"].into_iter().collect();
    let mut total = serde_json::Map::new();
    for key in keys {
        let sum: u64 = usages.iter().filter_map(|u| u.get(key).and_then(serde_json::Value::as_u64)).sum();
        total.insert(key.to_string(), sum.into());
    }
    Some(serde_json::Value::Object(total))
}
