//! HTTP/1.1 framing for the client (RFC 9112): the request head written into one buffer, the response head parsed
//! with httparse, the body's length decided as §6.3 says (none for HEAD, 1xx, 204 and 304; chunked; Content-Length;
//! otherwise until the server closes), and an incremental chunked decoder. Pure functions over bytes: the I/O is in
//! the parent module.

use http::header::{HeaderMap, HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::{Method, StatusCode};

/// More response headers than this is refused (hyper's default too).
const MAX_HEADERS: usize = 100;
/// A chunk-size line (with extensions) or a trailer line longer than this is refused.
const MAX_LINE: usize = 4096;

/// Why an answer could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("malformed response head: {0}")]
    Head(String),
    #[error("malformed chunked body")]
    Chunked,
    #[error("the body is larger than {0} bytes")]
    TooLarge(usize),
}

/// Appends `METHOD target HTTP/1.1`, `host` (unless given), the headers, `content-length` (unless given, and only
/// where a body is expected or present) and the blank line.
pub fn request_head(
    out: &mut Vec<u8>,
    method: &Method,
    authority: &str,
    path_and_query: &str,
    headers: &HeaderMap,
    body_len: usize,
) {
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(if path_and_query.is_empty() { b"/" } else { path_and_query.as_bytes() });
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if !headers.contains_key(HOST) {
        header_line(out, b"host", authority.as_bytes());
    }
    for (name, value) in headers {
        header_line(out, name.as_str().as_bytes(), value.as_bytes());
    }
    let bodiless = matches!(*method, Method::GET | Method::HEAD | Method::DELETE | Method::OPTIONS | Method::TRACE);
    if !headers.contains_key(CONTENT_LENGTH) && (body_len > 0 || !bodiless) {
        header_line(out, b"content-length", itoa(body_len as u64, &mut [0; 20]));
    }
    out.extend_from_slice(b"\r\n");
}

fn header_line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

fn itoa(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

/// How the body after a response head ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body at all.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Everything until the server closes the connection.
    UntilClose,
}

/// A parsed response head.
#[derive(Debug)]
pub struct Head {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// Bytes the head took, blank line included.
    pub len: usize,
    pub framing: Framing,
    /// The connection may carry another request once this body has been read.
    pub keep_alive: bool,
}

/// Parses a response head from the start of `buf`: `None` while it is incomplete. `head_request` says the request
/// was a HEAD, whose answer has no body whatever its headers say.
pub fn parse_head(buf: &[u8], head_request: bool) -> Result<Option<Head>, WireError> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut slots);
    let len = match response.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(WireError::Head(e.to_string())),
    };
    let code = response.code.unwrap_or(0);
    let status = StatusCode::from_u16(code).map_err(|_| WireError::Head(format!("status {code}")))?;
    let mut headers = HeaderMap::with_capacity(response.headers.len());
    for h in response.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| WireError::Head("header name".into()))?;
        let value = HeaderValue::from_bytes(h.value).map_err(|_| WireError::Head(format!("`{name}` value")))?;
        headers.append(name, value);
    }
    let http11 = response.version == Some(1);
    let close = tokens(&headers, &CONNECTION).any(|t| t.eq_ignore_ascii_case(b"close"));
    let chunked = tokens(&headers, &TRANSFER_ENCODING).last().map(|t| t.eq_ignore_ascii_case(b"chunked"));
    let framing = if head_request || status.is_informational() || code == 204 || code == 304 {
        Framing::Empty
    } else if let Some(chunked) = chunked {
        // Transfer-Encoding overrides Content-Length; only a final `chunked` marks where the body ends.
        if chunked {
            Framing::Chunked
        } else {
            Framing::UntilClose
        }
    } else {
        match content_length(&headers)? {
            Some(n) => Framing::Length(n),
            None => Framing::UntilClose,
        }
    };
    // Both framings at once is a smuggling signal (RFC 9112 §6.3): read this answer, then close.
    let both = chunked.is_some() && headers.contains_key(CONTENT_LENGTH);
    let keep_alive = http11 && !close && !both && framing != Framing::UntilClose;
    Ok(Some(Head { status, headers, len, framing, keep_alive }))
}

