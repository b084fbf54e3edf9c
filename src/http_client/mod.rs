//! The one outbound HTTP client, shared by the Batch API and Storage clients: HTTP/1.1 over TCP or rustls (webpki
//! roots, the stack reqwest's `rustls-tls` uses), with a keep-alive pool, doing its I/O inside the calling task.
//!
//! hyper-util's pooled client, used before, hands every request to a connection task through channels and wakes
//! both tasks on each exchange; with the per-request layers it was about a quarter of a QueueMonitor check's
//! instructions (docs/performance.md). Here a call checks a connection out of the pool, writes the request in one
//! buffer, reads the answer ([`wire`] frames both) and checks the connection back in. An idle connection that the
//! server has closed is noticed before it is reused, as hyper-util's pool does, without a syscall in the usual case.
//!
//! A call is one buffered exchange: the response body is read whole, up to the client's limit, inside one deadline
//! that covers connecting, sending and reading. Failures are [`TransportError`]s, which never carry the URL (a
//! storage URL may hold a SAS signature).

mod wire;

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{HeaderValue, USER_AGENT};
use http::{HeaderMap, Method, StatusCode, Uri};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use wire::{Framing, WireError};

/// How long connecting (TCP and TLS) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Idle pooled connections are closed after this (Azure's front ends drop idle connections after about 4 minutes).
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// At most this many idle connections are kept (more in flight than this is far beyond the host's concurrency).
const POOL_MAX_IDLE: usize = 512;
/// A response head larger than this is refused.
const MAX_HEAD: usize = 64 << 10;
/// Read granularity.
const READ_CHUNK: usize = 16 << 10;
/// Request bodies up to this size are copied behind the head and sent in the same write.
const SMALL_BODY: usize = 16 << 10;
/// Buffers larger than this are not kept by an idle pooled connection.
const IDLE_BUFFER: usize = 64 << 10;

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
    /// The answer started but its body broke off, was malformed or was larger than the limit.
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
#[derive(Clone)]
pub struct HttpClient {
    tls: TlsConnector,
    idle: Arc<Mutex<Vec<Conn>>>,
    max_body: usize,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient").field("max_body", &self.max_body).finish_non_exhaustive()
    }
}

impl HttpClient {
    /// A client whose response bodies may be at most `max_body` bytes, trusting the webpki roots.
    pub fn new(max_body: usize) -> Result<Self, TransportError> {
        let roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
        Self::with_roots(max_body, roots)
    }

    /// A client trusting exactly `roots` (tests use a private certificate authority).
    pub fn with_roots(max_body: usize, roots: rustls::RootCertStore) -> Result<Self, TransportError> {
        let mut config =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(|e| TransportError::Invalid(format!("TLS set-up failed: {e}")))?
                .with_root_certificates(roots)
                .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(HttpClient { tls: TlsConnector::from(Arc::new(config)), idle: Arc::default(), max_body })
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
        let origin = Origin::of(&uri)?;
        let authority = uri.authority().map_or("", |a| a.as_str());
        let authority = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
        let target = uri.path_and_query().map_or("/", |p| p.as_str());
        let exchange = async {
            let mut conn = match self.checkout(&origin) {
                Some(conn) => conn,
                None => self.connect(origin).await?,
            };
            conn.out.clear();
            wire::request_head(&mut conn.out, &method, authority, target, &headers, body.len());
            // A small body goes out with the head in one write; a large one is written from where it is.
            let separate = body.len() > SMALL_BODY;
            if !separate {
                conn.out.extend_from_slice(&body);
            }
            let response = conn.exchange(separate.then_some(&body), method == Method::HEAD, self.max_body).await?;
            if conn.reusable {
                self.checkin(conn);
            }
            Ok(response)
        };
        tokio::time::timeout(timeout, exchange).await.unwrap_or(Err(TransportError::Timeout(timeout)))
    }

