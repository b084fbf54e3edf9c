//! A file over one job's limits, as one drop: its plan ([`super::plan`]) is kept in the file's record, its parts are
//! written to `BATCH_PARTS_CONTAINER` ([`copy`]), each part becomes a job through the ordinary submission (its own
//! record, with today's exactly-once guarantees, `parent` naming the file), and the parts are submitted as the token
//! budget allows: the estimated tokens of the parts running at once stay within the deployment's quota. When every
//! part has ended, their results are joined into one `results.jsonl` and one `errors.jsonl`, and the file ends once,
//! with one event.
//!
//! Work goes through the monitor queue as `{"split": key}` and `{"merge": key}`, so each step is retried by the host
//! and survives a killed handler. Every step is idempotent: parts have fixed names and are written only until their
//! ETag is on record (a part that has been submitted is never rewritten), submissions of a part are de-duplicated
//! by the part's own record, and the joined files are committed from blocks with fixed ids.
//!
//! The budget is kept per file, in the file's record: several split files on one deployment are not coordinated (a
//! single record every instance writes would be a hot spot). When the service still answers
//! `token_limit_exceeded`, that part waits and is retried like any job, without holding the others back.

mod copy;

use std::time::Duration;

use tracing::info;
use url::Url;

use super::context::Jobs;
use super::events;
use super::message::{SubmitMessage, WorkMessage, MONITOR_QUEUE};
use super::plan::{Plan, PlannedPart};
use super::record::{JobRecord, Part, PartState, RecordState};
use super::records::RecordStore;
use super::{Outcome, RetryNow};

pub use copy::{file_id, merge, split};

/// The parts `plan` cuts a blob version into, not yet written: each named where it goes in `container`
/// (`<container>/<blob>/<etag>/part-00001.jsonl`).
pub fn planned(container: &str, blob: &str, etag: &str, plan: &Plan) -> Vec<Part> {
    let part = |(i, p): (usize, &PlannedPart)| Part {
        blob: format!("{container}/{blob}/{etag}/part-{:05}.jsonl", i + 1),
        first_line: p.first_line,
        requests: p.requests,
        start: p.start,
        end: p.end,
        tokens: p.tokens,
        ..Part::default()
    };
    plan.parts.iter().enumerate().map(part).collect()
}

/// Starts a split file: its record with the plan, and the message that writes its parts. A repeated trigger finds
/// the record and only sends that message again, which does nothing once the parts are written.
pub async fn start(jobs: &Jobs, url: &Url, blob: &str, etag: &str, plan: Plan) -> Result<Outcome, RetryNow> {
    let key = RecordStore::key(blob, etag);
    let parts = planned(&jobs.settings.parts_container, blob, etag, &plan);
    let count = parts.len();
    let fresh = JobRecord {
        blob: blob.to_string(),
        blob_url: url.to_string(),
        etag: etag.to_string(),
        state: RecordState::Submitting,
        parts,
        token_budget: plan.token_budget,
        started_at: crate::clock::unix_now(),
        ..JobRecord::default()
    };
    let created =
        jobs.records.create(&key, &fresh).await.map_err(|e| RetryNow::because(e, "creating the job record"))?;
    if created.is_none() {
        let known = jobs.records.read(&key).await.map_err(|e| RetryNow::because(e, "reading the job record"))?;
        if known.is_some_and(|v| v.record.state != RecordState::Submitting) {
            return Ok(Outcome::Nothing { reason: format!("{blob} was already split into parts") });
        }
    }
    enqueue(jobs, &WorkMessage::Split { split: key }).await?;
    info!(parts = count, tokens = plan.tokens(), "the file is over one job's limits; splitting it into parts");
    Ok(Outcome::Split { parts: count })
}

/// Hands the file's next parts to submission, as many as its token budget allows (all of them when no budget is
/// known). The submissions are put before the record says so, so a crash between the two sends a part again,
/// which its own record makes harmless. Returns how many were handed over.
pub async fn pace(jobs: &Jobs, key: &str) -> Result<usize, RetryNow> {
    let Some(known) = jobs.records.read(key).await.map_err(|e| RetryNow::because(e, "reading the job record"))? else {
        return Err(RetryNow(anyhow::anyhow!("the job record {key} disappeared")));
    };
    let record = &known.record;
    let next = next_parts(record);
    for &i in &next {
        let part = &record.parts[i];
        let message = SubmitMessage {
            submit: jobs.storage.blob_url(&part.blob).to_string(),
            blob: part.blob.clone(),
            etag: part.etag.clone().unwrap_or_default(),
            attempt: 0,
            parent: Some(key.to_string()),
        };
        jobs.enqueue(MONITOR_QUEUE, message.to_json().as_bytes(), Duration::ZERO)
            .await
            .map_err(|e| RetryNow::because(e, "handing a part to submission"))?;
    }
    if next.is_empty() {
        return Ok(0);
    }
    update(jobs, key, Some(known.clone()), |r| {
        for &i in &next {
            if r.parts[i].state == PartState::Written {
                r.parts[i].state = PartState::Submitted;
            }
        }
        r.state = RecordState::Submitted;
    })
    .await?;
    info!(parts = next.len(), "handed parts to submission");
    Ok(next.len())
}

