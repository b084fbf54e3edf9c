//! One status check of a batch job and what follows it ([`policy::after_check`]).
//!
//! A running job is put back on `monitorjobs` with Put Message and `visibilitytimeout` (an output binding cannot
//! delay a message, and sleeping in the invocation is the flaw this app fixes): exactly one follow-up message per
//! check, written before the current one is acknowledged. Failed checks back off through the same delayed message
//! instead of burning the host's five delivery attempts. The job record is updated after every check; a check that
//! the record shows superseded (a duplicate delivery) is dropped.

use std::time::Duration;

use tracing::{error, info, warn};

use crate::batch_api::Batch;
use crate::AppState;

use super::dead_letter::{self, DeadLetter};
use super::events::{self, CompletionEvent};
use super::message::{MonitorMessage, MONITOR_QUEUE};
use super::policy::{self, AfterCheck, Policy};
use super::record::{JobRecord, RecordState};
use super::records::Versioned;
use super::submit::{defer_message, Submission};
use super::{report, Outcome, RetryNow};

/// How long a check waits when a submitter holds the job record's lease (at most `SUBMIT_LEASE_SECS`, 30 s).
const LEASED_RECORD_DELAY: Duration = Duration::from_secs(10);

/// Checks `message`'s job once. `text` is the message as delivered, kept in a dead-letter record.
pub async fn check(
    state: &AppState,
    invocation_id: &str,
    message: MonitorMessage,
    text: &str,
) -> Result<Outcome, RetryNow> {
    let key = message.record_key();
    // The record read here is reused for this check's one update.
    let mut known = None;
    if let Some(key) = &key {
        let read =
            state.records.read_with_lease(key).await.map_err(|e| RetryNow::because(e, "reading the job record"))?;
        if let Some(leased) = &read {
            if leased.leased {
                // A submitter is writing the record, or died holding its lease (it expires within
                // `SUBMIT_LEASE_SECS`). Failing would spend the host's few retries in seconds and poison the job.
                requeue(state, &message, LEASED_RECORD_DELAY).await?;
                let reason = format!("the job record of {} is leased by a submitter", message.blob_or_dash());
                info!(batch_id = %message.batch_id, "{reason}; checking again in {} s", LEASED_RECORD_DELAY.as_secs());
                return Ok(Outcome::Deferred { after: LEASED_RECORD_DELAY, reason });
            }
        }
        known = read.map(|r| r.versioned);
        if let Some(reason) = known.as_ref().and_then(|v| policy::superseded(&v.record, &message)) {
            info!(batch_id = %message.batch_id, attempt = message.attempt, "dropping a superseded check: {reason}");
            return Ok(Outcome::Nothing {
                reason: format!("dropped a superseded check of {}: {reason}", message.batch_id),
            });
        }
    }
    let result = state.batch.retrieve(&message.batch_id).await;
    let step = policy::after_check(&Policy::of(&state.config), &message, known.as_ref().map(|v| &v.record), &result);
    match (step, result) {
        (AfterCheck::End, Ok(batch)) => {
            let failures = report::first_failures(&state.storage, &batch).await;
            let (line, clean) = report::final_report(&message, &batch, failures.line().as_deref());
            let mut ended = current(known.as_ref(), &message);
            ended.observe(&batch);
            ended.failed_requests = failures.requests.clone();
            // The event goes first: a crash before the record says it was sent resends the same id.
            let sent =
                events::announce(state, &CompletionEvent::of(&ended, batch.status.as_str(), Some(&batch))).await?;
            record(state, &message, known, |r| {
                r.observe(&batch);
                r.state = RecordState::Ended;
                r.failures = 0;
                r.reason = None;
                r.failed_requests = failures.requests.clone();
                r.event_id = sent.clone();
            })
            .await?;
            if clean {
                info!("{line}");
            } else {
                warn!("{line}");
            }
            Ok(Outcome::Ended { report: line })
        }
        (AfterCheck::Resubmit, Ok(batch)) => resubmit(state, &message, known, &batch).await,
        (AfterCheck::End | AfterCheck::Resubmit, Err(e)) => {
            Err(RetryNow(anyhow::anyhow!("the check policy ended a job whose check failed: {e}")))
        }
        (AfterCheck::Again { next, after }, result) => {
            requeue(state, &next, after).await?;
            match result {
                Ok(batch) => {
                    record(state, &next, known, |r| {
                        r.observe(&batch);
                        r.failures = 0;
                        r.reason = None;
                    })
                    .await?;
                    info!(batch_id = %message.batch_id, blob = %message.blob_or_dash(), status = %batch.status,
                        check = next.attempt, next_check_secs = after.as_secs(), "batch job still running");
                    Ok(Outcome::CheckAgain { batch_id: batch.id, status: batch.status.to_string(), after })
                }
                Err(e) => {
                    let reason = e.to_string();
                    record(state, &next, known, |r| {
                        r.failures = next.failures;
                        r.reason = Some(reason.clone());
                    })
                    .await?;
                    warn!(batch_id = %message.batch_id, blob = %message.blob_or_dash(), error = %e, failures = next.failures,
                        next_check_secs = after.as_secs(), "status check failed; will check again");
                    Ok(Outcome::Deferred {
                        after,
                        reason: format!("status check of {} failed ({e})", message.batch_id),
                    })
                }
            }
        }
        (AfterCheck::GiveUp { reason }, _) => {
            error!(batch_id = %message.batch_id, blob = %message.blob_or_dash(), "{reason}; dead-lettering");
            poison(state, invocation_id, &reason, Some(&message.batch_id), text).await?;
            let mut dead = current(known.as_ref(), &message);
            dead.reason = Some(reason.clone());
            let sent = events::announce(state, &CompletionEvent::of(&dead, "dead-lettered", None)).await?;
            record(state, &message, known, |r| {
                r.state = RecordState::DeadLettered;
                r.reason = Some(reason.clone());
                r.event_id = sent.clone();
            })
            .await?;
            Ok(Outcome::DeadLettered { reason })
        }
    }
}

