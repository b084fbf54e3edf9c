//! Pre-flight validation through BlobMonitor, against Azurite and the batch emulator: a bad file gets no create
//! request, a `rejected` record with its problems and a `rejected` completion event; good files of every shape pass.

use axum::http::StatusCode;
use serde_json::Value;

use blob_batch_monitor::jobs::record::RecordState;

use crate::helpers::{bounded, sample_jsonl, spawn_app, spawn_app_with, TestApp, TestOptions};

const EVENTS: &str = "batch-completed";

fn line(id: &str, url: &str, model: &str) -> String {
    format!(
        r#"{{"custom_id":"{id}","method":"POST","url":"{url}","body":{{"model":"{model}","messages":[{{"role":"user","content":"Hi"}}]}}}}"#
    )
}

fn good(id: &str) -> String {
    line(id, "/chat/completions", "gpt-4o-batch")
}

/// Invokes BlobMonitor with `content` and checks the rejection: 2xx, no output, no create request, the record and
/// the event carrying `code` at `line` first.
async fn assert_rejected(app: &TestApp, name: &str, content: &[u8], code: &str, at: u64) -> Value {
    let answer = app.invoke_blob(name, content).await;
    assert_eq!(answer.status, StatusCode::OK, "{name}: {:?}", answer.body);
    assert!(answer.body["Outputs"].as_object().is_none_or(|o| o.is_empty()), "{name}: {:?}", answer.body);
    assert!(answer.logs().contains("rejected"), "{name}: {}", answer.logs());
    let record = app.record(name).await.expect("a job record");
    assert_eq!(record.state, RecordState::Rejected, "{name}");
    assert_eq!(
        (record.problems[0].line, record.problems[0].code.as_str()),
        (at, code),
        "{name}: {:?}",
        record.problems
    );
    assert!(record.event_id.is_some(), "{name}: the record says the event was sent");
    let events: Vec<Value> = app.peek(EVENTS).await.iter().map(|e| serde_json::from_str(e).expect("json")).collect();
    let event = events.iter().find(|e| e["blob"] == format!("batch-input/{name}")).expect("a rejected event").clone();
    assert_eq!(event["status"], "rejected");
    assert_eq!(event["batchId"], Value::Null);
    assert_eq!(event["problems"][0]["code"], code);
    assert_eq!(event["id"].as_str(), record.event_id.as_deref());
    event
}

