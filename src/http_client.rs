//! The one outbound HTTP client, shared by the Batch API and Storage clients: hyper-util's pooled HTTP/1.1 client over
//! rustls with the webpki roots (the same stack reqwest's `rustls-tls` builds on), without reqwest's per-request
//! layers. Each call re-parsed its URL twice (once for the request, once for the redirect policy, which these APIs
//! never need), cloned its headers for retries and boxed its timers: together about a third of a QueueMonitor check's
//! instructions (docs/performance.md).
//!
//! A call is one buffered exchange: the response body is read whole, up to the client's limit, inside one deadline
//! that covers connecting, sending and reading. Failures are [`TransportError`]s, which never carry the URL (a
//! storage URL may hold a SAS signature).

use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, USER_AGENT};
use http::{HeaderMap, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

/// How long connecting (TCP and TLS) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Idle pooled connections are closed after this (Azure's front ends drop idle connections after about 4 minutes).
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Sent on every request that does not set its own.
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
    /// No connection could be made.
    #[error("could not connect: {0}")]
    Connect(String),
    /// The request failed before any answer arrived (e.g. a reset): safe to send again when the operation tolerates
    /// a repeat.
    #[error("no answer: {0}")]
    NoAnswer(String),
    /// The answer started but its body broke off or was larger than the limit.
    #[error("the answer could not be read: {0}")]
    Body(String),
    /// The request could not be built (a header value or URL this client refuses to send).
    #[error("invalid request: {0}")]
    Invalid(String),
}

impl TransportError {
    /// True when no answer started, so the request may be sent again (timeouts excluded: the server may still act).
    pub fn before_answer(&self) -> bool {
        matches!(self, TransportError::Connect(_) | TransportError::NoAnswer(_))
    }
}

/// A pooled HTTP/1.1 client for `http` and `https` URLs. Cheap to clone; clones share the pool.
#[derive(Clone, Debug)]
pub struct HttpClient {
    inner: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    max_body: usize,
}

impl HttpClient {
    /// A client whose response bodies may be at most `max_body` bytes.
    pub fn new(max_body: usize) -> Result<Self, TransportError> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())
            .map_err(|e| TransportError::Invalid(format!("TLS set-up failed: {e}")))?
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let inner = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_timer(TokioTimer::new())
            .build(https);
        Ok(HttpClient { inner, max_body })
    }

    /// Sends one request and reads the whole answer within `timeout`.
    pub async fn send(
        &self,
        method: Method,
        uri: Uri,
        mut headers: HeaderMap,
        body: Bytes,
        timeout: Duration,
    ) -> Result<Response, TransportError> {
        headers.entry(USER_AGENT).or_insert_with(|| HeaderValue::from_static(USER_AGENT_VALUE));
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = method;
        *request.uri_mut() = uri;
        *request.headers_mut() = headers;
        let exchange = async {
            let response = self.inner.request(request).await.map_err(|e| {
                let detail = error_chain(&e);
                if e.is_connect() {
                    TransportError::Connect(detail)
                } else {
                    TransportError::NoAnswer(detail)
                }
            })?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, self.max_body)
                .collect()
                .await
                .map_err(|e| TransportError::Body(error_chain(e.as_ref())))?
                .to_bytes();
            Ok(Response { status: parts.status, headers: parts.headers, body })
        };
        tokio::time::timeout(timeout, exchange).await.unwrap_or(Err(TransportError::Timeout(timeout)))
    }
}

/// `error: cause: cause`, so "connection refused" is not hidden behind "client error (Connect)". Neither hyper nor
/// the connector put the URL in their messages.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn refused_connections_and_deadlines_are_classified() {
        let client = HttpClient::new(1024).expect("client");
        // Bind then drop: the port is almost certainly closed now.
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
        let uri: Uri = format!("http://127.0.0.1:{port}/x").parse().expect("uri");
        let e = client
            .send(Method::GET, uri, HeaderMap::new(), Bytes::new(), Duration::from_secs(5))
            .await
            .expect_err("refused");
        assert!(matches!(e, TransportError::Connect(_)), "{e:?}");
        assert!(e.before_answer());

        // A server that accepts and never answers.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let uri: Uri = format!("http://{}/x", silent.local_addr().expect("addr")).parse().expect("uri");
        let e = client
            .send(Method::GET, uri, HeaderMap::new(), Bytes::new(), Duration::from_millis(200))
            .await
            .expect_err("times out");
        assert!(matches!(e, TransportError::Timeout(_)), "{e:?}");
        assert!(!e.before_answer(), "the server may have acted on a request that timed out");
    }

    /// A one-shot server answering every connection with a 200 and `len` bytes of body.
    async fn answering(len: usize) -> Uri {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let mut request = [0u8; 4096];
                let _ = socket.read(&mut request).await;
                let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {len}\r\nx-probe: yes\r\n\r\n");
                let _ = socket.write_all(head.as_bytes()).await;
                let _ = socket.write_all(&vec![b'x'; len]).await;
            }
        });
        format!("http://{addr}/x").parse().expect("uri")
    }

    #[tokio::test]
    async fn answers_are_read_whole_up_to_the_limit() {
        let client = HttpClient::new(1024).expect("client");
        let ok = client
            .send(Method::GET, answering(1024).await, HeaderMap::new(), Bytes::new(), Duration::from_secs(5))
            .await
            .expect("within the limit");
        assert_eq!((ok.status, ok.body.len()), (StatusCode::OK, 1024));
        assert_eq!(ok.headers.get("x-probe").map(|v| v.as_bytes()), Some(&b"yes"[..]));
        let e = client
            .send(Method::GET, answering(1025).await, HeaderMap::new(), Bytes::new(), Duration::from_secs(5))
            .await
            .expect_err("over the limit");
        assert!(matches!(e, TransportError::Body(_)), "{e:?}");
    }
}
