//! An interrupted create is found however many jobs came after it, and a blob version that ended up with two jobs
//! keeps the earliest and has the other cancelled (issue 19).

use blob_batch_monitor::jobs::record::{JobRecord, RecordState};
use devstack::batch_emulator::{unix_now, Faults};
use reqwest::StatusCode;

use crate::helpers::{bounded, sample_jsonl, spawn_app_with, TestApp, TestOptions};

/// Jobs other blobs made after the interrupted create: ten times what the old ten-page bound could read through.
const NEWER_JOBS: u64 = 5_000;
/// Jobs other blobs made before it.
const OLDER_JOBS: u64 = 2_000;

/// When the interrupted attempt sent its create: an hour ago.
fn attempt_time() -> u64 {
    unix_now() - 3_600
}

/// Uploads `name` and writes the record an attempt that died during its create at `sent` leaves behind.
async fn interrupted(app: &TestApp, name: &str, sent: u64) -> JobRecord {
    let etag = app.upload(name, sample_jsonl(2).as_bytes()).await.trim_matches('"').to_string();
    let record = JobRecord {
        blob: format!("batch-input/{name}"),
        blob_url: app.blob_url(name),
        etag,
        state: RecordState::Submitting,
        submit_attempts: 1,
        creates_in_doubt: Some(vec![sent]),
        started_at: sent - 1,
        ..JobRecord::default()
    };
    app.put_record(&record).await;
    record
}

/// Plants `n` jobs of other blobs created evenly from `from` to `to`.
fn plant_others(app: &TestApp, n: u64, from: u64, to: u64) {
    for i in 0..n {
        let at = from + (to - from) * i / n.max(1);
        let job = app.emulator.world.job_for(&app.blob_url(&format!("other-{i}.jsonl")), at);
        app.emulator.world.plant(job);
    }
}

/// Delivers the blob again (the host's retry) and returns the batch id it hands to monitoring.
async fn retry(app: &TestApp, record: &JobRecord) -> String {
    let name = record.blob.trim_start_matches("batch-input/");
    let answer = app.deliver_blob(name, sample_jsonl(2).as_bytes(), &record.etag).await;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    answer.body["Outputs"]["outQueue"]["batchId"].as_str().expect("a monitor message").to_string()
}

/// The retried submission adopts the job that its interrupted create made, with thousands of newer jobs listed
/// before it; returns how many list calls it took.
async fn adopts_behind_thousands(options: TestOptions, faults: Faults) -> usize {
    let app = spawn_app_with(options).await;
    app.emulator.world.set_faults(faults);
    let sent = attempt_time();
    plant_others(&app, OLDER_JOBS, sent - 7_200, sent - 600);
    let record = interrupted(&app, "busy.jsonl", sent).await;
    let made = app.emulator.world.job_for(&record.blob_url, sent + 2);
    let made_id = made.id.clone();
    app.emulator.world.plant(made);
    plant_others(&app, NEWER_JOBS, sent + 600, unix_now());

    assert_eq!(retry(&app, &record).await, made_id, "the retry follows the job its interrupted create made");
    assert_eq!(app.emulator.world.count("POST", "/batches"), 0, "no second job, and nothing to cancel");
    let after = app.record("busy.jsonl").await.expect("record");
    assert_eq!(
        (after.state, after.batch_id.as_deref(), after.creates_in_doubt.as_deref()),
        (RecordState::Submitted, Some(made_id.as_str()), Some(&[][..]))
    );
    app.emulator.world.requests().iter().filter(|r| r.method == "GET" && r.path.ends_with("/batches")).count()
}

#[tokio::test]
async fn the_dated_surface_is_asked_for_the_window_only() {
    bounded(async {
        let lists = adopts_behind_thousands(TestOptions::default(), Faults::default()).await;
        assert_eq!(lists, 1, "one filtered page holds the window");
    })
    .await;
}

#[tokio::test]
async fn without_a_filter_the_list_is_read_back_to_the_window() {
    bounded(async {
        let v1 = TestOptions { api_version: "v1".into(), ..TestOptions::default() };
        let lists = adopts_behind_thousands(v1, Faults::default()).await;
        assert_eq!(lists as u64, NEWER_JOBS / 100 + 1, "every newer page, then the one reaching before the window");
        // A dated surface that refuses the filter: the same reading, after one refused call.
        let refused =
            adopts_behind_thousands(TestOptions::default(), Faults { refuse_odata: true, ..Faults::default() });
        assert_eq!(refused.await as u64, NEWER_JOBS / 100 + 2);
    })
    .await;
}

#[tokio::test]
async fn two_jobs_for_one_blob_version_keep_the_earliest_and_cancel_the_spare() {
    bounded(async {
        let app = spawn_app_with(TestOptions::default()).await;
        let sent = attempt_time();
        let record = interrupted(&app, "twice.jsonl", sent).await;
        let world = &app.emulator.world;
        let earliest = world.job_for(&record.blob_url, sent + 1);
        // A job of an earlier version of the same blob, on that version's record: neither adopted nor cancelled.
        let other_version = world.job_for(&record.blob_url, sent);
        let spare = world.job_for(&record.blob_url, sent + 9);
        let ids = [earliest.id.clone(), other_version.id.clone(), spare.id.clone()];
        for job in [other_version, earliest, spare] {
            world.plant(job);
        }
        app.put_record(&JobRecord {
            etag: "0x8DEADBEEF".into(),
            state: RecordState::Submitted,
            batch_id: Some(ids[1].clone()),
            ..record.clone()
        })
        .await;

        assert_eq!(retry(&app, &record).await, ids[0], "the earliest job is followed");
        let status = |id: &str| world.job(id).expect("job").status;
        assert_eq!(
            [status(&ids[0]), status(&ids[1]), status(&ids[2])],
            ["validating", "validating", "cancelling"],
            "only the spare is cancelled"
        );
        let after = app.record_of("twice.jsonl", &record.etag).await.expect("record");
        assert_eq!(after.spare_batch_ids, [ids[2].clone()]);
        let page: serde_json::Value = app
            .http
            .get(format!("http://{}/api/jobs?format=json", app.addr))
            .send()
            .await
            .expect("page")
            .bytes()
            .await
            .map(|b| serde_json::from_slice(&b).expect("json"))
            .expect("body");
        let row = page["rows"].as_array().expect("rows").iter().find(|r| r["etag"] == record.etag.as_str()).cloned();
        assert_eq!(row.expect("the row")["spares"], 1, "the page says the blob had a spare job");
        // Delivered once more, the blob version has its job: nothing is listed, created or cancelled again.
        let calls = world.requests().len();
        let again = app.deliver_blob("twice.jsonl", sample_jsonl(2).as_bytes(), &record.etag).await;
        assert!(again.logs().contains(&format!("monitoring existing batch {}", ids[0])), "{}", again.logs());
        assert_eq!(world.requests().len(), calls, "{:?}", &world.requests()[calls..]);
    })
    .await;
}
