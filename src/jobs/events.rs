//! Completion events: when a blob's story ends (its job `completed`, `failed`, `expired` or `cancelled`, the file
//! `rejected` by validation, or the work `dead-lettered`), one JSON message goes on `BATCH_COMPLETED_QUEUE` for the
//! next step, encoded as host.json's `messageEncoding` says so a queue-triggered function reads it as is.
//!
//! Each ending has a stable [`CompletionEvent::id`], derived from the blob version, the batch and the status, so the
//! same ending reported twice carries the same id and consumers deduplicate by it. The event is put *before* the job
//! record says it was sent: a crash between the two sends the same id again rather than losing it.

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::context::Jobs;
use crate::batch_api::{Batch, RequestCounts};

use crate::clock::{rfc3339, unix_now};

use super::record::FailedRequest;
use super::record::JobRecord;
use super::validate::Problem;
use super::RetryNow;

/// Job errors quoted in an event.
const MAX_ERRORS: usize = 5;

/// One error of the job, as the batch object gives it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct JobError {
    pub code: Option<String>,
    pub message: Option<String>,
}

/// The message put on `BATCH_COMPLETED_QUEUE`.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CompletionEvent {
    /// Stable per ending: consumers deduplicate by it.
    pub id: String,
    /// `completed`, `failed`, `expired`, `cancelled`, `rejected` or `dead-lettered`.
    pub status: String,
    /// `container/name`.
    pub blob: String,
    pub blob_url: String,
    pub etag: Option<String>,
    /// `null` when no job was created.
    pub batch_id: Option<String>,
    pub request_counts: Option<RequestCounts>,
    pub output_blob: Option<String>,
    pub error_blob: Option<String>,
    pub errors: Vec<JobError>,
    pub failed_requests: Vec<FailedRequest>,
    /// Validation problems, for `rejected`.
    pub problems: Vec<Problem>,
    /// Why, for `dead-lettered` (and `rejected`).
    pub reason: Option<String>,
    /// Token counts when the batch object carries them.
    pub usage: Option<Value>,
    /// The deployment, when the batch object names it.
    pub model: Option<String>,
    /// RFC 3339; `null` when the blob version has no record (it was deleted before one was written).
    pub submitted_at: Option<String>,
    pub ended_at: String,
    /// For a file split into parts: each part's job, in order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<PartEvent>,
}

/// One part of a split file, in its file's event.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PartEvent {
    pub blob: String,
    pub batch_id: Option<String>,
    pub status: Option<String>,
    pub request_counts: Option<RequestCounts>,
    pub output_blob: Option<String>,
    pub error_blob: Option<String>,
}

impl CompletionEvent {
    /// The event of `record`'s ending with `status`; `batch` is the final batch object, when there is one.
    pub fn of(record: &JobRecord, status: &str, batch: Option<&Batch>) -> Self {
        let errors = batch
            .map(|b| {
                b.errors.iter().take(MAX_ERRORS).map(|e| JobError { code: e.code.clone(), message: e.message.clone() })
            })
            .into_iter()
            .flatten()
            .collect();
        CompletionEvent {
            id: event_id(&record.blob_url, &record.etag, record.batch_id.as_deref(), status, record.resubmissions),
            status: status.to_string(),
            blob: record.blob.clone(),
            blob_url: record.blob_url.clone(),
            etag: (!record.etag.is_empty()).then(|| record.etag.clone()),
            batch_id: record.batch_id.clone(),
            request_counts: record.request_counts.clone(),
            output_blob: record.output_blob.clone(),
            error_blob: record.error_blob.clone(),
            errors,
            failed_requests: record.failed_requests.clone(),
            problems: record.problems.clone(),
            reason: record.reason.clone(),
            usage: record.usage.clone(),
            model: record.model.clone(),
            submitted_at: (record.started_at > 0).then(|| rfc3339(record.started_at)),
            ended_at: rfc3339(unix_now()),
            parts: record
                .parts
                .iter()
                .map(|p| PartEvent {
                    blob: p.blob.clone(),
                    batch_id: p.batch_id.clone(),
                    status: p.status.clone(),
                    request_counts: p.request_counts.clone(),
                    output_blob: p.output_blob.clone(),
                    error_blob: p.error_blob.clone(),
                })
                .collect(),
        }
    }
}

