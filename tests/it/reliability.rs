//! Exactly one job per blob version, nothing lost, under duplicate deliveries, crashes, outages and quota limits.

use devstack::storage_ops::QueueOps;
use std::time::Duration;

use blob_batch_monitor::jobs::message::{MonitorMessage, MONITOR_QUEUE, POISON_QUEUE};
use blob_batch_monitor::jobs::record::RecordState;
use devstack::batch_emulator::{Faults, Timings};
use devstack::host_emulator::envelope::{blob_envelope, BlobInfo};
use reqwest::StatusCode;

use crate::helpers::stack::{Stack, StackOptions};
use crate::helpers::{
    bounded, bounded_for, sample_jsonl, spawn_app, spawn_app_with, wait_for, TestApp, TestOptions, API_KEY,
};

/// The next visible message of the monitor queue, waited for.
async fn next_message(app: &TestApp, limit: Duration) -> String {
    wait_for("a visible monitor-queue message", limit, || async { app.peek(MONITOR_QUEUE).await.pop() }).await
}

/// Takes (receives and deletes) every visible message of the monitor queue.
async fn take_all(app: &TestApp) -> Vec<String> {
    let ms = app.storage.get_messages(MONITOR_QUEUE, 32, Duration::from_secs(60)).await.unwrap_or_default();
    let mut texts = Vec::new();
    for m in ms {
        let raw = blob_batch_monitor::storage::MessageEncoding::Base64.decode(&m.message_text).expect("base64");
        texts.push(String::from_utf8(raw).expect("utf-8"));
        app.storage
            .delete_message(MONITOR_QUEUE, &m.message_id, m.pop_receipt.as_deref().unwrap_or_default())
            .await
            .expect("delete");
    }
    texts
}

#[tokio::test]
async fn the_same_blob_delivered_twice_concurrently_makes_one_job() {
    bounded(async {
        let app = spawn_app().await;
        // Creates are held until the second delivery has made its decision, so that both really overlap.
        let held = app.emulator.world.hold_creates();
        let content = sample_jsonl(2);
        let etag = app.upload("twice.jsonl", content.as_bytes()).await;
        let url = app.blob_url("twice.jsonl");
        let info = BlobInfo {
            url: &url,
            name: "twice.jsonl",
            etag: &etag,
            last_modified: "",
            content_type: "application/jsonl",
        };
        let envelope = blob_envelope("BlobMonitor", "inputBlob", content.as_bytes(), &info);
        let release = async {
            // One delivery is inside its create; the other has deferred itself (its submission is on the queue).
            wait_for("one create held and one delivery deferred", Duration::from_secs(20), || async {
                (app.emulator.world.jobs().len() == 1 && app.count(MONITOR_QUEUE).await == 1).then_some(())
            })
            .await;
            drop(held);
        };
        let (a, b, ()) =
            tokio::join!(app.post("BlobMonitor", envelope.clone()), app.post("BlobMonitor", envelope.clone()), release);
        assert_eq!((a.status, b.status), (StatusCode::OK, StatusCode::OK));
        assert_eq!(app.emulator.world.jobs().len(), 1, "one job for one blob version");
        let outputs = [&a, &b].iter().filter(|x| x.body["Outputs"]["outQueue"].is_object()).count();
        assert_eq!(outputs, 1, "one invocation created the job: {:?} / {:?}", a.body, b.body);
        let check: MonitorMessage = serde_json::from_value(
            [&a, &b]
                .iter()
                .find_map(|x| x.body["Outputs"]["outQueue"].is_object().then(|| x.body["Outputs"]["outQueue"].clone()))
                .expect("output"),
        )
        .expect("check");
        // The other deferred itself; when it runs, it finds the job and, as no check has run yet, restarts
        // monitoring in case the creator's output was lost.
        let deferred = next_message(&app, Duration::from_secs(20)).await;
        assert!(deferred.contains("\"submit\""), "{deferred}");
        take_all(&app).await;
        let answer = app.invoke_queue(&deferred, 1).await;
        assert!(answer.logs().contains("monitoring existing batch"), "{}", answer.logs());
        // Two first checks now exist; exactly one of them goes on.
        let restarted = next_message(&app, Duration::from_secs(5)).await;
        take_all(&app).await;
        let first = app.invoke_queue(&check.to_json(), 1).await;
        let second = app.invoke_queue(&restarted, 1).await;
        let logs = [first.logs(), second.logs()];
        assert_eq!(logs.iter().filter(|l| l.contains("next check")).count(), 1, "{logs:?}");
        assert_eq!(logs.iter().filter(|l| l.contains("superseded")).count(), 1, "{logs:?}");
        // A late delivery of the trigger, after monitoring started, does nothing.
        let late = app.post("BlobMonitor", envelope).await;
        assert!(late.logs().contains("already has batch"), "{}", late.logs());
        assert_eq!(app.emulator.world.count("POST", "/batches"), 1);
    })
    .await;
}

