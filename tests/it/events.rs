//! Completion events on `batch-completed`: one per ending (each terminal status, a rejected file, a dead letter),
//! with a stable id that a duplicate delivery does not change, the job's usage, and nothing when events are off.

use std::collections::BTreeSet;

use axum::http::StatusCode;
use serde_json::Value;

use crate::helpers::{bounded, sample_jsonl, spawn_app, spawn_app_with, TestApp, TestOptions};

const EVENTS: &str = "batch-completed";

async fn events(app: &TestApp) -> Vec<Value> {
    app.peek(EVENTS).await.iter().map(|e| serde_json::from_str(e).expect("an event is JSON")).collect()
}

#[tokio::test]
async fn each_terminal_status_is_announced_once_even_when_the_check_is_delivered_twice() {
    bounded(async {
        let app = spawn_app().await;
        let statuses = ["completed", "failed", "expired", "cancelled"];
        for status in statuses {
            let message = app.create_job(&format!("{status}.jsonl")).await;
            assert!(app.emulator.world.force_status(&message.batch_id, status));
            let answer = app.invoke_queue(&message.to_json(), 1).await;
            assert!(answer.logs().contains(&format!("ended {status}")), "{}", answer.logs());
            // The same check again (a lost acknowledgement): superseded, and no second event.
            let again = app.invoke_queue(&message.to_json(), 2).await;
            assert_eq!(again.status, StatusCode::OK);
            assert!(again.logs().contains("superseded"), "{}", again.logs());
            let record = app.record(&format!("{status}.jsonl")).await.expect("record");
            let event = events(&app).await.into_iter().find(|e| e["batchId"] == message.batch_id.as_str());
            let event = event.expect("an event for the job");
            assert_eq!(event["status"], status);
            assert_eq!(event["id"].as_str(), record.event_id.as_deref(), "the record names the event it sent");
            assert_eq!(event["blob"], format!("batch-input/{status}.jsonl"));
            assert_eq!(event["blobUrl"], app.blob_url(&format!("{status}.jsonl")));
            assert_eq!(event["etag"].as_str(), Some(record.etag.as_str()));
            assert!(event["requestCounts"]["total"].is_u64(), "{event}");
            assert!(event["submittedAt"].as_str().is_some_and(|t| t.ends_with('Z')), "{event}");
            assert!(event["endedAt"].as_str().is_some_and(|t| t.ends_with('Z')), "{event}");
            assert_eq!(event["problems"], serde_json::json!([]));
        }
        let all = events(&app).await;
        assert_eq!(all.len(), statuses.len(), "{all:#?}");
        let ids: BTreeSet<&str> = all.iter().filter_map(|e| e["id"].as_str()).collect();
        assert_eq!(ids.len(), statuses.len(), "ids differ between endings");
    })
    .await;
}

#[tokio::test]
async fn a_finished_job_reports_its_usage_in_the_record_the_event_and_the_final_line() {
    bounded(async {
        let app = spawn_app_with(TestOptions::quick_jobs()).await;
        let message = app.submit("usage.jsonl", sample_jsonl(3).as_bytes()).await;
        app.wait_until_ended(&message.batch_id).await;
        let answer = app.invoke_queue(&message.to_json(), 1).await;
        assert!(answer.logs().contains("tokens: input=36 output=24 total=60"), "{}", answer.logs());
        let record = app.record("usage.jsonl").await.expect("record");
        assert_eq!(record.usage.as_ref().and_then(|u| u["total_tokens"].as_u64()), Some(60));
        let event = events(&app).await.pop().expect("event");
        assert_eq!(event["usage"]["input_tokens"], 36);
        assert_eq!(event["requestCounts"]["completed"], 3);
        assert!(event["outputBlob"].as_str().is_some_and(|b| b.ends_with("results.jsonl")), "{event}");
    })
    .await;
}

#[tokio::test]
async fn dead_letters_are_announced_with_their_reason() {
    bounded(async {
        // A create the API refuses for good (a GA api-version without blob mode answers 400).
        let app = spawn_app_with(TestOptions { api_version: "2024-10-21".into(), ..TestOptions::default() }).await;
        app.invoke_blob("refused.jsonl", sample_jsonl(1).as_bytes()).await;
        let refused = events(&app).await.pop().expect("an event for the refused create");
        assert_eq!(refused["status"], "dead-lettered");
        assert_eq!(refused["batchId"], Value::Null);
        assert!(refused["reason"].as_str().is_some_and(|r| r.contains("400")), "{refused}");

        // A batch the API does not know (a plain id, as the original app wrote it, names no job record; a message
        // that names one whose record follows another batch is dropped as superseded before any call).
        let app = spawn_app().await;
        app.invoke_queue("batch_00000000-0000-4000-8000-000000000000", 1).await;
        let forgotten = events(&app).await.pop().expect("an event for the unknown batch");
        assert_eq!(forgotten["status"], "dead-lettered");
        assert_eq!(forgotten["batchId"], "batch_00000000-0000-4000-8000-000000000000");
        assert!(forgotten["reason"].as_str().is_some_and(|r| r.contains("does not know")), "{forgotten}");
    })
    .await;
}

#[tokio::test]
async fn with_events_off_nothing_is_announced() {
    bounded(async {
        let app = spawn_app_with(TestOptions { completed_queue: String::new(), ..TestOptions::quick_jobs() }).await;
        let message = app.create_job("quiet.jsonl").await;
        app.wait_until_ended(&message.batch_id).await;
        assert!(app.invoke_queue(&message.to_json(), 1).await.logs().contains("ended completed"));
        assert!(app.invoke_blob("bad.jsonl", b"not json\n").await.logs().contains("rejected"));
        assert!(events(&app).await.is_empty());
        assert!(app.record("quiet.jsonl").await.expect("record").event_id.is_none());
    })
    .await;
}

#[tokio::test]
async fn a_current_official_sdk_reads_an_event() {
    bounded(async {
        let python = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench/venv/bin/python");
        let has_sdk = std::process::Command::new(&python)
            .args(["-c", "import azure.storage.queue"])
            .output()
            .is_ok_and(|o| o.status.success());
        if !has_sdk {
            crate::helpers::skipped("the Azure queue SDK is missing (scripts/test.sh installs tests/requirements.txt)");
            return;
        }
        let app = spawn_app().await;
        let message = app.create_job("sdk.jsonl").await;
        assert!(app.emulator.world.force_status(&message.batch_id, "completed"));
        app.invoke_queue(&message.to_json(), 1).await;
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/read_event.py");
        let (blob, queue) = (app.account.blob_endpoint.as_str(), app.account.queue_endpoint.as_str());
        let name = app.account.blob_endpoint.path().trim_matches('/');
        let connection = blob_batch_monitor::storage::StorageAccount::shared_key_connection_string(
            name,
            blob_batch_monitor::storage::connection::DEVSTORE_KEY,
            blob.trim_end_matches('/'),
            queue.trim_end_matches('/'),
        );
        let output = tokio::process::Command::new(&python)
            .arg(script)
            .arg(connection)
            .arg(EVENTS)
            .output()
            .await
            .expect("python runs");
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let event: Value = serde_json::from_slice(&output.stdout).expect("the SDK decodes the event as JSON text");
        assert_eq!(event["status"], "completed");
        assert_eq!(event["batchId"], message.batch_id.as_str());
        assert_eq!(event["blob"], "batch-input/sdk.jsonl");
    })
    .await;
}
