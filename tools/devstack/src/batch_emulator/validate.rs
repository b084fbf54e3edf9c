//! Input validation as Azure performs it (azure-openai-batch.md §7), and deterministic results per request line.
//!
//! Pure functions: the job runner reads the blob, calls [`validate`], and writes what [`respond`] returns.

use serde_json::{json, Value};

/// A job-level validation failure: `errors.data[0]` of a failed job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub code: &'static str,
    pub message: String,
    /// 1-based line number, when one line is at fault.
    pub line: Option<usize>,
}

fn invalid(code: &'static str, message: impl Into<String>, line: Option<usize>) -> Invalid {
    Invalid { code, message: message.into(), line }
}

/// One accepted request line.
#[derive(Debug, Clone)]
pub struct RequestLine {
    pub custom_id: String,
    pub url: String,
    pub body: Value,
}

/// The endpoints a batch line may target.
const URLS: [&str; 4] = ["/chat/completions", "/v1/chat/completions", "/responses", "/v1/responses"];

/// Validates a whole input file. `max_tasks` is Azure's 100,000 unless a test lowers it.
pub fn validate(content: &[u8], max_tasks: usize) -> Result<Vec<RequestLine>, Invalid> {
    if content.starts_with(&[0xEF, 0xBB, 0xBF]) {
        // Azure's actual (misleading) message for a BOM.
        return Err(invalid(
            "invalid_request",
            "A valid model deployment name couldn't be extracted from the input file. Please ensure that each row in the input file has a valid deployment name specified in the 'model' field, and that the deployment name is consistent across all rows.",
            Some(1),
        ));
    }
    let text = std::str::from_utf8(content)
        .map_err(|e| invalid("invalid_json_line", format!("the file is not UTF-8: {e}"), None))?;
    let mut lines = Vec::new();
    let mut ids = std::collections::HashSet::new();
    let mut first: Option<(String, String)> = None;
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(raw)
            .map_err(|e| invalid("invalid_json_line", format!("line {n} is not valid JSON: {e}"), Some(n)))?;
        let custom_id = v
            .get("custom_id")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid("invalid_request", format!("line {n} has no string custom_id"), Some(n)))?;
        if v.get("method").and_then(Value::as_str) != Some("POST") {
            return Err(invalid("invalid_request", format!("line {n}: method must be POST"), Some(n)));
        }
        let url = v.get("url").and_then(Value::as_str).unwrap_or_default();
        let body = v
            .get("body")
            .filter(|b| b.is_object())
            .ok_or_else(|| invalid("invalid_request", format!("line {n} has no body object"), Some(n)))?;
        let model = body.get("model").and_then(Value::as_str).unwrap_or_default();
        if model.is_empty() {
            return Err(invalid(
                "invalid_request",
                format!("line {n}: body.model must name the Global Batch deployment"),
                Some(n),
            ));
        }
        match &first {
            None => {
                if !URLS.contains(&url) {
                    return Err(invalid(
                        "url_mismatch",
                        format!("line {n}: url `{url}` is not a batch endpoint"),
                        Some(n),
                    ));
                }
                first = Some((url.to_string(), model.to_string()));
            }
            Some((u, m)) => {
                if url != u {
                    return Err(invalid(
                        "url_mismatch",
                        format!("line {n}: url `{url}` differs from `{u}` on the first line"),
                        Some(n),
                    ));
                }
                if model != m {
                    return Err(invalid(
                        "model_mismatch",
                        format!("line {n}: deployment `{model}` differs from `{m}` on the first line"),
                        Some(n),
                    ));
                }
            }
        }
        if !ids.insert(custom_id.to_string()) {
            return Err(invalid(
                "duplicate_custom_id",
                format!("line {n}: custom_id `{custom_id}` is used twice"),
                Some(n),
            ));
        }
        lines.push(RequestLine { custom_id: custom_id.to_string(), url: url.to_string(), body: body.clone() });
        if lines.len() > max_tasks {
            return Err(invalid("too_many_tasks", format!("the file has more than {max_tasks} requests"), None));
        }
    }
    if lines.is_empty() {
        return Err(invalid("empty_file", "the input file has no requests", None));
    }
    Ok(lines)
}

