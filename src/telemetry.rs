//! Tracing set-up for a process whose stdout the Functions host scrapes: `fmt` lines, INFO by default, `RUST_LOG`
//! overrides, ANSI colours only on a terminal (the host would store the escape codes verbatim).

use std::io::IsTerminal;

use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. Safe to call more than once (later calls do nothing).
pub fn init() {
    let builder = tracing_subscriber::fmt()
        .with_ansi(std::io::stdout().is_terminal())
        .with_target(false)
        .with_writer(std::io::stdout);
    // A plain level filter unless RUST_LOG asks for more: EnvFilter's per-span matching costs on every invocation.
    let _ = match std::env::var("RUST_LOG").ok().and_then(|v| EnvFilter::try_new(v).ok()) {
        Some(filter) => builder.with_env_filter(filter).try_init(),
        None => builder.with_max_level(LevelFilter::INFO).try_init(),
    };
}
