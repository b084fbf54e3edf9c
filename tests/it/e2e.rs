//! End to end: blobs dropped into Azurite, the real handler under the host emulator, the batch emulator doing the
//! work. Each test waits for conditions with time limits; none relies on a fixed sleep to pass.

use std::time::Duration;

use devstack::batch_emulator::{Faults, Timings};

use crate::helpers::stack::{Stack, StackOptions};
use crate::helpers::{bounded, bounded_for, sample_jsonl, wait_for};

#[tokio::test]
async fn the_jobs_page_is_served_through_the_host_as_func_start_serves_it() {
    bounded(async {
        let stack = Stack::start(StackOptions::default()).await;
        stack.drop_blob("paged.jsonl", sample_jsonl(2).as_bytes()).await;
        stack.wait_for_reports(1, Duration::from_secs(30)).await;
        let address = stack.host.http_address().expect("HTTP triggers are served");
        let client = reqwest::Client::new();
        let page = client.get(format!("http://{address}/api/jobs?code=k")).send().await.expect("answer");
        assert_eq!(page.status(), reqwest::StatusCode::OK);
        assert!(page.headers().contains_key("content-security-policy"), "the handler's headers come back");
        let html = page.text().await.expect("html");
        assert!(html.contains("batch-input/paged.jsonl") && html.contains("badge completed"), "{html}");
        assert!(html.contains("code=k"), "the key stays on the links");
        let answer = client.get(format!("http://{address}/api/jobs?format=json")).send().await.expect("answer");
        let json: serde_json::Value = serde_json::from_slice(&answer.bytes().await.expect("body")).expect("json");
        assert_eq!(json["counters"]["byState"]["completed"], 1);
        let elsewhere = client.get(format!("http://{address}/api/other")).send().await.expect("answer");
        assert_eq!(elsewhere.status(), reqwest::StatusCode::NOT_FOUND);
        // Only `/api/<route>` reaches the handler: a path that climbs to its internal routes does not.
        for climb in ["/api/jobs/../../QueueMonitor", "/api/jobs/%2e%2e/%2e%2e/QueueMonitor"] {
            let answer = raw(
                address,
                &format!(
                    "POST {climb} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
                ),
            )
            .await;
            assert!(answer.starts_with("HTTP/1.1 404"), "{climb}: {answer}");
        }
        // The function key travels on the page's links and forms, never into the handler's log.
        let key = "fnkey-7Q3xZ-distinctive";
        let job = json["rows"][0]["key"].as_str().expect("a row").to_string();
        let page = client.get(format!("http://{address}/api/jobs/{job}?code={key}")).send().await.expect("answer");
        assert!(page.text().await.expect("html").contains(key), "the key stays on the links");
        let action = client
            .post(format!("http://{address}/api/jobs/{job}/resubmit?code={key}"))
            .header("origin", format!("http://{address}"))
            .header("x-functions-key", key)
            .send()
            .await
            .expect("answer");
        assert_eq!(action.status(), reqwest::StatusCode::CONFLICT, "a completed job is not resubmitted");
        let output = stack.host.worker().output();
        assert!(!output.is_empty() && output.iter().all(|l| !l.contains(key)), "the key reached the log");
        // A name rebound to 127.0.0.1 by another site is not served.
        let rebound =
            raw(address, "GET /api/jobs HTTP/1.1\r\nHost: evil.example:7071\r\nConnection: close\r\n\r\n").await;
        assert!(rebound.starts_with("HTTP/1.1 403"), "{rebound}");
    })
    .await;
}

