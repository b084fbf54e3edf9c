//! Typed, validated settings, parsed once at start-up (style habit 7).
//!
//! Every app setting the handler reads is here, with its default; a missing or invalid value stops start-up with a
//! [`ConfigError`] naming the setting. Secrets are `SecretString`s and never reach `Debug` output. The queue message
//! encoding comes from host.json, as the Functions host reads it.

use std::path::Path;
use std::time::Duration;

use secrecy::SecretString;
use url::Url;

use crate::batch_api::{ApiSurface, OpenAiAuth};
use crate::http_client::ProxySettings;
use crate::jobs::plan::{Limits, TokenQuota, DEFAULT_MAX_BYTES, SERVICE_MAX_REQUESTS};
use crate::storage::{MessageEncoding, StorageAccount};

mod identity;

use identity::{identity_based_storage, identity_settings};

/// The dated API surface the original app used.
pub const DEFAULT_API_VERSION: &str = "2025-04-01-preview";
/// `BATCH_RETRY_DELAY` default, in seconds.
pub const DEFAULT_RETRY_DELAY_SECS: u64 = 30;
/// `BATCH_COMPLETED_QUEUE` default.
pub const DEFAULT_COMPLETED_QUEUE: &str = "batch-completed";
/// `BATCH_RECORDS_CONTAINER` default: where job records live.
pub const DEFAULT_RECORDS_CONTAINER: &str = "batch-records";
/// `BATCH_PARTS_CONTAINER` default: where the parts of a file over one job's limits are written.
pub const DEFAULT_PARTS_CONTAINER: &str = "batch-parts";
/// The most a part may be: blob input is documented up to 1 GB (azure-openai-batch.md §8).
const MAX_PART_BYTES: u64 = 1_000_000_000;
/// Put Message refuses visibility timeouts over 7 days.
const MAX_DELAY_SECS: u64 = 604_800;

/// The handler's settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// `OPENAI_ENDPOINT`: the Azure OpenAI resource root, without `/openai`.
    pub openai_endpoint: Url,
    /// `OPENAI_API_KEY`, or the app's managed identity when no key is set.
    pub openai_auth: OpenAiAuth,
    /// `OPENAI_API_VERSION`: a dated version, or `v1`.
    pub api_surface: ApiSurface,
    /// `BATCH_OUTPUT_CONTAINER`: where the service writes results, in the input blob's account.
    pub output_container: String,
    /// `BATCH_RETRY_DELAY`: time between status checks of a running job.
    pub retry_delay: Duration,
    /// `BATCH_BACKOFF_CAP`: the longest delay exponential back-off may reach.
    pub backoff_cap: Duration,
    /// `BATCH_MAX_CHECK_FAILURES`: consecutive failed status checks before a job is dead-lettered.
    pub max_check_failures: u32,
    /// `BlobStorageConnection`: the account of the trigger, the monitor queue and the records.
    pub storage: StorageAccount,
    /// `BATCH_RECORDS_CONTAINER`: where job records live, in the same account.
    pub records_container: String,
    /// `extensions.queues.messageEncoding` from host.json.
    pub message_encoding: MessageEncoding,
    /// `BATCH_VALIDATE_INPUT`: check a file before submitting it (default on).
    pub validate_input: bool,
    /// `BATCH_COMPLETED_QUEUE`: where completion events go (`None`: events are off).
    pub completed_queue: Option<String>,
    /// `HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`, `NO_PROXY` (either case): how the batch API and Storage are reached.
    pub proxies: ProxySettings,
    /// `BATCH_MAX_REQUESTS`, `BATCH_MAX_BYTES`, `BATCH_TOKEN_QUOTA`: what one job may hold; a larger file is split.
    pub limits: Limits,
    /// `BATCH_PARTS_CONTAINER`: where the parts of a split file are written, in the same account.
    pub parts_container: String,
}

/// A setting that stops start-up. The message names the setting and never shows a secret value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("setting `{setting}` {problem}")]
pub struct ConfigError {
    pub setting: &'static str,
    pub problem: String,
}

pub(crate) fn bad(setting: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError { setting, problem: problem.into() }
}

