//! A stateful emulator of the Azure OpenAI Batch API in blob mode, for local runs and tests.
//!
//! It serves both surfaces (`/openai/batches?api-version=…` and `/openai/v1/batches`): create, retrieve, list,
//! cancel; checks `api-key` (or an Entra ID bearer token); answers errors in each surface's documented shape. Jobs really read `input_blob` from
//! storage (with the handler's own storage client), are validated as Azure does ([`validate`]), move through
//! `validating → in_progress → finalizing → completed` on a configurable clock ([`runner`]) and write
//! `results.jsonl` / `errors.jsonl` under `output_folder`. Faults can be injected ([`faults`]).
//!
//! The [`World`] is shared with the test that started the emulator, so tests inspect jobs and requests directly.

pub mod faults;
mod odata;
mod routes;
mod runner;
pub mod validate;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use blob_batch_monitor::http_client::HttpClient;
use blob_batch_monitor::storage::{StorageAccount, StorageClient};
use serde_json::{json, Value};
use tokio::net::TcpListener;

pub use faults::Faults;

/// How long each phase of a job lasts.
#[derive(Clone, Copy, Debug)]
pub struct Timings {
    pub validating: Duration,
    pub in_progress: Duration,
    pub finalizing: Duration,
    pub cancelling: Duration,
}

impl Timings {
    /// Every phase lasts `d`.
    pub fn uniform(d: Duration) -> Self {
        Timings { validating: d, in_progress: d, finalizing: d, cancelling: d }
    }
}

/// Emulator settings.
#[derive(Clone, Debug)]
pub struct EmulatorConfig {
    /// The key clients must send in `api-key`.
    pub api_key: String,
    /// An Entra ID token accepted instead, as `Authorization: Bearer <token>` (see [`crate::identity_emulator`]).
    pub bearer_token: Option<String>,
    pub timings: Timings,
    /// Storage accounts the emulated service can read inputs from and write outputs to.
    pub accounts: Vec<StorageAccount>,
    /// Azure's limit is 100,000 requests per file.
    pub max_tasks: usize,
    /// The largest input accepted, in bytes (blob input is documented up to 1 GB).
    pub max_bytes: u64,
    /// Each deployment's enqueued-token quota (`None`: unlimited). A job's input counts, estimated from its size,
    /// from its create until it ends.
    pub token_quota: Option<u64>,
    /// How a job over the quota is refused: at create (the ten regions that fail fast), or by failing it after
    /// validation (the others).
    pub quota_mode: QuotaMode,
    pub faults: Faults,
}

/// Where the service refuses a job over the enqueued-token quota (azure-openai-batch.md §9.3).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum QuotaMode {
    /// HTTP 400 `token_limit_exceeded` at create.
    #[default]
    AtCreate,
    /// The job is created, then fails after validation with `token_limit_exceeded`.
    AfterValidation,
}

impl EmulatorConfig {
    /// Settings with Azure's limits, no faults, and `timings`.
    pub fn new(api_key: &str, accounts: Vec<StorageAccount>, timings: Timings) -> Self {
        EmulatorConfig {
            api_key: api_key.to_string(),
            bearer_token: None,
            timings,
            accounts,
            max_tasks: 100_000,
            max_bytes: 1_000_000_000,
            token_quota: None,
            quota_mode: QuotaMode::AtCreate,
            faults: Faults::default(),
        }
    }
}

/// One emulated job. Rendered to the Batch object by [`Job::to_json`].
#[derive(Clone, Debug)]
pub struct Job {
    pub id: String,
    pub status: String,
    pub input_blob: String,
    pub output_folder: String,
    pub endpoint: String,
    pub created_at: u64,
    pub timestamps: BTreeMap<&'static str, u64>,
    pub total: u64,
    pub completed: u64,
    pub failed: u64,
    pub errors: Vec<Value>,
    pub output_blob: String,
    pub error_blob: String,
    pub cancel_requested: bool,
    /// The deployment its input names and its estimated input tokens, counted against the quota until it ends.
    pub deployment: String,
    pub tokens: u64,
}

impl Job {
    /// A job as create makes it: `validating`, nothing run yet.
    pub fn new(id: String, input_blob: &str, output_folder: &str, endpoint: &str, created_at: u64) -> Self {
        Job {
            id,
            status: "validating".into(),
            input_blob: input_blob.to_string(),
            output_folder: output_folder.to_string(),
            endpoint: endpoint.to_string(),
            created_at,
            timestamps: Default::default(),
            total: 0,
            completed: 0,
            failed: 0,
            errors: Vec::new(),
            output_blob: String::new(),
            error_blob: String::new(),
            cancel_requested: false,
            deployment: String::new(),
            tokens: 0,
        }
    }

