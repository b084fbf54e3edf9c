//! The client against scripted servers on loopback: reuse, the body limit, error classes, TLS with a private
//! certificate authority (`tests/fixtures/tls`), and proxies (a small CONNECT proxy that records what it is asked).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};

use std::sync::Mutex;

use http::HeaderValue;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
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

    fn uri(&self, path: &str) -> Url {
        format!("{}{path}", self.base).parse().expect("url")
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
                    .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length: ").map(str::to_string))
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

async fn get(client: &HttpClient, url: Url) -> Result<Response, TransportError> {
    client.send(Method::GET, url, HeaderMap::new(), Bytes::new(), WAIT).await
}

fn client() -> HttpClient {
    HttpClient::new(LIMIT, &ProxySettings::default()).expect("client")
}

#[tokio::test]
async fn requests_carry_their_headers_and_connections_are_reused() {
    let fake = Fake::start(vec![
        answer(&["HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-probe: yes\r\n\r\nhel", "lo"]),
        answer(&["HTTP/1.1 201 Created\r\n", "transfer-encoding: chunked\r\n\r\n", "2\r\nok\r\n0\r\n\r\n"]),
    ])
    .await;
    let client = client();
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
    let requests = fake.requests();
    assert!(requests[0].starts_with("GET /a/b?c=d%20e HTTP/1.1\r\n"), "{}", requests[0]);
    assert!(requests[0].contains(&format!("user-agent: {USER_AGENT_VALUE}\r\n")), "{}", requests[0]);
    assert!(requests[1].starts_with("POST /post HTTP/1.1\r\n"), "{}", requests[1]);
    assert!(requests[1].contains("api-key: k\r\n") && requests[1].ends_with("\r\n\r\n{\"x\":1}"), "{}", requests[1]);
}

#[tokio::test]
async fn head_answers_have_no_body_and_redirects_are_not_followed() {
    let fake = Fake::start(vec![
        // A HEAD answer announces a length it does not send.
        answer(&["HTTP/1.1 200 OK\r\ncontent-length: 1000\r\netag: \"0x1\"\r\n\r\n"]),
        answer(&["HTTP/1.1 302 Found\r\nlocation: http://127.0.0.1:9/elsewhere\r\ncontent-length: 0\r\n\r\n"]),
    ])
    .await;
    let client = client();
    let head = client.send(Method::HEAD, fake.uri("/"), HeaderMap::new(), Bytes::new(), WAIT).await.expect("head");
    assert_eq!((head.status, head.body.len()), (StatusCode::OK, 0));
    assert_eq!(head.headers.get("etag").map(|v| v.as_bytes()), Some(&b"\"0x1\""[..]));
    let redirect = get(&client, fake.uri("/")).await.expect("the redirect itself is the answer");
    assert_eq!(redirect.status, StatusCode::FOUND);
    assert_eq!(fake.requests().len(), 2);
}

#[tokio::test]
async fn failures_are_classified() {
    let client = client();
    // Bind then drop: the port is almost certainly closed now.
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let e = get(&client, format!("http://127.0.0.1:{port}/x").parse().expect("url")).await.expect_err("refused");
    assert!(matches!(e, TransportError::Connect(_)), "{e:?}");
    assert!(e.before_answer());
    assert!(!e.to_string().contains(&port.to_string()), "the URL stays out of the message: {e}");

    // A server that accepts and never answers.
    let silent = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url: Url = format!("http://{}/x", silent.local_addr().expect("addr")).parse().expect("url");
    let e = client
        .send(Method::GET, url, HeaderMap::new(), Bytes::new(), Duration::from_millis(200))
        .await
        .expect_err("times out");
    assert!(matches!(e, TransportError::Timeout(_)), "{e:?}");
    assert!(!e.before_answer(), "the server may have acted on a request that timed out");

    // A server that reads the request and resets the connection (SO_LINGER 0).
    let resetting = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url: Url = format!("http://{}/x", resetting.local_addr().expect("addr")).parse().expect("url");
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = resetting.accept().await {
            let _ = socket.read(&mut [0u8; 4096]).await;
            // Deprecated because a non-zero linger blocks on drop; zero does not, it sends a reset.
            #[allow(deprecated)]
            let _ = socket.set_linger(Some(Duration::ZERO));
        }
    });
    let e = get(&client, url).await.expect_err("reset");
    assert!(matches!(&e, TransportError::NoAnswer(_)), "a reset before any answer is no answer: {e:?}");
    assert!(e.before_answer());

    let over = format!("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n401\r\n{}\r\n0\r\n\r\n", "x".repeat(1025));
    let fake = Fake::start(vec![
        closing(&[]),
        closing(&["HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort"]),
        answer(&["HTTP/1.1 200 OK\r\ncontent-length: 1025\r\n\r\n"]),
        answer(&[&over]),
    ])
    .await;
    let no_answer = get(&client, fake.uri("/")).await.expect_err("closed without a word");
    assert!(matches!(no_answer, TransportError::NoAnswer(_)), "{no_answer:?}");
    for what in ["short body then close", "announced over the limit", "chunked over the limit"] {
        let e = get(&client, fake.uri("/")).await.expect_err(what);
        assert!(matches!(e, TransportError::Body(_)), "{what}: {e:?}");
        assert!(!e.before_answer(), "{what}");
    }
    let e = get(&client, "ftp://127.0.0.1/x".parse().expect("url")).await.expect_err("scheme");
    assert!(!e.before_answer(), "{e:?}");
}

