//! Client for the Azure OpenAI Batch REST API (azure-openai-batch.md), both the dated and the v1 surface.
//!
//! [`BatchClient`] is concrete: the shared [`HttpClient`], the endpoint, the credential (the API key, or Entra ID
//! tokens from the app's managed identity) and the surface. Every call returns a
//! [`BatchError`] that classifies what the caller should do (retry soon, back off, give up) from the status, the
//! error code and the retry headers; the wire types live in [`model`].

mod error;
pub mod model;

use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use http::Method;
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use url::Url;

use crate::http_client::HttpClient;
use crate::identity::IdentitySettings;
use crate::identity::{ManagedIdentity, OPENAI_RESOURCE};

pub use error::{BatchError, ErrorKind};
pub use model::{Batch, BatchList, BatchStatus, RequestCounts};

/// How long one call may take before it counts as a transient failure.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// A create must end well within the submitter's lease on the job record (30 s).
pub const CREATE_TIMEOUT: Duration = Duration::from_secs(20);

/// How the handler proves itself to Azure OpenAI (azure-openai-batch.md §2).
#[derive(Clone, Debug)]
pub enum OpenAiAuth {
    /// `OPENAI_API_KEY`, sent as the `api-key` header.
    ApiKey(SecretString),
    /// No key set, and the platform provides a managed identity (`IDENTITY_ENDPOINT`, `IDENTITY_HEADER`): an Entra ID
    /// token for `https://cognitiveservices.azure.com`, sent as `Authorization: Bearer`.
    ManagedIdentity(IdentitySettings),
}

/// Which REST surface to call (`OPENAI_API_VERSION`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApiSurface {
    /// `/openai/batches?api-version=<version>`.
    Dated(String),
    /// `/openai/v1/batches`, no api-version.
    V1,
}

impl ApiSurface {
    /// `v1` (any case) selects the v1 surface; anything else is a dated version.
    pub fn parse(s: &str) -> Self {
        if s.trim().eq_ignore_ascii_case("v1") {
            ApiSurface::V1
        } else {
            ApiSurface::Dated(s.trim().to_string())
        }
    }
}

/// The blob-mode create request (azure-openai-batch.md §3). `metadata` is deliberately absent: blob mode rejects it.
#[derive(Debug, Serialize)]
pub struct CreateBatch<'a> {
    /// Sent as an explicit `null`, as both documented samples do.
    pub input_file_id: Option<&'a str>,
    pub endpoint: &'a str,
    pub completion_window: &'a str,
    pub input_blob: &'a str,
    pub output_folder: OutputFolder<'a>,
}

/// Where the service writes `results.jsonl` and `errors.jsonl`.
#[derive(Debug, Serialize)]
pub struct OutputFolder<'a> {
    pub url: &'a str,
}

/// A client for one Azure OpenAI resource.
#[derive(Clone)]
pub struct BatchClient {
    http: HttpClient,
    endpoint: Url,
    auth: Auth,
    surface: ApiSurface,
}

/// The credential as it is sent.
#[derive(Clone)]
enum Auth {
    /// The `api-key` header, built once and marked sensitive; `None` if the key cannot be a header value.
    Key(Option<HeaderValue>),
    /// `Authorization: Bearer`, from the managed identity's token cache.
    Identity(ManagedIdentity),
}

impl std::fmt::Debug for BatchClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchClient")
            .field("endpoint", &self.endpoint.as_str())
            .field(
                "auth",
                &match &self.auth {
                    Auth::Key(_) => "api-key [redacted]",
                    Auth::Identity(_) => "managed identity",
                },
            )
            .field("surface", &self.surface)
            .finish()
    }
}

impl BatchClient {
    /// `endpoint` is the resource root, e.g. `https://res.openai.azure.com` (a trailing `/` or `/openai` is tolerated).
    pub fn new(http: HttpClient, endpoint: Url, auth: OpenAiAuth, surface: ApiSurface) -> Self {
        let auth = match auth {
            OpenAiAuth::ApiKey(key) => Auth::Key(header_value(&key)),
            OpenAiAuth::ManagedIdentity(settings) => Auth::Identity(ManagedIdentity::new(&http, settings)),
        };
        BatchClient { http, endpoint, auth, surface }
    }

