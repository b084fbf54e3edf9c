//! Every outbound call of the app (batch API, Blob and Queue storage, the managed-identity endpoint) goes through
//! [`HttpClient`]: reqwest with rustls (ring as the crypto provider), the webpki roots plus the platform's
//! certificates (`SSL_CERT_FILE`, a CA installed on the machine), HTTP/1.1 or HTTP/2, keep-alive pooling, and the
//! proxies of [`ProxySettings`].
//!
//! The clients are built on the first call, on a blocking thread, not at start-up: loading the platform's trust store
//! takes several milliseconds, which the host's readiness probe should not wait for (docs/performance.md, cold start).
//!
//! A call is one buffered exchange: the answer's body is read whole, up to the client's limit, inside one deadline
//! that covers connecting, sending and reading. This module is the one place where reqwest's errors become the
//! project's [`TransportError`] classes, on which the failure table depends; none of them carries the URL (a storage
//! URL may hold a SAS signature).

pub mod proxy;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Method, StatusCode};
use url::Url;

pub use proxy::ProxySettings;

/// How long connecting (TCP and TLS) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Idle pooled connections are closed after this (Azure's front ends drop idle connections after about 4 minutes).
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Sent on every request.
const USER_AGENT_VALUE: &str = concat!("blob-batch-monitor/", env!("CARGO_PKG_VERSION"));

/// A buffered answer.
#[derive(Debug)]
pub struct Response {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A call that got no usable answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TransportError {
    /// The deadline passed (connecting, waiting or reading).
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// No connection could be made (refused, DNS, TLS handshake, proxy refused the tunnel).
    #[error("could not connect: {0}")]
    Connect(String),
    /// The request failed before an answer arrived (e.g. a reset): safe to send again when the operation tolerates
    /// a repeat.
    #[error("no answer: {0}")]
    NoAnswer(String),
    /// The answer started but its body broke off or was larger than the limit.
    #[error("the answer could not be read: {0}")]
    Body(String),
    /// The request could not be built (a header value or URL the client refuses to send).
    #[error("invalid request: {0}")]
    Invalid(String),
}

impl TransportError {
    /// True when no answer started, so the request may be sent again (timeouts excluded: the server may still act).
    pub fn before_answer(&self) -> bool {
        matches!(self, TransportError::Connect(_) | TransportError::NoAnswer(_))
    }
}

/// A pooled client. Cheap to clone; clones share their connection pools.
#[derive(Clone)]
pub struct HttpClient {
    shared: Arc<Shared>,
    /// Calls go direct, whatever the proxy settings (the managed-identity endpoint).
    direct: bool,
}

/// What the clients are built from, and the clients once built.
struct Shared {
    max_body: usize,
    proxies: ProxySettings,
    ca: Option<reqwest::Certificate>,
    clients: OnceLock<Result<Clients, TransportError>>,
}

/// One reqwest client with the proxies and one without; both trust the same roots.
struct Clients {
    proxied: reqwest::Client,
    direct: reqwest::Client,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient")
            .field("max_body", &self.shared.max_body)
            .field("direct", &self.direct)
            .finish_non_exhaustive()
    }
}

impl HttpClient {
    /// A client whose answers may be at most `max_body` bytes, going through `proxies`.
    pub fn new(max_body: usize, proxies: &ProxySettings) -> Result<Self, TransportError> {
        Self::with(max_body, proxies, None)
    }

    /// The same, also trusting the PEM certificate authority `ca_pem` (tests use a private one).
    pub fn with_extra_root(max_body: usize, proxies: &ProxySettings, ca_pem: &[u8]) -> Result<Self, TransportError> {
        let ca = reqwest::Certificate::from_pem(ca_pem).map_err(|e| invalid("the CA certificate", &e))?;
        Self::with(max_body, proxies, Some(ca))
    }

    fn with(
        max_body: usize,
        proxies: &ProxySettings,
        ca: Option<reqwest::Certificate>,
    ) -> Result<Self, TransportError> {
        // Refused now rather than on the first call.
        for url in [&proxies.https, &proxies.http].into_iter().flatten() {
            reqwest::Proxy::all(url.as_str()).map_err(|e| invalid("the proxy", &e))?;
        }
        let shared = Shared { max_body, proxies: proxies.clone(), ca, clients: OnceLock::new() };
        Ok(HttpClient { shared: Arc::new(shared), direct: false })
    }

    /// This client without proxies: for the managed-identity endpoint, a local address on App Service that a
    /// proxy could not reach (and must never see the identity header).
    pub fn without_proxy(&self) -> Self {
        HttpClient { shared: self.shared.clone(), direct: true }
    }

