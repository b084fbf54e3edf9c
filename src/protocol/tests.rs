//! Envelope decoding against the exact examples of functions-protocol.md §2.5.

use super::*;

/// The QueueMonitor example envelope of §2.5, compact as the host sends it.
pub const QUEUE_ENVELOPE: &str = r#"{"Data":{"job":"\"{\\\"batchId\\\":\\\"batch_72a2792ef7d24ba7b82c7fe4a37e379f\\\",\\\"blob\\\":\\\"batch-input/job1.jsonl\\\",\\\"attempt\\\":1}\""},"Metadata":{"DequeueCount":"1","ExpirationTime":"2025-01-08T00:00:00+00:00","Id":"\"6c5d8a4e-2f1b-4c3d-9e8f-7a6b5c4d3e2f\"","InsertionTime":"2025-01-01T00:00:00+00:00","NextVisibleTime":"2025-01-01T00:15:00+00:00","PopReceipt":"\"AgAAAAMAAAAAAAAAAgtnj8x+1QE=\"","batchId":"\"batch_72a2792ef7d24ba7b82c7fe4a37e379f\"","blob":"\"batch-input/job1.jsonl\"","attempt":"\"1\"","sys":{"MethodName":"QueueMonitor","UtcNow":"2025-01-01T00:05:00.1234567Z","RandGuid":"5e4d3c2b-1a09-4f8e-8d7c-6b5a49382716"}}}"#;

/// The docs' own queue sample, which disagrees with the host code on quoting.
const DOCS_QUEUE_SAMPLE: &str = r#"{"Data":{"myQueueItem":"{ message: \"Message sent\" }"},
 "Metadata":{"DequeueCount":1,"ExpirationTime":"2019-10-16T17:58:31+00:00","Id":"800ae4b3-bdd2-4c08-badd-f08e5a34b865",
  "InsertionTime":"2019-10-09T17:58:31+00:00","NextVisibleTime":"2019-10-09T18:08:32+00:00","PopReceipt":"AgAAAAMAAAAAAAAAAgtnj8x+1QE=",
  "sys":{"MethodName":"QueueTrigger","UtcNow":"2019-10-09T17:58:32.2205399Z","RandGuid":"24ad4c06-24ad-4e5b-8294-3da9714877e9"}}}"#;

#[test]
fn queue_envelope_from_the_host_code() {
    let req = InvokeRequest::from_slice(QUEUE_ENVELOPE.as_bytes()).expect("parses");
    assert_eq!(
        req.queue_text("job").expect("text"),
        r#"{"batchId":"batch_72a2792ef7d24ba7b82c7fe4a37e379f","blob":"batch-input/job1.jsonl","attempt":1}"#
    );
    assert_eq!(req.metadata_u64("DequeueCount"), Some(1));
    assert_eq!(req.metadata_str("Id").as_deref(), Some("6c5d8a4e-2f1b-4c3d-9e8f-7a6b5c4d3e2f"));
    assert_eq!(req.metadata_str("PopReceipt").as_deref(), Some("AgAAAAMAAAAAAAAAAgtnj8x+1QE="));
    // Message fields copied into Metadata are quoted like any string, numbers included.
    assert_eq!(req.metadata_str("attempt").as_deref(), Some("1"));
    assert_eq!(req.metadata_str("InsertionTime").as_deref(), Some("2025-01-01T00:00:00+00:00"));
}

