//! `POST /BlobMonitor`: a new blob in `batch-input` becomes a batch job ([`jobs::new_blob`]), handed to QueueMonitor
//! through the `outQueue` output binding.
//!
//! The body is streamed ([`content_check::read_envelope`]), so the base64 blob content is never held: the batch
//! service reads the blob itself from `Metadata.Uri`. On its way past, the content is decoded and checked line by line
//! unless `BATCH_VALIDATE_INPUT` is off.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tracing::field::Empty;
use tracing::{info, warn, Instrument};
use url::Url;

use crate::content_check;
use crate::error::{FunctionError, Result};
use crate::jobs::{self, NewBlob, Outcome};
use crate::protocol::{EnvelopeError, InvokeResponse};
use crate::AppState;

/// The queue output binding's name in `BlobMonitor/function.json`.
const OUTPUT_BINDING: &str = "outQueue";

pub(super) async fn invoke(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    let invocation_id = super::invocation_id(&headers);
    // The job core fills in the blob and its batch (`jobs::log_job`).
    let span = tracing::info_span!("BlobMonitor", invocation_id = %invocation_id, blob = Empty, batch_id = Empty);
    // Rendered inside the span too: a failure's log line is the one that most needs the invocation id.
    async move { run(&state, &invocation_id, body).await.into_response() }.instrument(span).await
}

async fn run(state: &AppState, invocation_id: &str, body: Body) -> Result<InvokeResponse> {
    let limits = state.config.validate_input.then(|| state.config.limits.clone());
    let (request, elided, checked) =
        content_check::read_envelope(body, limits).await.map_err(FunctionError::bad_envelope)?;
    let uri = request.metadata_str("Uri").ok_or(FunctionError::bad_envelope(EnvelopeError::MissingMetadata("Uri")))?;
    let url = Url::parse(&uri)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https"))
        .ok_or_else(|| FunctionError::bad_envelope(anyhow::anyhow!("metadata `Uri` is not an http(s) URL")))?;
    // The blob trigger always sends the content; without it nothing was checked, so nothing is submitted.
    let content = elided.first().ok_or_else(|| {
        FunctionError::bad_envelope(anyhow::anyhow!("the envelope carries no blob content under `Data`"))
    })?;
    info!(blob = %url.path(), bytes = content.approx_decoded_len(), "new blob");
    if checked.is_none() && content.len == 0 {
        warn!(blob = %url.path(), "the blob is empty; the batch service will fail the job with empty_file");
    } else if checked.is_none() && content.starts_with_bom() {
        warn!(blob = %url.path(), "the blob starts with a UTF-8 BOM; the batch service will fail the job with a misleading deployment-name error");
    }
    let blob = NewBlob { url: &url, name: request.metadata_str("name"), checked, invocation_id };
    let outcome = jobs::new_blob(&state.jobs, blob).await.map_err(|e| FunctionError::unavailable(e.0))?;
    let response = InvokeResponse::log(&outcome.line());
    Ok(match outcome {
        Outcome::HandOver { message, .. } => {
            info!(batch_id = %message.batch_id, "handing the job to QueueMonitor");
            response.with_output(OUTPUT_BINDING, json!(message))
        }
        _ => response,
    })
}