#[tokio::test]
async fn a_duplicate_delivery_of_a_check_is_dropped() {
    bounded(async {
        let app = spawn_app().await;
        let first = app.create_job("dup.jsonl").await;
        assert!(first.etag.is_some(), "BlobMonitor's message names the record");
        let a = app.invoke_queue(&first.to_json(), 1).await;
        assert!(a.logs().contains("next check"), "{}", a.logs());
        // The same message again (e.g. the host redelivered it after a lost acknowledgement).
        let b = app.invoke_queue(&first.to_json(), 2).await;
        assert!(b.logs().contains("superseded"), "{}", b.logs());
        assert_eq!(app.emulator.world.count("GET", &first.batch_id), 1);
        let follow_ups = wait_for("one follow-up", Duration::from_secs(10), || async {
            let v = app.peek(MONITOR_QUEUE).await;
            (!v.is_empty()).then_some(v)
        })
        .await;
        assert_eq!(follow_ups.len(), 1, "exactly one chain of checks");
        let record = app.record("dup.jsonl").await.expect("record");
        assert_eq!(
            (record.state, record.checks, record.batch_id.as_deref()),
            (RecordState::Submitted, 1, Some(first.batch_id.as_str()))
        );
    })
    .await;
}

#[tokio::test]
async fn a_full_token_quota_at_create_defers_with_backoff_and_never_poisons() {
    bounded(async {
        let app = spawn_app().await; // BATCH_RETRY_DELAY = 2 s
        app.emulator.world.set_faults(Faults { token_limit_creates: 2, ..Faults::default() });
        let answer = app.invoke_blob("quota.jsonl", sample_jsonl(1).as_bytes()).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert!(answer.logs().contains("deferred by 2 s"), "{}", answer.logs());
        let record = app.record("quota.jsonl").await.expect("record");
        assert_eq!(record.state, RecordState::Deferred);
        assert!(record.reason.as_deref().is_some_and(|r| r.contains("token_limit_exceeded")));

        let retry = next_message(&app, Duration::from_secs(10)).await;
        take_all(&app).await;
        let second = app.invoke_queue(&retry, 1).await;
        assert!(second.logs().contains("deferred by 4 s"), "exponential: {}", second.logs());
        let retry = next_message(&app, Duration::from_secs(15)).await;
        take_all(&app).await;
        let third = app.invoke_queue(&retry, 1).await;
        assert!(third.logs().contains("created batch"), "{}", third.logs());
        let check: MonitorMessage =
            serde_json::from_str(&next_message(&app, Duration::from_secs(5)).await).expect("check");
        assert_eq!(app.emulator.world.jobs().len(), 1);
        assert_eq!(check.batch_id, app.emulator.world.jobs()[0].id);
        assert!(app.peek(POISON_QUEUE).await.is_empty());
        // A refused create made no job: the later attempts had nothing to look for.
        assert_eq!(app.emulator.world.count("GET", "/batches"), 0, "{:?}", app.emulator.world.requests());
    })
    .await;
}

#[tokio::test]
async fn a_job_failed_by_the_token_quota_is_submitted_again() {
    bounded(async {
        let app = spawn_app_with(TestOptions::quick_jobs()).await;
        app.emulator.world.set_faults(Faults { token_limit_jobs: 1, ..Faults::default() });
        let first = app.create_job("requota.jsonl").await;
        wait_for("the job to fail", Duration::from_secs(10), || async {
            app.emulator.world.job(&first.batch_id).filter(|j| j.status == "failed")
        })
        .await;
        let answer = app.invoke_queue(&first.to_json(), 1).await;
        assert!(answer.logs().contains("submitting batch-input/requota.jsonl again"), "{}", answer.logs());
        let retry = next_message(&app, Duration::from_secs(10)).await;
        take_all(&app).await;
        let created = app.invoke_queue(&retry, 1).await;
        assert!(created.logs().contains("created batch"), "{}", created.logs());
        let jobs = app.emulator.world.jobs();
        assert_eq!(jobs.len(), 2);
        let record = app.record("requota.jsonl").await.expect("record");
        assert_eq!(record.superseded_batch_ids, std::slice::from_ref(&first.batch_id));
        assert_eq!(record.batch_id.as_deref(), Some(jobs[1].id.as_str()));
        // A late check of the replaced job is dropped.
        let late = app.invoke_queue(&first.to_json(), 2).await;
        assert!(late.logs().contains("superseded"), "{}", late.logs());
    })
    .await;
}