/// The parts to submit now: written ones, in order, while the budget holds them (one at least when none runs).
pub fn next_parts(record: &JobRecord) -> Vec<usize> {
    if record.stopped {
        return Vec::new();
    }
    let mut running: u64 = record.parts.iter().filter(|p| p.state == PartState::Submitted).map(|p| p.tokens).sum();
    let mut any_running = running > 0;
    let mut next = Vec::new();
    for (i, part) in record.parts.iter().enumerate().filter(|(_, p)| p.state == PartState::Written) {
        let fits = record.token_budget.is_none_or(|budget| running + part.tokens <= budget);
        if !fits && any_running {
            break;
        }
        running += part.tokens;
        any_running = true;
        next.push(i);
    }
    next
}

/// How a part's job ended, for its file.
#[derive(Clone, Debug)]
pub struct PartEnding {
    pub state: PartState,
    pub status: String,
    pub batch_id: Option<String>,
}

/// A part's job ended: the file's record says so, the next parts are submitted, and when every part has ended the
/// results are joined. `part` is the part's own record.
pub async fn part_ended(jobs: &Jobs, part: &JobRecord, ending: PartEnding) -> Result<(), RetryNow> {
    let Some(key) = part.parent.as_deref() else { return Ok(()) };
    let mut all_done = false;
    update(jobs, key, None, |r| {
        if let Some(p) = r.parts.iter_mut().find(|p| p.blob == part.blob) {
            p.state = ending.state;
            p.status = Some(ending.status.clone());
            p.batch_id = ending.batch_id.clone().or_else(|| p.batch_id.clone());
            p.request_counts = part.request_counts.clone();
            p.output_blob = part.output_blob.clone();
            p.error_blob = part.error_blob.clone();
            p.usage = part.usage.clone();
        }
        all_done = r.parts.iter().all(Part::finished)
            || (r.stopped && r.parts.iter().all(|p| p.finished() || p.state == PartState::Written));
    })
    .await?;
    if all_done {
        enqueue(jobs, &WorkMessage::Merge { merge: key.to_string() }).await?;
    } else {
        pace(jobs, key).await?;
    }
    Ok(())
}

/// The file's ending: `completed` only when every part completed, else the worst of its parts' endings.
pub fn file_status(parts: &[Part]) -> &'static str {
    let rank = |p: &Part| match (p.state, p.status.as_deref()) {
        (PartState::Ended, Some("completed")) => 0,
        (PartState::Ended, Some("cancelled")) => 1,
        (PartState::Ended, Some("expired")) => 2,
        (PartState::Ended, _) => 3,
        (PartState::DeadLettered, _) => 4,
        // Never submitted (the file was cancelled).
        _ => 1,
    };
    match parts.iter().map(rank).max().unwrap_or(0) {
        0 => "completed",
        1 => "cancelled",
        2 => "expired",
        3 => "failed",
        _ => "dead-lettered",
    }
}

/// Announces the file's ending (one event, with its parts) before the record says it was sent.
async fn announce(jobs: &Jobs, record: &JobRecord, status: &str) -> Result<Option<String>, RetryNow> {
    events::announce(jobs, record, status, None).await
}

async fn enqueue(jobs: &Jobs, work: &WorkMessage) -> Result<(), RetryNow> {
    jobs.enqueue(MONITOR_QUEUE, work.to_json().as_bytes(), Duration::ZERO)
        .await
        .map_err(|e| RetryNow::because(e, "putting a split file's next step on the queue"))
}

/// Changes the file's record under `If-Match` (re-read after a lost race).
async fn update(
    jobs: &Jobs,
    key: &str,
    known: Option<super::records::Versioned>,
    mut change: impl FnMut(&mut JobRecord),
) -> Result<JobRecord, RetryNow> {
    jobs.records
        .update(key, known, |r| {
            change(r);
            true
        })
        .await
        .map_err(|e| RetryNow::because(e, "updating the split file's record"))?
        .ok_or_else(|| RetryNow(anyhow::anyhow!("the job record {key} disappeared")))
}

#[cfg(test)]
mod tests;