    /// The Batch object as the service returns it (azure-openai-batch.md §4).
    pub fn to_json(&self) -> Value {
        let ts = |k: &str| self.timestamps.get(k).copied().map_or(Value::Null, Value::from);
        json!({
            "id": self.id, "object": "batch", "endpoint": self.endpoint,
            "errors": if self.errors.is_empty() { Value::Null } else { json!({"object": "list", "data": self.errors}) },
            "input_file_id": null, "completion_window": "24h", "status": self.status,
            "output_file_id": null, "error_file_id": null,
            "created_at": self.created_at, "in_progress_at": ts("in_progress_at"), "expires_at": self.created_at + 86_400,
            "finalizing_at": ts("finalizing_at"), "completed_at": ts("completed_at"), "failed_at": ts("failed_at"),
            "expired_at": ts("expired_at"), "cancelling_at": ts("cancelling_at"), "cancelled_at": ts("cancelled_at"),
            "request_counts": {"total": self.total, "completed": self.completed, "failed": self.failed},
            "metadata": null, "input_blob": self.input_blob, "output_blob": self.output_blob, "error_blob": self.error_blob,
            "usage": self.usage(),
        })
    }

    /// Token counts as OpenAI reports them once requests have run (12 in and 8 out per completed request); `null`
    /// before (Azure may leave the field out altogether, azure-openai-batch.md §4).
    fn usage(&self) -> Value {
        if self.completed == 0 {
            return Value::Null;
        }
        json!({
            "input_tokens": 12 * self.completed, "output_tokens": 8 * self.completed, "total_tokens": 20 * self.completed,
            "input_tokens_details": {"cached_tokens": 0}, "output_tokens_details": {"reasoning_tokens": 0},
        })
    }

    /// Whether the job has ended.
    pub fn is_terminal(&self) -> bool {
        matches!(self.status.as_str(), "completed" | "failed" | "expired" | "cancelled")
    }

    pub(crate) fn set_status(&mut self, status: &str) {
        self.status = status.to_string();
        let key = match status {
            "in_progress" => "in_progress_at",
            "finalizing" => "finalizing_at",
            "completed" => "completed_at",
            "failed" => "failed_at",
            "expired" => "expired_at",
            "cancelling" => "cancelling_at",
            "cancelled" => "cancelled_at",
            _ => return,
        };
        self.timestamps.insert(key, unix_now());
    }
}

/// A request the emulator received: method, path (without query and surface prefix) and the status it answered
/// (0 if it never did).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub status: u16,
}

/// The emulator's shared state.
#[derive(Debug)]
pub struct World {
    pub config: Mutex<EmulatorConfig>,
    jobs: Mutex<BTreeMap<String, Job>>,
    order: Mutex<Vec<String>>,
    requests: Mutex<Vec<Recorded>>,
    pub(crate) storage: Vec<StorageClient>,
    /// Estimated input tokens of the running jobs, by deployment, and the most there ever were.
    enqueued: Mutex<BTreeMap<String, u64>>,
    peak_enqueued: Mutex<BTreeMap<String, u64>>,
    /// While `true`, a create that has registered its job waits before answering ([`World::hold_creates`]).
    create_gate: tokio::sync::watch::Sender<bool>,
}

/// Creates are held while this lives ([`World::hold_creates`]); dropping it lets them answer.
#[must_use = "creates are released when this is dropped"]
pub struct HeldCreates(tokio::sync::watch::Sender<bool>);

