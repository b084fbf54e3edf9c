//! Serving the router to the Functions host: hyper's connection builder, with deadlines for a client that sends its
//! headers or its body too slowly, and a graceful shutdown that lets invocations in flight finish.
//!
//! `axum::serve` sets no read deadlines, so a connection that trickles its headers stays open for ever. The handler
//! listens on loopback for the host only, so this is hygiene rather than defence: a stuck peer must not hold a
//! connection and its memory indefinitely.

use std::future::Future;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower_http::timeout::RequestBodyTimeoutLayer;

/// How long a client may take over a request's headers, and how long its body may pause between two parts.
#[derive(Clone, Copy, Debug)]
pub struct Deadlines {
    /// From the first byte of a request to the end of its headers.
    pub headers: Duration,
    /// Longest wait for the next part of a body. The host streams a blob of hundreds of MB without pausing this long.
    pub body_idle: Duration,
}

impl Default for Deadlines {
    fn default() -> Self {
        Deadlines { headers: Duration::from_secs(30), body_idle: Duration::from_secs(60) }
    }
}

/// Serves `app` on `listener` until `shutdown` resolves, then waits for the connections in flight to finish.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    deadlines: Deadlines,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = app.layer(RequestBodyTimeoutLayer::new(deadlines.body_idle));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(deadlines.headers);
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, or a connection reset before it was accepted: go on after a pause.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let service = TowerToHyperService::new(app.clone());
        let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "a connection ended with an error");
            }
        });
    }
    graceful.shutdown().await;
    Ok(())
}