    /// `{endpoint}/openai[/v1]/batches[/segments…][?api-version=…]`, each segment percent-encoded.
    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.endpoint.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty();
            path.push("openai");
            if self.surface == ApiSurface::V1 {
                path.push("v1");
            }
            path.push("batches");
            path.extend(segments);
        }
        if let ApiSurface::Dated(version) = &self.surface {
            url.query_pairs_mut().append_pair("api-version", version);
        }
        url
    }

    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        url: Url,
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<T, BatchError> {
        let mut headers = HeaderMap::new();
        // A token fetch counts against the call's deadline: a create must still end within the submitter's lease.
        let timeout = match &self.auth {
            Auth::Key(key) => {
                let key = key
                    .clone()
                    .ok_or_else(|| BatchError::transport("OPENAI_API_KEY cannot be sent as a header value"))?;
                headers.insert("api-key", key);
                timeout
            }
            Auth::Identity(identity) => identity
                .authorize(OPENAI_RESOURCE, &mut headers, timeout)
                .await
                .map_err(|e| BatchError::no_token(&e))?,
        };
        let body = match body {
            Some(body) => {
                headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                Bytes::from(body)
            }
            None => Bytes::new(),
        };
        let response = self.http.send(method, url, headers, body, timeout).await.map_err(BatchError::from_transport)?;
        if !response.status.is_success() {
            return Err(BatchError::from_response(response.status, &response.headers, &response.body));
        }
        serde_json::from_slice(&response.body).map_err(|e| BatchError::malformed(response.status, &e.to_string()))
    }

    /// Creates a batch job.
    pub async fn create(&self, request: &CreateBatch<'_>) -> Result<Batch, BatchError> {
        let body = serde_json::to_vec(request).map_err(|e| BatchError::transport(&e.to_string()))?;
        self.call(Method::POST, self.url(&[]), Some(body), CREATE_TIMEOUT).await
    }

    /// Retrieves a batch job. `id` is percent-encoded into the path; callers validate it first anyway.
    pub async fn retrieve(&self, id: &str) -> Result<Batch, BatchError> {
        self.call(Method::GET, self.url(&[id]), None, REQUEST_TIMEOUT).await
    }

    /// Asks the service to cancel a batch job; it turns `cancelling`, then `cancelled` (up to 10 minutes later).
    pub async fn cancel(&self, id: &str) -> Result<Batch, BatchError> {
        self.call(Method::POST, self.url(&[id, "cancel"]), None, REQUEST_TIMEOUT).await
    }

    /// Lists batch jobs, newest first, `limit` per page, after the job id `after`. With `created`, asks for the jobs
    /// created in that window only: the dated surface takes an OData `$filter` on `created_at` (2025-04-01-preview,
    /// azure-openai-batch.md §1.1); v1 documents no filter, so there the window is not sent and the caller pages.
    pub async fn list(
        &self,
        after: Option<&str>,
        limit: u32,
        created: Option<&CreatedWindow>,
    ) -> Result<BatchList, BatchError> {
        let mut url = self.url(&[]);
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("limit", &limit.to_string());
            if let Some(after) = after {
                q.append_pair("after", after);
            }
        }
        if let Some(window) = created.filter(|_| self.filters_by_creation()) {
            // Spaces as %20, not form encoding's `+`, as the documented example asks.
            let encode =
                |v: &str| percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC).to_string();
            let query = format!(
                "{}&$filter={}&$orderby={}",
                url.query().unwrap_or_default(),
                encode(&window.odata_filter()),
                encode("created_at desc")
            );
            url.set_query(Some(&query));
        }
        self.call(Method::GET, url, None, REQUEST_TIMEOUT).await
    }

    /// Whether [`Self::list`] can ask the service for a creation window (the dated surface's `$filter`).
    pub fn filters_by_creation(&self) -> bool {
        matches!(self.surface, ApiSurface::Dated(_))
    }
}

