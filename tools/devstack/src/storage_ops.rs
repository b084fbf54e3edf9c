//! The storage operations that the handler never calls but the local stack and the tests do: receiving, peeking,
//! deleting and hiding queue messages (the host emulator's queue trigger is their main user), counting a queue's
//! messages, reading a blob by its URL, replacing a blob's metadata. They are built on the handler's own signed
//! request ([`StorageClient::send`]), so they sign, authenticate and retry exactly as the handler does, while the
//! handler's library keeps only what it calls.

use std::future::Future;
use std::time::Duration;

use blob_batch_monitor::storage::blob::Blob;
use blob_batch_monitor::storage::{StorageClient, StorageError};
use bytes::Bytes;
use http::header::{HeaderMap, HeaderValue};
use http::Method;
use serde::Deserialize;

/// A message as Get or Peek returns it. `message_text` is the stored `MessageText`, not decoded.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct QueueMessage {
    pub message_id: String,
    #[serde(default)]
    pub pop_receipt: Option<String>,
    #[serde(default)]
    pub dequeue_count: u32,
    #[serde(default)]
    pub insertion_time: Option<String>,
    #[serde(default)]
    pub expiration_time: Option<String>,
    #[serde(default)]
    pub time_next_visible: Option<String>,
    #[serde(default)]
    pub message_text: String,
}

#[derive(Deserialize)]
struct QueueMessagesList {
    #[serde(rename = "QueueMessage", default)]
    messages: Vec<QueueMessage>,
}

/// Queue operations of the host and the tests.
pub trait QueueOps {
    /// Receives up to `max` (1–32) messages, hiding them for `visibility` (at least 1 s).
    fn get_messages(
        &self,
        queue: &str,
        max: u8,
        visibility: Duration,
    ) -> impl Future<Output = Result<Vec<QueueMessage>, StorageError>> + Send;

    /// Peeks up to `max` (1–32) visible messages without changing them.
    fn peek_messages(
        &self,
        queue: &str,
        max: u8,
    ) -> impl Future<Output = Result<Vec<QueueMessage>, StorageError>> + Send;

    /// Deletes a received message.
    fn delete_message(
        &self,
        queue: &str,
        id: &str,
        pop_receipt: &str,
    ) -> impl Future<Output = Result<(), StorageError>> + Send;

    /// Changes a received message's visibility; returns the new pop receipt.
    fn update_visibility(
        &self,
        queue: &str,
        id: &str,
        pop_receipt: &str,
        visibility: Duration,
    ) -> impl Future<Output = Result<String, StorageError>> + Send;

    /// How many messages the queue holds, invisible ones included (Get Queue Metadata's
    /// `x-ms-approximate-messages-count`; Peek Messages sees only the visible ones).
    fn approximate_message_count(&self, queue: &str) -> impl Future<Output = Result<u64, StorageError>> + Send;
}

impl QueueOps for StorageClient {
    async fn get_messages(
        &self,
        queue: &str,
        max: u8,
        visibility: Duration,
    ) -> Result<Vec<QueueMessage>, StorageError> {
        let mut url = self.queue_url(&format!("{queue}/messages"));
        url.query_pairs_mut()
            .append_pair("numofmessages", &max.clamp(1, 32).to_string())
            .append_pair("visibilitytimeout", &visibility.as_secs().max(1).to_string());
        list_messages(self, url).await
    }

    async fn peek_messages(&self, queue: &str, max: u8) -> Result<Vec<QueueMessage>, StorageError> {
        let mut url = self.queue_url(&format!("{queue}/messages"));
        url.query_pairs_mut()
            .append_pair("peekonly", "true")
            .append_pair("numofmessages", &max.clamp(1, 32).to_string());
        list_messages(self, url).await
    }

    async fn delete_message(&self, queue: &str, id: &str, pop_receipt: &str) -> Result<(), StorageError> {
        let mut url = self.queue_url(&format!("{queue}/messages/{id}"));
        url.query_pairs_mut().append_pair("popreceipt", pop_receipt);
        self.send(Method::DELETE, url, HeaderMap::new(), Bytes::new()).await?;
        Ok(())
    }

