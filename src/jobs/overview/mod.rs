//! The operators' view of every job, built from the job records alone: counters by state, a table newest first with
//! filters and paging, one job's whole record with its batch as the API reports it now, and the two operator
//! actions, cancel and resubmit.
//!
//! Listing reads no record blob: what the table shows of a record is kept in the record blob's metadata
//! ([`SUMMARY_METADATA`], written by every record write), so one List Blobs page of 5,000 gives 5,000 rows.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::context::Jobs;
use crate::batch_api::BatchError;
use crate::storage::blob::BlobItem;
use crate::storage::StorageError;

use super::message::{SubmitMessage, MONITOR_QUEUE};
use crate::clock::{rfc3339, unix_now};

use super::record::{JobRecord, RecordState, Summary, SUMMARY_METADATA};

/// Rows on one page of the table.
pub const PAGE_SIZE: usize = 100;
/// Every state the page shows, in the order of its counters ([`Summary::shown_state`]).
pub const SHOWN_STATES: [&str; 9] =
    ["submitting", "deferred", "running", "completed", "failed", "expired", "cancelled", "rejected", "dead-lettered"];

/// One row of the table: a record's key (its name in the records container) and its summary.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Row {
    pub key: String,
    /// [`Summary::shown_state`].
    pub shown: String,
    #[serde(flatten)]
    pub summary: Summary,
}

/// Records by shown state, across all records, and the tokens ended jobs used.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Counters {
    pub by_state: BTreeMap<String, u64>,
    /// Running jobs by their batch status (`validating`, `in_progress`, `finalizing`, `cancelling`).
    pub running_by_status: BTreeMap<String, u64>,
    pub tokens_used: u64,
    pub total: u64,
}

/// What the page asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct Query {
    /// A shown state (`running`, `completed`, `dead-lettered`, …).
    pub state: Option<String>,
    /// A substring of the blob name.
    pub q: Option<String>,
    /// 1-based.
    pub page: Option<usize>,
}

/// One page of the table, with the counters.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Overview {
    pub counters: Counters,
    pub rows: Vec<Row>,
    /// Rows matching the filters, on all pages.
    pub matching: usize,
    pub page: usize,
    pub pages: usize,
}

/// The shown state of a record whose metadata carries no summary (one written before records had one): it is
/// listed, counted and opens like any other, so that no job is missing from the page.
pub const UNKNOWN_STATE: &str = "unknown";

/// Lists the records (their metadata only) and builds the page `query` asks for.
pub async fn overview(jobs: &Jobs, query: &Query) -> Result<Overview, StorageError> {
    let items = jobs.records.list().await?;
    Ok(build(items.into_iter().map(row_of).collect(), query))
}

/// A listed record as a row: its summary, or what its name and properties tell.
fn row_of(item: BlobItem) -> Row {
    let key = item.name.strip_suffix(".json").unwrap_or(&item.name).to_string();
    let summary = item
        .metadata
        .as_ref()
        .and_then(|m| m.iter().find(|(k, _)| k.eq_ignore_ascii_case(SUMMARY_METADATA)))
        .and_then(|(_, v)| Summary::decode(v));
    if let Some(summary) = summary {
        return Row { key, shown: summary.shown_state().to_string(), summary };
    }
    // The key is `container/name/etag`.
    let (blob, etag) = key.rsplit_once('/').unwrap_or((&key, ""));
    let modified = httpdate::parse_http_date(&item.properties.last_modified)
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    let summary = Summary {
        blob: blob.to_string(),
        etag: etag.to_string(),
        started_at: modified,
        updated_at: modified,
        reason: Some("the record has no summary (written by an earlier version); open it to see it".into()),
        ..Summary::default()
    };
    Row { key, shown: UNKNOWN_STATE.to_string(), summary }
}

/// Counters over all rows, then the filtered rows newest first, cut to the requested page.
pub fn build(mut rows: Vec<Row>, query: &Query) -> Overview {
    // A split file is one row; its parts are on its own page.
    rows.retain(|r| !r.summary.is_part);
    let mut counters = Counters { total: rows.len() as u64, ..Counters::default() };
    for row in &rows {
        *counters.by_state.entry(row.shown.clone()).or_default() += 1;
        if row.summary.state == RecordState::Submitted {
            let status = row.summary.status.clone().unwrap_or_else(|| "submitted".into());
            *counters.running_by_status.entry(status).or_default() += 1;
        }
        if row.summary.state == RecordState::Ended {
            counters.tokens_used += row.summary.total_tokens.unwrap_or(0);
        }
    }
    let wanted_state = query.state.as_deref().filter(|s| !s.is_empty());
    let needle = query.q.as_deref().map(str::to_lowercase).filter(|s| !s.is_empty());
    rows.retain(|r| {
        wanted_state.is_none_or(|s| r.shown == s)
            && needle.as_deref().is_none_or(|n| r.summary.blob.to_lowercase().contains(n))
    });
    rows.sort_by(|a, b| b.summary.started_at.cmp(&a.summary.started_at).then_with(|| a.key.cmp(&b.key)));
    let matching = rows.len();
    let pages = matching.div_ceil(PAGE_SIZE).max(1);
    let page = query.page.unwrap_or(1).clamp(1, pages);
    let rows = rows.into_iter().skip((page - 1) * PAGE_SIZE).take(PAGE_SIZE).collect();
    Overview { counters, rows, matching, page, pages }
}

