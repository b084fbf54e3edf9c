//! The operators' page in a real browser: Debian's headless Chromium, driven through chromedriver's WebDriver
//! protocol (W3C, plain HTTP). It checks what a person sees (the rows, the badges, a hostile blob name shown as
//! text, nothing blocked by the page's own CSP) and that cancel, clicked and confirmed on the page, reaches the batch
//! emulator. `scripts/test.sh` installs `chromium` and `chromium-driver` when they are missing. With
//! `JOBS_PAGE_SCREENSHOT=<file.png>` set, it also saves a screenshot of the page (`scripts/screenshot.sh`).

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use blob_batch_monitor::jobs::overview::SHOWN_STATES;
use blob_batch_monitor::jobs::record::{JobRecord, RecordState};

use crate::helpers::{bounded, wait_for, TestOptions};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// A chromedriver process with one headless Chromium session; both end when dropped.
struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: reqwest::Client,
    profile: std::path::PathBuf,
}

impl Browser {
    async fn start() -> Browser {
        assert!(
            std::path::Path::new(CHROMIUM).exists() && std::path::Path::new(CHROMEDRIVER).exists(),
            "the browser test needs Debian's chromium and chromium-driver (scripts/test.sh installs them)"
        );
        // Port 0: chromedriver binds a free port itself and says which, so no port changes hands. Its own process
        // group, so that dropping the browser ends Chromium too, whatever state the test failed in.
        let mut driver = Command::new(CHROMEDRIVER)
            .arg("--port=0")
            .process_group(0)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let stdout = driver.stdout.take().expect("stdout");
        let port = tokio::task::spawn_blocking(move || {
            use std::io::BufRead;
            let mut lines = std::io::BufReader::new(stdout).lines();
            let port = lines.by_ref().map_while(Result::ok).find_map(|l| {
                l.strip_prefix("ChromeDriver was started successfully on port ")
                    .and_then(|p| p.trim_end_matches('.').parse::<u16>().ok())
            });
            // Keep reading, so that chromedriver never blocks on a full pipe.
            std::thread::spawn(move || lines.for_each(drop));
            port
        })
        .await
        .expect("reading chromedriver's output")
        .expect("chromedriver says its port");
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        wait_for("chromedriver", Duration::from_secs(20), || async {
            http.get(format!("{base}/status")).send().await.ok().filter(|r| r.status().is_success())
        })
        .await;
        let profile = std::env::temp_dir().join(format!("jobs-page-chromium-{}-{port}", std::process::id()));
        // The flags a closed network needs: no background connections, no component updates, no first-run work.
        let args = [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1400,1000",
        ];
        let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        args.push(format!("--user-data-dir={}", profile.display()));
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args}
        }}});
        let answer =
            http.post(format!("{base}/session")).body(capabilities.to_string()).send().await.expect("a session");
        let created: Value = serde_json::from_slice(&answer.bytes().await.expect("body")).expect("json");
        let session =
            created["value"]["sessionId"].as_str().unwrap_or_else(|| panic!("no session: {created}")).to_string();
        Browser { driver, base, session, http, profile }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let request = match method {
            // WebDriver's GET commands take no body.
            reqwest::Method::GET => self.http.get(url),
            _ => self.http.request(method, url).header("content-type", "application/json").body(body.to_string()),
        };
        let answer = request.send().await.expect("driver").bytes().await.expect("body");
        let answer: Value = serde_json::from_slice(&answer).expect("json");
        answer["value"].clone()
    }

    async fn open(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", json!({"url": url})).await;
    }

    async fn eval(&self, script: &str) -> Value {
        self.call(reqwest::Method::POST, "/execute/sync", json!({"script": script, "args": []})).await
    }

    async fn click(&self, css: &str) {
        let found = self.call(reqwest::Method::POST, "/element", json!({"using": "css selector", "value": css})).await;
        let id =
            found.as_object().and_then(|o| o.values().next()).and_then(Value::as_str).expect("the element").to_string();
        self.call(reqwest::Method::POST, &format!("/element/{id}/click"), json!({})).await;
    }

    /// Ends the session, which closes Chromium (killing chromedriver alone would leave it running).
    async fn quit(self) {
        let _ = self.http.delete(format!("{}/session/{}", self.base, self.session)).send().await;
    }

    async fn screenshot(&self) -> Vec<u8> {
        use base64::Engine;
        let png = self.call(reqwest::Method::GET, "/screenshot", Value::Null).await;
        base64::engine::general_purpose::STANDARD.decode(png.as_str().expect("base64")).expect("png")
    }
}

