//! The whole local stack for end-to-end tests: the real `handler` binary under the Functions host emulator, the
//! batch API emulator, and this test's own account on the shared Azurite. Delays are short (about a second) so the
//! suite stays fast; the app folder is a copy of the repository's with faster host.json polling.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use blob_batch_monitor::http_client::HttpClient;
use blob_batch_monitor::storage::{StorageAccount, StorageClient};
use devstack::batch_emulator::{BatchEmulator, EmulatorConfig, Timings};
use devstack::host_emulator::{FunctionsHost, HostOptions};

use super::{azurite, API_KEY};

/// Knobs of one stack.
pub struct StackOptions {
    pub timings: Timings,
    pub retry_delay_secs: u64,
    /// A storage connection string to use instead of a fresh account on the shared Azurite.
    pub connection: Option<String>,
    /// `BATCH_VALIDATE_INPUT`: off for tests of what the batch service itself does with a bad file.
    pub validate_input: bool,
    /// More app settings for the handler (`BATCH_MAX_REQUESTS`, …).
    pub settings: Vec<(&'static str, String)>,
    /// Run as the Flex package does: the blob trigger's source is Event Grid (events come to the host's blobs webhook,
    /// see [`Stack::blob_created`]) and the host refuses a polling trigger.
    pub event_grid: bool,
}

impl Default for StackOptions {
    fn default() -> Self {
        StackOptions {
            timings: Timings::uniform(Duration::from_millis(300)),
            retry_delay_secs: 1,
            connection: None,
            validate_input: true,
            settings: Vec::new(),
            event_grid: false,
        }
    }
}

/// A running stack.
pub struct Stack {
    pub host: FunctionsHost,
    pub emulator: BatchEmulator,
    pub storage: StorageClient,
    pub app_dir: PathBuf,
}

static APPS: AtomicUsize = AtomicUsize::new(0);

/// A copy of the app folder with test-speed host.json settings.
fn app_dir(event_grid: bool) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "app-{}-{}",
        std::process::id(),
        APPS.fetch_add(1, Ordering::SeqCst)
    ));
    for f in ["BlobMonitor", "QueueMonitor", "Jobs"] {
        std::fs::create_dir_all(dir.join(f)).expect("mkdir");
        std::fs::copy(src.join(f).join("function.json"), dir.join(f).join("function.json")).expect("copy");
    }
    if event_grid {
        // What `devstack package --event-grid` (and so scripts/build-azure.sh --event-grid) writes.
        let path = dir.join("BlobMonitor/function.json");
        let mut function = serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("json");
        devstack::package::event_grid_source(&mut function);
        std::fs::write(&path, function.to_string()).expect("write");
    }
    let mut host: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("host.json")).expect("host.json")).expect("json");
    host["extensions"]["queues"]["maxPollingInterval"] = "00:00:00.5".into();
    host["extensions"]["queues"]["visibilityTimeout"] = "00:00:01".into();
    std::fs::write(dir.join("host.json"), host.to_string()).expect("write");
    dir
}

impl Stack {
    pub async fn start(options: StackOptions) -> Stack {
        let conn = options.connection.clone().unwrap_or_else(|| azurite::shared().fresh_account().1);
        let account = StorageAccount::parse(&conn).expect("conn");
        let storage =
            StorageClient::new(HttpClient::new(1 << 30, &Default::default()).expect("client"), account.clone());
        storage.create_container("batch-input").await.expect("container");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let emulator = BatchEmulator::start(listener, EmulatorConfig::new(API_KEY, vec![account], options.timings))
            .expect("emulator");
        let settings = vec![
            ("FUNCTIONS_WORKER_RUNTIME".to_string(), "custom".to_string()),
            ("AzureWebJobsStorage".into(), conn.clone()),
            ("BlobStorageConnection".into(), conn),
            ("OPENAI_ENDPOINT".into(), emulator.uri()),
            ("OPENAI_API_KEY".into(), API_KEY.into()),
            ("BATCH_OUTPUT_CONTAINER".into(), "batch-output".into()),
            ("BATCH_RETRY_DELAY".into(), options.retry_delay_secs.to_string()),
            // Back-off doubles from the retry delay; a low cap keeps fault tests within seconds.
            ("BATCH_BACKOFF_CAP".into(), "4".into()),
            ("BATCH_VALIDATE_INPUT".into(), options.validate_input.to_string()),
        ];
        let settings: Vec<(String, String)> =
            settings.into_iter().chain(options.settings.iter().map(|(k, v)| (k.to_string(), v.clone()))).collect();
        let app_dir = app_dir(options.event_grid);
        let mut host_options = HostOptions::new(app_dir.clone(), settings);
        host_options.executable = Some(PathBuf::from(env!("CARGO_BIN_EXE_handler")));
        host_options.blob_scan_interval = Duration::from_millis(300);
        host_options.lease = Duration::from_secs(30);
        host_options.flex = options.event_grid;
        // HTTP triggers on a free port (`func start` uses 7071).
        host_options.http_port = Some(0);
        let host = FunctionsHost::start(host_options).await.expect("host starts");
        Stack { host, emulator, storage, app_dir }
    }