    /// The built clients, waiting for the build (on a blocking thread) if it has not finished.
    async fn clients(&self) -> Result<&Clients, TransportError> {
        if self.shared.clients.get().is_none() {
            let shared = self.shared.clone();
            tokio::task::spawn_blocking(move || {
                shared.clients();
            })
            .await
            .map_err(|e| TransportError::Invalid(format!("building the HTTP client failed: {e}")))?;
        }
        match self.shared.clients.get() {
            Some(Ok(clients)) => Ok(clients),
            Some(Err(e)) => Err(e.clone()),
            None => Err(TransportError::Invalid("the HTTP client was not built".into())),
        }
    }

    /// Sends one request and reads the whole answer within `timeout`.
    pub async fn send(
        &self,
        method: Method,
        url: Url,
        headers: HeaderMap,
        body: Bytes,
        timeout: Duration,
    ) -> Result<Response, TransportError> {
        let clients = self.clients().await?;
        let client = if self.direct { &clients.direct } else { &clients.proxied };
        let max_body = self.shared.max_body;
        let head_request = method == Method::HEAD;
        let mut request = client.request(method, url).headers(headers);
        if !body.is_empty() {
            request = request.body(body);
        }
        let exchange = async {
            let mut response = request.send().await.map_err(classify)?;
            let status = response.status();
            let headers = std::mem::take(response.headers_mut());
            if head_request {
                return Ok(Response { status, headers, body: Bytes::new() });
            }
            let announced = response.content_length().unwrap_or(0);
            if announced > max_body as u64 {
                return Err(too_large(max_body));
            }
            let mut body = BytesMut::with_capacity(announced as usize);
            while let Some(chunk) = response.chunk().await.map_err(classify)? {
                if body.len() + chunk.len() > max_body {
                    return Err(too_large(max_body));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(Response { status, headers, body: body.freeze() })
        };
        tokio::time::timeout(timeout, exchange).await.unwrap_or(Err(TransportError::Timeout(timeout)))
    }
}

impl Shared {
    /// Builds the clients once; later calls return the same result.
    fn clients(&self) -> &Result<Clients, TransportError> {
        self.clients.get_or_init(|| {
            let builder = || {
                let builder = reqwest::Client::builder()
                    .user_agent(USER_AGENT_VALUE)
                    .connect_timeout(CONNECT_TIMEOUT)
                    .pool_idle_timeout(POOL_IDLE_TIMEOUT)
                    // Neither API redirects; following one would send the api-key header (which reqwest does not
                    // count as sensitive) to wherever the redirect points.
                    .redirect(reqwest::redirect::Policy::none())
                    // reqwest would otherwise read the environment itself; the settings were read once, in `Config`.
                    .no_proxy();
                match &self.ca {
                    Some(ca) => builder.add_root_certificate(ca.clone()),
                    None => builder,
                }
            };
            let mut proxied = builder();
            let no_proxy = self.proxies.no_proxy.as_deref().and_then(reqwest::NoProxy::from_string);
            if let Some(url) = &self.proxies.https {
                let proxy = reqwest::Proxy::https(url.as_str()).map_err(|e| invalid("the proxy", &e))?;
                proxied = proxied.proxy(proxy.no_proxy(no_proxy.clone()));
            }
            if let Some(url) = &self.proxies.http {
                let proxy = reqwest::Proxy::http(url.as_str()).map_err(|e| invalid("the proxy", &e))?;
                proxied = proxied.proxy(proxy.no_proxy(no_proxy));
            }
            let proxied = proxied.build().map_err(|e| invalid("the HTTP client", &e))?;
            let direct = builder().build().map_err(|e| invalid("the HTTP client", &e))?;
            Ok(Clients { proxied, direct })
        })
    }
}

/// reqwest's error, as the project's class. The URL is dropped first: reqwest's messages quote it.
fn classify(e: reqwest::Error) -> TransportError {
    let e = e.without_url();
    let text = error_chain(&e);
    if e.is_connect() {
        TransportError::Connect(text)
    } else if e.is_timeout() {
        TransportError::Timeout(CONNECT_TIMEOUT)
    } else if e.is_builder() {
        TransportError::Invalid(text)
    } else if e.is_body() || e.is_decode() {
        TransportError::Body(text)
    } else {
        // `is_request`: sending failed, or the connection closed or reset before the answer's head was complete.
        TransportError::NoAnswer(text)
    }
}

fn invalid(what: &str, e: &reqwest::Error) -> TransportError {
    TransportError::Invalid(format!("{what} could not be set up: {}", error_chain(e)))
}

fn too_large(max: usize) -> TransportError {
    TransportError::Body(format!("the answer is larger than {max} bytes"))
}

/// `error: cause: cause`, so "connection refused" is not hidden behind "error sending request".
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s = s.to_string();
        // hyper and hyper-util repeat their cause in their own message; say each part once.
        if !text.ends_with(&s) {
            text.push_str(": ");
            text.push_str(&s);
        }
        source = source.and_then(std::error::Error::source);
    }
    text
}

#[cfg(test)]
mod tests;
