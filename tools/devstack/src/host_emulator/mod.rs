//! A Functions host emulator for custom handlers: generic, driven only by host.json and `*/function.json`.
//!
//! It starts the handler as the host does ([`worker`]), fires blob triggers by scanning containers with receipts and
//! an internal queue ([`blob_trigger`]), fires queue triggers with leases, dequeue counts and poison queues
//! ([`queue_trigger`]), builds envelopes byte-for-byte like the host ([`envelope`]) and turns `Outputs` into queue
//! messages with the host's conversions ([`outputs`]). Each invocation is logged and recorded.

pub mod app;
mod blob_trigger;
pub mod envelope;
mod event_grid;
pub mod http_trigger;
mod outputs;
mod queue_trigger;
pub mod worker;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use blob_batch_monitor::http_client::HttpClient;
use blob_batch_monitor::storage::{StorageAccount, StorageClient};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use app::{App, Function};
use worker::{Outcome, Worker, WorkerSpec};

/// How to run the host.
#[derive(Clone, Debug)]
pub struct HostOptions {
    /// The function app folder (host.json, function folders).
    pub app_root: PathBuf,
    /// Overrides `defaultExecutablePath` (e.g. `target/debug/handler`).
    pub executable: Option<PathBuf>,
    /// App settings: environment of the handler and source of binding connections.
    pub settings: Vec<(String, String)>,
    /// Container scan interval of blob triggers (the host's is 10 s).
    pub blob_scan_interval: Duration,
    /// How long a received message stays invisible while its invocation runs (the host's is 10 min).
    pub lease: Duration,
    /// Names receipts and the internal blob-trigger queue.
    pub host_id: String,
    /// Where HTTP triggers and the Event Grid blob webhook are served (`func start` uses 7071; 0 picks a free
    /// port); `None`: not served.
    pub http_port: Option<u16>,
    /// Behave as on Flex Consumption: refuse to start with a polling blob trigger, as the host does.
    pub flex: bool,
}

impl HostOptions {
    /// Options with the host's timings for `app_root` and `settings`.
    pub fn new(app_root: PathBuf, settings: Vec<(String, String)>) -> Self {
        HostOptions {
            app_root,
            executable: None,
            settings,
            blob_scan_interval: Duration::from_secs(10),
            lease: Duration::from_secs(600),
            host_id: "devstack".into(),
            http_port: None,
            flex: false,
        }
    }
}

/// One invocation, as logged.
#[derive(Clone, Debug)]
pub struct InvocationRecord {
    pub function: String,
    /// What fired it, e.g. `blob batch-input/a.jsonl` or `queue monitorjobs #3`.
    pub trigger: String,
    pub outcome: Outcome,
    pub millis: u64,
}

/// Shared by the trigger listeners.
pub(crate) struct Ctx {
    pub app: App,
    pub options: HostOptions,
    pub worker: Arc<Worker>,
    accounts: HashMap<String, StorageClient>,
    wakeups: Mutex<HashMap<String, Arc<Notify>>>,
    pub records: Mutex<Vec<InvocationRecord>>,
    /// Passes HTTP-triggered requests to the handler.
    pub http: reqwest::Client,
}

impl Ctx {
    /// The storage client for a binding's `connection` setting.
    pub fn account(&self, connection: &str) -> anyhow::Result<&StorageClient> {
        self.accounts
            .get(connection)
            .with_context(|| format!("app setting `{connection}` (a binding connection) is not set"))
    }

    /// Where receipts and the internal queue live: `AzureWebJobsStorage`, else the trigger's account.
    pub fn host_account<'a>(&'a self, fallback: &'a StorageClient) -> &'a StorageClient {
        self.accounts.get("AzureWebJobsStorage").unwrap_or(fallback)
    }

    /// The notifier that cuts a queue listener's back-off short when this host writes to that queue.
    pub fn wakeup(&self, connection: &str, queue: &str) -> Arc<Notify> {
        let mut w = self.wakeups.lock().unwrap_or_else(|e| e.into_inner());
        w.entry(format!("{connection}/{queue}")).or_default().clone()
    }

    /// Invokes a function, applies its queue outputs on success, logs and records the invocation.
    pub async fn invoke(&self, function: &Function, trigger: String, body: Vec<u8>) -> Outcome {
        let started = std::time::Instant::now();
        let has_return = function.bindings.iter().any(|b| b.name == "$return");
        let mut outcome = self.worker.invoke(&function.name, has_return, body).await;
        if outcome.succeeded() {
            if let Err(e) = self.apply_outputs(function, &outcome).await {
                outcome.error = Some(format!("outputs could not be written: {e:#}"));
            }
        }
        let millis = started.elapsed().as_millis() as u64;
        match (&outcome.error, outcome.status) {
            (None, status) => {
                tracing::info!(target: "host", "{} ({trigger}) → {} in {millis} ms", function.name, status.unwrap_or(0))
            }
            (Some(e), _) => {
                tracing::warn!(target: "host", "{} ({trigger}) FAILED in {millis} ms: {e}", function.name)
            }
        }
        for line in &outcome.logs {
            tracing::info!(target: "host", "    | {line}");
        }
        let record = InvocationRecord { function: function.name.clone(), trigger, outcome: outcome.clone(), millis };
        self.records.lock().unwrap_or_else(|e| e.into_inner()).push(record);
        outcome
    }

