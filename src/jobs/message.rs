//! The monitor queue's messages: their JSON shape, the plain-id form the original app used, and batch id validation.
//!
//! Two kinds of work travel on `monitorjobs`:
//! - a check, `{"batchId": …, "blob": …, "etag": …, "attempt": n}` (plus `failures` while checks keep failing), or a
//!   bare batch id as the original app wrote it;
//! - a deferred submission, `{"submit": <blob URL>, "blob": …, "etag": …, "attempt": n}`, when creating the job had
//!   to wait (quota full, throttled, service down).
//!
//! Field names avoid the envelope metadata keys the host would let a message field overwrite (`Id`, `DequeueCount`,
//! …, functions-protocol.md §2.2). Nothing from a message goes into a URL before it is validated here.

use serde::{Deserialize, Serialize};

/// The queue QueueMonitor is triggered by; fixed by `QueueMonitor/function.json`.
pub const MONITOR_QUEUE: &str = "monitorjobs";
/// Where messages that can never succeed go, with the reason (the host's own poison queue for `monitorjobs`).
pub const POISON_QUEUE: &str = "monitorjobs-poison";
/// Longest batch id accepted. Real ids are about 40 characters.
pub const MAX_BATCH_ID: usize = 128;

/// A request to check one batch job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MonitorMessage {
    pub batch_id: String,
    /// The input blob as `container/name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blob: Option<String>,
    /// The input blob's ETag: with `blob`, it names the job record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// Follow-up messages put so far for this job (0 for the first check).
    #[serde(default)]
    pub attempt: u32,
    /// Consecutive status checks that failed (0 after any successful check).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub failures: u32,
    /// The chain of checks this message belongs to: a token drawn when the job was handed to monitoring and carried
    /// by every follow-up. The job record names the one chain that follows the job; any other is dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain: Option<String>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl MonitorMessage {
    /// The first check of a newly created job.
    pub fn new(batch_id: String, blob: Option<String>) -> Self {
        MonitorMessage { batch_id, blob, etag: None, attempt: 0, failures: 0, chain: None }
    }

    /// The job record's key, when the message names one.
    pub fn record_key(&self) -> Option<String> {
        Some(super::record::key(self.blob.as_deref()?, self.etag.as_deref()?))
    }

    /// The JSON text put on the queue.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a struct of strings and integers serializes")
    }

    /// The blob for logs, or `-`.
    pub fn blob_or_dash(&self) -> &str {
        self.blob.as_deref().unwrap_or("-")
    }
}

/// A deferred job creation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubmitMessage {
    /// The input blob's URL.
    pub submit: String,
    /// `container/name`.
    pub blob: String,
    pub etag: String,
    /// Deferrals so far.
    #[serde(default)]
    pub attempt: u32,
    /// For a part of a split file: the file's record key. The part is submitted only if that record lists it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
}

impl SubmitMessage {
    /// The JSON text put on the queue.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a struct of strings and integers serializes")
    }
}

/// A step of a split file (the `parts` module), naming the file's record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum WorkMessage {
    /// Write the file's parts, then submit the first ones.
    Split { split: String },
    /// Join the parts' results and end the file.
    Merge { merge: String },
}

impl WorkMessage {
    /// The JSON text put on the queue.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a record key serializes")
    }
}

/// Work for QueueMonitor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Work {
    Check(MonitorMessage),
    Submit(SubmitMessage),
    /// A split file's step; its record key is checked like a blob name.
    Split(String),
    Merge(String),
}

/// Why a queue message is refused. Such a message never reaches the batch API; it is dead-lettered with this reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error("the message is empty")]
    Empty,
    #[error("the message is not a monitor message: {0}")]
    NotAMessage(String),
    #[error("the batch id {0}")]
    BadBatchId(String),
    #[error("the ETag \"{0}\" is not usable")]
    BadEtag(String),
    #[error("the submission's blob URL is not in this app's storage account ({0})")]
    ForeignBlob(String),
    #[error("the submission's blob name is not usable")]
    BadBlobName,
    #[error("the split file's record key is not usable")]
    BadRecordKey,
}

