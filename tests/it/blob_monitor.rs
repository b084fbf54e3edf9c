//! BlobMonitor against a real Azurite and the batch emulator.

use std::time::Duration;

use blob_batch_monitor::jobs::message::{MONITOR_QUEUE, POISON_QUEUE};
use blob_batch_monitor::jobs::record::RecordState;
use devstack::batch_emulator::Faults;
use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{bounded, sample_jsonl, spawn_app, spawn_app_with, TestOptions};

#[tokio::test]
async fn creates_a_blob_mode_job_and_outputs_the_monitor_message() {
    bounded(async {
        let app = spawn_app().await;
        let answer = app.invoke_blob("job1.jsonl", sample_jsonl(3).as_bytes()).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.content_type, "application/json");
        assert_eq!(answer.body["ReturnValue"], Value::Null);

        let jobs = app.emulator.world.jobs();
        assert_eq!(jobs.len(), 1, "exactly one job");
        let job = &jobs[0];
        assert_eq!(job.input_blob, app.blob_url("job1.jsonl"));
        // Path-style Azurite URL: the account is the first path segment of the output folder.
        let root = app.account.blob_endpoint.as_str().trim_end_matches('/');
        assert_eq!(job.output_folder, format!("{root}/batch-output"));
        assert!(root.ends_with(&format!("/{}", app.account.blob_endpoint.path().trim_matches('/'))));
        assert_eq!(job.endpoint, "/chat/completions");

        // The output is a JSON object (never a bare string) naming the batch and the blob.
        let out = &answer.body["Outputs"]["outQueue"];
        assert!(out.is_object(), "{out}");
        assert_eq!(out["batchId"], job.id.as_str());
        assert_eq!(out["blob"], "batch-input/job1.jsonl");
        assert!(answer.logs().contains(&job.id));
        // BlobMonitor writes no queue message itself: the output binding does.
        assert!(app.peek(MONITOR_QUEUE).await.is_empty());
    })
    .await;
}

#[tokio::test]
async fn a_large_blob_streams_through_in_chunks() {
    bounded(async {
        let app = spawn_app().await;
        // ~25 MB blob → ~34 MB envelope, far over axum's 2 MB default limit; sent chunked. 85,000 distinct
        // requests of ~300 bytes, so that validation reads the whole file and passes it.
        let padding = "x".repeat(160);
        let content: String =
            sample_jsonl(85_000).lines().map(|l| format!("{}\n", l.replace("Question", &padding))).collect();
        assert!(content.len() > 24 << 20);
        app.upload("big.jsonl", content.as_bytes()).await;
        let url = app.blob_url("big.jsonl");
        let info = devstack::host_emulator::envelope::BlobInfo {
            url: &url,
            name: "big.jsonl",
            etag: "\"0x1\"",
            last_modified: "",
            content_type: "application/jsonl",
        };
        let envelope =
            devstack::host_emulator::envelope::blob_envelope("BlobMonitor", "inputBlob", content.as_bytes(), &info);
        assert!(envelope.len() > 30 << 20);
        let (status, body) = post_chunked(app.addr, "/BlobMonitor", &envelope, 64 * 1024).await;
        assert_eq!(status, 200, "{body}");
        let answer: Value = serde_json::from_str(&body).expect("json");
        assert_eq!(answer["Outputs"]["outQueue"]["blob"], "batch-input/big.jsonl");
        assert_eq!(app.emulator.world.jobs()[0].input_blob, url);
    })
    .await;
}

/// POSTs `body` with `Transfer-Encoding: chunked` over a raw connection, as the host probably frames it.
async fn post_chunked(addr: std::net::SocketAddr, path: &str, body: &[u8], chunk: usize) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = format!("POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json; charset=utf-8\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n");
    s.write_all(head.as_bytes()).await.expect("write");
    for c in body.chunks(chunk) {
        s.write_all(format!("{:x}\r\n", c.len()).as_bytes()).await.expect("write");
        s.write_all(c).await.expect("write");
        s.write_all(b"\r\n").await.expect("write");
    }
    s.write_all(b"0\r\n\r\n").await.expect("write");
    let mut response = String::new();
    s.read_to_string(&mut response).await.expect("read");
    let status = response.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = response.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
    (status, body)
}

