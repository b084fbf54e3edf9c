//! One status check of a batch job and what follows it ([`policy::after_check`]).
//!
//! A running job is put back on `monitorjobs` with Put Message and `visibilitytimeout` (an output binding cannot
//! delay a message, and sleeping in the invocation is the flaw this app fixes). Failed checks back off through the
//! same delayed message instead of burning the host's five delivery attempts. A check that the record shows
//! superseded (a duplicate delivery) is dropped.
//!
//! Every outcome writes in the same order: **the follow-up (or dead letter), then the completion event, then the
//! record, then the log line.** Each write that fails fails the invocation, and the host delivers this check again:
//! - the follow-up is on the queue before the record counts it, so a redelivery never loses the chain of checks (at
//!   worst it puts a second follow-up, which the record's count drops as superseded);
//! - the event goes before the record says it was sent, so a crash in between sends the same event again, with the
//!   same id, rather than never;
//! - the log line comes last, so it reports what was done.

use std::time::Duration;

use tracing::{error, info, warn};

use super::context::Jobs;
use crate::batch_api::{Batch, BatchError};

use super::dead_letter::{self, DeadLetter};
use super::events;
use super::message::{MonitorMessage, MONITOR_QUEUE};
use super::parts::{self, PartEnding};
use super::policy::{self, AfterCheck};
use super::record::{JobRecord, PartState, RecordState};
use super::records::Versioned;
use super::submit::{defer_message, Submission};
use super::{report, Outcome, RetryNow};

/// How long a check waits when a submitter holds the job record's lease (at most `SUBMIT_LEASE_SECS`, 30 s).
const LEASED_RECORD_DELAY: Duration = Duration::from_secs(10);

/// Checks `message`'s job once. `text` is the message as delivered, kept in a dead-letter record.
pub async fn check(jobs: &Jobs, invocation_id: &str, message: MonitorMessage, text: &str) -> Result<Outcome, RetryNow> {
    super::log_job(message.blob.as_deref(), Some(&message.batch_id));
    let known = match read_record(jobs, &message).await? {
        Read::Current(known) => known.map(|k| *k),
        Read::Stop(outcome) => return Ok(outcome),
    };
    let result = jobs.batch.retrieve(&message.batch_id).await;
    let step = policy::after_check(&jobs.settings.policy, &message, known.as_ref().map(|v| &v.record), &result);
    match (step, result) {
        (AfterCheck::End, Ok(batch)) => ended(jobs, &message, known, &batch).await,
        (AfterCheck::Resubmit, Ok(batch)) => resubmit(jobs, &message, known, &batch).await,
        (AfterCheck::End | AfterCheck::Resubmit, Err(e)) => {
            Err(RetryNow(anyhow::anyhow!("the check policy ended a job whose check failed: {e}")))
        }
        (AfterCheck::Again { next, after }, Ok(batch)) => running(jobs, next, after, known, &batch).await,
        (AfterCheck::Again { next, after }, Err(e)) => failed(jobs, next, after, known, &e).await,
        (AfterCheck::GiveUp { reason }, _) => give_up(jobs, invocation_id, &message, known, reason, text).await,
    }
}

/// What the record says before the check.
enum Read {
    /// Go on; the record as read (`None`: the message names none), reused for this check's one update.
    Current(Option<Box<Versioned>>),
    /// Stop here with this outcome: a submitter holds the record, or the check is superseded.
    Stop(Outcome),
}

async fn read_record(jobs: &Jobs, message: &MonitorMessage) -> Result<Read, RetryNow> {
    let Some(key) = message.record_key() else { return Ok(Read::Current(None)) };
    let read = jobs.records.read_with_lease(&key).await.map_err(|e| RetryNow::because(e, "reading the job record"))?;
    if read.as_ref().is_some_and(|r| r.leased) {
        // A submitter is writing the record, or died holding its lease (it expires within `SUBMIT_LEASE_SECS`).
        // Failing would spend the host's few retries in seconds and poison the job.
        requeue(jobs, message, LEASED_RECORD_DELAY).await?;
        let reason = format!("the job record of {} is leased by a submitter", message.blob_or_dash());
        info!("{reason}; checking again in {} s", LEASED_RECORD_DELAY.as_secs());
        return Ok(Read::Stop(Outcome::Deferred { after: LEASED_RECORD_DELAY, reason }));
    }
    let known = read.map(|r| r.versioned);
    if let Some(reason) = known.as_ref().and_then(|v| policy::superseded(&v.record, message)) {
        info!("dropping a superseded check: {reason}");
        let reason = format!("dropped a superseded check of {}: {reason}", message.batch_id);
        return Ok(Read::Stop(Outcome::Nothing { reason }));
    }
    Ok(Read::Current(known.map(Box::new)))
}

