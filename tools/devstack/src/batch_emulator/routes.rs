//! HTTP surface of the emulator: the two API surfaces, the `api-key` (or bearer token) check, fault injection, request recording, and
//! a small control API under `/_emulator` (force a status, change faults, list jobs) for people and scripts.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::Uri;
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};

use super::faults::{Dice, Injected};
use super::{odata, runner, unix_now, Faults, Job, World};

/// Which surface a request came through; it decides the error body shape and the create status.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Surface {
    Dated,
    V1,
}

#[derive(Clone)]
struct Ctx {
    world: Arc<World>,
    surface: Surface,
    rng: Arc<Dice>,
}

pub(super) fn router(world: Arc<World>) -> Router {
    let rng = Arc::new(Dice::new(0x5eed));
    let api = |surface| {
        let ctx = Ctx { world: world.clone(), surface, rng: rng.clone() };
        Router::new()
            .route("/batches", get(list).post(create))
            .route("/batches/{id}", get(retrieve))
            .route("/batches/{id}/cancel", post(cancel))
            .layer(middleware::from_fn_with_state(ctx.clone(), gate))
            .with_state(ctx)
    };
    Router::new()
        .nest("/openai", api(Surface::Dated))
        .nest("/openai/v1", api(Surface::V1))
        .route("/_emulator/batches", get(control_list))
        .route("/_emulator/batches/{id}/status", post(control_status))
        .route("/_emulator/faults", get(control_get_faults).put(control_set_faults))
        .with_state(world)
}

fn query(uri: &Uri) -> HashMap<String, String> {
    url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes()).into_owned().collect()
}

fn error(surface: Surface, status: StatusCode, code: &str, message: &str) -> Response {
    let body = match surface {
        Surface::V1 => {
            json!({"error": {"message": message, "type": "invalid_request_error", "param": null, "code": code}})
        }
        Surface::Dated => json!({"error": {"code": code, "message": message}}),
    };
    (status, [("content-type", "application/json")], body.to_string()).into_response()
}

fn ok(status: StatusCode, body: Value) -> Response {
    (status, [("content-type", "application/json")], body.to_string()).into_response()
}

/// Records every API call; checks the key and the api-version; injects faults.
async fn gate(State(ctx): State<Ctx>, request: Request, next: Next) -> Response {
    let recorded = ctx.world.record_start(request.method().to_string(), request.uri().path().to_string());
    let query = query(request.uri());
    let (api_key, bearer, faults) = {
        let c = ctx.world.config.lock().unwrap_or_else(|e| e.into_inner());
        (c.api_key.clone(), c.bearer_token.as_ref().map(|t| format!("Bearer {t}")), c.faults.clone())
    };
    let response = async {
        if faults.delay_ms > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(faults.delay_ms)).await;
        }
        let headers = request.headers();
        let key_ok = headers.get("api-key").and_then(|v| v.to_str().ok()) == Some(api_key.as_str());
        let token_ok =
            bearer.is_some() && headers.get("authorization").and_then(|v| v.to_str().ok()) == bearer.as_deref();
        if !key_ok && !token_ok {
            return error(ctx.surface, StatusCode::UNAUTHORIZED, "401", "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid key for an active subscription and use a correct regional API endpoint for your resource.");
        }
        if ctx.surface == Surface::Dated && !query.contains_key("api-version") {
            return error(ctx.surface, StatusCode::NOT_FOUND, "404", "Resource not found");
        }
        match faults.decide(&ctx.rng) {
            Some(Injected::Throttle(after)) => {
                let mut r = error(ctx.surface, StatusCode::TOO_MANY_REQUESTS, "429",
                    &format!("Requests to the Batch API have exceeded the call rate limit. Please retry after {} milliseconds.", after.as_millis()));
                if let Ok(v) = HeaderValue::from_str(&after.as_millis().to_string()) {
                    r.headers_mut().insert("retry-after-ms", v);
                }
                r
            }
            Some(Injected::Unavailable(code)) => {
                let status = StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
                error(ctx.surface, status, if code == 503 { "serviceUnavailable" } else { "internalFailure" }, "The service is temporarily unavailable (injected fault).")
            }
            None => next.run(request).await,
        }
    }
    .await;
    ctx.world.record_status(recorded, response.status().as_u16());
    response
}

