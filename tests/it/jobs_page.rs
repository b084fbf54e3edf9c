//! The operators' page (`/api/jobs`) against Azurite and the batch emulator: every state with its reason in HTML and
//! JSON, filters and paging, hostile names, the security headers, cancel and resubmit (exactly one job still), and a
//! 10,000-record listing.

use axum::http::StatusCode;
use serde_json::Value;

use blob_batch_monitor::jobs::overview::SHOWN_STATES;
use blob_batch_monitor::jobs::record::{JobRecord, RecordState};
use blob_batch_monitor::jobs::records::RecordStore;
use blob_batch_monitor::jobs::validate::Problem;
use blob_batch_monitor::storage::blob::Condition;

use crate::helpers::{bounded, bounded_for, join_all, sample_jsonl, spawn_app, TestApp};

/// What a GET answered.
struct Page {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    text: String,
}

async fn get(app: &TestApp, path_and_query: &str) -> Page {
    let r = app.http.get(format!("http://{}{path_and_query}", app.addr)).send().await.expect("answer");
    Page { status: r.status(), headers: r.headers().clone(), text: r.text().await.expect("body") }
}

async fn json(app: &TestApp, path_and_query: &str) -> Value {
    serde_json::from_str(&get(app, path_and_query).await.text).expect("json")
}

async fn post(app: &TestApp, path: &str, origin: &str) -> reqwest::Response {
    // No redirects followed: the answer itself is checked.
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client");
    let r = client.post(format!("http://{}{path}", app.addr)).header("origin", origin).header("content-length", "0");
    r.send().await.expect("answer")
}

/// Writes a record directly, as the lifecycle would have left it.
async fn put(app: &TestApp, name: &str, state: RecordState, status: Option<&str>, reason: Option<&str>, started: u64) {
    let record = JobRecord {
        blob: format!("batch-input/{name}"),
        blob_url: app.blob_url(name),
        etag: "0x8D1".into(),
        state,
        status: status.map(str::to_string),
        batch_id: matches!(state, RecordState::Submitted | RecordState::Ended).then(|| format!("batch_{started}")),
        reason: reason.map(str::to_string),
        started_at: started,
        ..JobRecord::default()
    };
    app.put_record(&record).await;
}

#[tokio::test]
async fn every_state_appears_with_its_reason_in_html_and_json_behind_strict_headers() {
    bounded(async {
        let app = spawn_app().await;
        let now = 1_764_500_000;
        put(&app, "sub.jsonl", RecordState::Submitting, None, None, now).await;
        put(&app, "def.jsonl", RecordState::Deferred, None, Some("429 throttled: deferred by 60 s"), now + 1).await;
        put(&app, "run.jsonl", RecordState::Submitted, Some("in_progress"), None, now + 2).await;
        for (i, status) in ["completed", "failed", "expired", "cancelled"].iter().enumerate() {
            put(&app, &format!("{status}.jsonl"), RecordState::Ended, Some(status), None, now + 3 + i as u64).await;
        }
        put(&app, "dead.jsonl", RecordState::DeadLettered, None, Some("the batch API refused: 400"), now + 8).await;
        // A real rejection, through BlobMonitor: its reason is the first problem with its line.
        let rejected = app.invoke_blob("bad.jsonl", b"not json\n").await;
        assert!(rejected.logs().contains("rejected"), "{}", rejected.logs());

        let page = get(&app, "/api/jobs").await;
        assert_eq!(page.status, StatusCode::OK);
        let csp = page.headers["content-security-policy"].to_str().expect("ascii");
        assert!(csp.contains("default-src 'none'") && csp.contains("script-src 'sha256-"), "{csp}");
        assert!(
            !csp.contains("unsafe-inline") && !csp.contains("http"),
            "no inline allowance, no remote source: {csp}"
        );
        assert_eq!(page.headers["x-content-type-options"], "nosniff");
        assert_eq!(page.headers["cache-control"], "no-store");
        assert!(page.headers["content-type"].to_str().is_ok_and(|t| t.starts_with("text/html")));
        for state in SHOWN_STATES {
            assert!(page.text.contains(&format!("class=\"badge {state}\"")), "no {state} badge");
        }
        for reason in ["429 throttled: deferred by 60 s", "the batch API refused: 400", "line 1: invalid_json_line"] {
            assert!(page.text.contains(reason), "no reason {reason:?}");
        }
        assert!(page.text.contains("in_progress"), "a running job shows its batch status");
        assert!(!page.text.contains("<script src") && !page.text.contains("<link"), "nothing loaded from elsewhere");

        let json: Value = serde_json::from_str(&get(&app, "/api/jobs?format=json").await.text).expect("json");
        assert_eq!(json["counters"]["total"], 9, "one record per state");
        for state in SHOWN_STATES {
            assert_eq!(json["counters"]["byState"][state], 1, "{state}: {}", json["counters"]);
        }
        assert_eq!(json["rows"][0]["blob"], "batch-input/bad.jsonl", "newest first");
        let accept = app.http.get(format!("http://{}/api/jobs", app.addr)).header("accept", "application/json");
        let by_accept: Value =
            serde_json::from_slice(&accept.send().await.expect("answer").bytes().await.expect("body")).expect("json");
        assert_eq!(by_accept["counters"], json["counters"]);
    })
    .await;
}