fn tls_acceptor() -> tokio_rustls::TlsAcceptor {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let leaf = CertificateDer::from_pem_slice(include_bytes!("../../tests/fixtures/tls/localhost.pem")).expect("leaf");
    let key = PrivateKeyDer::from_pem_slice(include_bytes!("../../tests/fixtures/tls/localhost.key")).expect("key");
    let mut server = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![leaf], key)
        .expect("server config");
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    tokio_rustls::TlsAcceptor::from(Arc::new(server))
}

const CA: &[u8] = include_bytes!("../../tests/fixtures/tls/ca.pem");

/// An https server on `localhost` with the test CA's certificate, answering every request with `secure`.
async fn https_server() -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let acceptor = tls_acceptor();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            if let Ok(tls) = acceptor.accept(socket).await {
                let script = (0..10).map(|_| answer(&["HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nsecure"]));
                tokio::spawn(serve(tls, Arc::new(Mutex::new(script.collect())), Arc::default()));
            }
        }
    });
    (port, accepted)
}

#[tokio::test]
async fn https_is_verified_and_pooled() {
    let (port, accepted) = https_server().await;
    let url: Url = format!("https://localhost:{port}/s").parse().expect("url");

    let e = get(&client(), url.clone()).await.expect_err("a private CA is not trusted by default");
    assert!(matches!(e, TransportError::Connect(_)), "{e:?}");

    let trusting = HttpClient::with_extra_root(LIMIT, &ProxySettings::default(), CA).expect("client");
    assert_eq!(&get(&trusting, url.clone()).await.expect("first").body[..], b"secure");
    assert_eq!(&get(&trusting, url).await.expect("second").body[..], b"secure");
    assert_eq!(accepted.load(Ordering::SeqCst), 2, "one refused handshake, then one connection for both requests");
}

/// A forward proxy on loopback: tunnels `CONNECT host:port` and records the first line of everything it is asked.
async fn proxy() -> (Url, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url: Url = format!("http://{}", listener.local_addr().expect("addr")).parse().expect("url");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                while !head.ends_with(b"\r\n\r\n") {
                    let mut byte = [0u8; 1];
                    if client.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let line = String::from_utf8_lossy(&head).lines().next().unwrap_or("").to_string();
                log.lock().expect("lock").push(line.clone());
                let Some(target) = line.strip_prefix("CONNECT ").and_then(|r| r.split(' ').next()) else {
                    let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n").await;
                    return;
                };
                let Ok(mut upstream) = tokio::net::TcpStream::connect(target).await else { return };
                let _ = client.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n").await;
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            });
        }
    });
    (url, seen)
}

#[tokio::test]
async fn https_calls_tunnel_through_the_proxy_and_the_direct_client_never_does() {
    let (port, _) = https_server().await;
    let (proxy_url, seen) = proxy().await;
    let plain = Fake::start(vec![answer(&["HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\ndirect"])]).await;
    let settings = ProxySettings { https: Some(proxy_url), ..ProxySettings::default() };
    let client = HttpClient::with_extra_root(LIMIT, &settings, CA).expect("client");

    let url: Url = format!("https://localhost:{port}/openai/batches").parse().expect("url");
    assert_eq!(&get(&client, url.clone()).await.expect("through the tunnel").body[..], b"secure");
    assert_eq!(*seen.lock().expect("lock"), [format!("CONNECT localhost:{port} HTTP/1.1")]);

    // The identity endpoint's client, and http URLs when only HTTPS_PROXY is set, go direct.
    let direct = client.without_proxy();
    assert_eq!(&get(&direct, url).await.expect("direct https").body[..], b"secure");
    assert_eq!(&get(&direct, plain.uri("/msi/token")).await.expect("direct http").body[..], b"direct");
    assert_eq!(seen.lock().expect("lock").len(), 1, "the proxy saw nothing more: {:?}", seen.lock().expect("lock"));
}

#[tokio::test]
async fn no_proxy_hosts_go_direct() {
    let (port, _) = https_server().await;
    let (proxy_url, seen) = proxy().await;
    let settings = ProxySettings { https: Some(proxy_url), http: None, no_proxy: Some("example.com,localhost".into()) };
    let client = HttpClient::with_extra_root(LIMIT, &settings, CA).expect("client");
    let url: Url = format!("https://localhost:{port}/x").parse().expect("url");
    assert_eq!(&get(&client, url).await.expect("direct").body[..], b"secure");
    assert!(seen.lock().expect("lock").is_empty(), "{:?}", seen.lock().expect("lock"));
}

#[tokio::test]
async fn the_managed_identity_never_asks_through_a_proxy() {
    use crate::identity::{IdentitySettings, ManagedIdentity, OPENAI_RESOURCE};
    let (proxy_url, seen) = proxy().await;
    let token = r#"{"access_token":"t0k","expires_on":"4102444800","token_type":"Bearer"}"#;
    let endpoint = Fake::start(vec![answer(&[&format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{token}",
        token.len()
    )])])
    .await;
    // Every proxy variable set, and no exception for the endpoint: the identity client still goes direct.
    let settings = ProxySettings { https: Some(proxy_url.clone()), http: Some(proxy_url), no_proxy: None };
    let client = HttpClient::new(LIMIT, &settings).expect("client");
    let identity = ManagedIdentity::new(
        &client,
        IdentitySettings {
            endpoint: endpoint.uri("/msi/token"),
            header: secrecy::SecretString::from("identity-header"),
            client_id: None,
        },
    );
    let authorization = identity.authorization(OPENAI_RESOURCE).await.expect("a token, fetched directly");
    assert_eq!(authorization.to_str().expect("ascii"), "Bearer t0k");
    assert_eq!(endpoint.requests().len(), 1);
    assert!(seen.lock().expect("lock").is_empty(), "the proxy saw {:?}", seen.lock().expect("lock"));
}
