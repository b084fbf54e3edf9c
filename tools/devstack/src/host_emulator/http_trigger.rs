//! HTTP triggers as the host runs them for a custom handler with `customHandler.enableProxyingHttpRequest` (or the
//! older `enableForwardingHttpRequest`): a function whose bindings are an `httpTrigger` and an `http` output gets
//! the client's request as it is, path under `/api/`, query and headers kept, at the handler's own address, and the
//! handler's answer (status, headers, body) goes back to the client. Listens where `func start` does, port 7071.
//! Function keys are not checked, as `func start` does not check them.

use std::sync::Arc;

use axum::body::{to_bytes, Body};
use axum::extract::{Request, State};
use axum::http::{HeaderName, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use tokio::net::TcpListener;

use super::app::Function;
use super::Ctx;

/// The largest request body passed on.
const MAX_BODY: usize = 100 << 20;

/// Headers that belong to one connection, not to the request.
const HOP_BY_HOP: [&str; 6] = ["connection", "keep-alive", "transfer-encoding", "te", "upgrade", "proxy-connection"];

/// `/api/<route prefix>` of each HTTP-triggered function: the route template up to its first parameter.
pub fn prefixes(functions: &[Function]) -> Vec<(String, Function)> {
    functions
        .iter()
        .filter(|f| f.trigger().is_some_and(|t| t.kind == "httpTrigger"))
        .filter_map(|f| {
            let route = f.trigger()?.route.clone().unwrap_or_else(|| f.name.clone());
            let fixed = route.split('{').next().unwrap_or("").trim_end_matches('/');
            Some((format!("/api/{fixed}"), f.clone()))
        })
        .collect()
}

/// Serves the HTTP triggers on `listener` until the task is aborted.
pub(crate) async fn serve(listener: TcpListener, ctx: Arc<Ctx>) {
    let app = Router::new()
        .route("/runtime/webhooks/blobs", axum::routing::post(super::event_grid::webhook))
        .fallback(forward)
        .layer(axum::middleware::from_fn(loopback_only))
        .with_state(ctx);
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(target: "host", "the HTTP trigger listener stopped: {e}");
    }
}

/// A page on another site whose name was rebound to 127.0.0.1 sends its own name: only loopback names are served.
async fn loopback_only(request: Request, next: axum::middleware::Next) -> Response {
    if !loopback_host(request.headers()) {
        return (StatusCode::FORBIDDEN, "only loopback host names are served locally").into_response();
    }
    next.run(request).await
}

async fn forward(State(ctx): State<Arc<Ctx>>, request: Request) -> Response {
    // The host resolves `.` and `..` (also percent-encoded) before routing, so only `/api/<route>` reaches a function.
    let Some(path) = normalised(request.uri().path()) else {
        return (StatusCode::BAD_REQUEST, "not a request path").into_response();
    };
    let routes = prefixes(&ctx.app.functions);
    let Some((_, function)) = routes.iter().find(|(prefix, _)| {
        path == *prefix || path.strip_prefix(prefix.as_str()).is_some_and(|rest| rest.starts_with('/'))
    }) else {
        return (StatusCode::NOT_FOUND, "no function serves this route").into_response();
    };
    let methods = function.trigger().map(|t| t.methods.clone()).unwrap_or_default();
    let method = request.method().as_str().to_ascii_lowercase();
    if !methods.is_empty() && !methods.contains(&method) {
        return StatusCode::METHOD_NOT_ALLOWED.into_response();
    }
    let path_and_query = match request.uri().query() {
        Some(q) => format!("{path}?{q}"),
        None => path.clone(),
    };
    let url = format!("{}{path_and_query}", ctx.worker.base_url());
    let (parts, body) = request.into_parts();
    let Ok(body) = to_bytes(body, MAX_BODY).await else {
        return (StatusCode::PAYLOAD_TOO_LARGE, "request body too large").into_response();
    };
    let mut upstream = ctx.http.request(parts.method.clone(), &url).body(body);
    for (name, value) in &parts.headers {
        if !HOP_BY_HOP.contains(&name.as_str()) {
            upstream = upstream.header(name, value);
        }
    }
    let started = std::time::Instant::now();
    let answer = match upstream.send().await {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(target: "host", "{}: no answer from the handler: {}", function.name, e.without_url());
            return (StatusCode::BAD_GATEWAY, "the handler did not answer").into_response();
        }
    };
    let status = answer.status();
    let headers = answer.headers().clone();
    let bytes = answer.bytes().await.unwrap_or_default();
    // The path without the query: the function key travels there.
    tracing::info!(target: "host", "{}: {} {} -> {} in {} ms", function.name, parts.method, path, status, started.elapsed().as_millis());
    let mut response = Response::new(Body::from(bytes));
    *response.status_mut() = status;
    for (name, value) in &headers {
        if !HOP_BY_HOP.contains(&name.as_str()) && name != HeaderName::from_static("content-length") {
            response.headers_mut().append(name, value.clone());
        }
    }
    response
}

/// The path with its dot segments resolved, as a URL parser resolves them (`%2e` counts as a dot).
fn normalised(path: &str) -> Option<String> {
    url::Url::parse(&format!("http://localhost{path}")).ok().map(|u| u.path().to_string())
}

/// Whether the `Host` header names this machine's loopback (`localhost`, `127.0.0.1`, `[::1]`, any port).
fn loopback_host(headers: &axum::http::HeaderMap) -> bool {
    let Some(host) = headers.get(axum::http::header::HOST).and_then(|h| h.to_str().ok()) else { return false };
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_resolved_before_routing() {
        assert_eq!(normalised("/api/jobs/../../QueueMonitor").as_deref(), Some("/QueueMonitor"));
        assert_eq!(normalised("/api/jobs/%2e%2e/%2E%2e/QueueMonitor").as_deref(), Some("/QueueMonitor"));
        assert_eq!(
            normalised("/api/jobs/batch-input/a%20b.jsonl/0x1").as_deref(),
            Some("/api/jobs/batch-input/a%20b.jsonl/0x1")
        );
    }

    #[test]
    fn only_loopback_names_are_served() {
        let with = |host: &'static str| {
            let mut h = axum::http::HeaderMap::new();
            h.insert(axum::http::header::HOST, axum::http::HeaderValue::from_static(host));
            loopback_host(&h)
        };
        for ok in ["127.0.0.1:7071", "localhost:7071", "LOCALHOST", "[::1]:7071", "127.0.0.2"] {
            assert!(with(ok), "{ok}");
        }
        for bad in ["evil.example:7071", "127.0.0.1.evil.example", "localhost.evil.example:7071", "[2001:db8::1]:7071"]
        {
            assert!(!with(bad), "{bad}");
        }
        assert!(!loopback_host(&axum::http::HeaderMap::new()), "no Host at all");
    }
}