#[tokio::test]
async fn filters_and_paging_keep_the_function_key() {
    bounded(async {
        let app = spawn_app().await;
        let writes = (0..205u64).map(|i| {
            let app = &app;
            let url = app.blob_url(&format!("n{i:03}.jsonl"));
            async move {
                let state = if i % 5 == 0 { RecordState::DeadLettered } else { RecordState::Submitted };
                let r = JobRecord {
                    blob: format!("batch-input/n{i:03}.jsonl"),
                    blob_url: url,
                    etag: "0x1".into(),
                    state,
                    started_at: 1_000 + i,
                    ..JobRecord::default()
                };
                app.put_record(&r).await;
            }
        });
        join_all(writes).await;
        let first = json(&app, "/api/jobs?format=json").await;
        assert_eq!((first["rows"].as_array().map(Vec::len), first["pages"].clone()), (Some(100), Value::from(3)));
        assert_eq!(first["rows"][0]["blob"], "batch-input/n204.jsonl");
        let third = json(&app, "/api/jobs?format=json&page=3").await;
        assert_eq!(third["rows"].as_array().map(Vec::len), Some(5));
        let dead = json(&app, "/api/jobs?format=json&state=dead-lettered").await;
        assert_eq!(dead["matching"], 41);
        let named = json(&app, "/api/jobs?format=json&q=N20").await;
        assert_eq!(named["matching"], 5, "n200..n204, ignoring case");
        let page = get(&app, "/api/jobs?state=running&q=n&code=s3cr%2Ft").await.text;
        assert!(page.contains("page=2") && page.contains("code=s3cr%2Ft"), "links keep the filters and the key");
        assert!(page.contains("name=\"code\" value=\"s3cr/t\""), "the filter form keeps the key");
    })
    .await;
}

#[tokio::test]
async fn a_record_without_a_summary_is_listed_as_unknown_and_opens() {
    bounded(async {
        let app = spawn_app().await;
        put(&app, "new.jsonl", RecordState::Submitted, Some("in_progress"), None, 1_764_500_000).await;
        // A record as an earlier version wrote it: the JSON alone, no summary in its metadata.
        let old = JobRecord {
            blob: "batch-input/old.jsonl".into(),
            blob_url: app.blob_url("old.jsonl"),
            etag: "0x8D2".into(),
            state: RecordState::Ended,
            status: Some("completed".into()),
            ..JobRecord::default()
        };
        let body = bytes::Bytes::from(serde_json::to_vec(&old).expect("json"));
        let key = RecordStore::key(&old.blob, &old.etag);
        app.storage.put_blob("batch-records", &key, body, "application/json", Condition::None, &[]).await.expect("put");

        let listed = json(&app, "/api/jobs?format=json").await;
        assert_eq!(listed["counters"]["total"], 2, "{}", listed["counters"]);
        assert_eq!(listed["counters"]["byState"]["unknown"], 1, "{}", listed["counters"]);
        let row = listed["rows"].as_array().expect("rows").iter().find(|r| r["shown"] == "unknown").expect("row");
        assert_eq!((&row["blob"], &row["etag"]), (&Value::from("batch-input/old.jsonl"), &Value::from("0x8D2")));
        let page = get(&app, "/api/jobs?state=unknown").await;
        assert!(page.text.contains("class=\"badge unknown\"") && page.text.contains("old.jsonl"), "{}", page.text);
        let opened = get(&app, "/api/jobs/batch-input/old.jsonl/0x8D2").await;
        assert_eq!(opened.status, StatusCode::OK);
        assert!(opened.text.contains("&quot;status&quot;: &quot;completed&quot;"), "the whole record: {}", opened.text);
    })
    .await;
}