impl Drop for HeldCreates {
    fn drop(&mut self) {
        self.0.send_replace(false);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicked holder leaves consistent data here (plain maps); keep serving.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl World {
    /// A snapshot of every job, in creation order.
    pub fn jobs(&self) -> Vec<Job> {
        let jobs = lock(&self.jobs);
        lock(&self.order).iter().filter_map(|id| jobs.get(id).cloned()).collect()
    }

    /// A snapshot of one job.
    pub fn job(&self, id: &str) -> Option<Job> {
        lock(&self.jobs).get(id).cloned()
    }

    /// Every API request received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        lock(&self.requests).clone()
    }

    /// How many requests matched `method` and a path containing `path_part`.
    pub fn count(&self, method: &str, path_part: &str) -> usize {
        lock(&self.requests).iter().filter(|r| r.method == method && r.path.contains(path_part)).count()
    }

    /// Replaces the fault settings.
    pub fn set_faults(&self, faults: Faults) {
        lock(&self.config).faults = faults;
    }

    /// Forces a job into `status` (e.g. `expired`), as the service might on its own.
    pub fn force_status(&self, id: &str, status: &str) -> bool {
        self.update(id, |job| job.set_status(status)).is_some()
    }

    /// Changes a job; a job that ends gives its tokens back to its deployment's quota.
    pub(crate) fn update<R>(&self, id: &str, f: impl FnOnce(&mut Job) -> R) -> Option<R> {
        let mut jobs = lock(&self.jobs);
        let job = jobs.get_mut(id)?;
        let running = !job.is_terminal();
        let result = f(job);
        if running && job.is_terminal() && job.tokens > 0 {
            let mut enqueued = lock(&self.enqueued);
            if let Some(n) = enqueued.get_mut(&job.deployment) {
                *n = n.saturating_sub(job.tokens);
            }
        }
        Some(result)
    }

    /// Counts `tokens` of `deployment` as enqueued if the quota holds them; `false` if it does not.
    pub(crate) fn enqueue_tokens(&self, deployment: &str, tokens: u64, quota: u64) -> bool {
        let mut enqueued = lock(&self.enqueued);
        let now = enqueued.entry(deployment.to_string()).or_default();
        if *now + tokens > quota {
            return false;
        }
        *now += tokens;
        let mut peak = lock(&self.peak_enqueued);
        let top = peak.entry(deployment.to_string()).or_default();
        *top = (*top).max(*now);
        true
    }

    /// The most tokens `deployment` ever had enqueued at once.
    pub fn peak_enqueued(&self, deployment: &str) -> u64 {
        lock(&self.peak_enqueued).get(deployment).copied().unwrap_or(0)
    }

    /// Holds every create after its job exists and before it answers, until the returned guard is dropped: a test
    /// makes deliveries overlap inside a create, or kills the handler there, without guessing a duration.
    pub fn hold_creates(&self) -> HeldCreates {
        self.create_gate.send_replace(true);
        HeldCreates(self.create_gate.clone())
    }

    /// Waits while creates are held.
    pub(crate) async fn create_gate(&self) {
        let mut gate = self.create_gate.subscribe();
        let _ = gate.wait_for(|held| !held).await;
    }

    /// Forgets a job, as a service that lost it would (its id then answers 404).
    pub fn forget(&self, id: &str) -> bool {
        lock(&self.order).retain(|o| o != id);
        lock(&self.jobs).remove(id).is_some()
    }

    /// Sets how long each phase of the jobs created from now on lasts.
    pub fn set_timings(&self, timings: Timings) {
        lock(&self.config).timings = timings;
    }

    /// Puts a job into the world as if it had been created at `job.created_at` (tests: a busy resource, or a job an
    /// interrupted create made). No runner moves it: force its status to change it.
    pub fn plant(&self, job: Job) {
        self.insert(job);
    }

    /// A job for `input_blob` as create makes it, `validating`, with a fresh id, created at `created_at`.
    pub fn job_for(&self, input_blob: &str, created_at: u64) -> Job {
        Job::new(self.next_id(), input_blob, "", "/chat/completions", created_at)
    }

    pub(crate) fn insert(&self, job: Job) {
        lock(&self.order).push(job.id.clone());
        lock(&self.jobs).insert(job.id.clone(), job);
    }

    /// Records a request as it arrives (status 0 until answered), so that a request whose client vanished
    /// before the answer still counts.
    pub(crate) fn record_start(&self, method: String, path: String) -> usize {
        let mut r = lock(&self.requests);
        r.push(Recorded { method, path, status: 0 });
        r.len() - 1
    }

    pub(crate) fn record_status(&self, index: usize, status: u16) {
        if let Some(r) = lock(&self.requests).get_mut(index) {
            r.status = status;
        }
    }

    /// A fresh job id in the documented shape (`batch_` + a GUID).
    pub(crate) fn next_id(&self) -> String {
        format!("batch_{}", uuid::Uuid::new_v4())
    }

    /// The storage client for a blob URL, if the URL belongs to a known account.
    pub(crate) fn storage_for(&self, url: &str) -> Option<(&StorageClient, String, String)> {
        self.storage.iter().find_map(|s| s.split_blob_url(url).map(|(c, n)| (s, c, n)))
    }
}

/// A running emulator.
pub struct BatchEmulator {
    pub world: Arc<World>,
    addr: std::net::SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl BatchEmulator {
    /// Serves the emulator on `listener` (bind port 0 in tests).
    pub fn start(listener: TcpListener, config: EmulatorConfig) -> anyhow::Result<Self> {
        let http = HttpClient::new(crate::TOOL_BODY_LIMIT, &Default::default())?;
        let storage = config.accounts.iter().map(|a| StorageClient::new(http.clone(), a.clone())).collect();
        let world = Arc::new(World {
            config: Mutex::new(config),
            jobs: Mutex::default(),
            order: Mutex::default(),
            requests: Mutex::default(),
            storage,
            create_gate: tokio::sync::watch::Sender::new(false),
            enqueued: Mutex::default(),
            peak_enqueued: Mutex::default(),
        });
        let addr = listener.local_addr()?;
        let app = routes::router(world.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(BatchEmulator { world, addr, task })
    }

    /// The endpoint to configure as `OPENAI_ENDPOINT`.
    pub fn uri(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for BatchEmulator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
