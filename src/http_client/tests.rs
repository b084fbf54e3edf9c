//! The client against scripted servers on loopback: framing, keep-alive and its limits, stale pooled connections,
//! error classes, and TLS with a private certificate authority (`tests/fixtures/tls`).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;

const LIMIT: usize = 1024;
const WAIT: Duration = Duration::from_secs(5);

/// One scripted answer: sent in pieces (each written and flushed on its own, so the client sees partial reads), then
/// the connection is closed if `close` is set.
struct Answer {
    pieces: Vec<Vec<u8>>,
    close: bool,
}

fn answer(pieces: &[&str]) -> Answer {
    Answer { pieces: pieces.iter().map(|p| p.as_bytes().to_vec()).collect(), close: false }
}

fn closing(pieces: &[&str]) -> Answer {
    Answer { close: true, ..answer(pieces) }
}

/// A server answering requests, on any connection, with the scripted answers in order; it records each request
/// (head and body as text) and counts connections. It closes a connection when the script runs out.
struct Fake {
    base: String,
    accepted: Arc<AtomicUsize>,
    requests: Arc<Mutex<Vec<String>>>,
}

impl Fake {
    async fn start(script: Vec<Answer>) -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let accepted = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(Mutex::new(VecDeque::from(script)));
        let (count, log) = (accepted.clone(), requests.clone());
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(socket, script.clone(), log.clone()));
            }
        });
        Fake { base, accepted, requests }
    }

    fn uri(&self, path: &str) -> Uri {
        format!("{}{path}", self.base).parse().expect("uri")
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().expect("lock").clone()
    }
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    mut socket: S,
    script: Arc<Mutex<VecDeque<Answer>>>,
    log: Arc<Mutex<Vec<String>>>,
) {
    let mut buf = Vec::new();
    loop {
        // One request: the head, then `content-length` bytes of body.
        let request = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end + 4]).to_string();
                let length = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .map_or(0, |v| v.trim().parse::<usize>().expect("length"));
                if buf.len() >= end + 4 + length {
                    let request: Vec<u8> = buf.drain(..end + 4 + length).collect();
                    break String::from_utf8_lossy(&request).to_string();
                }
            }
            let mut chunk = [0u8; 4096];
            match socket.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        log.lock().expect("lock").push(request);
        let Some(answer) = script.lock().expect("lock").pop_front() else { return };
        for piece in &answer.pieces {
            if socket.write_all(piece).await.is_err() || socket.flush().await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if answer.close {
            let _ = socket.shutdown().await;
            return;
        }
    }
}

async fn get(client: &HttpClient, uri: Uri) -> Result<Response, TransportError> {
    client.send(Method::GET, uri, HeaderMap::new(), Bytes::new(), WAIT).await
}

#[tokio::test]
async fn requests_are_framed_and_connections_reused() {
    let fake = Fake::start(vec![
        answer(&["HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-probe: yes\r\n\r\nhel", "lo"]),
        answer(&["HTTP/1.1 201 Created\r\n", "content-length: 2\r\n\r\n", "ok"]),
    ])
    .await;
    let client = HttpClient::new(LIMIT).expect("client");
    let first = get(&client, fake.uri("/a/b?c=d%20e")).await.expect("first");
    assert_eq!((first.status, &first.body[..]), (StatusCode::OK, &b"hello"[..]));
    assert_eq!(first.headers.get("x-probe").map(|v| v.as_bytes()), Some(&b"yes"[..]));
    let mut headers = HeaderMap::new();
    headers.insert("api-key", HeaderValue::from_static("k"));
    let second = client
        .send(Method::POST, fake.uri("/post"), headers, Bytes::from_static(b"{\"x\":1}"), WAIT)
        .await
        .expect("second");
    assert_eq!((second.status, &second.body[..]), (StatusCode::CREATED, &b"ok"[..]));
    assert_eq!(fake.accepted(), 1, "the second request reused the first connection");
    let host = fake.base.trim_start_matches("http://");
    let agent = USER_AGENT_VALUE;
    assert_eq!(
        fake.requests(),
        [
            format!("GET /a/b?c=d%20e HTTP/1.1\r\nhost: {host}\r\nuser-agent: {agent}\r\n\r\n"),
            format!(
                "POST /post HTTP/1.1\r\nhost: {host}\r\napi-key: k\r\nuser-agent: {agent}\r\ncontent-length: 7\r\n\r\n{{\"x\":1}}"
            ),
        ]
    );
}

