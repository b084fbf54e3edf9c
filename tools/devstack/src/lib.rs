//! # devstack
//!
//! The local development stack for blob-batch-monitor, used by `devstack up`, by people, by the end-to-end tests and
//! by the benchmark (`tools/bench`). None of it is deployed.
//!
//! - [`azurite`]: installs and starts a real Azurite on free ports.
//! - [`batch_emulator`]: a stateful Azure OpenAI Batch API emulator that really reads inputs from and writes results
//!   to storage.
//! - [`identity_emulator`]: the platform's managed identity endpoint (`IDENTITY_ENDPOINT`), issuing fixed tokens.
//! - [`host_emulator`]: a generic Functions host for custom handlers: reads host.json and function.json, runs the
//!   handler, fires blob and queue triggers, applies queue outputs, as the real host does.
//! - [`package`]: the function app as it is published, with the blob trigger polling or fed by Event Grid.
//! - [`event_grid_watcher`]: a local stand-in for an Event Grid subscription: new blobs become `BlobCreated` events.
//! - [`storage_ops`]: the storage operations the handler never calls (receive, peek, delete, count messages; a blob
//!   by URL; metadata), for the host emulator and the tests.

#![forbid(unsafe_code)]

pub mod azurite;
pub mod batch_emulator;
pub mod event_grid_watcher;
pub mod host_emulator;
pub mod identity_emulator;
pub mod package;
pub mod storage_ops;

/// The devstack's tools read whole blobs (inputs, results) through the handler's storage client: allow up to 1 GiB.
pub const TOOL_BODY_LIMIT: usize = 1 << 30;
