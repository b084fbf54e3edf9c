//! Outbound proxies, read from the environment as curl and reqwest read them: `HTTPS_PROXY` for https URLs,
//! `HTTP_PROXY` for http URLs, `ALL_PROXY` for either when its own is unset, and `NO_PROXY` for the hosts that go
//! direct. Each name is looked up in capitals first, then in lower case; an empty value counts as unset.
//!
//! Why not leave it to reqwest, which reads the same variables itself: reqwest skips a value it cannot parse without
//! a word, so a mistyped `HTTPS_PROXY` would send the API key straight to the internet instead of stopping start-up
//! with a message naming the variable, as every other setting does; and reqwest reads the process environment, so a
//! test could not give one client a proxy without changing it for every test running beside it. What reqwest does
//! well it still does: the settings become its `Proxy` and `NoProxy` values, and the identity client is built with
//! `no_proxy()`. The start-up log says which proxy is in force, without its credentials.

use url::Url;

/// A proxy variable that cannot be used. Never shows the value, which may carry a password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("setting `{setting}` {problem}")]
pub struct ProxyError {
    pub setting: &'static str,
    pub problem: String,
}

fn bad(setting: &'static str, problem: impl Into<String>) -> ProxyError {
    ProxyError { setting, problem: problem.into() }
}

/// The proxies the batch API and Storage calls go through. The managed-identity endpoint never uses them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProxySettings {
    /// For https URLs (`HTTPS_PROXY`, else `ALL_PROXY`).
    pub https: Option<Url>,
    /// For http URLs (`HTTP_PROXY`, else `ALL_PROXY`).
    pub http: Option<Url>,
    /// `NO_PROXY`, as written: comma-separated hosts, domains (`.example.com`), IPs, CIDR blocks or `*`.
    pub no_proxy: Option<String>,
}

impl ProxySettings {
    /// Reads the variables through `get` (the process environment in production, a map in tests).
    pub fn from_lookup(get: &impl Fn(&str) -> Option<String>) -> Result<Self, ProxyError> {
        let var = |upper: &'static str, lower: &'static str| -> Option<(&'static str, String)> {
            [upper, lower].into_iter().find_map(|k| get(k).filter(|v| !v.trim().is_empty()).map(|v| (k, v)))
        };
        let all = var("ALL_PROXY", "all_proxy").map(|(k, v)| proxy_url(k, &v)).transpose()?;
        let https = var("HTTPS_PROXY", "https_proxy").map(|(k, v)| proxy_url(k, &v)).transpose()?.or(all.clone());
        let http = var("HTTP_PROXY", "http_proxy").map(|(k, v)| proxy_url(k, &v)).transpose()?.or(all);
        let no_proxy = var("NO_PROXY", "no_proxy").map(|(_, v)| v.trim().to_string());
        Ok(ProxySettings { https, http, no_proxy })
    }

    /// True when no proxy is configured.
    pub fn is_empty(&self) -> bool {
        self.https.is_none() && self.http.is_none()
    }

    /// `https via http://proxy:3128, http direct, except: localhost`: for the start-up log, without credentials.
    pub fn describe(&self) -> String {
        let via = |p: &Option<Url>| match p {
            Some(url) => format!("via {}", without_credentials(url)),
            None => "direct".to_string(),
        };
        let mut text = format!("https {}, http {}", via(&self.https), via(&self.http));
        if let Some(no_proxy) = &self.no_proxy {
            text.push_str(", except: ");
            text.push_str(no_proxy);
        }
        text
    }
}

/// A proxy URL as curl takes it: a bare `host:port` means `http://host:port`.
fn proxy_url(setting: &'static str, raw: &str) -> Result<Url, ProxyError> {
    let raw = raw.trim();
    let text = if raw.contains("://") { raw.to_string() } else { format!("http://{raw}") };
    // The value may carry a password: the error names the variable and the reason, never the value.
    let url = Url::parse(&text).map_err(|e| bad(setting, format!("is not a proxy URL ({e})")))?;
    match url.scheme() {
        "http" | "https" | "socks5" | "socks5h" if url.host_str().is_some() => Ok(url),
        "http" | "https" | "socks5" | "socks5h" => Err(bad(setting, "has no host")),
        other => Err(bad(setting, format!("has the scheme `{other}`; use http:// or https://"))),
    }
}

fn without_credentials(url: &Url) -> String {
    let mut url = url.clone();
    let _ = url.set_username("");
    let _ = url.set_password(None);
    url.to_string()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn read(vars: &[(&str, &str)]) -> Result<ProxySettings, ProxyError> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        ProxySettings::from_lookup(&|k| map.get(k).cloned())
    }

    #[test]
    fn capitals_win_lower_case_counts_and_all_proxy_fills_in() {
        let p = read(&[("https_proxy", "http://lower:1"), ("HTTPS_PROXY", "http://upper:2"), ("all_proxy", "p:3")])
            .expect("valid");
        assert_eq!(p.https.as_ref().map(Url::as_str), Some("http://upper:2/"));
        assert_eq!(p.http.as_ref().map(Url::as_str), Some("http://p:3/"), "ALL_PROXY covers http, bare host:port");
        let p = read(&[("http_proxy", "http://lower:1"), ("no_proxy", "localhost,.internal")]).expect("valid");
        assert_eq!(p.http.as_ref().map(Url::as_str), Some("http://lower:1/"));
        assert_eq!(p.https, None);
        assert_eq!(p.no_proxy.as_deref(), Some("localhost,.internal"));
        assert!(read(&[("HTTPS_PROXY", "  ")]).expect("empty is unset").is_empty());
    }

    #[test]
    fn a_bad_proxy_names_the_variable_and_hides_the_value() {
        let e = read(&[("HTTPS_PROXY", "ftp://user:s3cret@proxy:21")]).expect_err("refused");
        assert_eq!(e.setting, "HTTPS_PROXY");
        assert!(!e.to_string().contains("s3cret"), "{e}");
        let e = read(&[("HTTP_PROXY", "http://user:s3cret@[bad")]).expect_err("refused");
        assert_eq!(e.setting, "HTTP_PROXY");
        assert!(!e.to_string().contains("s3cret"), "{e}");
    }

    #[test]
    fn the_description_never_shows_credentials() {
        let p = read(&[("HTTPS_PROXY", "http://user:s3cret@proxy:3128"), ("NO_PROXY", "localhost")]).expect("valid");
        let text = p.describe();
        assert_eq!(text, "https via http://proxy:3128/, http direct, except: localhost");
    }
}
