//! Storage connection strings: parsing `BlobStorageConnection` into endpoints and a credential.
//!
//! Supports the three forms a user of this app meets: account key (with `EndpointSuffix` or explicit
//! `BlobEndpoint`/`QueueEndpoint`), `UseDevelopmentStorage=true` (Azurite), and `SharedAccessSignature`. The rules follow
//! azure-storage-rest.md §6: pairs split at the first `=`, keys compared case-insensitively, explicit endpoints win.
//! An identity-based connection (§7: service URIs and the app's managed identity, no secret) is built by
//! [`StorageAccount::identity_based`] from the `BlobStorageConnection__…` settings.

use std::fmt;
use std::sync::Arc;

use base64::Engine;
use secrecy::{ExposeSecret, SecretString};
use url::Url;

use crate::identity::IdentitySettings;

/// The well-known Azurite account and key (public, documented by Microsoft).
pub const DEVSTORE_ACCOUNT: &str = "devstoreaccount1";
/// The well-known Azurite key for [`DEVSTORE_ACCOUNT`].
pub const DEVSTORE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// How requests to the account are authorised.
#[derive(Clone)]
pub enum Credential {
    /// Shared Key: the account name and the decoded account key.
    SharedKey { account: String, key: Arc<[u8]> },
    /// A SAS token (without the leading `?`), appended to every request's query.
    Sas(SecretString),
    /// Entra ID tokens from the app's managed identity, sent as `Authorization: Bearer`.
    ManagedIdentity(IdentitySettings),
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credential::SharedKey { account, .. } => {
                write!(f, "SharedKey {{ account: {account:?}, key: [redacted] }}")
            }
            Credential::Sas(_) => f.write_str("Sas([redacted])"),
            Credential::ManagedIdentity(settings) => write!(f, "ManagedIdentity({settings:?})"),
        }
    }
}

impl Credential {
    /// The SAS query string, if this is a SAS credential.
    pub fn sas_query(&self) -> Option<&str> {
        match self {
            Credential::Sas(token) => Some(token.expose_secret()),
            Credential::SharedKey { .. } | Credential::ManagedIdentity(_) => None,
        }
    }
}

/// A storage account as named by a connection string: where its services live and how to sign requests.
#[derive(Clone, Debug)]
pub struct StorageAccount {
    /// Blob service root without a trailing `/`, e.g. `https://acct.blob.core.windows.net` or
    /// `http://127.0.0.1:10000/devstoreaccount1`.
    pub blob_endpoint: Url,
    /// Queue service root without a trailing `/`.
    pub queue_endpoint: Url,
    pub credential: Credential,
}

