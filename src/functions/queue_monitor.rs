//! `POST /QueueMonitor`: one message from `monitorjobs`, a status check or a deferred submission, handed to
//! [`jobs::handle_message`]. Follow-ups are put on the queue by the core with a delay, so the answer carries no
//! output binding, only the outcome's log line.

use std::sync::Arc;

use axum::body::{to_bytes, Body};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use tracing::field::Empty;
use tracing::Instrument;

use crate::error::{FunctionError, Result};
use crate::jobs;
use crate::protocol::{InvokeRequest, InvokeResponse};
use crate::AppState;

/// The trigger binding's name in `QueueMonitor/function.json`.
const TRIGGER_BINDING: &str = "job";
/// Largest envelope accepted: a 64 KiB message, its JSON re-encoding and the metadata copies fit easily.
pub const MAX_QUEUE_ENVELOPE: usize = 1 << 20;

pub(super) async fn invoke(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    let invocation_id = super::invocation_id(&headers);
    // The job core fills in the blob and its batch (`jobs::log_job`).
    let span = tracing::info_span!("QueueMonitor", invocation_id = %invocation_id, blob = Empty, batch_id = Empty);
    // Rendered inside the span too: a failure's log line is the one that most needs the invocation id.
    async move { run(&state, &invocation_id, body).await.into_response() }.instrument(span).await
}

async fn run(state: &AppState, invocation_id: &str, body: Body) -> Result<InvokeResponse> {
    let body = to_bytes(body, MAX_QUEUE_ENVELOPE)
        .await
        .map_err(|e| FunctionError::bad_envelope(anyhow::anyhow!("unreadable or oversized envelope: {e}")))?;
    let request = InvokeRequest::from_slice(&body).map_err(FunctionError::bad_envelope)?;
    let text = request.queue_text(TRIGGER_BINDING).map_err(FunctionError::bad_envelope)?;
    let outcome =
        jobs::handle_message(&state.jobs, &text, invocation_id).await.map_err(|e| FunctionError::unavailable(e.0))?;
    Ok(InvokeResponse::log(&outcome.line()))
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let mut headers = HeaderMap::new();
        headers
            .insert(crate::protocol::INVOCATION_ID_HEADER, "3f6c2d1e-0000-4000-8000-00000000abcd".parse().expect("id"));
        let response = super::invoke(State(test_state()), headers, Body::from("not an envelope")).await;
        assert_eq!(response.status(), axum::http::StatusCode::BAD_REQUEST);
        let logs = String::from_utf8(captured.0.lock().expect("buffer").clone()).expect("utf-8");
        let failure = logs.lines().find(|l| l.contains("invocation failed")).unwrap_or_else(|| panic!("{logs}"));
        assert!(failure.contains("QueueMonitor{invocation_id=3f6c2d1e-0000-4000-8000-00000000abcd}"), "{failure}");
    }
}