    async fn apply_outputs(&self, function: &Function, outcome: &Outcome) -> anyhow::Result<()> {
        for binding in function.queue_outputs() {
            let Some(value) = outcome.outputs.get(&binding.name) else {
                continue;
            };
            let binary = binding.data_type.as_deref().is_some_and(|d| d.eq_ignore_ascii_case("binary"));
            let messages = outputs::messages(value, binary).map_err(anyhow::Error::msg)?;
            let queue = binding.queue_name.as_deref().context("queue output without queueName")?;
            let account = self.account(&binding.connection)?;
            for m in &messages {
                account.put_message(queue, m, self.app.host.message_encoding, Duration::ZERO).await?;
            }
            if !messages.is_empty() {
                self.wakeup(&binding.connection, queue).notify_waiters();
            }
        }
        Ok(())
    }
}

/// A running host.
pub struct FunctionsHost {
    ctx: Arc<Ctx>,
    tasks: Vec<JoinHandle<()>>,
    http_address: Option<std::net::SocketAddr>,
}

impl FunctionsHost {
    /// Loads the app, starts the handler and the trigger listeners.
    pub async fn start(options: HostOptions) -> anyhow::Result<Self> {
        let app = App::load(&options.app_root)?;
        // The function index is checked before the worker starts, so a refused app starts nothing.
        if options.flex {
            flex_check(&app.functions)?;
        }
        let http = HttpClient::new(crate::TOOL_BODY_LIMIT, &Default::default())?;
        let mut accounts = HashMap::new();
        for (k, v) in &options.settings {
            if let Ok(a) = StorageAccount::parse(v) {
                if k == "AzureWebJobsStorage"
                    || app.functions.iter().any(|f| f.bindings.iter().any(|b| &b.connection == k))
                {
                    accounts.insert(k.clone(), StorageClient::new(http.clone(), a));
                }
            }
        }
        let executable = options.executable.clone().unwrap_or_else(|| {
            let p = options.app_root.join(&app.host.executable);
            if p.exists() {
                p
            } else {
                PathBuf::from(&app.host.executable)
            }
        });
        let worker = Worker::start(WorkerSpec {
            executable,
            arguments: app.host.arguments.clone(),
            app_root: options.app_root.clone(),
            settings: options.settings.clone(),
            function_timeout: app.host.function_timeout,
        })
        .await?;
        // Redirects and cookies belong to the client, whose requests these are.
        let forwarder = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).no_proxy().build()?;
        let ctx = Arc::new(Ctx {
            app,
            options,
            worker,
            accounts,
            wakeups: Mutex::default(),
            records: Mutex::default(),
            http: forwarder,
        });
        let mut tasks = Vec::new();
        let mut http_address = None;
        let event_grid =
            ctx.app.functions.iter().any(|f| f.trigger().is_some_and(|t| t.kind == "blobTrigger" && t.event_grid()));
        let serves_http = !http_trigger::prefixes(&ctx.app.functions).is_empty() || event_grid;
        if let Some(port) = ctx.options.http_port.filter(|_| serves_http) {
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
            http_address = Some(listener.local_addr()?);
            tasks.push(tokio::spawn(http_trigger::serve(listener, ctx.clone())));
        }
        for f in ctx.app.functions.clone() {
            let Some(trigger) = f.trigger().cloned() else {
                continue;
            };
            if trigger.kind == "httpTrigger" {
                continue;
            }
            ctx.account(&trigger.connection)?;
            match trigger.kind.as_str() {
                "blobTrigger" => tasks.extend(blob_trigger::spawn(ctx.clone(), f.clone(), trigger)?),
                "queueTrigger" => tasks.push(queue_trigger::spawn(ctx.clone(), f.clone(), trigger)?),
                other => {
                    tracing::warn!(target: "host", "{}: trigger type `{other}` is not emulated", f.name)
                }
            }
        }
        tracing::info!(target: "host", "functions host started: {}", ctx.app.functions.iter().map(|f| f.name.as_str()).collect::<Vec<_>>().join(", "));
        Ok(FunctionsHost { ctx, tasks, http_address })
    }

    /// Where HTTP triggers are served (`http://<this>/api/…`), if they are.
    pub fn http_address(&self) -> Option<std::net::SocketAddr> {
        self.http_address
    }

    /// The supervised handler process.
    pub fn worker(&self) -> &Worker {
        &self.ctx.worker
    }

    /// Every invocation so far.
    pub fn invocations(&self) -> Vec<InvocationRecord> {
        self.ctx.records.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Stops the listeners and the handler.
    pub async fn stop(self) {
        for t in &self.tasks {
            t.abort();
        }
        self.ctx.worker.stop();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

impl Drop for FunctionsHost {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        self.ctx.worker.stop();
    }
}

/// The host on Flex Consumption refuses a blob trigger that polls, at start-up, with this message.
fn flex_check(functions: &[Function]) -> anyhow::Result<()> {
    let polling = functions.iter().find(|f| f.trigger().is_some_and(|t| t.kind == "blobTrigger" && !t.event_grid()));
    if let Some(f) = polling {
        anyhow::bail!(
            "The Flex Consumption SKU only supports EventGrid as the source for BlobTrigger functions. Please update \
             function '{}' to use EventGrid. For more information see https://aka.ms/flexblobtrigger.",
            f.name
        );
    }
    Ok(())
}
