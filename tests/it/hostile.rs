//! Forged, repeated or hostile input never gets further than a clear refusal (issue 20): the handler checks what an
//! invocation or a message claims against storage and the job record, escapes what it logs, and bounds what it reads.

use std::time::Duration;

use blob_batch_monitor::jobs::message::{MonitorMessage, SubmitMessage, POISON_QUEUE};
use blob_batch_monitor::jobs::record::RecordState;
use devstack::batch_emulator::Faults;
use devstack::host_emulator::envelope::{blob_envelope, BlobInfo};
use reqwest::StatusCode;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{bounded, sample_jsonl, spawn_app, spawn_app_with, TestApp, TestOptions};

/// A BlobMonitor envelope for `url` as the trigger would send it for `content`.
fn envelope_for(url: &str, name: &str, content: &[u8]) -> Vec<u8> {
    let info = BlobInfo { url, name, etag: "\"0x1\"", last_modified: "", content_type: "application/jsonl" };
    blob_envelope("BlobMonitor", "inputBlob", content, &info)
}

/// Asserts that nothing was created: no job, no record.
async fn assert_nothing_made(app: &TestApp) {
    assert!(app.emulator.world.jobs().is_empty(), "{:?}", app.emulator.world.jobs());
    let records = app.storage.list_all_blobs("batch-records", None).await;
    assert!(records.map_or(true, |r| r.is_empty()), "no job record");
}

#[tokio::test]
async fn a_blob_invocation_without_content_or_outside_the_input_container_makes_no_job() {
    bounded(async {
        let app = spawn_app().await;
        // No content: nothing could be checked, so nothing is submitted (this blob is not even JSON).
        app.upload("notjson.jsonl", b"not json at all").await;
        let uri = app.blob_url("notjson.jsonl");
        let empty = json!({"Data": {}, "Metadata": {"Uri": format!("\"{uri}\""), "name": "\"notjson.jsonl\""}});
        let answer = app.post("BlobMonitor", empty.to_string()).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{:?}", answer.body);
        assert_nothing_made(&app).await;
        // A path that climbs out of batch-input, plainly or percent-encoded.
        let root = app.account.blob_endpoint.as_str().trim_end_matches('/');
        for climb in ["..", "%2e%2e", "%2E."] {
            let url = format!("{root}/batch-input/{climb}/batch-records/batch-input/x.jsonl/0x9.json");
            let answer = app.post("BlobMonitor", envelope_for(&url, "x", sample_jsonl(1).as_bytes())).await;
            assert_eq!(answer.status, StatusCode::OK);
            assert!(answer.logs().contains("not a blob of `batch-input`"), "{climb}: {}", answer.logs());
        }
        assert!(app.emulator.world.jobs().is_empty());
        assert_eq!(app.peek(POISON_QUEUE).await.len(), 3, "each refusal is dead-lettered with its reason");
    })
    .await;
}

#[tokio::test]
async fn a_submission_is_taken_only_for_a_blob_that_exists_with_its_etag() {
    bounded(async {
        let app = spawn_app().await;
        let etag = app.upload("real.jsonl", sample_jsonl(1).as_bytes()).await.trim_matches('"').to_string();
        let url = app.blob_url("real.jsonl");
        let submit = |url: &str, blob: &str, etag: &str| {
            json!({"submit": url, "blob": blob, "etag": etag, "attempt": 0}).to_string()
        };
        for (forged, why) in [
            (submit(&url, "batch-input/other.jsonl", &etag), "its blob field says"),
            (
                submit(&app.blob_url("missing.jsonl"), "batch-input/missing.jsonl", "0x8D00000000000001"),
                "no longer exists",
            ),
            (submit(&url, "batch-input/real.jsonl", "0x8D00000000000001"), "was rewritten"),
            (submit(&app.blob_url("../batch-records/x"), "batch-input/../batch-records/x", &etag), "not a blob of"),
        ] {
            let answer = app.invoke_queue(&forged, 1).await;
            assert_eq!(answer.status, StatusCode::OK);
            assert!(answer.logs().contains(why), "{why}: {}", answer.logs());
        }
        assert_nothing_made(&app).await;
        assert_eq!(app.peek(POISON_QUEUE).await.len(), 4);
        // The genuine one goes through.
        let answer = app.invoke_queue(&submit(&url, "batch-input/real.jsonl", &etag), 1).await;
        assert!(answer.logs().contains("created batch"), "{}", answer.logs());
    })
    .await;
}