#[tokio::test]
async fn a_hostile_blob_name_shows_as_text() {
    bounded(async {
        let app = spawn_app().await;
        let name = "<img src=x onerror=alert(1)>.jsonl";
        let mut record = JobRecord {
            blob: format!("batch-input/{name}"),
            blob_url: app.blob_url(name),
            etag: "0x1".into(),
            state: RecordState::Rejected,
            reason: Some("line 1: invalid_json_line: <script>alert(2)</script>".into()),
            ..JobRecord::default()
        };
        record.problems.push(Problem {
            line: 1,
            code: "invalid_json_line".into(),
            message: "<b>x</b>".into(),
            first_line: None,
        });
        app.put_record(&record).await;
        let page = get(&app, "/api/jobs").await.text;
        assert!(page.contains("&lt;img src=x onerror=alert(1)&gt;.jsonl"), "escaped in the table");
        assert!(!page.contains("<img") && !page.contains("<script>alert"), "nothing hostile is markup");
        let detail = get(&app, &format!("/api/jobs/batch-input/{}/0x1", urlencode(name))).await;
        assert_eq!(detail.status, StatusCode::OK, "{}", detail.text);
        assert!(detail.text.contains("&lt;b&gt;x&lt;/b&gt;") && !detail.text.contains("<img"), "escaped in the detail");
    })
    .await;
}

#[tokio::test]
async fn cancel_from_the_page_reaches_the_batch_api_and_cross_site_posts_do_not() {
    bounded(async {
        let app = spawn_app().await;
        let message = app.create_job("tocancel.jsonl").await;
        let record = app.record("tocancel.jsonl").await.expect("record");
        let key = format!("batch-input/tocancel.jsonl/{}", record.etag);
        let forged = post(&app, &format!("/api/jobs/{key}/cancel"), "https://evil.example").await;
        assert_eq!(forged.status(), StatusCode::FORBIDDEN);
        assert!(app.emulator.world.job(&message.batch_id).is_some_and(|j| !j.cancel_requested));

        let answer = post(&app, &format!("/api/jobs/{key}/cancel?code=k1"), &format!("http://{}", app.addr)).await;
        assert_eq!(answer.status(), StatusCode::SEE_OTHER);
        let back = answer.headers()["location"].to_str().expect("ascii").to_string();
        assert!(back.starts_with(&format!("/api/jobs/{key}?")) && back.contains("code=k1"), "{back}");
        assert!(app.emulator.world.job(&message.batch_id).is_some_and(|j| j.cancel_requested));
        let record = app.record("tocancel.jsonl").await.expect("record");
        assert!(record.reason.as_deref().is_some_and(|r| r.contains("asked to cancel")), "{record:?}");
        assert_eq!(record.state, RecordState::Submitted, "monitoring goes on until the job reports cancelled");
        let detail = get(&app, &back).await;
        assert!(detail.text.contains("Batch, as the API reports it now") && detail.text.contains("cancel"));
    })
    .await;
}