/// The comma-separated tokens of every `name` header, trimmed.
fn tokens<'a>(headers: &'a HeaderMap, name: &HeaderName) -> impl Iterator<Item = &'a [u8]> {
    headers.get_all(name).into_iter().flat_map(|v| v.as_bytes().split(|&b| b == b',')).map(|t| t.trim_ascii())
}

/// `Content-Length`, which must be digits; repeated values (in one header or several) must agree.
fn content_length(headers: &HeaderMap) -> Result<Option<u64>, WireError> {
    let mut length = None;
    for token in tokens(headers, &CONTENT_LENGTH) {
        let n = std::str::from_utf8(token)
            .ok()
            .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|t| t.parse::<u64>().ok())
            .ok_or_else(|| WireError::Head("content-length".into()))?;
        if length.is_some_and(|l| l != n) {
            return Err(WireError::Head("conflicting content-length values".into()));
        }
        length = Some(n);
    }
    Ok(length)
}

/// An incremental decoder of a chunked body: feed it what has arrived, it appends the data to `out`.
#[derive(Debug, Default)]
pub struct Chunked {
    state: State,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before a chunk-size line.
    #[default]
    Size,
    /// Inside a chunk, with this many bytes to go.
    Data(u64),
    /// After a chunk's data, before its CRLF.
    DataEnd,
    /// After the last chunk: trailer lines until a blank one.
    Trailer,
    Done,
}

impl Chunked {
    /// True once the last chunk and the trailer section have been read.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decodes as much of `input` as it can, appending chunk data to `out` (at most `max` bytes in all), and returns
    /// how many bytes of `input` it used. Bytes after the end of the body are left unused.
    pub fn decode(&mut self, input: &[u8], out: &mut Vec<u8>, max: usize) -> Result<usize, WireError> {
        let mut pos = 0;
        loop {
            let rest = &input[pos..];
            match self.state {
                State::Done => return Ok(pos),
                State::Size | State::Trailer => {
                    let Some(line) = line(rest)? else { return Ok(pos) };
                    pos += line.len();
                    let text = strip_eol(line);
                    self.state = match self.state {
                        State::Size => match chunk_size(text)? {
                            0 => State::Trailer,
                            n => State::Data(n),
                        },
                        _ if text.is_empty() => State::Done,
                        _ => State::Trailer,
                    };
                }
                State::Data(left) => {
                    if rest.is_empty() {
                        return Ok(pos);
                    }
                    let take = rest.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    if out.len() + take > max {
                        return Err(WireError::TooLarge(max));
                    }
                    out.extend_from_slice(&rest[..take]);
                    pos += take;
                    let left = left - take as u64;
                    self.state = if left == 0 { State::DataEnd } else { State::Data(left) };
                }
                State::DataEnd => match rest {
                    [b'\r', b'\n', ..] => {
                        pos += 2;
                        self.state = State::Size;
                    }
                    [b'\n', ..] => {
                        pos += 1;
                        self.state = State::Size;
                    }
                    [] | [b'\r'] => return Ok(pos),
                    _ => return Err(WireError::Chunked),
                },
            }
        }
    }
}

/// The first line of `input`, its `\n` included; `None` if it has not all arrived.
fn line(input: &[u8]) -> Result<Option<&[u8]>, WireError> {
    match memchr::memchr(b'\n', input) {
        Some(i) if i < MAX_LINE => Ok(Some(&input[..=i])),
        None if input.len() < MAX_LINE => Ok(None),
        _ => Err(WireError::Chunked),
    }
}

