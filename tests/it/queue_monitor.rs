//! QueueMonitor against a real Azurite and the batch emulator: delayed re-checks, terminal statuses, refusals.

use devstack::storage_ops::QueueOps;
use std::time::{Duration, Instant};

use blob_batch_monitor::jobs::message::{MonitorMessage, MONITOR_QUEUE, POISON_QUEUE};
use blob_batch_monitor::storage::MessageEncoding;
use devstack::batch_emulator::Faults;
use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{bounded, spawn_app, wait_for};

#[tokio::test]
async fn a_running_job_is_requeued_once_invisible_until_the_delay_has_passed() {
    bounded(async {
        let app = spawn_app().await; // BATCH_RETRY_DELAY = 2 s
        let message = app.create_job("running.jsonl").await;
        let sent = Instant::now();
        let answer = app.invoke_queue(&message.to_json(), 1).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert!(
            answer.body["Outputs"].as_object().is_some_and(|o| o.is_empty()),
            "no output binding: {:?}",
            answer.body
        );
        assert!(app.peek(MONITOR_QUEUE).await.is_empty(), "the follow-up must be invisible at first");
        assert_eq!(app.count(MONITOR_QUEUE).await, 1, "but it is there");

        let visible = wait_for("the follow-up to become visible", Duration::from_secs(10), || async {
            let texts = app.peek(MONITOR_QUEUE).await;
            (!texts.is_empty()).then_some(texts)
        })
        .await;
        let waited = sent.elapsed();
        assert!(waited >= Duration::from_millis(1500), "visible after only {waited:?}");
        assert_eq!(visible.len(), 1, "exactly one follow-up message");
        // Stored as base64 (messageEncoding) of our JSON, with the check counted.
        let next: MonitorMessage = serde_json::from_str(&visible[0]).expect("monitor message");
        assert_eq!(next, MonitorMessage { attempt: message.attempt + 1, ..message });
    })
    .await;
}

#[tokio::test]
async fn each_terminal_status_ends_monitoring_with_a_final_report() {
    bounded(async {
        let app = spawn_app().await;
        for status in ["completed", "failed", "expired", "cancelled", "Completed"] {
            let message = app.create_job(&format!("{status}.jsonl")).await;
            assert!(app.emulator.world.force_status(&message.batch_id, status));
            if status == "failed" {
                app.emulator.world.force_status(&message.batch_id, "failed");
            }
            let answer = app.invoke_queue(&message.to_json(), 1).await;
            assert_eq!(answer.status, StatusCode::OK);
            let logs = answer.logs();
            assert!(logs.contains(&format!("ended {}", status.to_lowercase())), "{logs}");
            assert!(logs.contains("output_blob=") && logs.contains("error_blob=") && logs.contains("total="), "{logs}");
        }
        // Nothing comes back: no follow-up waits on the queue, visible or not.
        assert_eq!(app.count(MONITOR_QUEUE).await, 0);
        assert_eq!(app.count(POISON_QUEUE).await, 0);
    })
    .await;
}

#[tokio::test]
async fn a_completed_job_reports_its_result_blobs_and_a_failed_one_its_errors() {
    bounded(async {
        // Validation off, so that the service itself fails the bad file.
        let options =
            crate::helpers::TestOptions { validate_input: false, ..crate::helpers::TestOptions::quick_jobs() };
        let app = crate::helpers::spawn_app_with(options).await;
        let good = app.create_job("good.jsonl").await;
        let bad = app.submit("bad.jsonl", b"{\"custom_id\": \"a\", not json}\n").await;
        for id in [&good.batch_id, &bad.batch_id] {
            app.wait_until_ended(id).await;
        }
        let logs = app.invoke_queue(&good.to_json(), 1).await.logs();
        let job = app.emulator.world.job(&good.batch_id).expect("job");
        assert!(logs.contains("ended completed: requests total=2 completed=2 failed=0"), "{logs}");
        assert!(logs.contains(&format!("output_blob={}", job.output_blob)), "{logs}");
        let logs = app.invoke_queue(&bad.to_json(), 1).await.logs();
        assert!(logs.contains("ended failed") && logs.contains("errors: invalid_json_line:"), "{logs}");
    })
    .await;
}

