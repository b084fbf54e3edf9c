//! Streaming reader for blob-trigger envelopes that skips the blob content.
//!
//! The host sends the whole blob base64-encoded inside `Data` (a 200 MB blob is a ~267 MB request). BlobMonitor needs
//! only `Metadata`, because the batch service reads the blob itself. [`ElidingReader`] is fed the body chunk by chunk
//! and keeps every byte except the contents of string values directly under `Data`, which it counts and drops, so
//! memory stays bounded by the metadata size whatever the blob size. The kept bytes are then parsed normally, with
//! `Data.<binding>` reading as `""`.
//!
//! Hand-written because no maintained JSON crate streams a document while dropping chosen string values, and the
//! large-blob memory target (docs/performance.md) needs exactly that. It is a lexer, not a validator: it tracks just
//! enough JSON structure (nesting, key vs value, strings and escapes) to find those strings; `serde_json` validates
//! what is kept.

use memchr::memchr2;

use super::{EnvelopeError, InvokeRequest};

/// Bytes of an elided string's head kept for sniffing (enough to decode 6 bytes, e.g. a UTF-8 BOM).
const HEAD_LEN: usize = 8;

/// What was skipped: one entry per string value under `Data`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ElidedValue {
    /// The binding name (the key under `Data`).
    pub binding: String,
    /// Length of the string's raw JSON content (for base64 content: 4/3 of the blob size).
    pub len: u64,
    /// The first bytes of the raw content.
    pub head: Vec<u8>,
}

impl ElidedValue {
    /// The decoded size of base64 content, from its length and padding-free estimate.
    pub fn approx_decoded_len(&self) -> u64 {
        self.len / 4 * 3
    }

    /// Whether the base64 content starts with a UTF-8 byte-order mark (`EF BB BF` encodes as `77u/`).
    pub fn starts_with_bom(&self) -> bool {
        self.head.starts_with(b"77u/")
    }
}

#[derive(Clone, Copy)]
enum Frame {
    Object { expecting_key: bool },
    Array,
}

/// The incremental lexer. Feed chunks with [`ElidingReader::feed`], then call [`ElidingReader::finish`].
pub struct ElidingReader {
    kept: Vec<u8>,
    max_kept: usize,
    stack: Vec<Frame>,
    /// Inside a string; `eliding` says whether its bytes are being dropped; `key` whether it is an object key.
    in_string: bool,
    eliding: bool,
    key: bool,
    escape: bool,
    /// Key being read at depth 1 or 2, and the last complete keys at those depths.
    key_buf: Vec<u8>,
    top_key: Vec<u8>,
    data_key: Vec<u8>,
    elided: Vec<ElidedValue>,
    total: u64,
}

impl ElidingReader {
    /// A reader that fails once more than `max_kept` bytes (metadata and everything else not elided) accumulate.
    pub fn new(max_kept: usize) -> Self {
        ElidingReader {
            kept: Vec::with_capacity(4096),
            max_kept,
            stack: Vec::with_capacity(16),
            in_string: false,
            eliding: false,
            key: false,
            escape: false,
            key_buf: Vec::new(),
            top_key: Vec::new(),
            data_key: Vec::new(),
            elided: Vec::new(),
            total: 0,
        }
    }

