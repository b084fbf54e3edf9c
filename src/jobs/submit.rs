//! Creating the batch job for a blob version exactly once, however often the trigger fires.
//!
//! The job record ([`crate::jobs::records`]) is created with `If-None-Match: *`; whoever then holds its lease may create
//! the job, and notes the attempt in the record *before* calling the API. A later attempt that finds a create in
//! doubt (a crash between the call and the answer) first looks for the job the API already has for that `input_blob`
//! and adopts it, cancelling any spare ([`super::recover`]). Creation that has to wait (quota full, throttled, service down, key refused)
//! is deferred with a delayed `submit` message on the monitor queue, with exponential back-off; creation the API
//! refuses for good is dead-lettered with the reason.

use std::time::Duration;

use tracing::{error, info, warn};

use super::context::Jobs;
use crate::batch_api::{Batch, BatchError, CreateBatch, OutputFolder};
use crate::storage::blob::account_root;

use super::dead_letter::{self, DeadLetter};
use super::events;
use super::message::{MonitorMessage, SubmitMessage, MONITOR_QUEUE};
use super::policy::{self, AfterRefusal, Settled};
use crate::clock::unix_now;

use super::record::{JobRecord, RecordState};
use super::records::{Lease, RecordStore};
use super::recover::{self, RecoveryError};
use super::{Outcome, RetryNow};

/// The only completion window blob mode accepts.
const COMPLETION_WINDOW: &str = "24h";
/// The endpoint sent on create; the service reads the file to choose between chat completions and responses.
const BATCH_ENDPOINT: &str = "/chat/completions";
/// How long to wait before looking again at a submission another invocation holds (its lease lasts at most
/// [`crate::jobs::records::SUBMIT_LEASE_SECS`]; looking again costs one record read).
const LEASE_HELD_DELAY: Duration = Duration::from_secs(10);

/// One submission.
pub struct Submission<'a> {
    pub function: &'static str,
    pub blob_url: &'a str,
    /// `container/name`.
    pub blob: &'a str,
    /// Unquoted ETag.
    pub etag: &'a str,
    pub invocation_id: &'a str,
    /// Deferrals before this attempt (0 from BlobMonitor).
    pub deferrals: u32,
    /// Whether a transient failure may be left to the host's retries (BlobMonitor) rather than deferred.
    pub host_retries: bool,
    /// For a part of a split file: the file's record key, kept in the part's record.
    pub parent: Option<&'a str>,
}

fn unavailable(e: impl Into<anyhow::Error>, doing: &'static str) -> RetryNow {
    RetryNow::because(e, doing)
}

/// Creates (or finds) the job for a blob version. See the module docs.
pub async fn submit(jobs: &Jobs, s: &Submission<'_>) -> Result<Outcome, RetryNow> {
    super::log_job(Some(s.blob), None);
    let key = RecordStore::key(s.blob, s.etag);
    let fresh = JobRecord {
        blob: s.blob.to_string(),
        blob_url: s.blob_url.to_string(),
        etag: s.etag.to_string(),
        started_at: unix_now(),
        parent: s.parent.map(str::to_string),
        ..Default::default()
    };
    let created = jobs.records.create(&key, &fresh).await.map_err(|e| unavailable(e, "creating the job record"))?;
    if created.is_none() {
        if let RecordSays::Settled(done) = read(jobs, &key).await? {
            return Ok(done);
        }
    }
    let Some(lease) = jobs.records.lease(&key).await.map_err(|e| unavailable(e, "leasing the job record"))? else {
        // Another invocation is creating this job now, or died doing so less than a lease ago: look again later.
        let delay = LEASE_HELD_DELAY;
        defer_message(jobs, s, delay).await?;
        let reason = format!("{} is being submitted by another invocation", s.blob);
        info!("{reason}; looking again in {} s", delay.as_secs());
        return Ok(Outcome::Deferred { after: delay, reason });
    };
    let held = Held { jobs, lease };
    let result = locked(&held, s).await;
    held.lease.release().await;
    result
}

/// What the job record says about going on with a submission.
enum RecordSays {
    /// The blob version is settled already; this is the submission's outcome.
    Settled(Outcome),
    /// The job exists, and its monitoring may never have started: hand it over again, under the lease.
    Unwatched(Box<JobRecord>),
    /// It still needs its job: the record as read.
    Pending(Box<JobRecord>),
    /// There is no record.
    Missing,
}