async fn create(State(ctx): State<Ctx>, uri: Uri, body: Bytes) -> Response {
    let q = query(&uri);
    let bad = |m: &str| {
        error(
            ctx.surface,
            StatusCode::BAD_REQUEST,
            if ctx.surface == Surface::V1 { "invalid_value" } else { "invalidPayload" },
            m,
        )
    };
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return bad("The request body is not valid JSON.");
    };
    let field = |k: &str| req.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
    let version = q.get("api-version").cloned().unwrap_or_default();
    if ctx.surface == Surface::Dated && version.as_str() < "2025-04-01" {
        return bad(&format!("api-version {version} does not support input_blob; input_file_id is required."));
    }
    if field("endpoint").is_empty() || field("completion_window").is_empty() {
        return bad("'endpoint' and 'completion_window' are required.");
    }
    if req.get("metadata").is_some_and(|m| !m.is_null()) {
        return bad("metadata is currently not supported with blob storage input.");
    }
    if req.get("input_file_id").is_some_and(|v| !v.is_null()) {
        return bad("This emulator supports blob storage input only; input_file_id must be null.");
    }
    // Quota checks happen before the job exists.
    let (token_limit_now, token_limit_later, hold) = {
        let mut c = ctx.world.config.lock().unwrap_or_else(|e| e.into_inner());
        let f = &mut c.faults;
        let now = f.token_limit_creates > 0;
        f.token_limit_creates = f.token_limit_creates.saturating_sub(1);
        let later = !now && f.token_limit_jobs > 0;
        if later {
            f.token_limit_jobs -= 1;
        }
        (now, later, f.hold_create_ms)
    };
    if token_limit_now {
        return error(ctx.surface, StatusCode::BAD_REQUEST, "token_limit_exceeded",
            "Enqueued token limit reached for this deployment (token_limit_exceeded). Retry after existing jobs complete.");
    }
    let input_blob = field("input_blob");
    let output_folder = req.pointer("/output_folder/url").and_then(Value::as_str).unwrap_or_default().to_string();
    if input_blob.is_empty() || output_folder.is_empty() {
        return bad("'input_blob' and 'output_folder.url' are required in blob storage mode.");
    }
    let mut job = Job::new(ctx.world.next_id(), &input_blob, &output_folder, &field("endpoint"), unix_now());
    let (quota, mode) = {
        let c = ctx.world.config.lock().unwrap_or_else(|e| e.into_inner());
        (c.token_quota, c.quota_mode)
    };
    let mut over_quota = false;
    if let Some(quota) = quota {
        let (deployment, tokens) = estimate(&ctx.world, &input_blob).await;
        if ctx.world.enqueue_tokens(&deployment, tokens, quota) {
            (job.deployment, job.tokens) = (deployment, tokens);
        } else if mode == super::QuotaMode::AtCreate {
            return error(ctx.surface, StatusCode::BAD_REQUEST, "token_limit_exceeded",
                &format!("Enqueued token limit reached for deployment {deployment} ({quota} tokens; this job needs about {tokens}) (token_limit_exceeded). Retry after existing jobs complete."));
        } else {
            over_quota = true;
        }
    }
    // Blob mode accepts any completion window at create time and fails the job later (azure-openai-batch.md §3).
    let bad_window = field("completion_window") != "24h";
    let body = job.to_json();
    ctx.world.insert(job.clone());
    tokio::spawn(runner::run(ctx.world.clone(), job.id, bad_window, token_limit_later || over_quota));
    if hold > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(hold)).await;
    }
    ctx.world.create_gate().await;
    ok(if ctx.surface == Surface::Dated { StatusCode::CREATED } else { StatusCode::OK }, body)
}