#[tokio::test]
async fn a_create_the_api_refuses_for_good_is_logged_and_dead_lettered_with_the_api_code() {
    bounded(async {
        // A GA api-version without blob mode: the API answers 400 to every blob-mode create.
        let app = spawn_app_with(TestOptions { api_version: "2024-10-21".into(), ..Default::default() }).await;
        let answer = app.invoke_blob("refused.jsonl", sample_jsonl(1).as_bytes()).await;
        // Permanent: done (2xx), no monitor output, and a record of why.
        assert_eq!(answer.status, StatusCode::OK);
        assert!(answer.body["Outputs"].as_object().is_some_and(|o| o.is_empty()));
        let poison = app.peek(POISON_QUEUE).await;
        assert_eq!(poison.len(), 1);
        let record: Value = serde_json::from_str(&poison[0]).expect("json record");
        assert_eq!(record["function"], "BlobMonitor");
        assert_eq!(record["code"], "invalidPayload");
        assert_eq!(record["blob"], app.blob_url("refused.jsonl"));
        assert!(record["reason"].as_str().is_some_and(|r| r.contains("400")), "{record}");
        assert!(app.emulator.world.jobs().is_empty());
        let job = app.record("refused.jsonl").await.expect("job record");
        assert_eq!(job.state, RecordState::DeadLettered);
        assert_eq!(app.emulator.world.count("POST", "/batches"), 1, "not retried");
    })
    .await;
}

#[tokio::test]
async fn a_refused_key_defers_the_submission_for_an_operator_instead_of_dropping_the_blob() {
    bounded(async {
        let app = spawn_app_with(TestOptions { handler_key: "rotated-away".into(), ..Default::default() }).await;
        let answer = app.invoke_blob("denied.jsonl", sample_jsonl(1).as_bytes()).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert!(answer.logs().contains("deferred by 300 s"), "{}", answer.logs());
        assert!(app.peek(POISON_QUEUE).await.is_empty(), "a 401 must not poison the blob");
        // The deferred submission waits invisibly on the queue; the record says why.
        assert_eq!(app.count(MONITOR_QUEUE).await, 1, "the deferred submission is on the queue");
        assert!(app.peek(MONITOR_QUEUE).await.is_empty(), "invisible for now");
        let job = app.record("denied.jsonl").await.expect("job record");
        assert_eq!(job.state, RecordState::Deferred);
        assert!(job.reason.as_deref().is_some_and(|r| r.contains("401")), "{job:?}");
        let shown = serde_json::to_string(&job).expect("json");
        assert!(!shown.contains("rotated-away"), "the key must not leak into records");
    })
    .await;
}

#[tokio::test]
async fn a_transient_create_failure_asks_the_host_to_retry() {
    bounded(async {
        let app = spawn_app().await;
        app.emulator.world.set_faults(Faults { unavailable_percent: 100, ..Default::default() });
        let answer = app.invoke_blob("retry.jsonl", sample_jsonl(1).as_bytes()).await;
        assert!(answer.status.is_server_error(), "{}", answer.status);
        assert!(app.peek(POISON_QUEUE).await.is_empty());
        // The retry succeeds once the service is back.
        app.emulator.world.set_faults(Faults::default());
        let answer = app.invoke_blob("retry.jsonl", sample_jsonl(1).as_bytes()).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(app.emulator.world.jobs().len(), 1);
    })
    .await;
}

#[tokio::test]
async fn malformed_envelopes_get_a_non_2xx_and_the_server_survives() {
    bounded(async {
        let app = spawn_app().await;
        for body in [
            &b""[..],
            b"{",
            b"[]",
            b"{\"Data\":{}}",
            b"{\"Metadata\":{\"Uri\":\"\\\"ftp://x/y\\\"\"}}",
            b"\xff\xfe",
            b"{\"Data\":{\"inputBlob\":\"unterminated",
        ] {
            let answer = app.post("BlobMonitor", body.to_vec()).await;
            assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{:?}", String::from_utf8_lossy(body));
            assert_eq!(answer.content_type, "application/json");
        }
        let probe = app.http.get(format!("http://{}/", app.addr)).send().await.expect("alive");
        assert!(probe.status().is_success());
        assert!(app.emulator.world.requests().is_empty(), "nothing reached the batch API");
        tokio::time::sleep(Duration::from_millis(10)).await;
    })
    .await;
}

#[tokio::test]
async fn a_throttled_create_waits_as_long_as_the_service_asks() {
    bounded(async {
        let app = spawn_app().await; // BATCH_RETRY_DELAY = 2 s: the back-off alone would wait 2 s
        app.emulator.world.set_faults(Faults { throttle_percent: 100, retry_after_ms: 90_000, ..Faults::default() });
        let answer = app.invoke_blob("throttled.jsonl", sample_jsonl(1).as_bytes()).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert!(answer.logs().contains("deferred by 90 s"), "{}", answer.logs());
        assert_eq!(app.count(MONITOR_QUEUE).await, 1, "the deferred submission waits on the queue");
        assert!(app.peek(MONITOR_QUEUE).await.is_empty(), "invisible until the delay has passed");
    })
    .await;
}

