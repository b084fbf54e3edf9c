//! `POST /BlobMonitor`: a new blob in `batch-input` becomes a batch job, handed to QueueMonitor through the
//! `outQueue` output binding.
//!
//! The body is streamed through [`ElidingReader`], so the base64 blob content is never held: the batch service reads
//! the blob itself from `Metadata.Uri`. The blob version (URL + current ETag) goes to [`crate::submission`], which
//! creates its job exactly once, defers it, or dead-letters it.

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use serde_json::json;
use tracing::{info, warn, Instrument};
use url::Url;

use crate::dead_letter::{dead_letter, now, DeadLetter};
use crate::error::{FunctionError, Result};
use crate::protocol::blob_envelope::{ElidedValue, ElidingReader};
use crate::protocol::{EnvelopeError, InvokeRequest, InvokeResponse};
use crate::storage::blob::unquote_etag;
use crate::submission::{submit, Submission, Submitted};
use crate::AppState;
use std::sync::Arc;

/// The queue output binding's name in `BlobMonitor/function.json`.
const OUTPUT_BINDING: &str = "outQueue";
/// Largest envelope accepted. The host cannot build more than ~768 MiB of base64 (a .NET string limit).
pub const MAX_BLOB_ENVELOPE: u64 = 1 << 30;
/// Largest part of the envelope kept in memory: everything except the blob content.
const MAX_KEPT: usize = 4 << 20;

pub(super) async fn invoke(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    let span = tracing::info_span!("BlobMonitor", invocation_id = %super::invocation_id(&headers));
    // Rendered inside the span too: a failure's log line is the one that most needs the invocation id.
    async move { run(state, headers, body).await.into_response() }.instrument(span).await
}

async fn run(state: Arc<AppState>, headers: HeaderMap, body: Body) -> Result<InvokeResponse> {
    let (request, elided) = read_envelope(body).await.map_err(FunctionError::bad_envelope)?;
    let uri = request.metadata_str("Uri").ok_or(FunctionError::bad_envelope(EnvelopeError::MissingMetadata("Uri")))?;
    let blob_url = Url::parse(&uri)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https"))
        .ok_or_else(|| FunctionError::bad_envelope(anyhow::anyhow!("metadata `Uri` is not an http(s) URL")))?;
    let root = account_root(&blob_url, &state.config.storage.blob_endpoint);
    let blob = blob_url.as_str().strip_prefix(root.as_str()).unwrap_or(blob_url.path()).trim_start_matches('/');
    let blob = percent_encoding::percent_decode_str(blob).decode_utf8_lossy().into_owned();
    let invocation_id = super::invocation_id(&headers);

    let size = elided.first().map(ElidedValue::approx_decoded_len);
    info!(blob = %blob, bytes = size, "new blob");
    if let Some(content) = elided.first() {
        if content.len == 0 {
            warn!(blob = %blob, "the blob is empty; the batch service will fail the job with empty_file");
        } else if content.starts_with_bom() {
            warn!(blob = %blob, "the blob starts with a UTF-8 BOM; the batch service will fail the job with a misleading deployment-name error");
        }
    }

    let Some(etag) = current_etag(&state, &request, blob_url.as_str()).await? else {
        let reason = "the blob was deleted before a job could be created for it";
        warn!(blob = %blob, "{reason}");
        dead_letter(
            &state,
            DeadLetter {
                function: "BlobMonitor",
                reason,
                code: None,
                batch_id: None,
                blob: Some(blob_url.as_str()),
                message: None,
                invocation_id,
                at: now(),
            },
        )
        .await
        .map_err(FunctionError::unavailable)?;
        return Ok(InvokeResponse::log(format!("no batch job for {blob}: {reason}")));
    };

    let submission = Submission {
        function: "BlobMonitor",
        blob_url: blob_url.as_str(),
        blob: &blob,
        etag: &etag,
        invocation_id,
        deferrals: 0,
        host_retries: true,
    };
    match submit(&state, &submission).await? {
        Submitted::Monitor { message, created } => {
            info!(blob = %blob, batch_id = %message.batch_id, "handing the job to QueueMonitor");
            let verb = if created { "created" } else { "monitoring existing" };
            Ok(InvokeResponse::log(format!("{verb} batch {} for {blob}", message.batch_id))
                .with_output(OUTPUT_BINDING, json!(message)))
        }
        Submitted::Done(line) => Ok(InvokeResponse::log(line)),
    }
}

