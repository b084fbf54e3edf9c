//! Entra ID tokens from the platform's managed identity (azure-openai-batch.md §2): App Service and Functions set
//! `IDENTITY_ENDPOINT` and `IDENTITY_HEADER`, and `GET {endpoint}?resource=…&api-version=2019-08-01` with the
//! `X-IDENTITY-HEADER` answers `{"access_token", "expires_on", …}`.
//!
//! [`ManagedIdentity`] caches one `Authorization: Bearer …` value per resource and fetches a new one when the cached
//! token is within [`REFRESH_MARGIN`] of `expires_on` (Unix seconds, sent as a string or a number). One fetch runs at
//! a time: the host starts up to 24 checks at once, and the platform's token service throttles bursts. Neither the
//! identity header nor a token ever appears in an error or a log line.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION};
use http::Method;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use url::Url;

use crate::http_client::HttpClient;

/// The token resource of Azure OpenAI (the scope `https://cognitiveservices.azure.com/.default`).
pub const OPENAI_RESOURCE: &str = "https://cognitiveservices.azure.com";
/// The token resource of Azure Storage (the docs write it with and without the trailing `/`; both work).
pub const STORAGE_RESOURCE: &str = "https://storage.azure.com/";
/// The protocol version of the App Service identity endpoint.
const API_VERSION: &str = "2019-08-01";
/// A token is replaced this long before it expires (or at half its life, if that is shorter).
pub const REFRESH_MARGIN: Duration = Duration::from_secs(300);
/// One token request may take this long.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Where the platform's token service is, and which identity to ask for.
#[derive(Clone)]
pub struct IdentitySettings {
    /// `IDENTITY_ENDPOINT`.
    pub endpoint: Url,
    /// `IDENTITY_HEADER`, the anti-SSRF secret the endpoint checks.
    pub header: SecretString,
    /// `AZURE_CLIENT_ID`: a user-assigned identity; absent means the system-assigned one.
    pub client_id: Option<String>,
}

impl std::fmt::Debug for IdentitySettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentitySettings")
            .field("endpoint", &self.endpoint.as_str())
            .field("header", &"[redacted]")
            .field("client_id", &self.client_id)
            .finish()
    }
}

/// Why no token could be had. Never carries the identity header or a token.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    /// The token service could not be reached or did not answer in time.
    #[error("the managed identity endpoint could not be reached: {0}")]
    Unreachable(String),
    /// The token service refused (for example: no identity assigned, or an unknown client id).
    #[error("the managed identity endpoint answered {status}: {message}")]
    Refused { status: u16, message: String },
    /// The answer was not a token.
    #[error("the managed identity endpoint's answer is not a token: {0}")]
    Malformed(String),
}

/// A cached `Authorization` value and when to fetch a new one (Unix seconds).
#[derive(Clone)]
struct Cached {
    authorization: HeaderValue,
    refresh_at: u64,
}

/// A failed fetch: when, for which resource, and why.
struct Failure {
    at: Instant,
    resource: String,
    error: IdentityError,
}

/// A token source for any resource, with a per-resource cache. Cheap to clone; clones share the cache.
#[derive(Clone)]
pub struct ManagedIdentity {
    http: HttpClient,
    settings: IdentitySettings,
    cache: Arc<Mutex<HashMap<String, Cached>>>,
    /// Held while fetching, so that callers who miss the cache together wait for one answer. It keeps the last
    /// failure and when it happened, so that callers who waited for a failed fetch share its error instead of each
    /// waiting for a fetch of their own.
    fetching: Arc<tokio::sync::Mutex<Option<Failure>>>,
}

impl std::fmt::Debug for ManagedIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManagedIdentity").field("settings", &self.settings).finish_non_exhaustive()
    }
}

/// The token service's answer; only what is used.
#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default, deserialize_with = "seconds")]
    expires_on: Option<u64>,
    #[serde(default, deserialize_with = "seconds")]
    expires_in: Option<u64>,
}

