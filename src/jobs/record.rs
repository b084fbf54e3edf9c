//! One input blob version's job record, as data: where the blob is in its life, what its job reported, and the
//! summary of it that rides along in the record blob's metadata so that one listing gives the operators' page every
//! row. Storing records (create once, lease, update under `If-Match`) is the `records` module's.

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::batch_api::{Batch, RequestCounts};

use super::validate::Problem;

/// The record name of a blob version: `<container>/<name>/<etag>.json`.
pub fn key(blob: &str, etag: &str) -> String {
    format!("{blob}/{}.json", crate::storage::blob::unquote_etag(etag))
}

/// Where a blob version is in its life.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RecordState {
    /// A job is being created (or a creation was interrupted).
    #[default]
    Submitting,
    /// Creation is waiting for a delayed retry (quota full, throttled, service down, key refused).
    Deferred,
    /// The job exists and is being monitored.
    Submitted,
    /// The job reached a terminal status.
    Ended,
    /// No job will be created or followed; `reason` says why.
    DeadLettered,
    /// The file failed pre-flight validation; `problems` say where. No job was created.
    Rejected,
}

/// The record of one input blob version.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct JobRecord {
    /// `container/name` of the input.
    pub blob: String,
    pub blob_url: String,
    /// The input's ETag, unquoted.
    pub etag: String,
    pub state: RecordState,
    pub batch_id: Option<String>,
    /// Jobs created for this blob version that were replaced (e.g. failed with `token_limit_exceeded`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub superseded_batch_ids: Vec<String>,
    /// The job's last known status.
    pub status: Option<String>,
    pub request_counts: Option<RequestCounts>,
    pub output_blob: Option<String>,
    pub error_blob: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    /// Create attempts so far.
    pub submit_attempts: u32,
    /// When (Unix seconds) each create call whose outcome is unknown was sent: the invocation died during it, or no
    /// answer came. Recovery (the `recover` module) looks for the jobs they may have made, then empties it. `None` on
    /// records written before this was kept: every attempt since `started_at` is in doubt then.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub creates_in_doubt: Option<Vec<u64>>,
    /// Extra jobs interrupted creates made for this blob version, found by recovery and cancelled (the record follows
    /// the earliest).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub spare_batch_ids: Vec<String>,
    /// The `attempt` of the newest monitor message put for this job.
    pub checks: u32,
    /// The chain of checks that follows the job (see `MonitorMessage::chain`). A blob version's trigger may fire
    /// again while its first check is on the queue (Event Grid delivers events more than once, and keeps no
    /// receipts); monitoring handed over again gets a new chain, and the old one's checks are dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain: Option<String>,
    /// Consecutive failures of the current step (create or status check).
    pub failures: u32,
    /// Unix seconds.
    pub started_at: u64,
    pub updated_at: u64,
    /// Why the record is deferred, dead-lettered or rejected.
    pub reason: Option<String>,
    /// What pre-flight validation found, for a rejected file.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<Problem>,
    /// The first failed requests of an ended job, from its error file.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failed_requests: Vec<FailedRequest>,
    /// The job's deployment, when the batch object names it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Token counts (`input_tokens`, `output_tokens`, `total_tokens`, details), when the batch object carries them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<serde_json::Value>,
    /// The id of the completion event sent for this ending, once it was put on the queue.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    /// Times an operator sent the blob version back to submission (each is a new story with new endings).
    #[serde(skip_serializing_if = "is_zero")]
    pub resubmissions: u32,
    /// A file over one job's limits: its parts, in order, each a job of its own (its own record, `parent` naming
    /// this one).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<Part>,
    /// A split file's token budget per part (the deployment's enqueued-token quota), when one is known: the parts
    /// running at once stay within it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_budget: Option<u64>,
    /// A split file an operator cancelled: no more of its parts are submitted.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub stopped: bool,
    /// For a part: the record key of the file it is a part of.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
}

/// One part of a split file, as the file's record follows it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Part {
    /// `container/name` of the part's blob (in `BATCH_PARTS_CONTAINER`).
    pub blob: String,
    /// The part blob's ETag, once it is written.
    pub etag: Option<String>,
    pub first_line: u64,
    pub requests: u64,
    /// The bytes `[start, end)` of the file that the part holds.
    pub start: u64,
    pub end: u64,
    /// Estimated input tokens.
    pub tokens: u64,
    pub state: PartState,
    pub batch_id: Option<String>,
    /// The part job's terminal status, or why it was dead-lettered.
    pub status: Option<String>,
    pub request_counts: Option<RequestCounts>,
    pub output_blob: Option<String>,
    pub error_blob: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Value>,
}

/// Where a part is in its life.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PartState {
    /// Planned; its blob is not written yet.
    #[default]
    Planned,
    /// Written, waiting for its turn under the token budget.
    Written,
    /// Handed to submission: its job is being created or followed.
    Submitted,
    /// Its job ended (`status` says how).
    Ended,
    /// It can never end in a job (`status` says why).
    DeadLettered,
}

impl Part {
    /// Whether the part is done, one way or the other.
    pub fn finished(&self) -> bool {
        matches!(self.state, PartState::Ended | PartState::DeadLettered)
    }
}