    /// The most recently used live connection to `origin`, if any; stale ones met on the way are closed.
    fn checkout(&self, origin: &Origin<&str>) -> Option<Conn> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some(i) = idle.iter().rposition(|c| c.origin.serves(origin)) {
            let mut conn = idle.remove(i);
            if conn.idle_since.elapsed() < POOL_IDLE_TIMEOUT && conn.io.is_open() {
                return Some(conn);
            }
        }
        None
    }

    fn checkin(&self, mut conn: Conn) {
        conn.idle_since = Instant::now();
        // An idle connection keeps small buffers only (a large answer's allocation would otherwise stay shared).
        if conn.buf.capacity() > IDLE_BUFFER {
            conn.buf = BytesMut::with_capacity(READ_CHUNK);
        }
        if conn.out.capacity() > IDLE_BUFFER {
            conn.out = Vec::new();
        }
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        // Oldest first: drop the expired ones, and the oldest if the pool is full.
        let expired = idle.iter().take_while(|c| c.idle_since.elapsed() >= POOL_IDLE_TIMEOUT).count();
        let excess = (idle.len() + 1).saturating_sub(POOL_MAX_IDLE);
        idle.drain(..expired.max(excess));
        idle.push(conn);
    }

    async fn connect(&self, origin: Origin<&str>) -> Result<Conn, TransportError> {
        let connect = async {
            let host = origin.host.trim_start_matches('[').trim_end_matches(']');
            let tcp =
                TcpStream::connect((host, origin.port)).await.map_err(|e| TransportError::Connect(e.to_string()))?;
            tcp.set_nodelay(true).map_err(|e| TransportError::Connect(e.to_string()))?;
            if !origin.https {
                return Ok(Io::Plain(tcp));
            }
            let name = rustls::pki_types::ServerName::try_from(host.to_string())
                .map_err(|e| TransportError::Invalid(format!("host name: {e}")))?;
            let tls = self.tls.connect(name, tcp).await.map_err(|e| TransportError::Connect(error_chain(&e)))?;
            Ok(Io::Tls(Box::new(tls)))
        };
        let io = tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .unwrap_or(Err(TransportError::Connect(format!("timed out after {CONNECT_TIMEOUT:?}"))))?;
        Ok(Conn {
            origin: Origin { https: origin.https, host: origin.host.into(), port: origin.port },
            io,
            buf: BytesMut::with_capacity(READ_CHUNK),
            out: Vec::new(),
            reusable: false,
            idle_since: Instant::now(),
        })
    }
}

/// Where a connection goes: scheme, host (as in the URL) and port. A request borrows its host from its URI; a
/// connection owns it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Origin<H = Box<str>> {
    https: bool,
    host: H,
    port: u16,
}

impl<'a> Origin<&'a str> {
    fn of(uri: &'a Uri) -> Result<Self, TransportError> {
        let https = match uri.scheme_str() {
            Some(s) if s.eq_ignore_ascii_case("https") => true,
            Some(s) if s.eq_ignore_ascii_case("http") => false,
            _ => return Err(TransportError::Invalid("the URL must be http or https".into())),
        };
        let host = uri.host().filter(|h| !h.is_empty()).ok_or(TransportError::Invalid("the URL has no host".into()))?;
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        Ok(Origin { https, host, port })
    }
}

impl Origin {
    /// Host names compare without regard to case.
    fn serves(&self, o: &Origin<&str>) -> bool {
        self.https == o.https && self.port == o.port && self.host.eq_ignore_ascii_case(o.host)
    }
}

/// One connection with its buffers.
struct Conn {
    origin: Origin,
    io: Io,
    /// Bytes read and not yet used.
    buf: BytesMut,
    /// The request being written.
    out: Vec<u8>,
    /// The last answer was read whole and the connection may carry another request.
    reusable: bool,
    idle_since: Instant,
}

