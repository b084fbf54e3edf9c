//! No secrets in the settings: Entra ID tokens from the platform's managed identity (azure-openai-batch.md §2), fetched
//! from the identity emulator and sent as `Authorization: Bearer`, to the batch emulator (no `OPENAI_API_KEY`) and to
//! a real Azurite serving https with `--oauth basic` (an identity-based `BlobStorageConnection`, no account key).

use std::time::Duration;

use blob_batch_monitor::config::Config;
use blob_batch_monitor::http_client::HttpClient;
use blob_batch_monitor::identity::{
    IdentityError, IdentitySettings, ManagedIdentity, OPENAI_RESOURCE, STORAGE_RESOURCE,
};
use blob_batch_monitor::jobs::message::MONITOR_QUEUE;
use blob_batch_monitor::jobs::record::RecordState;
use blob_batch_monitor::storage::{Credential, MessageEncoding, StorageAccount, StorageClient};
use blob_batch_monitor::{AppState, MAX_RESPONSE_BODY};
use devstack::batch_emulator::{BatchEmulator, EmulatorConfig, Timings};
use devstack::identity_emulator::{IdentityEmulator, TokenRequest};
use reqwest::StatusCode;
use secrecy::SecretString;
use url::Url;

use crate::helpers::{azurite, bounded, join_all, sample_jsonl, serve, spawn_app_with, wait_for, TestOptions, API_KEY};

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
        assert_eq!(app.count(blob_batch_monitor::jobs::message::MONITOR_QUEUE).await, 1, "the deferred submission");
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

/// A client that trusts the test certificate authority that signed the https Azurite's certificate.
fn trusting_client() -> HttpClient {
    let ca = include_bytes!("../fixtures/tls/ca.pem");
    HttpClient::with_extra_root(MAX_RESPONSE_BODY, &Default::default(), ca).expect("client")
}

#[tokio::test]
async fn an_identity_based_storage_connection_reads_and_writes_azurite_with_bearer_tokens_only() {
    bounded(async {
        let azurite = azurite::oauth();
        let (name, conn) = azurite.fresh_account();
        let (blob_uri, queue_uri) = azurite.endpoints(&name);
        let http = trusting_client();
        // The test's own view of the account uses its key; the handler gets no key at all.
        let admin_account = StorageAccount::parse(&conn).expect("connection string");
        let admin = StorageClient::new(http.clone(), admin_account.clone());
        let identity = identity_endpoint().await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let emulator = BatchEmulator::start(
            listener,
            EmulatorConfig::new(API_KEY, vec![admin_account.clone()], Timings::uniform(Duration::from_secs(600))),
        )
        .expect("emulator");
        let settings = [
            ("OPENAI_ENDPOINT", emulator.uri()),
            ("OPENAI_API_KEY", API_KEY.to_string()),
            ("BATCH_OUTPUT_CONTAINER", "batch-output".into()),
            ("BATCH_RETRY_DELAY", "2".into()),
            ("BlobStorageConnection__blobServiceUri", blob_uri),
            ("BlobStorageConnection__queueServiceUri", queue_uri),
            ("BlobStorageConnection__credential", "managedidentity".into()),
            ("IDENTITY_ENDPOINT", identity.endpoint()),
            ("IDENTITY_HEADER", HEADER.into()),
        ];
        let config = Config::from_lookup(
            |k| settings.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone()),
            MessageEncoding::Base64,
        )
        .expect("config");
        assert!(matches!(config.storage.credential, Credential::ManagedIdentity(_)));
        let handler_account = config.storage.clone();
        let app = serve(AppState::with_http(config, http.clone()), admin, admin_account, emulator).await;

        // BlobMonitor: the record written, the job created, the message output.
        let message = app.create_job("identity-storage.jsonl").await;
        let record = app.record("identity-storage.jsonl").await.expect("the handler wrote the job record");
        assert_eq!(record.batch_id.as_deref(), Some(message.batch_id.as_str()));
        // QueueMonitor on a running job: the delayed follow-up is put with a bearer token.
        let answer = app.invoke_queue(&message.to_json(), 1).await;
        assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
        let visible = wait_for("the follow-up message", Duration::from_secs(10), || async {
            let texts = app.peek(MONITOR_QUEUE).await;
            (!texts.is_empty()).then_some(texts)
        })
        .await;
        assert_eq!(visible.len(), 1, "{visible:?}");

        // One storage token served every call.
        let requests = identity.requests();
        assert_eq!(requests.len(), 1, "{requests:?}");
        assert_eq!(requests[0].resource.as_deref(), Some(STORAGE_RESOURCE));
        assert!(requests[0].header_ok);

        // Azurite does check the token: an expired one is refused.
        identity.issue_expired(true);
        let stale = StorageClient::new(http, handler_account);
        let e = stale.create_container("refused").await.expect_err("an expired token is refused");
        assert!(matches!(e.status().map(|s| s.as_u16()), Some(401 | 403)), "{e}");
    })
    .await;
}

#[tokio::test]
async fn callers_that_miss_the_cache_together_share_one_fetch_and_its_failure() {
    bounded(async {
        let identity = identity_endpoint().await;
        let source = |header: &str| {
            ManagedIdentity::new(
                &HttpClient::new(1 << 16, &Default::default()).expect("client"),
                IdentitySettings {
                    endpoint: Url::parse(&identity.endpoint()).expect("url"),
                    header: SecretString::from(header.to_string()),
                    client_id: None,
                },
            )
        };
        // 24 at once, as many checks as the host starts together.
        let good = source(HEADER);
        let tokens = join_all((0..24).map(|_| good.authorization(OPENAI_RESOURCE))).await;
        assert!(tokens.iter().all(|t| t.is_ok()), "{tokens:?}");
        assert_eq!(identity.requests().len(), 1, "one fetch for 24 callers");

        let refused = source("wrong-header");
        let errors = join_all((0..24).map(|_| refused.authorization(OPENAI_RESOURCE))).await;
        assert!(errors.iter().all(|e| matches!(e, Err(IdentityError::Refused { status: 400, .. }))), "{errors:?}");
        assert_eq!(identity.requests().len(), 2, "the waiting callers share the failed fetch's error");
        // A later call tries again.
        assert!(refused.authorization(OPENAI_RESOURCE).await.is_err());
        assert_eq!(identity.requests().len(), 3);
    })
    .await;
}