    /// Total bytes fed so far.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Consumes one chunk of the body.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<(), EnvelopeError> {
        self.feed_with(chunk, &mut |_| {})
    }

    /// Consumes one chunk of the body, handing the raw (still JSON-escaped) content of the first value under `Data`
    /// to `content` as it passes, in order ([`super::blob_content`] decodes it).
    pub fn feed_with(&mut self, mut chunk: &[u8], content: &mut impl FnMut(&[u8])) -> Result<(), EnvelopeError> {
        self.total += chunk.len() as u64;
        while !chunk.is_empty() {
            if self.in_string {
                chunk = self.string_bytes(chunk, content);
            } else {
                let b = chunk[0];
                chunk = &chunk[1..];
                self.structural(b);
                self.kept.push(b);
            }
            if self.kept.len() > self.max_kept {
                return Err(EnvelopeError::NotJson(format!(
                    "more than {} bytes of envelope besides the blob content",
                    self.max_kept
                )));
            }
        }
        Ok(())
    }

    /// Handles one byte outside strings.
    fn structural(&mut self, b: u8) {
        match b {
            b'{' => self.stack.push(Frame::Object { expecting_key: true }),
            b'[' => self.stack.push(Frame::Array),
            b'}' | b']' => {
                self.stack.pop();
            }
            b':' => self.set_expecting_key(false),
            b',' => self.set_expecting_key(true),
            b'"' => {
                self.in_string = true;
                self.escape = false;
                self.key = matches!(self.stack.last(), Some(Frame::Object { expecting_key: true }));
                self.key_buf.clear();
                // A value string directly in the object under top-level key "Data".
                self.eliding = !self.key
                    && self.stack.len() == 2
                    && matches!(self.stack[1], Frame::Object { .. })
                    && self.top_key.eq_ignore_ascii_case(b"Data");
                if self.eliding {
                    self.elided.push(ElidedValue { binding: unescape(&self.data_key), ..Default::default() });
                }
            }
            _ => {}
        }
    }

    fn set_expecting_key(&mut self, value: bool) {
        if let Some(Frame::Object { expecting_key }) = self.stack.last_mut() {
            *expecting_key = value;
        }
    }

    /// Consumes string content up to and including the closing quote; returns the rest of the chunk.
    fn string_bytes<'a>(&mut self, chunk: &'a [u8], sink: &mut impl FnMut(&[u8])) -> &'a [u8] {
        let mut i = 0;
        loop {
            if self.escape {
                // The escaped byte (or the first of `uXXXX`, whose hex digits need no care) cannot end the string.
                if i >= chunk.len() {
                    break;
                }
                self.escape = false;
                i += 1;
                continue;
            }
            match memchr2(b'"', b'\\', &chunk[i..]) {
                Some(off) if chunk[i + off] == b'\\' => {
                    self.escape = true;
                    i += off + 1;
                }
                Some(off) => {
                    let content = &chunk[..i + off];
                    self.string_content(content, sink);
                    self.in_string = false;
                    self.kept.push(b'"');
                    if self.key {
                        match self.stack.len() {
                            1 => self.top_key = std::mem::take(&mut self.key_buf),
                            2 => self.data_key = std::mem::take(&mut self.key_buf),
                            _ => {}
                        }
                    }
                    return &chunk[i + off + 1..];
                }
                None => break,
            }
        }
        self.string_content(chunk, sink);
        &[]
    }

    fn string_content(&mut self, content: &[u8], sink: &mut impl FnMut(&[u8])) {
        if self.eliding {
            if self.elided.len() == 1 {
                sink(content);
            }
            if let Some(e) = self.elided.last_mut() {
                e.len += content.len() as u64;
                let room = HEAD_LEN.saturating_sub(e.head.len());
                e.head.extend_from_slice(&content[..room.min(content.len())]);
            }
        } else {
            self.kept.extend_from_slice(content);
            if self.key && self.stack.len() <= 2 && self.key_buf.len() < 256 {
                self.key_buf.extend_from_slice(content);
            }
        }
    }

    /// Parses what was kept; the elided values read as `""`.
    pub fn finish(self) -> Result<(InvokeRequest, Vec<ElidedValue>), EnvelopeError> {
        Ok((InvokeRequest::from_slice(&self.kept)?, self.elided))
    }
}