impl Config {
    /// Reads the settings from the process environment and host.json under `FUNCTIONS_APP_ROOT_PATH`
    /// (or the working directory).
    pub fn from_env() -> Result<Self, ConfigError> {
        let root = std::env::var_os("FUNCTIONS_APP_ROOT_PATH").map(std::path::PathBuf::from);
        let encoding = match &root {
            Some(root) => message_encoding_from_host_json(&root.join("host.json"), true)?,
            None => message_encoding_from_host_json(Path::new("host.json"), false)?,
        };
        Self::from_lookup(|k| std::env::var(k).ok(), encoding)
    }

    /// Builds a config from any key → value lookup (tests pass a map).
    pub fn from_lookup(
        get: impl Fn(&str) -> Option<String>,
        message_encoding: MessageEncoding,
    ) -> Result<Self, ConfigError> {
        let s = Lookup(&get);
        let retry_delay = s.seconds("BATCH_RETRY_DELAY", DEFAULT_RETRY_DELAY_SECS)?;
        Ok(Config {
            openai_endpoint: parse_endpoint(&s.required("OPENAI_ENDPOINT")?)?,
            openai_auth: openai_auth(&s)?,
            api_surface: api_surface(&s)?,
            output_container: s.container("BATCH_OUTPUT_CONTAINER", None)?,
            retry_delay,
            backoff_cap: s.seconds("BATCH_BACKOFF_CAP", 3600)?.max(retry_delay),
            max_check_failures: s.at_least_one("BATCH_MAX_CHECK_FAILURES", 30)?,
            storage: storage_account(&s)?,
            records_container: s.container("BATCH_RECORDS_CONTAINER", Some(DEFAULT_RECORDS_CONTAINER))?,
            message_encoding,
            validate_input: s.flag("BATCH_VALIDATE_INPUT", true)?,
            completed_queue: completed_queue(&s)?,
            proxies: ProxySettings::from_lookup(&get).map_err(|e| bad(e.setting, e.problem))?,
            limits: limits(&s)?,
            parts_container: s.container("BATCH_PARTS_CONTAINER", Some(DEFAULT_PARTS_CONTAINER))?,
        })
    }
}

/// The settings, read one by one; every error names its setting.
struct Lookup<'a, F: Fn(&str) -> Option<String>>(&'a F);

impl<F: Fn(&str) -> Option<String>> Lookup<'_, F> {
    /// The value, `None` when unset or blank.
    fn get(&self, k: &str) -> Option<String> {
        (self.0)(k).filter(|v| !v.trim().is_empty())
    }

    fn required(&self, k: &'static str) -> Result<String, ConfigError> {
        self.get(k).ok_or_else(|| bad(k, "is missing (set it in the app settings)"))
    }

    /// Whole seconds from 1 to 7 days (Put Message's longest delay).
    fn seconds(&self, k: &'static str, default: u64) -> Result<Duration, ConfigError> {
        let Some(v) = self.get(k) else { return Ok(Duration::from_secs(default)) };
        match v.trim().parse::<u64>() {
            Ok(s) if (1..=MAX_DELAY_SECS).contains(&s) => Ok(Duration::from_secs(s)),
            _ => Err(bad(k, format!("must be a whole number of seconds from 1 to {MAX_DELAY_SECS}, not `{v}`"))),
        }
    }

    /// A whole number from 1 to `max`.
    fn count(&self, k: &'static str, default: u64, max: u64) -> Result<u64, ConfigError> {
        let Some(v) = self.get(k) else { return Ok(default) };
        v.trim()
            .replace('_', "")
            .parse::<u64>()
            .ok()
            .filter(|n| (1..=max).contains(n))
            .ok_or_else(|| bad(k, format!("must be a whole number from 1 to {max}, not `{v}`")))
    }

    fn at_least_one(&self, k: &'static str, default: u32) -> Result<u32, ConfigError> {
        let Some(v) = self.get(k) else { return Ok(default) };
        v.trim()
            .parse::<u32>()
            .ok()
            .filter(|n| *n >= 1)
            .ok_or_else(|| bad(k, format!("must be a whole number of at least 1, not `{v}`")))
    }

    /// A container name; `default` when unset (`None`: the setting is required).
    fn container(&self, k: &'static str, default: Option<&str>) -> Result<String, ConfigError> {
        let name = match (self.get(k), default) {
            (Some(v), _) => v.trim().to_string(),
            (None, Some(d)) => d.to_string(),
            (None, None) => return Err(bad(k, "is missing (set it in the app settings)")),
        };
        if !is_container_name(&name) {
            let rule = "3-63 lowercase letters, digits and single hyphens";
            return Err(bad(k, format!("`{name}` is not a container name ({rule})")));
        }
        Ok(name)
    }

    fn flag(&self, k: &'static str, default: bool) -> Result<bool, ConfigError> {
        match (self.0)(k).map(|v| v.trim().to_ascii_lowercase()) {
            None => Ok(default),
            Some(v) if v.is_empty() => Ok(default),
            Some(v) if ["true", "1", "yes"].contains(&v.as_str()) => Ok(true),
            Some(v) if ["false", "0", "no"].contains(&v.as_str()) => Ok(false),
            Some(v) => Err(bad(k, format!("must be true or false, not `{v}`"))),
        }
    }
}

