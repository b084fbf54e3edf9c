//! The job lifecycle, from a new blob version to its job's terminal status: submission exactly once, status checks,
//! back-off, job records, dead letters and the final report. Functions call [`new_blob`] and [`handle_message`] and
//! turn the [`Outcome`] into the host's response; nothing here knows about envelopes or HTTP responses.
//!
//! - [`policy`]: the pure decisions (what follows a check or a refused create, back-off, superseded checks).
//! - [`submit`]: creating the job for a blob version exactly once, with deferral and recovery.
//! - [`recover`]: finding the jobs interrupted creates made, by time window; cancelling spares.
//! - [`check`]: one status check and what follows it.
//! - [`records`]: the job record per blob version: the submission lock and the job's visible status.
//! - [`message`]: the monitor queue's messages and batch id validation.
//! - [`dead_letter`]: records of work that can never succeed, on `monitorjobs-poison`.
//! - [`report`]: the final report line, with the first failed requests from the job's error file.
//! - [`validate`]: pre-flight validation of an input file, streamed, with line numbers.
//! - [`events`]: the completion event announced on a queue when a blob's story ends.
//! - [`overview`]: every job for the operators' page, from the records' listing; cancel and resubmit.

pub mod check;
pub mod dead_letter;
pub mod events;
pub mod message;
pub mod overview;
pub mod policy;
pub mod records;
pub mod recover;
pub mod report;
pub mod submit;
pub mod validate;

use std::time::Duration;

use tracing::{error, warn};
use url::Url;

use crate::storage::blob::{account_name, unquote_etag};
use crate::AppState;
use dead_letter::DeadLetter;
use events::CompletionEvent;
use message::{parse_work, MonitorMessage, Work};
use records::{JobRecord, RecordState, RecordStore};
use submit::Submission;
use validate::Problem;

/// What became of one trigger. Every variant is a success for the host (2xx): the work is done, or a delayed
/// message that continues it is already on the queue, or a dead-letter record says why it stops.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// A job exists: monitoring starts with `message`, which the caller hands over (BlobMonitor's queue output).
    /// `created`: this trigger created the job (or adopted an interrupted attempt's); otherwise monitoring is
    /// restarted for a job an earlier trigger created.
    HandOver { message: MonitorMessage, created: bool },
    /// A job exists and its first check is already on the queue (a deferred submission, which has no output
    /// binding to hand it over with). `created` as for [`Outcome::HandOver`].
    Started { batch_id: String, created: bool },
    /// The job is running; the next check is on the queue, invisible for `after`.
    CheckAgain { batch_id: String, status: String, after: Duration },
    /// The job reached a terminal status; `report` is the final report line.
    Ended { report: String },
    /// The step has to wait (quota full, throttled, a submitter holds the record, a check failed); a delayed
    /// message continues it after `after`.
    Deferred { after: Duration, reason: String },
    /// Nothing can succeed; a dead-letter record with `reason` is on the poison queue.
    DeadLettered { reason: String },
    /// The file failed pre-flight validation; no job was created, the record lists the problems.
    Rejected { reason: String },
    /// Nothing to do: a duplicate or superseded delivery, or a blob version already settled.
    Nothing { reason: String },
}

impl Outcome {
    /// One line for the host's invocation log.
    pub fn line(&self) -> String {
        match self {
            Outcome::HandOver { message, created } => started(&message.batch_id, *created),
            Outcome::Started { batch_id, created } => started(batch_id, *created),
            Outcome::CheckAgain { batch_id, status, after } => {
                format!("batch {batch_id} is {status}; next check in {} s", after.as_secs())
            }
            Outcome::Ended { report } => report.clone(),
            Outcome::Deferred { after, reason } => format!("deferred by {} s: {reason}", after.as_secs()),
            Outcome::DeadLettered { reason } => format!("dead-lettered: {reason}"),
            Outcome::Rejected { reason } => format!("rejected: {reason}"),
            Outcome::Nothing { reason } => reason.clone(),
        }
    }
}

