//! The Functions host ↔ custom handler wire contract (functions-protocol.md §2–3).
//!
//! [`InvokeRequest`] is the envelope `{"Data": {...}, "Metadata": {...}}` with its decoders: JSON-quoted metadata
//! strings, `DequeueCount` as `"1"` or `1`, and the doubly JSON-encoded queue text. [`InvokeResponse`] is the
//! `{"Outputs", "Logs", "ReturnValue"}` object every answer carries. Blob envelopes are read by [`blob_envelope`],
//! which streams the body and skips the base64 content instead of holding it.

pub mod blob_content;
pub mod blob_envelope;

use axum::body::Body;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

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

/// Undoes one level of JSON string quoting if `s` is a JSON string literal; otherwise returns `s` as is.
pub fn unquote(s: &str) -> String {
    let t = s.trim();
    if t.len() >= 2 && t.starts_with('"') && t.ends_with('"') {
        if let Ok(inner) = serde_json::from_str::<String>(t) {
            return inner;
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
    /// An answer with no outputs and one log line for the host's per-invocation log. The host writes the line as it
    /// is, so controls and bidirectional characters are escaped ([`crate::escape`]).
    pub fn log(line: &str) -> Self {
        InvokeResponse { logs: vec![crate::escape::escaped(line).into_owned()], ..Default::default() }
    }

    /// Adds an output binding value. Queue outputs should be JSON objects: the host base64-decodes strings that
    /// happen to be valid base64 (functions-protocol.md §3.1).
    pub fn with_output(mut self, binding: &str, value: Value) -> Self {
        self.outputs.insert(binding.to_string(), value);
        self
    }

    /// Renders the body with a given status (non-2xx bodies are ignored by the host but stay well-formed).
    pub fn into_response_with(self, status: StatusCode) -> Response {
        let body = serde_json::to_vec(&self).expect("outputs, logs and a return value of JSON values serialize");
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

#[cfg(test)]
mod tests;
