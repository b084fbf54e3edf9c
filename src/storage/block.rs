//! Block blobs written block by block: a blob's byte range copied into another blob, by the service itself where it
//! can (Put Block From URL) and through the handler where it cannot, then committed in order (Put Block List). This
//! is how a large input file is cut into parts and how the parts' results are joined into one file, in constant
//! memory and without holding whole blobs.
//!
//! Server-side copy needs the source to be readable by the service: a service SAS signed with the account key, the
//! account's own SAS, or the app's Entra ID token in `x-ms-copy-source-authorization`. A service that does not
//! support Put Block From URL (Azurite answers 501) is found from its answer, once per [`Copier`].

use std::sync::atomic::{AtomicBool, Ordering};

use base64::Engine;
use bytes::Bytes;
use http::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use http::{Method, StatusCode};
use secrecy::ExposeSecret;

use super::connection::Credential;
use super::{shared_key, StorageClient, StorageError, API_VERSION};
use crate::identity::STORAGE_RESOURCE;

/// Bytes a copied block holds: small enough to pass through the handler's body limit when the service cannot copy
/// it itself, and few enough blocks for a 1 GB part (a blob holds at most 50,000).
pub const COPY_BLOCK: u64 = 4 << 20;
/// How long a service SAS for a copy's source is valid.
const SAS_LIFETIME_SECS: u64 = 3600;

/// A block id: the same length for every block of a blob, as the service requires.
pub fn block_id(n: u64) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("{n:012}"))
}

impl StorageClient {
    /// Stages `bytes` as block `id` of `container/name`.
    pub async fn put_block(&self, container: &str, name: &str, id: &str, bytes: Bytes) -> Result<(), StorageError> {
        let mut url = self.blob_url(&format!("{container}/{name}"));
        url.query_pairs_mut().append_pair("comp", "block").append_pair("blockid", id);
        self.send(Method::PUT, url, HeaderMap::new(), bytes).await?;
        Ok(())
    }

    /// Stages the bytes `[start, end)` of the blob `source` (`container/name` of this account) as block `id` of
    /// `container/name`, copied by the service. A service without Put Block From URL answers 501.
    pub async fn put_block_from_url(
        &self,
        container: &str,
        name: &str,
        id: &str,
        source: &str,
        (start, end): (u64, u64),
    ) -> Result<(), StorageError> {
        let mut url = self.blob_url(&format!("{container}/{name}"));
        url.query_pairs_mut().append_pair("comp", "block").append_pair("blockid", id);
        let mut headers = HeaderMap::new();
        let (source_url, authorization) = self.readable_source(source).await?;
        headers.insert("x-ms-copy-source", header(&source_url)?);
        if let Some(authorization) = authorization {
            headers.insert("x-ms-copy-source-authorization", authorization);
        }
        headers.insert("x-ms-source-range", header(&format!("bytes={start}-{}", end - 1))?);
        self.send(Method::PUT, url, headers, Bytes::new()).await?;
        Ok(())
    }

    /// Commits the blocks `ids`, in order, as the content of `container/name`; returns its ETag.
    pub async fn put_block_list(
        &self,
        container: &str,
        name: &str,
        ids: &[String],
        content_type: &str,
    ) -> Result<String, StorageError> {
        let mut url = self.blob_url(&format!("{container}/{name}"));
        url.query_pairs_mut().append_pair("comp", "blocklist");
        let mut xml = String::from("<?xml version=\"1.0\" encoding=\"utf-8\"?><BlockList>");
        for id in ids {
            xml.push_str("<Latest>");
            xml.push_str(id);
            xml.push_str("</Latest>");
        }
        xml.push_str("</BlockList>");
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/xml"));
        headers.insert("x-ms-blob-content-type", header(content_type)?);
        let response = self.send(Method::PUT, url, headers, Bytes::from(xml)).await?;
        response
            .headers
            .get(http::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .ok_or_else(|| StorageError::Parse("the block list was committed without an ETag".into()))
    }

    /// The bytes `[start, end)` of `container/name` (at most the client's body limit).
    pub async fn get_range(&self, container: &str, name: &str, start: u64, end: u64) -> Result<Bytes, StorageError> {
        let url = self.blob_url(&format!("{container}/{name}"));
        let mut headers = HeaderMap::new();
        headers.insert("x-ms-range", header(&format!("bytes={start}-{}", end - 1))?);
        Ok(self.send(Method::GET, url, headers, Bytes::new()).await?.body)
    }

    /// The URL the service may read `source` (`container/name`) at, and the authorization header it needs.
    async fn readable_source(&self, source: &str) -> Result<(String, Option<HeaderValue>), StorageError> {
        let url = self.blob_url(source);
        match &self.account.credential {
            Credential::SharedKey { account, key } => {
                let sas = service_sas(account, key, source, crate::clock::unix_now() + SAS_LIFETIME_SECS);
                Ok((format!("{url}?{sas}"), None))
            }
            Credential::Sas(sas) => Ok((format!("{url}?{}", sas.expose_secret()), None)),
            Credential::ManagedIdentity(_) => {
                let mut headers = HeaderMap::new();
                let identity = self.identity.as_ref().ok_or_else(|| StorageError::Parse("no identity".into()))?;
                identity
                    .authorize(STORAGE_RESOURCE, &mut headers, super::REQUEST_TIMEOUT)
                    .await
                    .map_err(StorageError::Identity)?;
                Ok((url.to_string(), headers.remove(http::header::AUTHORIZATION)))
            }
        }
    }
}

/// A read-only service SAS for one blob (`container/name`), valid until `expiry` (Unix seconds): the string to sign
/// of service SAS version 2020-12-06 and later.
pub fn service_sas(account: &str, key: &[u8], blob: &str, expiry: u64) -> String {
    let expiry = crate::clock::rfc3339(expiry);
    let resource = format!("/blob/{account}/{blob}");
    // sp, st, se, canonicalized resource, si, sip, spr, sv, sr, snapshot time, encryption scope, rscc…rsct.
    let to_sign = ["r", "", &expiry, &resource, "", "", "", API_VERSION, "b", "", "", "", "", "", "", ""].join("\n");
    let signature = shared_key::sign(key, &to_sign);
    url::form_urlencoded::Serializer::new(String::new())
        .append_pair("sv", API_VERSION)
        .append_pair("sr", "b")
        .append_pair("sp", "r")
        .append_pair("se", &expiry)
        .append_pair("sig", &signature)
        .finish()
}

fn header(value: &str) -> Result<HeaderValue, StorageError> {
    HeaderValue::from_str(value).map_err(|_| StorageError::Parse("a value that cannot be sent as a header".into()))
}

/// Copies byte ranges of blobs into blocks: by the service while it can, through the handler once it has said it
/// cannot (501, or 400/403 from a service that cannot read the source).
#[derive(Debug, Default)]
pub struct Copier {
    streamed: AtomicBool,
}

impl Copier {
    /// Whether copies now pass through the handler.
    pub fn streams(&self) -> bool {
        self.streamed.load(Ordering::Relaxed)
    }