/// The job's record as this check read it, or what the message says of the job when it names no record (a plain
/// batch id, as the original app wrote it).
fn current(known: Option<&Versioned>, message: &MonitorMessage) -> JobRecord {
    known.map(|v| v.record.clone()).unwrap_or_else(|| JobRecord {
        blob: message.blob.clone().unwrap_or_default(),
        etag: message.etag.clone().unwrap_or_default(),
        batch_id: Some(message.batch_id.clone()),
        ..JobRecord::default()
    })
}

/// The job failed only because the enqueued-token quota was full: submit the blob again later, never poison it.
async fn resubmit(
    state: &AppState,
    message: &MonitorMessage,
    known: Option<Versioned>,
    batch: &Batch,
) -> Result<Outcome, RetryNow> {
    let mut snapshot = None;
    let reason = format!("batch {} failed with token_limit_exceeded", batch.id);
    record(state, message, known, |r| {
        r.superseded_batch_ids.push(batch.id.clone());
        r.batch_id = None;
        r.state = RecordState::Deferred;
        r.failures += 1;
        r.reason = Some(reason.clone());
        snapshot = Some(r.clone());
    })
    .await?;
    let Some(r) = snapshot else {
        return Ok(Outcome::Nothing { reason: format!("{reason}; the record follows another batch") });
    };
    let config = &state.config;
    let after = policy::backoff(config.retry_delay, r.failures, config.backoff_cap, None);
    let s = Submission {
        function: "QueueMonitor",
        blob_url: &r.blob_url,
        blob: &r.blob,
        etag: &r.etag,
        invocation_id: "-",
        deferrals: r.failures,
        host_retries: false,
    };
    defer_message(state, &s, after).await?;
    warn!(batch_id = %batch.id, blob = %r.blob, retry_in_secs = after.as_secs(), "the token quota was full; the blob will be submitted again");
    Ok(Outcome::Deferred { after, reason: format!("{reason}; submitting {} again", r.blob) })
}

/// Puts the follow-up on the monitor queue, invisible for `delay`. A failure fails the invocation, so the host
/// redelivers the current message and the check is not lost.
pub async fn requeue(state: &AppState, next: &MonitorMessage, delay: Duration) -> Result<(), RetryNow> {
    state
        .storage
        .put_message(MONITOR_QUEUE, next.to_json().as_bytes(), state.config.message_encoding, delay)
        .await
        .map_err(|e| RetryNow::because(e, "putting the follow-up check on the queue"))
}

/// Applies `change` to the job's record (if the message names one) and counts `message.attempt` as the newest check.
/// `known` is the version this invocation read first, if any.
async fn record(
    state: &AppState,
    message: &MonitorMessage,
    known: Option<Versioned>,
    mut change: impl FnMut(&mut JobRecord),
) -> Result<(), RetryNow> {
    let Some(key) = message.record_key() else { return Ok(()) };
    state
        .records
        .update(&key, known, |r| {
            if r.batch_id.as_deref() != Some(message.batch_id.as_str()) {
                return false;
            }
            r.checks = r.checks.max(message.attempt);
            change(r);
            true
        })
        .await
        .map(|_| ())
        .map_err(|e| RetryNow::because(e, "updating the job record"))
}

/// Dead-letters a queue message with the reason.
pub async fn poison(
    state: &AppState,
    invocation_id: &str,
    reason: &str,
    batch_id: Option<&str>,
    text: &str,
) -> Result<(), RetryNow> {
    let record = DeadLetter { batch_id, message: Some(text), ..DeadLetter::new("QueueMonitor", reason, invocation_id) };
    dead_letter::put(state, record).await.map_err(|e| RetryNow::because(e, "dead-lettering the message"))
}