fn strip_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// The hex size before any `;extension`.
fn chunk_size(text: &[u8]) -> Result<u64, WireError> {
    let end = text.iter().position(|&b| b == b';').unwrap_or(text.len());
    let digits = text[..end].trim_ascii();
    if digits.is_empty() || digits.len() > 15 {
        return Err(WireError::Chunked);
    }
    digits.iter().try_fold(0u64, |n, &b| {
        let d = (b as char).to_digit(16).ok_or(WireError::Chunked)?;
        Ok(n * 16 + u64::from(d))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> Head {
        parse_head(text.as_bytes(), false).expect("parses").expect("complete")
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let h = head("HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n");
        assert_eq!((h.framing, h.keep_alive, h.len), (Framing::Length(12), true, 39));
        assert_eq!(head("HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\n\r\n").framing, Framing::Length(3));
        let both = head("HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: gzip, chunked\r\n\r\n");
        assert_eq!(
            (both.framing, both.keep_alive),
            (Framing::Chunked, false),
            "chunked wins, then the connection closes"
        );
        let gzip = head("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, gzip\r\n\r\n");
        assert_eq!((gzip.framing, gzip.keep_alive), (Framing::UntilClose, false));
        let close = head("HTTP/1.1 200 OK\r\nconnection: keep-alive, Close\r\ncontent-length: 0\r\n\r\n");
        assert!(!close.keep_alive);
        assert!(!head("HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n").keep_alive, "HTTP/1.0 is not reused");
        assert_eq!(head("HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\n").framing, Framing::Empty);
        assert_eq!(head("HTTP/1.1 404 Not Found\r\n\r\n").framing, Framing::UntilClose);
        let for_head = parse_head(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n", true).expect("ok").expect("done");
        assert_eq!((for_head.framing, for_head.keep_alive), (Framing::Empty, true));
        assert!(parse_head(b"HTTP/1.1 200 OK\r\ncontent-len", false).expect("partial").is_none());
        for bad in ["content-length: -1", "content-length: 1x", "content-length: 1, 2", "content-length:"] {
            let text = format!("HTTP/1.1 200 OK\r\n{bad}\r\n\r\n");
            assert!(parse_head(text.as_bytes(), false).is_err(), "{bad}");
        }
    }

    #[test]
    fn requests_get_host_and_length_where_due() {
        let mut out = Vec::new();
        let mut headers = HeaderMap::new();
        request_head(&mut out, &Method::GET, "h:1", "", &headers, 0);
        assert_eq!(out, b"GET / HTTP/1.1\r\nhost: h:1\r\n\r\n");
        out.clear();
        request_head(&mut out, &Method::PUT, "h", "/p?q", &headers, 0);
        assert_eq!(out, b"PUT /p?q HTTP/1.1\r\nhost: h\r\ncontent-length: 0\r\n\r\n", "a bodiless PUT says so");
        out.clear();
        headers.insert(CONTENT_LENGTH, HeaderValue::from(3));
        headers.insert(HOST, HeaderValue::from_static("other"));
        request_head(&mut out, &Method::POST, "h", "/", &headers, 3);
        assert_eq!(
            out, b"POST / HTTP/1.1\r\ncontent-length: 3\r\nhost: other\r\n\r\n",
            "given headers are not doubled"
        );
        assert_eq!(itoa(0, &mut [0; 20]), b"0");
        assert_eq!(itoa(u64::MAX, &mut [0; 20]), u64::MAX.to_string().as_bytes());
    }

    #[test]
    fn chunked_bodies_decode_the_same_in_any_pieces() {
        let wire = b"4;name=value\r\nWiki\r\n5\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nExpires: never\r\n\r\nNEXT";
        let mut whole = Chunked::default();
        let mut out = Vec::new();
        let used = whole.decode(wire, &mut out, 100).expect("decodes");
        assert!(whole.is_done());
        assert_eq!((&out[..], &wire[used..]), (&b"Wikipedia in\r\n\r\nchunks."[..], &b"NEXT"[..]));

        // Byte by byte, each decode call sees what has arrived and not yet been used.
        let mut piecewise = Chunked::default();
        let (mut out, mut pending) = (Vec::new(), Vec::new());
        for &b in &wire[..used] {
            pending.push(b);
            let n = piecewise.decode(&pending, &mut out, 100).expect("decodes");
            pending.drain(..n);
        }
        assert!(piecewise.is_done() && pending.is_empty());
        assert_eq!(out, b"Wikipedia in\r\n\r\nchunks.");

        for bad in [&b"x\r\n"[..], b"\r\n", b"5\r\nhelloXX", b"1000000000000000\r\n"] {
            assert_eq!(Chunked::default().decode(bad, &mut Vec::new(), 100), Err(WireError::Chunked), "{bad:?}");
        }
        assert_eq!(Chunked::default().decode(&[b'1'; MAX_LINE], &mut Vec::new(), 100), Err(WireError::Chunked));
        assert_eq!(Chunked::default().decode(b"5\r\nhello\r\n", &mut Vec::new(), 4), Err(WireError::TooLarge(4)));
    }
}
