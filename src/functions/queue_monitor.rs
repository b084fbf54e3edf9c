//! `POST /QueueMonitor`: checks one batch job, or runs a deferred submission.
//!
//! A running job is put back on `monitorjobs` with Put Message and `visibilitytimeout` (an output binding cannot
//! delay a message, and sleeping here is the flaw this app fixes), then the invocation returns 2xx with no output:
//! exactly one follow-up message per check, written before the current one is acknowledged. Failed checks back off
//! exponentially through the same delayed message instead of burning the host's five delivery attempts. The job
//! record is updated after every check; a check that the record shows superseded (a duplicate delivery) is dropped.

use std::time::Duration;

use axum::body::{to_bytes, Body};
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use tracing::{error, info, warn, Instrument};

use crate::batch_api::{Batch, BatchError, BatchStatus, ErrorKind};
use crate::dead_letter::{dead_letter, now, DeadLetter};
use crate::error::{FunctionError, Result};
use crate::message::{parse_work, MonitorMessage, SubmitMessage, Work, MONITOR_QUEUE};
use crate::protocol::InvokeResponse;
use crate::records::{JobRecord, RecordState, Versioned};
use crate::submission::{defer_message, submit, Submission, Submitted, UNAUTHORIZED_MIN_DELAY};
use crate::AppState;
use std::sync::Arc;

/// The trigger binding's name in `QueueMonitor/function.json`.
const TRIGGER_BINDING: &str = "job";
/// Largest envelope accepted: a 64 KiB message, its JSON re-encoding and the metadata copies fit easily.
pub const MAX_QUEUE_ENVELOPE: usize = 1 << 20;
/// How long a check waits when a submitter holds the job record's lease (at most `SUBMIT_LEASE_SECS`, 30 s).
const LEASED_RECORD_DELAY: Duration = Duration::from_secs(10);

fn unavailable(e: impl Into<anyhow::Error>, what: &'static str) -> FunctionError {
    FunctionError::unavailable(e.into().context(what))
}

pub(super) async fn invoke(State(state): State<Arc<AppState>>, request: Request) -> Response {
    // The request is taken whole: the `HeaderMap` extractor would copy every header.
    let (parts, body) = request.into_parts();
    let invocation_id = super::invocation_id(&parts.headers);
    let span = tracing::info_span!("QueueMonitor", invocation_id = %invocation_id);
    // Rendered inside the span too: a failure's log line is the one that most needs the invocation id.
    async move { run(state, invocation_id, body).await.into_response() }.instrument(span).await
}

async fn run(state: Arc<AppState>, invocation_id: &str, body: Body) -> Result<InvokeResponse> {
    let body = to_bytes(body, MAX_QUEUE_ENVELOPE)
        .await
        .map_err(|e| FunctionError::bad_envelope(anyhow::anyhow!("unreadable or oversized envelope: {e}")))?;
    let text = crate::protocol::queue_text(&body, TRIGGER_BINDING).map_err(FunctionError::bad_envelope)?;
    let work = match parse_work(&text, state.config.storage.blob_endpoint.as_str()) {
        Ok(w) => w,
        Err(reason) => {
            error!(reason = %reason, "refusing a queue message; it never reaches the batch API");
            Box::pin(poison(&state, invocation_id, &reason, None, &text)).await?;
            return Ok(InvokeResponse::log(format!("dead-lettered a queue message: {reason}")));
        }
    };
    match work {
        // Rare paths are boxed so that the hot one's future stays small (it is moved into a box per request).
        Work::Submit(m) => Box::pin(deferred_submission(&state, invocation_id, &m)).await,
        Work::Check(m) => check(&state, invocation_id, m, &text).await,
    }
}

async fn deferred_submission(state: &AppState, invocation_id: &str, m: &SubmitMessage) -> Result<InvokeResponse> {
    let s = Submission {
        function: "QueueMonitor",
        blob_url: &m.submit,
        blob: &m.blob,
        etag: &m.etag,
        invocation_id,
        deferrals: m.attempt,
        host_retries: false,
    };
    match submit(state, &s).await? {
        Submitted::Monitor { message, created } => {
            requeue(state, &message, Duration::ZERO).await?;
            let verb = if created { "created" } else { "monitoring existing" };
            Ok(InvokeResponse::log(format!("{verb} batch {} for {}", message.batch_id, m.blob)))
        }
        Submitted::Done(line) => Ok(InvokeResponse::log(line)),
    }
}

