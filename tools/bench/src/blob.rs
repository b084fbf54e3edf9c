//! The large-blob envelope and a raw HTTP/1.1 client that posts it chunked (as the host probably frames it) or with
//! a Content-Length, timing the whole request (the baseline, nginx reading and discarding the body, is in `nginx.rs`).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use devstack::host_emulator::envelope::{blob_envelope, BlobInfo};

/// A valid JSONL input of about `bytes` (at least one request) and its BlobMonitor envelope for `url`: requests of
/// about 2.2 KB, distinct `custom_id`s, so that 200 MB holds about 95,000 of them, under the 100,000 limit, and
/// validation reads all of it.
pub fn envelope(bytes: usize, url: &str) -> Vec<u8> {
    let question = "When was Microsoft founded? Answer in one sentence, then explain why it matters. ".repeat(25);
    let mut content = Vec::with_capacity(bytes + 4096);
    let mut i = 0;
    while content.len() < bytes || i == 0 {
        let line = format!(
            r#"{{"custom_id":"task-{i:08}","method":"POST","url":"/chat/completions","body":{{"model":"gpt-4o-batch","messages":[{{"role":"system","content":"You are a helpful assistant."}},{{"role":"user","content":"{question}"}}]}}}}"#
        );
        content.extend_from_slice(line.as_bytes());
        content.push(b'\n');
        i += 1;
    }
    let info = BlobInfo {
        url,
        name: "big.jsonl",
        etag: "\"0x8D1\"",
        last_modified: "2026-11-28T10:00:00+00:00",
        content_type: "application/jsonl",
    };
    blob_envelope("BlobMonitor", "inputBlob", &content, &info)
}

/// How the body is framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    Chunked,
    ContentLength,
}

/// POSTs `body` to `127.0.0.1:port/path` over a fresh connection; returns the status and the total time.
pub fn post(port: u16, path: &str, body: &[u8], framing: Framing) -> anyhow::Result<(u16, Duration)> {
    let start = Instant::now();
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_nodelay(true)?;
    let framing_header = match framing {
        Framing::Chunked => "Transfer-Encoding: chunked".to_string(),
        Framing::ContentLength => format!("Content-Length: {}", body.len()),
    };
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json; charset=utf-8\r\n\
         X-Azure-Functions-InvocationId: 9e7c4b1e-3f4a-4b7e-9d0c-2a1b3c4d5e6f\r\n{framing_header}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(head.as_bytes())?;
    match framing {
        Framing::ContentLength => s.write_all(body)?,
        Framing::Chunked => {
            for c in body.chunks(64 * 1024) {
                s.write_all(format!("{:x}\r\n", c.len()).as_bytes())?;
                s.write_all(c)?;
                s.write_all(b"\r\n")?;
            }
            s.write_all(b"0\r\n\r\n")?;
        }
    }
    let mut response = Vec::new();
    s.read_to_end(&mut response)?;
    let elapsed = start.elapsed();
    let status = std::str::from_utf8(response.get(9..12).unwrap_or_default())
        .ok()
        .and_then(|c| c.parse().ok())
        .context("no status line")?;
    if status != 200 {
        bail!("answered {status}: {}", String::from_utf8_lossy(&response));
    }
    Ok((status, elapsed))
}