/// The blob's current ETag (unquoted): from storage when the blob is in this app's account (the trigger metadata's
/// `Properties` shape is not documented), else from `Properties.ETag`. `None`: the blob no longer exists.
async fn current_etag(state: &AppState, request: &InvokeRequest, url: &str) -> Result<Option<String>> {
    if let Some((container, name)) = state.storage.split_blob_url(url) {
        let head = state.storage.head_blob(&container, &name).await.map_err(FunctionError::unavailable)?;
        return Ok(head.map(|(etag, _)| unquote_etag(&etag).to_string()));
    }
    let from_properties = request
        .metadata
        .get("Properties")
        .and_then(|p| p.get("ETag"))
        .and_then(serde_json::Value::as_str)
        .map(|e| unquote_etag(&crate::protocol::unquote(e)).to_string());
    from_properties.map(Some).ok_or_else(|| {
        FunctionError::bad_envelope(anyhow::anyhow!(
            "the blob {url} is not in the BlobStorageConnection account and the envelope carries no ETag"
        ))
    })
}

/// Streams the body through the eliding reader, bounded by [`MAX_BLOB_ENVELOPE`].
async fn read_envelope(
    mut body: Body,
) -> anyhow::Result<(crate::protocol::InvokeRequest, Vec<crate::protocol::blob_envelope::ElidedValue>)> {
    let mut reader = ElidingReader::new(MAX_KEPT);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| anyhow::anyhow!("reading the request body failed: {e}"))?;
        if let Ok(data) = frame.into_data() {
            reader.feed(&data)?;
            if reader.total() > MAX_BLOB_ENVELOPE {
                anyhow::bail!("the envelope is larger than {MAX_BLOB_ENVELOPE} bytes");
            }
        }
    }
    Ok(reader.finish()?)
}

/// The root URL of the storage account holding `blob_url`, without a trailing `/`.
///
/// The connection string's blob endpoint is the reliable answer when the URL lies under it. Otherwise: path-style
/// URLs (an IP address or `localhost`, as Azurite uses) carry the account as the first path segment; host-style URLs
/// (`acct.blob.core.windows.net`) have it in the host.
pub fn account_root(blob_url: &Url, blob_endpoint: &Url) -> Url {
    let endpoint = blob_endpoint.as_str().trim_end_matches('/');
    if blob_url.as_str().starts_with(&format!("{endpoint}/")) {
        if let Ok(u) = Url::parse(endpoint) {
            return u;
        }
    }
    let mut root = blob_url.clone();
    root.set_query(None);
    root.set_fragment(None);
    let host = blob_url.host_str().unwrap_or("");
    let path_style =
        host.eq_ignore_ascii_case("localhost") || blob_url.host().is_some_and(|h| !matches!(h, url::Host::Domain(_)));
    let first = blob_url.path_segments().and_then(|mut s| s.next()).unwrap_or("");
    root.set_path(if path_style { first } else { "" });
    root
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root(blob: &str, endpoint: &str) -> String {
        let u = account_root(&Url::parse(blob).expect("blob"), &Url::parse(endpoint).expect("endpoint"));
        u.as_str().trim_end_matches('/').to_string()
    }

    #[test]
    fn output_folder_roots() {
        // Host-style, under the configured endpoint or not.
        assert_eq!(
            root("https://acct.blob.core.windows.net/batch-input/job1.jsonl", "https://acct.blob.core.windows.net"),
            "https://acct.blob.core.windows.net"
        );
        assert_eq!(
            root("https://other.blob.core.windows.net/batch-input/a/b.jsonl", "https://acct.blob.core.windows.net"),
            "https://other.blob.core.windows.net"
        );
        // Path-style Azurite: the account is the first segment.
        assert_eq!(
            root(
                "http://127.0.0.1:10000/devstoreaccount1/batch-input/job1.jsonl",
                "http://127.0.0.1:10000/devstoreaccount1"
            ),
            "http://127.0.0.1:10000/devstoreaccount1"
        );
        assert_eq!(
            root("http://127.0.0.1:45729/t01/batch-input/dir/x.jsonl", "http://127.0.0.1:10000/devstoreaccount1"),
            "http://127.0.0.1:45729/t01"
        );
        assert_eq!(
            root("http://localhost:10000/devstoreaccount1/batch-input/x", "https://acct.blob.core.windows.net"),
            "http://localhost:10000/devstoreaccount1"
        );
        // A custom host under a path-style endpoint (e.g. Azurite behind a name) is recognised by the endpoint.
        assert_eq!(
            root("http://azurite:10000/devstoreaccount1/batch-input/x", "http://azurite:10000/devstoreaccount1/"),
            "http://azurite:10000/devstoreaccount1"
        );
    }
}
