//! Azure OpenAI without an API key: Entra ID tokens from the platform's managed identity (azure-openai-batch.md §2),
//! fetched from the identity emulator, sent to the batch emulator as `Authorization: Bearer`, with a real Azurite.

use std::time::Duration;

use blob_batch_monitor::identity::OPENAI_RESOURCE;
use blob_batch_monitor::records::RecordState;
use devstack::identity_emulator::{IdentityEmulator, TokenRequest};
use reqwest::StatusCode;

use crate::helpers::{bounded, sample_jsonl, spawn_app_with, TestOptions};

const HEADER: &str = "platform-identity-header-3d9b";

async fn identity_endpoint() -> IdentityEmulator {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    IdentityEmulator::start(listener, HEADER, Duration::from_secs(3600)).expect("identity emulator")
}

#[tokio::test]
async fn without_a_key_jobs_are_created_and_checked_with_one_cached_managed_identity_token() {
    bounded(async {
        let identity = identity_endpoint().await;
        let app = spawn_app_with(TestOptions {
            identity: Some((identity.endpoint(), HEADER.into())),
            ..TestOptions::default()
        })
        .await;
        let message = app.create_job("identity.jsonl").await;
        assert!(app.emulator.world.force_status(&message.batch_id, "completed"));
        let answer = app.invoke_queue(&message.to_json(), 1).await;
        assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
        assert!(answer.logs().contains("ended completed"), "{}", answer.logs());

        // The emulator accepted both calls on the bearer token alone (the handler has no key to send).
        let api = app.emulator.world.requests();
        assert_eq!(api.len(), 2, "a create and a retrieve: {api:?}");
        assert!(api.iter().all(|r| (200..300).contains(&r.status)), "{api:?}");
        // One token served both: the second call found it in the cache.
        assert_eq!(
            identity.requests(),
            vec![TokenRequest {
                resource: Some(OPENAI_RESOURCE.into()),
                api_version: Some("2019-08-01".into()),
                client_id: None,
                header_ok: true,
            }]
        );
    })
    .await;
}

#[tokio::test]
async fn a_refused_token_defers_the_submission_with_the_reason_and_never_shows_a_secret() {
    bounded(async {
        let identity = identity_endpoint().await;
        let wrong = "wrong-identity-header-secret";
        let app = spawn_app_with(TestOptions {
            identity: Some((identity.endpoint(), wrong.into())),
            ..TestOptions::default()
        })
        .await;
        let answer = app.invoke_blob("refused.jsonl", sample_jsonl(1).as_bytes()).await;
        // A refusal needs an operator (like a 401): the submission is deferred through the queue, not retried at once.
        assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
        let logs = answer.logs();
        assert!(logs.contains("deferred") && logs.contains("managed identity"), "{logs}");
        assert!(logs.contains("X-IDENTITY-HEADER"), "the endpoint's reason is kept: {logs}");
        let body = answer.body.to_string();
        assert!(!body.contains(wrong) && !body.contains(HEADER), "{body}");

        assert!(app.emulator.world.requests().is_empty(), "no call reaches the batch API without a token");
        assert!(app.emulator.world.jobs().is_empty());
        let record = app.record("refused.jsonl").await.expect("a record");
        assert_eq!(record.state, RecordState::Deferred);
        let reason = record.reason.unwrap_or_default();
        assert!(reason.contains("managed_identity_refused"), "{reason}");
        assert!(!reason.contains(wrong), "{reason}");
        assert_eq!(identity.requests().len(), 1);
        assert!(!identity.requests()[0].header_ok);
    })
    .await;
}