/// Sends `request` as written (no client normalises its path) and returns the whole answer.
async fn raw(address: std::net::SocketAddr, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await.expect("connect");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.expect("read");
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn every_dropped_blob_becomes_one_job_followed_to_completion() {
    bounded(async {
        let stack = Stack::start(StackOptions::default()).await;
        for i in 0..5 {
            stack.drop_blob(&format!("in/job{i}.jsonl"), sample_jsonl(i + 1).as_bytes()).await;
        }
        let reports = stack.wait_for_reports(5, Duration::from_secs(60)).await;
        assert!(reports.iter().all(|r| r.contains("ended completed")), "{reports:#?}");
        let jobs = stack.emulator.world.jobs();
        assert_eq!(jobs.len(), 5, "exactly one job per blob");
        let mut inputs: Vec<_> =
            jobs.iter().map(|j| j.input_blob.rsplit('/').next().unwrap_or_default().to_string()).collect();
        inputs.sort();
        assert_eq!(inputs, ["job0.jsonl", "job1.jsonl", "job2.jsonl", "job3.jsonl", "job4.jsonl"]);
        let results = stack.blobs("batch-output").await;
        assert_eq!(results.iter().filter(|b| b.ends_with("/results.jsonl")).count(), 5, "{results:?}");
        for j in &jobs {
            assert!(reports.iter().any(|r| r.contains(&j.id) && r.contains(&j.output_blob)));
        }
        // No check after the final one.
        stack.assert_drained().await;
        stack.assert_no_poison().await;
    })
    .await;
}

#[tokio::test]
async fn with_validation_off_an_input_with_invalid_lines_ends_failed_with_the_error_code_in_the_final_line() {
    bounded(async {
        let stack = Stack::start(StackOptions { validate_input: false, ..StackOptions::default() }).await;
        let bad = format!("{}{{\"custom_id\": oops}}\n", sample_jsonl(1));
        stack.drop_blob("bad.jsonl", bad.as_bytes()).await;
        let reports = stack.wait_for_reports(1, Duration::from_secs(30)).await;
        assert!(reports[0].contains("ended failed") && reports[0].contains("invalid_json_line"), "{}", reports[0]);
        assert!(reports[0].contains("(line 2)"), "{}", reports[0]);
        stack.assert_no_poison().await;
    })
    .await;
}

#[tokio::test]
async fn cancelled_and_expired_jobs_stop_being_checked() {
    bounded(async {
        let timings = Timings {
            validating: Duration::from_millis(200),
            in_progress: Duration::from_secs(600),
            finalizing: Duration::from_millis(200),
            cancelling: Duration::from_millis(500),
        };
        let stack = Stack::start(StackOptions { timings, ..Default::default() }).await;
        stack.drop_blob("to-cancel.jsonl", sample_jsonl(2).as_bytes()).await;
        stack.drop_blob("to-expire.jsonl", sample_jsonl(2).as_bytes()).await;
        let jobs = wait_for("two running jobs", Duration::from_secs(30), || async {
            let jobs = stack.emulator.world.jobs();
            (jobs.len() == 2 && jobs.iter().all(|j| j.status == "in_progress")).then_some(jobs)
        })
        .await;
        let (cancel, expire) =
            if jobs[0].input_blob.ends_with("to-cancel.jsonl") { (&jobs[0], &jobs[1]) } else { (&jobs[1], &jobs[0]) };
        // Cancel through the API, as a user would; expire through the emulator's control.
        let r = reqwest::Client::new()
            .post(format!("{}/openai/v1/batches/{}/cancel", stack.emulator.uri(), cancel.id))
            .header("api-key", crate::helpers::API_KEY)
            .send()
            .await
            .expect("cancel");
        assert!(r.status().is_success());
        assert!(stack.emulator.world.force_status(&expire.id, "expired"));
        let reports = stack.wait_for_reports(2, Duration::from_secs(30)).await;
        assert!(reports.iter().any(|r| r.contains(&cancel.id) && r.contains("ended cancelled")), "{reports:#?}");
        assert!(reports.iter().any(|r| r.contains(&expire.id) && r.contains("ended expired")), "{reports:#?}");
        stack.assert_drained().await;
        stack.assert_no_poison().await;
    })
    .await;
}

#[tokio::test]
async fn a_burst_of_429s_and_503s_delays_but_loses_no_job() {
    bounded(async {
        let stack = Stack::start(StackOptions::default()).await;
        stack.emulator.world.set_faults(Faults {
            throttle_percent: 25,
            retry_after_ms: 300,
            unavailable_percent: 25,
            ..Faults::default()
        });
        for i in 0..4 {
            stack.drop_blob(&format!("burst{i}.jsonl"), sample_jsonl(2).as_bytes()).await;
        }
        let reports = stack.wait_for_reports(4, Duration::from_secs(75)).await;
        assert!(reports.iter().all(|r| r.contains("ended completed")), "{reports:#?}");
        let requests = stack.emulator.world.requests();
        assert!(
            requests.iter().any(|r| r.status == 429) && requests.iter().any(|r| r.status >= 500),
            "faults were injected"
        );
        assert_eq!(stack.emulator.world.jobs().len(), 4, "no job lost, none duplicated");
        stack.assert_no_poison().await;
    })
    .await;
}

#[tokio::test]
async fn the_handler_killed_mid_run_is_restarted_and_every_job_still_completes_once() {
    // A kill inside a create leaves its record leased for 30 s before recovery: allow for that on a loaded machine.
    bounded_for(Duration::from_secs(150), async {
        let stack =
            Stack::start(StackOptions { timings: Timings::uniform(Duration::from_millis(700)), ..Default::default() })
                .await;
        for i in 0..4 {
            stack.drop_blob(&format!("kill{i}.jsonl"), sample_jsonl(2).as_bytes()).await;
        }
        wait_for("the first job", Duration::from_secs(30), || async {
            (!stack.emulator.world.jobs().is_empty()).then_some(())
        })
        .await;
        let worker = stack.host.worker();
        let starts = worker.starts.load(std::sync::atomic::Ordering::SeqCst);
        worker.kill_handler();
        wait_for("a restart", Duration::from_secs(30), || async {
            (worker.starts.load(std::sync::atomic::Ordering::SeqCst) > starts).then_some(())
        })
        .await;
        let reports = stack.wait_for_reports(4, Duration::from_secs(90)).await;
        assert!(reports.iter().all(|r| r.contains("ended completed")), "{reports:#?}");
        assert_eq!(stack.emulator.world.jobs().len(), 4, "none duplicated");
        stack.assert_no_poison().await;
    })
    .await;
}
