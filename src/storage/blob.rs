//! Blob operations: containers, put/get/head with ETag and lease conditions, listing, metadata and leases.
//!
//! The handler keeps its submission records with these (create-only puts, `If-Match` updates); the host emulator
//! scans containers and keeps trigger receipts; the batch emulator reads inputs and writes results.

use bytes::Bytes;
use http::header::{HeaderMap, HeaderValue, CONTENT_TYPE, ETAG, IF_MATCH, IF_NONE_MATCH, LAST_MODIFIED};
use http::{Method, StatusCode};
use serde::Deserialize;

use url::Url;

use super::{StorageClient, StorageError};

/// A precondition on a blob write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Condition {
    /// Write whatever is there.
    None,
    /// Create only: fails with 409 `BlobAlreadyExists` if the blob exists.
    IfNotExists,
    /// Replace only this version: fails with 412 if the ETag changed.
    IfMatch(String),
    /// Write a leased blob: only the lease holder may (412 `LeaseIdMismatchWithBlobOperation` otherwise).
    Lease(String),
}

/// A blob's content and version.
#[derive(Clone, Debug)]
pub struct Blob {
    pub content: Bytes,
    /// The ETag as the service sends it in headers (quoted).
    pub etag: String,
    /// Someone holds a lease on it (`x-ms-lease-status: locked`): only they may write it.
    pub leased: bool,
}

/// One entry of a container listing.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct BlobItem {
    pub name: String,
    pub properties: BlobItemProperties,
    #[serde(default)]
    pub metadata: Option<std::collections::HashMap<String, String>>,
}

/// The listed properties this code uses.
#[derive(Clone, Debug, Deserialize)]
pub struct BlobItemProperties {
    /// Unquoted in list XML.
    #[serde(rename = "Etag")]
    pub etag: String,
    #[serde(rename = "Last-Modified")]
    pub last_modified: String,
    #[serde(rename = "Content-Length", default)]
    pub content_length: u64,
}

/// One page of a listing and the marker for the next (`None` when it was the last).
#[derive(Clone, Debug)]
pub struct BlobPage {
    pub items: Vec<BlobItem>,
    pub next_marker: Option<String>,
}

#[derive(Deserialize)]
struct EnumerationResults {
    #[serde(rename = "Blobs", default)]
    blobs: BlobsXml,
    #[serde(rename = "NextMarker", default)]
    next_marker: Option<String>,
}

#[derive(Deserialize, Default)]
struct BlobsXml {
    #[serde(rename = "Blob", default)]
    items: Vec<BlobItem>,
}

/// Strips the quotes the service puts around ETags in headers, so header and listing ETags compare equal.
pub fn unquote_etag(etag: &str) -> &str {
    etag.trim().trim_matches('"')
}

impl StorageClient {
    /// The URL of `container[/blob]` in this account.
    pub fn blob_url(&self, path: &str) -> url::Url {
        Self::url(&self.account.blob_endpoint, path)
    }

    /// Creates a container; an existing one is fine.
    pub async fn create_container(&self, container: &str) -> Result<(), StorageError> {
        let mut url = self.blob_url(container);
        url.query_pairs_mut().append_pair("restype", "container");
        match self.send(Method::PUT, url, HeaderMap::new(), Bytes::new()).await {
            Err(StorageError::Status { status: StatusCode::CONFLICT, .. }) => Ok(()),
            other => other.map(|_| ()),
        }
    }

    /// Writes a block blob under `condition`; returns the new ETag (quoted, as sent).
    pub async fn put_blob(
        &self,
        container: &str,
        name: &str,
        content: Bytes,
        content_type: &str,
        condition: Condition,
        metadata: &[(&str, &str)],
    ) -> Result<String, StorageError> {
        let mut headers = HeaderMap::new();
        headers.insert("x-ms-blob-type", HeaderValue::from_static("BlockBlob"));
        headers.insert(CONTENT_TYPE, header_value(content_type)?);
        match &condition {
            Condition::None => {}
            Condition::IfNotExists => {
                headers.insert(IF_NONE_MATCH, HeaderValue::from_static("*"));
            }
            Condition::IfMatch(etag) => {
                headers.insert(IF_MATCH, header_value(etag)?);
            }
            Condition::Lease(id) => {
                headers.insert("x-ms-lease-id", header_value(id)?);
            }
        }
        for (k, v) in metadata {
            headers.insert(meta_name(k)?, header_value(v)?);
        }
        let response = self.send(Method::PUT, self.blob_url(&format!("{container}/{name}")), headers, content).await?;
        etag_of(&response.headers)
    }

