//! The Functions host ↔ custom handler wire contract (functions-protocol.md §2–3).
//!
//! [`InvokeRequest`] is the envelope `{"Data": {...}, "Metadata": {...}}` with its decoders: JSON-quoted metadata
//! strings, `DequeueCount` as `"1"` or `1`, and the doubly JSON-encoded queue text. [`InvokeResponse`] is the
//! `{"Outputs", "Logs", "ReturnValue"}` object every answer carries. Blob envelopes are read by [`blob_envelope`],
//! which streams the body and skips the base64 content instead of holding it.

pub mod blob_envelope;

use axum::body::Body;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use std::borrow::Cow;

/// The header the host sets on every invocation.
pub const INVOCATION_ID_HEADER: &str = "x-azure-functions-invocationid";

/// An invocation envelope. Property names are PascalCase on the wire; lookups here are exact, as the host's are.
#[derive(Debug, Default, Deserialize)]
pub struct InvokeRequest {
    #[serde(rename = "Data", default)]
    pub data: Map<String, Value>,
    #[serde(rename = "Metadata", default)]
    pub metadata: Map<String, Value>,
}

/// Why an envelope could not be understood. These are the host's (or a hand-made request's) fault, never the user's.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvelopeError {
    #[error("the body is not a JSON envelope: {0}")]
    NotJson(String),
    #[error("`Data` has no trigger binding")]
    NoBinding,
    #[error("metadata `{0}` is missing or not a string")]
    MissingMetadata(&'static str),
    #[error("the trigger value is neither a string nor a JSON object")]
    BadTriggerValue,
}

impl InvokeRequest {
    /// Parses an envelope.
    pub fn from_slice(body: &[u8]) -> Result<Self, EnvelopeError> {
        serde_json::from_slice(body).map_err(|e| EnvelopeError::NotJson(e.to_string()))
    }

    /// A metadata string with the host's extra JSON quoting undone: `"\"x\""` and `"x"` both give `x`.
    pub fn metadata_str(&self, key: &str) -> Option<String> {
        match self.metadata.get(key)? {
            Value::String(s) => Some(unquote(s)),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }

    /// A metadata integer sent as a number or as a (possibly quoted) string, e.g. `DequeueCount`.
    pub fn metadata_u64(&self, key: &str) -> Option<u64> {
        match self.metadata.get(key)? {
            Value::Number(n) => n.as_u64(),
            Value::String(_) => self.metadata_str(key)?.trim().parse().ok(),
            _ => None,
        }
    }

    /// The trigger binding's value: `Data[name]`, or the only entry of `Data` when the name differs.
    pub fn binding(&self, name: &str) -> Option<&Value> {
        self.data.get(name).or_else(|| match self.data.len() {
            1 => self.data.values().next(),
            _ => None,
        })
    }

    /// The queue message text of the trigger binding `name`, with the host's second JSON encoding undone.
    ///
    /// The host sends the message text JSON-serialized once more (`hello` arrives as `"\"hello\""`). Tolerated too:
    /// a value that is not double-encoded (the docs' own sample) and an already-parsed JSON object.
    pub fn queue_text(&self, name: &str) -> Result<String, EnvelopeError> {
        match self.binding(name).ok_or(EnvelopeError::NoBinding)? {
            Value::String(s) => Ok(unquote(s)),
            obj @ Value::Object(_) => Ok(obj.to_string()),
            _ => Err(EnvelopeError::BadTriggerValue),
        }
    }
}

/// The queue message text of a QueueMonitor-style envelope, read without building the `Metadata` map: the hot path
/// of every check. Same rules as [`InvokeRequest::queue_text`].
pub fn queue_text(body: &[u8], binding: &str) -> Result<String, EnvelopeError> {
    #[derive(Deserialize)]
    struct Lean<'a> {
        #[serde(rename = "Data", borrow, default, deserialize_with = "entries")]
        data: Vec<(Cow<'a, str>, &'a RawValue)>,
    }
    let lean: Lean<'_> = serde_json::from_slice(body).map_err(|e| EnvelopeError::NotJson(e.to_string()))?;
    let raw = match lean.data.iter().find(|(k, _)| k == binding) {
        Some((_, v)) => *v,
        None if lean.data.len() == 1 => lean.data[0].1,
        None => return Err(EnvelopeError::NoBinding),
    };
    let text = raw.get();
    match text.as_bytes().first() {
        Some(b'"') => {
            let outer = json_str(text).map_err(|e| EnvelopeError::NotJson(e.to_string()))?;
            Ok(unquote(&outer))
        }
        Some(b'{') => Ok(text.to_string()),
        _ => Err(EnvelopeError::BadTriggerValue),
    }
}

/// A JSON object's entries in order, keys borrowed when they have no escapes (no map is built for one binding).
fn entries<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<(Cow<'de, str>, &'de RawValue)>, D::Error> {
    struct Entries;
    impl<'de> serde::de::Visitor<'de> for Entries {
        type Value = Vec<(Cow<'de, str>, &'de RawValue)>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::with_capacity(map.size_hint().unwrap_or(1));
            while let Some(key) = map.next_key::<BorrowedStr<'de>>()? {
                out.push((key.0, map.next_value()?));
            }
            Ok(out)
        }
    }
    d.deserialize_map(Entries)
}

/// A JSON string, borrowed from the input when it has no escapes (serde's own `Cow<str>` always copies).
struct BorrowedStr<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for BorrowedStr<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Str;
        impl<'de> serde::de::Visitor<'de> for Str {
            type Value = BorrowedStr<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<BorrowedStr<'de>, E> {
                Ok(BorrowedStr(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<BorrowedStr<'de>, E> {
                Ok(BorrowedStr(Cow::Owned(v.to_string())))
            }
        }
        d.deserialize_str(Str)
    }
}

