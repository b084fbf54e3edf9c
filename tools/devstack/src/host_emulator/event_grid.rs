//! The Event Grid source of blob triggers, as the Storage extension serves it (functions-protocol.md §9): the webhook
//! `POST /runtime/webhooks/blobs?functionName=Host.Functions.<Name>` on the host's HTTP port. `aeg-event-type`
//! decides: `SubscriptionValidation` answers the validation code, `Notification` (one event or an array) puts each
//! event on the host's internal blob queue and answers 202 at once, `Unsubscribe` answers 202, anything else 400. Of
//! an event only `data.url`, `data.eTag` and `data.blobType` are read; the blob is read when the function runs, and
//! a repeated event runs it again (Event Grid keeps no receipts).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::blob_trigger::{function_id, internal_queue};
use super::Ctx;

/// The webhook's query.
#[derive(serde::Deserialize)]
pub(super) struct Webhook {
    #[serde(rename = "functionName")]
    function_name: Option<String>,
}

pub(super) async fn webhook(
    State(ctx): State<Arc<Ctx>>,
    Query(query): Query<Webhook>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let kind = headers.get("aeg-event-type").and_then(|v| v.to_str().ok()).unwrap_or("");
    let events = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Array(events)) => events,
        Ok(event @ Value::Object(_)) => vec![event],
        _ if kind == "Unsubscribe" => Vec::new(),
        _ => return (StatusCode::BAD_REQUEST, "the body is not an event or an array of events").into_response(),
    };
    match kind {
        "SubscriptionValidation" => {
            let code = events.first().and_then(|e| e.pointer("/data/validationCode")).cloned().unwrap_or(Value::Null);
            let body = json!({"validationResponse": code}).to_string();
            (StatusCode::OK, [("content-type", "application/json")], body).into_response()
        }
        "Notification" => {
            notify(&ctx, query.function_name.as_deref().unwrap_or_default(), &events).await;
            StatusCode::ACCEPTED.into_response()
        }
        "Unsubscribe" => StatusCode::ACCEPTED.into_response(),
        _ => (StatusCode::BAD_REQUEST, "aeg-event-type must be SubscriptionValidation, Notification or Unsubscribe")
            .into_response(),
    }
}

/// Puts each event on the internal queue of the function named `Host.Functions.<Name>`, as blob work.
async fn notify(ctx: &Ctx, function_name: &str, events: &[Value]) {
    let function = ctx
        .app
        .functions
        .iter()
        .find(|f| function_id(f) == function_name && f.trigger().is_some_and(|t| t.kind == "blobTrigger"));
    let Some(function) = function else {
        tracing::warn!(target: "host", "Event Grid: FunctionNotFound: no blob-triggered function `{function_name}`; events dropped");
        return;
    };
    let Some(trigger) = function.trigger() else { return };
    let Ok(account) = ctx.account(&trigger.connection) else { return };
    let host = ctx.host_account(account).clone();
    let internal = internal_queue(ctx);
    let _ = host.create_queue(&internal).await;
    for event in events {
        let text = |p: &str| event.pointer(p).and_then(Value::as_str).unwrap_or_default().to_string();
        let Some((container, name)) = account.split_blob_url(&text("/data/url")) else {
            tracing::warn!(target: "host", "Event Grid: {}: an event whose data.url is not a blob of this account: dropped", function.name);
            continue;
        };
        let blob_type = text("/data/blobType");
        let work = json!({"Type": "BlobTrigger", "FunctionId": function_id(function), "BlobType": if blob_type.is_empty() { "BlockBlob".into() } else { blob_type },
            "ContainerName": container, "BlobName": name, "ETag": text("/data/eTag"), "Source": "EventGrid"});
        if let Err(e) = host
            .put_message(&internal, work.to_string().as_bytes(), ctx.app.host.message_encoding, Duration::ZERO)
            .await
        {
            tracing::warn!(target: "host", "Event Grid: {}: queuing the event failed: {e}", function.name);
        }
    }
    ctx.wakeup("__internal", &internal).notify_waiters();
}
