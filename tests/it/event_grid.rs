//! The Event Grid blob source, as Flex Consumption runs it (functions-protocol.md §9): the host's blobs webhook speaks
//! the Storage extension's protocol, Flex refuses a polling trigger, and since Event Grid keeps no blob receipts and
//! may deliver an event twice, the job records alone keep exactly one job per blob version.

use std::collections::HashMap;
use std::time::Duration;

use blob_batch_monitor::jobs::message::MonitorMessage;
use devstack::host_emulator::{FunctionsHost, HostOptions};
use serde_json::{json, Value};

use crate::helpers::queues::count;
use crate::helpers::stack::{Stack, StackOptions};
use crate::helpers::{bounded, bounded_for, count_from_env, sample_jsonl, spawn_app, upload, wait_for};

async fn event_grid_stack() -> Stack {
    Stack::start(StackOptions { event_grid: true, ..StackOptions::default() }).await
}

/// How many times the host ran BlobMonitor.
fn blob_runs(stack: &Stack) -> usize {
    stack.host.invocations().iter().filter(|r| r.function == "BlobMonitor").count()
}

#[tokio::test]
async fn the_blobs_webhook_answers_as_the_storage_extension_does() {
    bounded_for(Duration::from_secs(90), async {
        let stack = event_grid_stack().await;

        // Subscription validation: the code comes back as the validation response.
        let validation = json!([{"id": "1", "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent",
            "data": {"validationCode": "512d38b6-c7b8-40c8-89fe-f46f9e9622b6"}}]);
        let answer = stack.post_events("BlobMonitor", "SubscriptionValidation", &validation).await;
        assert_eq!(answer.status(), 200);
        let body: Value = serde_json::from_str(&answer.text().await.expect("a body")).expect("JSON");
        assert_eq!(body, json!({"validationResponse": "512d38b6-c7b8-40c8-89fe-f46f9e9622b6"}));

        assert_eq!(stack.post_events("BlobMonitor", "Unsubscribe", &json!([])).await.status(), 202);
        assert_eq!(stack.post_events("BlobMonitor", "Other", &json!([])).await.status(), 400);

        // A blob gone before its event runs, and an unknown function: 202, and no invocation.
        let gone =
            stack.post_events("BlobMonitor", "Notification", &stack.blob_created("gone.jsonl", "\"0x8D0\"")).await;
        assert_eq!(gone.status(), 202);
        let etag = upload_small(&stack, "other.jsonl").await;
        let unknown =
            stack.post_events("NoSuchFunction", "Notification", &stack.blob_created("other.jsonl", &etag)).await;
        assert_eq!(unknown.status(), 202);

        // One event, not an array, is taken too; it runs BlobMonitor, which starts the job.
        let etag = upload_small(&stack, "one.jsonl").await;
        let one = stack.post_events("BlobMonitor", "Notification", &stack.blob_created("one.jsonl", &etag)).await;
        assert_eq!(one.status(), 202);
        let reports = stack.wait_for_reports(1, Duration::from_secs(60)).await;
        assert!(reports[0].contains("one.jsonl") && reports[0].contains("ended completed"), "{reports:?}");

        let runs: Vec<String> =
            stack.host.invocations().into_iter().filter(|r| r.function == "BlobMonitor").map(|r| r.trigger).collect();
        assert!(runs.iter().all(|t| t.contains("one.jsonl")), "only the live blob ran: {runs:?}");
        assert_eq!(stack.emulator.world.jobs().len(), 1);
        stack.assert_no_poison().await;
    })
    .await;
}

/// Uploads a small valid file to batch-input (the polling scanner is off: nothing runs yet); returns its ETag.
async fn upload_small(stack: &Stack, name: &str) -> String {
    upload(&stack.storage, name, sample_jsonl(2).as_bytes()).await
}