fn is_zero<T: Default + PartialEq>(n: &T) -> bool {
    *n == T::default()
}

impl JobRecord {
    /// An operator sent the blob version (or some of its parts) back: its story ends anew, with a new event id
    /// (`resubmissions` is part of it), and `note` says who did what until the next step writes its own reason.
    pub fn resubmitted(&mut self, note: &str) {
        self.event_id = None;
        self.resubmissions += 1;
        self.reason = Some(note.to_string());
    }

    /// Copies what a status check learned.
    pub fn observe(&mut self, batch: &Batch) {
        self.status = Some(batch.status.to_string());
        self.request_counts = batch.request_counts.clone();
        self.output_blob = batch.output_blob().map(str::to_string);
        self.error_blob = batch.error_blob().map(str::to_string);
        self.errors = batch.errors.iter().map(ToString::to_string).collect();
        if batch.model.is_some() {
            self.model = batch.model.clone();
        }
        if batch.usage.is_some() {
            self.usage = batch.usage.clone();
        }
    }
}

/// One failed request, as the error file gives it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FailedRequest {
    pub custom_id: String,
    pub code: String,
    pub message: String,
}

impl std::fmt::Display for FailedRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.message.is_empty() {
            true => write!(f, "{}: {}", self.custom_id, self.code),
            false => write!(f, "{}: {}: {}", self.custom_id, self.code, self.message),
        }
    }
}

/// The record blob's metadata key holding its [`Summary`] (base64url of its JSON: metadata values are ASCII).
pub const SUMMARY_METADATA: &str = "summary";
/// Longest reason kept in a summary (the metadata of a blob holds at most 8 KB).
const REASON_CHARS: usize = 300;

/// What the table shows of one record.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Summary {
    /// `container/name`.
    pub blob: String,
    pub etag: String,
    pub state: RecordState,
    /// The batch's last known status.
    pub status: Option<String>,
    pub batch_id: Option<String>,
    pub request_counts: Option<RequestCounts>,
    /// Unix seconds.
    pub started_at: u64,
    pub updated_at: u64,
    /// Why it is deferred, rejected (the first problem, with its line) or dead-lettered.
    pub reason: Option<String>,
    /// The job's first error as the batch reports it (`code: message (line n)`), for a job that failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
    /// `usage.total_tokens`, when the batch object carried it.
    pub total_tokens: Option<u64>,
    /// Spare jobs that interrupted creates made for this blob version, cancelled.
    #[serde(skip_serializing_if = "is_zero")]
    pub spares: usize,
    /// A split file: how many of its parts have ended, of how many.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parts: Option<(usize, usize)>,
    /// A part of a split file (the page shows the file, not its parts).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub is_part: bool,
}

impl Summary {
    pub fn of(r: &JobRecord) -> Self {
        Summary {
            blob: r.blob.clone(),
            etag: r.etag.clone(),
            state: r.state,
            status: r.status.clone(),
            batch_id: r.batch_id.clone(),
            request_counts: r.request_counts.clone(),
            started_at: r.started_at,
            updated_at: r.updated_at,
            reason: r.reason.as_ref().map(|why| why.chars().take(REASON_CHARS).collect()),
            first_error: r.errors.first().map(|e| e.chars().take(REASON_CHARS).collect()),
            total_tokens: r.usage.as_ref().and_then(|u| u.get("total_tokens")).and_then(Value::as_u64),
            spares: r.spare_batch_ids.len(),
            parts: (!r.parts.is_empty()).then(|| (r.parts.iter().filter(|p| p.finished()).count(), r.parts.len())),
            is_part: r.parent.is_some(),
        }
    }

    /// The metadata value.
    pub fn encode(&self) -> String {
        let json = serde_json::to_vec(self).expect("a summary of strings and numbers serializes");
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
    }

    /// From the metadata value; `None` if it is not one.
    pub fn decode(value: &str) -> Option<Self> {
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(value.trim()).ok()?;
        serde_json::from_slice(&json).ok()
    }

    /// The state as the page groups it: a running job by itself, an ended one by its terminal status.
    pub fn shown_state(&self) -> &str {
        match self.state {
            RecordState::Submitting => "submitting",
            RecordState::Deferred => "deferred",
            RecordState::Submitted => "running",
            RecordState::Ended => self.status.as_deref().unwrap_or("ended"),
            RecordState::Rejected => "rejected",
            RecordState::DeadLettered => "dead-lettered",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_wire_shape() {
        assert_eq!(key("batch-input/a/b.jsonl", "\"0x8D1\""), "batch-input/a/b.jsonl/0x8D1.json");
        let r = JobRecord { blob: "batch-input/x".into(), state: RecordState::DeadLettered, ..Default::default() };
        let v = serde_json::to_value(&r).expect("json");
        assert_eq!(v["state"], "dead-lettered");
        assert_eq!(v["batchId"], serde_json::Value::Null);
        let back: JobRecord = serde_json::from_value(v).expect("back");
        assert_eq!(back, r);
        let lenient: JobRecord =
            serde_json::from_str(r#"{"blob":"b","state":"submitted","future":1}"#).expect("unknown fields ok");
        assert_eq!(lenient.state, RecordState::Submitted);
    }
}
