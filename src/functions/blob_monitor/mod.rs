//! `POST /BlobMonitor`: a new blob in `batch-input` becomes a batch job ([`jobs::new_blob`]), handed to QueueMonitor
//! through the `outQueue` output binding.
//!
//! The body is streamed through [`ElidingReader`], so the base64 blob content is never held: the batch service reads
//! the blob itself from `Metadata.Uri`. On its way past, the content is decoded and checked line by line unless
//! `BATCH_VALIDATE_INPUT` is off ([`check`]).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use serde_json::json;
use tracing::{info, warn, Instrument};
use url::Url;

use crate::error::{FunctionError, Result};
use crate::jobs::validate::Problem;
use crate::jobs::{self, NewBlob, Outcome};
use crate::protocol::blob_envelope::{ElidedValue, ElidingReader};
use crate::protocol::{EnvelopeError, InvokeRequest, InvokeResponse};
use crate::AppState;

mod check;

use check::{new_piece, Check, CHECK_PIECE, READ_PART};

/// The queue output binding's name in `BlobMonitor/function.json`.
const OUTPUT_BINDING: &str = "outQueue";
/// Largest envelope accepted. The host cannot build more than ~768 MiB of base64 (a .NET string limit).
pub const MAX_BLOB_ENVELOPE: u64 = 1 << 30;
/// Largest part of the envelope kept in memory: everything except the blob content.
const MAX_KEPT: usize = 4 << 20;

pub(super) async fn invoke(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    let invocation_id = super::invocation_id(&headers);
    let span = tracing::info_span!("BlobMonitor", invocation_id = %invocation_id);
    // Rendered inside the span too: a failure's log line is the one that most needs the invocation id.
    async move { run(&state, &invocation_id, body).await.into_response() }.instrument(span).await
}

async fn run(state: &AppState, invocation_id: &str, body: Body) -> Result<InvokeResponse> {
    let (request, elided, problems) =
        read_envelope(body, state.config.validate_input).await.map_err(FunctionError::bad_envelope)?;
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
    if problems.is_none() && content.len == 0 {
        warn!(blob = %url.path(), "the blob is empty; the batch service will fail the job with empty_file");
    } else if problems.is_none() && content.starts_with_bom() {
        warn!(blob = %url.path(), "the blob starts with a UTF-8 BOM; the batch service will fail the job with a misleading deployment-name error");
    }
    let blob = NewBlob { url: &url, name: request.metadata_str("name"), problems, invocation_id };
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

/// The envelope and, when validating, what validation found in the blob content (`None` when it was off or the
/// envelope carries no content).
type Envelope = (InvokeRequest, Vec<ElidedValue>, Option<Vec<Problem>>);

/// Streams the body through the eliding reader, bounded by [`MAX_BLOB_ENVELOPE`], validating the content on the way.
async fn read_envelope(mut body: Body, validate: bool) -> anyhow::Result<Envelope> {
    let mut reader = ElidingReader::new(MAX_KEPT);
    let mut check = validate.then(Check::start);
    let mut piece = new_piece();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| anyhow::anyhow!("reading the request body failed: {e}"))?;
        let Ok(data) = frame.into_data() else { continue };
        // In parts, so that a piece never outgrows its buffer ([`READ_PART`]).
        for part in data.chunks(READ_PART) {
            reader.feed_with(part, &mut |raw| {
                if check.is_some() {
                    piece.extend_from_slice(raw);
                }
            })?;
            if reader.total() > MAX_BLOB_ENVELOPE {
                anyhow::bail!("the envelope is larger than {MAX_BLOB_ENVELOPE} bytes");
            }
            if let Some(check) = check.as_mut().filter(|_| piece.len() >= CHECK_PIECE) {
                let next = check.spare();
                check.send(std::mem::replace(&mut piece, next)).await;
            }
        }
    }
    let (request, elided) = reader.finish()?;
    let problems = match check {
        Some(mut check) => {
            check.send(piece).await;
            let problems = check.finish().await?;
            // Without a content string there was nothing to check.
            (!elided.is_empty()).then_some(problems)
        }
        None => None,
    };
    Ok((request, elided, problems))
}