/// Why a connection string was refused. Never contains the key or token.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConnectionStringError {
    #[error("it is empty")]
    Empty,
    #[error("`{0}` is not a `Key=Value` pair")]
    NotAPair(String),
    #[error("`AccountKey` is not valid base64")]
    BadKey,
    #[error("`{key}` is not a valid http(s) URL")]
    BadEndpoint { key: &'static str },
    #[error("it names no `{0}` and no `AccountName` to derive it from")]
    MissingEndpoint(&'static str),
    #[error("it has neither `AccountName` + `AccountKey` nor `SharedAccessSignature`")]
    NoCredential,
    #[error("`DefaultEndpointsProtocol` must be `http` or `https`")]
    BadProtocol,
}

impl StorageAccount {
    /// Parses a connection string (see the module docs for the accepted forms).
    pub fn parse(s: &str) -> Result<Self, ConnectionStringError> {
        let mut pairs: Vec<(String, String)> = Vec::new();
        for part in s.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                // Never echo the part: it may be a key.
                .ok_or_else(|| ConnectionStringError::NotAPair(redact_part(part)))?;
            pairs.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
        if pairs.is_empty() {
            return Err(ConnectionStringError::Empty);
        }
        let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());

        if get("usedevelopmentstorage").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return Self::development(get("developmentstorageproxyuri"));
        }

        let credential = match (get("accountname"), get("accountkey"), get("sharedaccesssignature")) {
            (Some(account), Some(key), _) => {
                Credential::SharedKey { account: account.to_string(), key: decode_key(key)? }
            }
            (_, _, Some(sas)) => Credential::Sas(SecretString::from(sas.trim_start_matches('?'))),
            _ => return Err(ConnectionStringError::NoCredential),
        };
        let protocol = get("defaultendpointsprotocol").unwrap_or("https").to_ascii_lowercase();
        if protocol != "http" && protocol != "https" {
            return Err(ConnectionStringError::BadProtocol);
        }
        let suffix = get("endpointsuffix").unwrap_or("core.windows.net");
        let derive = |service: &str| get("accountname").map(|name| format!("{protocol}://{name}.{service}.{suffix}"));
        let endpoint = |key: &'static str, service: &str, label: &'static str| {
            let raw = get(key)
                .map(str::to_string)
                .or_else(|| derive(service))
                .ok_or(ConnectionStringError::MissingEndpoint(label))?;
            parse_endpoint(&raw).ok_or(ConnectionStringError::BadEndpoint { key: label })
        };
        Ok(StorageAccount {
            blob_endpoint: endpoint("blobendpoint", "blob", "BlobEndpoint")?,
            queue_endpoint: endpoint("queueendpoint", "queue", "QueueEndpoint")?,
            credential,
        })
    }

    /// The Azurite account on its default ports (or on a proxy's host with the same ports).
    fn development(proxy: Option<&str>) -> Result<Self, ConnectionStringError> {
        let base = match proxy {
            Some(p) => {
                let url = parse_endpoint(p)
                    .ok_or(ConnectionStringError::BadEndpoint { key: "DevelopmentStorageProxyUri" })?;
                format!("{}://{}", url.scheme(), url.host_str().unwrap_or("127.0.0.1"))
            }
            None => "http://127.0.0.1".to_string(),
        };
        let at = |port: u16| {
            parse_endpoint(&format!("{base}:{port}/{DEVSTORE_ACCOUNT}"))
                .ok_or(ConnectionStringError::BadEndpoint { key: "DevelopmentStorageProxyUri" })
        };
        Ok(StorageAccount {
            blob_endpoint: at(10000)?,
            queue_endpoint: at(10001)?,
            credential: Credential::SharedKey { account: DEVSTORE_ACCOUNT.to_string(), key: decode_key(DEVSTORE_KEY)? },
        })
    }

    /// An identity-based account: the blob and queue service roots (https, checked by the caller), authorised by
    /// `identity`'s tokens.
    pub fn identity_based(blob_endpoint: Url, queue_endpoint: Url, identity: IdentitySettings) -> Self {
        StorageAccount { blob_endpoint, queue_endpoint, credential: Credential::ManagedIdentity(identity) }
    }

    /// A Shared Key connection string with explicit endpoints (what the dev tools hand to the handler).
    pub fn shared_key_connection_string(account: &str, key_b64: &str, blob: &str, queue: &str) -> String {
        format!(
            "DefaultEndpointsProtocol=http;AccountName={account};AccountKey={key_b64};\
             BlobEndpoint={blob};QueueEndpoint={queue};"
        )
    }
}

fn decode_key(key: &str) -> Result<Arc<[u8]>, ConnectionStringError> {
    base64::engine::general_purpose::STANDARD.decode(key).map(Arc::from).map_err(|_| ConnectionStringError::BadKey)
}

/// Parses an http(s) endpoint and drops a trailing `/` so paths can be appended uniformly.
fn parse_endpoint(raw: &str) -> Option<Url> {
    let url = Url::parse(raw.trim_end_matches('/')).ok()?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return None;
    }
    Some(url)
}