#[tokio::test]
async fn a_completed_job_with_failed_requests_quotes_the_first_of_them_from_its_error_file() {
    bounded(async {
        let app = crate::helpers::spawn_app_with(crate::helpers::TestOptions::quick_jobs()).await;
        // Valid lines that the service cannot answer: no `messages`. The job completes, with those requests failed.
        let no_messages = |i: usize| {
            format!(r#"{{"custom_id":"task-{i}","method":"POST","url":"/chat/completions","body":{{"model":"gpt-4o-batch"}}}}"#)
        };
        let content = format!("{}{}\n{}\n", crate::helpers::sample_jsonl(1), no_messages(1), no_messages(2));
        let message = app.submit("partly.jsonl", content.as_bytes()).await;
        app.wait_until_ended(&message.batch_id).await;
        let logs = app.invoke_queue(&message.to_json(), 1).await.logs();
        assert!(logs.contains("ended completed: requests total=3 completed=1 failed=2"), "{logs}");
        assert!(
            logs.contains(
                "first failed requests: task-1: invalid_request: `messages` is required; \
                 task-2: invalid_request: `messages` is required"
            ),
            "{logs}"
        );
    })
    .await;
}

#[tokio::test]
async fn the_head_of_a_blob_is_read_with_a_range() {
    bounded(async {
        let app = spawn_app().await;
        app.upload("ten.txt", b"0123456789").await;
        app.upload("empty.txt", b"").await;
        let head = |name: &'static str, max| {
            let storage = app.storage.clone();
            async move { storage.get_blob_head("batch-input", name, max).await.expect("read") }
        };
        assert_eq!(head("ten.txt", 4).await.as_deref(), Some(&b"0123"[..]));
        assert_eq!(head("ten.txt", 100).await.as_deref(), Some(&b"0123456789"[..]));
        assert_eq!(head("empty.txt", 100).await.as_deref(), Some(&b""[..]));
        assert_eq!(head("missing.txt", 100).await, None);
    })
    .await;
}

#[tokio::test]
async fn a_plain_batch_id_message_works_like_the_original_app() {
    bounded(async {
        let app = spawn_app().await;
        let message = app.create_job("plain.jsonl").await;
        let answer = app.invoke_queue(&message.batch_id, 1).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(app.emulator.world.count("GET", &message.batch_id), 1);
        let next =
            wait_for("the follow-up", Duration::from_secs(10), || async { app.peek(MONITOR_QUEUE).await.pop() }).await;
        let next: MonitorMessage = serde_json::from_str(&next).expect("json");
        assert_eq!((next.batch_id.as_str(), next.attempt), (message.batch_id.as_str(), 1));
    })
    .await;
}

#[tokio::test]
async fn bad_ids_and_unknown_batches_are_dead_lettered_and_bad_ids_never_reach_the_api() {
    bounded(async {
        let app = spawn_app().await;
        let hostile = [
            "../../openai/deployments",
            "batch?x=1",
            "batch#frag",
            "two words",
            "",
            &"x".repeat(500),
            "{\"batchId\":\"a/b\"}",
            "{not json",
        ];
        for text in hostile {
            let answer = app.invoke_queue(text, 1).await;
            assert_eq!(answer.status, StatusCode::OK, "{text}");
        }
        assert!(app.emulator.world.requests().is_empty(), "{:?}", app.emulator.world.requests());
        let unknown = app.invoke_queue("batch_00000000-0000-4000-8000-000000000000", 1).await;
        assert_eq!(unknown.status, StatusCode::OK);
        let poison = app.peek(POISON_QUEUE).await;
        assert_eq!(poison.len(), hostile.len() + 1);
        let records: Vec<Value> = poison.iter().map(|p| serde_json::from_str(p).expect("json")).collect();
        assert!(records
            .iter()
            .all(|r| r["function"] == "QueueMonitor" && r["reason"].as_str().is_some_and(|s| !s.is_empty())));
        assert!(records.iter().any(|r| r["reason"].as_str().is_some_and(|s| s.contains("does not know batch"))));
        assert!(app.peek(MONITOR_QUEUE).await.is_empty());
    })
    .await;
}

#[tokio::test]
async fn failing_status_checks_back_off_through_the_queue_instead_of_failing_the_invocation() {
    bounded(async {
        let app = spawn_app().await;
        let message = app.create_job("flaky.jsonl").await;
        app.emulator.world.set_faults(Faults { unavailable_percent: 100, ..Default::default() });
        let answer = app.invoke_queue(&message.to_json(), 1).await;
        assert_eq!(answer.status, StatusCode::OK, "a transient failure must not use up the host's delivery attempts");
        app.emulator.world.set_faults(Faults::default());
        let next =
            wait_for("the follow-up", Duration::from_secs(10), || async { app.peek(MONITOR_QUEUE).await.pop() }).await;
        let next: MonitorMessage = serde_json::from_str(&next).expect("json");
        assert_eq!(next.failures, 1);
        assert_eq!(next.attempt, message.attempt + 1);
        // The next check succeeds and resets the failure count.
        let answer = app.invoke_queue(&next.to_json(), 1).await;
        assert!(answer.logs().contains("next check"), "{}", answer.logs());
    })
    .await;
}