#[tokio::test]
async fn a_dead_lettered_blob_resubmitted_from_the_page_makes_exactly_one_job() {
    bounded(async {
        let app = spawn_app().await;
        let etag = app.upload("again.jsonl", sample_jsonl(2).as_bytes()).await;
        let etag = etag.trim_matches('"').to_string();
        let dead = JobRecord {
            blob: "batch-input/again.jsonl".into(),
            blob_url: app.blob_url("again.jsonl"),
            etag: etag.clone(),
            state: RecordState::DeadLettered,
            reason: Some("401: the key was wrong".into()),
            submit_attempts: 1,
            ..JobRecord::default()
        };
        app.put_record(&dead).await;
        let key = format!("batch-input/again.jsonl/{etag}");
        let origin = format!("http://{}", app.addr);
        assert_eq!(post(&app, &format!("/api/jobs/{key}/resubmit"), &origin).await.status(), StatusCode::SEE_OTHER);
        let again = post(&app, &format!("/api/jobs/{key}/resubmit"), &origin).await;
        assert_eq!(again.status(), StatusCode::CONFLICT, "not dead-lettered any more");
        let submit = app.peek(blob_batch_monitor::jobs::message::MONITOR_QUEUE).await;
        assert_eq!(submit.len(), 1, "{submit:?}");
        let started = app.invoke_queue(&submit[0], 1).await;
        assert!(started.logs().contains("created batch"), "{}", started.logs());
        // The same message delivered twice still makes one job.
        let twice = app.invoke_queue(&submit[0], 2).await;
        assert_eq!(twice.status, StatusCode::OK);
        assert_eq!(app.emulator.world.jobs().len(), 1);
        assert_eq!(app.record("again.jsonl").await.expect("record").resubmissions, 1);
    })
    .await;
}

#[tokio::test]
async fn ten_thousand_records_list_in_two_pages_of_storage_and_one_of_the_table() {
    bounded_for(std::time::Duration::from_secs(170), async {
        let app = spawn_app().await;
        // A hundred writes at a time: Azurite resets connections beyond its accept backlog on a loaded machine.
        for chunk in (0..10_000u64).collect::<Vec<_>>().chunks(100) {
            let writes = chunk.iter().map(|&i| {
                let app = &app;
                async move {
                    let r = JobRecord {
                        blob: format!("batch-input/r{i:05}.jsonl"),
                        etag: "0x1".into(),
                        state: RecordState::Submitted,
                        status: Some("in_progress".into()),
                        started_at: i,
                        ..JobRecord::default()
                    };
                    app.put_record(&r).await;
                }
            });
            join_all(writes).await;
        }
        let json: Value = serde_json::from_str(&get(&app, "/api/jobs?format=json").await.text).expect("json");
        assert_eq!(json["counters"]["total"], 10_000);
        assert_eq!(json["counters"]["runningByStatus"]["in_progress"], 10_000);
        assert_eq!(json["rows"][0]["blob"], "batch-input/r09999.jsonl");
        assert_eq!(json["pages"], 100);
    })
    .await;
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>().replace('+', "%20")
}

