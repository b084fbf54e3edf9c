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

/// A front to Azurite that passes every request on and records it, but answers Put Block From URL 501, as a storage
/// service without it does (Azurite before 3.37, some Azure Stack versions).
async fn refusing_front(
    azurite: blob_batch_monitor::storage::StorageClient,
) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use axum::extract::{Request, State};
    use axum::response::{IntoResponse, Response};
    type Log = std::sync::Arc<std::sync::Mutex<Vec<String>>>;
    async fn front(State((base, log)): State<(url::Url, Log)>, request: Request) -> Response {
        let (parts, body) = request.into_parts();
        let body = axum::body::to_bytes(body, 64 << 20).await.unwrap_or_default();
        let copy = parts.headers.contains_key("x-ms-copy-source");
        log.lock().expect("log").push(format!(
            "{} {}{}",
            parts.method,
            parts.uri.path(),
            if copy { " (copy)" } else { "" }
        ));
        if copy {
            return (reqwest::StatusCode::NOT_IMPLEMENTED, [("x-ms-error-code", "NotImplemented")]).into_response();
        }
        let origin = format!("http://{}:{}", base.host_str().unwrap_or(""), base.port().unwrap_or(80));
        let mut forwarded = reqwest::Client::new().request(parts.method, format!("{origin}{}", parts.uri)).body(body);
        for (k, v) in parts.headers.iter().filter(|(k, _)| *k != "host") {
            forwarded = forwarded.header(k, v);
        }
        let answer = match forwarded.send().await {
            Ok(a) => a,
            Err(e) => return (reqwest::StatusCode::BAD_GATEWAY, format!("front: {e:?}")).into_response(),
        };
        let mut response = Response::builder().status(answer.status());
        let hop = |k: &str| matches!(k, "content-length" | "transfer-encoding" | "connection");
        for (k, v) in answer.headers().iter().filter(|(k, _)| !hop(k.as_str())) {
            response = response.header(k, v);
        }
        response.body(axum::body::Body::from(answer.bytes().await.unwrap_or_default())).expect("response")
    }
    let log: Log = Default::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let base = azurite.account().blob_endpoint.clone();
    let app = axum::Router::new().fallback(front).with_state((base.clone(), log.clone()));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{address}{}", base.path().trim_end_matches('/')), log)
}

#[tokio::test]
async fn blocks_are_copied_by_the_service_where_it_can_and_through_the_handler_where_it_answers_501() {
    use blob_batch_monitor::storage::block::Copier;
    bounded(async {
        let app = spawn_app_with(TestOptions::default()).await;
        let content: String = sample_jsonl(2_000);
        app.upload("source.jsonl", content.as_bytes()).await;
        let (start, end) = (100u64, content.len() as u64 - 100);
        // Azurite copies the blocks itself (Put Block From URL, the source authorised by a service SAS): the copier
        // never falls back, so it never reads a byte of the source.
        let copier = Copier::default();
        let ids = copier
            .copy_range(&app.storage, ("batch-input", "copied.jsonl"), ("batch-input", "source.jsonl"), (start, end), 0)
            .await
            .expect("copied");
        app.storage.put_block_list("batch-input", "copied.jsonl", &ids, "application/jsonl").await.expect("committed");
        assert!(!copier.streams(), "the service copied");
        // The service SAS that authorises the source is one Azurite accepts on its own (and a wrong one it refuses).
        let name = app.account.blob_endpoint.path().trim_matches('/').to_string();
        let key = base64::Engine::decode(
            &base64::engine::general_purpose::STANDARD,
            blob_batch_monitor::storage::connection::DEVSTORE_KEY,
        )
        .expect("key");
        let expiry = blob_batch_monitor::clock::unix_now() + 600;
        let sas = blob_batch_monitor::storage::block::service_sas(&name, &key, "batch-input/source.jsonl", expiry);
        let url = format!("{}?{sas}", app.blob_url("source.jsonl"));
        let read = reqwest::Client::new().get(&url).header("x-ms-version", "2025-11-05").send().await.expect("read");
        assert_eq!(read.status(), reqwest::StatusCode::OK, "{:?}", read.text().await);
        let forged = url.replace("sp=r", "sp=rw");
        let refused =
            reqwest::Client::new().get(&forged).header("x-ms-version", "2025-11-05").send().await.expect("read");
        assert_eq!(refused.status(), reqwest::StatusCode::FORBIDDEN);
        // The same account behind a front that answers 501: one refused copy, then every block through the handler.
        let (front, log) = refusing_front(app.storage.clone()).await;
        let mut account = app.account.clone();
        account.blob_endpoint = front.parse().expect("url");
        let client = blob_batch_monitor::storage::StorageClient::new(
            blob_batch_monitor::http_client::HttpClient::new(64 << 20, &Default::default()).expect("client"),
            account,
        );
        let copier = Copier::default();
        let ids = copier
            .copy_range(&client, ("batch-input", "streamed.jsonl"), ("batch-input", "source.jsonl"), (start, end), 0)
            .await
            .expect("copied");
        client.put_block_list("batch-input", "streamed.jsonl", &ids, "application/jsonl").await.expect("committed");
        let asked = log.lock().expect("log").clone();
        assert!(copier.streams(), "{asked:?}");
        assert_eq!(asked.iter().filter(|l| l.ends_with("(copy)")).count(), 1, "asked once: {asked:?}");
        assert_eq!(asked.iter().filter(|l| l.starts_with("GET")).count(), ids.len(), "{asked:?}");
        for name in ["copied.jsonl", "streamed.jsonl"] {
            let blob = app.storage.get_blob("batch-input", name).await.expect("read").expect("written");
            assert_eq!(blob.content.as_ref(), &content.as_bytes()[start as usize..end as usize], "{name}");
        }
    })
    .await;
}

