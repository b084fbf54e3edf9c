//! What a trigger claims, checked against storage before any work is done for it: a new blob in the blob trigger's
//! container (`batch-input`), or a deferred submission of one. An invocation or a queue message can be forged by
//! whoever reaches the handler's port or the queue, so the core creates a job only for a blob that exists, in the
//! input container, with the ETag it is said to have; anything else is dead-lettered with the reason.

use tracing::{error, warn};
use url::Url;

use super::context::Jobs;
use crate::storage::blob::{account_name, unquote_etag};

use super::check;
use super::dead_letter::{self, DeadLetter};
use super::events;
use super::message::SubmitMessage;
use super::parts;
use super::record::{JobRecord, RecordState};
use super::records::RecordStore;
use super::submit::{self, Submission};
use super::validate::{Checked, Problem};
use super::{Outcome, RetryNow};

/// The container of the blob trigger's path, fixed by `BlobMonitor/function.json` (`batch-input/{name}`).
pub const INPUT_CONTAINER: &str = "batch-input";
/// Longest blob name Azure Storage accepts.
const MAX_BLOB_NAME: usize = 1024;

/// A new blob version seen by the blob trigger.
#[derive(Debug)]
pub struct NewBlob<'a> {
    /// The blob's URL (the trigger's `Uri`).
    pub url: &'a Url,
    /// The blob's name within it (the trigger's `name`), used when `url` is not under the configured endpoint.
    pub name: Option<String>,
    /// What the pre-flight check found, and how it cuts the file into jobs (`None`: it was off, and the file is one
    /// job as it is).
    pub checked: Option<Checked>,
    pub invocation_id: &'a str,
}

/// A new blob: read its current ETag, reject it if validation found problems, split it if it is over one job's
/// limits ([`parts::start`]), else create its job exactly once ([`submit::submit`]).
pub async fn new_blob(jobs: &Jobs, blob: NewBlob<'_>) -> Result<Outcome, RetryNow> {
    // A URL under the configured endpoint names its own container and blob; any other form (a custom domain, another
    // scheme or port, a trailing slash) is looked up by the trigger's path in the configured account.
    let (container, blob_name) = match jobs.storage.split_blob_url(blob.url.as_str()) {
        Some(parts) => parts,
        None => {
            let name = blob.name.clone().filter(|n| !n.is_empty()).ok_or_else(|| {
                RetryNow(anyhow::anyhow!("the trigger carries no blob name for {} (metadata `name`)", blob.url))
            })?;
            (INPUT_CONTAINER.to_string(), name)
        }
    };
    let name = format!("{container}/{blob_name}");
    if container != INPUT_CONTAINER || !addressable(&blob_name) {
        let reason = format!(
            "the trigger names `{}`, which is not a blob of `{INPUT_CONTAINER}` (the blob trigger's container)",
            shown(&name)
        );
        return gone(jobs, &blob, &name, reason).await;
    }
    let head = jobs
        .storage
        .head_blob(&container, &blob_name)
        .await
        .map_err(|e| RetryNow::because(e, "reading the blob's properties"))?;
    let Some((etag, _)) = head else {
        let mine = account_name(&jobs.storage.account().blob_endpoint);
        let reason = match (account_name(blob.url), mine) {
            (Some(theirs), Some(mine)) if !theirs.eq_ignore_ascii_case(&mine) => format!(
                "the blob is in storage account `{theirs}`, not in `{mine}` (BlobStorageConnection): the trigger and the \
                 handler must use the same connection"
            ),
            _ => "the blob was deleted before a job could be created for it".to_string(),
        };
        return gone(jobs, &blob, &name, reason).await;
    };
    let etag = unquote_etag(&etag).to_string();
    match blob.checked {
        Some(checked) if !checked.problems.is_empty() => {
            return reject(jobs, blob.url, &name, &etag, checked.problems).await;
        }
        Some(checked) if !checked.plan.is_whole() => {
            return parts::start(jobs, blob.url, &name, &etag, checked.plan).await;
        }
        _ => {}
    }
    let submission = Submission {
        function: "BlobMonitor",
        blob_url: blob.url.as_str(),
        blob: &name,
        etag: &etag,
        invocation_id: blob.invocation_id,
        deferrals: 0,
        host_retries: true,
        parent: None,
    };
    submit::submit(jobs, &submission).await
}

/// No job can be made for the blob (deleted, or in another account): dead-letter it and announce the ending.
async fn gone(jobs: &Jobs, blob: &NewBlob<'_>, name: &str, reason: String) -> Result<Outcome, RetryNow> {
    warn!(blob = %name, "{reason}");
    let letter =
        DeadLetter { blob: Some(blob.url.as_str()), ..DeadLetter::new("BlobMonitor", &reason, blob.invocation_id) };
    dead_letter::put(jobs, letter).await.map_err(|e| RetryNow::because(e, "dead-lettering the blob"))?;
    let record = JobRecord {
        blob: name.to_string(),
        blob_url: blob.url.to_string(),
        reason: Some(reason.clone()),
        ..JobRecord::default()
    };
    events::announce(jobs, &record, "dead-lettered", None).await?;
    Ok(Outcome::DeadLettered { reason: format!("no batch job for {name}: {reason}") })
}