/// The result line for a request: `Ok` for results.jsonl, `Err` for errors.jsonl. Deterministic in the input.
pub fn respond(line: &RequestLine, index: usize, created: u64) -> Result<Value, Value> {
    let request_id = format!("req_{:016x}", stable_hash(line.custom_id.as_bytes()));
    let model = line.body.get("model").cloned().unwrap_or(Value::Null);
    let chat = line.url.ends_with("/chat/completions");
    let prompt = if chat {
        line.body
            .get("messages")
            .and_then(Value::as_array)
            .and_then(|m| m.last())
            .and_then(|m| m.get("content"))
            .map(text_of)
    } else {
        line.body.get("input").map(text_of)
    };
    let Some(prompt) = prompt else {
        let field = if chat { "messages" } else { "input" };
        return Err(json!({"id": format!("batch_req_{index}"), "custom_id": line.custom_id, "response": null,
            "error": {"code": "invalid_request", "message": format!("`{field}` is required")}}));
    };
    let answer = format!("Echo: {}", prompt.chars().take(200).collect::<String>());
    let (p, c) = ((prompt.len() / 4 + 1) as u64, (answer.len() / 4 + 1) as u64);
    let body = if chat {
        json!({"id": format!("chatcmpl-{:012x}", stable_hash(answer.as_bytes())), "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}})
    } else {
        json!({"id": format!("resp_{:012x}", stable_hash(answer.as_bytes())), "object": "response", "created_at": created, "model": model, "status": "completed",
            "output": [{"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": answer}]}],
            "usage": {"input_tokens": p, "output_tokens": c, "total_tokens": p + c}})
    };
    Ok(json!({"id": format!("batch_req_{index}"), "custom_id": line.custom_id,
        "response": {"status_code": 200, "request_id": request_id, "body": body}, "error": null}))
}

fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A hash for ids derived from content (the same answer gets the same id): std's SipHash with its fixed keys.
fn stable_hash(bytes: &[u8]) -> u64 {
    use std::hash::Hasher;
    let mut h = std::hash::DefaultHasher::new();
    h.write(bytes);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(id: &str, url: &str, model: &str) -> String {
        json!({"custom_id": id, "method": "POST", "url": url, "body": {"model": model, "messages": [{"role": "user", "content": "Hi"}]}}).to_string()
    }

    fn code(content: &str) -> &'static str {
        validate(content.as_bytes(), 3).expect_err("invalid").code
    }

    #[test]
    fn each_documented_code() {
        let ok = format!("{}\n{}\n", line("a", "/chat/completions", "gpt"), line("b", "/chat/completions", "gpt"));
        assert_eq!(validate(ok.as_bytes(), 3).expect("valid").len(), 2);
        assert_eq!(code(""), "empty_file");
        assert_eq!(code("\n  \n"), "empty_file");
        assert_eq!(code("{not json"), "invalid_json_line");
        assert_eq!(
            code(&format!("{}\n{}", line("a", "/chat/completions", "g"), line("a", "/chat/completions", "g"))),
            "duplicate_custom_id"
        );
        assert_eq!(
            code(&format!("{}\n{}", line("a", "/chat/completions", "g"), line("b", "/v1/responses", "g"))),
            "url_mismatch"
        );
        assert_eq!(code(&line("a", "/v1/embeddings", "g")), "url_mismatch");
        assert_eq!(
            code(&format!("{}\n{}", line("a", "/chat/completions", "g"), line("b", "/chat/completions", "h"))),
            "model_mismatch"
        );
        let four: Vec<String> = (0..4).map(|i| line(&i.to_string(), "/chat/completions", "g")).collect();
        assert_eq!(code(&four.join("\n")), "too_many_tasks");
        assert_eq!(code(&format!("\u{feff}{}", line("a", "/chat/completions", "g"))), "invalid_request");
        let bad_line =
            validate(format!("{}\nnope", line("a", "/chat/completions", "g")).as_bytes(), 3).expect_err("invalid");
        assert_eq!(bad_line.line, Some(2));
    }

    #[test]
    fn responses_are_deterministic_and_well_formed() {
        let lines = validate(line("t-0", "/chat/completions", "gpt").as_bytes(), 1).expect("valid");
        let a = respond(&lines[0], 0, 1).expect("ok");
        assert_eq!(a, respond(&lines[0], 0, 1).expect("ok"));
        assert_eq!(a["custom_id"], "t-0");
        assert_eq!(a["response"]["status_code"], 200);
        assert_eq!(a["response"]["body"]["choices"][0]["message"]["content"], "Echo: Hi");
        let no_messages =
            RequestLine { custom_id: "x".into(), url: "/chat/completions".into(), body: json!({"model": "g"}) };
        assert_eq!(respond(&no_messages, 1, 1).expect_err("error line")["error"]["code"], "invalid_request");
    }
}
