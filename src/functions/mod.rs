//! The routes the Functions host calls: one module per function, plus `GET /` for the host's readiness probe.
//!
//! Every invocation runs inside an `invocation` span carrying the function name and the host's invocation id, so each
//! log line on stdout can be tied to its invocation even when the host drops the response's `Logs` (on non-2xx).

mod blob_monitor;
mod queue_monitor;

use std::time::Instant;

use axum::extract::{DefaultBodyLimit, Request};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use tracing::Instrument;

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
        .layer(middleware::from_fn(invocation_span))
        .with_state(state)
}

/// Wraps each invocation in a span and logs its end at debug level (the host logs its own outcome).
async fn invocation_span(request: Request, next: Next) -> Response {
    if request.uri().path() == "/" {
        return next.run(request).await;
    }
    let invocation_id = request
        .headers()
        .get(INVOCATION_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .chars()
        .take(64)
        .collect::<String>();
    let function = request.uri().path().trim_start_matches('/').chars().take(64).collect::<String>();
    let span = tracing::info_span!("invocation", function = %function, invocation_id = %invocation_id);
    let started = Instant::now();
    async move {
        let response = next.run(request).await;
        tracing::debug!(
            status = response.status().as_u16(),
            millis = started.elapsed().as_millis() as u64,
            "invocation finished"
        );
        response
    }
    .instrument(span)
    .await
}

/// The invocation id of the current request, for records (`-` when the host sent none).
fn invocation_id(headers: &axum::http::HeaderMap) -> String {
    headers
        .get(INVOCATION_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.chars().take(64).collect())
        .unwrap_or_else(|| "-".to_string())
}
