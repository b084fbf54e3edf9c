//! The lifecycle's decisions as plain functions from state to the next step, so every transition is tested without
//! storage or the batch API: what follows a status check, what follows a refused create, back-off, and when a
//! delivered check is superseded.

use std::time::Duration;

use crate::batch_api::{Batch, BatchError, BatchStatus, ErrorKind};

use super::message::MonitorMessage;
use super::record::{JobRecord, RecordState};

/// Shortest wait after a 401/403: long enough for an operator to fix a key or a role.
pub const UNAUTHORIZED_MIN_DELAY: Duration = Duration::from_secs(300);
/// BlobMonitor lets the host retry a transiently failed create this many times before deferring through the queue
/// (the host's blob retries are immediate: five of them would not outlast a one-minute outage).
pub const HOST_RETRY_ATTEMPTS: u32 = 2;

/// The timing settings the decisions depend on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// `BATCH_RETRY_DELAY`: between checks of a running job, and the base of back-off.
    pub retry_delay: Duration,
    /// `BATCH_BACKOFF_CAP`.
    pub backoff_cap: Duration,
    /// `BATCH_MAX_CHECK_FAILURES`: consecutive failures (checks or creates) before giving up.
    pub max_failures: u32,
}

impl Policy {
    /// The wait before retrying after failure number `failures` (1-based) caused by `e`.
    fn after_failure(&self, failures: u32, e: &BatchError) -> Duration {
        let delay = backoff(self.retry_delay, failures, self.backoff_cap, e.retry_after);
        if e.kind() == ErrorKind::Unauthorized {
            delay.max(UNAUTHORIZED_MIN_DELAY)
        } else {
            delay
        }
    }
}

/// The delay before retry number `failures` (1-based): `base · 2^(failures-1)`, capped, but never shorter than the
/// server asked for (itself capped, since a 429 can ask for a day). Whole seconds, as the queue counts visibility.
pub fn backoff(base: Duration, failures: u32, cap: Duration, server_hint: Option<Duration>) -> Duration {
    let factor = 1u32.checked_shl(failures.saturating_sub(1).min(20)).unwrap_or(u32::MAX);
    let exponential = base.saturating_mul(factor).min(cap);
    let hinted = server_hint.unwrap_or_default().min(cap);
    let d = exponential.max(hinted);
    Duration::from_secs(d.as_secs() + u64::from(d.subsec_nanos() > 0))
}

/// What follows a status check.
#[derive(Debug, Clone, PartialEq)]
pub enum AfterCheck {
    /// Terminal status: record it and report.
    End,
    /// Failed only because the enqueued-token quota was full: submit the blob again later (needs a record).
    Resubmit,
    /// Check again: `next` is the follow-up message, invisible for `after`.
    Again { next: MonitorMessage, after: Duration },
    /// Stop following the job and dead-letter it.
    GiveUp { reason: String },
}

/// The step after checking `message`'s job: `result` is what the API answered; `record` is the job's record, if the
/// message names one that exists (a plain batch id from the original app does not, so it cannot be resubmitted).
/// Consecutive failures are counted by the record: a message's own count is trusted only when there is none.
pub fn after_check(
    policy: &Policy,
    message: &MonitorMessage,
    record: Option<&JobRecord>,
    result: &Result<Batch, BatchError>,
) -> AfterCheck {
    match result {
        Ok(batch) if record.is_some() && is_token_limit_failure(batch) => AfterCheck::Resubmit,
        Ok(batch) if batch.status.is_terminal() => AfterCheck::End,
        Ok(_) => AfterCheck::Again {
            next: MonitorMessage { attempt: message.attempt + 1, failures: 0, ..message.clone() },
            after: policy.retry_delay,
        },
        Err(e) if e.kind() == ErrorKind::NotFound => {
            AfterCheck::GiveUp { reason: format!("the batch API does not know batch {}: {e}", message.batch_id) }
        }
        Err(e) => {
            let failures = record.map_or(message.failures, |r| r.failures) + 1;
            if failures >= policy.max_failures {
                return AfterCheck::GiveUp {
                    reason: format!(
                        "{failures} consecutive status checks of batch {} failed; last: {e}",
                        message.batch_id
                    ),
                };
            }
            AfterCheck::Again {
                next: MonitorMessage { attempt: message.attempt + 1, failures, ..message.clone() },
                after: policy.after_failure(failures, e),
            }
        }
    }
}

