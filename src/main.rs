//! The `handler` binary the Functions host starts: tracing, settings, bind `127.0.0.1:$FUNCTIONS_CUSTOMHANDLER_PORT`,
//! serve until SIGTERM or Ctrl-C. Everything else lives in the library.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;

use blob_batch_monitor::{config::Config, run, telemetry, AppState};

/// mimalloc rather than the system allocator: the deployed build is static musl, whose allocator is slow under the
/// many small allocations of an invocation (docs/performance.md has the comparison). `no_thp` keeps idle memory low:
/// with transparent huge pages its regions are reserved 2 MB at a time.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    telemetry::init();
    let port = match port_from_env() {
        Ok(p) => p,
        Err(message) => return fail(&message),
    };
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => return fail(&e.to_string()),
    };
    if !config.proxies.is_empty() {
        tracing::info!(proxies = %config.proxies.describe(), "outbound proxies from the environment");
    }
    let state = match AppState::new(config) {
        Ok(s) => s,
        Err(e) => return fail(&format!("cannot build the HTTP clients: {e}")),
    };
    // Loopback only: the host dials 127.0.0.1, and nothing else should reach the handler.
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => return fail(&format!("cannot listen on {addr}: {e}")),
    };
    tracing::info!(%addr, "handler listening");
    match run(listener, state, shutdown_signal()).await {
        Ok(()) => {
            tracing::info!("handler stopped");
            ExitCode::SUCCESS
        }
        Err(e) => fail(&format!("server error: {e}")),
    }
}

/// The port the host chose; the legacy variable name is accepted too.
fn port_from_env() -> Result<u16, String> {
    let (name, value) = ["FUNCTIONS_CUSTOMHANDLER_PORT", "FUNCTIONS_HTTPWORKER_PORT"]
        .into_iter()
        .find_map(|n| std::env::var(n).ok().map(|v| (n, v)))
        .ok_or("FUNCTIONS_CUSTOMHANDLER_PORT is not set (the Functions host sets it; set it by hand to run the handler alone)")?;
    match value.trim().parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(format!("{name} must be a TCP port from 1 to 65535, not `{value}`")),
    }
}

/// One line on stderr (the host logs stderr at Error level), then a non-zero exit.
fn fail(message: &str) -> ExitCode {
    eprintln!("handler: error: {message}");
    ExitCode::FAILURE
}

/// Resolves on SIGTERM (the host stopping the worker) or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down: finishing in-flight invocations");
}