/// The job reached a terminal status: its event, its record, its final report.
async fn ended(
    jobs: &Jobs,
    message: &MonitorMessage,
    known: Option<Versioned>,
    batch: &Batch,
) -> Result<Outcome, RetryNow> {
    let failures = report::first_failures(&jobs.storage, batch).await;
    let (line, clean) = report::final_report(message, batch, failures.line().as_deref());
    let mut ended = current(known.as_ref(), message);
    ended.observe(batch);
    ended.failed_requests = failures.requests.clone();
    let ending =
        PartEnding { state: PartState::Ended, status: batch.status.to_string(), batch_id: Some(batch.id.clone()) };
    let sent = announce(jobs, &ended, ending, Some(batch)).await?;
    let ours = record(jobs, message, known, |r| {
        r.observe(batch);
        r.state = RecordState::Ended;
        r.failures = 0;
        r.reason = None;
        r.failed_requests = failures.requests.clone();
        r.event_id = sent.clone();
    })
    .await?;
    if !ours {
        // The event just sent carries the ending's id, as the other check's does: consumers see one ending.
        let reason = format!(
            "dropped a superseded check of {}: another check recorded its ending first, or another chain follows it",
            batch.id
        );
        info!("{reason}");
        return Ok(Outcome::Nothing { reason });
    }
    if clean {
        info!("{line}");
    } else {
        warn!("{line}");
    }
    Ok(Outcome::Ended { report: line })
}

/// The job is still running: check again after `after`.
async fn running(
    jobs: &Jobs,
    next: MonitorMessage,
    after: Duration,
    known: Option<Versioned>,
    batch: &Batch,
) -> Result<Outcome, RetryNow> {
    requeue(jobs, &next, after).await?;
    record(jobs, &next, known, |r| {
        r.observe(batch);
        r.failures = 0;
        r.reason = None;
    })
    .await?;
    info!(status = %batch.status, check = next.attempt, next_check_secs = after.as_secs(), "batch job still running");
    Ok(Outcome::CheckAgain { batch_id: batch.id.clone(), status: batch.status.to_string(), after })
}

/// The check failed (throttled, unavailable, a refused key): check again after the back-off.
async fn failed(
    jobs: &Jobs,
    next: MonitorMessage,
    after: Duration,
    known: Option<Versioned>,
    e: &BatchError,
) -> Result<Outcome, RetryNow> {
    requeue(jobs, &next, after).await?;
    let reason = e.to_string();
    record(jobs, &next, known, |r| {
        r.failures = next.failures;
        r.reason = Some(reason.clone());
    })
    .await?;
    warn!(error = %e, failures = next.failures, next_check_secs = after.as_secs(), "status check failed; will check again");
    Ok(Outcome::Deferred { after, reason: format!("status check of {} failed ({e})", next.batch_id) })
}

/// The job can never be followed to its end (an unknown batch, too many failed checks): dead-letter it.
async fn give_up(
    jobs: &Jobs,
    invocation_id: &str,
    message: &MonitorMessage,
    known: Option<Versioned>,
    reason: String,
    text: &str,
) -> Result<Outcome, RetryNow> {
    poison(jobs, invocation_id, &reason, Some(&message.batch_id), text).await?;
    let mut dead = current(known.as_ref(), message);
    dead.reason = Some(reason.clone());
    let ending =
        PartEnding { state: PartState::DeadLettered, status: reason.clone(), batch_id: Some(message.batch_id.clone()) };
    let sent = announce(jobs, &dead, ending, None).await?;
    record(jobs, message, known, |r| {
        r.state = RecordState::DeadLettered;
        r.reason = Some(reason.clone());
        r.event_id = sent.clone();
    })
    .await?;
    error!("{reason}; dead-lettered");
    Ok(Outcome::DeadLettered { reason })
}

