//! Shared Key request signing for the Blob and Queue services (azure-storage-rest.md §4).
//!
//! The signature is computed from the request exactly as it will go on the wire, so callers build the whole
//! request first and sign it last.

use base64::Engine;
use hmac::{Hmac, Mac};
use http::header::{HeaderMap, HeaderName};
use percent_encoding::percent_decode_str;
use sha2::Sha256;
use url::Url;

/// The fixed headers of the string-to-sign, in order (version 2009-09-19 and later).
const SIGNED_STANDARD_HEADERS: [&str; 11] = [
    "content-encoding",
    "content-language",
    "content-length",
    "content-md5",
    "content-type",
    "date",
    "if-modified-since",
    "if-match",
    "if-none-match",
    "if-unmodified-since",
    "range",
];

/// Builds the string-to-sign for `method url` with `headers` and a body of `content_length` bytes.
pub fn string_to_sign(method: &str, url: &Url, headers: &HeaderMap, content_length: usize, account: &str) -> String {
    let mut s = String::with_capacity(256);
    s.push_str(method);
    s.push('\n');
    for name in SIGNED_STANDARD_HEADERS {
        match name {
            // Empty when absent or zero (version 2015-02-21 and later).
            "content-length" if content_length > 0 => s.push_str(&content_length.to_string()),
            "content-length" => {}
            _ => {
                if let Some(v) = headers.get(name).and_then(|v| v.to_str().ok()) {
                    s.push_str(v);
                }
            }
        }
        s.push('\n');
    }

    let mut ms: Vec<(String, &str)> = headers
        .iter()
        .filter(|(n, _)| n.as_str().starts_with("x-ms-"))
        .map(|(n, v): (&HeaderName, _)| (n.as_str().to_ascii_lowercase(), v.to_str().unwrap_or("").trim()))
        .collect();
    ms.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, value) in ms {
        s.push_str(&name);
        s.push(':');
        s.push_str(value);
        s.push('\n');
    }

    // "/" + account + the path as sent; a path-style URL therefore repeats the account, as the service expects.
    s.push('/');
    s.push_str(account);
    s.push_str(if url.path().is_empty() { "/" } else { url.path() });
    let mut params: Vec<(String, String)> = Vec::new();
    for (name, value) in
        url.query().unwrap_or("").split('&').filter(|p| !p.is_empty()).map(|p| p.split_once('=').unwrap_or((p, "")))
    {
        let name = percent_decode_str(name).decode_utf8_lossy().to_ascii_lowercase();
        let value = percent_decode_str(value).decode_utf8_lossy().into_owned();
        match params.iter_mut().find(|(n, _)| *n == name) {
            Some((_, existing)) => {
                let mut all: Vec<&str> = existing.split(',').collect();
                all.push(&value);
                all.sort_unstable();
                *existing = all.join(",");
            }
            None => params.push((name, value)),
        }
    }
    params.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, value) in params {
        s.push('\n');
        s.push_str(&name);
        s.push(':');
        s.push_str(&value);
    }
    s
}

/// Base64(HMAC-SHA256(key, string_to_sign)).
pub fn sign(key: &[u8], string_to_sign: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(string_to_sign.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    //! The three test vectors of azure-storage-rest.md §4.4, each accepted by Azurite 3.35.
    use super::*;
    use crate::storage::connection::DEVSTORE_KEY;
    use http::header::HeaderValue;

    fn key() -> Vec<u8> {
        base64::engine::general_purpose::STANDARD.decode(DEVSTORE_KEY).expect("key")
    }

    fn headers(extra: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-ms-date", HeaderValue::from_static("Sat, 28 Nov 2026 10:13:00 GMT"));
        h.insert("x-ms-version", HeaderValue::from_static("2025-11-05"));
        for (n, v) in extra {
            h.insert(*n, HeaderValue::from_str(v).expect("header"));
        }
        h
    }

    fn check(method: &str, url: &str, h: &HeaderMap, len: usize, expected_sts: &str, expected_sig: &str) {
        let url = Url::parse(url).expect("url");
        let sts = string_to_sign(method, &url, h, len, "devstoreaccount1");
        assert_eq!(sts, expected_sts);
        assert_eq!(sign(&key(), &sts), expected_sig);
    }

    #[test]
    fn vector_1_list_queues() {
        check(
            "GET",
            "http://127.0.0.1:10001/devstoreaccount1/?comp=list",
            &headers(&[]),
            0,
            "GET\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:Sat, 28 Nov 2026 10:13:00 GMT\nx-ms-version:2025-11-05\n/devstoreaccount1/devstoreaccount1/\ncomp:list",
            "BdB8JHegAmFFC3cjRLxxVQtvji5cRE6TdDBN5R3Ip9E=",
        );
    }

    #[test]
    fn vector_2_create_queue_with_zero_length() {
        check(
            "PUT",
            "http://127.0.0.1:10001/devstoreaccount1/monitorjobs",
            &headers(&[("content-length", "0")]),
            0,
            "PUT\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:Sat, 28 Nov 2026 10:13:00 GMT\nx-ms-version:2025-11-05\n/devstoreaccount1/devstoreaccount1/monitorjobs",
            "yxdPNy/3+GUt5xXn+M6rerebQRPC7tkOFXdbHc8DB9Q=",
        );
    }

    #[test]
    fn vector_3_put_message() {
        check(
            "POST",
            "http://127.0.0.1:10001/devstoreaccount1/monitorjobs/messages?visibilitytimeout=300&messagettl=604800",
            &headers(&[("content-type", "application/xml")]),
            184,
            "POST\n\n\n184\n\napplication/xml\n\n\n\n\n\n\nx-ms-date:Sat, 28 Nov 2026 10:13:00 GMT\nx-ms-version:2025-11-05\n/devstoreaccount1/devstoreaccount1/monitorjobs/messages\nmessagettl:604800\nvisibilitytimeout:300",
            "g06ocP28pkEwuW/ss34STwcb1Uwh2hxfOAreiGPLXA4=",
        );
    }

    #[test]
    fn encoded_path_and_decoded_query_values() {
        let url = Url::parse("http://h/acct/c/a%20b.json?prefix=dir%2F&comp=list&restype=container").expect("url");
        let sts = string_to_sign("GET", &url, &HeaderMap::new(), 0, "acct");
        assert!(sts.ends_with("/acct/acct/c/a%20b.json\ncomp:list\nprefix:dir/\nrestype:container"), "{sts}");
    }
}
