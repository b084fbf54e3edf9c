//! `Jobs`: the operators' page, an HTTP trigger (`/api/jobs…`) that the host hands over as the client sent it
//! (`customHandler.enableProxyingHttpRequest`, functions-protocol.md). `GET /api/jobs` is the table (HTML, or JSON
//! with `?format=json` or `Accept: application/json`); `GET /api/jobs/<container>/<blob name>/<etag>` one job;
//! `POST …/<etag>/cancel` and `…/resubmit` the actions, answered with a redirect back to the job.
//!
//! Every answer carries a strict Content-Security-Policy, `nosniff`, `no-store` and `no-referrer` (the function key
//! travels in the query). POSTs from another site are refused (`Sec-Fetch-Site`, `Origin`). The key (`code`) is kept
//! on the page's own links and forms and never logged.

mod html;

use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::header::{ACCEPT, CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, HOST, LOCATION, ORIGIN};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::jobs::overview::{self, ActionError};
use crate::AppState;
use html::Links;

/// Longest value of a query field the page uses or echoes (a blob-name filter, a state, the key).
const MAX_FIELD: usize = 256;
/// Longest job key: a container (63), a blob name (1,024), an ETag and the slashes between them.
const MAX_KEY: usize = 1_200;

/// The query string the page understands, read leniently: the first of a repeated field counts, unknown fields and
/// bad numbers are ignored, and every value is cut to [`MAX_FIELD`] characters, so that no query can turn the page
/// into an error without its headers or make it echo a megabyte.
#[derive(Debug, Default)]
struct Params {
    state: Option<String>,
    q: Option<String>,
    page: Option<usize>,
    format: Option<String>,
    /// The function key, as the host accepted it: kept on links, never logged.
    code: Option<String>,
    /// The action just done (`cancel`, `resubmit`), to say so on the job's page.
    done: Option<String>,
}

impl Params {
    fn of(query: Option<&str>) -> Self {
        let mut p = Params::default();
        for (k, v) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            let v: String = v.chars().take(MAX_FIELD).collect();
            let field = match k.as_ref() {
                "state" => &mut p.state,
                "q" => &mut p.q,
                "format" => &mut p.format,
                "code" => &mut p.code,
                "done" => &mut p.done,
                "page" if p.page.is_none() => {
                    p.page = v.trim().parse().ok();
                    continue;
                }
                _ => continue,
            };
            field.get_or_insert(v);
        }
        p
    }
}

/// The page's routes. Every answer, the router's own (a wrong method, say) included, carries the page's headers.
pub(super) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/jobs", get(list))
        .route("/api/jobs/", get(list))
        .route("/api/jobs/{*rest}", get(detail).post(action))
        .layer(axum::middleware::map_response(secure))
}

async fn list(State(state): State<Arc<AppState>>, headers: HeaderMap, RawQuery(query): RawQuery) -> Response {
    let p = Params::of(query.as_deref());
    let links = Links { code: p.code.as_deref() };
    let query = overview::Query { state: p.state.clone(), q: p.q.clone(), page: p.page };
    let json = p.format.as_deref() == Some("json")
        || headers.get(ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|a| a.contains("application/json"));
    match overview::overview(&state.jobs, &query).await {
        Ok(o) if json => {
            answer(StatusCode::OK, "application/json", serde_json::to_string(&o).expect("the overview serializes"))
        }
        Ok(o) => {
            let page = html::list_page(&o, p.state.as_deref().unwrap_or(""), p.q.as_deref().unwrap_or(""), &links);
            answer(StatusCode::OK, "text/html; charset=utf-8", page)
        }
        Err(e) => {
            tracing::error!(error = %e, "the job records could not be listed");
            let text = "The job records could not be listed; the log says why.";
            answer(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/html; charset=utf-8",
                html::message_page("Unavailable", text, &links),
            )
        }
    }
}

