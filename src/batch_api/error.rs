//! Batch API failures and their classification (azure-openai-batch.md §9).
//!
//! Error bodies come in two shapes (OpenAI/v1 and the dated surface) and are parsed leniently; the raw body is never
//! kept in full (it is bounded for logs). Nothing here holds the key: the URL is dropped from transport errors.

use std::fmt;
use std::time::{Duration, SystemTime};

use http::{HeaderMap, StatusCode};
use serde_json::Value;

use crate::http_client::TransportError;
use crate::identity::IdentityError;

/// What a caller should do about a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// 5xx, 408, timeouts, connection errors: retry soon.
    Transient,
    /// 429: retry after the server's delay.
    Throttled,
    /// `token_limit_exceeded`: the enqueued-token quota is full now; retry much later, never drop.
    TokenLimit,
    /// 401/403: a bad key or a missing role; an operator has to act, so back off for long.
    Unauthorized,
    /// 404: the batch (or the endpoint) does not exist.
    NotFound,
    /// Any other 4xx: the request is wrong and will stay wrong.
    Permanent,
}

/// A failed Batch API call.
#[derive(Clone, Debug)]
pub struct BatchError {
    /// `None` when no HTTP answer arrived.
    pub status: Option<StatusCode>,
    /// The API's error code (`error.code`), when it sent one.
    pub code: Option<String>,
    /// The API's message, or a description of the transport failure. Bounded in length.
    pub message: String,
    /// The delay the server asked for (`retry-after-ms`, `x-ms-retry-after-ms`, `Retry-After`).
    pub retry_after: Option<Duration>,
}

/// The `code` of a call that was never made because the managed identity refused a token.
pub const NO_TOKEN: &str = "managed_identity_refused";

/// Longest message kept from an error body.
const MAX_MESSAGE: usize = 1000;

impl BatchError {
    pub(crate) fn transport(message: &str) -> Self {
        BatchError { status: None, code: None, message: bounded(message), retry_after: None }
    }

    /// No token from the managed identity, so no call was made. A refusal (no identity assigned, an unknown client
    /// id, an unreadable answer) needs an operator, like a 401; an unreachable token service is transient.
    pub(crate) fn no_token(e: &IdentityError) -> Self {
        let refused = !matches!(e, IdentityError::Unreachable(_));
        BatchError {
            status: None,
            code: refused.then(|| NO_TOKEN.to_string()),
            message: bounded(&format!("no Entra ID token for Azure OpenAI from the managed identity: {e}")),
            retry_after: None,
        }
    }

    /// Transport errors never hold the URL, so nothing here can echo the key or a SAS token into logs.
    pub(crate) fn from_transport(e: TransportError) -> Self {
        Self::transport(&format!("batch API request failed: {e}"))
    }

    pub(crate) fn malformed(status: StatusCode, detail: &str) -> Self {
        BatchError {
            status: Some(status),
            code: Some("unreadable_response".into()),
            message: bounded(&format!("the batch API answered {status} with a body that is not a batch: {detail}")),
            retry_after: None,
        }
    }