/// A file with problems: no job; a `rejected` record with the problems, and its ending announced.
async fn reject(jobs: &Jobs, url: &Url, name: &str, etag: &str, problems: Vec<Problem>) -> Result<Outcome, RetryNow> {
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
        started_at: crate::clock::unix_now(),
        ..JobRecord::default()
    };
    let created =
        jobs.records.create(&key, &fresh).await.map_err(|e| RetryNow::because(e, "creating the job record"))?;
    let current = match created {
        Some(_) => fresh,
        None => {
            // A retried trigger: the rejection (or a job, from before validation was on) is on record already; only
            // an event that may not have gone out is sent again.
            let read = jobs.records.read(&key).await.map_err(|e| RetryNow::because(e, "reading the job record"))?;
            match read.map(|v| v.record) {
                Some(r)
                    if r.state == RecordState::Rejected
                        && r.event_id.is_none()
                        && jobs.settings.completed_queue.is_some() =>
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
    if let Some(id) = events::announce(jobs, &current, "rejected", None).await? {
        jobs.records
            .update(&key, None, |r| {
                r.event_id = Some(id.clone());
                true
            })
            .await
            .map_err(|e| RetryNow::because(e, "updating the job record"))?;
    }
    Ok(Outcome::Rejected { reason: format!("{name}: {reason}") })
}

/// Why a deferred submission is not what it claims, if it is not: its URL and `blob` must name the same blob of the
/// input container, and that blob must exist with the submission's ETag. `None`: go on.
pub async fn refusal(jobs: &Jobs, m: &SubmitMessage) -> Result<Option<String>, RetryNow> {
    let Some((container, name)) = jobs.storage.split_blob_url(&m.submit) else {
        return Ok(Some("the submission's URL is not a blob of this app's storage account".into()));
    };
    let blob = format!("{container}/{name}");
    // A part of a split file lives in the parts container, and its file's record must list it with that ETag.
    let home = if m.parent.is_some() { jobs.settings.parts_container.as_str() } else { INPUT_CONTAINER };
    if container != home || !addressable(&name) {
        return Ok(Some(format!("the submission names `{}`, which is not a blob of `{home}`", shown(&blob))));
    }
    if let Some(parent) = &m.parent {
        let file = jobs.records.read(parent).await.map_err(|e| RetryNow::because(e, "reading the file's record"))?;
        let listed = file.is_some_and(|f| {
            f.record.parts.iter().any(|p| p.blob == blob && p.etag.as_deref() == Some(unquote_etag(&m.etag)))
        });
        if !listed {
            return Ok(Some(format!("`{}` is not a written part of the file `{}`", shown(&blob), shown(parent))));
        }
    }
    if blob != m.blob {
        return Ok(Some(format!(
            "the submission's URL names `{}` but its blob field says `{}`",
            shown(&blob),
            shown(&m.blob)
        )));
    }
    let head = jobs
        .storage
        .head_blob(&container, &name)
        .await
        .map_err(|e| RetryNow::because(e, "reading the blob's properties"))?;
    Ok(match head {
        None => Some(format!("{blob} no longer exists; no job is created for it")),
        Some((etag, _)) if unquote_etag(&etag) != unquote_etag(&m.etag) => Some(format!(
            "{blob} was rewritten (its ETag is now {}, not {}); the new version gets its own job",
            unquote_etag(&etag),
            shown(&m.etag)
        )),
        Some(_) => None,
    })
}

/// Dead-letters a refused submission. When it was a real deferred submission (its blob version has a record that
/// waits for a job), that record ends dead-lettered too, and the ending is announced.
pub async fn refuse_submission(
    jobs: &Jobs,
    invocation_id: &str,
    m: &SubmitMessage,
    reason: String,
    text: &str,
) -> Result<Outcome, RetryNow> {
    error!(blob = %shown(&m.blob), reason = %reason, "refusing a submission; no job is created");
    check::poison(jobs, invocation_id, &reason, None, text).await?;
    let key = RecordStore::key(&m.blob, &m.etag);
    let read = jobs.records.read(&key).await.map_err(|e| RetryNow::because(e, "reading the job record"))?;
    let waiting =
        |r: &JobRecord| r.batch_id.is_none() && matches!(r.state, RecordState::Submitting | RecordState::Deferred);
    if let Some(known) = read.filter(|v| waiting(&v.record)) {
        let mut dead =
            JobRecord { state: RecordState::DeadLettered, reason: Some(reason.clone()), ..known.record.clone() };
        // The event first: a crash before the record says it was sent sends the same event again.
        dead.event_id = events::announce(jobs, &dead, "dead-lettered", None).await?;
        jobs.records
            .update(&key, Some(known), |r| {
                if !waiting(r) {
                    return false;
                }
                *r = JobRecord { updated_at: r.updated_at, ..dead.clone() };
                true
            })
            .await
            .map_err(|e| RetryNow::because(e, "updating the job record"))?;
    }
    Ok(Outcome::DeadLettered { reason: format!("a submission: {reason}") })
}

/// Whether Storage can address a blob of this name: `.` and `..` segments are resolved away in a URL, so such a
/// name would reach another blob.
fn addressable(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_BLOB_NAME && !name.split('/').any(|s| s == "." || s == "..")
}

/// A name from a claim, bounded and with its control characters escaped, for a reason or a log line.
fn shown(s: &str) -> String {
    s.chars().take(200).collect::<String>().escape_debug().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_segments_and_overlong_names_are_not_addressable() {
        assert!(addressable("a.jsonl") && addressable("dir/a..b.jsonl") && addressable(".hidden/x"));
        for bad in ["", "../batch-records/x", "a/./b", "a/..", &"x".repeat(1025)] {
            assert!(!addressable(bad), "{bad:?}");
        }
    }
}