async fn check(state: &AppState, invocation_id: &str, message: MonitorMessage, text: &str) -> Result<InvokeResponse> {
    let key = message.record_key();
    // The record read here is reused for this check's one update (saves a read per check).
    let mut known = None;
    if let Some(key) = &key {
        // Storage futures are boxed here: inline, each would add its ~2 KB state to every check's future, which is
        // moved (copied) as a whole on each invocation.
        let read = Box::pin(state.records.read_with_lease(key)).await;
        let read = read.map_err(|e| unavailable(e, "reading the job record"))?;
        if read.as_ref().is_some_and(|(_, leased)| *leased) {
            // A submitter is writing the record, or died holding its lease (it expires within
            // `SUBMIT_LEASE_SECS`). Failing would spend the host's few retries in seconds and poison the job.
            let delay = LEASED_RECORD_DELAY;
            Box::pin(requeue(state, &message, delay)).await?;
            let line = format!(
                "the job record of {} is leased by a submitter; checking batch {} again in {} s",
                message.blob_or_dash(),
                message.batch_id,
                delay.as_secs()
            );
            info!(batch_id = %message.batch_id, "{line}");
            return Ok(InvokeResponse::log(line));
        }
        known = read.map(|(record, _)| record);
        if let Some(reason) = known.as_ref().and_then(|(r, _)| superseded(r, &message)) {
            info!(batch_id = %message.batch_id, attempt = message.attempt, "dropping a superseded check: {reason}");
            return Ok(InvokeResponse::log(format!("dropped a superseded check of {}: {reason}", message.batch_id)));
        }
    }
    match state.batch.retrieve(&message.batch_id).await {
        Ok(batch) if is_token_limit_failure(&batch) && key.is_some() => {
            Box::pin(resubmit(state, &message, known, &batch)).await
        }
        Ok(batch) if batch.status.is_terminal() => {
            Box::pin(record(state, &message, known, |r| {
                r.observe(&batch);
                r.state = RecordState::Ended;
                r.failures = 0;
                r.reason = None;
            }))
            .await?;
            let failures = Box::pin(crate::error_summary::first_failures(&state.storage, &batch)).await;
            Ok(report_end(&message, &batch, failures.as_deref()))
        }
        Ok(batch) => {
            let delay = state.config.retry_delay;
            let next = MonitorMessage { attempt: message.attempt + 1, failures: 0, ..message.clone() };
            Box::pin(requeue(state, &next, delay)).await?;
            Box::pin(record(state, &next, known, |r| {
                r.observe(&batch);
                r.failures = 0;
                r.reason = None;
            }))
            .await?;
            info!(batch_id = %message.batch_id, blob = %message.blob_or_dash(), status = %batch.status,
                check = next.attempt, next_check_secs = delay.as_secs(), "batch job still running");
            Ok(InvokeResponse::log(format!(
                "batch {} is {}; next check in {} s",
                batch.id,
                batch.status,
                delay.as_secs()
            )))
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {
            let reason = format!("the batch API does not know batch {}: {e}", message.batch_id);
            error!(batch_id = %message.batch_id, blob = %message.blob_or_dash(), error = %e, "unknown batch; dead-lettering");
            Box::pin(give_up(state, invocation_id, &message, known, &reason, text)).await
        }
        Err(e) => Box::pin(check_failed(state, invocation_id, &message, known, text, e)).await,
    }
}

/// Why the record shows this check superseded, if it does.
fn superseded(r: &JobRecord, m: &MonitorMessage) -> Option<String> {
    if r.batch_id.as_deref() != Some(m.batch_id.as_str()) {
        return Some(format!("the record follows batch {}", r.batch_id.as_deref().unwrap_or("none")));
    }
    if matches!(r.state, RecordState::Ended | RecordState::DeadLettered) {
        return Some(format!("the job is already {:?}", r.state));
    }
    (r.checks > m.attempt).then(|| format!("check {} was already followed by check {}", m.attempt, r.checks))
}

fn is_token_limit_failure(batch: &Batch) -> bool {
    batch.status == BatchStatus::Failed
        && batch.errors.iter().any(|e| {
            e.code.as_deref() == Some("token_limit_exceeded")
                || e.message.as_deref().is_some_and(|m| m.contains("token_limit_exceeded"))
        })
}

/// The job failed only because the enqueued-token quota was full: submit the blob again later, never poison it.
async fn resubmit(
    state: &AppState,
    message: &MonitorMessage,
    known: Option<Versioned>,
    batch: &Batch,
) -> Result<InvokeResponse> {
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
        return Ok(report_end(message, batch, None));
    };
    let config = &state.config;
    let delay = crate::functions::backoff(config.retry_delay, r.failures, config.backoff_cap, None);
    let s = Submission {
        function: "QueueMonitor",
        blob_url: &r.blob_url,
        blob: &r.blob,
        etag: &r.etag,
        invocation_id: "-",
        deferrals: r.failures,
        host_retries: false,
    };
    defer_message(state, &s, delay).await?;
    warn!(batch_id = %batch.id, blob = %r.blob, retry_in_secs = delay.as_secs(), "the token quota was full; the blob will be submitted again");
    Ok(InvokeResponse::log(format!("{reason}; submitting {} again in {} s", r.blob, delay.as_secs())))
}