#[tokio::test]
async fn kills_during_the_split_a_part_submission_and_the_merge_lose_nothing_and_double_nothing() {
    bounded_for(Duration::from_secs(240), async {
        let stack = stack(10, Vec::new()).await;
        let worker = stack.host.worker();
        let kill = |what: &'static str| {
            let starts = worker.starts.load(std::sync::atomic::Ordering::SeqCst);
            worker.kill_handler();
            async move {
                wait_for(&format!("a restart after the kill {what}"), Duration::from_secs(30), || async {
                    (worker.starts.load(std::sync::atomic::Ordering::SeqCst) > starts).then_some(())
                })
                .await;
            }
        };
        // Part creates are held, so that the split's end can be told apart from the submissions.
        let held = stack.emulator.world.hold_creates();
        stack.drop_blob("killed.jsonl", sample_jsonl(400).as_bytes()).await;
        // 1. During the split: some of the 40 parts are written, not all.
        wait_for("a split under way", Duration::from_secs(60), || async {
            let written = stack
                .records()
                .await
                .iter()
                .find(|r| r.parts.len() == 40)
                .map(|r| r.parts.iter().filter(|p| p.etag.is_some()).count());
            written.filter(|n| (2..40).contains(n)).map(|_| ())
        })
        .await;
        kill("during the split").await;
        // 2. During a part's submission: its create is held after the job exists.
        wait_for("a part's create under way", Duration::from_secs(60), || async {
            (!stack.emulator.world.jobs().is_empty()).then_some(())
        })
        .await;
        kill("during a part's submission").await;
        drop(held);
        // 3. Around the merge: as soon as every part has ended.
        wait_for("every part ended", Duration::from_secs(150), || async {
            let file = stack.records().await.into_iter().find(|r| r.parts.len() == 40)?;
            file.parts.iter().all(|p| p.state == PartState::Ended).then_some(())
        })
        .await;
        kill("around the merge").await;
        file_report(&stack, "killed.jsonl", Duration::from_secs(60)).await;
        assert_merged(&stack, "killed.jsonl", 400, 40).await;
        stack.assert_no_poison().await;
    })
    .await;
}

