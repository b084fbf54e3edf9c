//! Integration tests: one binary (style habit 13). Storage is a real Azurite, the batch API the stateful emulator.

mod bench_smoke;
mod blob_monitor;
mod browser;
mod deploy;
mod e2e;
mod event_grid;
mod events;
mod fuzz;
mod helpers;
mod host_emulator;
mod hostile;
mod identity;
mod jobs_page;
mod load;
mod queue_monitor;
mod recovery;
mod reliability;
mod split;
mod validation;