#[tokio::test]
async fn flex_refuses_a_polling_blob_trigger_with_the_hosts_message() {
    let mut options = HostOptions::new(std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")), Vec::new());
    options.flex = true;
    let error = match FunctionsHost::start(options).await {
        Ok(_) => panic!("the host started a polling blob trigger in Flex mode"),
        Err(e) => e.to_string(),
    };
    assert!(
        error.contains("The Flex Consumption SKU only supports EventGrid as the source for BlobTrigger functions")
            && error.contains("'BlobMonitor'"),
        "{error}"
    );
}

#[tokio::test]
async fn a_repeated_event_hands_the_job_over_again_and_only_the_new_chain_of_checks_goes_on() {
    bounded(async {
        let app = spawn_app().await;
        let content = sample_jsonl(2);
        let etag = app.upload("again.jsonl", content.as_bytes()).await;
        // The first run creates the job; the same event again (before any check) hands it over again.
        let first = app.deliver_blob("again.jsonl", content.as_bytes(), &etag).await;
        let first: MonitorMessage = serde_json::from_value(first.body["Outputs"]["outQueue"].clone()).expect("a check");
        let again = app.deliver_blob("again.jsonl", content.as_bytes(), &etag).await;
        assert_eq!(again.status, 200);
        let again: MonitorMessage = serde_json::from_value(again.body["Outputs"]["outQueue"].clone()).expect("a check");
        assert_eq!((again.batch_id.as_str(), again.attempt), (first.batch_id.as_str(), 0));
        assert!(first.chain.is_some() && again.chain.is_some() && first.chain != again.chain, "{first:?} {again:?}");
        assert_eq!(app.emulator.world.jobs().len(), 1);

        // Both first checks reach QueueMonitor: the old chain's is dropped, the new one's goes on.
        let old = app.invoke_queue(&first.to_json(), 1).await;
        assert_eq!(old.status, 200);
        assert!(old.logs().contains("another chain of checks"), "{}", old.logs());
        assert!(old.body["Outputs"].as_object().is_none_or(|o| o.is_empty()), "no follow-up: {:?}", old.body);
        let new = app.invoke_queue(&again.to_json(), 1).await;
        assert!(new.logs().contains("still running") || new.logs().contains("next check"), "{}", new.logs());
        let record = app.record("again.jsonl").await.expect("the record");
        assert_eq!((record.checks, record.chain.as_deref()), (1, again.chain.as_deref()));

        // Once a check ran, a repeated event changes nothing.
        let late = app.deliver_blob("again.jsonl", content.as_bytes(), &etag).await;
        assert!(late.body["Outputs"]["outQueue"].is_null(), "{:?}", late.body);
        assert!(late.logs().contains("nothing to do"), "{}", late.logs());
    })
    .await;
}

#[tokio::test]
async fn every_event_twice_still_makes_one_job_per_blob_version() {
    bounded_for(Duration::from_secs(120), async {
        let stack = event_grid_stack().await;
        let mut events = Vec::new();
        for i in 0..4 {
            let name = format!("twice{i}.jsonl");
            let etag = upload_small(&stack, &name).await;
            events.push(stack.blob_created(&name, &etag));
        }
        // Each event twice, in two deliveries; then the first file is overwritten: its new version is new work.
        for _ in 0..2 {
            assert_eq!(
                stack.post_events("BlobMonitor", "Notification", &Value::from(events.clone())).await.status(),
                202
            );
        }
        stack.wait_for_reports(4, Duration::from_secs(60)).await;
        let etag = upload(&stack.storage, "twice0.jsonl", sample_jsonl(3).as_bytes()).await;
        for _ in 0..2 {
            let event = stack.blob_created("twice0.jsonl", &etag);
            assert_eq!(stack.post_events("BlobMonitor", "Notification", &event).await.status(), 202);
        }
        let reports = stack.wait_for_reports(5, Duration::from_secs(60)).await;
        assert!(reports.iter().all(|r| r.contains("ended completed")), "{reports:#?}");
        wait_for("every delivery to have run", Duration::from_secs(30), || async {
            (blob_runs(&stack) >= 10).then_some(())
        })
        .await;

        assert_eq!(stack.emulator.world.jobs().len(), 5, "one job per version, though every version ran twice");
        let mut per_version: HashMap<(String, String), usize> = HashMap::new();
        for record in stack.records().await {
            *per_version.entry((record.blob.clone(), record.etag.clone())).or_default() += 1;
        }
        assert_eq!(per_version.len(), 5, "{per_version:?}");
        assert!(per_version.values().all(|n| *n == 1), "{per_version:?}");
        stack.assert_no_poison().await;
    })
    .await;
}

#[tokio::test]
async fn events_for_300_blobs_while_the_handler_is_killed_make_one_job_each() {
    let n = count_from_env("EVENT_GRID_BLOBS", 300) as usize;
    bounded_for(Duration::from_secs(600), async {
        let stack = event_grid_stack().await;
        let mut events = Vec::new();
        for i in 0..n {
            let name = format!("eg{i:04}.jsonl");
            let etag = upload_small(&stack, &name).await;
            events.push(stack.blob_created(&name, &etag));
        }
        let worker = stack.host.worker();
        worker.kill_handler();
        // Every event arrives twice while the handler is down or restarting, in deliveries of up to 50.
        for copy in 0..2 {
            for chunk in events.chunks(50) {
                let answer = stack.post_events("BlobMonitor", "Notification", &Value::from(chunk.to_vec())).await;
                assert_eq!(answer.status(), 202, "delivery {copy}");
            }
        }
        // And it is killed twice more while the events are being run.
        for _ in 0..2 {
            let runs = blob_runs(&stack);
            wait_for("more BlobMonitor runs", Duration::from_secs(120), || async {
                (blob_runs(&stack) >= runs + n / 4).then_some(())
            })
            .await;
            worker.kill_handler();
        }
        // Every delivery has run (a late duplicate could otherwise start a job after the count), and every job ended.
        wait_for("the host's blob queue to drain", Duration::from_secs(180), || async {
            (count(&stack.storage, "azure-webjobs-blobtrigger-devstack").await == 0).then_some(())
        })
        .await;
        let records = stack.wait_for_endings(n, Duration::from_secs(300)).await;
        assert_eq!(records.len(), n);

        let mut per_blob: HashMap<String, usize> = HashMap::new();
        for job in &stack.emulator.world.jobs() {
            *per_blob.entry(job.input_blob.clone()).or_default() += 1;
        }
        assert_eq!(per_blob.len(), n, "every blob has a job");
        let twice: Vec<_> = per_blob.iter().filter(|(_, jobs)| **jobs > 1).collect();
        assert!(twice.is_empty(), "blobs with two jobs: {twice:?}");
        assert!(records.iter().all(|r| r.batch_id.is_some() && r.status.as_deref() == Some("completed")));
        // One chain of checks per job: no ending is reported twice.
        let mut endings: HashMap<String, usize> = HashMap::new();
        for report in stack.final_reports() {
            *endings.entry(report.split(' ').nth(1).unwrap_or_default().to_string()).or_default() += 1;
        }
        let twice: Vec<_> = endings.iter().filter(|(_, reports)| **reports > 1).collect();
        let seen: Vec<_> = stack
            .host
            .invocations()
            .into_iter()
            .filter(|r| twice.iter().any(|(b, _)| r.outcome.logs.iter().any(|l| l.contains(b.as_str()))))
            .map(|r| (r.function, r.trigger, r.outcome.logs))
            .collect();
        assert!(twice.is_empty(), "endings reported twice: {twice:?}: {seen:#?}");
        stack.assert_no_poison().await;
        println!(
            "event grid: {n} blobs, each event twice, the handler killed 3 times: {} BlobMonitor runs, {n} jobs, {} \
             endings reported (the rest lost with a killed invocation's logs)",
            blob_runs(&stack),
            endings.len()
        );
    })
    .await;
}