impl Drop for Browser {
    /// Ends chromedriver and the Chromium it started (one process group), also when the test failed before `quit`.
    fn drop(&mut self) {
        let group = format!("-{}", self.driver.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.driver.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

#[tokio::test]
async fn a_person_sees_every_state_a_hostile_name_as_text_and_can_cancel_a_job() {
    bounded(async {
        let app = crate::helpers::spawn_app_with(TestOptions::default()).await;
        let running = app.create_job("running.jsonl").await;
        let now = blob_batch_monitor::clock::unix_now();
        let states = [
            ("submitting", RecordState::Submitting, None, None),
            ("deferred", RecordState::Deferred, None, Some("429 throttled")),
            ("completed", RecordState::Ended, Some("completed"), None),
            ("failed", RecordState::Ended, Some("failed"), None),
            ("expired", RecordState::Ended, Some("expired"), None),
            ("cancelled", RecordState::Ended, Some("cancelled"), None),
            ("rejected", RecordState::Rejected, None, Some("line 3: duplicate_custom_id")),
            ("dead-lettered", RecordState::DeadLettered, None, Some("the batch API refused: 400")),
            ("<img src=x onerror=alert(1)>", RecordState::Rejected, None, Some("line 1: bom")),
        ];
        for (i, (name, state, status, reason)) in states.iter().enumerate() {
            app.put_record(&JobRecord {
                blob: format!("batch-input/{name}.jsonl"),
                etag: "0x1".into(),
                state: *state,
                status: status.map(str::to_string),
                batch_id: status.map(|_| format!("batch_{i}")),
                reason: reason.map(str::to_string),
                request_counts: Some(blob_batch_monitor::batch_api::RequestCounts {
                    total: Some(10),
                    completed: Some(i as u64),
                    failed: Some(1),
                }),
                started_at: now - 600 + i as u64,
                ..JobRecord::default()
            })
            .await;
        }
        let browser = Browser::start().await;
        let page = format!("http://{}/api/jobs?code=browser-key", app.addr);
        browser.open(&page).await;
        assert_eq!(browser.eval("return document.querySelectorAll('tbody tr').length").await, 10);
        for badge in SHOWN_STATES {
            let n = browser.eval(&format!("return document.querySelectorAll('tbody .badge.{badge}').length")).await;
            assert!(n.as_u64().is_some_and(|n| n >= 1), "no {badge} badge in a row");
        }
        let text = browser.eval("return document.body.innerText").await;
        let text = text.as_str().unwrap_or_default();
        assert!(text.contains("batch-input/<img src=x onerror=alert(1)>.jsonl"), "the hostile name shows as text");
        assert_eq!(browser.eval("return document.images.length").await, 0, "and is no image");
        assert!(text.contains("the batch API refused: 400") && text.contains("line 3: duplicate_custom_id"));
        // The page's own style applied (its hash is in the CSP): a badge has a background colour.
        let colour =
            browser.eval("return getComputedStyle(document.querySelector('.badge.completed')).backgroundColor").await;
        assert_eq!(colour, "rgb(26, 127, 55)", "the stylesheet was blocked");
        if let Ok(file) = std::env::var("JOBS_PAGE_SCREENSHOT") {
            std::fs::write(&file, browser.screenshot().await).expect("screenshot written");
        }

        // Cancel the running job from its page: click, confirm, and the batch emulator hears it.
        browser.click("a[href*='running.jsonl']").await;
        browser.click("form[data-confirm] button").await;
        browser.call(reqwest::Method::POST, "/alert/accept", json!({})).await;
        wait_for("the cancel to reach the batch API", Duration::from_secs(10), || async {
            app.emulator.world.job(&running.batch_id).filter(|j| j.cancel_requested)
        })
        .await;
        let after = browser.eval("return document.body.innerText").await;
        assert!(after.as_str().is_some_and(|t| t.contains("asked to cancel")), "{after}");
        let url = browser.call(reqwest::Method::GET, "/url", Value::Null).await;
        assert!(url.as_str().is_some_and(|u| u.contains("code=browser-key")), "the key survived the action: {url}");
        browser.quit().await;
    })
    .await;
}