#[tokio::test]
async fn a_job_checked_lost_and_resubmitted_is_followed_to_completed_with_one_event() {
    use blob_batch_monitor::jobs::message::{MonitorMessage, MONITOR_QUEUE};
    use devstack::batch_emulator::Timings;
    bounded(async {
        let app = spawn_app().await;
        let first = app.create_job("lost.jsonl").await;
        // Checked three times while it runs.
        for attempt in 0..3 {
            let check = MonitorMessage { attempt, ..first.clone() };
            assert!(app.invoke_queue(&check.to_json(), 1).await.logs().contains("next check"));
        }
        // The service loses the batch (an emulator restart): the next check is told 404 and dead-letters the job.
        assert!(app.emulator.world.forget(&first.batch_id));
        let lost = app.invoke_queue(&MonitorMessage { attempt: 3, ..first.clone() }.to_json(), 1).await;
        assert!(lost.logs().contains("dead-lettered"), "{}", lost.logs());

        app.emulator.world.set_timings(Timings::uniform(std::time::Duration::from_millis(100)));
        let record = app.record("lost.jsonl").await.expect("record");
        let key = format!("batch-input/lost.jsonl/{}", record.etag);
        let origin = format!("http://{}", app.addr);
        assert_eq!(post(&app, &format!("/api/jobs/{key}/resubmit"), &origin).await.status(), StatusCode::SEE_OTHER);
        let submit = app.peek(MONITOR_QUEUE).await.into_iter().find(|m| m.contains("\"submit\"")).expect("submission");
        assert!(app.invoke_queue(&submit, 1).await.logs().contains("created batch"));
        let second = app.emulator.world.jobs().into_iter().last().expect("the new job");
        app.wait_until_ended(&second.id).await;
        let check = app
            .peek(MONITOR_QUEUE)
            .await
            .into_iter()
            .find(|m| m.contains(&second.id))
            .expect("the new job's first check");
        let ended = app.invoke_queue(&check, 1).await;
        assert!(ended.logs().contains("ended completed"), "{}", ended.logs());
        let record = app.record("lost.jsonl").await.expect("record");
        assert_eq!((record.state, record.status.as_deref()), (RecordState::Ended, Some("completed")));
        let events: Vec<Value> =
            app.peek("batch-completed").await.iter().map(|e| serde_json::from_str(e).expect("json")).collect();
        let completed: Vec<&Value> = events.iter().filter(|e| e["status"] == "completed").collect();
        assert_eq!(completed.len(), 1, "{events:#?}");
        assert_eq!(completed[0]["batchId"], second.id.as_str());
    })
    .await;
}

#[tokio::test]
async fn of_twenty_concurrent_resubmissions_exactly_one_wins() {
    bounded(async {
        let app = spawn_app().await;
        let etag = app.upload("race.jsonl", sample_jsonl(1).as_bytes()).await.trim_matches('"').to_string();
        let dead = JobRecord {
            blob: "batch-input/race.jsonl".into(),
            blob_url: app.blob_url("race.jsonl"),
            etag: etag.clone(),
            state: RecordState::DeadLettered,
            reason: Some("401".into()),
            ..JobRecord::default()
        };
        app.put_record(&dead).await;
        let path = format!("/api/jobs/batch-input/race.jsonl/{etag}/resubmit");
        let origin = format!("http://{}", app.addr);
        let posts = (0..20).map(|_| post(&app, &path, &origin));
        let answers = join_all(posts).await;
        let mut statuses: Vec<u16> = Vec::new();
        for a in answers {
            let status = a.status().as_u16();
            if status == 409 {
                let text = a.text().await.expect("body");
                assert!(text.contains("was already resubmitted"), "{text}");
            }
            statuses.push(status);
        }
        statuses.sort_unstable();
        assert_eq!(statuses, [vec![303], vec![409; 19]].concat());
        let messages = app.peek(blob_batch_monitor::jobs::message::MONITOR_QUEUE).await;
        assert_eq!(messages.len(), 1, "{messages:?}");
        assert_eq!(app.record("race.jsonl").await.expect("record").resubmissions, 1);
    })
    .await;
}

/// Asserts that an answer carries the page's security headers.
fn assert_secured(page: &Page, what: &str) {
    for h in ["content-security-policy", "x-content-type-options", "cache-control", "referrer-policy"] {
        assert!(page.headers.contains_key(h), "{what}: no {h} in {:?}", page.headers);
    }
}