/// Shows only the part's name, if any: its value may be a secret.
fn redact_part(part: &str) -> String {
    if part.len() > 40 {
        format!("{}… ({} characters)", &part[..part.char_indices().nth(8).map_or(0, |(i, _)| i)], part.len())
    } else {
        part.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AZURITE_FULL: &str = "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;QueueEndpoint=http://127.0.0.1:10001/devstoreaccount1;TableEndpoint=http://127.0.0.1:10002/devstoreaccount1;";

    #[test]
    fn development_storage_shortcut() {
        let a = StorageAccount::parse("UseDevelopmentStorage=true").expect("parses");
        assert_eq!(a.blob_endpoint.as_str(), "http://127.0.0.1:10000/devstoreaccount1");
        assert_eq!(a.queue_endpoint.as_str(), "http://127.0.0.1:10001/devstoreaccount1");
        assert!(matches!(a.credential, Credential::SharedKey { ref account, .. } if account == DEVSTORE_ACCOUNT));
    }

    #[test]
    fn development_storage_proxy_keeps_the_ports() {
        let a = StorageAccount::parse("UseDevelopmentStorage=true;DevelopmentStorageProxyUri=http://azurite")
            .expect("parses");
        assert_eq!(a.queue_endpoint.as_str(), "http://azurite:10001/devstoreaccount1");
    }

    #[test]
    fn explicit_endpoints_win() {
        let a = StorageAccount::parse(AZURITE_FULL).expect("parses");
        assert_eq!(a.blob_endpoint.as_str(), "http://127.0.0.1:10000/devstoreaccount1");
        assert_eq!(a.queue_endpoint.as_str(), "http://127.0.0.1:10001/devstoreaccount1");
    }

    #[test]
    fn account_key_with_suffix_derives_endpoints() {
        let a = StorageAccount::parse(
            "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=a2V5;EndpointSuffix=core.chinacloudapi.cn",
        )
        .expect("parses");
        assert_eq!(a.blob_endpoint.as_str(), "https://acct.blob.core.chinacloudapi.cn/");
        assert_eq!(a.queue_endpoint.host_str(), Some("acct.queue.core.chinacloudapi.cn"));
        let defaulted = StorageAccount::parse("accountname=acct;ACCOUNTKEY=a2V5").expect("parses");
        assert_eq!(defaulted.queue_endpoint.as_str(), "https://acct.queue.core.windows.net/");
    }

    #[test]
    fn sas_with_explicit_endpoints() {
        let a = StorageAccount::parse(
            "BlobEndpoint=https://acct.blob.core.windows.net/;QueueEndpoint=https://acct.queue.core.windows.net;SharedAccessSignature=sv=2025-11-05&ss=bq&sig=abc%3D",
        )
        .expect("parses");
        assert_eq!(a.credential.sas_query(), Some("sv=2025-11-05&ss=bq&sig=abc%3D"));
        assert!(!format!("{a:?}").contains("sig=abc"), "Debug must not show the token");
    }

    #[test]
    fn refusals_name_the_problem_without_the_secret() {
        let refused = |s: &str| StorageAccount::parse(s).expect_err("refused");
        assert_eq!(refused(" ; "), ConnectionStringError::Empty);
        assert_eq!(refused("AccountName=a;AccountKey=not base64!"), ConnectionStringError::BadKey);
        assert_eq!(refused("AccountName=a"), ConnectionStringError::NoCredential);
        assert_eq!(refused("SharedAccessSignature=sig=x"), ConnectionStringError::MissingEndpoint("BlobEndpoint"));
        let err = StorageAccount::parse("AccountName=a;AccountKey=a2V5;BlobEndpoint=ftp://x").unwrap_err();
        assert_eq!(err, ConnectionStringError::BadEndpoint { key: "BlobEndpoint" });
        let shown = StorageAccount::parse("AccountName=a;Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErC")
            .unwrap_err()
            .to_string();
        assert!(!shown.contains("UzFT50uSRZ6IFsuFq2UVErC"), "{shown}");
    }

    #[test]
    fn debug_redacts_the_key() {
        let a = StorageAccount::parse(AZURITE_FULL).expect("parses");
        let shown = format!("{a:?}");
        assert!(shown.contains("[redacted]") && !shown.contains("Eby8"), "{shown}");
    }
}