/// A status check failed: re-check later with back-off, or dead-letter after too many consecutive failures.
async fn check_failed(
    state: &AppState,
    invocation_id: &str,
    message: &MonitorMessage,
    known: Option<Versioned>,
    text: &str,
    e: BatchError,
) -> Result<InvokeResponse> {
    let failures = message.failures + 1;
    let config = &state.config;
    if failures >= config.max_check_failures {
        let reason = format!("{failures} consecutive status checks of batch {} failed; last: {e}", message.batch_id);
        error!(batch_id = %message.batch_id, blob = %message.blob_or_dash(), error = %e, failures, "giving up on the batch job; dead-lettering");
        return give_up(state, invocation_id, message, known, &reason, text).await;
    }
    let mut delay = backoff(config.retry_delay, failures, config.backoff_cap, e.retry_after);
    if e.kind() == ErrorKind::Unauthorized {
        delay = delay.max(UNAUTHORIZED_MIN_DELAY);
    }
    let next = MonitorMessage { attempt: message.attempt + 1, failures, ..message.clone() };
    requeue(state, &next, delay).await?;
    let reason = e.to_string();
    record(state, &next, known, |r| {
        r.failures = failures;
        r.reason = Some(reason.clone());
    })
    .await?;
    warn!(batch_id = %message.batch_id, blob = %message.blob_or_dash(), error = %e, failures,
        next_check_secs = delay.as_secs(), "status check failed; will check again");
    Ok(InvokeResponse::log(format!(
        "status check of {} failed ({e}); retrying in {} s",
        message.batch_id,
        delay.as_secs()
    )))
}

/// The delay before re-check number `failures` (1-based): `base · 2^(failures-1)`, capped, but never shorter than
/// the server asked for (itself capped, since a 429 can ask for a day).
pub fn backoff(base: Duration, failures: u32, cap: Duration, server_hint: Option<Duration>) -> Duration {
    let factor = 1u32.checked_shl(failures.saturating_sub(1).min(20)).unwrap_or(u32::MAX);
    let exponential = base.saturating_mul(factor).min(cap);
    let hinted = server_hint.unwrap_or_default().min(cap);
    // Round up to whole seconds: the queue counts visibility in seconds.
    let d = exponential.max(hinted);
    Duration::from_secs(d.as_secs() + u64::from(d.subsec_nanos() > 0))
}

/// The final report of a job that reached a terminal status.
fn report_end(message: &MonitorMessage, batch: &Batch, failures: Option<&str>) -> InvokeResponse {
    use std::fmt::Write as _;
    let counts = batch.request_counts.clone().unwrap_or_default();
    // Sized once: the line is about 250 bytes with both blob URLs, and growing it would copy it several times.
    let mut line = String::with_capacity(384);
    let _ = write!(
        line,
        "batch {} for {} ended {}: requests {}; output_blob={}; error_blob={}",
        batch.id,
        message.blob_or_dash(),
        batch.status,
        counts,
        batch.output_blob().unwrap_or("none"),
        batch.error_blob().unwrap_or("none"),
    );
    for (i, e) in batch.errors.iter().enumerate() {
        let _ = write!(line, "{}{e}", if i == 0 { "; errors: " } else { "; " });
    }
    if let Some(failures) = failures {
        let _ = write!(line, "; {failures}");
    }
    let _ = write!(line, "; checks: {}", message.attempt + 1);
    // One line with every detail (the host keeps stdout lines as text; fields would repeat the line's content).
    if batch.status == BatchStatus::Completed && counts.failed.unwrap_or(0) == 0 {
        info!("{line}");
    } else {
        warn!("{line}");
    }
    InvokeResponse::log(line)
}

/// Puts the follow-up on the monitor queue, invisible for `delay`. A failure fails the invocation, so the host
/// redelivers the current message and the check is not lost.
async fn requeue(state: &AppState, next: &MonitorMessage, delay: Duration) -> Result<()> {
    state
        .storage
        .put_message(MONITOR_QUEUE, next.to_json().as_bytes(), state.config.message_encoding, delay)
        .await
        .map_err(|e| unavailable(e, "putting the follow-up check on the queue"))
}

/// Applies `change` to the job's record (if the message names one) and counts `message.attempt` as the newest check.
/// `known` is the version this invocation read first, if any.
async fn record(
    state: &AppState,
    message: &MonitorMessage,
    known: Option<Versioned>,
    mut change: impl FnMut(&mut JobRecord),
) -> Result<()> {
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
        .map_err(|e| unavailable(e, "updating the job record"))
}