    /// Stages the bytes `[start, end)` of `source` as blocks of `container/name`, numbered from `first_block`, at
    /// most [`COPY_BLOCK`] each; returns their ids in order.
    pub async fn copy_range(
        &self,
        client: &StorageClient,
        (container, name): (&str, &str),
        source: (&str, &str),
        (start, end): (u64, u64),
        first_block: u64,
    ) -> Result<Vec<String>, StorageError> {
        let ranges: Vec<(u64, u64)> =
            (start..end).step_by(COPY_BLOCK as usize).map(|at| (at, (at + COPY_BLOCK).min(end))).collect();
        let ids: Vec<String> = (0..ranges.len() as u64).map(|i| block_id(first_block + i)).collect();
        let mut next = 0;
        while next < ranges.len() && !self.streams() {
            if !self.copy_by_service(client, (container, name), source, ranges[next], &ids[next]).await? {
                break;
            }
            next += 1;
        }
        self.stream(client, (container, name), source, &ranges[next..], &ids[next..]).await?;
        Ok(ids)
    }

    /// Asks the service to copy one block; `false` (and streaming from now on) if it says it cannot.
    async fn copy_by_service(
        &self,
        client: &StorageClient,
        (container, name): (&str, &str),
        (source_container, source_name): (&str, &str),
        range: (u64, u64),
        id: &str,
    ) -> Result<bool, StorageError> {
        let source = format!("{source_container}/{source_name}");
        match client.put_block_from_url(container, name, id, &source, range).await {
            Ok(()) => Ok(true),
            Err(StorageError::Status { status, code }) if cannot_copy(status) => {
                tracing::info!(status = status.as_u16(), code = %code,
                    "the storage service does not copy blocks from a URL here; copying through the handler");
                self.streamed.store(true, Ordering::Relaxed);
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Copies blocks through the handler, reading the next block while the last one is written: two blocks in
    /// memory at most.
    async fn stream(
        &self,
        client: &StorageClient,
        (container, name): (&str, &str),
        (source_container, source_name): (&str, &str),
        ranges: &[(u64, u64)],
        ids: &[String],
    ) -> Result<(), StorageError> {
        let read = |(from, to): (u64, u64)| client.get_range(source_container, source_name, from, to);
        let mut pending: Option<(&String, Bytes)> = None;
        for (range, id) in ranges.iter().zip(ids) {
            let bytes = match pending.take() {
                Some((last, bytes)) => {
                    let (got, put) = tokio::join!(read(*range), client.put_block(container, name, last, bytes));
                    put?;
                    got?
                }
                None => read(*range).await?,
            };
            pending = Some((id, bytes));
        }
        if let Some((last, bytes)) = pending {
            client.put_block(container, name, last, bytes).await?;
        }
        Ok(())
    }
}

/// Answers that say the service will not copy from a URL here, as opposed to a passing failure.
fn cannot_copy(status: StatusCode) -> bool {
    matches!(status, StatusCode::NOT_IMPLEMENTED | StatusCode::BAD_REQUEST | StatusCode::FORBIDDEN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_ids_have_one_length() {
        assert_eq!(block_id(0).len(), block_id(999_999).len());
        assert_ne!(block_id(1), block_id(2));
    }

    #[test]
    fn a_service_sas_names_its_version_resource_permission_and_expiry() {
        let sas = service_sas("acct", b"key", "batch-input/a b.jsonl", 1_764_496_800);
        let pairs: Vec<(String, String)> = url::form_urlencoded::parse(sas.as_bytes()).into_owned().collect();
        let keys: Vec<&str> = pairs.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["sv", "sr", "sp", "se", "sig"]);
        assert_eq!(pairs[3].1, "2025-11-30T10:00:00Z");
        let expected = shared_key::sign(
            b"key",
            &format!(
                "r\n\n2025-11-30T10:00:00Z\n/blob/acct/batch-input/a b.jsonl\n\n\n\n{API_VERSION}\nb\n\n\n\n\n\n\n"
            ),
        );
        assert_eq!(pairs[4].1, expected);
    }
}
