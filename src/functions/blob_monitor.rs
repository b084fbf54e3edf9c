//! `POST /BlobMonitor`: a new blob in `batch-input` becomes a batch job, handed to QueueMonitor through the
//! `outQueue` output binding.
//!
//! The body is streamed through [`ElidingReader`], so the base64 blob content is never held: the batch service reads
//! the blob itself from `Metadata.Uri`. Create failures are classified: transient ones fail the invocation (the host
//! retries, then poisons the blob), permanent ones are logged with the API's code and dead-lettered.

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use http_body_util::BodyExt;
use serde_json::json;
use tracing::{error, info, warn};
use url::Url;

use crate::batch_api::{CreateBatch, ErrorKind, OutputFolder};
use crate::dead_letter::{dead_letter, now, DeadLetter};
use crate::error::{FunctionError, Result};
use crate::message::MonitorMessage;
use crate::protocol::blob_envelope::ElidingReader;
use crate::protocol::{EnvelopeError, InvokeResponse};
use crate::AppState;

/// The queue output binding's name in `BlobMonitor/function.json`.
const OUTPUT_BINDING: &str = "outQueue";
/// Largest envelope accepted. The host cannot build more than ~768 MiB of base64 (a .NET string limit).
pub const MAX_BLOB_ENVELOPE: u64 = 1 << 30;
/// Largest part of the envelope kept in memory: everything except the blob content.
const MAX_KEPT: usize = 4 << 20;
/// The only completion window blob mode accepts.
const COMPLETION_WINDOW: &str = "24h";
/// The endpoint sent on create; the service reads the file to choose between chat completions and responses.
const BATCH_ENDPOINT: &str = "/chat/completions";

pub(super) async fn invoke(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<InvokeResponse> {
    let (request, elided) = read_envelope(body)
        .await
        .map_err(FunctionError::bad_envelope)?;
    let uri = request
        .metadata_str("Uri")
        .ok_or(FunctionError::bad_envelope(EnvelopeError::MissingMetadata(
            "Uri",
        )))?;
    let blob_url = Url::parse(&uri)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https"))
        .ok_or_else(|| {
            FunctionError::bad_envelope(anyhow::anyhow!("metadata `Uri` is not an http(s) URL"))
        })?;
    let root = account_root(&blob_url, &state.config.storage.blob_endpoint);
    let blob = blob_url
        .as_str()
        .strip_prefix(root.as_str())
        .unwrap_or(blob_url.path())
        .trim_start_matches('/');
    let blob = percent_encoding::percent_decode_str(blob)
        .decode_utf8_lossy()
        .into_owned();
    let output_folder = format!(
        "{}/{}",
        root.as_str().trim_end_matches('/'),
        state.config.output_container
    );

    let size = elided.first().map(|e| e.approx_decoded_len());
    info!(blob = %blob, bytes = size, output_folder = %output_folder, "new blob: creating a batch job");
    if let Some(content) = elided.first() {
        if content.len == 0 {
            warn!(blob = %blob, "the blob is empty; the batch service will fail the job with empty_file");
        } else if content.starts_with_bom() {
            warn!(blob = %blob, "the blob starts with a UTF-8 BOM; the batch service will fail the job with a misleading deployment-name error");
        }
    }

    let create = CreateBatch {
        input_file_id: None,
        endpoint: BATCH_ENDPOINT,
        completion_window: COMPLETION_WINDOW,
        input_blob: blob_url.as_str(),
        output_folder: OutputFolder {
            url: &output_folder,
        },
    };
    match state.batch.create(&create).await {
        Ok(batch) => {
            info!(blob = %blob, batch_id = %batch.id, status = %batch.status, "created batch job; handing it to QueueMonitor");
            let message = MonitorMessage::new(batch.id.clone(), Some(blob.clone()));
            Ok(
                InvokeResponse::log(format!("created batch {} for {blob}", batch.id))
                    .with_output(OUTPUT_BINDING, json!(message)),
            )
        }
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::Transient | ErrorKind::Throttled | ErrorKind::TokenLimit
            ) =>
        {
            warn!(blob = %blob, error = %e, "batch job not created yet (transient); failing so the host retries");
            Err(FunctionError::unavailable(e))
        }
        Err(e) => {
            error!(blob = %blob, status = e.status.map(|s| s.as_u16()), code = e.code.as_deref().unwrap_or("-"),
                message = %e.message, "the batch API refused the job; dead-lettering the blob");
            let reason = format!("the batch API refused to create a job: {e}");
            let invocation_id = super::invocation_id(&headers);
            dead_letter(
                &state,
                DeadLetter {
                    function: "BlobMonitor",
                    reason: &reason,
                    code: e.code.as_deref(),
                    batch_id: None,
                    blob: Some(blob_url.as_str()),
                    message: None,
                    invocation_id: &invocation_id,
                    at: now(),
                },
            )
            .await
            .map_err(FunctionError::unavailable)?;
            Ok(InvokeResponse::log(format!(
                "no batch job for {blob}: {reason}"
            )))
        }
    }
}

/// Streams the body through the eliding reader, bounded by [`MAX_BLOB_ENVELOPE`].
async fn read_envelope(
    mut body: Body,
) -> anyhow::Result<(
    crate::protocol::InvokeRequest,
    Vec<crate::protocol::blob_envelope::ElidedValue>,
)> {
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
    let path_style = host.eq_ignore_ascii_case("localhost")
        || blob_url
            .host()
            .is_some_and(|h| !matches!(h, url::Host::Domain(_)));
    let first = blob_url
        .path_segments()
        .and_then(|mut s| s.next())
        .unwrap_or("");
    root.set_path(if path_style { first } else { "" });
    root
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root(blob: &str, endpoint: &str) -> String {
        let u = account_root(
            &Url::parse(blob).expect("blob"),
            &Url::parse(endpoint).expect("endpoint"),
        );
        u.as_str().trim_end_matches('/').to_string()
    }

    #[test]
    fn output_folder_roots() {
        // Host-style, under the configured endpoint or not.
        assert_eq!(
            root(
                "https://acct.blob.core.windows.net/batch-input/job1.jsonl",
                "https://acct.blob.core.windows.net"
            ),
            "https://acct.blob.core.windows.net"
        );
        assert_eq!(
            root(
                "https://other.blob.core.windows.net/batch-input/a/b.jsonl",
                "https://acct.blob.core.windows.net"
            ),
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
            root(
                "http://127.0.0.1:45729/t01/batch-input/dir/x.jsonl",
                "http://127.0.0.1:10000/devstoreaccount1"
            ),
            "http://127.0.0.1:45729/t01"
        );
        assert_eq!(
            root(
                "http://localhost:10000/devstoreaccount1/batch-input/x",
                "https://acct.blob.core.windows.net"
            ),
            "http://localhost:10000/devstoreaccount1"
        );
        // A custom host under a path-style endpoint (e.g. Azurite behind a name) is recognised by the endpoint.
        assert_eq!(
            root(
                "http://azurite:10000/devstoreaccount1/batch-input/x",
                "http://azurite:10000/devstoreaccount1/"
            ),
            "http://azurite:10000/devstoreaccount1"
        );
    }
}
