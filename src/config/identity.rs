//! The settings of the app's managed identity: the platform's token endpoint (`IDENTITY_ENDPOINT`, `IDENTITY_HEADER`,
//! `AZURE_CLIENT_ID`), used for Azure OpenAI when no key is set, and an identity-based `BlobStorageConnection`
//! (`__blobServiceUri`, `__queueServiceUri`, `__credential`, `__clientId`; azure-storage-rest.md §7).

use url::Url;

use super::{bad, header_secret, ConfigError};
use crate::identity::IdentitySettings;
use crate::storage::StorageAccount;

/// The platform's managed identity endpoint, when it set one: `IDENTITY_ENDPOINT` and `IDENTITY_HEADER` come together
/// (App Service and Functions set both), `AZURE_CLIENT_ID` picks a user-assigned identity.
pub(super) fn identity_settings(
    get: &impl Fn(&str) -> Option<String>,
) -> Result<Option<IdentitySettings>, ConfigError> {
    let set = |k: &str| get(k).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
    let (endpoint, header) = match (set("IDENTITY_ENDPOINT"), set("IDENTITY_HEADER")) {
        (None, None) => return Ok(None),
        (Some(_), None) => return Err(bad("IDENTITY_HEADER", "is missing while IDENTITY_ENDPOINT is set")),
        (None, Some(_)) => return Err(bad("IDENTITY_ENDPOINT", "is missing while IDENTITY_HEADER is set")),
        (Some(e), Some(h)) => (e, h),
    };
    let k = "IDENTITY_ENDPOINT";
    let endpoint = Url::parse(&endpoint).map_err(|e| bad(k, format!("is not a URL ({e})")))?;
    if !matches!(endpoint.scheme(), "http" | "https") || endpoint.host_str().is_none() {
        return Err(bad(k, "must be an http(s) URL"));
    }
    Ok(Some(IdentitySettings {
        endpoint,
        header: header_secret("IDENTITY_HEADER", &header)?,
        client_id: set("AZURE_CLIENT_ID"),
    }))
}

/// An identity-based `BlobStorageConnection` (azure-storage-rest.md §7): the `__blobServiceUri` and `__queueServiceUri`
/// settings, the app's managed identity (`__credential` may say `managedidentity`, `__clientId` picks a user-assigned
/// one). `None` when no such setting is there.
pub(super) fn identity_based_storage(
    get: &impl Fn(&str) -> Option<String>,
) -> Result<Option<StorageAccount>, ConfigError> {
    const BLOB: &str = "BlobStorageConnection__blobServiceUri";
    const QUEUE: &str = "BlobStorageConnection__queueServiceUri";
    const SERVICE: &str = "BlobStorageConnection__serviceUri";
    const CREDENTIAL: &str = "BlobStorageConnection__credential";
    const SECRET: &str = "BlobStorageConnection__clientSecret";
    let set = |k: &str| get(k).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
    let (blob, queue) = match (set(BLOB), set(QUEUE), set(SERVICE)) {
        (None, None, None) => return Ok(None),
        (None, None, Some(_)) => {
            return Err(bad(
                SERVICE,
                "cannot serve both Blob and Queue storage: set BlobStorageConnection__blobServiceUri and \
                 BlobStorageConnection__queueServiceUri instead",
            ))
        }
        (None, _, _) => return Err(bad(BLOB, "is missing (an identity-based connection needs both service URIs)")),
        (_, None, _) => return Err(bad(QUEUE, "is missing (a blob trigger uses queues too, and so does the handler)")),
        (Some(b), Some(q), _) => (b, q),
    };
    if set(SECRET).is_some() {
        return Err(bad(SECRET, "is set, but the handler authenticates only with the app's managed identity (use a connection string for local development)"));
    }
    if let Some(c) = set(CREDENTIAL).filter(|c| !c.eq_ignore_ascii_case("managedidentity")) {
        return Err(bad(CREDENTIAL, format!("must be `managedidentity`, not `{c}`")));
    }
    let https = |k: &'static str, raw: &str| {
        Url::parse(raw.trim_end_matches('/'))
            .ok()
            .filter(|u| u.scheme() == "https" && u.host_str().is_some() && u.query().is_none())
            .ok_or_else(|| {
                bad(k, format!("must be the service's https URL, not `{raw}` (a token is never sent in the clear)"))
            })
    };
    let (blob, queue) = (https(BLOB, &blob)?, https(QUEUE, &queue)?);
    let platform = identity_settings(get)?.ok_or_else(|| {
        bad(
            "IDENTITY_ENDPOINT",
            "is missing: an identity-based BlobStorageConnection needs the function app's managed identity (the \
             platform sets IDENTITY_ENDPOINT and IDENTITY_HEADER once one is enabled)",
        )
    })?;
    let identity = IdentitySettings { client_id: set("BlobStorageConnection__clientId"), ..platform };
    Ok(Some(StorageAccount::identity_based(blob, queue, identity)))
}
