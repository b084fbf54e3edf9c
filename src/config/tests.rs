//! Settings validation: every refusal names its setting and hides secrets.

use std::collections::HashMap;

use super::*;

fn settings(overrides: &[(&str, &str)]) -> HashMap<String, String> {
    let mut m: HashMap<String, String> = [
        ("OPENAI_ENDPOINT", "https://res.openai.azure.com/"),
        ("OPENAI_API_KEY", "super-secret-key"),
        ("BATCH_OUTPUT_CONTAINER", "batch-output"),
        ("BlobStorageConnection", "UseDevelopmentStorage=true"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for (k, v) in overrides {
        if v.is_empty() {
            m.remove(*k);
        } else {
            m.insert(k.to_string(), v.to_string());
        }
    }
    m
}

fn load(overrides: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let m = settings(overrides);
    Config::from_lookup(|k| m.get(k).cloned(), MessageEncoding::Base64)
}

fn refused(overrides: &[(&str, &str)]) -> ConfigError {
    load(overrides).expect_err("should be refused")
}

#[test]
fn defaults() {
    let c = load(&[]).expect("valid");
    assert_eq!(c.openai_endpoint.as_str(), "https://res.openai.azure.com/");
    assert_eq!(c.api_surface, ApiSurface::Dated(DEFAULT_API_VERSION.into()));
    assert_eq!(c.retry_delay, Duration::from_secs(30));
    assert_eq!(c.output_container, "batch-output");
    assert!(!format!("{c:?}").contains("super-secret-key"), "Debug must redact the key");
}

#[test]
fn endpoint_forms_people_paste() {
    for raw in [
        "https://res.openai.azure.com/openai/v1/",
        "https://res.openai.azure.com/openai",
        "https://res.openai.azure.com",
    ] {
        let c = load(&[("OPENAI_ENDPOINT", raw)]).expect("valid");
        assert_eq!(c.openai_endpoint.as_str(), "https://res.openai.azure.com/", "{raw}");
    }
    assert!(load(&[("OPENAI_ENDPOINT", "http://127.0.0.1:8080")]).is_ok());
    assert!(load(&[("OPENAI_ENDPOINT", "http://localhost:8080/")]).is_ok());
}

#[test]
fn each_bad_setting_is_named() {
    let cases: &[(&str, &str)] = &[
        ("OPENAI_ENDPOINT", ""),
        ("OPENAI_ENDPOINT", "not a url"),
        ("OPENAI_ENDPOINT", "http://res.openai.azure.com"),
        ("OPENAI_ENDPOINT", "ftp://res"),
        ("OPENAI_API_KEY", ""),
        ("OPENAI_API_KEY", "secret-part-one\nsecret-part-two"),
        ("OPENAI_API_VERSION", "2025/04"),
        ("BATCH_OUTPUT_CONTAINER", "Batch_Output"),
        ("BATCH_OUTPUT_CONTAINER", ""),
        ("BATCH_RETRY_DELAY", "0"),
        ("BATCH_RETRY_DELAY", "abc"),
        ("BATCH_RETRY_DELAY", "604801"),
        ("BATCH_MAX_CHECK_FAILURES", "0"),
        ("BATCH_RECORDS_CONTAINER", "UPPER"),
        ("BlobStorageConnection", "AccountName=x"),
        ("BlobStorageConnection", ""),
    ];
    for (setting, value) in cases {
        let e = refused(&[(setting, value)]);
        assert_eq!(e.setting, *setting, "{setting}={value:?} gave {e}");
        assert!(e.to_string().starts_with(&format!("setting `{setting}`")), "{e}");
        assert!(!e.to_string().contains("secret-part"), "a refused key is not shown: {e}");
    }
}

#[test]
fn v1_surface_and_custom_delay() {
    let c = load(&[("OPENAI_API_VERSION", "v1"), ("BATCH_RETRY_DELAY", " 5 ")]).expect("valid");
    assert_eq!(c.api_surface, ApiSurface::V1);
    assert_eq!(c.retry_delay, Duration::from_secs(5));
}

#[test]
fn host_json_encoding() {
    let dir = std::env::temp_dir().join(format!("bbm-hostjson-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let write = |s: &str| {
        let p = dir.join("host.json");
        std::fs::write(&p, s).expect("write");
        p
    };
    let p = write(r#"{"version":"2.0","extensions":{"queues":{"messageEncoding":"none"}}}"#);
    assert_eq!(message_encoding_from_host_json(&p, true), Ok(MessageEncoding::None));
    let p = write(r#"{"version":"2.0"}"#);
    assert_eq!(message_encoding_from_host_json(&p, true), Ok(MessageEncoding::Base64));
    let p = write(r#"{"extensions":{"queues":{"messageEncoding":"utf8"}}}"#);
    assert_eq!(message_encoding_from_host_json(&p, true).map_err(|e| e.setting), Err("host.json"));
    let missing = dir.join("nope.json");
    assert_eq!(message_encoding_from_host_json(&missing, false), Ok(MessageEncoding::Base64));
    assert!(message_encoding_from_host_json(&missing, true).is_err());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_repository_host_json_states_base64() {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("host.json");
    assert_eq!(message_encoding_from_host_json(&p, true), Ok(MessageEncoding::Base64));
}

#[test]
fn without_a_key_the_platform_managed_identity_is_used() {
    let identity = [
        ("OPENAI_API_KEY", ""),
        ("IDENTITY_ENDPOINT", "http://127.0.0.1:41741/msi/token"),
        ("IDENTITY_HEADER", "platform-header-secret"),
    ];
    let c = load(&identity).expect("valid");
    let OpenAiAuth::ManagedIdentity(settings) = &c.openai_auth else { panic!("managed identity expected: {c:?}") };
    assert_eq!(settings.endpoint.as_str(), "http://127.0.0.1:41741/msi/token");
    assert_eq!(settings.client_id, None);
    assert!(!format!("{c:?}").contains("platform-header-secret"), "Debug must redact the identity header");

    let user_assigned =
        load(&[identity[0], identity[1], identity[2], ("AZURE_CLIENT_ID", " 5e29a8c3 ")]).expect("valid");
    let OpenAiAuth::ManagedIdentity(settings) = &user_assigned.openai_auth else { panic!("managed identity expected") };
    assert_eq!(settings.client_id.as_deref(), Some("5e29a8c3"));

    // A key, when set, wins: the identity endpoint is there on every App Service app with an identity.
    let keyed = load(&identity[1..]).expect("valid");
    assert!(matches!(keyed.openai_auth, OpenAiAuth::ApiKey(_)), "{keyed:?}");
}

#[test]
fn an_incomplete_managed_identity_is_named() {
    let no_key = ("OPENAI_API_KEY", "");
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[no_key, ("IDENTITY_ENDPOINT", "http://127.0.0.1:41741/msi/token")], "IDENTITY_HEADER"),
        (&[no_key, ("IDENTITY_HEADER", "secret-part-h")], "IDENTITY_ENDPOINT"),
        (&[no_key, ("IDENTITY_ENDPOINT", "not a url"), ("IDENTITY_HEADER", "secret-part-h")], "IDENTITY_ENDPOINT"),
        (&[no_key, ("IDENTITY_ENDPOINT", "ftp://x/token"), ("IDENTITY_HEADER", "secret-part-h")], "IDENTITY_ENDPOINT"),
        (&[no_key, ("IDENTITY_ENDPOINT", "http://x/token"), ("IDENTITY_HEADER", "secret-part\nh")], "IDENTITY_HEADER"),
    ];
    for (overrides, setting) in cases {
        let e = refused(overrides);
        assert_eq!(e.setting, *setting, "{overrides:?} gave {e}");
        assert!(!e.to_string().contains("secret-part"), "a secret is not shown: {e}");
    }
    // Neither a key nor an identity: the key is what is missing, and the message says how else to authenticate.
    let e = refused(&[no_key]);
    assert_eq!(e.setting, "OPENAI_API_KEY");
    assert!(e.to_string().contains("managed identity"), "{e}");
}

const PLATFORM: [(&str, &str); 2] =
    [("IDENTITY_ENDPOINT", "http://127.0.0.1:41741/msi/token"), ("IDENTITY_HEADER", "platform-header-secret")];

fn identity_storage(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
    let mut v = vec![
        ("BlobStorageConnection", ""),
        ("BlobStorageConnection__blobServiceUri", "https://acct.blob.core.windows.net/"),
        ("BlobStorageConnection__queueServiceUri", "https://acct.queue.core.windows.net"),
    ];
    v.extend(PLATFORM);
    v.extend_from_slice(extra);
    v
}

#[test]
fn an_identity_based_storage_connection_uses_the_managed_identity() {
    let c = load(&identity_storage(&[])).expect("valid");
    assert_eq!(c.storage.blob_endpoint.as_str(), "https://acct.blob.core.windows.net/");
    assert_eq!(c.storage.queue_endpoint.as_str(), "https://acct.queue.core.windows.net/");
    let crate::storage::Credential::ManagedIdentity(identity) = &c.storage.credential else {
        panic!("managed identity expected: {:?}", c.storage)
    };
    assert_eq!(identity.client_id, None, "system-assigned unless __clientId says otherwise");
    assert!(matches!(c.openai_auth, OpenAiAuth::ApiKey(_)), "the OpenAI key is independent of storage");
    assert!(!format!("{c:?}").contains("platform-header-secret"));

    let user = load(&identity_storage(&[
        ("BlobStorageConnection__credential", "ManagedIdentity"),
        ("BlobStorageConnection__clientId", "5e29a8c3"),
        ("AZURE_CLIENT_ID", "other-for-openai"),
    ]))
    .expect("valid");
    let crate::storage::Credential::ManagedIdentity(identity) = &user.storage.credential else { panic!() };
    assert_eq!(identity.client_id.as_deref(), Some("5e29a8c3"));

    // A connection string, when set, wins.
    let mut with_string = identity_storage(&[]);
    with_string[0] = ("BlobStorageConnection", "UseDevelopmentStorage=true");
    assert!(matches!(
        load(&with_string).expect("valid").storage.credential,
        crate::storage::Credential::SharedKey { .. }
    ));
}

#[test]
fn an_incomplete_identity_based_storage_connection_is_named() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[("BlobStorageConnection__blobServiceUri", "")], "BlobStorageConnection__blobServiceUri"),
        (&[("BlobStorageConnection__queueServiceUri", "")], "BlobStorageConnection__queueServiceUri"),
        (
            &[
                ("BlobStorageConnection__blobServiceUri", ""),
                ("BlobStorageConnection__queueServiceUri", ""),
                ("BlobStorageConnection__serviceUri", "https://acct.blob.core.windows.net"),
            ],
            "BlobStorageConnection__serviceUri",
        ),
        (
            &[("BlobStorageConnection__blobServiceUri", "http://acct.blob.core.windows.net")],
            "BlobStorageConnection__blobServiceUri",
        ),
        (&[("BlobStorageConnection__queueServiceUri", "not a url")], "BlobStorageConnection__queueServiceUri"),
        (&[("BlobStorageConnection__credential", "clientsecret")], "BlobStorageConnection__credential"),
        (&[("BlobStorageConnection__clientSecret", "secret-part-s")], "BlobStorageConnection__clientSecret"),
        (&[("IDENTITY_ENDPOINT", ""), ("IDENTITY_HEADER", "")], "IDENTITY_ENDPOINT"),
    ];
    for (overrides, setting) in cases {
        let e = refused(&identity_storage(overrides));
        assert_eq!(e.setting, *setting, "{overrides:?} gave {e}");
        assert!(!e.to_string().contains("secret-part") && !e.to_string().contains("platform-header"), "{e}");
    }
}