/// The value of a JSON string literal, borrowed from `text` when it has no escapes.
fn json_str(text: &str) -> serde_json::Result<Cow<'_, str>> {
    match plain_json_str(text) {
        Some(value) => Ok(value),
        None => serde_json::from_str::<BorrowedStr<'_>>(text).map(|k| k.0),
    }
}

/// The fast path of [`json_str`], for the queue text of every check: a literal whose only escapes are `\"`, `\\` and
/// `\/` (what a JSON encoder writes for a JSON message), decoded in one pass. `None` for anything else, which
/// serde_json then decodes or refuses: other escapes, control characters, a stray quote, text around the literal.
fn plain_json_str(text: &str) -> Option<Cow<'_, str>> {
    let inner = text.strip_prefix('"')?.strip_suffix('"')?;
    let bytes = inner.as_bytes();
    // One pass, run by run. Escapes are dense in a doubly encoded message (every few bytes), so a plain loop beats a
    // memchr call per escape.
    let special = |b: &u8| matches!(*b, b'\\' | b'"' | 0..=0x1f);
    let Some(first) = bytes.iter().position(special) else {
        return Some(Cow::Borrowed(inner));
    };
    let mut out = Vec::with_capacity(bytes.len());
    let (mut rest, mut at) = (bytes, first);
    loop {
        out.extend_from_slice(&rest[..at]);
        match &rest[at..] {
            [] => break,
            [b'\\', e @ (b'"' | b'\\' | b'/'), tail @ ..] => {
                out.push(*e);
                rest = tail;
            }
            // A raw quote or control character, another escape, or a backslash at the end.
            _ => return None,
        }
        at = rest.iter().position(special).unwrap_or(rest.len());
    }
    // Only ASCII escapes were removed from valid UTF-8, so this cannot fail; checked anyway rather than assumed.
    String::from_utf8(out).ok().map(Cow::Owned)
}

/// Undoes one level of JSON string quoting if `s` is a JSON string literal; otherwise returns `s` as is.
pub fn unquote(s: &str) -> String {
    let t = s.trim();
    if t.len() >= 2 && t.starts_with('"') && t.ends_with('"') {
        if let Ok(inner) = json_str(t) {
            return inner.into_owned();
        }
    }
    s.to_string()
}

/// The answer to every invocation: a JSON object, PascalCase, always with a body (functions-protocol.md §3).
#[derive(Debug, Default, Serialize, PartialEq)]
pub struct InvokeResponse {
    #[serde(rename = "Outputs")]
    pub outputs: Map<String, Value>,
    #[serde(rename = "Logs")]
    pub logs: Vec<String>,
    #[serde(rename = "ReturnValue")]
    pub return_value: Value,
}

impl InvokeResponse {
    /// An answer with no outputs and one log line for the host's per-invocation log.
    pub fn log(line: impl Into<String>) -> Self {
        InvokeResponse { logs: vec![line.into()], ..Default::default() }
    }

    /// Adds an output binding value. Queue outputs should be JSON objects: the host base64-decodes strings that
    /// happen to be valid base64 (functions-protocol.md §3.1).
    pub fn with_output(mut self, binding: &str, value: Value) -> Self {
        self.outputs.insert(binding.to_string(), value);
        self
    }

    /// The same bytes as `serde_json::to_writer(out, self)`, with the log lines (most of the body) copied in one
    /// piece when they need no escaping, rather than byte by byte.
    fn write_json(&self, out: &mut Vec<u8>) -> serde_json::Result<()> {
        out.extend_from_slice(b"{\"Outputs\":");
        serde_json::to_writer(&mut *out, &self.outputs)?;
        out.extend_from_slice(b",\"Logs\":[");
        for (i, line) in self.logs.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_json_str(out, line)?;
        }
        out.extend_from_slice(b"],\"ReturnValue\":");
        serde_json::to_writer(&mut *out, &self.return_value)?;
        out.push(b'}');
        Ok(())
    }

    /// Renders the body with a given status (non-2xx bodies are ignored by the host but stay well-formed).
    pub fn into_response_with(self, status: StatusCode) -> Response {
        // Sized up front: the log lines dominate the body, and growing the buffer would copy them again.
        let mut body = Vec::with_capacity(64 + self.logs.iter().map(|l| l.len() + 8).sum::<usize>());
        if self.write_json(&mut body).is_err() {
            body = b"{\"Outputs\":{},\"Logs\":[],\"ReturnValue\":null}".to_vec();
        }
        let mut response = Response::new(Body::from(body));
        *response.status_mut() = status;
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        response
    }
}

impl IntoResponse for InvokeResponse {
    fn into_response(self) -> Response {
        self.into_response_with(StatusCode::OK)
    }
}

/// Writes `s` as a JSON string literal, exactly as serde_json would: only control characters, quotes and backslashes
/// are escaped, so a string without them is copied as is. The check has no early exit, so it compiles to vector code.
fn write_json_str(out: &mut Vec<u8>, s: &str) -> serde_json::Result<()> {
    if s.bytes().fold(false, |found, b| found | (b < 0x20) | (b == b'"') | (b == b'\\')) {
        return serde_json::to_writer(out, s);
    }
    out.reserve(s.len() + 2);
    out.push(b'"');
    out.extend_from_slice(s.as_bytes());
    out.push(b'"');
    Ok(())
}

#[cfg(test)]
mod tests;
