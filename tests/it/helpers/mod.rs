//! The test harness: `spawn_app()` gives each test its own storage account on the shared Azurite, its own batch API
//! emulator, and the handler's router served on port 0, plus typed helpers to invoke it as the host would.

pub mod azurite;
pub mod queues;
pub mod stack;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use blob_batch_monitor::config::Config;
use blob_batch_monitor::identity::OPENAI_RESOURCE;
use blob_batch_monitor::jobs::message::MonitorMessage;
use blob_batch_monitor::storage::blob::Condition;
use blob_batch_monitor::storage::{MessageEncoding, StorageAccount, StorageClient};
use blob_batch_monitor::AppState;
use devstack::batch_emulator::{BatchEmulator, EmulatorConfig, Timings};
use devstack::host_emulator::envelope::{blob_envelope, queue_envelope, BlobInfo, QueueInfo};
use devstack::identity_emulator::IdentityEmulator;
use reqwest::StatusCode;
use serde_json::Value;

/// Every test body is bounded by this.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(90);
/// The API key the emulator expects and the handler sends.
pub const API_KEY: &str = "test-key-5f2c";

static TRACING: LazyLock<()> = LazyLock::new(|| {
    if std::env::var_os("TEST_LOG").is_some() {
        let _ = tracing_subscriber::fmt().with_env_filter("info").with_test_writer().try_init();
    }
});

/// Runs a test body under [`TEST_TIMEOUT`].
pub async fn bounded<F: std::future::Future>(f: F) -> F::Output {
    bounded_for(TEST_TIMEOUT, f).await
}

/// Runs a test body under a longer bound, for scenarios that last by design (an outage of a minute).
pub async fn bounded_for<F: std::future::Future>(limit: Duration, f: F) -> F::Output {
    LazyLock::force(&TRACING);
    tokio::time::timeout(limit, f).await.expect("test exceeded its time limit")
}

/// Polls `check` every 50 ms until it returns `Some`, or panics after `limit` naming `what`.
pub async fn wait_for<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A count from the environment variable `name` (`default` when unset). Zero, or anything but a number, is refused:
/// a test told to check nothing would pass having checked nothing.
pub fn count_from_env(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Err(_) => default,
        Ok(v) => match v.trim().parse::<u64>() {
            Ok(n) if n > 0 => n,
            _ => panic!("{name}={v:?}: give a positive number, or leave it unset for {default}"),
        },
    }
}

/// A part of a test that cannot run on this machine: said loudly, and a failure under CI (`CI=true`), where every
/// part must run.
pub fn skipped(what: &str) {
    assert!(std::env::var("CI").map_or(true, |v| v != "true"), "CI=true, but {what}");
    eprintln!("WARNING: {what}: that part of the test was skipped");
}

