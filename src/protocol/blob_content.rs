//! The blob's own bytes, recovered as the envelope streams past: the host sends the blob as base64 inside a JSON
//! string (functions-protocol.md §2.1), so the raw string content is JSON-unescaped (a serializer may write `+` as
//! `\u002B` or `/` as `\/`) and base64-decoded chunk by chunk, and handed on without the blob ever being held.
//!
//! Decoding is `base64-simd`'s: it is most of the time a large blob's check takes (docs/performance.md), and the
//! `base64` crate has no vectorised decoder. Its error carries no position, so a bad run is decoded again by the
//! `base64` crate for a message that says where.

use base64::Engine;

/// Base64 characters decoded at once (a multiple of 4).
const BATCH: usize = 64 << 10;

/// Why the content is not the base64 of a blob.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContentError {
    #[error("the blob content has an escape that is not a base64 character: {0}")]
    BadEscape(String),
    #[error("the blob content is not base64: {0}")]
    NotBase64(String),
}

/// What is left of an escape sequence that a chunk boundary cut.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Escape {
    #[default]
    None,
    Backslash,
    /// `\u` and the hex digits read so far.
    Unicode {
        digits: u8,
        value: u32,
    },
}

/// Decodes the raw JSON string content of a base64 blob, fed in chunks of any size.
#[derive(Default)]
pub struct ContentDecoder {
    escape: Escape,
    /// Base64 characters not decoded yet.
    pending: Vec<u8>,
    decoded: Vec<u8>,
    /// Base64 characters decoded so far, for the position in an error.
    done: usize,
    error: Option<ContentError>,
}

impl ContentDecoder {
    pub fn new() -> Self {
        ContentDecoder::default()
    }

    /// The first error met, if any; after one, further input is ignored.
    pub fn error(&self) -> Option<&ContentError> {
        self.error.as_ref()
    }

    /// Consumes raw string content; decoded bytes go to `out` in order.
    pub fn feed(&mut self, mut raw: &[u8], out: &mut impl FnMut(&[u8])) {
        while !raw.is_empty() && self.error.is_none() {
            if self.escape == Escape::None {
                // The content is almost all plain base64: copy it in runs, up to the next escape.
                let run = memchr::memchr(b'\\', raw).unwrap_or(raw.len());
                self.push(&raw[..run], out);
                raw = &raw[run..];
                if raw.is_empty() {
                    break;
                }
                self.escape = Escape::Backslash;
                raw = &raw[1..];
                continue;
            }
            let b = raw[0];
            raw = &raw[1..];
            if let Some(c) = self.escaped(b) {
                self.push(&[c], out);
            }
        }
    }

    /// One byte of an escape sequence; the character it stands for once the sequence is complete.
    fn escaped(&mut self, b: u8) -> Option<u8> {
        match (self.escape, b) {
            (Escape::Backslash, b'u') => {
                self.escape = Escape::Unicode { digits: 0, value: 0 };
                None
            }
            (Escape::Backslash, c @ (b'/' | b'\\')) => {
                self.escape = Escape::None;
                Some(c)
            }
            (Escape::Unicode { digits, value }, hex) => {
                let Some(d) = (hex as char).to_digit(16) else {
                    self.fail(ContentError::BadEscape(format!("\\u with {:?}", hex as char)));
                    return None;
                };
                let value = value * 16 + d;
                if digits < 3 {
                    self.escape = Escape::Unicode { digits: digits + 1, value };
                    return None;
                }
                self.escape = Escape::None;
                match u8::try_from(value).ok().filter(u8::is_ascii) {
                    Some(c) => Some(c),
                    None => {
                        self.fail(ContentError::BadEscape(format!("\\u{value:04x}")));
                        None
                    }
                }
            }
            (_, other) => {
                self.fail(ContentError::BadEscape(format!("\\{}", other as char)));
                None
            }
        }
    }

    /// Base64 characters, decoded a batch at a time; the last quad is held back, since only the very last may carry
    /// padding.
    fn push(&mut self, chars: &[u8], out: &mut impl FnMut(&[u8])) {
        let mut chars = chars;
        if self.pending.is_empty() && chars.len() >= BATCH + 4 {
            // Nothing waiting: decode straight from the input, keeping back the last quad as `pending` would.
            let whole = (chars.len() - 4) / 4 * 4;
            let decoded = decode_into(&chars[..whole], false, self.done, &mut self.decoded);
            if !self.emit(decoded, whole, out) {
                return;
            }
            chars = &chars[whole..];
        }
        self.pending.extend_from_slice(chars);
        if self.pending.len() >= BATCH + 4 {
            let whole = (self.pending.len() - 4) / 4 * 4;
            self.decode(whole, out);
        }
    }

    /// Ready for another blob, keeping the buffers' memory.
    pub fn reset(&mut self) {
        self.escape = Escape::None;
        self.pending.clear();
        self.decoded.clear();
        self.error = None;
        self.done = 0;
    }

    /// The content has ended: decodes the rest.
    pub fn finish(mut self, out: &mut impl FnMut(&[u8])) -> Result<(), ContentError> {
        self.finish_blob(out)
    }

    /// [`ContentDecoder::finish`] for a decoder that goes on to the next blob after [`ContentDecoder::reset`].
    pub fn finish_blob(&mut self, out: &mut impl FnMut(&[u8])) -> Result<(), ContentError> {
        if self.error.is_none() && self.escape != Escape::None {
            self.error = Some(ContentError::BadEscape("an escape cut off at the end".into()));
        }
        if self.error.is_none() {
            let decoded = decode_into(&self.pending, true, self.done, &mut self.decoded);
            self.emit(decoded, self.pending.len(), out);
        }
        self.pending.clear();
        self.error.take().map_or(Ok(()), Err)
    }

