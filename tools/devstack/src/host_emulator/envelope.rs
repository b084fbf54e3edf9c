//! Invocation envelopes exactly as the host builds them (functions-protocol.md §2), and the request headers.
//!
//! Strings in `Metadata` are JSON-quoted inside a JSON string, integers travel as their text, dates as ISO strings,
//! objects as objects; the blob is base64 in `Data`; queue text is JSON-serialized once more, and the fields of a
//! JSON message are copied into `Metadata` (overwriting same-named keys).

use base64::Engine;
use serde_json::{json, Map, Value};

/// The host version the emulator claims in headers.
pub const HOST_VERSION: &str = "4.1037.0.0";

/// A string metadata value, quoted the way the host quotes it.
pub fn quoted(s: &str) -> Value {
    Value::String(Value::String(s.to_string()).to_string())
}

fn sys(method: &str) -> Value {
    json!({"MethodName": method, "UtcNow": iso_now(true), "RandGuid": guid()})
}

/// What the blob trigger knows of the blob.
#[derive(Clone, Debug)]
pub struct BlobInfo<'a> {
    pub url: &'a str,
    pub name: &'a str,
    pub etag: &'a str,
    pub last_modified: &'a str,
    pub content_type: &'a str,
}

/// The BlobMonitor-style envelope: the whole blob, base64, under `Data.<binding>`.
pub fn blob_envelope(function: &str, binding: &str, content: &[u8], blob: &BlobInfo<'_>) -> Vec<u8> {
    let b64 = base64::engine::general_purpose::STANDARD.encode(content);
    let body = json!({
        "Data": {binding: b64},
        "Metadata": {
            "Uri": quoted(blob.url),
            "Properties": {
                "LastModified": blob.last_modified, "ContentLength": content.len(), "ContentType": blob.content_type,
                "ETag": blob.etag, "BlobType": 0, "LeaseState": 0, "LeaseStatus": 1, "Metadata": {}
            },
            "Metadata": {},
            "name": quoted(blob.name),
            "sys": sys(function),
        }
    });
    body.to_string().into_bytes()
}

/// What the queue trigger knows of the message.
#[derive(Clone, Debug)]
pub struct QueueInfo<'a> {
    pub id: &'a str,
    pub pop_receipt: &'a str,
    pub dequeue_count: u32,
    pub insertion_time: &'a str,
    pub expiration_time: &'a str,
    pub next_visible_time: &'a str,
}

/// The QueueMonitor-style envelope for message `text` (already decoded from the storage encoding).
pub fn queue_envelope(function: &str, binding: &str, text: &[u8], binary: bool, msg: &QueueInfo<'_>) -> Vec<u8> {
    let text_str = String::from_utf8_lossy(text);
    let data = if binary {
        Value::String(base64::engine::general_purpose::STANDARD.encode(text))
    } else {
        // Serialized once more: `hello` travels as "\"hello\"".
        Value::String(Value::String(text_str.to_string()).to_string())
    };
    let mut metadata = Map::new();
    metadata.insert("DequeueCount".into(), Value::String(msg.dequeue_count.to_string()));
    metadata.insert("ExpirationTime".into(), Value::String(msg.expiration_time.into()));
    metadata.insert("Id".into(), quoted(msg.id));
    metadata.insert("InsertionTime".into(), Value::String(msg.insertion_time.into()));
    metadata.insert("NextVisibleTime".into(), Value::String(msg.next_visible_time.into()));
    metadata.insert("PopReceipt".into(), quoted(msg.pop_receipt));
    metadata.insert("sys".into(), sys(function));
    let trimmed = text_str.trim();
    if !binary && trimmed.starts_with('{') && trimmed.ends_with('}') {
        if let Ok(Value::Object(fields)) = serde_json::from_str::<Value>(trimmed) {
            for (k, v) in fields {
                let value = match v {
                    Value::Array(_) | Value::Null => continue,
                    obj @ Value::Object(_) => obj,
                    Value::String(s) => quoted(&s),
                    // .NET's `ToString`: `True` / `False`.
                    Value::Bool(b) => quoted(if b { "True" } else { "False" }),
                    other => quoted(&other.to_string()),
                };
                // The binding data dictionary ignores case: a field overwrites a same-named key, which keeps its name.
                let key = metadata.keys().find(|existing| existing.eq_ignore_ascii_case(&k)).cloned().unwrap_or(k);
                metadata.insert(key, value);
            }
        }
    }
    json!({"Data": {binding: data}, "Metadata": metadata}).to_string().into_bytes()
}

/// RFC 3339 UTC time, with or without 7 fractional digits (the host's `UtcNow` has them, binding dates do not).
pub fn iso_now(fraction: bool) -> String {
    iso(std::time::SystemTime::now(), fraction)
}

/// Formats a time as `YYYY-MM-DDTHH:MM:SS[.fffffff]Z` (or `+00:00` without fraction, as binding dates are sent).
pub fn iso(t: std::time::SystemTime, fraction: bool) -> String {
    let seconds = humantime::format_rfc3339_seconds(t).to_string();
    let base = seconds.trim_end_matches('Z');
    if fraction {
        let nanos = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default().subsec_nanos();
        format!("{base}.{:07}Z", nanos / 100)
    } else {
        format!("{base}+00:00")
    }
}