/// Knobs of one test app.
pub struct TestOptions {
    pub retry_delay_secs: u64,
    pub timings: Timings,
    /// The key the handler sends (defaults to the one the emulator expects).
    pub handler_key: String,
    pub max_check_failures: u32,
    pub api_version: String,
    /// `(IDENTITY_ENDPOINT, IDENTITY_HEADER)`: the handler gets these instead of `OPENAI_API_KEY`, and the emulator
    /// accepts the identity emulator's Azure OpenAI token.
    pub identity: Option<(String, String)>,
    /// `BATCH_VALIDATE_INPUT`: off for tests of what the batch service itself does with a bad file.
    pub validate_input: bool,
    /// `BATCH_COMPLETED_QUEUE` (`""` turns completion events off).
    pub completed_queue: String,
    /// The server's read deadlines.
    pub deadlines: blob_batch_monitor::serve::Deadlines,
    /// Point the handler's queue endpoint at a closed port, so that every Put Message fails.
    pub unreachable_queues: bool,
    /// More app settings (`BATCH_MAX_REQUESTS`, …).
    pub settings: Vec<(&'static str, String)>,
}

impl TestOptions {
    /// Jobs that run through every phase in 100 ms each, so tests can wait for them to end.
    pub fn quick_jobs() -> Self {
        TestOptions { timings: Timings::uniform(Duration::from_millis(100)), ..Self::default() }
    }
}

impl Default for TestOptions {
    fn default() -> Self {
        TestOptions {
            retry_delay_secs: 2,
            // Long phases: jobs stay running unless a test forces a status.
            timings: Timings::uniform(Duration::from_secs(600)),
            handler_key: API_KEY.into(),
            max_check_failures: 30,
            api_version: "2025-04-01-preview".into(),
            identity: None,
            validate_input: true,
            completed_queue: "batch-completed".into(),
            deadlines: Default::default(),
            unreachable_queues: false,
            settings: Vec::new(),
        }
    }
}

/// One test's world.
pub struct TestApp {
    pub addr: SocketAddr,
    pub http: reqwest::Client,
    pub storage: StorageClient,
    pub account: StorageAccount,
    pub emulator: BatchEmulator,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.server.abort();
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(TestOptions::default()).await
}

pub async fn spawn_app_with(options: TestOptions) -> TestApp {
    let (_, conn) = azurite::shared().fresh_account();
    let account = StorageAccount::parse(&conn).expect("connection string");
    let handler_conn = if options.unreachable_queues {
        // Port 9 (discard) is closed on loopback: the connection is refused at once.
        let queues = account.queue_endpoint.as_str().trim_end_matches('/');
        let port = account.queue_endpoint.port().expect("Azurite's queue port");
        conn.replace(queues, &queues.replace(&format!(":{port}"), ":9"))
    } else {
        conn.clone()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let mut emulator_config = EmulatorConfig::new(API_KEY, vec![account.clone()], options.timings);
    if options.identity.is_some() {
        emulator_config.bearer_token = Some(IdentityEmulator::token_for(OPENAI_RESOURCE));
    }
    let emulator = BatchEmulator::start(listener, emulator_config).expect("emulator");
    let credential = match &options.identity {
        Some((endpoint, header)) => vec![("IDENTITY_ENDPOINT", endpoint.clone()), ("IDENTITY_HEADER", header.clone())],
        None => vec![("OPENAI_API_KEY", options.handler_key.clone())],
    };
    let settings = [
        ("OPENAI_ENDPOINT", emulator.uri()),
        ("BATCH_OUTPUT_CONTAINER", "batch-output".into()),
        ("BATCH_RETRY_DELAY", options.retry_delay_secs.to_string()),
        ("BATCH_MAX_CHECK_FAILURES", options.max_check_failures.to_string()),
        ("BlobStorageConnection", handler_conn),
        ("OPENAI_API_VERSION", options.api_version.clone()),
        ("BATCH_VALIDATE_INPUT", options.validate_input.to_string()),
        ("BATCH_COMPLETED_QUEUE", options.completed_queue.clone()),
    ]
    .into_iter()
    .chain(credential)
    .chain(options.settings.iter().map(|(k, v)| (*k, v.clone())))
    .collect::<Vec<_>>();
    let config = Config::from_lookup(
        |k| settings.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone()),
        MessageEncoding::Base64,
    )
    .expect("config");
    let state = AppState::new(config).expect("state");
    // The test's own client, on the account as it is (the handler's may have been given a broken endpoint).
    let http = blob_batch_monitor::http_client::HttpClient::new(1 << 30, &Default::default()).expect("client");
    let storage = StorageClient::new(http, account.clone());
    serve_with(state, storage, account, emulator, options.deadlines).await
}

/// Serves the handler built from `state` on port 0. `storage` (a client of `account`) is what the test itself uses to
/// look at the account; `batch-input` is created with it.
pub async fn serve(
    state: AppState,
    storage: StorageClient,
    account: StorageAccount,
    emulator: BatchEmulator,
) -> TestApp {
    serve_with(state, storage, account, emulator, Default::default()).await
}

/// [`serve`] with given read deadlines.
async fn serve_with(
    state: AppState,
    storage: StorageClient,
    account: StorageAccount,
    emulator: BatchEmulator,
    deadlines: blob_batch_monitor::serve::Deadlines,
) -> TestApp {
    storage.create_container("batch-input").await.expect("container");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let router = blob_batch_monitor::app(state);
    let server = tokio::spawn(async move {
        let _ = blob_batch_monitor::serve::serve(listener, router, deadlines, std::future::pending()).await;
    });
    TestApp { addr, http: reqwest::Client::new(), storage, account, emulator, server }
}

/// A handler answer.
pub struct Answer {
    pub status: StatusCode,
    pub content_type: String,
    pub body: Value,
}

impl Answer {
    /// The `Logs` of the answer, joined.
    pub fn logs(&self) -> String {
        self.body["Logs"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join("\n"))
            .unwrap_or_default()
    }
}

impl TestApp {
    /// POSTs raw bytes to `/<function>` with the host's headers: each call is a new invocation, with its own id.
    pub async fn post(&self, function: &str, body: impl Into<reqwest::Body>) -> Answer {
        static INVOCATIONS: AtomicU64 = AtomicU64::new(1);
        let invocation = format!("00000000-0000-4000-8000-{:012x}", INVOCATIONS.fetch_add(1, Ordering::Relaxed));
        let r = self
            .http
            .post(format!("http://{}/{function}", self.addr))
            .header("content-type", "application/json; charset=utf-8")
            .header("x-azure-functions-invocationid", invocation)
            .body(body)
            .send()
            .await
            .expect("handler answers");
        let status = r.status();
        let content_type = r.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        let bytes = r.bytes().await.expect("body");
        Answer { status, content_type, body: serde_json::from_slice(&bytes).unwrap_or(Value::Null) }
    }

