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
