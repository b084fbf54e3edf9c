//! The whole local stack for end-to-end tests: the real `handler` binary under the Functions host emulator, the
//! batch API emulator, and this test's own account on the shared Azurite. Delays are short (about a second) so the
//! suite stays fast; the app folder is a copy of the repository's with faster host.json polling.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use blob_batch_monitor::http_client::HttpClient;
use blob_batch_monitor::storage::{MessageEncoding, StorageAccount, StorageClient};
use devstack::batch_emulator::{BatchEmulator, EmulatorConfig, Timings};
use devstack::host_emulator::{FunctionsHost, HostOptions, InvocationRecord};

use super::{azurite, API_KEY};

/// Knobs of one stack.
pub struct StackOptions {
    pub timings: Timings,
    pub retry_delay_secs: u64,
    /// A storage connection string to use instead of a fresh account on the shared Azurite.
    pub connection: Option<String>,
    /// `BATCH_VALIDATE_INPUT`: off for tests of what the batch service itself does with a bad file.
    pub validate_input: bool,
}

impl Default for StackOptions {
    fn default() -> Self {
        StackOptions {
            timings: Timings::uniform(Duration::from_millis(300)),
            retry_delay_secs: 1,
            connection: None,
            validate_input: true,
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
fn app_dir() -> PathBuf {
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
        let app_dir = app_dir();
        let mut host_options = HostOptions::new(app_dir.clone(), settings);
        host_options.executable = Some(PathBuf::from(env!("CARGO_BIN_EXE_handler")));
        host_options.blob_scan_interval = Duration::from_millis(300);
        host_options.lease = Duration::from_secs(30);
        // HTTP triggers on a free port (`func start` uses 7071).
        host_options.http_port = Some(0);
        let host = FunctionsHost::start(host_options).await.expect("host starts");
        Stack { host, emulator, storage, app_dir }
    }

    /// Drops a blob into batch-input.
    pub async fn drop_blob(&self, name: &str, content: &[u8]) {
        super::upload(&self.storage, name, content).await;
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

    /// QueueMonitor invocations that concerned `batch_id` (by their logs).
    pub fn checks_of(&self, batch_id: &str) -> usize {
        self.host
            .invocations()
            .iter()
            .filter(|r: &&InvocationRecord| {
                r.function == "QueueMonitor" && r.outcome.logs.iter().any(|l| l.contains(batch_id))
            })
            .count()
    }

    /// Decoded visible messages of a queue.
    pub async fn peek(&self, queue: &str) -> Vec<String> {
        match self.storage.peek_messages(queue, 32).await {
            Ok(ms) => ms
                .iter()
                .map(|m| {
                    String::from_utf8_lossy(&MessageEncoding::Base64.decode(&m.message_text).unwrap_or_default())
                        .into_owned()
                })
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// The job records, parsed.
    pub async fn records(&self) -> Vec<blob_batch_monitor::jobs::records::JobRecord> {
        let mut out = Vec::new();
        for item in self.storage.list_all_blobs("batch-records", None).await.unwrap_or_default() {
            if let Ok(Some(b)) = self.storage.get_blob("batch-records", &item.name).await {
                out.extend(serde_json::from_slice(&b.content).ok());
            }
        }
        out
    }

    /// Names of blobs under `container`.
    pub async fn blobs(&self, container: &str) -> Vec<String> {
        self.storage
            .list_all_blobs(container, None)
            .await
            .map(|v| v.into_iter().map(|b| b.name).collect())
            .unwrap_or_default()
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.app_dir);
    }
}