/// `OPENAI_API_KEY`, or the platform's managed identity when no key is set.
fn openai_auth<F: Fn(&str) -> Option<String>>(s: &Lookup<'_, F>) -> Result<OpenAiAuth, ConfigError> {
    if let Some(key) = s.get("OPENAI_API_KEY") {
        return Ok(OpenAiAuth::ApiKey(header_secret("OPENAI_API_KEY", &key)?));
    }
    match identity_settings(s.0)? {
        Some(identity) => Ok(OpenAiAuth::ManagedIdentity(identity)),
        None => Err(bad(
            "OPENAI_API_KEY",
            "is missing (set it in the app settings, or give the app a managed identity: the platform then \
             sets IDENTITY_ENDPOINT and IDENTITY_HEADER, and the identity needs an OpenAI role on the resource)",
        )),
    }
}

/// `OPENAI_API_VERSION`: a dated version made of letters, digits and hyphens, or `v1`.
fn api_surface<F: Fn(&str) -> Option<String>>(s: &Lookup<'_, F>) -> Result<ApiSurface, ConfigError> {
    let surface = ApiSurface::parse(&(s.0)("OPENAI_API_VERSION").unwrap_or_else(|| DEFAULT_API_VERSION.into()));
    if let ApiSurface::Dated(v) = &surface {
        if v.is_empty() || !v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            let problem = format!("`{v}` is not an api-version such as {DEFAULT_API_VERSION} or v1");
            return Err(bad("OPENAI_API_VERSION", problem));
        }
    }
    Ok(surface)
}

/// `BlobStorageConnection`, or its identity-based form (`__blobServiceUri`, `__queueServiceUri`).
fn storage_account<F: Fn(&str) -> Option<String>>(s: &Lookup<'_, F>) -> Result<StorageAccount, ConfigError> {
    if let Some(conn) = s.get("BlobStorageConnection") {
        return StorageAccount::parse(&conn)
            .map_err(|e| bad("BlobStorageConnection", format!("is not a usable connection string: {e}")));
    }
    identity_based_storage(s.0)?.ok_or_else(|| {
        bad(
            "BlobStorageConnection",
            "is missing (set a connection string, or BlobStorageConnection__blobServiceUri and \
             __queueServiceUri for an identity-based connection)",
        )
    })
}

/// What one job may hold: `BATCH_MAX_REQUESTS` (at most the service's 100,000), `BATCH_MAX_BYTES` (at most 1 GB, what
/// blob input is documented to take), `BATCH_TOKEN_QUOTA`.
fn limits<F: Fn(&str) -> Option<String>>(s: &Lookup<'_, F>) -> Result<Limits, ConfigError> {
    let quota = match s.get("BATCH_TOKEN_QUOTA") {
        None => TokenQuota::default(),
        Some(v) => TokenQuota::parse(&v).map_err(|e| bad("BATCH_TOKEN_QUOTA", e))?,
    };
    Ok(Limits {
        max_requests: s.count("BATCH_MAX_REQUESTS", SERVICE_MAX_REQUESTS, SERVICE_MAX_REQUESTS)?,
        max_bytes: s.count("BATCH_MAX_BYTES", DEFAULT_MAX_BYTES, MAX_PART_BYTES)?,
        quota,
    })
}

