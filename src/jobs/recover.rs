//! Finding the jobs that interrupted creates made for a blob version, so that a retried submission adopts one instead
//! of creating another, and cancels any spare.
//!
//! Create is not idempotent and blob mode takes no metadata to tag a job with (azure-openai-batch.md §3, §9.4), so a
//! job is recognised by its `input_blob` and its `created_at`. The record keeps when each create whose outcome is
//! unknown was sent ([`JobRecord::creates_in_doubt`]); the jobs those calls may have made were created in a window
//! around them. The search is bounded by that window and a deadline, never by a number of pages: on a busy resource
//! thousands of jobs can come after the interrupted one. The dated surface is asked for just the window (OData
//! `$filter` on `created_at`); v1 documents no filter, so there the list is read newest first until it reaches
//! before the window.

use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::batch_api::{Batch, BatchClient, BatchError, CreatedWindow, ErrorKind, CREATE_TIMEOUT};
use crate::storage::StorageError;

use super::record::JobRecord;
use super::records::{Lease, RecordStore};

/// Allowance on both sides of a create's window: the service's clock against ours, and a request the service took
/// up after our deadline.
pub const MARGIN_SECS: u64 = 120;
/// Longest a search may take. With one list call of up to a minute after it, a submission stays well inside the
/// host's five-minute function timeout.
pub const DEADLINE: Duration = Duration::from_secs(120);
/// Jobs per list page (the API's maximum).
const PAGE: u32 = 100;

/// Why a search did not finish.
#[derive(Debug)]
pub enum RecoveryError {
    /// The batch API failed, or the search ran out of time: whether a job exists is unknown.
    Batch(BatchError),
    /// The records could not be read, or the lease on this one was lost.
    Storage(StorageError),
}

/// Where jobs of the record's creates in doubt can be; `None` when no create is in doubt.
pub fn window(record: &JobRecord) -> Option<CreatedWindow> {
    if record.submit_attempts == 0 {
        return None;
    }
    match &record.creates_in_doubt {
        // Written before the record kept them: any attempt since the record began.
        None => Some(CreatedWindow { from: record.started_at.saturating_sub(MARGIN_SECS), to: None }),
        Some(sent) => {
            let (first, last) = (sent.iter().min()?, sent.iter().max()?);
            Some(CreatedWindow {
                from: first.saturating_sub(MARGIN_SECS),
                to: Some(last + CREATE_TIMEOUT.as_secs() + MARGIN_SECS),
            })
        }
    }
}

/// The jobs created in `window` for `record`'s blob, earliest first: not the ones this record already replaced, nor
/// ones that another version of the blob has on record. Keeps `lease` alive while it pages.
pub async fn find(
    batch: &BatchClient,
    records: &RecordStore,
    lease: &Lease<'_>,
    record: &JobRecord,
    window: CreatedWindow,
) -> Result<Vec<Batch>, RecoveryError> {
    let mut claimed = record.superseded_batch_ids.clone();
    for other in records.other_versions(&record.blob, lease.key()).await.map_err(RecoveryError::Storage)? {
        claimed.extend(other.batch_id.into_iter().chain(other.superseded_batch_ids).chain(other.spare_batch_ids));
    }
    let ours = |b: &Batch| {
        b.input_blob.as_deref().is_some_and(|url| same_blob(url, &record.blob_url))
            && b.created_unix().is_none_or(|c| window.contains(c))
            && !claimed.contains(&b.id)
    };
    let started = Instant::now();
    let mut filtered = batch.filters_by_creation();
    let (mut found, mut after, mut pages) = (Vec::<Batch>::new(), None::<String>, 0u32);
    loop {
        if started.elapsed() > DEADLINE {
            let what =
                format!("looking for jobs of interrupted creates took over {} s ({pages} pages)", DEADLINE.as_secs());
            return Err(RecoveryError::Batch(BatchError::transport(&what)));
        }
        lease.keep().await.map_err(RecoveryError::Storage)?;
        let page = match batch.list(after.as_deref(), PAGE, filtered.then_some(&window)).await {
            Err(e) if filtered && e.kind() == ErrorKind::Permanent => {
                warn!(error = %e, "the batch API refused a creation filter; reading the whole list instead");
                (filtered, after) = (false, None);
                found.clear();
                continue;
            }
            other => other.map_err(RecoveryError::Batch)?,
        };
        pages += 1;
        found.extend(page.data.iter().filter(|b| ours(b)).cloned());
        // Newest first: a page that reaches before the window is the last one that can hold a job of ours.
        let oldest = page.data.last().and_then(Batch::created_unix);
        if !page.has_more || page.data.is_empty() || oldest.is_some_and(|c| c < window.from) {
            break;
        }
        after = page.data.last().map(|b| b.id.clone());
    }
    info!(pages, found = found.len(), filtered, "looked for jobs of interrupted creates");
    found.sort_by(|a, b| (a.created_unix(), &a.id).cmp(&(b.created_unix(), &b.id)));
    found.dedup_by(|a, b| a.id == b.id);
    Ok(found)
}

/// Cancels the spare jobs that are still running. One the service no longer knows, or refuses to cancel for good,
/// is left as it is (logged); any other failure is returned, to be retried like a failed create.
pub async fn cancel_spares(batch: &BatchClient, spares: &[Batch]) -> Result<(), BatchError> {
    for spare in spares.iter().filter(|b| !b.status.is_terminal()) {
        match batch.cancel(&spare.id).await {
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::Permanent) => {
                warn!(spare = %spare.id, error = %e, "the spare job could not be cancelled; it may have ended");
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Whether two blob URLs name the same blob, after URL normalisation (host case, default port, percent-encoding of
/// unreserved characters).
fn same_blob(a: &str, b: &str) -> bool {
    match (url::Url::parse(a), url::Url::parse(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(attempts: u32, in_doubt: Option<Vec<u64>>) -> JobRecord {
        JobRecord { submit_attempts: attempts, creates_in_doubt: in_doubt, started_at: 10_000, ..Default::default() }
    }

    #[test]
    fn the_window_covers_every_create_in_doubt_and_nothing_when_none_is() {
        assert_eq!(window(&record(0, None)), None, "no attempt yet");
        assert_eq!(window(&record(3, Some(vec![]))), None, "every earlier create's outcome is known");
        assert_eq!(
            window(&record(1, None)),
            Some(CreatedWindow { from: 10_000 - MARGIN_SECS, to: None }),
            "a record from before creates were kept: since it began"
        );
        let w = window(&record(2, Some(vec![10_500, 10_100]))).expect("window");
        assert_eq!(w, CreatedWindow { from: 10_100 - MARGIN_SECS, to: Some(10_500 + 20 + MARGIN_SECS) });
    }

    #[test]
    fn blob_urls_compare_normalised() {
        assert!(same_blob(
            "https://A.blob.core.windows.net:443/batch-input/x.jsonl",
            "https://a.blob.core.windows.net/batch-input/x.jsonl"
        ));
        assert!(!same_blob(
            "https://a.blob.core.windows.net/batch-input/x.jsonl",
            "https://a.blob.core.windows.net/batch-input/y.jsonl"
        ));
    }
}