async fn read(jobs: &Jobs, key: &str) -> Result<RecordSays, RetryNow> {
    let record = jobs.records.read(key).await.map_err(|e| unavailable(e, "reading the job record"))?.map(|v| v.record);
    let Some(record) = record else { return Ok(RecordSays::Missing) };
    Ok(match policy::settled(&record) {
        Some(Settled::Restart { .. }) => RecordSays::Unwatched(Box::new(record)),
        Some(Settled::Done { reason }) => RecordSays::Settled(Outcome::Nothing { reason }),
        None => RecordSays::Pending(Box::new(record)),
    })
}

/// The first check of `batch_id`, on a new chain of checks (which the record must name before it is handed over),
/// named after this invocation: each run of a trigger is a new invocation id, and the logs then tell which run
/// handed the job over.
fn monitor_message(batch_id: &str, s: &Submission<'_>) -> MonitorMessage {
    MonitorMessage {
        etag: Some(s.etag.to_string()),
        chain: Some(s.invocation_id.to_string()).filter(|id| !id.is_empty()),
        ..MonitorMessage::new(batch_id.to_string(), Some(s.blob.to_string()))
    }
}

/// Hands an existing job over to monitoring again, as a new chain of checks: the record names it first, so that
/// the checks of an earlier hand-over, if it did reach the queue, are dropped (one chain of checks per job).
async fn restart(held: &Held<'_>, s: &Submission<'_>, mut record: JobRecord) -> Result<Outcome, RetryNow> {
    let Some(batch_id) = record.batch_id.clone() else {
        return Err(RetryNow(anyhow::anyhow!("restart() called without a job")));
    };
    super::log_job(None, Some(&batch_id));
    let message = monitor_message(&batch_id, s);
    record.chain = message.chain.clone();
    held.write(&record).await?;
    info!("the job already exists; (re)starting its monitoring");
    Ok(Outcome::HandOver { message, created: false })
}

/// The submission proper, under the record's lease.
async fn locked(held: &Held<'_>, s: &Submission<'_>) -> Result<Outcome, RetryNow> {
    let (jobs, key) = (held.jobs, held.lease.key());
    let mut record = match read(jobs, key).await? {
        RecordSays::Settled(done) => return Ok(done),
        RecordSays::Unwatched(r) => return restart(held, s, *r).await,
        RecordSays::Pending(r) => *r,
        RecordSays::Missing => return Err(RetryNow(anyhow::anyhow!("the job record {key} disappeared"))),
    };

    if let Some(window) = recover::window(&record) {
        // An earlier create may have reached the API before its answer was lost: adopt that job if it exists.
        match recover::find(&jobs.batch, &jobs.records, &held.lease, &record, window).await {
            Ok(found) if found.is_empty() => record.creates_in_doubt = Some(Vec::new()),
            Ok(found) => return adopt(held, s, record, found).await,
            // Not knowing whether the job exists, creating one could duplicate it: wait like a failed create.
            Err(RecoveryError::Batch(e)) => return refused(held, s, record, e).await,
            Err(RecoveryError::Storage(e)) => return Err(unavailable(e, "looking for jobs of interrupted creates")),
        }
    }

    record.submit_attempts += 1;
    record.state = RecordState::Submitting;
    // Written before the call: if the invocation dies during it, the retry knows where to look for the job.
    record.creates_in_doubt.get_or_insert_with(Vec::new).push(unix_now());
    held.write(&record).await?;

    let blob_url = url::Url::parse(s.blob_url).map_err(|e| unavailable(e, "reading the blob URL"))?;
    let root = account_root(&blob_url, &jobs.storage.account().blob_endpoint);
    let output_folder = format!("{}/{}", root.as_str().trim_end_matches('/'), jobs.settings.output_container);
    info!(attempt = record.submit_attempts, output_folder = %output_folder, "creating the batch job");
    let request = CreateBatch {
        input_file_id: None,
        endpoint: BATCH_ENDPOINT,
        completion_window: COMPLETION_WINDOW,
        input_blob: s.blob_url,
        output_folder: OutputFolder { url: &output_folder },
    };
    match jobs.batch.create(&request).await {
        Ok(batch) => {
            super::log_job(None, Some(&batch.id));
            info!(status = %batch.status, "created the batch job");
            record.reason = None;
            // If this write fails, the retry finds the job through the API (the create is still in doubt).
            follow(held, s, record, &batch).await
        }
        Err(e) => {
            if !e.may_have_taken_effect() {
                record.creates_in_doubt.get_or_insert_with(Vec::new).pop();
            }
            refused(held, s, record, e).await
        }
    }
}