/// 32 hex digits of SHA-256 over the ending's identity: the blob version, the batch (if any), the status, and how
/// often an operator resubmitted the blob version (a resubmitted story ends anew).
pub fn event_id(blob_url: &str, etag: &str, batch_id: Option<&str>, status: &str, resubmissions: u32) -> String {
    let mut hash = Sha256::new();
    for part in [blob_url, etag, batch_id.unwrap_or(""), status, &resubmissions.to_string()] {
        hash.update(part.as_bytes());
        hash.update([0]);
    }
    let mut id = String::with_capacity(32);
    for b in &hash.finalize()[..16] {
        // Writing to a String cannot fail.
        let _ = write!(id, "{b:02x}");
    }
    id
}

/// Puts the event of `record`'s ending with `status` ([`CompletionEvent::of`]) on the completion queue, if events are
/// on (`BATCH_COMPLETED_QUEUE` not empty), and returns its id (`None`: events are off); the queue is created when
/// missing. A failure fails the invocation, so the host delivers the trigger again and the event is not lost. With
/// events off nothing is built: the event's id hashes and formats, and every ending would pay for it.
pub async fn announce(
    jobs: &Jobs,
    record: &JobRecord,
    status: &str,
    batch: Option<&Batch>,
) -> Result<Option<String>, RetryNow> {
    let Some(queue) = &jobs.settings.completed_queue else { return Ok(None) };
    let event = &CompletionEvent::of(record, status, batch);
    let json = serde_json::to_vec(event).map_err(|e| RetryNow::because(e, "serializing the completion event"))?;
    jobs.enqueue(queue, &json, Duration::ZERO)
        .await
        .map_err(|e| RetryNow::because(e, "putting the completion event on its queue"))?;
    tracing::info!(queue = %queue, event_id = %event.id, status = %event.status, blob = %event.blob, "announced the ending");
    Ok(Some(event.id.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_per_ending_and_differ_between_endings() {
        let id =
            |etag, batch, status, resubmissions| event_id("https://a/b/x.jsonl", etag, batch, status, resubmissions);
        let a = id("0x1", Some("batch_1"), "completed", 0);
        // Pinned (Python's hashlib over the same parts): ids outlive versions of the app, since consumers keep them to
        // deduplicate, and an ending re-sent after an upgrade must carry the id it had.
        assert_eq!(a, "0805e4a0337e1006c85081c5f82fc149");
        assert_eq!(a, id("0x1", Some("batch_1"), "completed", 0));
        assert_ne!(a, id("0x2", Some("batch_1"), "completed", 0));
        assert_ne!(a, id("0x1", Some("batch_2"), "completed", 0));
        assert_ne!(a, id("0x1", None, "rejected", 0));
        assert_ne!(
            id("0x1", None, "dead-lettered", 0),
            id("0x1", None, "dead-lettered", 1),
            "a resubmission ends anew"
        );
        // The separator keeps the parts apart.
        assert_ne!(event_id("ab", "c", None, "s", 0), event_id("a", "bc", None, "s", 0));
    }

    #[test]
    fn an_event_has_every_documented_field_in_camel_case() {
        let record = JobRecord {
            blob: "batch-input/x.jsonl".into(),
            blob_url: "https://a.blob.core.windows.net/batch-input/x.jsonl".into(),
            etag: "0x8D1".into(),
            batch_id: Some("batch_1".into()),
            started_at: 1_764_324_000,
            usage: Some(serde_json::json!({"input_tokens": 10, "output_tokens": 5, "total_tokens": 15})),
            ..JobRecord::default()
        };
        let json = serde_json::to_value(CompletionEvent::of(&record, "completed", None)).expect("serializes");
        for field in [
            "id",
            "status",
            "blob",
            "blobUrl",
            "etag",
            "batchId",
            "requestCounts",
            "outputBlob",
            "errorBlob",
            "errors",
            "failedRequests",
            "problems",
            "reason",
            "usage",
            "model",
            "submittedAt",
            "endedAt",
        ] {
            assert!(json.get(field).is_some(), "no `{field}` in {json}");
        }
        assert_eq!(json["submittedAt"], "2025-11-28T10:00:00Z");
        assert_eq!(json["usage"]["total_tokens"], 15);
    }
}