/// Parses a queue message: a submission when its JSON object has a `submit` key (whatever its value), otherwise a
/// check. A submission's blob URL must lie under `blob_endpoint` (the app's own account): a message must not be
/// able to make the service read arbitrary URLs.
pub fn parse_work(text: &str, blob_endpoint: &str) -> Result<Work, MessageError> {
    let trimmed = text.trim();
    let object = match serde_json::from_str::<serde_json::Value>(trimmed) {
        Ok(serde_json::Value::Object(o)) if o.contains_key("submit") => o,
        Ok(serde_json::Value::Object(o)) if o.contains_key("split") || o.contains_key("merge") => {
            return parse_step(serde_json::Value::Object(o));
        }
        _ => return parse_monitor_message(text).map(Work::Check),
    };
    let m = SubmitMessage::deserialize(serde_json::Value::Object(object))
        .map_err(|e| MessageError::NotAMessage(format!("not a submission: {e}")))?;
    let root = format!("{}/", blob_endpoint.trim_end_matches('/'));
    if !m.submit.starts_with(&root) || m.submit.contains(['?', '#']) {
        return Err(MessageError::ForeignBlob(root));
    }
    validate_etag(&m.etag)?;
    if m.blob.is_empty() || m.blob.len() > 1100 || m.blob.contains(['?', '#']) {
        return Err(MessageError::BadBlobName);
    }
    Ok(Work::Submit(m))
}

/// A split file's step: its record key must be one (`container/name/etag.json`, no `..`, bounded).
fn parse_step(value: serde_json::Value) -> Result<Work, MessageError> {
    let step = WorkMessage::deserialize(value).map_err(|e| MessageError::NotAMessage(format!("not a step: {e}")))?;
    let key = match &step {
        WorkMessage::Split { split } => split,
        WorkMessage::Merge { merge } => merge,
    };
    let usable = key.len() <= 1300
        && key.ends_with(".json")
        && key.split('/').count() >= 3
        && !key.split('/').any(|s| s.is_empty() || s == "." || s == "..")
        && !key.contains(['?', '#']);
    if !usable {
        return Err(MessageError::BadRecordKey);
    }
    Ok(match step {
        WorkMessage::Split { split } => Work::Split(split),
        WorkMessage::Merge { merge } => Work::Merge(merge),
    })
}

fn validate_etag(etag: &str) -> Result<(), MessageError> {
    let e = etag.trim_matches('"');
    if e.is_empty() || e.len() > 64 || !e.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err(MessageError::BadEtag(etag.chars().take(64).collect::<String>().escape_debug().to_string()));
    }
    Ok(())
}

/// Parses a check: our JSON form, or a bare batch id (the original app's form). The id and ETag are validated.
pub fn parse_monitor_message(text: &str) -> Result<MonitorMessage, MessageError> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(MessageError::Empty);
    }
    let message = if trimmed.starts_with('{') {
        serde_json::from_str::<MonitorMessage>(trimmed).map_err(|e| MessageError::NotAMessage(e.to_string()))?
    } else {
        MonitorMessage::new(trimmed.to_string(), None)
    };
    validate_batch_id(&message.batch_id)?;
    if let Some(etag) = &message.etag {
        validate_etag(etag)?;
    }
    Ok(message)
}