    pub(crate) fn from_response(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> Self {
        let parsed: Option<Value> = serde_json::from_slice(body).ok();
        let error = parsed.as_ref().and_then(|v| v.get("error"));
        let field = |name: &str| {
            error.and_then(|e| e.get(name)).and_then(|v| match v {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            })
        };
        let message = field("message").unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
        BatchError {
            status: Some(status),
            code: field("code"),
            message: bounded(&message),
            retry_after: retry_after(headers),
        }
    }

    /// Whether the call may have taken effect although it failed: no answer came (the service may have acted on the
    /// request), or the service failed after taking it up (5xx, 408, a 2xx it could not say properly). A create
    /// refused with a 4xx made nothing, nor did a call never made for want of a token.
    pub fn may_have_taken_effect(&self) -> bool {
        match self.status {
            None => self.code.as_deref() != Some(NO_TOKEN),
            Some(s) => !s.is_client_error() || s == StatusCode::REQUEST_TIMEOUT,
        }
    }

    /// Classifies the failure.
    pub fn kind(&self) -> ErrorKind {
        let mentions_token_limit =
            self.code.as_deref() == Some("token_limit_exceeded") || self.message.contains("token_limit_exceeded");
        match self.status {
            None if self.code.as_deref() == Some(NO_TOKEN) => ErrorKind::Unauthorized,
            None => ErrorKind::Transient,
            Some(_) if mentions_token_limit => ErrorKind::TokenLimit,
            Some(StatusCode::TOO_MANY_REQUESTS) => ErrorKind::Throttled,
            Some(StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) => ErrorKind::Unauthorized,
            Some(StatusCode::NOT_FOUND) => ErrorKind::NotFound,
            Some(StatusCode::REQUEST_TIMEOUT) => ErrorKind::Transient,
            Some(s) if s.is_server_error() => ErrorKind::Transient,
            // A 2xx whose body is not a batch: the service is misbehaving, try again later.
            Some(s) if s.is_success() => ErrorKind::Transient,
            Some(_) => ErrorKind::Permanent,
        }
    }
}

impl fmt::Display for BatchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.status {
            Some(s) => write!(f, "batch API answered {}", s.as_u16())?,
            None if self.code.as_deref() == Some(NO_TOKEN) => f.write_str("batch API not called")?,
            None => f.write_str("batch API unreachable")?,
        }
        if let Some(code) = &self.code {
            write!(f, " [{code}]")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for BatchError {}

fn bounded(s: &str) -> String {
    match s.char_indices().nth(MAX_MESSAGE) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// The server-requested delay: `retry-after-ms`, then `x-ms-retry-after-ms`, then `Retry-After` (seconds or a date).
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let get = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).map(str::trim);
    for name in ["retry-after-ms", "x-ms-retry-after-ms"] {
        if let Some(ms) = get(name).and_then(|v| v.parse::<f64>().ok()).filter(|v| v.is_finite() && *v >= 0.0) {
            return Some(Duration::from_millis(ms.min(u64::MAX as f64 / 2.0) as u64));
        }
    }
    let v = get("retry-after")?;
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(v).ok()?;
    Some(when.duration_since(SystemTime::now()).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn err(status: u16, body: &str) -> BatchError {
        BatchError::from_response(StatusCode::from_u16(status).expect("status"), &HeaderMap::new(), body.as_bytes())
    }

    #[test]
    fn classification() {
        assert_eq!(err(500, "").kind(), ErrorKind::Transient);
        assert_eq!(err(503, "").kind(), ErrorKind::Transient);
        assert_eq!(
            err(429, r#"{"error":{"code":"429","message":"retry after 86400 seconds"}}"#).kind(),
            ErrorKind::Throttled
        );
        assert_eq!(err(401, "").kind(), ErrorKind::Unauthorized);
        assert_eq!(err(403, "").kind(), ErrorKind::Unauthorized);
        assert_eq!(err(404, r#"{"error":{"code":"DeploymentNotFound"}}"#).kind(), ErrorKind::NotFound);
        assert_eq!(err(400, r#"{"error":{"code":"invalidPayload","message":"bad"}}"#).kind(), ErrorKind::Permanent);
        assert_eq!(err(409, "").kind(), ErrorKind::Permanent);
        let token = err(400, r#"{"error":{"code":"invalid_request","message":"... token_limit_exceeded ..."}}"#);
        assert_eq!(token.kind(), ErrorKind::TokenLimit);
        assert_eq!(BatchError::transport("reset").kind(), ErrorKind::Transient);
    }

    #[test]
    fn which_failures_may_have_created_a_job() {
        let maybe: Vec<u16> = [400, 401, 404, 408, 409, 429, 500, 503]
            .into_iter()
            .filter(|s| err(*s, "").may_have_taken_effect())
            .collect();
        assert_eq!(maybe, [408, 500, 503]);
        assert!(BatchError::transport("reset after sending").may_have_taken_effect());
        assert!(BatchError::malformed(StatusCode::CREATED, "eof").may_have_taken_effect());
        let refused = BatchError::no_token(&IdentityError::Refused { status: 400, message: "no identity".into() });
        assert!(!refused.may_have_taken_effect(), "no call was made");
    }

    #[test]
    fn both_error_body_shapes() {
        let v1 = err(
            400,
            r#"{"error": {"message": "Invalid Value", "type": "invalid_request_error", "param": "p", "code": "invalid_value"}}"#,
        );
        assert_eq!(v1.code.as_deref(), Some("invalid_value"));
        assert_eq!(v1.to_string(), "batch API answered 400 [invalid_value]: Invalid Value");
        let dated = err(429, r#"{"error": {"code": 429, "message": "Please retry"}}"#);
        assert_eq!(dated.code.as_deref(), Some("429"));
        let raw = err(502, "<html>bad gateway</html>");
        assert_eq!(raw.code, None);
        assert_eq!(raw.message, "<html>bad gateway</html>");
        assert!(err(500, &"x".repeat(5000)).message.chars().count() <= MAX_MESSAGE + 1);
    }

    #[test]
    fn retry_headers_in_order_of_preference() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("7"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        h.insert("x-ms-retry-after-ms", HeaderValue::from_static("1500"));
        assert_eq!(retry_after(&h), Some(Duration::from_millis(1500)));
        h.insert("retry-after-ms", HeaderValue::from_static("250"));
        assert_eq!(retry_after(&h), Some(Duration::from_millis(250)));
        let mut d = HeaderMap::new();
        d.insert("retry-after", HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"));
        assert_eq!(retry_after(&d), Some(Duration::ZERO));
        assert_eq!(retry_after(&HeaderMap::new()), None);
    }

    #[test]
    fn a_refused_token_needs_an_operator_and_an_unreachable_token_service_is_transient() {
        let refused =
            BatchError::no_token(&IdentityError::Refused { status: 400, message: "No managed identity".into() });
        assert_eq!(refused.kind(), ErrorKind::Unauthorized);
        assert_eq!(
            refused.to_string(),
            "batch API not called [managed_identity_refused]: no Entra ID token for Azure OpenAI from the managed \
             identity: the managed identity endpoint answered 400: No managed identity"
        );
        let malformed = BatchError::no_token(&IdentityError::Malformed("no access_token".into()));
        assert_eq!(malformed.kind(), ErrorKind::Unauthorized);
        let unreachable = BatchError::no_token(&IdentityError::Unreachable("connection refused".into()));
        assert_eq!(unreachable.kind(), ErrorKind::Transient);
        assert!(unreachable.to_string().starts_with("batch API unreachable: no Entra ID token"), "{unreachable}");
    }
}