    /// Decodes the first `chars` pending characters, which more characters follow.
    fn decode(&mut self, chars: usize, out: &mut impl FnMut(&[u8])) {
        let decoded = decode_into(&self.pending[..chars], false, self.done, &mut self.decoded);
        if self.emit(decoded, chars, out) {
            self.pending.drain(..chars);
        }
    }

    /// Hands on what `chars` characters decoded to, or records why they did not; whether they did.
    fn emit(&mut self, decoded: Result<(), ContentError>, chars: usize, out: &mut impl FnMut(&[u8])) -> bool {
        match decoded {
            Ok(()) => {
                self.done += chars;
                out(&self.decoded);
                true
            }
            Err(e) => {
                self.fail(e);
                false
            }
        }
    }

    fn fail(&mut self, e: ContentError) {
        self.error = Some(e);
        self.pending = Vec::new();
    }
}

/// Replaces `decoded` with the bytes `chars` stand for: whole quads, padded only if they are the `last` of the content
/// (a decoder accepts padding at the end of what it is given, which is not the end of the blob unless it is `last`).
/// `start` is the position of `chars` in the content, for the error.
fn decode_into(chars: &[u8], last: bool, start: usize, decoded: &mut Vec<u8>) -> Result<(), ContentError> {
    decoded.clear();
    if !last && chars.last() == Some(&b'=') {
        let at = start + chars.len() - 1;
        return Err(ContentError::NotBase64(format!("padding before the end of the content, at character {at}")));
    }
    if base64_simd::STANDARD.decode_append(chars, decoded).is_ok() {
        return Ok(());
    }
    let why = match base64::engine::general_purpose::STANDARD.decode(chars) {
        Err(e) => e.to_string(),
        Ok(_) => "refused by the vectorised decoder".into(),
    };
    // The `base64` crate counts from the start of `chars`.
    Err(ContentError::NotBase64(format!("{why} (in the characters from {start} on)")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_in_chunks(raw: &[u8], chunk: usize) -> Result<Vec<u8>, ContentError> {
        let mut d = ContentDecoder::new();
        let mut bytes = Vec::new();
        for c in raw.chunks(chunk) {
            d.feed(c, &mut |b| bytes.extend_from_slice(b));
        }
        d.finish(&mut |b| bytes.extend_from_slice(b)).map(|()| bytes)
    }

    #[test]
    fn plain_and_escaped_base64_decode_at_any_chunking() {
        let blob: Vec<u8> = (0..=255u8).cycle().take(3 * BATCH + 7).collect();
        let plain = base64::engine::general_purpose::STANDARD.encode(&blob);
        // What System.Text.Json's default encoder writes: `+` as `\u002B`; and `\/` as some encoders write `/`.
        let escaped = plain.replace('+', "\\u002B").replace('/', "\\/");
        for raw in [&plain, &escaped] {
            for chunk in [1, 3, 4, 5, 999, BATCH, raw.len()] {
                assert_eq!(decode_in_chunks(raw.as_bytes(), chunk).as_deref(), Ok(&blob[..]), "chunk {chunk}");
            }
        }
        assert_eq!(decode_in_chunks(b"", 1), Ok(Vec::new()));
    }

    #[test]
    fn what_is_not_base64_is_an_error() {
        for bad in [&b"abc"[..], b"ab=c", b"a\\nbc", b"ab\\u00e9c", b"abc\\", b"ab\\u00"] {
            assert!(decode_in_chunks(bad, 2).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn padding_before_the_end_is_an_error_wherever_the_pieces_end() {
        let quads = 2 * BATCH / 4 + 3;
        for padded in [0, 1, BATCH / 4 - 1, BATCH / 4, BATCH / 4 + 1, quads - 2] {
            let mut raw = b"QUJD".repeat(quads);
            raw[padded * 4..padded * 4 + 4].copy_from_slice(b"QQ==");
            for chunk in [1, 3, 4, 5, 999, BATCH, BATCH + 5, raw.len()] {
                assert!(decode_in_chunks(&raw, chunk).is_err(), "padding at quad {padded}, chunks of {chunk}");
            }
        }
        let mut last = b"QUJD".repeat(quads);
        last.extend_from_slice(b"QQ==");
        assert_eq!(decode_in_chunks(&last, 7).map(|b| b.len()), Ok(3 * quads + 1));
    }

    #[test]
    fn a_bad_character_deep_in_a_large_run_is_reported_with_its_offset() {
        let blob = vec![7u8; 3 * BATCH];
        let mut raw = base64::engine::general_purpose::STANDARD.encode(&blob).into_bytes();
        raw[BATCH + 9] = b'*';
        let err = decode_in_chunks(&raw, raw.len()).expect_err("`*` is not base64");
        assert_eq!(
            err,
            ContentError::NotBase64(format!("Invalid symbol 42, offset {}. (in the characters from 0 on)", BATCH + 9))
        );
        // Fed in pieces, the first BATCH characters decode, and the error names where the failing run starts.
        let err = decode_in_chunks(&raw, BATCH + 5).expect_err("`*` is not base64");
        assert_eq!(
            err,
            ContentError::NotBase64(format!("Invalid symbol 42, offset 9. (in the characters from {BATCH} on)"))
        );
    }
}