/// One job in full: its record and, when it has a batch, the batch object as the API reports it now.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Detail {
    pub key: String,
    pub record: JobRecord,
    /// The batch object as the API reports it now (`None` without a batch, or when it could not be read).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch: Option<Value>,
    /// Why the batch could not be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_error: Option<String>,
}

/// The job of record `key` (`None`: no such record).
pub async fn detail(jobs: &Jobs, key: &str) -> Result<Option<Detail>, StorageError> {
    let Some(versioned) = jobs.records.read(&record_name(key)).await? else { return Ok(None) };
    let record = versioned.record;
    let (batch, batch_error) = match &record.batch_id {
        Some(id) => match jobs.batch.retrieve(id).await.map(serde_json::to_value) {
            Ok(Ok(b)) => (Some(b), None),
            Ok(Err(e)) => (None, Some(e.to_string())),
            Err(e) => (None, Some(e.to_string())),
        },
        None => (None, None),
    };
    Ok(Some(Detail { key: key.to_string(), record, batch, batch_error }))
}

/// Why an operator action was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    #[error("there is no job record {0}")]
    NoRecord(String),
    #[error("{0}")]
    NotNow(String),
    #[error("the batch API refused: {0}")]
    Api(#[from] BatchError),
    #[error("storage failed: {0}")]
    Storage(#[from] StorageError),
}

/// Cancels the running job of record `key`. Monitoring goes on until the job reports `cancelled`.
pub async fn cancel(jobs: &Jobs, key: &str) -> Result<String, ActionError> {
    let name = record_name(key);
    let record = jobs.records.read(&name).await?.ok_or_else(|| ActionError::NoRecord(key.into()))?.record;
    if !record.parts.is_empty() {
        return split_file::cancel(jobs, &name, &record).await;
    }
    let (RecordState::Submitted, Some(batch_id)) = (record.state, record.batch_id.clone()) else {
        return Err(ActionError::NotNow(format!("{} has no running job ({:?})", record.blob, record.state)));
    };
    let batch = jobs.batch.cancel(&batch_id).await?;
    let note = format!("an operator asked to cancel batch {batch_id} at {}", rfc3339(unix_now()));
    jobs.records
        .update(&name, None, |r| {
            r.observe(&batch);
            r.reason = Some(note.clone());
            true
        })
        .await?;
    tracing::warn!(blob = %record.blob, batch_id = %batch_id, status = %batch.status, "{note}");
    Ok(note)
}

/// Sends a dead-lettered blob version back to submission through `monitorjobs`, as if new: the job record still
/// makes it exactly once.
pub async fn resubmit(jobs: &Jobs, key: &str) -> Result<String, ActionError> {
    let name = record_name(key);
    let record = jobs.records.read(&name).await?.ok_or_else(|| ActionError::NoRecord(key.into()))?.record;
    if let Some(file) = &record.parent {
        return Err(ActionError::NotNow(format!("a part is resubmitted with its file: open {file}")));
    }
    let note = format!("an operator resubmitted it at {}", rfc3339(unix_now()));
    if !record.parts.is_empty() {
        return split_file::resubmit(jobs, &name, note).await;
    }
    let updated = reopen(jobs, &name, &note).await?;
    let message =
        SubmitMessage { submit: updated.blob_url, blob: updated.blob, etag: updated.etag, attempt: 0, parent: None };
    jobs.enqueue(MONITOR_QUEUE, message.to_json().as_bytes(), std::time::Duration::ZERO).await?;
    tracing::warn!(blob = %message.blob, "{note}");
    Ok(note)
}

/// Turns the dead-lettered record `name` back to waiting for its job. Of concurrent calls exactly one succeeds:
/// `update` writes under `If-Match` and calls `change` again after a lost race, so only the call whose change was
/// written ends with `won` set.
async fn reopen(jobs: &Jobs, name: &str, note: &str) -> Result<JobRecord, ActionError> {
    let mut won = false;
    let updated = jobs
        .records
        .update(name, None, |r| {
            won = r.state == RecordState::DeadLettered;
            if !won {
                return false;
            }
            if let Some(old) = r.batch_id.take() {
                r.superseded_batch_ids.push(old);
            }
            r.state = RecordState::Deferred;
            r.failures = 0;
            r.resubmitted(note);
            true
        })
        .await?
        .ok_or_else(|| ActionError::NoRecord(name.into()))?;
    if !won {
        let why = if updated.resubmissions > 0 { "it was already resubmitted" } else { "it is not dead-lettered" };
        return Err(ActionError::NotNow(format!(
            "only a dead-lettered job can be resubmitted: {why} ({:?} now)",
            updated.state
        )));
    }
    Ok(updated)
}

mod split_file;

/// The record blob's name for a key as the page shows it.
fn record_name(key: &str) -> String {
    format!("{}.json", key.trim_end_matches(".json"))
}

#[cfg(test)]
mod tests;
