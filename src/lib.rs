//! # blob-batch-monitor
//!
//! An Azure Functions custom handler: a JSONL blob dropped into `batch-input` becomes an Azure OpenAI batch job in
//! blob-storage mode, checked through delayed queue messages until it reaches a terminal status.
//!
//! ## Layout
//! - [`functions`]: one adapter per function (`POST /BlobMonitor`, `POST /QueueMonitor`, the `Jobs` page under
//!   `/api/jobs`) plus `GET /` for readiness.
//! - [`protocol`]: the host's invocation envelope and response, including the streaming blob-envelope reader.
//! - [`jobs`]: the domain core: the job lifecycle (submission exactly once, checks, back-off, records, dead letters,
//!   reports), returning an outcome that the functions turn into the host's answer.
//! - [`batch_api`]: the Azure OpenAI Batch REST client and its error classification.
//! - [`http_client`]: reqwest, as every outbound call uses it (TLS roots, proxies, deadlines, error classes).
//! - [`identity`]: Entra ID tokens from the platform's managed identity, for Azure OpenAI and Storage without keys.
//! - [`storage`]: the Blob and Queue REST client (Shared Key, SAS or a managed identity), connection strings.
//! - [`clock`]: wall-clock time as records, events and the page write it.
//! - [`config`]: settings, parsed and validated once at start-up.
//! - [`content_check`]: BlobMonitor's body streamed: the envelope without its content, the content validated.
//! - [`error`]: the error type at the HTTP edge (non-2xx = the host retries).
//! - [`escape`]: user text made safe to show as a line (logs, `Logs`, the page).
//! - [`serve`]: the router served to the host, with read deadlines and a graceful shutdown.
//! - [`telemetry`]: tracing to stdout, as the host scrapes it.
//!
//! `main.rs` only reads the port, builds [`AppState`] and calls [`run`]; tests call [`app`] or [`run`] on port 0.

#![forbid(unsafe_code)]

pub mod batch_api;
pub mod clock;
pub mod config;
pub mod content_check;
pub mod error;
pub mod escape;
pub mod functions;
pub mod http_client;
pub mod identity;
pub mod jobs;
pub mod protocol;
pub mod serve;
pub mod storage;
pub mod telemetry;

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use tokio::net::TcpListener;

use batch_api::BatchClient;
use config::Config;
use http_client::HttpClient;
use jobs::policy::Policy;
use jobs::{JobSettings, Jobs};
use storage::StorageClient;

/// Largest answer the handler reads from either API: a page of 100 batch objects or a record is far smaller.
pub const MAX_RESPONSE_BODY: usize = 8 << 20;

/// Everything an invocation needs, shared by all of them: the settings, and the job core's context built from them.
#[derive(Clone, Debug)]
pub struct AppState {
    pub config: Arc<Config>,
    pub jobs: Jobs,
}

impl AppState {
    /// Builds the clients. One [`HttpClient`] serves both APIs, so connections are pooled per process.
    pub fn new(config: Config) -> anyhow::Result<Self> {
        let http = HttpClient::new(MAX_RESPONSE_BODY, &config.proxies)?;
        Ok(Self::with_http(config, http))
    }

    /// The same with a given client (tests pass one that trusts their private certificate authority).
    pub fn with_http(config: Config, http: HttpClient) -> Self {
        let batch = BatchClient::new(
            http.clone(),
            config.openai_endpoint.clone(),
            config.openai_auth.clone(),
            config.api_surface.clone(),
        );
        let storage = StorageClient::new(http, config.storage.clone());
        let settings = JobSettings {
            output_container: config.output_container.clone(),
            policy: Policy {
                retry_delay: config.retry_delay,
                backoff_cap: config.backoff_cap,
                max_failures: config.max_check_failures,
            },
            message_encoding: config.message_encoding,
            completed_queue: config.completed_queue.clone(),
            parts_container: config.parts_container.clone(),
        };
        let jobs = Jobs::new(batch, storage, config.records_container.clone(), settings);
        AppState { config: Arc::new(config), jobs }
    }
}

/// The handler's router: the three functions and the readiness probe.
pub fn app(state: AppState) -> Router {
    functions::router(state)
}

/// Serves [`app`] on an already bound listener until `shutdown` resolves, then lets in-flight invocations finish.
pub async fn run(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve::serve(listener, app(state), serve::Deadlines::default(), shutdown).await
}
