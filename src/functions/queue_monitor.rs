//! `POST /QueueMonitor`: checks one batch job; re-checks later through a delayed message; reports the end.
//!
//! A running job is put back on `monitorjobs` with Put Message and `visibilitytimeout` (an output binding cannot
//! delay a message, and sleeping here is the flaw this app fixes), then the invocation returns 2xx with no output:
//! exactly one follow-up message per check. Failed checks back off exponentially through the same delayed message
//! instead of burning the host's five delivery attempts; messages that can never succeed are dead-lettered.

use std::time::Duration;

use axum::body::{to_bytes, Body};
use axum::extract::State;
use axum::http::HeaderMap;
use tracing::{error, info, warn};

use crate::batch_api::{Batch, BatchError, BatchStatus, ErrorKind};
use crate::dead_letter::{dead_letter, now, DeadLetter};
use crate::error::{FunctionError, Result};
use crate::message::{parse_monitor_message, MonitorMessage, MONITOR_QUEUE};
use crate::protocol::{InvokeRequest, InvokeResponse};
use crate::AppState;

/// The trigger binding's name in `QueueMonitor/function.json`.
const TRIGGER_BINDING: &str = "job";
/// Largest envelope accepted: a 64 KiB message, its JSON re-encoding and the metadata copies fit easily.
pub const MAX_QUEUE_ENVELOPE: usize = 1 << 20;
/// Shortest wait after a 401/403: long enough for an operator to fix a key or a role assignment.
const UNAUTHORIZED_MIN_DELAY: Duration = Duration::from_secs(300);