    /// Reads a blob; `None` if it does not exist.
    pub async fn get_blob(&self, container: &str, name: &str) -> Result<Option<Blob>, StorageError> {
        let url = self.blob_url(&format!("{container}/{name}"));
        match self.send(Method::GET, url, HeaderMap::new(), Bytes::new()).await {
            Ok(response) => {
                let etag = etag_of(&response.headers)?;
                let leased = response.headers.get("x-ms-lease-status").is_some_and(|v| v.as_bytes() == b"locked");
                Ok(Some(Blob { content: response.body, etag, leased }))
            }
            Err(StorageError::Status { status: StatusCode::NOT_FOUND, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Reads at most the first `max` bytes of a blob (`x-ms-range`); `None` if it does not exist.
    pub async fn get_blob_head(&self, container: &str, name: &str, max: usize) -> Result<Option<Bytes>, StorageError> {
        let url = self.blob_url(&format!("{container}/{name}"));
        let mut headers = HeaderMap::new();
        headers.insert("x-ms-range", header_value(&format!("bytes=0-{}", max.max(1) - 1))?);
        match self.send(Method::GET, url, headers, Bytes::new()).await {
            // 206 for a part, 200 from a service that sends the whole (small) blob.
            Ok(mut response) => {
                response.body.truncate(max);
                Ok(Some(response.body))
            }
            Err(StorageError::Status { status: StatusCode::NOT_FOUND, .. }) => Ok(None),
            // An empty blob has no byte 0.
            Err(StorageError::Status { status: StatusCode::RANGE_NOT_SATISFIABLE, .. }) => Ok(Some(Bytes::new())),
            Err(e) => Err(e),
        }
    }

    /// A blob's size in bytes; `None` if it does not exist.
    pub async fn blob_size(&self, container: &str, name: &str) -> Result<Option<u64>, StorageError> {
        let url = self.blob_url(&format!("{container}/{name}"));
        match self.send(Method::HEAD, url, HeaderMap::new(), Bytes::new()).await {
            Ok(r) => r
                .headers
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .map(Some)
                .ok_or_else(|| StorageError::Parse("the blob's properties carry no Content-Length".into())),
            Err(StorageError::Status { status: StatusCode::NOT_FOUND, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Splits a blob URL of this account into (container, blob name), percent-decoded.
    pub fn split_blob_url(&self, url: &str) -> Option<(String, String)> {
        let root = self.account.blob_endpoint.as_str().trim_end_matches('/');
        let rest = url.strip_prefix(root)?.strip_prefix('/')?;
        let rest = rest.split(['?', '#']).next()?;
        let decoded = percent_encoding::percent_decode_str(rest).decode_utf8().ok()?;
        let (container, name) = decoded.split_once('/')?;
        (!container.is_empty() && !name.is_empty()).then(|| (container.to_string(), name.to_string()))
    }

    /// The ETag and `Last-Modified` of a blob; `None` if it does not exist.
    pub async fn head_blob(&self, container: &str, name: &str) -> Result<Option<(String, String)>, StorageError> {
        let url = self.blob_url(&format!("{container}/{name}"));
        match self.send(Method::HEAD, url, HeaderMap::new(), Bytes::new()).await {
            Ok(r) => {
                let modified = r.headers.get(LAST_MODIFIED).and_then(|v| v.to_str().ok()).unwrap_or("");
                Ok(Some((etag_of(&r.headers)?, modified.to_string())))
            }
            Err(StorageError::Status { status: StatusCode::NOT_FOUND, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Lists one page of blobs under `prefix`, with metadata. An empty `<NextMarker/>` ends the listing.
    pub async fn list_blobs(
        &self,
        container: &str,
        prefix: Option<&str>,
        marker: Option<&str>,
    ) -> Result<BlobPage, StorageError> {
        let mut url = self.blob_url(container);
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("restype", "container").append_pair("comp", "list").append_pair("include", "metadata");
            if let Some(p) = prefix {
                q.append_pair("prefix", p);
            }
            if let Some(m) = marker {
                q.append_pair("marker", m);
            }
        }
        let response = self.send(Method::GET, url, HeaderMap::new(), Bytes::new()).await?;
        let xml = response.body;
        let xml = std::str::from_utf8(&xml).map_err(|e| StorageError::Parse(e.to_string()))?;
        let parsed: EnumerationResults =
            quick_xml::de::from_str(xml).map_err(|e| StorageError::Parse(e.to_string()))?;
        Ok(BlobPage { items: parsed.blobs.items, next_marker: parsed.next_marker.filter(|m| !m.is_empty()) })
    }

    /// Lists every blob under `prefix`, following markers.
    pub async fn list_all_blobs(&self, container: &str, prefix: Option<&str>) -> Result<Vec<BlobItem>, StorageError> {
        let mut all = Vec::new();
        let mut marker: Option<String> = None;
        loop {
            let page = self.list_blobs(container, prefix, marker.as_deref()).await?;
            all.extend(page.items);
            match page.next_marker {
                Some(m) => marker = Some(m),
                None => return Ok(all),
            }
        }
    }

    /// Acquires a lease of `seconds` (15–60) and returns its id.
    pub async fn acquire_lease(&self, container: &str, name: &str, seconds: u32) -> Result<String, StorageError> {
        let mut url = self.blob_url(&format!("{container}/{name}"));
        url.query_pairs_mut().append_pair("comp", "lease");
        let mut headers = HeaderMap::new();
        headers.insert("x-ms-lease-action", HeaderValue::from_static("acquire"));
        headers.insert("x-ms-lease-duration", HeaderValue::from(seconds.clamp(15, 60)));
        let r = self.send(Method::PUT, url, headers, Bytes::new()).await?;
        r.headers
            .get("x-ms-lease-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .ok_or_else(|| StorageError::Parse("lease answered without x-ms-lease-id".into()))
    }

    /// Releases a lease.
    pub async fn release_lease(&self, container: &str, name: &str, lease_id: &str) -> Result<(), StorageError> {
        self.lease_action(container, name, lease_id, "release").await
    }

    /// Renews a lease for its whole duration again; fails (409) if it lapsed and someone else took it.
    pub async fn renew_lease(&self, container: &str, name: &str, lease_id: &str) -> Result<(), StorageError> {
        self.lease_action(container, name, lease_id, "renew").await
    }

    async fn lease_action(
        &self,
        container: &str,
        name: &str,
        lease_id: &str,
        action: &'static str,
    ) -> Result<(), StorageError> {
        let mut url = self.blob_url(&format!("{container}/{name}"));
        url.query_pairs_mut().append_pair("comp", "lease");
        let mut headers = HeaderMap::new();
        headers.insert("x-ms-lease-action", HeaderValue::from_static(action));
        headers.insert("x-ms-lease-id", header_value(lease_id)?);
        self.send(Method::PUT, url, headers, Bytes::new()).await?;
        Ok(())
    }
}

/// The blob's ETag: every Put, Get and Head answer of Blob storage carries one, and every later condition needs it.
fn etag_of(headers: &HeaderMap) -> Result<String, StorageError> {
    headers
        .get(ETAG)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .ok_or_else(|| StorageError::Parse("the answer carries no ETag".into()))
}

fn header_value(v: &str) -> Result<HeaderValue, StorageError> {
    HeaderValue::from_str(v).map_err(|_| StorageError::Parse(format!("`{v}` cannot be sent as a header value")))
}

fn meta_name(k: &str) -> Result<http::header::HeaderName, StorageError> {
    // Lowercase alphanumeric names only: other characters sort differently in Azurite and Azure (§4.3).
    if k.is_empty() || !k.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()) {
        return Err(StorageError::Parse(format!("metadata name `{k}` must be lowercase alphanumeric")));
    }
    http::header::HeaderName::from_bytes(format!("x-ms-meta-{k}").as_bytes())
        .map_err(|e| StorageError::Parse(e.to_string()))
}

/// The root URL of the storage account holding `blob_url`, without a trailing `/`.
///
/// The connection string's blob endpoint is the reliable answer when the URL lies under it. Otherwise: path-style
/// URLs (an IP address or `localhost`, as Azurite uses) carry the account as the first path segment; host-style URLs
/// (`acct.blob.core.windows.net`) have it in the host.
pub fn account_root(blob_url: &Url, blob_endpoint: &Url) -> Url {
    let endpoint = blob_endpoint.as_str().trim_end_matches('/');
    if blob_url.as_str().starts_with(&format!("{endpoint}/")) {
        if let Ok(u) = Url::parse(endpoint) {
            return u;
        }
    }
    let mut root = blob_url.clone();
    root.set_query(None);
    root.set_fragment(None);
    let host = blob_url.host_str().unwrap_or("");
    let path_style =
        host.eq_ignore_ascii_case("localhost") || blob_url.host().is_some_and(|h| !matches!(h, url::Host::Domain(_)));
    let first = blob_url.path_segments().and_then(|mut s| s.next()).unwrap_or("");
    root.set_path(if path_style { first } else { "" });
    root
}

/// The account a blob or endpoint URL names, when it can be told: the first label of a `<account>.blob.<suffix>` host,
/// or the first path segment of a path-style URL (an IP address or `localhost`, as Azurite uses). `None` for a custom
/// domain.
pub fn account_name(url: &Url) -> Option<String> {
    match url.host()? {
        url::Host::Domain(host) if !host.eq_ignore_ascii_case("localhost") => {
            let (account, rest) = host.split_once('.')?;
            rest.to_ascii_lowercase().starts_with("blob.").then(|| account.to_ascii_lowercase())
        }
        _ => url.path_segments()?.next().filter(|s| !s.is_empty()).map(str::to_string),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root(blob: &str, endpoint: &str) -> String {
        let u = account_root(&Url::parse(blob).expect("blob"), &Url::parse(endpoint).expect("endpoint"));
        u.as_str().trim_end_matches('/').to_string()
    }

    #[test]
    fn account_names_from_urls() {
        let name = |u: &str| account_name(&Url::parse(u).expect("url"));
        assert_eq!(name("https://Acct.blob.core.windows.net/batch-input/x"), Some("acct".into()));
        assert_eq!(name("https://acct.blob.core.chinacloudapi.cn/"), Some("acct".into()));
        assert_eq!(name("http://127.0.0.1:10000/devstoreaccount1/batch-input/x"), Some("devstoreaccount1".into()));
        assert_eq!(name("http://localhost:10000/devstoreaccount1"), Some("devstoreaccount1".into()));
        assert_eq!(name("https://files.contoso.com/batch-input/x"), None, "a custom domain names no account");
    }

    #[test]
    fn output_folder_roots() {
        // Host-style, under the configured endpoint or not.
        assert_eq!(
            root("https://acct.blob.core.windows.net/batch-input/job1.jsonl", "https://acct.blob.core.windows.net"),
            "https://acct.blob.core.windows.net"
        );
        assert_eq!(
            root("https://other.blob.core.windows.net/batch-input/a/b.jsonl", "https://acct.blob.core.windows.net"),
            "https://other.blob.core.windows.net"
        );
        // Path-style Azurite: the account is the first segment.
        assert_eq!(
            root(
                "http://127.0.0.1:10000/devstoreaccount1/batch-input/job1.jsonl",
                "http://127.0.0.1:10000/devstoreaccount1"
            ),
            "http://127.0.0.1:10000/devstoreaccount1"
        );
        assert_eq!(
            root("http://127.0.0.1:45729/t01/batch-input/dir/x.jsonl", "http://127.0.0.1:10000/devstoreaccount1"),
            "http://127.0.0.1:45729/t01"
        );
        assert_eq!(
            root("http://localhost:10000/devstoreaccount1/batch-input/x", "https://acct.blob.core.windows.net"),
            "http://localhost:10000/devstoreaccount1"
        );
        // A custom host under a path-style endpoint (e.g. Azurite behind a name) is recognised by the endpoint.
        assert_eq!(
            root("http://azurite:10000/devstoreaccount1/batch-input/x", "http://azurite:10000/devstoreaccount1/"),
            "http://azurite:10000/devstoreaccount1"
        );
    }

    #[test]
    fn parses_listing_with_metadata_and_empty_marker() {
        let xml = r#"<?xml version="1.0" encoding="utf-8"?><EnumerationResults ServiceEndpoint="http://127.0.0.1:10000/devstoreaccount1" ContainerName="c"><Prefix/><MaxResults>5000</MaxResults><Blobs><Blob><Name>dir/a&amp;b.json</Name><Properties><Creation-Time>Sat, 28 Nov 2026 10:27:12 GMT</Creation-Time><Last-Modified>Sat, 28 Nov 2026 10:27:12 GMT</Last-Modified><Etag>0x8D1DC6E70A277EF</Etag><Content-Length>141</Content-Length><BlobType>BlockBlob</BlobType></Properties><Metadata><incomplete>true</incomplete></Metadata></Blob><Blob><Name>b</Name><Properties><Last-Modified>Sat, 28 Nov 2026 10:27:13 GMT</Last-Modified><Etag>0x1</Etag></Properties><Metadata/></Blob></Blobs><NextMarker/></EnumerationResults>"#;
        let parsed: EnumerationResults = quick_xml::de::from_str(xml).expect("parses");
        assert_eq!(parsed.blobs.items.len(), 2);
        assert_eq!(parsed.blobs.items[0].name, "dir/a&b.json");
        assert_eq!(parsed.blobs.items[0].properties.etag, "0x8D1DC6E70A277EF");
        assert_eq!(parsed.blobs.items[0].properties.content_length, 141);
        let meta = parsed.blobs.items[0].metadata.as_ref().expect("metadata");
        assert_eq!(meta.get("incomplete").map(String::as_str), Some("true"));
        assert_eq!(parsed.next_marker.filter(|m| !m.is_empty()), None);
    }

    #[test]
    fn etags_compare_without_quotes() {
        assert_eq!(unquote_etag("\"0x2144AC56BF9DAE0\""), "0x2144AC56BF9DAE0");
        assert_eq!(unquote_etag("0x2144AC56BF9DAE0"), "0x2144AC56BF9DAE0");
    }
}