/// A number of seconds sent as a JSON number or as a string of digits (the endpoint sends `expires_on` as a string).
fn seconds<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        Number(u64),
        Text(String),
    }
    Ok(match Option::<Either>::deserialize(d)? {
        None => None,
        Some(Either::Number(n)) => Some(n),
        Some(Either::Text(s)) => Some(s.trim().parse().map_err(serde::de::Error::custom)?),
    })
}

impl ManagedIdentity {
    /// Token requests go direct, whatever the proxy settings: the endpoint is a local address on App Service.
    pub fn new(http: &HttpClient, settings: IdentitySettings) -> Self {
        ManagedIdentity { http: http.without_proxy(), settings, cache: Arc::default(), fetching: Arc::default() }
    }

    /// `Bearer <token>` for `resource`, from the cache while the token is fresh, else from the token service. Callers
    /// that miss the cache together wait for one fetch and share its token, or its error.
    pub async fn authorization(&self, resource: &str) -> Result<HeaderValue, IdentityError> {
        if let Some(hit) = self.cached(resource) {
            return Ok(hit);
        }
        let waiting_since = Instant::now();
        let mut fetching = self.fetching.lock().await;
        // Another caller may have fetched it, or failed to, while this one waited.
        if let Some(hit) = self.cached(resource) {
            return Ok(hit);
        }
        if let Some(failed) = fetching.as_ref().filter(|f| f.at >= waiting_since && f.resource == resource) {
            return Err(failed.error.clone());
        }
        match self.fetch(resource, crate::clock::unix_now()).await {
            Ok(fresh) => {
                self.lock().insert(resource.to_string(), fresh.clone());
                *fetching = None;
                Ok(fresh.authorization)
            }
            Err(e) => {
                *fetching = Some(Failure { at: Instant::now(), resource: resource.to_string(), error: e.clone() });
                Err(e)
            }
        }
    }

    /// Sets `Authorization: Bearer` for `resource` on `headers` and returns what is left of `timeout`: the fetch, if
    /// one was needed, counts against the caller's deadline.
    pub async fn authorize(
        &self,
        resource: &str,
        headers: &mut HeaderMap,
        timeout: Duration,
    ) -> Result<Duration, IdentityError> {
        let started = Instant::now();
        let bearer = self.authorization(resource).await?;
        headers.insert(AUTHORIZATION, bearer);
        Ok(timeout.saturating_sub(started.elapsed()))
    }