/// A job input's deployment (its first line's `body.model`) and estimated tokens: a quarter of its bytes, as the
/// service estimates from characters. An input that cannot be read counts as nothing here; validation fails it.
async fn estimate(world: &World, input_blob: &str) -> (String, u64) {
    let Some((storage, container, name)) = world.storage_for(input_blob) else { return (String::new(), 0) };
    let Ok(Some(blob)) = storage.get_blob(&container, &name).await else { return (String::new(), 0) };
    let first = blob.content.split(|b| *b == b'\n').next().unwrap_or_default();
    let deployment = serde_json::from_slice::<Value>(first)
        .ok()
        .and_then(|l| l.pointer("/body/model").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_default();
    (deployment, (blob.content.len() as u64).div_ceil(4))
}

async fn retrieve(State(ctx): State<Ctx>, Path(id): Path<String>) -> Response {
    match ctx.world.job(&id) {
        Some(job) => ok(StatusCode::OK, job.to_json()),
        None => not_found(ctx.surface, &id),
    }
}

fn not_found(surface: Surface, id: &str) -> Response {
    error(
        surface,
        StatusCode::NOT_FOUND,
        if surface == Surface::V1 { "not_found" } else { "notFound" },
        &format!("Batch {id} not found."),
    )
}

/// `GET /batches`: newest first, `limit` (1–100, default 20) after the job `after`. The dated surface from
/// 2025-04-01-preview also takes OData `$filter` (`created_at` with `gt`/`ge`/`lt`/`le`/`eq`, `status eq '…'`,
/// joined by `and`) and `$orderby=created_at asc|desc`; v1 documents neither and ignores them.
async fn list(State(ctx): State<Ctx>, uri: Uri) -> Response {
    let q = query(&uri);
    let limit = q.get("limit").and_then(|l| l.parse::<usize>().ok()).unwrap_or(20).clamp(1, 100);
    let mut jobs: Vec<Job> = ctx.world.jobs();
    jobs.reverse(); // newest first
    let odata = ctx.surface == Surface::Dated && (q.contains_key("$filter") || q.contains_key("$orderby"));
    if odata {
        let refused = ctx.world.config.lock().unwrap_or_else(|e| e.into_inner()).faults.refuse_odata;
        let version = q.get("api-version").map_or("", String::as_str);
        if refused || version < "2025-04-01" {
            return error(
                ctx.surface,
                StatusCode::BAD_REQUEST,
                "invalidPayload",
                "$filter and $orderby are not supported.",
            );
        }
        let filter = match q.get("$filter").map(|f| odata::Filter::parse(f)).transpose() {
            Ok(f) => f,
            Err(why) => {
                return error(
                    ctx.surface,
                    StatusCode::BAD_REQUEST,
                    "invalidPayload",
                    &format!("Invalid $filter: {why}"),
                )
            }
        };
        if let Some(filter) = filter {
            jobs.retain(|j| filter.matches(j));
        }
        match q.get("$orderby").map(|o| o.trim()) {
            None | Some("created_at desc") => jobs.sort_by_key(|j| std::cmp::Reverse(j.created_at)),
            Some("created_at asc" | "created_at") => jobs.sort_by_key(|j| j.created_at),
            Some(other) => {
                return error(
                    ctx.surface,
                    StatusCode::BAD_REQUEST,
                    "invalidPayload",
                    &format!("Invalid $orderby: {other}"),
                )
            }
        }
    }
    let start = match q.get("after") {
        Some(after) => jobs.iter().position(|j| &j.id == after).map_or(jobs.len(), |p| p + 1),
        None => 0,
    };
    let page: Vec<Value> = jobs[start..].iter().take(limit).map(Job::to_json).collect();
    let has_more = start + page.len() < jobs.len();
    let id_at = |i: usize| page.get(i).and_then(|j| j.get("id")).cloned().unwrap_or(Value::Null);
    ok(
        StatusCode::OK,
        json!({"object": "list", "data": page, "first_id": id_at(0), "last_id": id_at(page.len().saturating_sub(1)), "has_more": has_more}),
    )
}

async fn cancel(State(ctx): State<Ctx>, Path(id): Path<String>) -> Response {
    let result = ctx.world.update(&id, |job| {
        if job.is_terminal() {
            return Err(job.status.clone());
        }
        job.cancel_requested = true;
        if job.status != "cancelling" {
            job.set_status("cancelling");
        }
        Ok(job.to_json())
    });
    match result {
        None => not_found(ctx.surface, &id),
        Some(Ok(body)) => ok(StatusCode::OK, body),
        Some(Err(status)) => error(
            ctx.surface,
            StatusCode::CONFLICT,
            "unexpectedEntityState",
            &format!("Batch {id} is already {status}."),
        ),
    }
}

async fn control_list(State(world): State<Arc<World>>) -> Response {
    ok(StatusCode::OK, Value::Array(world.jobs().iter().map(Job::to_json).collect()))
}

async fn control_status(State(world): State<Arc<World>>, Path(id): Path<String>, body: Bytes) -> Response {
    let status = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.get("status").and_then(Value::as_str).map(str::to_string));
    match status {
        Some(s) if world.force_status(&id, &s) => {
            ok(StatusCode::OK, world.job(&id).map(|j| j.to_json()).unwrap_or_default())
        }
        Some(_) => (StatusCode::NOT_FOUND, "no such batch").into_response(),
        None => (StatusCode::BAD_REQUEST, "send {\"status\": \"expired\"}").into_response(),
    }
}

async fn control_get_faults(State(world): State<Arc<World>>) -> Response {
    let faults = world.config.lock().unwrap_or_else(|e| e.into_inner()).faults.clone();
    ok(StatusCode::OK, json!(faults))
}

async fn control_set_faults(State(world): State<Arc<World>>, body: Bytes) -> Response {
    match serde_json::from_slice::<Faults>(&body) {
        Ok(f) => {
            world.set_faults(f.clone());
            ok(StatusCode::OK, json!(f))
        }
        Err(e) => (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    }
}