#[tokio::test]
async fn a_part_the_service_fails_for_the_quota_waits_and_is_retried_without_holding_the_others_back() {
    bounded_for(Duration::from_secs(120), async {
        // No quota known to the app: all three parts go at once. The service's quota holds two; the third is
        // accepted and then failed after validation, as regions outside the fail-fast list do.
        let stack = stack(10, Vec::new()).await;
        {
            let mut config = stack.emulator.world.config.lock().expect("config");
            config.token_quota = Some(1100);
            config.quota_mode = devstack::batch_emulator::QuotaMode::AfterValidation;
        }
        stack.drop_blob("quota.jsonl", sample_jsonl(30).as_bytes()).await;
        let report = file_report(&stack, "quota.jsonl", Duration::from_secs(90)).await;
        assert!(report.contains("ended completed in 3 parts"), "{report}");
        let jobs = stack.emulator.world.jobs();
        let failed: Vec<_> = jobs.iter().filter(|j| j.status == "failed").collect();
        assert!(!failed.is_empty(), "the quota failed a part: {jobs:#?}");
        assert!(failed.iter().all(|j| j.errors.iter().any(|e| e["code"] == "token_limit_exceeded")));
        // Every part completed once; the failed attempt was replaced, not counted.
        let completed = jobs.iter().filter(|j| j.status == "completed").count();
        assert_eq!(completed, 3);
        let ids =
            ids_in(&stack, file_record(&stack, "quota.jsonl").await.output_blob.as_deref().expect("merged")).await;
        assert!(ids.len() == 30 && ids.values().all(|c| *c == 1), "{ids:?}");
    })
    .await;
}

#[tokio::test]
async fn the_page_shows_a_split_file_as_one_row_and_resubmits_only_its_dead_lettered_part() {
    bounded_for(Duration::from_secs(150), async {
        let stack = stack(10, Vec::new()).await;
        stack.drop_blob("lost.jsonl", sample_jsonl(30).as_bytes()).await;
        // The service loses one part's batch: that part is dead-lettered, the others complete, the file ends.
        let lost = wait_for("a part's job", Duration::from_secs(60), || async {
            stack.emulator.world.jobs().first().cloned()
        })
        .await;
        assert!(stack.emulator.world.forget(&lost.id));
        let first = file_report(&stack, "lost.jsonl", Duration::from_secs(90)).await;
        assert!(first.contains("ended dead-lettered in 3 parts"), "{first}");
        let address = stack.host.http_address().expect("the page");
        let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client");
        let page: Value = serde_json::from_slice(
            &client
                .get(format!("http://{address}/api/jobs?format=json"))
                .send()
                .await
                .expect("page")
                .bytes()
                .await
                .expect("body"),
        )
        .expect("json");
        assert_eq!(page["counters"]["total"], 1, "the parts are not rows of their own: {page}");
        assert_eq!(page["rows"][0]["parts"], serde_json::json!([3, 3]));
        let key = page["rows"][0]["key"].as_str().expect("key").to_string();
        let html = client
            .get(format!("http://{address}/api/jobs/{key}"))
            .send()
            .await
            .expect("page")
            .text()
            .await
            .expect("html");
        assert!(html.contains("Parts") && html.contains("part-00003.jsonl") && html.contains("Resubmit"), "{html}");
        // Resubmit: only the dead-lettered part runs again; the file ends anew, completed, with a second event.
        let answer = client
            .post(format!("http://{address}/api/jobs/{key}/resubmit"))
            .header("origin", format!("http://{address}"))
            .send()
            .await
            .expect("answer");
        assert_eq!(answer.status(), reqwest::StatusCode::SEE_OTHER);
        wait_for("the file completed", Duration::from_secs(60), || async {
            stack.final_reports().into_iter().find(|l| l.contains("batch-input/lost.jsonl ended completed in 3 parts"))
        })
        .await;
        let creates =
            stack.emulator.world.requests().iter().filter(|r| r.method == "POST" && r.path == "/batches").count();
        assert_eq!(creates, 4, "three parts, the lost one twice");
        let ids = ids_in(&stack, file_record(&stack, "lost.jsonl").await.output_blob.as_deref().expect("merged")).await;
        assert!(ids.len() == 30 && ids.values().all(|c| *c == 1), "{ids:?}");
        let events = crate::helpers::queues::peek(&stack.storage, "batch-completed").await;
        let statuses: Vec<String> = events
            .iter()
            .map(|e| serde_json::from_str::<Value>(e).expect("json"))
            .filter(|e| e["blob"] == "batch-input/lost.jsonl")
            .map(|e| e["status"].as_str().unwrap_or_default().to_string())
            .collect();
        assert_eq!(statuses, ["dead-lettered", "completed"]);
    })
    .await;
}
