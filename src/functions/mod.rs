//! The routes the Functions host calls: one module per function, plus `GET /` for the host's readiness probe.
//!
//! Every invocation runs inside an `invocation` span carrying the function name and the host's invocation id, so each
//! log line on stdout can be tied to its invocation even when the host drops the response's `Logs` (on non-2xx).

mod blob_monitor;
mod queue_monitor;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;

use crate::protocol::INVOCATION_ID_HEADER;
use crate::AppState;

pub use blob_monitor::{account_root, MAX_BLOB_ENVELOPE};
pub use queue_monitor::{backoff, MAX_QUEUE_ENVELOPE};

/// Builds the router.
pub fn router(state: AppState) -> Router {
    Router::new()
        // The blob route streams its body itself and enforces its own bounds.
        .route("/BlobMonitor", post(blob_monitor::invoke).layer(DefaultBodyLimit::disable()))
        .route("/QueueMonitor", post(queue_monitor::invoke))
        // The host polls this every 25 ms until any answer arrives; answer at once, with no work.
        .route("/", get(|| async { "ok" }))
        // One Arc for all invocations: cloning the state per request would copy URLs and secrets.
        .with_state(std::sync::Arc::new(state))
}

/// The span every log line of an invocation carries: the function and the host's invocation id. Created in each
/// handler rather than by a middleware layer, which would box every request's future (measured: ~13 % of the
/// QueueMonitor hot path, docs/performance.md).
fn invocation_span(function: &'static str, headers: &axum::http::HeaderMap) -> tracing::Span {
    tracing::info_span!("invocation", function = %function, invocation_id = %invocation_id(headers))
}

/// The host's invocation id for logs and records, at most 64 bytes (`-` when the host sent none). Borrowed: a
/// header value that passes `to_str` is visible ASCII, so any byte offset is a character boundary.
fn invocation_id(headers: &axum::http::HeaderMap) -> &str {
    let id = headers.get(INVOCATION_ID_HEADER).and_then(|v| v.to_str().ok()).unwrap_or("-");
    &id[..id.len().min(64)]
}