#[tokio::test]
async fn a_large_body_is_sent_whole_and_its_buffers_are_not_kept() {
    let fake = Fake::start(vec![
        answer(&["HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"]),
        answer(&["HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"]),
    ])
    .await;
    let client = HttpClient::new(LIMIT).expect("client");
    let body = Bytes::from(vec![b'b'; 5 * SMALL_BODY]);
    client.send(Method::PUT, fake.uri("/big"), HeaderMap::new(), body.clone(), WAIT).await.expect("sent");
    let request = fake.requests().pop().expect("recorded");
    assert!(request.contains(&format!("content-length: {}\r\n\r\n", body.len())), "{}", &request[..200]);
    assert!(request.ends_with(std::str::from_utf8(&body).expect("ascii")));
    let pooled = client.idle.lock().expect("lock").iter().map(|c| c.out.capacity()).max();
    assert!(pooled.is_some_and(|cap| cap <= IDLE_BUFFER), "{pooled:?}");
    client.send(Method::GET, fake.uri("/"), HeaderMap::new(), Bytes::new(), WAIT).await.expect("reused");
    assert_eq!(fake.accepted(), 1);
}

#[tokio::test]
async fn chunked_answers_are_decoded_and_limited() {
    let over = format!("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n401\r\n{}\r\n0\r\n\r\n", "x".repeat(1025));
    let fake = Fake::start(vec![
        answer(&[
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            "5;ext=1\r\nhel",
            "lo\r\n",
            "6\r\n wor",
            "ld\r\n0\r\ntrailer: x\r\n",
            "\r\n",
        ]),
        answer(&["HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nnext"]),
        answer(&[&over]),
    ])
    .await;
    let client = HttpClient::new(LIMIT).expect("client");
    let chunked = get(&client, fake.uri("/")).await.expect("chunked");
    assert_eq!(&chunked.body[..], b"hello world");
    let next = get(&client, fake.uri("/")).await.expect("after the trailer, the connection carries on");
    assert_eq!(&next.body[..], b"next");
    assert_eq!(fake.accepted(), 1);
    let e = get(&client, fake.uri("/")).await.expect_err("over the limit");
    assert!(matches!(e, TransportError::Body(_)), "{e:?}");
}

#[tokio::test]
async fn bodiless_answers_keep_the_connection_in_step() {
    let fake = Fake::start(vec![
        // A HEAD answer announces a length it does not send.
        answer(&["HTTP/1.1 200 OK\r\ncontent-length: 1000\r\netag: \"0x1\"\r\n\r\n"]),
        answer(&["HTTP/1.1 100 Continue\r\n\r\n", "HTTP/1.1 204 No Content\r\n\r\n"]),
        answer(&["HTTP/1.1 304 Not Modified\r\ncontent-length: 10\r\n\r\n"]),
        answer(&["HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nlast"]),
    ])
    .await;
    let client = HttpClient::new(LIMIT).expect("client");
    let head = client.send(Method::HEAD, fake.uri("/"), HeaderMap::new(), Bytes::new(), WAIT).await.expect("head");
    assert_eq!((head.status, head.body.len()), (StatusCode::OK, 0));
    assert_eq!(head.headers.get("etag").map(|v| v.as_bytes()), Some(&b"\"0x1\""[..]));
    let empty = get(&client, fake.uri("/")).await.expect("204 after a 100");
    assert_eq!((empty.status, empty.body.len()), (StatusCode::NO_CONTENT, 0));
    let not_modified = get(&client, fake.uri("/")).await.expect("304");
    assert_eq!(not_modified.body.len(), 0);
    let last = get(&client, fake.uri("/")).await.expect("last");
    assert_eq!(&last.body[..], b"last");
    assert_eq!(fake.accepted(), 1);
}

#[tokio::test]
async fn closing_answers_and_stale_connections_are_not_reused() {
    let fake = Fake::start(vec![
        // Read until the server closes: the connection cannot carry another request.
        closing(&["HTTP/1.1 200 OK\r\n\r\nuntil ", "close"]),
        answer(&["HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nc2"]),
        // Keep-alive by its headers, but the server closes once it has answered: the pooled connection goes stale.
        closing(&["HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nc3"]),
        answer(&["HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nc4"]),
    ])
    .await;
    let client = HttpClient::new(LIMIT).expect("client");
    assert_eq!(&get(&client, fake.uri("/")).await.expect("1").body[..], b"until close");
    assert_eq!(&get(&client, fake.uri("/")).await.expect("2").body[..], b"c2");
    assert_eq!(&get(&client, fake.uri("/")).await.expect("3").body[..], b"c3");
    // Let the runtime see the server's FIN before the connection is checked out again.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(&get(&client, fake.uri("/")).await.expect("4, on a new connection").body[..], b"c4");
    assert_eq!(fake.accepted(), 4);
}

