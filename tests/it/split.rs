//! A file over one job's limits becomes several jobs, paced by the token quota, and ends as one merged result
//! (issue 23): through the real handler under the host emulator, against Azurite and the batch emulator, with small
//! limits so the files stay small.

use std::collections::BTreeMap;
use std::time::Duration;

use blob_batch_monitor::jobs::record::{JobRecord, PartState, RecordState};
use devstack::storage_ops::BlobOps;
use serde_json::Value;

use crate::helpers::stack::{Stack, StackOptions};
use crate::helpers::{bounded, bounded_for, sample_jsonl, spawn_app_with, wait_for, TestOptions};

/// A stack whose handler cuts files at `requests` a part, with more `settings`.
async fn stack(requests: u64, settings: Vec<(&'static str, String)>) -> Stack {
    let mut all = vec![("BATCH_MAX_REQUESTS", requests.to_string())];
    all.extend(settings);
    Stack::start(StackOptions { settings: all, ..StackOptions::default() }).await
}

/// The record of the split file `batch-input/<name>`, once it has parts.
async fn file_record(stack: &Stack, name: &str) -> JobRecord {
    let blob = format!("batch-input/{name}");
    stack.records().await.into_iter().find(|r| r.blob == blob && !r.parts.is_empty()).expect("the file's record")
}

/// Waits for the file's final line (the file's own, not its parts') and returns it.
async fn file_report(stack: &Stack, name: &str, limit: Duration) -> String {
    let needle = format!("batch-input/{name} ended");
    wait_for("the file's final line", limit, || async {
        stack.final_reports().into_iter().find(|l| l.contains(&needle) && l.contains(" parts"))
    })
    .await
}

/// The `custom_id`s of a merged results file, with how often each appears.
async fn ids_in(stack: &Stack, url: &str) -> BTreeMap<String, usize> {
    let blob = stack.storage.get_blob_by_url(url).await.expect("read").expect("the merged file exists");
    let mut ids = BTreeMap::new();
    for line in String::from_utf8(blob.content.to_vec()).expect("utf-8").lines().filter(|l| !l.is_empty()) {
        let v: Value = serde_json::from_str(line).expect("a result line");
        *ids.entry(v["custom_id"].as_str().expect("custom_id").to_string()).or_insert(0) += 1;
    }
    ids
}

/// Asserts the file ended `completed` with every one of its `n` requests once in one results file, one event.
async fn assert_merged(stack: &Stack, name: &str, n: usize, parts: usize) {
    let record = file_record(stack, name).await;
    assert_eq!(record.state, RecordState::Ended);
    assert_eq!(record.status.as_deref(), Some("completed"));
    assert_eq!(record.parts.len(), parts);
    assert!(record.parts.iter().all(|p| p.state == PartState::Ended), "{:?}", record.parts);
    let counts = record.request_counts.clone().expect("summed counts");
    assert_eq!((counts.total, counts.completed), (Some(n as u64), Some(n as u64)));
    let ids = ids_in(stack, record.output_blob.as_deref().expect("a merged results file")).await;
    assert_eq!(ids.len(), n, "every request once");
    assert!(ids.values().all(|c| *c == 1), "nothing doubled: {ids:?}");
    let events: Vec<Value> = crate::helpers::queues::peek(&stack.storage, "batch-completed")
        .await
        .iter()
        .map(|e| serde_json::from_str(e).expect("json"))
        .collect();
    let file_events: Vec<&Value> = events.iter().filter(|e| e["blob"] == format!("batch-input/{name}")).collect();
    assert_eq!(file_events.len(), 1, "one event for the file: {events:#?}");
    assert_eq!(file_events[0]["parts"].as_array().map(Vec::len), Some(parts));
    assert!(
        events.iter().all(|e| !e["blob"].as_str().unwrap_or_default().starts_with("batch-parts/")),
        "no part's own event"
    );
    assert_eq!(stack.emulator.world.jobs().len(), parts, "one job per part");
}

#[tokio::test]
async fn a_file_three_times_over_the_request_limit_ends_as_one_merged_result() {
    bounded_for(Duration::from_secs(120), async {
        let stack = stack(10, Vec::new()).await;
        stack.drop_blob("big.jsonl", sample_jsonl(30).as_bytes()).await;
        let report = file_report(&stack, "big.jsonl", Duration::from_secs(90)).await;
        assert!(report.contains("ended completed in 3 parts"), "{report}");
        assert_merged(&stack, "big.jsonl", 30, 3).await;
        let inputs: Vec<String> = stack.emulator.world.jobs().iter().map(|j| j.input_blob.clone()).collect();
        assert!(inputs.iter().all(|i| i.contains("/batch-parts/batch-input/big.jsonl/")), "{inputs:?}");
        stack.assert_no_poison().await;
    })
    .await;
}

#[tokio::test]
async fn a_budget_for_two_parts_keeps_two_parts_running_at_most() {
    bounded_for(Duration::from_secs(120), async {
        // Each part's 10 lines of ~150 bytes: about 500 tokens by the app's estimate (bytes / 3), about 375 by the
        // emulator's (bytes / 4), which refuses a create beyond its quota: a third part at once would be refused.
        let stack = stack(10, vec![("BATCH_TOKEN_QUOTA", "1100".into())]).await;
        stack.emulator.world.config.lock().expect("config").token_quota = Some(1100);
        stack.drop_blob("paced.jsonl", sample_jsonl(50).as_bytes()).await;
        let report = file_report(&stack, "paced.jsonl", Duration::from_secs(90)).await;
        assert!(report.contains("ended completed in 5 parts"), "{report}");
        assert_merged(&stack, "paced.jsonl", 50, 5).await;
        let refused = stack.emulator.world.requests().iter().filter(|r| r.method == "POST" && r.status == 400).count();
        assert_eq!(refused, 0, "the app never asked for more than the quota");
        let peak = stack.emulator.world.peak_enqueued("gpt-4o-batch");
        assert!(peak <= 1100 && peak > 375, "two parts ran together, never three: peak {peak}");
    })
    .await;
}

#[tokio::test]
async fn a_duplicate_across_parts_and_a_request_over_the_budget_are_refused_with_their_lines() {
    bounded(async {
        let settings = vec![("BATCH_MAX_REQUESTS", "10".to_string()), ("BATCH_TOKEN_QUOTA", "200".to_string())];
        let app = spawn_app_with(TestOptions { settings, ..TestOptions::default() }).await;
        // task-3 (part 1) again on line 26 (part 3).
        let mut file = sample_jsonl(25);
        file.push_str(&sample_jsonl(1).replace("task-0", "task-3"));
        let answer = app.invoke_blob("dup.jsonl", file.as_bytes()).await;
        assert!(answer.logs().contains("line 26: duplicate_custom_id"), "{}", answer.logs());
        // One request whose ~900 bytes are ~300 estimated tokens, over the whole quota of 200.
        let mut file = sample_jsonl(3);
        file.push_str(&sample_jsonl(1).replace("task-0", "huge").replace("Question 0", &"x".repeat(800)));
        let answer = app.invoke_blob("huge.jsonl", file.as_bytes()).await;
        assert!(answer.logs().contains("line 4: request_over_token_budget"), "{}", answer.logs());
        assert!(app.emulator.world.requests().is_empty(), "a refused file costs no job");
        assert!(app.record("dup.jsonl").await.is_some_and(|r| r.state == RecordState::Rejected && r.parts.is_empty()));
    })
    .await;
}