/// Converts an RFC 1123 date (as storage sends) to the host's ISO form; unparseable input is passed through.
pub fn iso_from_http_date(s: &str) -> String {
    httpdate::parse_http_date(s).map_or_else(|_| s.to_string(), |t| iso(t, false))
}

/// A random GUID for invocation ids and `RandGuid`.
pub fn guid() -> String {
    uuid::Uuid::new_v4().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use blob_batch_monitor::protocol::InvokeRequest;

    #[test]
    fn queue_envelope_matches_the_documented_example() {
        let text =
            br#"{"batchId":"batch_72a2792ef7d24ba7b82c7fe4a37e379f","blob":"batch-input/job1.jsonl","attempt":1}"#;
        let info = QueueInfo {
            id: "6c5d8a4e-2f1b-4c3d-9e8f-7a6b5c4d3e2f",
            pop_receipt: "AgAAAAMAAAAAAAAAAgtnj8x+1QE=",
            dequeue_count: 1,
            insertion_time: "2025-01-01T00:00:00+00:00",
            expiration_time: "2025-01-08T00:00:00+00:00",
            next_visible_time: "2025-01-01T00:15:00+00:00",
        };
        let v: Value =
            serde_json::from_slice(&queue_envelope("QueueMonitor", "job", text, false, &info)).expect("json");
        assert_eq!(v["Data"]["job"], "\"{\\\"batchId\\\":\\\"batch_72a2792ef7d24ba7b82c7fe4a37e379f\\\",\\\"blob\\\":\\\"batch-input/job1.jsonl\\\",\\\"attempt\\\":1}\"");
        assert_eq!(v["Metadata"]["DequeueCount"], "1");
        assert_eq!(v["Metadata"]["Id"], "\"6c5d8a4e-2f1b-4c3d-9e8f-7a6b5c4d3e2f\"");
        assert_eq!(v["Metadata"]["attempt"], "\"1\"");
        assert_eq!(v["Metadata"]["batchId"], "\"batch_72a2792ef7d24ba7b82c7fe4a37e379f\"");
        // And the handler's decoder reads it back.
        let req = InvokeRequest::from_slice(v.to_string().as_bytes()).expect("parses");
        assert_eq!(req.queue_text("job").expect("text").as_bytes(), text);
    }

    /// A delivered message's properties: id `real`, pop receipt `p`.
    fn message_info() -> QueueInfo<'static> {
        QueueInfo {
            id: "real",
            pop_receipt: "p",
            dequeue_count: 2,
            insertion_time: "",
            expiration_time: "",
            next_visible_time: "",
        }
    }

    #[test]
    fn message_fields_overwrite_metadata_keys() {
        let info = message_info();
        let v: Value =
            serde_json::from_slice(&queue_envelope("Q", "job", br#"{"Id":"fake","n":{"a":1},"l":[1]}"#, false, &info))
                .expect("json");
        assert_eq!(v["Metadata"]["Id"], "\"fake\"");
        assert_eq!(v["Metadata"]["n"], json!({"a": 1}));
        assert!(v["Metadata"].get("l").is_none());
    }

    #[test]
    fn message_fields_match_keys_ignoring_case_write_dotnet_booleans_and_skip_nulls() {
        let info = message_info();
        let text = br#"{"id":"fake","popreceipt":null,"ok":true,"no":false,"n":1,"x":null}"#;
        let v: Value = serde_json::from_slice(&queue_envelope("Q", "job", text, false, &info)).expect("json");
        let metadata = v["Metadata"].as_object().expect("object");
        assert_eq!(metadata["Id"], "\"fake\"", "`id` overwrites `Id`, which keeps its name");
        assert!(!metadata.contains_key("id"));
        assert_eq!(metadata["PopReceipt"], "\"p\"", "a null field is skipped, not copied");
        assert!(!metadata.contains_key("x"));
        assert_eq!((metadata["ok"].clone(), metadata["no"].clone()), (json!("\"True\""), json!("\"False\"")));
        assert_eq!(metadata["n"], "\"1\"");
    }

    #[test]
    fn blob_envelope_is_base64_and_quoted() {
        let info = BlobInfo {
            url: "http://127.0.0.1:1/acct/batch-input/a b.jsonl",
            name: "a b.jsonl",
            etag: "\"0x1\"",
            last_modified: "2025-01-01T00:00:00+00:00",
            content_type: "application/octet-stream",
        };
        let v: Value =
            serde_json::from_slice(&blob_envelope("BlobMonitor", "inputBlob", b"hi\n", &info)).expect("json");
        assert_eq!(v["Data"]["inputBlob"], "aGkK");
        assert_eq!(v["Metadata"]["Uri"], "\"http://127.0.0.1:1/acct/batch-input/a b.jsonl\"");
        assert_eq!(v["Metadata"]["name"], "\"a b.jsonl\"");
    }

    #[test]
    fn dates() {
        assert_eq!(iso_from_http_date("Sat, 28 Nov 2026 10:27:12 GMT"), "2026-11-28T10:27:12+00:00");
        assert_eq!(iso(std::time::UNIX_EPOCH, true), "1970-01-01T00:00:00.0000000Z");
        assert_eq!(iso_from_http_date("garbage"), "garbage");
    }
}