    /// The URL of `batch-input/<name>` in this test's account.
    pub fn blob_url(&self, name: &str) -> String {
        format!("{}/batch-input/{name}", self.account.blob_endpoint.as_str().trim_end_matches('/'))
    }

    /// Uploads `content` to `batch-input/<name>`.
    pub async fn upload(&self, name: &str, content: &[u8]) -> String {
        upload(&self.storage, name, content).await
    }

    /// Uploads a blob and invokes BlobMonitor for it with the host's envelope.
    pub async fn invoke_blob(&self, name: &str, content: &[u8]) -> Answer {
        let etag = self.upload(name, content).await;
        self.deliver_blob(name, content, &etag).await
    }

    /// Invokes BlobMonitor for the blob version `etag` of `name` (already uploaded), as the trigger delivers it.
    pub async fn deliver_blob(&self, name: &str, content: &[u8], etag: &str) -> Answer {
        let url = self.blob_url(name);
        let info = BlobInfo {
            url: &url,
            name,
            etag,
            last_modified: "2026-11-28T10:00:00+00:00",
            content_type: "application/jsonl",
        };
        self.post("BlobMonitor", blob_envelope("BlobMonitor", "inputBlob", content, &info)).await
    }

    /// Invokes QueueMonitor with message `text` as the host would deliver it.
    pub async fn invoke_queue(&self, text: &str, dequeue_count: u32) -> Answer {
        let info = QueueInfo {
            id: "6c5d8a4e-2f1b-4c3d-9e8f-7a6b5c4d3e2f",
            pop_receipt: "AgAAAAMAAAAAAAAAAgtnj8x+1QE=",
            dequeue_count,
            insertion_time: "2026-11-28T10:00:00+00:00",
            expiration_time: "2026-12-05T10:00:00+00:00",
            next_visible_time: "2026-11-28T10:10:00+00:00",
        };
        self.post("QueueMonitor", queue_envelope("QueueMonitor", "job", text.as_bytes(), false, &info)).await
    }

    /// Creates a job through BlobMonitor and returns the monitor message it output.
    pub async fn create_job(&self, name: &str) -> MonitorMessage {
        self.submit(name, sample_jsonl(2).as_bytes()).await
    }