/// Dead-letters the job's check and marks its record.
async fn give_up(
    state: &AppState,
    invocation_id: &str,
    message: &MonitorMessage,
    known: Option<Versioned>,
    reason: &str,
    text: &str,
) -> Result<InvokeResponse> {
    poison(state, invocation_id, reason, Some(&message.batch_id), text).await?;
    record(state, message, known, |r| {
        r.state = RecordState::DeadLettered;
        r.reason = Some(reason.to_string());
    })
    .await?;
    Ok(InvokeResponse::log(reason.to_string()))
}

async fn poison(state: &AppState, invocation_id: &str, reason: &str, batch_id: Option<&str>, text: &str) -> Result<()> {
    dead_letter(
        state,
        DeadLetter {
            function: "QueueMonitor",
            reason,
            code: None,
            batch_id,
            blob: None,
            message: Some(text),
            invocation_id,
            at: now(),
        },
    )
    .await
    .map_err(|e| unavailable(e, "dead-lettering the message"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_caps_and_honours_the_server() {
        let s = Duration::from_secs;
        assert_eq!(backoff(s(30), 1, s(3600), None), s(30));
        assert_eq!(backoff(s(30), 2, s(3600), None), s(60));
        assert_eq!(backoff(s(30), 5, s(3600), None), s(480));
        assert_eq!(backoff(s(30), 10, s(3600), None), s(3600));
        assert_eq!(backoff(s(30), 1000, s(3600), None), s(3600));
        assert_eq!(backoff(s(30), 1, s(3600), Some(s(90))), s(90));
        assert_eq!(backoff(s(30), 1, s(3600), Some(s(86_400))), s(3600));
        assert_eq!(backoff(s(1), 1, s(60), Some(Duration::from_millis(1500))), s(2));
    }

    #[test]
    fn superseded_checks() {
        let m = MonitorMessage { attempt: 3, ..MonitorMessage::new("b1".into(), Some("c/x".into())) };
        let mut r =
            JobRecord { batch_id: Some("b1".into()), state: RecordState::Submitted, checks: 3, ..Default::default() };
        assert_eq!(superseded(&r, &m), None);
        r.checks = 4;
        assert!(superseded(&r, &m).is_some());
        r.checks = 2;
        r.state = RecordState::Ended;
        assert!(superseded(&r, &m).is_some());
        r.state = RecordState::Submitted;
        r.batch_id = Some("b2".into());
        assert!(superseded(&r, &m).is_some());
    }

    fn test_state() -> Arc<AppState> {
        let settings = |k: &str| match k {
            "OPENAI_ENDPOINT" => Some("http://127.0.0.1:9".to_string()),
            "OPENAI_API_KEY" => Some("k".to_string()),
            "BATCH_OUTPUT_CONTAINER" => Some("batch-output".to_string()),
            "BlobStorageConnection" => Some("UseDevelopmentStorage=true".to_string()),
            _ => None,
        };
        let config =
            crate::config::Config::from_lookup(settings, crate::storage::MessageEncoding::Base64).expect("config");
        Arc::new(AppState::new(config).expect("state"))
    }

    /// Log lines written to a shared buffer, in the handler's own format.
    #[derive(Clone, Default)]
    struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("buffer").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The line that reports a failed invocation is the one that most needs the invocation id.
    #[tokio::test]
    async fn a_failed_invocation_is_logged_with_its_invocation_id() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .fmt_fields(crate::telemetry::fields())
            .with_writer(move || writer.clone())
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let request = axum::http::Request::builder()
            .header(crate::protocol::INVOCATION_ID_HEADER, "3f6c2d1e-0000-4000-8000-00000000abcd")
            .body(axum::body::Body::from("not an envelope"))
            .expect("request");
        let response = super::invoke(axum::extract::State(test_state()), request).await;
        assert_eq!(response.status(), axum::http::StatusCode::BAD_REQUEST);
        let logs = String::from_utf8(captured.0.lock().expect("buffer").clone()).expect("utf-8");
        let failure = logs.lines().find(|l| l.contains("invocation failed")).unwrap_or_else(|| panic!("{logs}"));
        assert!(failure.contains("QueueMonitor{invocation_id=3f6c2d1e-0000-4000-8000-00000000abcd}"), "{failure}");
    }

    fn size_of_future<F: std::future::Future>(f: F) -> usize {
        std::mem::size_of_val(&f)
    }

    /// The invocation future is moved into a box on every request; storage calls inline would double it (measured
    /// 7.2 KB before they were boxed, 3.7 KB after).
    #[test]
    fn the_invocation_future_stays_small() {
        let state = test_state();
        let request = axum::extract::Request::new(axum::body::Body::empty());
        let size = size_of_future(super::invoke(axum::extract::State(state), request));
        assert!(size < 5 * 1024, "QueueMonitor's future grew to {size} bytes; box the new rare or storage path");
    }
}