fn started(batch_id: &str, created: bool) -> String {
    if created {
        format!("created batch {batch_id}")
    } else {
        format!("monitoring existing batch {batch_id}")
    }
}

/// The trigger could not be dealt with now and nothing was lost: the host should deliver it again (non-2xx).
#[derive(Debug, thiserror::Error)]
#[error("{0:#}")]
pub struct RetryNow(pub anyhow::Error);

impl RetryNow {
    /// `error`, with what was being done when it happened.
    pub fn because(error: impl Into<anyhow::Error>, doing: &'static str) -> Self {
        RetryNow(error.into().context(doing))
    }
}

/// A new blob version seen by the blob trigger.
#[derive(Debug)]
pub struct NewBlob<'a> {
    /// The blob's URL (the trigger's `Uri`).
    pub url: &'a Url,
    /// The container of the trigger's path (`batch-input`).
    pub container: &'a str,
    /// The blob's name within it (the trigger's `name`), used when `url` is not under the configured endpoint.
    pub name: Option<String>,
    /// What pre-flight validation found (`None`: it was off).
    pub problems: Option<Vec<Problem>>,
    pub invocation_id: &'a str,
}

/// A new blob: read its current ETag, reject it if validation found problems, else create its job exactly once
/// ([`submit::submit`]).
pub async fn new_blob(state: &AppState, blob: NewBlob<'_>) -> Result<Outcome, RetryNow> {
    // A URL under the configured endpoint names its own container and blob; any other form (a custom domain, another
    // scheme or port, a trailing slash) is looked up by the trigger's path in the configured account.
    let (container, blob_name) = match state.storage.split_blob_url(blob.url.as_str()) {
        Some(parts) => parts,
        None => {
            let name = blob.name.clone().filter(|n| !n.is_empty()).ok_or_else(|| {
                RetryNow(anyhow::anyhow!("the trigger carries no blob name for {} (metadata `name`)", blob.url))
            })?;
            (blob.container.to_string(), name)
        }
    };
    let name = format!("{container}/{blob_name}");
    let head = state
        .storage
        .head_blob(&container, &blob_name)
        .await
        .map_err(|e| RetryNow::because(e, "reading the blob's properties"))?;
    let Some((etag, _)) = head else {
        let mine = account_name(&state.config.storage.blob_endpoint);
        let reason = match (account_name(blob.url), mine) {
            (Some(theirs), Some(mine)) if !theirs.eq_ignore_ascii_case(&mine) => format!(
                "the blob is in storage account `{theirs}`, not in `{mine}` (BlobStorageConnection): the trigger and the \
                 handler must use the same connection"
            ),
            _ => "the blob was deleted before a job could be created for it".to_string(),
        };
        return gone(state, &blob, &name, reason).await;
    };
    let etag = unquote_etag(&etag).to_string();
    if let Some(problems) = blob.problems.filter(|p| !p.is_empty()) {
        return reject(state, blob.url, &name, &etag, problems).await;
    }
    let submission = Submission {
        function: "BlobMonitor",
        blob_url: blob.url.as_str(),
        blob: &name,
        etag: &etag,
        invocation_id: blob.invocation_id,
        deferrals: 0,
        host_retries: true,
    };
    submit::submit(state, &submission).await
}

/// No job can be made for the blob (deleted, or in another account): dead-letter it and announce the ending.
async fn gone(state: &AppState, blob: &NewBlob<'_>, name: &str, reason: String) -> Result<Outcome, RetryNow> {
    warn!(blob = %name, "{reason}");
    let letter =
        DeadLetter { blob: Some(blob.url.as_str()), ..DeadLetter::new("BlobMonitor", &reason, blob.invocation_id) };
    dead_letter::put(state, letter).await.map_err(|e| RetryNow::because(e, "dead-lettering the blob"))?;
    let record = JobRecord {
        blob: name.to_string(),
        blob_url: blob.url.to_string(),
        reason: Some(reason.clone()),
        ..JobRecord::default()
    };
    events::announce(state, &CompletionEvent::of(&record, "dead-lettered", None)).await?;
    Ok(Outcome::DeadLettered { reason: format!("no batch job for {name}: {reason}") })
}