#[tokio::test]
async fn odd_requests_get_the_page_headers_and_bounded_answers() {
    bounded(async {
        let app = spawn_app().await;
        let repeated = get(&app, "/api/jobs?page=1&page=2").await;
        assert_eq!(repeated.status, StatusCode::OK);
        assert_secured(&repeated, "a repeated field");
        let not_utf8 = get(&app, "/api/jobs/batch-input/%FF%FE/0x1").await;
        assert_eq!(not_utf8.status, StatusCode::NOT_FOUND);
        assert_secured(&not_utf8, "a path that is not UTF-8");
        let long_key = get(&app, &format!("/api/jobs/batch-input/{}/0x1", "k".repeat(60_000))).await;
        assert_eq!(long_key.status, StatusCode::NOT_FOUND);
        assert_secured(&long_key, "a 60,000-character key");
        let long_q = get(&app, &format!("/api/jobs?q={}", "q".repeat(60_000))).await;
        assert_eq!(long_q.status, StatusCode::OK);
        assert!(!long_q.text.contains(&"q".repeat(257)), "the filter is echoed at most 256 characters long");
        assert!(long_q.text.len() < 20_000, "{} bytes", long_q.text.len());
        let wrong_method = app.http.put(format!("http://{}/api/jobs", app.addr)).send().await.expect("answer");
        assert_eq!(wrong_method.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert!(wrong_method.headers().contains_key("content-security-policy"));
    })
    .await;
}

#[tokio::test]
async fn a_bidi_name_shows_its_controls_and_the_detail_json_has_the_batch_itself() {
    bounded(async {
        let app = spawn_app().await;
        let name = "rtl-\u{202e}gnp.jsonl";
        let message = app.create_job(name).await;
        let etag = app.record(name).await.expect("record").etag;
        let list = get(&app, "/api/jobs").await;
        assert!(!list.text.contains('\u{202e}'), "the raw override never reaches the page");
        assert!(list.text.contains("rtl-\\u{202e}gnp.jsonl"), "it shows as an escape");
        let key = format!("/api/jobs/batch-input/{}/{etag}", urlencode(name));
        let detail: Value = serde_json::from_str(&get(&app, &format!("{key}?format=json")).await.text).expect("json");
        assert_eq!(detail["batch"]["id"], message.batch_id.as_str(), "{detail}");
        assert!(detail.get("batchError").is_none() && detail["batch"].get("Ok").is_none(), "{detail}");
        let html = get(&app, &key).await;
        assert!(!html.text.contains('\u{202e}'), "nor the job's page");
    })
    .await;
}

#[tokio::test]
async fn a_job_page_and_refused_actions_carry_the_headers_too() {
    bounded(async {
        let app = spawn_app().await;
        app.create_job("headers.jsonl").await;
        let etag = app.record("headers.jsonl").await.expect("record").etag;
        let key = format!("/api/jobs/batch-input/headers.jsonl/{etag}");
        let detail = get(&app, &key).await;
        assert_eq!(detail.status, StatusCode::OK);
        assert_secured(&detail, "a job's page");
        let forged = post(&app, &format!("{key}/cancel"), "https://evil.example").await;
        assert_eq!(forged.status(), StatusCode::FORBIDDEN);
        let not_now = post(&app, &format!("{key}/resubmit"), &format!("http://{}", app.addr)).await;
        assert_eq!(not_now.status(), StatusCode::CONFLICT, "a running job is not resubmitted");
        for (answer, what) in [(forged, "a refused cross-site post"), (not_now, "a refused resubmission")] {
            let page = Page { status: answer.status(), headers: answer.headers().clone(), text: String::new() };
            assert_secured(&page, what);
            assert_eq!(page.headers["referrer-policy"], "no-referrer", "{what}");
        }
    })
    .await;
}

#[tokio::test]
async fn a_failed_job_shows_its_first_error_with_the_line() {
    bounded(async {
        let options =
            crate::helpers::TestOptions { validate_input: false, ..crate::helpers::TestOptions::quick_jobs() };
        let app = crate::helpers::spawn_app_with(options).await;
        let bad = format!("{}{{\"custom_id\": oops}}\n", sample_jsonl(1));
        let message = app.submit("broken.jsonl", bad.as_bytes()).await;
        app.wait_until_ended(&message.batch_id).await;
        let ended = app.invoke_queue(&message.to_json(), 1).await;
        assert!(ended.logs().contains("ended failed"), "{}", ended.logs());
        let page = get(&app, "/api/jobs?state=failed").await.text;
        assert!(page.contains("invalid_json_line") && page.contains("(line 2)"), "{page}");
        let json = json(&app, "/api/jobs?format=json").await;
        let error = json["rows"][0]["firstError"].as_str().unwrap_or_default().to_string();
        assert!(error.starts_with("invalid_json_line") && error.ends_with("(line 2)"), "{error}");
    })
    .await;
}