/// Interrupted creates made `found` (earliest first): follow the earliest, cancel the others, so that no job runs
/// unwatched.
async fn adopt(
    held: &Held<'_>,
    s: &Submission<'_>,
    mut record: JobRecord,
    found: Vec<Batch>,
) -> Result<Outcome, RetryNow> {
    let Some((first, spares)) = found.split_first() else {
        return Err(RetryNow(anyhow::anyhow!("adopt() called without a job")));
    };
    super::log_job(None, Some(&first.id));
    if spares.is_empty() {
        info!("found the job an interrupted attempt created; adopting it");
    } else {
        let ids: Vec<&str> = spares.iter().map(|b| b.id.as_str()).collect();
        warn!(spares = ?ids,
            "interrupted creates made {} jobs for this blob version; following the earliest, cancelling the others",
            found.len());
        if let Err(e) = recover::cancel_spares(&held.jobs.batch, spares).await {
            return refused(held, s, record, e).await;
        }
        for spare in spares {
            if !record.spare_batch_ids.contains(&spare.id) {
                record.spare_batch_ids.push(spare.id.clone());
            }
        }
    }
    follow(held, s, record, first).await
}

/// The record follows `batch` from now on, and its monitoring starts. The check count starts again with the batch:
/// it orders the checks of one batch, and a resubmitted blob's first check is number 0 like any other's.
async fn follow(
    held: &Held<'_>,
    s: &Submission<'_>,
    mut record: JobRecord,
    batch: &Batch,
) -> Result<Outcome, RetryNow> {
    record.checks = 0;
    record.failures = 0;
    record.batch_id = Some(batch.id.clone());
    record.state = RecordState::Submitted;
    record.creates_in_doubt = Some(Vec::new());
    record.observe(batch);
    let message = monitor_message(&batch.id, s);
    record.chain = message.chain.clone();
    held.write(&record).await?;
    Ok(Outcome::HandOver { message, created: true })
}

/// A record under our lease.
struct Held<'a> {
    jobs: &'a Jobs,
    lease: Lease<'a>,
}

impl Held<'_> {
    async fn write(&self, record: &JobRecord) -> Result<(), RetryNow> {
        self.lease.write(record).await.map(|_| ()).map_err(|e| unavailable(e, "writing the job record"))
    }
}

/// A failed create: let the host retry, defer, or dead-letter ([`policy::after_refusal`]).
async fn refused(
    held: &Held<'_>,
    s: &Submission<'_>,
    mut record: JobRecord,
    e: BatchError,
) -> Result<Outcome, RetryNow> {
    let jobs = held.jobs;
    record.failures += 1;
    record.reason = Some(e.to_string());
    let status = e.status.map(|s| s.as_u16());
    let code = e.code.as_deref().unwrap_or("-");
    match policy::after_refusal(&jobs.settings.policy, record.failures, &e, s.host_retries) {
        AfterRefusal::DeadLetter => {
            error!(status, code = %code, message = %e.message, "the batch API refused the job; dead-lettering the blob");
            let reason = format!("the batch API refused to create a job: {e}");
            let letter = DeadLetter {
                code: e.code.as_deref(),
                blob: Some(s.blob_url),
                ..DeadLetter::new(s.function, &reason, s.invocation_id)
            };
            dead_letter::put(jobs, letter).await.map_err(|e| unavailable(e, "dead-lettering the blob"))?;
            record.state = RecordState::DeadLettered;
            record.event_id = events::announce(jobs, &record, "dead-lettered", None).await?;
            held.write(&record).await?;
            Ok(Outcome::DeadLettered { reason: format!("no batch job for {}: {reason}", s.blob) })
        }
        AfterRefusal::HostRetry => {
            warn!(error = %e, "the job was not created (transient); failing so the host retries");
            record.state = RecordState::Submitting;
            held.write(&record).await?;
            Err(RetryNow::because(e, "creating the batch job"))
        }
        AfterRefusal::Defer { after } => {
            warn!(status, code = %code, message = %e.message, retry_in_secs = after.as_secs(),
                "the job could not be created now; deferring the submission");
            record.state = RecordState::Deferred;
            held.write(&record).await?;
            defer_message(jobs, s, after).await?;
            Ok(Outcome::Deferred { after, reason: format!("creating the job for {} is deferred: {e}", s.blob) })
        }
    }
}

/// Puts the delayed `submit` message.
pub async fn defer_message(jobs: &Jobs, s: &Submission<'_>, delay: Duration) -> Result<(), RetryNow> {
    let m = SubmitMessage {
        submit: s.blob_url.to_string(),
        blob: s.blob.to_string(),
        etag: s.etag.to_string(),
        attempt: s.deferrals + 1,
        parent: s.parent.map(str::to_string),
    };
    jobs.enqueue(MONITOR_QUEUE, m.to_json().as_bytes(), delay)
        .await
        .map_err(|e| unavailable(e, "putting the deferred submission on the queue"))
}
