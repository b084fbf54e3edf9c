//! A stand-in for the platform's managed identity endpoint, the one App Service and Functions announce in
//! `IDENTITY_ENDPOINT` (azure-openai-batch.md §2): `GET /msi/token?resource=…&api-version=2019-08-01[&client_id=…]`
//! with `X-IDENTITY-HEADER`, answering `{"access_token", "expires_on" (Unix seconds as a string), "resource",
//! "token_type", "client_id"}`. It refuses a wrong header, a wrong api-version or a missing resource with a 400, as
//! the platform does, and records every request so tests can count fetches.
//!
//! Tokens are unsigned JWTs with the claims Azurite's `--oauth basic` checks (issuer, audience = the resource,
//! `iat`/`nbf`/`exp`), the same for every request for a resource so a service emulator can be told which to accept.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::{json, Value};
use tokio::net::TcpListener;

/// One token request as it arrived.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRequest {
    pub resource: Option<String>,
    pub api_version: Option<String>,
    pub client_id: Option<String>,
    /// Whether `X-IDENTITY-HEADER` held the expected secret.
    pub header_ok: bool,
}

struct Shared {
    header: String,
    lifetime: Duration,
    requests: Mutex<Vec<TokenRequest>>,
    /// Issue tokens whose `exp` claim has passed (the answer's `expires_on` still says they are fresh).
    expired: AtomicBool,
}

/// A running identity endpoint; stops when dropped.
pub struct IdentityEmulator {
    shared: Arc<Shared>,
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl IdentityEmulator {
    /// Serves on `listener`, expecting `header` in `X-IDENTITY-HEADER` and issuing tokens that live `lifetime`.
    pub fn start(listener: TcpListener, header: &str, lifetime: Duration) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            header: header.to_string(),
            lifetime,
            requests: Mutex::default(),
            expired: AtomicBool::new(false),
        });
        let addr = listener.local_addr()?;
        let app = Router::new().route("/msi/token", get(token)).with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(IdentityEmulator { shared, addr, task })
    }

    /// The value the platform would put in `IDENTITY_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}/msi/token", self.addr)
    }

    /// Every request so far, oldest first.
    pub fn requests(&self) -> Vec<TokenRequest> {
        self.shared.requests.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// From now on, issue tokens that a service checking their lifetime refuses.
    pub fn issue_expired(&self, expired: bool) {
        self.shared.expired.store(expired, Ordering::SeqCst);
    }

    /// The token issued for `resource`: the same for every request, so a service emulator can be told to accept it.
    pub fn token_for(resource: &str) -> String {
        jwt(resource, 4_102_444_800)
    }
}

/// An unsigned JWT for `resource` (as its audience, without a trailing `/`) that expires at `exp`.
fn jwt(resource: &str, exp: u64) -> String {
    use base64::Engine;
    let b64 = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let tenant = "72f988bf-0000-4000-8000-00000000e1d0";
    let claims = json!({
        "aud": resource.trim_end_matches('/'),
        "iss": format!("https://sts.windows.net/{tenant}/"),
        "iat": 1_735_689_600u64,
        "nbf": 1_735_689_600u64,
        "exp": exp,
        "oid": "00000000-0000-4000-8000-00000000a551",
        "tid": tenant,
        "sub": "00000000-0000-4000-8000-00000000a551",
        "ver": "1.0",
    });
    format!("{}.{}.c2lnbmF0dXJl", b64(json!({"alg": "RS256", "typ": "JWT"})), b64(claims))
}

impl Drop for IdentityEmulator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn answer(status: StatusCode, body: Value) -> Response {
    (status, [("content-type", "application/json")], body.to_string()).into_response()
}

fn refuse(message: &str) -> Response {
    answer(StatusCode::BAD_REQUEST, json!({"statusCode": 400, "message": message}))
}

async fn token(State(shared): State<Arc<Shared>>, uri: Uri, headers: HeaderMap) -> Response {
    let query: HashMap<String, String> =
        url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes()).into_owned().collect();
    let request = TokenRequest {
        resource: query.get("resource").cloned(),
        api_version: query.get("api-version").cloned(),
        client_id: query.get("client_id").cloned(),
        header_ok: headers.get("x-identity-header").and_then(|v| v.to_str().ok()) == Some(shared.header.as_str()),
    };
    shared.requests.lock().unwrap_or_else(|e| e.into_inner()).push(request.clone());
    if !request.header_ok {
        return refuse("The request is missing the X-IDENTITY-HEADER header or its value is wrong.");
    }
    if request.api_version.as_deref() != Some("2019-08-01") {
        return refuse("Unsupported api-version.");
    }
    let Some(resource) = request.resource.filter(|r| !r.is_empty()) else {
        return refuse("Required query parameter 'resource' is missing.");
    };
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    answer(
        StatusCode::OK,
        json!({
            "access_token": if shared.expired.load(Ordering::SeqCst) {
                jwt(&resource, 1_735_689_660)
            } else {
                IdentityEmulator::token_for(&resource)
            },
            "expires_on": (now + shared.lifetime.as_secs()).to_string(),
            "resource": resource,
            "token_type": "Bearer",
            "client_id": request.client_id.unwrap_or_else(|| "00000000-0000-4000-8000-00000000a551".into()),
        }),
    )
}
