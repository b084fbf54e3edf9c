//! Tracing set-up for a process whose stdout the Functions host scrapes: `fmt` lines, INFO by default, `RUST_LOG`
//! overrides, ANSI colours only on a terminal (the host would store the escape codes verbatim).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. Safe to call more than once (later calls do nothing).
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stdout().is_terminal())
        .with_target(false)
        .with_writer(std::io::stdout)
        .try_init();
}