impl Conn {
    /// Writes `self.out` (then `body`, if given apart) and reads the answer.
    async fn exchange(
        &mut self,
        body: Option<&Bytes>,
        head_request: bool,
        max_body: usize,
    ) -> Result<Response, TransportError> {
        self.reusable = false;
        let sent = async {
            self.io.write_all(&self.out).await?;
            if let Some(body) = body {
                self.io.write_all(body).await?;
            }
            self.io.flush().await
        };
        sent.await.map_err(|e| TransportError::NoAnswer(e.to_string()))?;
        let head = loop {
            match wire::parse_head(&self.buf, head_request).map_err(malformed)? {
                // 101 would hand the connection over to another protocol, which this client never asks for.
                Some(head) if head.status == StatusCode::SWITCHING_PROTOCOLS => {
                    return Err(TransportError::Body("unexpected 101 Switching Protocols".into()))
                }
                // 100 Continue and 103 Early Hints come before the real answer.
                Some(head) if head.status.is_informational() => self.buf.advance(head.len),
                Some(head) => break head,
                None if self.buf.len() > MAX_HEAD => {
                    return Err(TransportError::Body(format!("response head over {MAX_HEAD} bytes")))
                }
                None => {
                    // A close or a reset before the answer's first byte is no answer (a pooled connection that
                    // the server dropped just as it was reused fails this way): the caller may send again.
                    let started = !self.buf.is_empty();
                    match self.fill(READ_CHUNK).await {
                        Ok(0) if started => {
                            return Err(TransportError::Body("the connection closed inside the response head".into()))
                        }
                        Ok(0) => return Err(TransportError::NoAnswer("the connection closed before an answer".into())),
                        Err(TransportError::Body(e)) if !started => return Err(TransportError::NoAnswer(e)),
                        Err(e) => return Err(e),
                        Ok(_) => {}
                    }
                }
            }
        };
        self.buf.advance(head.len);
        let body = match head.framing {
            Framing::Empty => Bytes::new(),
            Framing::Length(n) => {
                let n = usize::try_from(n).ok().filter(|&n| n <= max_body).ok_or_else(|| too_large(max_body))?;
                self.buf.reserve(n.saturating_sub(self.buf.len()));
                while self.buf.len() < n {
                    if self.fill(n - self.buf.len()).await? == 0 {
                        return Err(broke_off());
                    }
                }
                self.buf.split_to(n).freeze()
            }
            Framing::Chunked => {
                let mut decoder = wire::Chunked::default();
                let mut body = Vec::new();
                loop {
                    let used = decoder.decode(&self.buf, &mut body, max_body).map_err(malformed)?;
                    self.buf.advance(used);
                    if decoder.is_done() {
                        break;
                    }
                    if self.fill(READ_CHUNK).await? == 0 {
                        return Err(broke_off());
                    }
                }
                Bytes::from(body)
            }
            Framing::UntilClose => {
                while self.fill(READ_CHUNK).await? > 0 {
                    if self.buf.len() > max_body {
                        return Err(too_large(max_body));
                    }
                }
                self.buf.split().freeze()
            }
        };
        // Anything after the answer was never asked for: such a connection is not reused.
        self.reusable = head.keep_alive && self.buf.is_empty();
        Ok(Response { status: head.status, headers: head.headers, body })
    }

    /// Reads more into `self.buf`, making room for at least `want` bytes (capped at a read chunk).
    async fn fill(&mut self, want: usize) -> Result<usize, TransportError> {
        self.buf.reserve(want.clamp(1, READ_CHUNK));
        self.io.read_buf(&mut self.buf).await.map_err(|e| TransportError::Body(e.to_string()))
    }
}

fn malformed(e: WireError) -> TransportError {
    TransportError::Body(e.to_string())
}

fn too_large(max: usize) -> TransportError {
    malformed(WireError::TooLarge(max))
}

fn broke_off() -> TransportError {
    TransportError::Body("the connection closed inside the body".into())
}

/// A plain or TLS stream.
enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// What both kinds of stream are.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

impl Io {
    fn stream(self: Pin<&mut Self>) -> Pin<&mut dyn Stream> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s),
            Io::Tls(s) => Pin::new(s.as_mut()),
        }
    }

    /// True unless the peer has closed, reset, or sent something unasked while the connection sat idle. Polls once
    /// with a no-op waker: tokio answers from its readiness cache, so a quiet connection costs no syscall.
    fn is_open(&mut self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut byte = [0u8; 1];
        let mut probe = ReadBuf::new(&mut byte);
        Pin::new(self).poll_read(&mut cx, &mut probe).is_pending()
    }
}

impl AsyncRead for Io {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        self.stream().poll_read(cx, buf)
    }
}

impl AsyncWrite for Io {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.stream().poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.stream().poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.stream().poll_shutdown(cx)
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
mod tests;