/// `BATCH_COMPLETED_QUEUE`: a queue name, the default when unset, `None` (events off) when set empty.
fn completed_queue<F: Fn(&str) -> Option<String>>(s: &Lookup<'_, F>) -> Result<Option<String>, ConfigError> {
    match (s.0)("BATCH_COMPLETED_QUEUE") {
        None => Ok(Some(DEFAULT_COMPLETED_QUEUE.to_string())),
        Some(v) if v.trim().is_empty() => Ok(None),
        Some(v) if is_container_name(v.trim()) => Ok(Some(v.trim().to_string())),
        Some(v) => Err(bad(
            "BATCH_COMPLETED_QUEUE",
            format!(
                "`{v}` is not a queue name (3-63 lowercase letters, digits and single hyphens; empty turns events off)"
            ),
        )),
    }
}

/// A secret that travels in a header; refused now rather than failing every call. The value is never shown.
pub(crate) fn header_secret(setting: &'static str, value: &str) -> Result<SecretString, ConfigError> {
    let value = value.trim();
    if !value.bytes().all(|b| b == b'\t' || (b' '..=b'~').contains(&b)) {
        return Err(bad(setting, "contains characters an HTTP header cannot carry (a pasted line break?)"));
    }
    Ok(SecretString::from(value.to_string()))
}

/// The resource root: http(s), and plain http only to a loopback address, since the key travels in a header.
fn parse_endpoint(raw: &str) -> Result<Url, ConfigError> {
    let k = "OPENAI_ENDPOINT";
    let mut url = Url::parse(raw.trim()).map_err(|e| bad(k, format!("is not a URL ({e})")))?;
    let host = url.host_str().ok_or_else(|| bad(k, "has no host"))?.to_string();
    match url.scheme() {
        "https" => {}
        "http" if is_loopback(&host) => {}
        "http" => return Err(bad(k, "must use https (plain http is allowed only for a local emulator on loopback)")),
        other => return Err(bad(k, format!("must be an https URL, not {other}"))),
    }
    if url.query().is_some() || !url.username().is_empty() || url.password().is_some() {
        return Err(bad(k, "must be the resource root, without a query or credentials"));
    }
    // Accept the forms people paste: `https://res.openai.azure.com/`, `.../openai`, `.../openai/v1/`.
    let path = url.path().trim_end_matches('/').to_string();
    let root = path.strip_suffix("/openai/v1").or_else(|| path.strip_suffix("/openai")).unwrap_or(&path).to_string();
    url.set_path(&root);
    Ok(url)
}

/// Whether a host is a loopback address or `localhost`.
pub fn is_loopback(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost") || h.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Blob container naming rules.
pub fn is_container_name(s: &str) -> bool {
    (3..=63).contains(&s.len())
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--")
}

/// Reads `extensions.queues.messageEncoding` from host.json. A missing file is an error only when `required`
/// (the host set `FUNCTIONS_APP_ROOT_PATH`); a missing setting means the host's default, base64.
pub fn message_encoding_from_host_json(path: &Path, required: bool) -> Result<MessageEncoding, ConfigError> {
    let k = "host.json";
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => return Ok(MessageEncoding::default()),
        Err(e) => return Err(bad(k, format!("cannot be read at {}: {e}", path.display()))),
    };
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(k, format!("at {} is not valid JSON: {e}", path.display())))?;
    match json.pointer("/extensions/queues/messageEncoding") {
        None | Some(serde_json::Value::Null) => Ok(MessageEncoding::default()),
        Some(serde_json::Value::String(s)) => MessageEncoding::parse(s)
            .ok_or_else(|| bad(k, format!("extensions.queues.messageEncoding must be `base64` or `none`, not `{s}`"))),
        Some(other) => Err(bad(k, format!("extensions.queues.messageEncoding must be a string, not {other}"))),
    }
}

#[cfg(test)]
mod tests;