    /// Drops a blob into batch-input.
    pub async fn drop_blob(&self, name: &str, content: &[u8]) {
        super::upload(&self.storage, name, content).await;
    }

    /// The `Microsoft.Storage.BlobCreated` event Event Grid would send for this version of `batch-input/<name>`.
    pub fn blob_created(&self, name: &str, etag: &str) -> serde_json::Value {
        devstack::event_grid_watcher::blob_created(&self.storage, "batch-input", name, etag)
    }

    /// Posts `body` to the host's blobs webhook for `function` with `aeg-event-type: <kind>`, as Event Grid does.
    pub async fn post_events(&self, function: &str, kind: &str, body: &serde_json::Value) -> reqwest::Response {
        let addr = self.host.http_address().expect("the host serves HTTP");
        reqwest::Client::new()
            .post(format!("http://{addr}/runtime/webhooks/blobs?functionName=Host.Functions.{function}"))
            .header("aeg-event-type", kind)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .expect("the webhook answers")
    }

    /// The final report lines QueueMonitor logged so far.
    pub fn final_reports(&self) -> Vec<String> {
        self.host
            .invocations()
            .into_iter()
            .filter(|r| r.function == "QueueMonitor")
            .flat_map(|r| r.outcome.logs)
            .filter(|l| l.contains(" ended "))
            .collect()
    }

    /// Asserts that no poison queue holds a message.
    pub async fn assert_no_poison(&self) {
        super::queues::assert_no_poison(&self.storage).await;
    }

    /// The job records, parsed.
    pub async fn records(&self) -> Vec<blob_batch_monitor::jobs::record::JobRecord> {
        super::queues::records(&self.storage).await
    }

    /// Waits until `n` job records have ended and returns the records. Under kills this is the check to make, not
    /// the final log lines: an invocation killed after it wrote the ending loses its logs, and its redelivery finds
    /// the job ended.
    pub async fn wait_for_endings(
        &self,
        n: usize,
        limit: Duration,
    ) -> Vec<blob_batch_monitor::jobs::record::JobRecord> {
        use blob_batch_monitor::jobs::record::RecordState;
        super::wait_for(&format!("{n} jobs to end"), limit, || async {
            let records = self.records().await;
            (records.iter().filter(|r| r.state == RecordState::Ended).count() >= n).then_some(records)
        })
        .await
    }

    /// Names of blobs under `container`.
    pub async fn blobs(&self, container: &str) -> Vec<String> {
        let items = self.storage.list_all_blobs(container, None).await.expect("list the container");
        items.into_iter().map(|b| b.name).collect()
    }

    /// Waits until `n` final reports were logged and returns them. On a timeout it first prints what the host saw
    /// (the last invocations and the handler's output), so a failure can be understood from the test log alone.
    pub async fn wait_for_reports(&self, n: usize, limit: Duration) -> Vec<String> {
        let waited = tokio::time::timeout(
            limit,
            super::wait_for(&format!("{n} final reports"), limit + Duration::from_secs(1), || async {
                let r = self.final_reports();
                (r.len() >= n).then_some(r)
            }),
        )
        .await;
        if let Ok(reports) = waited {
            return reports;
        }
        for r in self.host.invocations().iter().rev().take(30).rev() {
            let o = &r.outcome;
            eprintln!(
                "{} {} {}ms status={:?} error={:?} logs={:?}",
                r.function, r.trigger, r.millis, o.status, o.error, o.logs
            );
        }
        for line in self.host.worker().output() {
            eprintln!("handler: {line}");
        }
        panic!("timed out after {limit:?} waiting for {n} final reports; {:?}", self.final_reports());
    }

    /// Asserts that, with every job ended, nothing is left to check: the monitor queue empties (its invisible
    /// messages counted too) without another invocation running. A stray follow-up would either keep the queue
    /// from emptying or be invoked first.
    pub async fn assert_drained(&self) {
        let before = self.host.invocations().len();
        super::wait_for("the monitor queue to empty", Duration::from_secs(10), || async {
            (super::queues::count(&self.storage, "monitorjobs").await == 0).then_some(())
        })
        .await;
        assert_eq!(self.host.invocations().len(), before, "an invocation ran after every job had ended");
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.app_dir);
    }
}