    fn cached(&self, resource: &str) -> Option<HeaderValue> {
        let now = crate::clock::unix_now();
        self.lock().get(resource).filter(|c| now < c.refresh_at).map(|c| c.authorization.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Cached>> {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The token request's URL: the endpoint with `resource`, `api-version` and the client id, if any, appended.
    pub fn token_url(&self, resource: &str) -> Url {
        let mut url = self.settings.endpoint.clone();
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("resource", resource).append_pair("api-version", API_VERSION);
            if let Some(id) = &self.settings.client_id {
                q.append_pair("client_id", id);
            }
        }
        url
    }

    async fn fetch(&self, resource: &str, now: u64) -> Result<Cached, IdentityError> {
        let mut headers = HeaderMap::new();
        let mut secret = HeaderValue::from_str(self.settings.header.expose_secret())
            .map_err(|_| IdentityError::Unreachable("IDENTITY_HEADER cannot be sent as a header value".into()))?;
        secret.set_sensitive(true);
        headers.insert("x-identity-header", secret);
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        let response = self
            .http
            .send(Method::GET, self.token_url(resource), headers, Bytes::new(), TIMEOUT)
            .await
            .map_err(|e| IdentityError::Unreachable(e.to_string()))?;
        if !response.status.is_success() {
            return Err(IdentityError::Refused {
                status: response.status.as_u16(),
                message: refusal_message(&response.body),
            });
        }
        let answer: TokenAnswer =
            serde_json::from_slice(&response.body).map_err(|e| IdentityError::Malformed(e.to_string()))?;
        let token = answer.access_token.trim();
        let mut authorization = HeaderValue::from_str(&format!("Bearer {token}"))
            .ok()
            .filter(|_| !token.is_empty())
            .ok_or_else(|| IdentityError::Malformed("`access_token` is empty or not a header value".into()))?;
        authorization.set_sensitive(true);
        let expires_on = answer
            .expires_on
            .or(answer.expires_in.map(|s| now + s))
            .ok_or_else(|| IdentityError::Malformed("neither `expires_on` nor `expires_in` is given".into()))?;
        Ok(Cached { authorization, refresh_at: refresh_at(now, expires_on) })
    }
}

/// When to replace a token fetched at `now` that expires at `expires_on`: [`REFRESH_MARGIN`] before, or half-way
/// through its life if that comes later (a short-lived token is still reused, not fetched for every call).
pub fn refresh_at(now: u64, expires_on: u64) -> u64 {
    let life = expires_on.saturating_sub(now);
    now + life.saturating_sub(REFRESH_MARGIN.as_secs()).max(life / 2)
}

/// The service's reason, from `{"message": …}` or `{"error_description": …}` (or the body's start), one line.
fn refusal_message(body: &[u8]) -> String {
    let json: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let field = |k: &str| json.as_ref()?.get(k)?.as_str().map(str::to_string);
    let text = field("message")
        .or_else(|| field("error_description"))
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned());
    text.chars().map(|c| if c.is_control() { ' ' } else { c }).take(300).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(client_id: Option<&str>) -> ManagedIdentity {
        ManagedIdentity::new(
            &HttpClient::new(1 << 16, &Default::default()).expect("client"),
            IdentitySettings {
                endpoint: Url::parse("http://127.0.0.1:41741/msi/token").expect("url"),
                header: SecretString::from("header-secret"),
                client_id: client_id.map(str::to_string),
            },
        )
    }

    #[test]
    fn the_token_url_follows_the_documented_request() {
        assert_eq!(
            identity(None).token_url(OPENAI_RESOURCE).as_str(),
            "http://127.0.0.1:41741/msi/token?resource=https%3A%2F%2Fcognitiveservices.azure.com&api-version=2019-08-01"
        );
        let user_assigned =
            identity(Some("5e29a8c3-0000-4000-8000-000000000001")).token_url("https://storage.azure.com/");
        assert_eq!(
            user_assigned.query(),
            Some("resource=https%3A%2F%2Fstorage.azure.com%2F&api-version=2019-08-01&client_id=5e29a8c3-0000-4000-8000-000000000001")
        );
    }

    #[test]
    fn expiry_is_read_as_a_string_or_a_number() {
        let a: TokenAnswer = serde_json::from_str(
            r#"{"access_token":"t","expires_on":"1586984735","resource":"https://vault.azure.net","token_type":"Bearer"}"#,
        )
        .expect("string");
        assert_eq!(a.expires_on, Some(1_586_984_735));
        let b: TokenAnswer = serde_json::from_str(r#"{"access_token":"t","expires_on":1586984735}"#).expect("number");
        assert_eq!(b.expires_on, Some(1_586_984_735));
        let c: TokenAnswer = serde_json::from_str(r#"{"access_token":"t","expires_in":"3599"}"#).expect("expires_in");
        assert_eq!((c.expires_on, c.expires_in), (None, Some(3599)));
        assert!(serde_json::from_str::<TokenAnswer>(r#"{"access_token":"t","expires_on":"soon"}"#).is_err());
    }

    #[test]
    fn tokens_are_replaced_before_they_expire() {
        // An hour-long token: replaced five minutes before its end.
        assert_eq!(refresh_at(1_000, 4_600), 4_300);
        // A four-minute token: replaced half-way, not on every call.
        assert_eq!(refresh_at(1_000, 1_240), 1_120);
        // Already expired: replaced at once.
        assert_eq!(refresh_at(1_000, 900), 1_000);
    }

    #[test]
    fn refusals_keep_the_reason_on_one_line() {
        assert_eq!(
            refusal_message(br#"{"statusCode":400,"message":"No managed identity\nfound"}"#),
            "No managed identity found"
        );
        assert_eq!(
            refusal_message(br#"{"error":"invalid_request","error_description":"bad resource"}"#),
            "bad resource"
        );
        assert_eq!(refusal_message(b"Bad Request"), "Bad Request");
    }

    #[test]
    fn debug_hides_the_identity_header() {
        assert!(!format!("{:?}", identity(None)).contains("header-secret"));
    }
}