/// The job key after `/api/jobs/`, percent-decoded; `None` when the path is not UTF-8.
type JobPath = Result<Path<String>, PathRejection>;

async fn detail(State(state): State<Arc<AppState>>, rest: JobPath, RawQuery(query): RawQuery) -> Response {
    let p = Params::of(query.as_deref());
    let links = Links { code: p.code.as_deref() };
    let html = "text/html; charset=utf-8";
    let Some(key) = rest.ok().and_then(|Path(rest)| record_key(&rest)) else {
        return answer(
            StatusCode::NOT_FOUND,
            html,
            html::message_page("No such job", "That is not a job's address.", &links),
        );
    };
    match overview::detail(&state.jobs, &key).await {
        Ok(Some(d)) if p.format.as_deref() == Some("json") => {
            answer(StatusCode::OK, "application/json", serde_json::to_string(&d).expect("a job's detail serializes"))
        }
        Ok(Some(d)) => {
            let done = match p.done.as_deref() {
                Some("cancel") => Some("Cancellation requested: monitoring goes on until the job reports it."),
                Some("resubmit") => Some("Resubmitted: the blob goes back to submission."),
                _ => None,
            };
            answer(StatusCode::OK, html, html::detail_page(&d, &links, done))
        }
        Ok(None) => answer(StatusCode::NOT_FOUND, html, html::message_page("No such job", &key, &links)),
        Err(e) => {
            tracing::error!(error = %e, "a job record could not be read");
            answer(
                StatusCode::SERVICE_UNAVAILABLE,
                html,
                html::message_page("Unavailable", "The job record could not be read.", &links),
            )
        }
    }
}

async fn action(
    State(state): State<Arc<AppState>>,
    rest: JobPath,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let p = Params::of(query.as_deref());
    let links = Links { code: p.code.as_deref() };
    let html = "text/html; charset=utf-8";
    if !same_origin(&headers) {
        let text = "Actions are accepted only from this page.";
        return answer(StatusCode::FORBIDDEN, html, html::message_page("Refused", text, &links));
    }
    let rest = rest.map(|Path(rest)| rest).unwrap_or_default();
    let (key, verb) = match rest.rsplit_once('/').and_then(|(k, v)| Some((record_key(k)?, v))) {
        Some((key, verb @ ("cancel" | "resubmit"))) => (key, verb),
        _ => return answer(StatusCode::NOT_FOUND, html, html::message_page("No such action", "", &links)),
    };
    let result = match verb {
        "cancel" => overview::cancel(&state.jobs, &key).await,
        _ => overview::resubmit(&state.jobs, &key).await,
    };
    match result {
        Ok(_) => {
            // Post, redirect, get: a reload does not repeat the action. The page says what was done from the verb,
            // never from text in the link, which anyone could write.
            let mut back = links.job(&key, None);
            back.push_str(if back.contains('?') { "&" } else { "?" });
            back.push_str(&url::form_urlencoded::Serializer::new(String::new()).append_pair("done", verb).finish());
            let mut response = answer(StatusCode::SEE_OTHER, html, String::new());
            if let Ok(location) = HeaderValue::from_str(&back) {
                response.headers_mut().insert(LOCATION, location);
            }
            response
        }
        Err(e @ (ActionError::NoRecord(_) | ActionError::NotNow(_))) => {
            answer(StatusCode::CONFLICT, html, html::message_page("Not done", &e.to_string(), &links))
        }
        Err(e) => {
            tracing::error!(action = verb, error = %e, "an operator action failed");
            answer(StatusCode::BAD_GATEWAY, html, html::message_page("Failed", &e.to_string(), &links))
        }
    }
}

/// `<container>/<blob name…>/<etag>` from the path after `/api/jobs/`; `None` for anything else.
fn record_key(rest: &str) -> Option<String> {
    let rest = rest.trim_matches('/');
    if rest.len() > MAX_KEY {
        return None;
    }
    let parts: Vec<&str> = rest.split('/').collect();
    let usable = parts.len() >= 3 && parts.iter().all(|p| !p.is_empty() && *p != "." && *p != "..");
    usable.then(|| rest.to_string())
}