    async fn update_visibility(
        &self,
        queue: &str,
        id: &str,
        pop_receipt: &str,
        visibility: Duration,
    ) -> Result<String, StorageError> {
        let mut url = self.queue_url(&format!("{queue}/messages/{id}"));
        url.query_pairs_mut()
            .append_pair("popreceipt", pop_receipt)
            .append_pair("visibilitytimeout", &visibility.as_secs().to_string());
        let response = self.send(Method::PUT, url, HeaderMap::new(), Bytes::new()).await?;
        header(&response.headers, "x-ms-popreceipt")
    }

    async fn approximate_message_count(&self, queue: &str) -> Result<u64, StorageError> {
        let mut url = self.queue_url(queue);
        url.query_pairs_mut().append_pair("comp", "metadata");
        let response = self.send(Method::GET, url, HeaderMap::new(), Bytes::new()).await?;
        header(&response.headers, "x-ms-approximate-messages-count")?
            .parse()
            .map_err(|e| StorageError::Parse(format!("x-ms-approximate-messages-count: {e}")))
    }
}

async fn list_messages(client: &StorageClient, url: url::Url) -> Result<Vec<QueueMessage>, StorageError> {
    let response = client.send(Method::GET, url, HeaderMap::new(), Bytes::new()).await?;
    let xml = std::str::from_utf8(&response.body).map_err(|e| StorageError::Parse(e.to_string()))?;
    let list: QueueMessagesList = quick_xml::de::from_str(xml).map_err(|e| StorageError::Parse(e.to_string()))?;
    Ok(list.messages)
}

fn header(headers: &HeaderMap, name: &str) -> Result<String, StorageError> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .ok_or_else(|| StorageError::Parse(format!("the answer has no {name}")))
}

/// Blob operations of the tools.
pub trait BlobOps {
    /// Reads a blob given its full URL, which must lie under this account's blob endpoint.
    fn get_blob_by_url(&self, url: &str) -> impl Future<Output = Result<Option<Blob>, StorageError>> + Send;

    /// Replaces a blob's metadata (lowercase alphanumeric names).
    fn set_metadata(
        &self,
        container: &str,
        name: &str,
        metadata: &[(&str, &str)],
    ) -> impl Future<Output = Result<(), StorageError>> + Send;
}

impl BlobOps for StorageClient {
    async fn get_blob_by_url(&self, url: &str) -> Result<Option<Blob>, StorageError> {
        let (container, name) = self
            .split_blob_url(url)
            .ok_or_else(|| StorageError::Parse(format!("{url} is not a blob of this storage account")))?;
        self.get_blob(&container, &name).await
    }

    async fn set_metadata(&self, container: &str, name: &str, metadata: &[(&str, &str)]) -> Result<(), StorageError> {
        let mut url = self.blob_url(&format!("{container}/{name}"));
        url.query_pairs_mut().append_pair("comp", "metadata");
        let mut headers = HeaderMap::new();
        for (k, v) in metadata {
            let name = http::header::HeaderName::from_bytes(format!("x-ms-meta-{k}").as_bytes())
                .map_err(|e| StorageError::Parse(e.to_string()))?;
            headers.insert(name, HeaderValue::from_str(v).map_err(|e| StorageError::Parse(e.to_string()))?);
        }
        self.send(Method::PUT, url, headers, Bytes::new()).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_azurite_lists() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?><QueueMessagesList><QueueMessage><MessageId>d2ce</MessageId><InsertionTime>Sat, 28 Nov 2026 10:27:12 GMT</InsertionTime><ExpirationTime>Sat, 05 Dec 2026 10:27:12 GMT</ExpirationTime><PopReceipt>MjhO</PopReceipt><TimeNextVisible>Sat, 28 Nov 2026 10:27:42 GMT</TimeNextVisible><DequeueCount>1</DequeueCount><MessageText>aGVsbG8=</MessageText></QueueMessage></QueueMessagesList>"#;
        let list: QueueMessagesList = quick_xml::de::from_str(xml).expect("parses");
        assert_eq!(list.messages.len(), 1);
        assert_eq!(list.messages[0].dequeue_count, 1);
        assert_eq!(list.messages[0].message_text, "aGVsbG8=");
        let empty: QueueMessagesList = quick_xml::de::from_str("<QueueMessagesList/>").expect("parses");
        assert!(empty.messages.is_empty());
    }
}