/// A key's raw JSON string content, unescaped (`a\"b` → `a"b`).
fn unescape(raw: &[u8]) -> String {
    let mut quoted = Vec::with_capacity(raw.len() + 2);
    quoted.push(b'"');
    quoted.extend_from_slice(raw);
    quoted.push(b'"');
    serde_json::from_slice(&quoted).unwrap_or_else(|_| String::from_utf8_lossy(raw).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The BlobMonitor example envelope of functions-protocol.md §2.5.
    pub const BLOB_ENVELOPE: &str = r#"{
  "Data": {"inputBlob": "eyJjdXN0b21faWQiOiJ0YXNrLTAiLCJtZXRob2QiOiJQT1NUIiwidXJsIjoiL2NoYXQvY29tcGxldGlvbnMiLCJib2R5Ijp7Im1vZGVsIjoiZ3B0LTRvLWJhdGNoIiwibWVzc2FnZXMiOlt7InJvbGUiOiJ1c2VyIiwiY29udGVudCI6IkhpIn1dfX0K"},
  "Metadata": {
    "Uri": "\"https://myaccount.blob.core.windows.net/batch-input/job1.jsonl\"",
    "Properties": {"LastModified": "2025-01-01T00:00:00+00:00", "ContentLength": 141,
                   "ContentType": "application/octet-stream", "BlobType": 0, "Metadata": {}},
    "Metadata": {},
    "name": "\"job1.jsonl\"",
    "sys": {"MethodName": "BlobMonitor", "UtcNow": "2025-01-01T00:00:05.1234567Z", "RandGuid": "3b2f8c1e-7d44-4a8e-9f1e-5c6d7e8f9a0b"}
  }
}"#;

    fn read_in_chunks(body: &[u8], chunk: usize) -> (InvokeRequest, Vec<ElidedValue>) {
        let mut r = ElidingReader::new(1 << 20);
        for c in body.chunks(chunk) {
            r.feed(c).expect("feed");
        }
        r.finish().expect("finish")
    }

    #[test]
    fn doc_envelope_keeps_metadata_and_skips_content_at_any_chunking() {
        for chunk in [1, 2, 3, 7, 64, 4096] {
            let (req, elided) = read_in_chunks(BLOB_ENVELOPE.as_bytes(), chunk);
            assert_eq!(
                req.metadata_str("Uri").as_deref(),
                Some("https://myaccount.blob.core.windows.net/batch-input/job1.jsonl"),
                "chunk {chunk}"
            );
            assert_eq!(req.metadata_str("name").as_deref(), Some("job1.jsonl"));
            assert_eq!(req.data.get("inputBlob"), Some(&serde_json::Value::String(String::new())));
            assert_eq!(elided.len(), 1);
            assert_eq!(elided[0].binding, "inputBlob");
            assert_eq!(elided[0].len, 188);
            assert_eq!(elided[0].approx_decoded_len(), 141);
            assert_eq!(elided[0].head, b"eyJjdXN0");
            assert!(!elided[0].starts_with_bom());
        }
    }

    #[test]
    fn escapes_across_chunk_boundaries_and_nested_data_values() {
        let body =
            br#"{"Metadata":{"Uri":"\"u\\\"q\"","x":[{"Data":"keep"}]},"Data":{"b":"ab\"c\\","o":{"k":"keep"},"n":1}}"#;
        for chunk in 1..8 {
            let (req, elided) = read_in_chunks(body, chunk);
            assert_eq!(req.metadata_str("Uri").as_deref(), Some("u\"q"), "chunk {chunk}");
            assert_eq!(req.metadata["x"][0]["Data"], "keep");
            assert_eq!(req.data["o"]["k"], "keep");
            assert_eq!(req.data["b"], "");
            assert_eq!(elided.len(), 1);
            assert_eq!(elided[0].len, br#"ab\"c\\"#.len() as u64);
        }
    }

    #[test]
    fn the_first_data_value_streams_to_the_sink_at_any_chunking() {
        for chunk in [1, 2, 5, 64, 4096] {
            let mut r = ElidingReader::new(1 << 20);
            let mut raw = Vec::new();
            for c in BLOB_ENVELOPE.as_bytes().chunks(chunk) {
                r.feed_with(c, &mut |bytes| raw.extend_from_slice(bytes)).expect("feed");
            }
            assert_eq!(raw.len(), 188, "chunk {chunk}");
            assert!(raw.starts_with(b"eyJjdXN0b21faWQi") && raw.ends_with(b"fX0K"));
        }
    }

    #[test]
    fn bom_is_recognised() {
        let body = br#"{"Data":{"inputBlob":"77u/eyJjdXN0b21faWQiOiJ0In0K"},"Metadata":{"Uri":"\"u\""}}"#;
        let (_, elided) = read_in_chunks(body, 5);
        assert!(elided[0].starts_with_bom());
    }

    #[test]
    fn oversized_metadata_and_garbage_are_errors_not_panics() {
        let mut r = ElidingReader::new(16);
        assert!(r.feed(br#"{"Metadata":{"k":"0123456789abcdef"}}"#).is_err());
        for garbage in [&b"}}}]]]"[..], b"\"", b"{\"Data\":{\"a\":\"", b"\\\\\\", b"", b"nul\x00l"] {
            let mut r = ElidingReader::new(1024);
            r.feed(garbage).expect("lexing never fails below the limit");
            assert!(r.finish().is_err());
        }
    }
}
