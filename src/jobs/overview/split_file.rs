//! The operator's actions on a file split into parts: cancel stops submitting parts and cancels the running ones;
//! resubmit sends back only the parts that were dead-lettered (a part failed by the quota is resubmitted by itself).

use std::time::Duration;

use crate::clock::{rfc3339, unix_now};

use super::super::context::Jobs;
use super::super::message::{SubmitMessage, WorkMessage, MONITOR_QUEUE};
use super::super::record::{key, JobRecord, PartState, RecordState};
use super::{reopen, ActionError};

/// Stops the file: no more parts are submitted, and the running parts' jobs are cancelled (monitoring follows them
/// to `cancelled`). A part handed to submission whose job does not exist yet still runs; cancel again to stop it.
pub(super) async fn cancel(jobs: &Jobs, name: &str, record: &JobRecord) -> Result<String, ActionError> {
    if matches!(record.state, RecordState::Ended | RecordState::DeadLettered) || record.stopped {
        return Err(ActionError::NotNow(format!("{} is not running ({:?})", record.blob, record.state)));
    }
    let note = format!("an operator cancelled the file at {}: no more parts are submitted", rfc3339(unix_now()));
    jobs.records
        .update(name, None, |r| {
            r.stopped = true;
            r.reason = Some(note.clone());
            true
        })
        .await?;
    let mut cancelled = 0;
    for part in record.parts.iter().filter(|p| p.state == PartState::Submitted) {
        let Some(etag) = &part.etag else { continue };
        let Some(own) = jobs.records.read(&key(&part.blob, etag)).await?.map(|v| v.record) else { continue };
        if let (RecordState::Submitted, Some(batch_id)) = (own.state, own.batch_id) {
            match jobs.batch.cancel(&batch_id).await {
                Ok(_) => cancelled += 1,
                // Ended meanwhile.
                Err(e) if e.status.is_some_and(|s| s.as_u16() == 409) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    if !record.parts.iter().any(|p| p.state == PartState::Submitted) {
        // No part runs: nothing will end to close the file, so it is closed now.
        let merge = WorkMessage::Merge { merge: name.to_string() };
        jobs.enqueue(MONITOR_QUEUE, merge.to_json().as_bytes(), Duration::ZERO).await?;
    }
    tracing::warn!(blob = %record.blob, cancelled, "{note}");
    Ok(format!("{note}; {cancelled} running parts cancelled"))
}

/// Sends the file's dead-lettered parts back to submission; the file runs again and ends anew (a new event).
pub(super) async fn resubmit(jobs: &Jobs, name: &str, note: String) -> Result<String, ActionError> {
    let mut chosen = Vec::new();
    let updated = jobs
        .records
        .update(name, None, |r| {
            chosen = r
                .parts
                .iter()
                .enumerate()
                .filter(|(_, p)| p.state == PartState::DeadLettered)
                .map(|(i, _)| i)
                .collect();
            if chosen.is_empty() || !matches!(r.state, RecordState::Ended | RecordState::DeadLettered) {
                chosen.clear();
                return false;
            }
            for &i in &chosen {
                r.parts[i].state = PartState::Submitted;
                r.parts[i].status = None;
            }
            r.state = RecordState::Submitted;
            r.resubmitted(&note);
            true
        })
        .await?
        .ok_or_else(|| ActionError::NoRecord(name.into()))?;
    if chosen.is_empty() {
        return Err(ActionError::NotNow(format!("{} has no dead-lettered part to resubmit", updated.blob)));
    }
    for &i in &chosen {
        let part = &updated.parts[i];
        let etag = part.etag.clone().unwrap_or_default();
        // The part's own record, if it has one, waits for its job again.
        if jobs.records.read(&key(&part.blob, &etag)).await?.is_some() {
            reopen(jobs, &key(&part.blob, &etag), &note).await?;
        }
        let message = SubmitMessage {
            submit: jobs.storage.blob_url(&part.blob).to_string(),
            blob: part.blob.clone(),
            etag,
            attempt: 0,
            parent: Some(name.to_string()),
        };
        jobs.enqueue(MONITOR_QUEUE, message.to_json().as_bytes(), Duration::ZERO).await?;
    }
    tracing::warn!(blob = %updated.blob, parts = chosen.len(), "{note}");
    Ok(format!("{note}: {} parts", chosen.len()))
}
