//! The instant upstream: one nginx worker answering every batch API and storage call the handler makes with a fixed
//! body, so the benchmarks measure the handler, not the fake. It speaks just enough of each protocol for the
//! handler's production code paths: a terminal and a running batch, a created batch, Put Message, a blob HEAD, and
//! the job record's create, read, lease and write.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;

use super::procs::{command, free_port, spawn, Proc};

/// Batch ids the fake knows.
pub const DONE: &str = "batch_0b1f5a2c-7d3e-4f60-9a1b-2c3d4e5f6a7b";
pub const RUNNING: &str = "batch_1c2e6b3d-8e4f-4a71-8b2c-3d4e5f6a7b8c";
/// A path where nginx reads a request's body and discards it: the baseline of the large-blob figure.
pub const DISCARD: &str = "/discard";

fn batch(id: &str, status: &str) -> String {
    format!(
        r#"{{"id":"{id}","object":"batch","endpoint":"/chat/completions","errors":null,"input_file_id":null,"completion_window":"24h","status":"{status}","output_file_id":null,"error_file_id":null,"created_at":1735689600,"in_progress_at":1735689660,"expires_at":1735776000,"finalizing_at":1735693200,"completed_at":1735693260,"failed_at":null,"expired_at":null,"cancelling_at":null,"cancelled_at":null,"request_counts":{{"total":100,"completed":98,"failed":2}},"metadata":null,"input_blob":"https://acct.blob.core.windows.net/batch-input/job1.jsonl","output_blob":"https://acct.blob.core.windows.net/batch-output/0b1f5a2c/results.jsonl","error_blob":"https://acct.blob.core.windows.net/batch-output/0b1f5a2c/errors.jsonl"}}"#
    )
}

/// A running nginx.
pub struct Nginx {
    proc: Proc,
    pub port: u16,
}

impl Nginx {
    /// Its one process (no master: `master_process off`), which does all the work.
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Starts nginx (one worker, pinned to `cpu`) with its files under `dir`.
    pub fn start(dir: &Path, cpu: Option<usize>) -> anyhow::Result<Nginx> {
        let port = free_port()?;
        let d = dir.display();
        std::fs::create_dir_all(dir.join("tmp"))?;
        let record = r#"{"blob":"batch-input/big.jsonl","blobUrl":"http://127.0.0.1/devstoreaccount1/batch-input/big.jsonl","etag":"0x8D1","state":"submitting","submitAttempts":0}"#;
        let conf = format!(
            r#"worker_processes 1;
daemon off;
master_process off;
pid {d}/nginx.pid;
error_log {d}/error.log error;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  client_body_temp_path {d}/tmp/body; proxy_temp_path {d}/tmp/proxy; fastcgi_temp_path {d}/tmp/fastcgi;
  uwsgi_temp_path {d}/tmp/uwsgi; scgi_temp_path {d}/tmp/scgi;
  keepalive_requests 100000000;
  keepalive_timeout 300s;
  default_type application/json;
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location = /openai/batches/{DONE} {{ return 200 '{done}'; }}
    location = /openai/batches/{RUNNING} {{ return 200 '{running}'; }}
    location = /openai/batches {{ return 201 '{created}'; }}
    location ~ ^/devstoreaccount1/[a-z0-9-]+/messages$ {{
      default_type application/xml;
      return 201 '<?xml version="1.0" encoding="utf-8"?><QueueMessagesList><QueueMessage><MessageId>7b2a</MessageId><InsertionTime>Sat, 28 Nov 2026 10:27:06 GMT</InsertionTime><ExpirationTime>Fri, 31 Dec 9999 23:59:59 GMT</ExpirationTime><PopReceipt>MjhO</PopReceipt><TimeNextVisible>Sat, 28 Nov 2026 10:27:36 GMT</TimeNextVisible></QueueMessage></QueueMessagesList>';
    }}
    location /devstoreaccount1/batch-input/ {{
      add_header ETag '"0x8D1"' always;
      add_header Last-Modified 'Sat, 28 Nov 2026 10:00:00 GMT' always;
      return 200 '';
    }}
    location /devstoreaccount1/batch-records/ {{
      if ($arg_comp = "lease") {{
        add_header x-ms-lease-id 'b1d8a2e4-0000-4000-8000-000000000001' always;
        return 201 '';
      }}
      if ($request_method = GET) {{
        add_header ETag '"0x2"' always;
        return 200 '{record}';
      }}
      add_header ETag '"0x3"' always;
      return 201 '';
    }}
    location = {DISCARD} {{ client_max_body_size 0; return 200 '{{}}'; }}
    location / {{ return 404 '{{"error":{{"code":"404","message":"Resource not found"}}}}'; }}
  }}
}}
"#,
            done = batch(DONE, "completed"),
            running = batch(RUNNING, "in_progress"),
            created = batch(DONE, "validating"),
        );
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf)?;
        let nginx = which("nginx").context("nginx is not installed (apt-get install nginx-light)")?;
        let conf_arg = conf_path.display().to_string();
        let prefix = format!("{d}/");
        let cmd = command(cpu, &nginx, &["-p", &prefix, "-c", &conf_arg]);
        let proc = spawn(cmd, &[])?;
        super::procs::wait_ready(port, Duration::from_secs(10)).context("nginx did not start")?;
        Ok(Nginx { proc, port })
    }
}

/// Finds a program on PATH or in the sbin folders (nginx lives in /usr/sbin).
pub fn which(program: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"])
        .map(|d| Path::new(d).join(program))
        .find(|p| p.is_file());
    found
}