    /// Uploads `content` as `name`, creates its job through BlobMonitor and returns the monitor message it output.
    pub async fn submit(&self, name: &str, content: &[u8]) -> MonitorMessage {
        let answer = self.invoke_blob(name, content).await;
        assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
        serde_json::from_value(answer.body["Outputs"]["outQueue"].clone()).expect("monitor message")
    }

    /// Waits (up to 10 s) until the emulator's job `batch_id` has a terminal status.
    pub async fn wait_until_ended(&self, batch_id: &str) {
        wait_for("the job to end", Duration::from_secs(10), || async {
            self.emulator.world.job(batch_id).filter(|j| j.is_terminal())
        })
        .await;
    }

    /// The job record of `batch-input/<name>` as it is now.
    pub async fn record(&self, name: &str) -> Option<blob_batch_monitor::jobs::record::JobRecord> {
        let items = self.storage.list_all_blobs("batch-records", Some(&format!("batch-input/{name}/"))).await.ok()?;
        let item = items.last()?;
        let blob = self.storage.get_blob("batch-records", &item.name).await.ok()??;
        serde_json::from_slice(&blob.content).ok()
    }

    /// The job record of one version (`etag`) of `batch-input/<name>`.
    pub async fn record_of(&self, name: &str, etag: &str) -> Option<blob_batch_monitor::jobs::record::JobRecord> {
        let key = blob_batch_monitor::jobs::records::RecordStore::key(&format!("batch-input/{name}"), etag);
        let blob = self.storage.get_blob("batch-records", &key).await.expect("read the job record")?;
        Some(serde_json::from_slice(&blob.content).expect("a job record"))
    }

    /// Writes `record` as the job record of its blob version (`record.blob`, `record.etag`).
    pub async fn put_record(&self, record: &blob_batch_monitor::jobs::record::JobRecord) {
        let store = blob_batch_monitor::jobs::records::RecordStore::new(self.storage.clone(), "batch-records".into());
        let key = blob_batch_monitor::jobs::records::RecordStore::key(&record.blob, &record.etag);
        store.put(&key, record, Condition::None).await.expect("put the job record");
    }

    /// The decoded texts of the visible messages of `queue` (up to 32).
    pub async fn peek(&self, queue: &str) -> Vec<String> {
        queues::peek(&self.storage, queue).await
    }

    /// How many messages `queue` holds, the invisible (delayed) ones included.
    pub async fn count(&self, queue: &str) -> u64 {
        queues::count(&self.storage, queue).await
    }
}

/// Uploads `content` to `batch-input/<name>`; returns the ETag.
pub async fn upload(storage: &StorageClient, name: &str, content: &[u8]) -> String {
    storage
        .put_blob(
            "batch-input",
            name,
            bytes::Bytes::copy_from_slice(content),
            "application/jsonl",
            Condition::None,
            &[],
        )
        .await
        .expect("upload")
}

/// A valid input file with `n` chat requests.
pub fn sample_jsonl(n: usize) -> String {
    (0..n)
        .map(|i| format!("{{\"custom_id\":\"task-{i}\",\"method\":\"POST\",\"url\":\"/chat/completions\",\"body\":{{\"model\":\"gpt-4o-batch\",\"messages\":[{{\"role\":\"user\",\"content\":\"Question {i}\"}}]}}}}\n"))
        .collect()
}

/// Polls the futures together on this task (they borrow the test's locals, so they cannot be spawned) and returns
/// their outputs in order.
pub async fn join_all<F: std::future::Future>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let mut pinned: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = pinned.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        for (f, slot) in pinned.iter_mut().zip(out.iter_mut()).filter(|(_, slot)| slot.is_none()) {
            if let std::task::Poll::Ready(v) = f.as_mut().poll(cx) {
                *slot = Some(v);
            }
        }
        if out.iter().all(Option::is_some) {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    out.into_iter().flatten().collect()
}
