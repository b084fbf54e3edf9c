//! The final report of a job that reached a terminal status: one line with its status, request counts, result and
//! error blobs, errors, and the first failed requests of the job: read from the head of its `error_blob`
//! (azure-openai-batch.md §6), because a job can end `completed` with some, or all, of its requests failed (§12,
//! pitfall 11), and the counts alone do not say why.
//!
//! Best effort: the job has ended whatever this finds, so a file that cannot be read is reported as such and never
//! fails the invocation. Only the first [`HEAD_BYTES`] are read, however large the file, and only blobs of the app's
//! own account (the service writes them under `BATCH_OUTPUT_CONTAINER` there).

use serde_json::Value;
use tracing::warn;

use crate::batch_api::{Batch, BatchStatus};
use crate::storage::StorageClient;

use super::message::MonitorMessage;
use super::record::FailedRequest;

/// How much of the error file is read.
pub const HEAD_BYTES: usize = 16 << 10;
/// How many failed requests are quoted.
pub const EXAMPLES: usize = 3;
/// Longest message quoted per request.
const MESSAGE_CHARS: usize = 200;

/// What the head of a job's error file says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ErrorFileSummary {
    /// The first [`EXAMPLES`] failed requests.
    pub requests: Vec<FailedRequest>,
    /// Why the file could not be read, if it could not.
    pub unreadable: Option<String>,
}

impl ErrorFileSummary {
    /// `first failed requests: <custom_id>: <code>: <message>; …`, or a note that the error file could not be read.
    pub fn line(&self) -> Option<String> {
        if let Some(why) = &self.unreadable {
            return Some(format!("the error file could not be read: {why}"));
        }
        let examples: Vec<String> = self.requests.iter().map(ToString::to_string).collect();
        (!examples.is_empty()).then(|| format!("first failed requests: {}", examples.join("; ")))
    }
}

/// The first failed requests of `batch`; empty when no request failed, the job names no error file of this account,
/// or the file holds no readable line.
pub async fn first_failures(storage: &StorageClient, batch: &Batch) -> ErrorFileSummary {
    if batch.request_counts.as_ref().and_then(|c| c.failed).unwrap_or(0) == 0 {
        return ErrorFileSummary::default();
    }
    let Some((container, name)) = batch.error_blob().and_then(|url| storage.split_blob_url(url)) else {
        return ErrorFileSummary::default();
    };
    match storage.get_blob_head(&container, &name, HEAD_BYTES).await {
        // Azure names an error file even when it wrote none (§6).
        Ok(None) => ErrorFileSummary::default(),
        Ok(Some(head)) => {
            ErrorFileSummary { requests: failed_requests(&head, head.len() < HEAD_BYTES), unreadable: None }
        }
        Err(e) => {
            warn!(batch_id = %batch.id, error = %e, "the job's error file could not be read");
            ErrorFileSummary { requests: Vec::new(), unreadable: Some(e.to_string()) }
        }
    }
}

/// The first failed requests in the first lines of an error file; `whole` says whether `head` is the entire file
/// (else its last, possibly cut, line is skipped).
pub fn failed_requests(head: &[u8], whole: bool) -> Vec<FailedRequest> {
    let text = String::from_utf8_lossy(head);
    let complete = if whole { &text[..] } else { text.rsplit_once('\n').map_or("", |(lines, _)| lines) };
    complete
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .map(|v| describe(&v))
        .take(EXAMPLES)
        .collect()
}

