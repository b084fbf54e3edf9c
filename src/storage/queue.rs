//! Queue operations: create, put (with a visibility delay), get, peek, delete, update.
//!
//! Put Message is what makes QueueMonitor's delayed re-checks possible (functions-protocol.md §8, option A); the rest
//! serve the host emulator and the tests. Message text is encoded per `messageEncoding`, as the Functions queue
//! trigger expects.

use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use http::{Method, StatusCode};
use serde::Deserialize;

use super::{StorageClient, StorageError};

/// How message text is stored, as `extensions.queues.messageEncoding` in host.json says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum MessageEncoding {
    /// Base64 of the UTF-8 text: the Functions default.
    #[default]
    Base64,
    /// The text as is (XML-escaped on the wire).
    None,
}

impl MessageEncoding {
    /// Parses a host.json value (`base64` or `none`, any case).
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "base64" => Some(MessageEncoding::Base64),
            "none" => Some(MessageEncoding::None),
            _ => None,
        }
    }

    /// Encodes text for `<MessageText>`.
    pub fn encode(self, text: &[u8]) -> String {
        match self {
            MessageEncoding::Base64 => base64::engine::general_purpose::STANDARD.encode(text),
            MessageEncoding::None => xml_escape(&String::from_utf8_lossy(text)),
        }
    }

    /// Decodes `<MessageText>` (already XML-unescaped) back to bytes; `None` if it is not valid for this encoding.
    pub fn decode(self, stored: &str) -> Option<Vec<u8>> {
        match self {
            MessageEncoding::Base64 => base64::engine::general_purpose::STANDARD.decode(stored.trim()).ok(),
            MessageEncoding::None => Some(stored.as_bytes().to_vec()),
        }
    }
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// A message as Get or Peek returns it. `text` is the stored `MessageText`, not decoded.
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

/// Largest `MessageText` the service accepts, in bytes (azure-storage-rest.md §1.1).
pub const MAX_MESSAGE_TEXT: usize = 65_536;

impl StorageClient {
    fn queue_url(&self, path: &str) -> url::Url {
        Self::url(&self.account.queue_endpoint, path)
    }

    /// Creates a queue; an existing queue is fine.
    pub async fn create_queue(&self, queue: &str) -> Result<(), StorageError> {
        self.send(Method::PUT, self.queue_url(queue), HeaderMap::new(), Bytes::new()).await?;
        Ok(())
    }

    /// Puts `text` on `queue`, invisible for `visibility`, never expiring. The text is encoded with `encoding`.
    /// A missing queue is created and the put retried once.
    pub async fn put_message(
        &self,
        queue: &str,
        text: &[u8],
        encoding: MessageEncoding,
        visibility: Duration,
    ) -> Result<(), StorageError> {
        let encoded = encoding.encode(text);
        if encoded.len() > MAX_MESSAGE_TEXT {
            return Err(StorageError::Parse(format!(
                "message of {} encoded bytes exceeds the {MAX_MESSAGE_TEXT}-byte limit",
                encoded.len()
            )));
        }
        let body = Bytes::from(format!("<QueueMessage><MessageText>{encoded}</MessageText></QueueMessage>"));
        let mut url = self.queue_url(&format!("{queue}/messages"));
        // messagettl=-1: a job can run for days and the app may be stopped for longer than the 7-day default;
        // an expired follow-up message would silently end monitoring.
        url.query_pairs_mut()
            .append_pair("visibilitytimeout", &visibility.as_secs().to_string())
            .append_pair("messagettl", "-1");
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/xml"));
        match self.send(Method::POST, url.clone(), headers.clone(), body.clone()).await {
            Err(StorageError::Status { status: StatusCode::NOT_FOUND, code }) if code == "QueueNotFound" => {
                self.create_queue(queue).await?;
                self.send(Method::POST, url, headers, body).await?;
                Ok(())
            }
            other => other.map(|_| ()),
        }
    }

    /// Receives up to `max` (1–32) messages, hiding them for `visibility` (at least 1 s).
    pub async fn get_messages(
        &self,
        queue: &str,
        max: u8,
        visibility: Duration,
    ) -> Result<Vec<QueueMessage>, StorageError> {
        let mut url = self.queue_url(&format!("{queue}/messages"));
        url.query_pairs_mut()
            .append_pair("numofmessages", &max.clamp(1, 32).to_string())
            .append_pair("visibilitytimeout", &visibility.as_secs().max(1).to_string());
        self.list_messages(url).await
    }

    /// Peeks up to `max` (1–32) visible messages without changing them.
    pub async fn peek_messages(&self, queue: &str, max: u8) -> Result<Vec<QueueMessage>, StorageError> {
        let mut url = self.queue_url(&format!("{queue}/messages"));
        url.query_pairs_mut()
            .append_pair("peekonly", "true")
            .append_pair("numofmessages", &max.clamp(1, 32).to_string());
        self.list_messages(url).await
    }

    async fn list_messages(&self, url: url::Url) -> Result<Vec<QueueMessage>, StorageError> {
        let response = self.send(Method::GET, url, HeaderMap::new(), Bytes::new()).await?;
        let xml = response.body;
        let xml = std::str::from_utf8(&xml).map_err(|e| StorageError::Parse(e.to_string()))?;
        let list: QueueMessagesList = quick_xml::de::from_str(xml).map_err(|e| StorageError::Parse(e.to_string()))?;
        Ok(list.messages)
    }

    /// How many messages the queue holds, invisible ones included (Get Queue Metadata's
    /// `x-ms-approximate-messages-count`; Peek Messages sees only the visible ones).
    pub async fn approximate_message_count(&self, queue: &str) -> Result<u64, StorageError> {
        let mut url = self.queue_url(queue);
        url.query_pairs_mut().append_pair("comp", "metadata");
        let response = self.send(Method::GET, url, HeaderMap::new(), Bytes::new()).await?;
        response
            .headers
            .get("x-ms-approximate-messages-count")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| StorageError::Parse("queue metadata without x-ms-approximate-messages-count".into()))
    }

    /// Deletes a received message.
    pub async fn delete_message(&self, queue: &str, id: &str, pop_receipt: &str) -> Result<(), StorageError> {
        let mut url = self.queue_url(&format!("{queue}/messages/{id}"));
        url.query_pairs_mut().append_pair("popreceipt", pop_receipt);
        self.send(Method::DELETE, url, HeaderMap::new(), Bytes::new()).await?;
        Ok(())
    }

    /// Changes a received message's visibility; returns the new pop receipt.
    pub async fn update_visibility(
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
        response
            .headers
            .get("x-ms-popreceipt")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .ok_or_else(|| StorageError::Parse("update answered without x-ms-popreceipt".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings_round_trip() {
        let text = br#"{"batchId":"b","blob":"a<b&c"}"#;
        for enc in [MessageEncoding::Base64, MessageEncoding::None] {
            let stored = enc.encode(text);
            let unescaped = quick_xml::escape::unescape(&stored).expect("xml").into_owned();
            assert_eq!(enc.decode(&unescaped).as_deref(), Some(&text[..]), "{enc:?}");
        }
        assert_eq!(MessageEncoding::Base64.encode(b"hello"), "aGVsbG8=");
        assert_eq!(MessageEncoding::Base64.decode("not base64!"), None);
        assert_eq!(MessageEncoding::parse("Base64"), Some(MessageEncoding::Base64));
        assert_eq!(MessageEncoding::parse("utf8"), None);
    }

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