#[tokio::test]
async fn a_rewritten_blob_gets_a_job_of_its_own() {
    bounded(async {
        let app = spawn_app().await;
        let first = app.create_job("again.jsonl").await;
        let second = app.submit("again.jsonl", sample_jsonl(3).as_bytes()).await;
        assert_ne!(first.batch_id, second.batch_id);
        assert_ne!(first.etag, second.etag);
        assert_eq!(app.emulator.world.jobs().len(), 2, "one job per version");
        for m in [&first, &second] {
            let record = app.record_of("again.jsonl", m.etag.as_deref().expect("etag")).await.expect("record");
            assert_eq!(record.batch_id.as_deref(), Some(m.batch_id.as_str()));
        }
    })
    .await;
}

#[tokio::test]
async fn a_deleted_blob_or_one_in_another_account_is_dead_lettered_and_a_custom_domain_is_looked_up_by_name() {
    bounded(async {
        let app = spawn_app().await;
        let envelope = |url: &str, name: &str| {
            let info = devstack::host_emulator::envelope::BlobInfo {
                url,
                name,
                etag: "\"0x1\"",
                last_modified: "",
                content_type: "application/jsonl",
            };
            devstack::host_emulator::envelope::blob_envelope(
                "BlobMonitor",
                "inputBlob",
                sample_jsonl(1).as_bytes(),
                &info,
            )
        };
        let deleted = app.post("BlobMonitor", envelope(&app.blob_url("gone.jsonl"), "gone.jsonl")).await;
        assert!(deleted.logs().contains("deleted before a job could be created"), "{}", deleted.logs());
        let account = app.account.blob_endpoint.path().trim_matches('/').to_string();
        let elsewhere = app.blob_url("x.jsonl").replace(&format!("/{account}/"), "/otheracct/");
        let foreign = app.post("BlobMonitor", envelope(&elsewhere, "x.jsonl")).await;
        assert!(foreign.logs().contains("storage account `otheracct`"), "{}", foreign.logs());
        assert!(app.emulator.world.jobs().is_empty());
        assert_eq!(app.peek(POISON_QUEUE).await.len(), 2);
        // A custom domain in front of this account: the blob is found by the trigger's container and name.
        app.upload("custom.jsonl", sample_jsonl(1).as_bytes()).await;
        let custom = app
            .post("BlobMonitor", envelope("https://files.example.com/batch-input/custom.jsonl", "custom.jsonl"))
            .await;
        assert!(custom.logs().contains("created batch"), "{}", custom.logs());
        assert!(app.record("custom.jsonl").await.is_some());
    })
    .await;
}

#[tokio::test]
async fn a_follow_up_that_cannot_be_written_fails_the_check_and_changes_nothing() {
    bounded(async {
        let app = spawn_app_with(TestOptions { unreachable_queues: true, ..Default::default() }).await;
        // BlobMonitor writes no message itself (its output binding does), so the job is created.
        let message = app.create_job("unwritable.jsonl").await;
        let answer = app.invoke_queue(&message.to_json(), 1).await;
        assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE, "the host must redeliver the check");
        let record = app.record("unwritable.jsonl").await.expect("record");
        assert_eq!((record.state, record.checks), (RecordState::Submitted, 0), "the record waits for the redelivery");
    })
    .await;
}

#[tokio::test]
async fn a_refused_key_is_dead_lettered_after_the_allowed_failures_with_its_ending_announced() {
    bounded(async {
        let options = TestOptions { handler_key: "rotated-away".into(), max_check_failures: 2, ..Default::default() };
        let app = spawn_app_with(options).await;
        let first = app.invoke_blob("denied.jsonl", sample_jsonl(1).as_bytes()).await;
        assert!(first.logs().contains("deferred by 300 s"), "{}", first.logs());
        let record = app.record("denied.jsonl").await.expect("record");
        // The deferred submission (invisible for 5 minutes) as the app put it.
        let submit = blob_batch_monitor::jobs::message::SubmitMessage {
            submit: record.blob_url.clone(),
            blob: record.blob.clone(),
            etag: record.etag.clone(),
            attempt: 1,
            parent: None,
        };
        let second = app.invoke_queue(&submit.to_json(), 1).await;
        assert!(second.logs().contains("dead-lettered"), "{}", second.logs());
        let record = app.record("denied.jsonl").await.expect("record");
        assert_eq!((record.state, record.failures), (RecordState::DeadLettered, 2));
        let events = app.peek("batch-completed").await;
        assert_eq!(events.len(), 1, "{events:?}");
        let event: Value = serde_json::from_str(&events[0]).expect("json");
        assert_eq!(event["status"], "dead-lettered");
        assert_eq!(event["id"].as_str(), record.event_id.as_deref(), "the record names the event that was sent");
        let poison = app.peek(POISON_QUEUE).await;
        assert!(poison.len() == 1 && poison[0].contains("\"code\":\"401\""), "{poison:?}");
    })
    .await;
}
