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
    let app = Router::new().fallback(forward).with_state(ctx);
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(target: "host", "the HTTP trigger listener stopped: {e}");
    }
}

async fn forward(State(ctx): State<Arc<Ctx>>, request: Request) -> Response {
    let path = request.uri().path().to_string();
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
    let path_and_query = request.uri().path_and_query().map_or(path.clone(), |p| p.as_str().to_string());
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