pub(super) async fn invoke(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<InvokeResponse> {
    let body = to_bytes(body, MAX_QUEUE_ENVELOPE).await.map_err(|e| {
        FunctionError::bad_envelope(anyhow::anyhow!("unreadable or oversized envelope: {e}"))
    })?;
    let request = InvokeRequest::from_slice(&body).map_err(FunctionError::bad_envelope)?;
    let text = request
        .queue_text(TRIGGER_BINDING)
        .map_err(FunctionError::bad_envelope)?;
    let invocation_id = super::invocation_id(&headers);

    let message = match parse_monitor_message(&text) {
        Ok(m) => m,
        Err(reason) => {
            error!(reason = %reason, "refusing a monitor message; it never reaches the batch API");
            poison(&state, &invocation_id, &reason, None, &text).await?;
            return Ok(InvokeResponse::log(format!(
                "dead-lettered a monitor message: {reason}"
            )));
        }
    };

    match state.batch.retrieve(&message.batch_id).await {
        Ok(batch) if batch.status.is_terminal() => Ok(report_end(&message, &batch)),
        Ok(batch) => {
            let next = MonitorMessage {
                attempt: message.attempt + 1,
                failures: 0,
                ..message.clone()
            };
            requeue(&state, &next, state.config.retry_delay).await?;
            info!(batch_id = %message.batch_id, blob = message.blob_or_dash(), status = %batch.status,
                check = next.attempt, next_check_secs = state.config.retry_delay.as_secs(), "batch job still running");
            Ok(InvokeResponse::log(format!(
                "batch {} is {}; next check in {} s",
                batch.id,
                batch.status,
                state.config.retry_delay.as_secs()
            )))
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {
            let reason = format!(
                "the batch API does not know batch {}: {e}",
                message.batch_id
            );
            error!(batch_id = %message.batch_id, blob = message.blob_or_dash(), error = %e, "unknown batch; dead-lettering");
            poison(
                &state,
                &invocation_id,
                &reason,
                Some(&message.batch_id),
                &text,
            )
            .await?;
            Ok(InvokeResponse::log(reason))
        }
        Err(e) => check_failed(&state, &invocation_id, &message, &text, e).await,
    }
}

/// A status check failed: re-check later with back-off, or dead-letter after too many consecutive failures.
async fn check_failed(
    state: &AppState,
    invocation_id: &str,
    message: &MonitorMessage,
    text: &str,
    e: BatchError,
) -> Result<InvokeResponse> {
    let failures = message.failures + 1;
    let config = &state.config;
    if failures >= config.max_check_failures {
        let reason = format!(
            "{failures} consecutive status checks of batch {} failed; last: {e}",
            message.batch_id
        );
        error!(batch_id = %message.batch_id, blob = message.blob_or_dash(), error = %e, failures, "giving up on the batch job; dead-lettering");
        poison(state, invocation_id, &reason, Some(&message.batch_id), text).await?;
        return Ok(InvokeResponse::log(reason));
    }
    let mut delay = backoff(
        config.retry_delay,
        failures,
        config.backoff_cap,
        e.retry_after,
    );
    if e.kind() == ErrorKind::Unauthorized {
        delay = delay
            .max(UNAUTHORIZED_MIN_DELAY)
            .min(config.backoff_cap.max(UNAUTHORIZED_MIN_DELAY));
    }
    let next = MonitorMessage {
        failures,
        ..message.clone()
    };
    requeue(state, &next, delay).await?;
    warn!(batch_id = %message.batch_id, blob = message.blob_or_dash(), error = %e, failures,
        next_check_secs = delay.as_secs(), "status check failed; will check again");
    Ok(InvokeResponse::log(format!(
        "status check of {} failed ({e}); retrying in {} s",
        message.batch_id,
        delay.as_secs()
    )))
}

/// The delay before re-check number `failures` (1-based): `base · 2^(failures-1)`, capped, but never shorter than
/// the server asked for (itself capped, since a 429 can ask for a day).
pub fn backoff(
    base: Duration,
    failures: u32,
    cap: Duration,
    server_hint: Option<Duration>,
) -> Duration {
    let factor = 1u32
        .checked_shl(failures.saturating_sub(1).min(20))
        .unwrap_or(u32::MAX);
    let exponential = base.saturating_mul(factor).min(cap);
    let hinted = server_hint.unwrap_or_default().min(cap);
    // Round up to whole seconds: the queue counts visibility in seconds.
    let d = exponential.max(hinted);
    Duration::from_secs(d.as_secs() + u64::from(d.subsec_nanos() > 0))
}

/// The final report of a job that reached a terminal status.
fn report_end(message: &MonitorMessage, batch: &Batch) -> InvokeResponse {
    let counts = batch.request_counts.clone().unwrap_or_default();
    let errors = batch
        .errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    let line = format!(
        "batch {} for {} ended {}: requests {}; output_blob={}; error_blob={}{}",
        batch.id,
        message.blob_or_dash(),
        batch.status,
        counts,
        batch.output_blob().unwrap_or("none"),
        batch.error_blob().unwrap_or("none"),
        if errors.is_empty() {
            String::new()
        } else {
            format!("; errors: {errors}")
        },
    );
    let clean = batch.status == BatchStatus::Completed && counts.failed.unwrap_or(0) == 0;
    if clean {
        info!(batch_id = %batch.id, blob = message.blob_or_dash(), status = %batch.status, checks = message.attempt + 1,
            output_blob = batch.output_blob().unwrap_or("none"), error_blob = batch.error_blob().unwrap_or("none"), "{line}");
    } else {
        warn!(batch_id = %batch.id, blob = message.blob_or_dash(), status = %batch.status, checks = message.attempt + 1,
            output_blob = batch.output_blob().unwrap_or("none"), error_blob = batch.error_blob().unwrap_or("none"),
            errors = %errors, "{line}");
    }
    InvokeResponse::log(line)
}

/// Puts the follow-up check on the monitor queue, invisible for `delay`. A failure fails the invocation, so the host
/// redelivers the current message and the check is not lost.
async fn requeue(state: &AppState, next: &MonitorMessage, delay: Duration) -> Result<()> {
    state
        .storage
        .put_message(
            MONITOR_QUEUE,
            next.to_json().as_bytes(),
            state.config.message_encoding,
            delay,
        )
        .await
        .map_err(|e| {
            FunctionError::unavailable(
                anyhow::Error::new(e).context("putting the follow-up check on the queue"),
            )
        })
}

async fn poison(
    state: &AppState,
    invocation_id: &str,
    reason: &str,
    batch_id: Option<&str>,
    text: &str,
) -> Result<()> {
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
    .map_err(|e| {
        FunctionError::unavailable(anyhow::Error::new(e).context("dead-lettering the message"))
    })
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
        assert_eq!(
            backoff(s(1), 1, s(60), Some(Duration::from_millis(1500))),
            s(2)
        );
    }
}