#[tokio::test]
async fn failures_are_classified() {
    let client = HttpClient::new(LIMIT).expect("client");
    // Bind then drop: the port is almost certainly closed now.
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let e = get(&client, format!("http://127.0.0.1:{port}/x").parse().expect("uri")).await.expect_err("refused");
    assert!(matches!(e, TransportError::Connect(_)), "{e:?}");
    assert!(e.before_answer());

    // A server that accepts and never answers.
    let silent = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let uri: Uri = format!("http://{}/x", silent.local_addr().expect("addr")).parse().expect("uri");
    let e = client
        .send(Method::GET, uri, HeaderMap::new(), Bytes::new(), Duration::from_millis(200))
        .await
        .expect_err("times out");
    assert!(matches!(e, TransportError::Timeout(_)), "{e:?}");
    assert!(!e.before_answer(), "the server may have acted on a request that timed out");

    // A server that reads the request and resets the connection (SO_LINGER 0).
    let resetting = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let uri: Uri = format!("http://{}/x", resetting.local_addr().expect("addr")).parse().expect("uri");
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = resetting.accept().await {
            let _ = socket.read(&mut [0u8; 4096]).await;
            // Deprecated because a non-zero linger blocks on drop; zero does not, it sends a reset.
            #[allow(deprecated)]
            let _ = socket.set_linger(Some(Duration::ZERO));
        }
    });
    let e = get(&client, uri).await.expect_err("reset");
    assert!(
        matches!(&e, TransportError::NoAnswer(m) if m.contains("reset")),
        "a reset before any answer is no answer: {e:?}"
    );

    let fake = Fake::start(vec![
        closing(&[]),
        answer(&["HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort"]),
        closing(&["HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort"]),
        answer(&["HTTP/1.1 200 OK\r\ncontent-length: 1025\r\n\r\n"]),
        answer(&["HTTP/1.1 200 OK\r\ncontent-length: 1, 2\r\n\r\n"]),
        answer(&["HTTP/1.1 200 OK\r\n", "broken header\r\n\r\n"]),
        closing(&["HTTP/1.1 200"]),
    ])
    .await;
    let no_answer = get(&client, fake.uri("/")).await.expect_err("closed without a word");
    assert!(matches!(no_answer, TransportError::NoAnswer(_)), "{no_answer:?}");
    assert!(no_answer.before_answer());
    let e = client
        .send(Method::GET, fake.uri("/"), HeaderMap::new(), Bytes::new(), Duration::from_millis(300))
        .await
        .expect_err("a body shorter than announced, connection kept open");
    assert!(matches!(e, TransportError::Timeout(_)), "{e:?}");
    for what in ["short body then close", "over the limit", "conflicting lengths", "a malformed header", "a cut head"] {
        let e = get(&client, fake.uri("/")).await.expect_err(what);
        assert!(matches!(e, TransportError::Body(_)), "{what}: {e:?}");
        assert!(!e.before_answer(), "{what}");
    }
    let e = get(&client, "ftp://127.0.0.1/x".parse().expect("uri")).await.expect_err("scheme");
    assert!(matches!(e, TransportError::Invalid(_)), "{e:?}");
}

fn tls_fixture() -> (rustls::RootCertStore, Arc<rustls::ServerConfig>) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let ca = CertificateDer::from_pem_slice(include_bytes!("../../tests/fixtures/tls/ca.pem")).expect("ca");
    let leaf = CertificateDer::from_pem_slice(include_bytes!("../../tests/fixtures/tls/localhost.pem")).expect("leaf");
    let key = PrivateKeyDer::from_pem_slice(include_bytes!("../../tests/fixtures/tls/localhost.key")).expect("key");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca).expect("add ca");
    let server = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![leaf], key)
        .expect("server config");
    (roots, Arc::new(server))
}

#[tokio::test]
async fn https_is_verified_and_pooled() {
    let (roots, server) = tls_fixture();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let script = Arc::new(Mutex::new(VecDeque::from(vec![
        answer(&["HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nsecure"]),
        answer(&["HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nagain\r\n0\r\n\r\n"]),
    ])));
    let log = Arc::new(Mutex::new(Vec::new()));
    let count = accepted.clone();
    let acceptor = tokio_rustls::TlsAcceptor::from(server);
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            if let Ok(tls) = acceptor.accept(socket).await {
                tokio::spawn(serve(tls, script.clone(), log.clone()));
            }
        }
    });
    let uri: Uri = format!("https://localhost:{port}/s").parse().expect("uri");

    let untrusting = HttpClient::new(LIMIT).expect("client with the public roots");
    let e = get(&untrusting, uri.clone()).await.expect_err("a private CA is not trusted by default");
    assert!(matches!(e, TransportError::Connect(_)), "{e:?}");

    let client = HttpClient::with_roots(LIMIT, roots).expect("client");
    assert_eq!(&get(&client, uri.clone()).await.expect("first").body[..], b"secure");
    assert_eq!(&get(&client, uri).await.expect("second").body[..], b"again");
    assert_eq!(accepted.load(Ordering::SeqCst), 2, "one refused handshake, then one connection for both requests");
}
