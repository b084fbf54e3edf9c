//! Queue operations the handler needs: create a queue, put a message (with a visibility delay).
//!
//! Put Message is what makes QueueMonitor's delayed re-checks possible (functions-protocol.md §8, option A). Message
//! text is encoded per `messageEncoding`, as the Functions queue trigger expects. Receiving, peeking and deleting are
//! the host's work, not the handler's: the local stack has them (devstack's `storage_ops`).

use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use http::{Method, StatusCode};

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

/// Largest `MessageText` the service accepts, in bytes (azure-storage-rest.md §1.1).
pub const MAX_MESSAGE_TEXT: usize = 65_536;

impl StorageClient {
    /// The URL of `queue[/messages…]` in this account.
    pub fn queue_url(&self, path: &str) -> url::Url {
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
}
