//! A small Blob and Queue Storage REST client (azure-storage-rest.md §10 explains why it is hand-written).
//!
//! [`StorageClient`] holds the shared [`HttpClient`] and one [`StorageAccount`]; `queue.rs` and `blob.rs` add the operations.
//! Every request carries a pinned `x-ms-version` and is signed last, from its final headers ([`shared_key`]), gets
//! the SAS token appended, or carries a managed identity's bearer token. Errors never carry the request URL, which may hold a SAS signature.

pub mod blob;
pub mod block;
pub mod connection;
pub mod queue;
pub mod shared_key;

use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_LENGTH};
use http::{Method, StatusCode};
use url::Url;

use crate::http_client::{HttpClient, Response, TransportError};
use crate::identity::{IdentityError, ManagedIdentity, STORAGE_RESOURCE};

pub use connection::{ConnectionStringError, Credential, StorageAccount};
pub use queue::MessageEncoding;

/// The newest service version Azurite 3.35 accepts; Azure accepts it too (azure-storage-rest.md §2).
pub const API_VERSION: &str = "2025-11-05";

/// Upper bound on one storage call, so a hung connection cannot hold an invocation until `functionTimeout`.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A failed storage call.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The service answered with an error status; `code` is `x-ms-error-code` (e.g. `QueueNotFound`).
    #[error("storage answered {status} {code}")]
    Status { status: StatusCode, code: String },
    /// No usable answer: connection refused, timeout, reset. Always worth retrying.
    #[error("storage request failed: {0}")]
    Transport(TransportError),
    /// The answer could not be read.
    #[error("storage response could not be parsed: {0}")]
    Parse(String),
    /// No token from the managed identity, so no request was sent.
    #[error("no Entra ID token for Storage from the managed identity: {0}")]
    Identity(IdentityError),
}

impl StorageError {
    /// The `x-ms-error-code`, if the service sent one.
    pub fn code(&self) -> Option<&str> {
        match self {
            StorageError::Status { code, .. } => Some(code),
            _ => None,
        }
    }

    /// The HTTP status, if the service answered.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            StorageError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A client for one storage account's Blob and Queue services.
#[derive(Clone, Debug)]
pub struct StorageClient {
    http: HttpClient,
    account: StorageAccount,
    /// The token source of an identity-based account.
    identity: Option<ManagedIdentity>,
}

impl StorageClient {
    /// Wraps the shared client (connection pools are per client, so share one per process).
    pub fn new(http: HttpClient, account: StorageAccount) -> Self {
        let identity = match &account.credential {
            Credential::ManagedIdentity(settings) => Some(ManagedIdentity::new(&http, settings.clone())),
            _ => None,
        };
        StorageClient { http, account, identity }
    }

    /// The account this client talks to.
    pub fn account(&self) -> &StorageAccount {
        &self.account
    }

    /// `endpoint` + `/`-separated `path` (each segment percent-encoded, `/` kept as the separator).
    pub(crate) fn url(endpoint: &Url, path: &str) -> Url {
        let mut url = endpoint.clone();
        if let Ok(mut segs) = url.path_segments_mut() {
            segs.pop_if_empty().extend(path.split('/'));
        }
        url
    }

    /// Sends one request: adds the version and date headers and the credential, then maps error statuses. Every
    /// operation is built on this; the tools build the ones the handler never calls (devstack's `storage_ops`) on it
    /// too, so they sign, authenticate and retry as the handler does.
    pub async fn send(
        &self,
        method: Method,
        mut url: Url,
        mut headers: HeaderMap,
        body: Bytes,
    ) -> Result<Response, StorageError> {
        if let Some(sas) = self.account.credential.sas_query() {
            let query = match url.query() {
                Some(q) if !q.is_empty() => format!("{q}&{sas}"),
                _ => sas.to_string(),
            };
            url.set_query(Some(&query));
        }
        headers.insert("x-ms-version", HeaderValue::from_static(API_VERSION));
        let date = httpdate::fmt_http_date(std::time::SystemTime::now());
        headers.insert("x-ms-date", HeaderValue::from_str(&date).map_err(|e| StorageError::Parse(e.to_string()))?);
        headers.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
        if let Credential::SharedKey { account, key } = &self.account.credential {
            let sts = shared_key::string_to_sign(method.as_str(), &url, &headers, body.len(), account);
            let auth = format!("SharedKey {account}:{}", shared_key::sign(key, &sts));
            headers
                .insert(AUTHORIZATION, HeaderValue::from_str(&auth).map_err(|e| StorageError::Parse(e.to_string()))?);
        }
        let timeout = match &self.identity {
            Some(identity) => identity
                .authorize(STORAGE_RESOURCE, &mut headers, REQUEST_TIMEOUT)
                .await
                .map_err(StorageError::Identity)?,
            None => REQUEST_TIMEOUT,
        };
        let attempt = || self.http.send(method.clone(), url.clone(), headers.clone(), body.clone(), timeout);
        // One retry when the request never got an answer (refused, reset, closed before the answer began). Every
        // caller tolerates a repeated write (create-only puts answer 409, duplicate messages are de-duplicated by the
        // job record), as the Azure SDKs' own retries require too.
        let response = match attempt().await {
            Err(e) if e.before_answer() => {
                tracing::debug!(error = %e, "storage request failed before an answer; retrying once");
                attempt().await
            }
            other => other,
        }
        .map_err(StorageError::Transport)?;
        let status = response.status;
        if status.is_success() {
            return Ok(response);
        }
        let code = response.headers.get("x-ms-error-code").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        Err(StorageError::Status { status, code })
    }
}
