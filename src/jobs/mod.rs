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
//! - [`validate`]: pre-flight validation of an input file, streamed, with line numbers; [`plan`]: how it is cut.
//! - [`parts`]: a file over one job's limits as several jobs, paced by the token quota, ending in one result.
//! - [`events`]: the completion event announced on a queue when a blob's story ends.
//! - [`overview`]: every job for the operators' page, from the records' listing; cancel and resubmit.

pub mod check;
pub mod context;
pub mod dead_letter;
pub mod events;
pub mod intake;
pub mod message;
pub mod overview;
pub mod parts;
pub mod plan;
pub mod policy;
pub mod record;
pub mod records;
pub mod recover;
pub mod report;
pub mod submit;
pub mod validate;

use std::time::Duration;

use tracing::error;

pub use context::{JobSettings, Jobs};
use message::{parse_work, MonitorMessage, Work};
use submit::Submission;

pub use intake::{new_blob, NewBlob, INPUT_CONTAINER};

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
    /// The file is over one job's limits: it is being split into `parts` jobs.
    Split { parts: usize },
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
            Outcome::Split { parts } => format!("split into {parts} parts"),
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

/// Names the job that the log lines of this invocation are about: its blob (`container/name`) and batch id, recorded
/// on the invocation's span, which the function adapters open with both fields empty. Fields of that span rather than
/// on every line, so each line carries them; and not a span of the core's own, which would be entered and left on
/// every poll of the invocation as well (what that cost a check is in docs/performance.md).
pub fn log_job(blob: Option<&str>, batch_id: Option<&str>) {
    let span = tracing::Span::current();
    if let Some(blob) = blob {
        span.record("blob", blob);
    }
    if let Some(batch_id) = batch_id {
        span.record("batch_id", batch_id);
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

/// One message from the monitor queue: a status check, or a deferred submission. A message that can never succeed
/// is dead-lettered with the reason and never reaches the batch API.
pub async fn handle_message(jobs: &Jobs, text: &str, invocation_id: &str) -> Result<Outcome, RetryNow> {
    match parse_work(text, jobs.storage.account().blob_endpoint.as_str()) {
        Ok(Work::Check(message)) => check::check(jobs, invocation_id, message, text).await,
        Ok(Work::Submit(m)) => {
            if let Some(reason) = intake::refusal(jobs, &m).await? {
                return intake::refuse_submission(jobs, invocation_id, &m, reason, text).await;
            }
            let submission = Submission {
                function: "QueueMonitor",
                blob_url: &m.submit,
                blob: &m.blob,
                etag: &m.etag,
                invocation_id,
                deferrals: m.attempt,
                host_retries: false,
                parent: m.parent.as_deref(),
            };
            match submit::submit(jobs, &submission).await? {
                // The queue trigger has no output binding: monitoring starts with a message put now.
                Outcome::HandOver { message, created } => {
                    check::requeue(jobs, &message, Duration::ZERO).await?;
                    Ok(Outcome::Started { batch_id: message.batch_id, created })
                }
                other => Ok(other),
            }
        }
        Ok(Work::Split(key)) => parts::split(jobs, &key).await,
        Ok(Work::Merge(key)) => parts::merge(jobs, &key).await,
        Err(refusal) => {
            let reason = refusal.to_string();
            error!(reason = %reason, "refusing a queue message; it never reaches the batch API");
            check::poison(jobs, invocation_id, &reason, None, text).await?;
            Ok(Outcome::DeadLettered { reason: format!("a queue message: {reason}") })
        }
    }
}