#[tokio::test]
async fn too_many_failed_checks_dead_letter_the_job() {
    bounded(async {
        let app =
            crate::helpers::spawn_app_with(crate::helpers::TestOptions { max_check_failures: 2, ..Default::default() })
                .await;
        let message = app.create_job("doomed.jsonl").await;
        app.emulator.world.set_faults(Faults { unavailable_percent: 100, ..Default::default() });
        let first = app.invoke_queue(&message.to_json(), 1).await;
        assert!(first.logs().contains("status check of"), "{}", first.logs());
        assert!(app.peek(POISON_QUEUE).await.is_empty(), "one failure is not too many");
        // The follow-up the first failure put, taken off the queue: the record counts the failures.
        let follow_up = wait_for("the follow-up", Duration::from_secs(10), || async {
            let taken = app.storage.get_messages(MONITOR_QUEUE, 1, Duration::from_secs(60)).await.expect("get");
            taken.into_iter().next()
        })
        .await;
        app.storage
            .delete_message(MONITOR_QUEUE, &follow_up.message_id, follow_up.pop_receipt.as_deref().unwrap_or_default())
            .await
            .expect("delete");
        let text = MessageEncoding::Base64.decode(&follow_up.message_text).expect("base64");
        let answer = app.invoke_queue(std::str::from_utf8(&text).expect("utf-8"), 1).await;
        assert_eq!(answer.status, StatusCode::OK);
        let poison = app.peek(POISON_QUEUE).await;
        assert_eq!(poison.len(), 1);
        assert!(poison[0].contains("2 consecutive status checks"), "{}", poison[0]);
        assert_eq!(app.count(MONITOR_QUEUE).await, 0, "no follow-up after the job was dead-lettered");
    })
    .await;
}

#[tokio::test]
async fn the_doubly_encoded_example_envelope_from_the_protocol_doc_is_understood() {
    bounded(async {
        let app = spawn_app().await;
        let message = app.create_job("doc.jsonl").await;
        let envelope = r#"{"Data":{"job":"\"{\\\"batchId\\\":\\\"BATCH\\\",\\\"blob\\\":\\\"batch-input/job1.jsonl\\\",\\\"attempt\\\":1}\""},"Metadata":{"DequeueCount":"1","Id":"\"6c5d8a4e-2f1b-4c3d-9e8f-7a6b5c4d3e2f\"","PopReceipt":"\"AgAAAAMAAAAAAAAAAgtnj8x+1QE=\"","batchId":"\"BATCH\"","attempt":"\"1\"","sys":{"MethodName":"QueueMonitor"}}}"#
            .replace("BATCH", &message.batch_id);
        let answer = app.post("QueueMonitor", envelope).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(app.emulator.world.count("GET", &message.batch_id), 1);
    })
    .await;
}

#[tokio::test]
async fn a_check_waits_while_a_submitter_holds_the_record_lease() {
    bounded(async {
        let app = spawn_app().await;
        let message = app.create_job("leased.jsonl").await;
        let prefix = "batch-input/leased.jsonl/";
        let key = app.storage.list_all_blobs("batch-records", Some(prefix)).await.expect("list")[0].name.clone();
        // What a submitter that died between writing the record and releasing it leaves behind.
        let lease = app.storage.acquire_lease("batch-records", &key, 60).await.expect("lease");
        let before = app.record("leased.jsonl").await.expect("record");

        let answer = app.invoke_queue(&message.to_json(), 1).await;
        assert_eq!(answer.status, StatusCode::OK, "a leased record is waited for, not a failure: {:?}", answer.body);
        assert!(answer.logs().contains("leased by a submitter"), "{}", answer.logs());
        assert_eq!(app.record("leased.jsonl").await.expect("record").checks, before.checks, "nothing was written");
        assert!(app.peek(POISON_QUEUE).await.is_empty());

        // Once the lease is gone, the same check goes through.
        app.storage.release_lease("batch-records", &key, &lease).await.expect("release");
        let answer = app.invoke_queue(&message.to_json(), 1).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert!(answer.logs().contains("next check in"), "{}", answer.logs());
    })
    .await;
}