#[tokio::test]
async fn each_problem_is_reported_with_its_code_and_line_and_no_job_is_created() {
    bounded(async {
        let app = spawn_app().await;
        let two = format!("{}\n{}\n", good("a"), good("b"));
        let cases = [
            ("bom", format!("\u{feff}{two}"), 1),
            ("empty_file", String::new(), 1),
            ("empty_file", "\n\r\n  \n".to_string(), 3),
            ("invalid_json_line", format!("{two}{{\"custom_id\": oops}}\n"), 3),
            ("missing_custom_id", format!("{two}{}\n", good("")), 3),
            ("duplicate_custom_id", format!("{two}{}\n", good("a")), 3),
            ("invalid_method", format!("{two}{}\n", good("c").replace("POST", "GET")), 3),
            ("url_mismatch", format!("{two}{}\n", line("c", "/v1/responses", "gpt-4o-batch")), 3),
            (
                "invalid_request",
                format!("{two}{}\n", r#"{"custom_id":"c","method":"POST","url":"/chat/completions","body":[1]}"#),
                3,
            ),
            ("model_mismatch", format!("{two}{}\n", line("c", "/chat/completions", "gpt-4o-mini-batch")), 3),
        ];
        for (i, (code, content, at)) in cases.iter().enumerate() {
            let event = assert_rejected(&app, &format!("bad-{i}-{code}.jsonl"), content.as_bytes(), code, *at).await;
            if *code == "duplicate_custom_id" {
                assert_eq!(event["problems"][0]["firstLine"], 1);
            }
        }
        assert!(app.emulator.world.requests().is_empty(), "no request reached the batch API");
    })
    .await;
}

#[tokio::test]
async fn a_file_of_100001_requests_is_split_into_two_parts_and_one_of_100000_is_one_job() {
    bounded(async {
        let app = spawn_app().await;
        let content = sample_jsonl(100_001);
        let answer = app.invoke_blob("huge.jsonl", content.as_bytes()).await;
        assert!(answer.logs().contains("split into 2 parts"), "{}", answer.logs());
        assert!(app.emulator.world.requests().is_empty(), "no job before the parts are written");
        let record = app.record("huge.jsonl").await.expect("the file's record");
        let parts: Vec<(u64, u64)> = record.parts.iter().map(|p| (p.first_line, p.requests)).collect();
        assert_eq!(parts, [(1, 100_000), (100_001, 1)]);
        assert_eq!(record.parts[1].end, content.len() as u64);
        // Exactly at the limit, the file is one job, read in place.
        let at_limit = app.invoke_blob("limit.jsonl", sample_jsonl(100_000).as_bytes()).await;
        assert!(at_limit.logs().contains("created batch"), "{}", at_limit.logs());
        assert_eq!(app.emulator.world.jobs()[0].input_blob, app.blob_url("limit.jsonl"));
    })
    .await;
}

#[tokio::test]
async fn files_of_every_accepted_shape_become_jobs() {
    bounded(async {
        let app = spawn_app().await;
        let responses =
            r#"{"custom_id":"r1","method":"POST","url":"/v1/responses","body":{"model":"gpt-4o-batch","input":"Hi"}}"#;
        let files = [
            ("crlf", format!("{}\r\n{}\r\n", good("a"), good("b"))),
            ("no-final-newline", format!("{}\n{}", good("a"), good("b"))),
            ("trailing-blank-line", format!("{}\n{}\n\n", good("a"), good("b"))),
            (
                "non-ascii",
                format!("{}\n", line("täsk-日本", "/chat/completions", "gpt-4o-batch"))
                    .replace("Hi", "Grüß dich, 你好"),
            ),
            (
                "v1-url",
                format!("{}\n{}\n", line("a", "/v1/chat/completions", "m"), line("b", "/v1/chat/completions", "m")),
            ),
            ("responses", format!("{responses}\n")),
        ];
        for (name, content) in &files {
            let message = app.submit(&format!("{name}.jsonl"), content.as_bytes()).await;
            assert!(!message.batch_id.is_empty(), "{name}");
        }
        assert_eq!(app.emulator.world.jobs().len(), files.len());
        assert!(app.peek(EVENTS).await.is_empty(), "no ending yet");
    })
    .await;
}

#[tokio::test]
async fn a_rejected_blob_delivered_again_is_neither_submitted_nor_announced_twice() {
    bounded(async {
        let app = spawn_app().await;
        let content = format!("{}\nnot json\n", good("a"));
        let etag = app.upload("twice.jsonl", content.as_bytes()).await;
        let first = app.deliver_blob("twice.jsonl", content.as_bytes(), &etag).await;
        assert!(
            first.logs().contains("rejected: batch-input/twice.jsonl: line 2: invalid_json_line"),
            "{}",
            first.logs()
        );
        let again = app.deliver_blob("twice.jsonl", content.as_bytes(), &etag).await;
        assert_eq!(again.status, StatusCode::OK);
        assert!(again.logs().contains("already dealt with"), "{}", again.logs());
        assert_eq!(app.peek(EVENTS).await.len(), 1);
        assert!(app.emulator.world.requests().is_empty());
    })
    .await;
}

#[tokio::test]
async fn with_validation_off_a_bad_file_is_submitted_as_it_is() {
    bounded(async {
        let app = spawn_app_with(TestOptions { validate_input: false, ..TestOptions::default() }).await;
        let message = app.submit("unchecked.jsonl", b"\xEF\xBB\xBFnot json\n").await;
        assert!(app.emulator.world.job(&message.batch_id).is_some());
    })
    .await;
}