/// One error line. The failure is either `error` (the request was not run) or the response's `body.error` with its
/// `status_code`.
fn describe(line: &Value) -> FailedRequest {
    let text = |v: Option<&Value>| match v {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    let error = line.get("error").filter(|e| e.is_object());
    let response = line.get("response").filter(|r| r.is_object());
    let body_error = response.and_then(|r| r.pointer("/body/error"));
    let failure = error.or(body_error);
    let code = text(failure.and_then(|e| e.get("code")))
        .or_else(|| text(response.and_then(|r| r.get("status_code"))))
        .unwrap_or_else(|| "?".into());
    let message = text(failure.and_then(|e| e.get("message"))).unwrap_or_default();
    FailedRequest {
        custom_id: text(line.get("custom_id")).unwrap_or_else(|| "?".into()),
        code,
        message: message.chars().take(MESSAGE_CHARS).collect(),
    }
}

/// The final report line of `batch`, checked by `message`, with `failures` from [`first_failures`]; and whether the
/// job ended clean (completed with no failed request), which decides the line's log level.
pub fn final_report(message: &MonitorMessage, batch: &Batch, failures: Option<&str>) -> (String, bool) {
    let counts = batch.request_counts.clone().unwrap_or_default();
    let mut line = format!(
        "batch {} for {} ended {}: requests {counts}; output_blob={}; error_blob={}",
        batch.id,
        message.blob_or_dash(),
        batch.status,
        batch.output_blob().unwrap_or("none"),
        batch.error_blob().unwrap_or("none"),
    );
    for (i, e) in batch.errors.iter().enumerate() {
        line.push_str(if i == 0 { "; errors: " } else { "; " });
        line.push_str(&e.to_string());
    }
    if let Some(failures) = failures {
        line.push_str("; ");
        line.push_str(failures);
    }
    if let Some(model) = &batch.model {
        line.push_str(&format!("; model: {model}"));
    }
    if let Some(usage) = &batch.usage {
        let count = |k: &str| usage.get(k).and_then(Value::as_u64).map_or("?".to_string(), |n| n.to_string());
        line.push_str(&format!(
            "; tokens: input={} output={} total={}",
            count("input_tokens"),
            count("output_tokens"),
            count("total_tokens")
        ));
    }
    line.push_str(&format!("; checks: {}", message.attempt + 1));
    let clean = batch.status == BatchStatus::Completed && counts.failed.unwrap_or(0) == 0;
    (line, clean)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The summary line of the first lines of an error file (see [`failed_requests`]).
    fn summarize(head: &[u8], whole: bool) -> Option<String> {
        ErrorFileSummary { requests: failed_requests(head, whole), unreadable: None }.line()
    }

    #[test]
    fn both_error_line_shapes_are_described() {
        let head = concat!(
            r#"{"id":"batch_req_1","custom_id":"task-1","response":null,"error":{"code":"invalid_request","message":"`messages` is required"}}"#,
            "\n",
            r#"{"custom_id":"task-4","response":{"status_code":400,"request_id":"r","body":{"error":{"code":"content_filter","message":"filtered"}}},"error":null}"#,
            "\n",
            r#"{"custom_id":"task-7","response":{"status_code":500,"body":{}},"error":null}"#,
            "\n",
            r#"{"custom_id":"task-9","error":{"code":"x","message":"not quoted: only three are"}}"#,
            "\n",
        );
        assert_eq!(
            summarize(head.as_bytes(), true).as_deref(),
            Some(
                "first failed requests: task-1: invalid_request: `messages` is required; task-4: content_filter: filtered; \
                 task-7: 500"
            )
        );
    }

    #[test]
    fn a_cut_last_line_is_skipped_and_junk_is_ignored() {
        let head =
            b"not json\n{\"custom_id\":\"a\",\"error\":{\"code\":\"c\",\"message\":\"m\"}}\n{\"custom_id\":\"b\",\"err";
        assert_eq!(summarize(head, false).as_deref(), Some("first failed requests: a: c: m"));
        // The same bytes as a whole file: the cut line is junk, and ignored too.
        assert_eq!(summarize(head, true).as_deref(), Some("first failed requests: a: c: m"));
        assert_eq!(summarize(b"", true), None);
        assert_eq!(summarize(b"{\"custom_id\":\"only a part", false), None);
    }

    #[test]
    fn long_messages_are_cut() {
        let line = format!(r#"{{"custom_id":"a","error":{{"code":"c","message":"{}"}}}}"#, "é".repeat(500));
        let summary = summarize(line.as_bytes(), true).expect("one");
        assert_eq!(summary.chars().filter(|c| *c == 'é').count(), MESSAGE_CHARS);
    }
}
