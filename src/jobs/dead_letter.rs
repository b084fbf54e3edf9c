//! Dead-letter records: work that can never succeed is put on `monitorjobs-poison` with the reason, so that nothing
//! is dropped silently. A record is JSON, encoded like every message of the app (host.json `messageEncoding`).

use serde::Serialize;
use std::time::Duration;

use super::context::Jobs;
use super::message::POISON_QUEUE;
use crate::storage::StorageError;

/// One dead-lettered item.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter<'a> {
    /// `BlobMonitor` or `QueueMonitor`.
    pub function: &'a str,
    /// Why it can never succeed, for a person.
    pub reason: &'a str,
    /// The API's error code, when the reason is an API answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_id: Option<&'a str>,
    /// The input blob (URL or `container/name`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blob: Option<&'a str>,
    /// The original queue message text, bounded, when a message is being dead-lettered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<&'a str>,
    pub invocation_id: &'a str,
    /// RFC 1123 time of dead-lettering.
    pub at: String,
}

impl<'a> DeadLetter<'a> {
    /// A record of `function` giving up, with `reason`, now; the optional fields are set with struct update syntax.
    pub fn new(function: &'a str, reason: &'a str, invocation_id: &'a str) -> Self {
        DeadLetter {
            function,
            reason,
            code: None,
            batch_id: None,
            blob: None,
            message: None,
            invocation_id,
            at: httpdate::fmt_http_date(std::time::SystemTime::now()),
        }
    }
}

/// Longest original message text kept in a record (the whole record must fit a 64 KiB queue message).
const MAX_MESSAGE_KEPT: usize = 32 * 1024;

/// Puts the record on the poison queue. Failing to do so fails the invocation, so the host retries it.
pub async fn put(jobs: &Jobs, mut record: DeadLetter<'_>) -> Result<(), StorageError> {
    if let Some(m) = record.message {
        if m.len() > MAX_MESSAGE_KEPT {
            let cut = (0..=MAX_MESSAGE_KEPT).rev().find(|i| m.is_char_boundary(*i)).unwrap_or(0);
            record.message = Some(&m[..cut]);
        }
    }
    let json = serde_json::to_vec(&record).map_err(|e| StorageError::Parse(e.to_string()))?;
    jobs.enqueue(POISON_QUEUE, &json, Duration::ZERO).await?;
    tracing::warn!(queue = POISON_QUEUE, reason = %record.reason, "dead-lettered");
    Ok(())
}