#[tokio::test]
async fn the_handler_killed_after_the_api_accepted_the_job_still_leaves_exactly_one_job() {
    // The inner waits (30 s for the job, 75 s for its report) and a margin.
    bounded_for(Duration::from_secs(120), async {
        let stack = Stack::start(StackOptions::default()).await;
        // The create answer is held after the job exists: the handler dies inside that window.
        let held = stack.emulator.world.hold_creates();
        stack.drop_blob("worst-moment.jsonl", sample_jsonl(2).as_bytes()).await;
        wait_for("the API to accept the job", Duration::from_secs(30), || async {
            (!stack.emulator.world.jobs().is_empty()).then_some(())
        })
        .await;
        stack.host.worker().kill_handler();
        drop(held);
        // Recovery: the retried trigger finds the record of an attempt and, once the dead invocation's lease has
        // expired, adopts the job the API already has.
        let reports = stack.wait_for_reports(1, Duration::from_secs(75)).await;
        assert!(reports[0].contains("ended completed"), "{reports:?}");
        assert_eq!(stack.emulator.world.jobs().len(), 1, "exactly one job");
        assert_eq!(stack.emulator.world.count("POST", "/batches"), 1, "never created twice");
        let records = stack.records().await;
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].state, RecordState::Ended);
        stack.assert_no_poison().await;
    })
    .await;
}

#[tokio::test]
async fn a_batch_api_outage_longer_than_the_hosts_retries_delays_but_every_job_completes() {
    bounded_for(Duration::from_secs(180), async {
        let stack = Stack::start(StackOptions::default()).await;
        stack.emulator.world.set_faults(Faults { unavailable_percent: 100, ..Faults::default() });
        for i in 0..3 {
            stack.drop_blob(&format!("outage{i}.jsonl"), sample_jsonl(1).as_bytes()).await;
        }
        // The outage lasts until every blob has used up the host's quick retries and failed again after deferring
        // itself through the queue: four failed creates each.
        wait_for("every blob deferred through the queue and failed again", Duration::from_secs(120), || async {
            let records = stack.records().await;
            (records.len() == 3 && records.iter().all(|r| r.failures >= 4)).then_some(())
        })
        .await;
        assert!(stack.emulator.world.jobs().is_empty());
        stack.emulator.world.set_faults(Faults::default());
        let reports = stack.wait_for_reports(3, Duration::from_secs(60)).await;
        assert!(reports.iter().all(|r| r.contains("ended completed")), "{reports:#?}");
        assert_eq!(stack.emulator.world.jobs().len(), 3);
        stack.assert_no_poison().await;
    })
    .await;
}

#[tokio::test]
async fn azurite_restarted_mid_run_loses_no_job() {
    // The inner waits (30 s for a job, 80 s for the reports) and a margin.
    bounded_for(Duration::from_secs(130), async {
        use devstack::azurite::{Azurite, AzuriteOptions, Persistence};
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let dir =
            std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("azurite-restart-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let options = AzuriteOptions {
            persistence: Persistence::Folder(dir.clone()),
            ports: crate::helpers::azurite::restartable_ports(),
            ..AzuriteOptions::default()
        };
        let azurite = Azurite::start(root, &options).await.expect("azurite");
        let connection = azurite.devstore_connection_string();
        let stack = Stack::start(StackOptions {
            connection: Some(connection),
            timings: Timings::uniform(Duration::from_millis(800)),
            ..Default::default()
        })
        .await;
        for i in 0..3 {
            stack.drop_blob(&format!("restart{i}.jsonl"), sample_jsonl(2).as_bytes()).await;
        }
        wait_for("a first job", Duration::from_secs(30), || async {
            (!stack.emulator.world.jobs().is_empty()).then_some(())
        })
        .await;
        azurite.stop().await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let restarted = Azurite::start(root, &options).await.expect("azurite again");
        let reports = stack.wait_for_reports(3, Duration::from_secs(80)).await;
        assert!(reports.iter().all(|r| r.contains("ended completed")), "{reports:#?}");
        assert_eq!(stack.emulator.world.jobs().len(), 3, "no job lost, none duplicated");
        restarted.stop().await;
        let _ = std::fs::remove_dir_all(&dir);
    })
    .await;
}

#[tokio::test]
async fn the_api_key_never_appears_in_the_handler_output() {
    // 60 % of API calls fail, so the two jobs take a random number of back-offs: about 20 s alone, more with the
    // rest of the suite sharing two cores.
    bounded_for(Duration::from_secs(170), async {
        // Validation off: the bad file becomes a job the service fails, so both blobs end in a final report.
        let stack = Stack::start(StackOptions { validate_input: false, ..StackOptions::default() }).await;
        stack.emulator.world.set_faults(Faults { throttle_percent: 30, unavailable_percent: 30, ..Faults::default() });
        stack.drop_blob("secret.jsonl", sample_jsonl(1).as_bytes()).await;
        stack.drop_blob("bad.jsonl", b"not json\n").await;
        stack.wait_for_reports(2, Duration::from_secs(150)).await;
        let output = stack.host.worker().output();
        assert!(output.len() > 5, "the handler logged: {output:?}");
        assert!(output.iter().all(|l| !l.contains(API_KEY)), "the key leaked into the logs");
        let logs: Vec<String> = stack.host.invocations().into_iter().flat_map(|r| r.outcome.logs).collect();
        assert!(logs.iter().all(|l| !l.contains(API_KEY)));
        assert!(stack.records().await.iter().all(|r| !serde_json::to_string(r).unwrap_or_default().contains(API_KEY)));
    })
    .await;
}