#[test]
fn queue_sample_from_the_docs() {
    let req = InvokeRequest::from_slice(DOCS_QUEUE_SAMPLE.as_bytes()).expect("parses");
    // Different binding name, text not double-encoded, unquoted Id, numeric DequeueCount.
    assert_eq!(req.queue_text("job").expect("text"), r#"{ message: "Message sent" }"#);
    assert_eq!(req.metadata_u64("DequeueCount"), Some(1));
    assert_eq!(req.metadata_str("Id").as_deref(), Some("800ae4b3-bdd2-4c08-badd-f08e5a34b865"));
}

#[test]
fn plain_and_object_queue_values() {
    let plain = InvokeRequest::from_slice(br#"{"Data":{"job":"\"batch_abc\""},"Metadata":{}}"#).expect("parses");
    assert_eq!(plain.queue_text("job").expect("text"), "batch_abc");
    let obj = InvokeRequest::from_slice(br#"{"Data":{"job":{"batchId":"b1"}},"Metadata":{}}"#).expect("parses");
    assert_eq!(obj.queue_text("job").expect("text"), r#"{"batchId":"b1"}"#);
    let none = InvokeRequest::from_slice(br#"{"Data":{},"Metadata":{}}"#).expect("parses");
    assert_eq!(none.queue_text("job"), Err(EnvelopeError::NoBinding));
    let num = InvokeRequest::from_slice(br#"{"Data":{"job":5}}"#).expect("parses");
    assert_eq!(num.queue_text("job"), Err(EnvelopeError::BadTriggerValue));
    assert!(InvokeRequest::from_slice(b"[1,2]").is_err());
    assert!(InvokeRequest::from_slice(b"").is_err());
}

#[test]
fn the_lean_reader_agrees_with_the_full_one() {
    for body in [
        QUEUE_ENVELOPE,
        DOCS_QUEUE_SAMPLE,
        r#"{"Data":{"job":"\"batch_abc\""}}"#,
        r#"{"Data":{"job":{"batchId":"b1"}}}"#,
        r#"{"Data":{}}"#,
        r#"{"Data":{"job":5}}"#,
        r#"{"Data":{"a":"1","b":"2"}}"#,
        "[1]",
        "",
    ] {
        let full = InvokeRequest::from_slice(body.as_bytes()).and_then(|r| r.queue_text("job"));
        let lean = queue_text(body.as_bytes(), "job");
        assert_eq!(full.is_ok(), lean.is_ok(), "{body}");
        if let (Ok(f), Ok(l)) = (&full, &lean) {
            let (f, l): (serde_json::Value, serde_json::Value) = (
                serde_json::from_str(f).unwrap_or(Value::String(f.clone())),
                serde_json::from_str(l).unwrap_or(Value::String(l.clone())),
            );
            assert_eq!(f, l, "{body}");
        }
    }
}

#[test]
fn unquote_only_undoes_real_string_literals() {
    assert_eq!(unquote(r#""\"x\"""#), r#""x""#);
    assert_eq!(unquote(r#""x""#), "x");
    assert_eq!(unquote("x"), "x");
    assert_eq!(unquote(r#""unterminated"#), r#""unterminated"#);
    assert_eq!(unquote(r#""a" + "b""#), r#""a" + "b""#);
}

#[test]
fn response_shape_is_what_the_host_deserializes() {
    let r = InvokeResponse::log("hi").with_output("outQueue", serde_json::json!({"batchId": "b"}));
    let v = serde_json::to_value(&r).expect("serializes");
    assert_eq!(v, serde_json::json!({"Outputs": {"outQueue": {"batchId": "b"}}, "Logs": ["hi"], "ReturnValue": null}));
    let resp = InvokeResponse::default().into_response();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/json");
}

#[test]
fn the_fast_string_decoder_agrees_with_serde_json() {
    // Every literal a JSON encoder writes for a message, and near misses, from a small alphabet of awkward bytes.
    let alphabet = ["\"", "\\", "/", "\\\"", "\\\\", "\\/", "\\n", "\\u0041", "\\x", "a", "é", "\n", "\u{1}", " "];
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut fast_paths = 0;
    for _ in 0..20_000 {
        let mut text = String::from("\"");
        for _ in 0..(seed % 9) {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            text.push_str(alphabet[(seed % alphabet.len() as u64) as usize]);
        }
        if seed % 5 != 0 {
            text.push('"');
        }
        let expected = serde_json::from_str::<String>(&text).ok();
        assert_eq!(json_str(&text).ok().map(|c| c.into_owned()), expected, "{text:?}");
        if let Some(fast) = plain_json_str(&text) {
            fast_paths += 1;
            assert_eq!(Some(fast.into_owned()), expected, "{text:?}");
        }
    }
    assert!(fast_paths > 1_000, "the fast path was taken only {fast_paths} times");
    let doubly = r#""{\"batchId\":\"batch_1\",\"blob\":\"batch-input/a\/b.jsonl\"}""#;
    assert_eq!(plain_json_str(doubly).as_deref(), Some(r#"{"batchId":"batch_1","blob":"batch-input/a/b.jsonl"}"#));
}

#[test]
fn the_response_body_is_byte_for_byte_what_serde_json_writes() {
    let lines = ["batch b1 for batch-input/a.jsonl ended completed", "quote \" backslash \\ tab \t nul \u{0} é /", ""];
    for logs in [vec![], vec![lines[0].to_string()], lines.iter().map(|l| l.to_string()).collect()] {
        let r = InvokeResponse { logs, ..Default::default() }
            .with_output("outQueue", serde_json::json!({"batchId": "b\"1", "attempt": 2}));
        let mut fast = Vec::new();
        r.write_json(&mut fast).expect("writes");
        assert_eq!(String::from_utf8(fast).expect("utf-8"), serde_json::to_string(&r).expect("serializes"));
    }
}