/// Jobs created from `from` to `to` (Unix seconds, both included; `to: None` for "until now").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CreatedWindow {
    pub from: u64,
    pub to: Option<u64>,
}

impl CreatedWindow {
    /// Whether a job created at `created` (Unix seconds) is inside.
    pub fn contains(&self, created: u64) -> bool {
        created >= self.from && self.to.is_none_or(|to| created <= to)
    }

    /// The OData filter, with the operators of the documented example (`gt`, `lt`).
    fn odata_filter(&self) -> String {
        let from = format!("created_at gt {}", self.from.saturating_sub(1));
        match self.to {
            Some(to) => format!("{from} and created_at lt {}", to.saturating_add(1)),
            None => from,
        }
    }
}

/// A secret as a sensitive header value (kept out of hyper's and our Debug output); `None` if it cannot be one.
fn header_value(secret: &SecretString) -> Option<HeaderValue> {
    HeaderValue::from_str(secret.expose_secret()).ok().map(|mut value| {
        value.set_sensitive(true);
        value
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(endpoint: &str, surface: ApiSurface) -> BatchClient {
        BatchClient::new(
            HttpClient::new(1 << 20, &Default::default()).expect("client"),
            Url::parse(endpoint).expect("url"),
            OpenAiAuth::ApiKey(SecretString::from("k")),
            surface,
        )
    }

    #[test]
    fn urls_for_both_surfaces() {
        let dated = client("https://res.openai.azure.com/", ApiSurface::parse("2025-04-01-preview"));
        assert_eq!(
            dated.url(&["batch_1"]).as_str(),
            "https://res.openai.azure.com/openai/batches/batch_1?api-version=2025-04-01-preview"
        );
        let v1 = client("https://res.openai.azure.com", ApiSurface::parse("V1"));
        assert_eq!(v1.url(&["b", "cancel"]).as_str(), "https://res.openai.azure.com/openai/v1/batches/b/cancel");
        assert_eq!(v1.url(&[]).as_str(), "https://res.openai.azure.com/openai/v1/batches");
        assert!(dated.filters_by_creation() && !v1.filters_by_creation());
        assert_eq!(
            v1.url(&["batch_fe3f047a-de39.x~y"]).as_str(),
            "https://res.openai.azure.com/openai/v1/batches/batch_fe3f047a-de39.x~y",
            "unreserved characters stay as they are"
        );
        // Belt and braces: even an unvalidated id cannot leave its path segment.
        assert_eq!(v1.url(&["../x?y#z"]).as_str(), "https://res.openai.azure.com/openai/v1/batches/..%2Fx%3Fy%23z");
    }

    #[test]
    fn creation_windows_as_odata() {
        let closed = CreatedWindow { from: 1_000, to: Some(2_000) };
        assert_eq!(closed.odata_filter(), "created_at gt 999 and created_at lt 2001");
        assert!(closed.contains(1_000) && closed.contains(2_000) && !closed.contains(999) && !closed.contains(2_001));
        let open = CreatedWindow { from: 1_000, to: None };
        assert_eq!(open.odata_filter(), "created_at gt 999");
        assert!(open.contains(u64::MAX));
    }

    #[test]
    fn debug_hides_the_key() {
        let c = client("https://res.openai.azure.com", ApiSurface::V1);
        assert!(!format!("{c:?}").contains("\"k\""));
    }

    #[test]
    fn create_body_is_the_documented_blob_mode_shape() {
        let body = serde_json::to_value(CreateBatch {
            input_file_id: None,
            endpoint: "/chat/completions",
            completion_window: "24h",
            input_blob: "https://a.blob.core.windows.net/batch-input/x.jsonl",
            output_folder: OutputFolder { url: "https://a.blob.core.windows.net/batch-output" },
        })
        .expect("serializes");
        assert_eq!(
            body,
            serde_json::json!({"input_file_id": null, "endpoint": "/chat/completions", "completion_window": "24h",
                "input_blob": "https://a.blob.core.windows.net/batch-input/x.jsonl",
                "output_folder": {"url": "https://a.blob.core.windows.net/batch-output"}})
        );
    }
}