/// Batch ids are opaque, but they go into a URL path: refuse anything that could leave its segment or is absurd.
pub fn validate_batch_id(id: &str) -> Result<(), MessageError> {
    let shown = || id.chars().take(64).collect::<String>().escape_debug().to_string();
    let bad = |why: String| Err(MessageError::BadBatchId(why));
    if id.is_empty() {
        return bad("is empty".into());
    }
    if id.len() > MAX_BATCH_ID {
        return bad(format!("is {} bytes long (at most {MAX_BATCH_ID}): \"{}…\"", id.len(), shown()));
    }
    if id.contains("..") {
        return bad(format!("\"{}\" contains `..`", shown()));
    }
    if let Some(c) = id.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'))) {
        return bad(format!("\"{}\" contains {c:?}, which is not allowed in a batch id", shown()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_json_and_plain_ids() {
        let m = parse_monitor_message(
            "{\n  \"batchId\": \"batch_72a2792ef7d24ba7b82c7fe4a37e379f\",\n  \"blob\": \"batch-input/job1.jsonl\",\n  \"attempt\": 1\n}",
        )
        .expect("indented JSON from an output binding");
        assert_eq!(m.batch_id, "batch_72a2792ef7d24ba7b82c7fe4a37e379f");
        assert_eq!(m.attempt, 1);
        assert_eq!(m.failures, 0);
        let plain = parse_monitor_message(" batch_fe3f047a-de39-4068-9008-346795bfc1db\n").expect("plain id");
        assert_eq!(plain, MonitorMessage::new("batch_fe3f047a-de39-4068-9008-346795bfc1db".into(), None));
    }

    #[test]
    fn a_submit_key_at_the_top_makes_a_submission_whatever_its_value() {
        let root = "http://127.0.0.1:10000/devstoreaccount1";
        let submit =
            format!(r#"{{"submit":"{root}/batch-input/a.jsonl","blob":"batch-input/a.jsonl","etag":"0x8D1"}}"#);
        assert!(matches!(parse_work(&submit, root), Ok(Work::Submit(m)) if m.blob == "batch-input/a.jsonl"));
        let escaped = submit.replace("\"submit\"", r#""\u0073ubmit""#);
        assert!(matches!(parse_work(&escaped, root), Ok(Work::Submit(_))), "an escaped key is still a submission");
        assert!(matches!(parse_work(r#"{"batchId":"b1","attempt":2}"#, root), Ok(Work::Check(m)) if m.attempt == 2));
        let named = r#"{"batchId":"b1","blob":"batch-input/submit.jsonl","attempt":1}"#;
        assert!(matches!(parse_work(named, root), Ok(Work::Check(_))), "the word in a value does not count");
        let nested = r#"{"batchId":"b1","x":{"submit":1}}"#;
        assert!(matches!(parse_work(nested, root), Ok(Work::Check(_))), "only a top-level key counts");
        assert!(matches!(parse_work(r#"{"submit":null,"batchId":"b1"}"#, root), Err(MessageError::NotAMessage(_))));
        let foreign = submit.replace("127.0.0.1:10000", "evil.example");
        assert!(matches!(parse_work(&foreign, root), Err(MessageError::ForeignBlob(_))));
    }

    #[test]
    fn round_trip_omits_zero_failures() {
        let m = MonitorMessage::new("b1".into(), Some("batch-input/x".into()));
        assert_eq!(m.to_json(), r#"{"batchId":"b1","blob":"batch-input/x","attempt":0}"#);
        assert_eq!(parse_monitor_message(&m.to_json()), Ok(m));
    }

    #[test]
    fn hostile_ids_are_refused() {
        for bad in ["", "a/b", "a?b", "a#b", "..", "a..b", "a b", "a\tb", "a\nb", "%2e%2e", "ä", &"x".repeat(129)] {
            assert!(validate_batch_id(bad).is_err(), "{bad:?} should be refused");
            assert!(parse_monitor_message(&format!("{{\"batchId\":{}}}", serde_json::json!(bad))).is_err());
        }
        assert!(parse_monitor_message("{\"batchId\": 5}").is_err());
        assert!(parse_monitor_message("{not json").is_err());
        assert!(parse_monitor_message("   ").is_err());
        for good in ["batch_72a2792ef7d24ba7b82c7fe4a37e379f", "batch_fe3f047a-de39-4068-9008-346795bfc1db", "a.b:c"] {
            assert_eq!(validate_batch_id(good), Ok(()), "{good}");
        }
    }
}
