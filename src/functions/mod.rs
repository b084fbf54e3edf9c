//! The routes the Functions host calls: one module per function (`Jobs`, an HTTP trigger, gets the client's own
//! request under `/api/jobs`), plus `GET /` for the host's readiness probe.
//!
//! Every invocation runs inside a span named after its function and carrying the host's invocation id
//! (`QueueMonitor{invocation_id=…}`), so each log line on stdout can be tied to its invocation even when the host drops
//! the response's `Logs` (on non-2xx). Each handler opens its span itself, so the span carries the function's name.
//! The lifecycle lives in [`crate::jobs`]; these modules only adapt envelopes to it and outcomes to answers.

mod blob_monitor;
mod jobs_page;
mod queue_monitor;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;

use crate::protocol::INVOCATION_ID_HEADER;
use crate::AppState;

pub use crate::content_check::MAX_BLOB_ENVELOPE;
pub use queue_monitor::MAX_QUEUE_ENVELOPE;

/// Builds the router.
pub fn router(state: AppState) -> Router {
    Router::new()
        // The blob route streams its body itself and enforces its own bounds.
        .route("/BlobMonitor", post(blob_monitor::invoke).layer(DefaultBodyLimit::disable()))
        .route("/QueueMonitor", post(queue_monitor::invoke))
        .merge(jobs_page::routes())
        // The host polls this every 25 ms until any answer arrives; answer at once, with no work.
        .route("/", get(|| async { "ok" }))
        // One Arc for all invocations: cloning the state per request would copy URLs and secrets.
        .with_state(std::sync::Arc::new(state))
}

/// The host's invocation id for logs and records, at most 64 characters (`-` when the host sent none).
fn invocation_id(headers: &axum::http::HeaderMap) -> String {
    let id = headers.get(INVOCATION_ID_HEADER).and_then(|v| v.to_str().ok()).unwrap_or("-");
    id.chars().take(64).collect()
}