/// A `failed` job whose errors say the token quota was full (azure-openai-batch.md: the one failure worth a retry).
pub fn is_token_limit_failure(batch: &Batch) -> bool {
    batch.status == BatchStatus::Failed
        && batch.errors.iter().any(|e| {
            e.code.as_deref() == Some("token_limit_exceeded")
                || e.message.as_deref().is_some_and(|m| m.contains("token_limit_exceeded"))
        })
}

/// What follows a create the API refused.
#[derive(Debug, Clone, PartialEq)]
pub enum AfterRefusal {
    /// It can never succeed: dead-letter the blob version.
    DeadLetter,
    /// Fail the invocation so the host delivers the blob trigger again at once.
    HostRetry,
    /// Put a delayed submission on the queue.
    Defer { after: Duration },
}

/// The step after create failure number `failures` (1-based) with `e`. `host_retries`: the trigger is a blob, whose
/// redelivery by the host is immediate and cheap for the first few transient failures.
pub fn after_refusal(policy: &Policy, failures: u32, e: &BatchError, host_retries: bool) -> AfterRefusal {
    let kind = e.kind();
    let give_up = match kind {
        ErrorKind::Permanent | ErrorKind::NotFound => true,
        // The quota frees up as other jobs end: never give up on it.
        ErrorKind::TokenLimit => false,
        _ => failures >= policy.max_failures,
    };
    if give_up {
        AfterRefusal::DeadLetter
    } else if kind == ErrorKind::Transient && host_retries && failures <= HOST_RETRY_ATTEMPTS {
        AfterRefusal::HostRetry
    } else {
        AfterRefusal::Defer { after: policy.after_failure(failures, e) }
    }
}

/// Whether the record names another chain of checks than the message's: monitoring was handed over again, and only
/// the newest hand-over's checks go on. Records and messages from before chains name none, and match any.
pub fn on_another_chain(r: &JobRecord, m: &MonitorMessage) -> bool {
    m.chain.is_some() && r.chain.is_some() && m.chain != r.chain
}

/// Why the record shows this delivered check superseded, if it does: the record follows another batch, the job has
/// ended, or a later check of the same job was already put (a duplicate delivery). A check more than one ahead of the
/// record was never put by this app (each follow-up is put before the record counts it, so at most one can be ahead):
/// taking it would make the record drop the real chain of checks.
pub fn superseded(r: &JobRecord, m: &MonitorMessage) -> Option<String> {
    if r.batch_id.as_deref() != Some(m.batch_id.as_str()) {
        return Some(format!("the record follows batch {}", r.batch_id.as_deref().unwrap_or("none")));
    }
    if matches!(r.state, RecordState::Ended | RecordState::DeadLettered) {
        return Some(format!("the job is already {:?}", r.state));
    }
    if on_another_chain(r, m) {
        return Some("another chain of checks follows the job (its monitoring was handed over again)".into());
    }
    if m.attempt > r.checks.saturating_add(1) {
        return Some(format!(
            "check {} is ahead of the record's check {}: not a check this app put",
            m.attempt, r.checks
        ));
    }
    (r.checks > m.attempt).then(|| format!("check {} was already followed by check {}", m.attempt, r.checks))
}

/// What a submission does when the record shows the blob version already settled.
#[derive(Debug, Clone, PartialEq)]
pub enum Settled {
    /// The job exists but its monitoring may never have started (the creating invocation died before answering):
    /// start it again, as a new chain of checks (the record's `chain`), so that the old one, if it exists, stops.
    Restart { batch_id: String },
    /// Nothing to do.
    Done { reason: String },
}

/// `None` while the blob version still needs a job.
pub fn settled(record: &JobRecord) -> Option<Settled> {
    match (&record.batch_id, record.state) {
        (Some(id), RecordState::Submitted) if record.checks == 0 => Some(Settled::Restart { batch_id: id.clone() }),
        (Some(id), st) => {
            Some(Settled::Done { reason: format!("{} already has batch {id} ({st:?}); nothing to do", record.blob) })
        }
        (None, RecordState::DeadLettered) => Some(Settled::Done {
            reason: format!("{} was dead-lettered earlier: {}", record.blob, record.reason.as_deref().unwrap_or("-")),
        }),
        (None, _) => None,
    }
}

#[cfg(test)]
mod tests;