/// Whether a POST comes from this site: browsers send `Sec-Fetch-Site`, and `Origin` on every POST.
fn same_origin(headers: &HeaderMap) -> bool {
    let header = |name| headers.get(name).and_then(|v: &HeaderValue| v.to_str().ok());
    if let Some(site) = header("sec-fetch-site") {
        return matches!(site, "same-origin" | "none");
    }
    match (header(ORIGIN.as_str()), header(HOST.as_str())) {
        (Some(origin), Some(host)) => origin.split_once("://").is_some_and(|(_, rest)| rest == host),
        (Some(_), None) => false,
        // Not a browser (curl, a script): nothing to forge.
        (None, _) => true,
    }
}

/// An answer of the page ([`secure`] adds the headers).
fn answer(status: StatusCode, content_type: &'static str, body: String) -> Response {
    let mut response = (status, body).into_response();
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// The page's security headers, on every answer of its routes.
async fn secure(mut response: Response) -> Response {
    let h = response.headers_mut();
    if let Ok(csp) = HeaderValue::from_str(&html::CONTENT_SECURITY_POLICY) {
        h.insert(CONTENT_SECURITY_POLICY, csp);
    }
    h.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_read_leniently_and_bounded() {
        let p = Params::of(Some("page=2&page=1&q=a&q=b&state=running&x=1&page=z"));
        assert_eq!((p.page, p.q.as_deref(), p.state.as_deref()), (Some(2), Some("a"), Some("running")));
        assert_eq!(Params::of(Some("page=nope")).page, None);
        assert_eq!(Params::of(Some(&format!("q={}", "x".repeat(60_000)))).q.map(|q| q.len()), Some(MAX_FIELD));
        assert_eq!(Params::of(None).q, None);
    }

    #[test]
    fn keys_need_a_container_a_name_and_an_etag_and_never_climb() {
        assert_eq!(record_key(&format!("batch-input/{}/0x1", "a".repeat(60_000))), None, "too long to be a key");
        assert_eq!(record_key("batch-input/a.jsonl/0x1").as_deref(), Some("batch-input/a.jsonl/0x1"));
        assert_eq!(record_key("batch-input/dir/a.jsonl/0x1/").as_deref(), Some("batch-input/dir/a.jsonl/0x1"));
        for bad in ["", "batch-input/0x1", "batch-input/../x/0x1", "a//b/c"] {
            assert_eq!(record_key(bad), None, "{bad}");
        }
    }

    #[test]
    fn cross_site_posts_are_refused() {
        let with = |pairs: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.insert(*k, HeaderValue::from_static(v));
            }
            same_origin(&h)
        };
        assert!(with(&[("sec-fetch-site", "same-origin")]));
        assert!(!with(&[("sec-fetch-site", "cross-site"), ("origin", "https://app.azurewebsites.net")]));
        assert!(!with(&[("sec-fetch-site", "same-site")]));
        assert!(with(&[("origin", "http://127.0.0.1:7071"), ("host", "127.0.0.1:7071")]));
        assert!(!with(&[("origin", "https://evil.example"), ("host", "app.azurewebsites.net")]));
        assert!(with(&[]), "no browser, nothing to forge");
    }

    #[test]
    fn links_carry_the_function_key_and_encode_names() {
        let links = Links { code: Some("k=1&x") };
        assert_eq!(links.to("", &[("state", "running"), ("q", "")]), "/api/jobs?state=running&code=k%3D1%26x");
        assert_eq!(
            links.job("batch-input/a b.jsonl/0x1", Some("cancel")),
            "/api/jobs/batch-input/a%20b.jsonl/0x1/cancel?code=k%3D1%26x"
        );
        assert_eq!(Links { code: None }.to("", &[]), "/api/jobs");
    }
}