#[tokio::test]
async fn a_deferred_submission_of_a_blob_rewritten_meanwhile_ends_its_record_dead_lettered() {
    bounded(async {
        let app = spawn_app().await;
        app.emulator.world.set_faults(Faults { token_limit_creates: 1, ..Faults::default() });
        let answer = app.invoke_blob("moving.jsonl", sample_jsonl(1).as_bytes()).await;
        assert!(answer.logs().contains("deferred"), "{}", answer.logs());
        let old = app.record("moving.jsonl").await.expect("record");
        app.upload("moving.jsonl", sample_jsonl(2).as_bytes()).await;
        // The deferred submission as the app put it (it waits invisibly on the queue).
        let submit = SubmitMessage {
            submit: old.blob_url.clone(),
            blob: old.blob.clone(),
            etag: old.etag.clone(),
            attempt: 1,
            parent: None,
        };
        let answer = app.invoke_queue(&submit.to_json(), 1).await;
        assert!(answer.logs().contains("was rewritten"), "{}", answer.logs());
        let after = app.record_of("moving.jsonl", &old.etag).await.expect("the old version's record");
        assert_eq!(after.state, RecordState::DeadLettered);
        assert!(app.emulator.world.jobs().is_empty());
        let events = app.peek("batch-completed").await;
        assert!(events.iter().any(|e| e.contains("dead-lettered") && e.contains(&old.etag)), "{events:?}");
    })
    .await;
}

#[tokio::test]
async fn counts_in_a_check_message_are_checked_against_the_record() {
    bounded(async {
        let app = spawn_app().await;
        let first = app.create_job("counted.jsonl").await;
        // A message claiming 29 failures, then one 503: the record has seen none, so this is the first.
        app.emulator.world.set_faults(Faults { unavailable_percent: 100, ..Faults::default() });
        let claimed = MonitorMessage { failures: 29, ..first.clone() };
        let answer = app.invoke_queue(&claimed.to_json(), 1).await;
        assert!(answer.logs().contains("status check of"), "{}", answer.logs());
        assert!(app.peek(POISON_QUEUE).await.is_empty(), "not dead-lettered after one failure");
        assert_eq!(app.record("counted.jsonl").await.expect("record").failures, 1);
        app.emulator.world.set_faults(Faults::default());
        // A check far ahead of the record was never put by the app: it cannot take over the chain.
        let ahead = MonitorMessage { attempt: 1000, ..first.clone() };
        let answer = app.invoke_queue(&ahead.to_json(), 1).await;
        assert!(answer.logs().contains("ahead of the record"), "{}", answer.logs());
        let record = app.record("counted.jsonl").await.expect("record");
        assert_eq!(record.checks, 1, "the forged check did not count");
        let next = MonitorMessage { attempt: 1, failures: 1, ..first };
        assert!(app.invoke_queue(&next.to_json(), 1).await.logs().contains("next check"));
    })
    .await;
}

#[tokio::test]
async fn control_and_bidi_characters_reach_the_logs_escaped() {
    bounded(async {
        let app = spawn_app_with(TestOptions::quick_jobs()).await;
        // A request without `messages` passes the pre-flight check and fails at the service: the final report
        // quotes its custom_id, as the error file gives it.
        let id = json_escaped("evil\nINFO forged line\r\u{1b}[31m\u{0}\u{202e}gnp");
        let line = format!(
            "{{\"custom_id\":\"{id}\",\"method\":\"POST\",\"url\":\"/chat/completions\",\"body\":{{\"model\":\"gpt-4o-batch\"}}}}\n"
        );
        let message = app.submit("rtl-\u{202e}gnp.jsonl", line.as_bytes()).await;
        app.wait_until_ended(&message.batch_id).await;
        let answer = app.invoke_queue(&message.to_json(), 1).await;
        let logs = answer.body["Logs"].as_array().expect("logs").clone();
        assert!(!logs.is_empty());
        for entry in &logs {
            let entry = entry.as_str().expect("a string");
            assert!(!entry.chars().any(|c| c.is_control() || c == '\u{202e}'), "{entry:?}");
        }
        let all = answer.logs();
        assert!(all.contains("evil\\nINFO forged line\\r\\u{1b}[31m\\u{0}\\u{202e}gnp"), "{all}");
    })
    .await;
}

/// `s` as the inside of a JSON string.
fn json_escaped(s: &str) -> String {
    let quoted = serde_json::to_string(s).expect("json");
    quoted[1..quoted.len() - 1].to_string()
}

#[tokio::test]
async fn connections_that_send_slowly_are_closed() {
    bounded(async {
        let deadlines = blob_batch_monitor::serve::Deadlines {
            headers: Duration::from_millis(500),
            body_idle: Duration::from_millis(500),
        };
        let app = spawn_app_with(TestOptions { deadlines, ..TestOptions::default() }).await;
        // Headers that never end.
        let mut slow = tokio::net::TcpStream::connect(app.addr).await.expect("connect");
        slow.write_all(b"POST /QueueMonitor HTTP/1.1\r\nHost: 127.0.0.1\r\n").await.expect("write");
        let mut answer = Vec::new();
        slow.read_to_end(&mut answer).await.expect("read");
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 408"), "the connection was closed: {answer}");
        // A body that stops halfway.
        let mut slow = tokio::net::TcpStream::connect(app.addr).await.expect("connect");
        slow.write_all(b"POST /BlobMonitor HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n\r\n{\"Data\":")
            .await
            .expect("write");
        let mut answer = Vec::new();
        slow.read_to_end(&mut answer).await.expect("read");
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.is_empty() || !answer.starts_with("HTTP/1.1 2"), "no success for half a body: {answer}");
    })
    .await;
}