/// A file with problems: no job; a `rejected` record with the problems, and its ending announced.
async fn reject(
    state: &AppState,
    url: &Url,
    name: &str,
    etag: &str,
    problems: Vec<Problem>,
) -> Result<Outcome, RetryNow> {
    let first = &problems[0];
    let reason = format!("line {}: {}: {}", first.line, first.code, first.message);
    let key = RecordStore::key(name, etag);
    let fresh = JobRecord {
        blob: name.to_string(),
        blob_url: url.to_string(),
        etag: etag.to_string(),
        state: RecordState::Rejected,
        reason: Some(reason.clone()),
        problems,
        started_at: records::unix_now(),
        ..JobRecord::default()
    };
    let created =
        state.records.create(&key, &fresh).await.map_err(|e| RetryNow::because(e, "creating the job record"))?;
    let current = match created {
        Some(_) => fresh,
        None => {
            // A retried trigger: the rejection (or a job, from before validation was on) is on record already; only
            // an event that may not have gone out is sent again.
            let read = state.records.read(&key).await.map_err(|e| RetryNow::because(e, "reading the job record"))?;
            match read.map(|v| v.record) {
                Some(r)
                    if r.state == RecordState::Rejected
                        && r.event_id.is_none()
                        && state.config.completed_queue.is_some() =>
                {
                    r
                }
                Some(r) => {
                    return Ok(Outcome::Nothing { reason: format!("{name} was already dealt with ({:?})", r.state) })
                }
                None => return Err(RetryNow(anyhow::anyhow!("the job record {key} disappeared"))),
            }
        }
    };
    warn!(blob = %name, problems = current.problems.len(), "rejected before submission: {reason}");
    if let Some(id) = events::announce(state, &CompletionEvent::of(&current, "rejected", None)).await? {
        state
            .records
            .update(&key, None, |r| {
                r.event_id = Some(id.clone());
                true
            })
            .await
            .map_err(|e| RetryNow::because(e, "updating the job record"))?;
    }
    Ok(Outcome::Rejected { reason: format!("{name}: {reason}") })
}

/// One message from the monitor queue: a status check, or a deferred submission. A message that can never succeed
/// is dead-lettered with the reason and never reaches the batch API.
pub async fn handle_message(state: &AppState, text: &str, invocation_id: &str) -> Result<Outcome, RetryNow> {
    match parse_work(text, state.config.storage.blob_endpoint.as_str()) {
        Ok(Work::Check(message)) => check::check(state, invocation_id, message, text).await,
        Ok(Work::Submit(m)) => {
            let submission = Submission {
                function: "QueueMonitor",
                blob_url: &m.submit,
                blob: &m.blob,
                etag: &m.etag,
                invocation_id,
                deferrals: m.attempt,
                host_retries: false,
            };
            match submit::submit(state, &submission).await? {
                // The queue trigger has no output binding: monitoring starts with a message put now.
                Outcome::HandOver { message, created } => {
                    check::requeue(state, &message, Duration::ZERO).await?;
                    Ok(Outcome::Started { batch_id: message.batch_id, created })
                }
                other => Ok(other),
            }
        }
        Err(refusal) => {
            let reason = refusal.to_string();
            error!(reason = %reason, "refusing a queue message; it never reaches the batch API");
            check::poison(state, invocation_id, &reason, None, text).await?;
            Ok(Outcome::DeadLettered { reason: format!("a queue message: {reason}") })
        }
    }
}