/// Announces a job's ending: its own event, or, for a part of a split file, its file's progress (the file has one
/// event, when every part has ended).
async fn announce(
    jobs: &Jobs,
    record: &JobRecord,
    ending: PartEnding,
    batch: Option<&Batch>,
) -> Result<Option<String>, RetryNow> {
    if record.parent.is_some() {
        parts::part_ended(jobs, record, ending).await?;
        return Ok(None);
    }
    let status = if ending.state == PartState::DeadLettered { "dead-lettered" } else { ending.status.as_str() };
    events::announce(jobs, record, status, batch).await
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
    jobs: &Jobs,
    message: &MonitorMessage,
    known: Option<Versioned>,
    batch: &Batch,
) -> Result<Outcome, RetryNow> {
    let mut snapshot = None;
    let reason = format!("batch {} failed with token_limit_exceeded", batch.id);
    record(jobs, message, known, |r| {
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
    let policy = &jobs.settings.policy;
    let after = policy::backoff(policy.retry_delay, r.failures, policy.backoff_cap, None);
    let s = Submission {
        function: "QueueMonitor",
        blob_url: &r.blob_url,
        blob: &r.blob,
        etag: &r.etag,
        invocation_id: "-",
        deferrals: r.failures,
        host_retries: false,
        parent: r.parent.as_deref(),
    };
    defer_message(jobs, &s, after).await?;
    warn!(retry_in_secs = after.as_secs(), "the token quota was full; the blob will be submitted again");
    Ok(Outcome::Deferred { after, reason: format!("{reason}; submitting {} again", r.blob) })
}

/// Puts the follow-up on the monitor queue, invisible for `delay`. A failure fails the invocation, so the host
/// redelivers the current message and the check is not lost.
pub async fn requeue(jobs: &Jobs, next: &MonitorMessage, delay: Duration) -> Result<(), RetryNow> {
    jobs.enqueue(MONITOR_QUEUE, next.to_json().as_bytes(), delay)
        .await
        .map_err(|e| RetryNow::because(e, "putting the follow-up check on the queue"))
}

/// Applies `change` to the job's record (if the message names one) and counts `message.attempt` as the newest check.
/// `known` is the version this invocation read first, if any. `false`: the record has since moved on, and was left
/// alone: to another batch, to another chain of checks (monitoring was handed over again during this check), or to
/// the job's end (a duplicate check, one an interrupted invocation put twice, ended it first). The record's ETag
/// makes this the one place where two concurrent checks of a job are told apart.
async fn record(
    jobs: &Jobs,
    message: &MonitorMessage,
    known: Option<Versioned>,
    mut change: impl FnMut(&mut JobRecord),
) -> Result<bool, RetryNow> {
    let Some(key) = message.record_key() else { return Ok(true) };
    let mut ours = true;
    jobs.records
        .update(&key, known, |r| {
            let other_chain = policy::on_another_chain(r, message);
            let over = matches!(r.state, RecordState::Ended | RecordState::DeadLettered);
            ours = r.batch_id.as_deref() == Some(message.batch_id.as_str()) && !other_chain && !over;
            if ours {
                r.checks = r.checks.max(message.attempt);
                change(r);
            }
            ours
        })
        .await
        .map_err(|e| RetryNow::because(e, "updating the job record"))?;
    Ok(ours)
}

/// Dead-letters a queue message with the reason.
pub async fn poison(
    jobs: &Jobs,
    invocation_id: &str,
    reason: &str,
    batch_id: Option<&str>,
    text: &str,
) -> Result<(), RetryNow> {
    let record = DeadLetter { batch_id, message: Some(text), ..DeadLetter::new("QueueMonitor", reason, invocation_id) };
    dead_letter::put(jobs, record).await.map_err(|e| RetryNow::because(e, "dead-lettering the message"))
}
