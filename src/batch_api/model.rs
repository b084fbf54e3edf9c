//! The Batch object and list page, parsed leniently (azure-openai-batch.md §4): only `id` and `status` are required,
//! unknown statuses are kept, `errors.data` may be an array or a lone object, `line` a string or a number, and
//! `output_blob`/`error_blob` are `""` until known.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

/// A batch job's status. Compared case-insensitively; unknown values are kept, never fatal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BatchStatus {
    Validating,
    Failed,
    InProgress,
    Finalizing,
    Completed,
    Expired,
    Cancelling,
    Cancelled,
    Unknown(String),
}

impl BatchStatus {
    /// Parses the wire value, in any case.
    pub fn parse(s: &str) -> Self {
        const KNOWN: [(&str, BatchStatus); 8] = [
            ("validating", BatchStatus::Validating),
            ("failed", BatchStatus::Failed),
            ("in_progress", BatchStatus::InProgress),
            ("finalizing", BatchStatus::Finalizing),
            ("completed", BatchStatus::Completed),
            ("expired", BatchStatus::Expired),
            ("cancelling", BatchStatus::Cancelling),
            ("cancelled", BatchStatus::Cancelled),
        ];
        KNOWN
            .into_iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(s))
            .map_or_else(|| BatchStatus::Unknown(s.to_string()), |(_, status)| status)
    }

    /// Exactly `completed`, `failed`, `expired` and `cancelled` end a job (§5). `canceled` is not a status the API
    /// sends; an unknown status keeps being checked rather than ending monitoring on a guess.
    pub fn is_terminal(&self) -> bool {
        matches!(self, BatchStatus::Completed | BatchStatus::Failed | BatchStatus::Expired | BatchStatus::Cancelled)
    }

    /// The canonical lowercase name.
    pub fn as_str(&self) -> &str {
        match self {
            BatchStatus::Validating => "validating",
            BatchStatus::Failed => "failed",
            BatchStatus::InProgress => "in_progress",
            BatchStatus::Finalizing => "finalizing",
            BatchStatus::Completed => "completed",
            BatchStatus::Expired => "expired",
            BatchStatus::Cancelling => "cancelling",
            BatchStatus::Cancelled => "cancelled",
            BatchStatus::Unknown(s) => s,
        }
    }
}

impl fmt::Display for BatchStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for BatchStatus {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(BatchStatus::parse(&String::deserialize(d)?))
    }
}

impl Serialize for BatchStatus {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// `request_counts`; each field may be `null` while validating.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct RequestCounts {
    #[serde(default)]
    pub total: Option<u64>,
    #[serde(default)]
    pub completed: Option<u64>,
    #[serde(default)]
    pub failed: Option<u64>,
}

impl fmt::Display for RequestCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (name, value) in [("total=", self.total), (" completed=", self.completed), (" failed=", self.failed)] {
            f.write_str(name)?;
            match value {
                Some(v) => write!(f, "{v}")?,
                None => f.write_str("?")?,
            }
        }
        Ok(())
    }
}

/// One entry of `errors.data`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct BatchErrorItem {
    #[serde(default, deserialize_with = "string_or_number")]
    pub code: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub param: Option<String>,
    /// A string on Azure, an integer on OpenAI.
    #[serde(default, deserialize_with = "string_or_number")]
    pub line: Option<String>,
}

impl fmt::Display for BatchErrorItem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code.as_deref().unwrap_or("?"), self.message.as_deref().unwrap_or(""))?;
        if let Some(line) = &self.line {
            write!(f, " (line {line})")?;
        }
        Ok(())
    }
}

/// A batch job as the API returns it.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct Batch {
    pub id: String,
    pub status: BatchStatus,
    #[serde(default)]
    pub input_blob: Option<String>,
    #[serde(default)]
    pub output_blob: Option<String>,
    #[serde(default)]
    pub error_blob: Option<String>,
    #[serde(default)]
    pub request_counts: Option<RequestCounts>,
    #[serde(default, deserialize_with = "error_list")]
    pub errors: Vec<BatchErrorItem>,
    #[serde(default)]
    pub created_at: Option<Value>,
    /// The deployment (OpenAI sends it; Azure may not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// `{input_tokens, output_tokens, total_tokens, …_details}` when the service reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Value>,
}

impl Batch {
    /// `output_blob`, treating `""` as "not known yet".
    pub fn output_blob(&self) -> Option<&str> {
        self.output_blob.as_deref().filter(|s| !s.is_empty())
    }

    /// `created_at` as Unix seconds: a number, or an ISO 8601 string as old previews sent it.
    pub fn created_unix(&self) -> Option<u64> {
        match self.created_at.as_ref()? {
            Value::Number(n) => n.as_u64(),
            Value::String(s) => humantime::parse_rfc3339_weak(s)
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_secs()),
            _ => None,
        }
    }

    /// `error_blob`, treating `""` as "not known yet". It may name a file that was never written (no errors).
    pub fn error_blob(&self) -> Option<&str> {
        self.error_blob.as_deref().filter(|s| !s.is_empty())
    }
}

/// A page of `GET /batches`. Old previews used `value` instead of `data`.
#[derive(Clone, Debug, Deserialize)]
pub struct BatchList {
    #[serde(default, alias = "value")]
    pub data: Vec<Batch>,
    #[serde(default)]
    pub has_more: bool,
    #[serde(default)]
    pub last_id: Option<String>,
}

fn string_or_number<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::String(s) => Some(s),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    })
}

/// `errors`: `null`, `{"object":"list","data":[...]}`, `{"data":{...}}` (Azure's swagger), or a bare array.
fn error_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<BatchErrorItem>, D::Error> {
    let items = |v: Value| -> Vec<BatchErrorItem> {
        match v {
            Value::Array(a) => a.into_iter().filter_map(|x| serde_json::from_value(x).ok()).collect(),
            obj @ Value::Object(_) => serde_json::from_value(obj).ok().into_iter().collect(),
            _ => Vec::new(),
        }
    };
    Ok(match Value::deserialize(d)? {
        Value::Object(mut o) => match o.remove("data") {
            Some(data) => items(data),
            None => Vec::new(),
        },
        arr @ Value::Array(_) => items(arr),
        _ => Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_parse_case_insensitively_and_only_four_are_terminal() {
        let terminal: Vec<&str> = [
            "validating",
            "failed",
            "in_progress",
            "finalizing",
            "completed",
            "expired",
            "cancelling",
            "cancelled",
            "canceled",
            "Completed",
            "VALIDATING",
            "weird",
        ]
        .into_iter()
        .filter(|s| BatchStatus::parse(s).is_terminal())
        .collect();
        assert_eq!(terminal, ["failed", "completed", "expired", "cancelled", "Completed"]);
        assert_eq!(BatchStatus::parse("Validating"), BatchStatus::Validating);
        assert_eq!(BatchStatus::parse("weird"), BatchStatus::Unknown("weird".into()));
    }

    #[test]
    fn documented_objects_parse() {
        let created: Batch = serde_json::from_str(r#"{"id": "batch_fe3f047a-de39-4068-9008-346795bfc1db", "object": "batch", "endpoint": "/chat/completions", "errors": null,
 "input_file_id": null, "completion_window": "24h", "status": "validating", "output_file_id": null, "error_file_id": null,
 "created_at": 1735689600, "in_progress_at": null, "expires_at": 1735776000, "finalizing_at": null, "completed_at": null,
 "failed_at": null, "expired_at": null, "cancelling_at": null, "cancelled_at": null,
 "request_counts": {"total": 0, "completed": 0, "failed": 0}, "metadata": null,
 "input_blob": "https://ACCOUNT.blob.core.windows.net/batch-input/test.jsonl", "output_blob": "", "error_blob": ""}"#)
            .expect("parses");
        assert_eq!(created.status, BatchStatus::Validating);
        assert_eq!(created.output_blob(), None);
        assert!(created.errors.is_empty());

        let failed: Batch = serde_json::from_str(
            r#"{"id":"b","status":"failed","failed_at":1735689630,
 "errors": {"object": "list", "data": [{"code": "empty_file", "message": "no requests", "param": null, "line": null}]},
 "request_counts": {"total": null, "completed": null, "failed": null}}"#,
        )
        .expect("parses");
        assert_eq!(failed.errors[0].code.as_deref(), Some("empty_file"));
        assert_eq!(failed.errors[0].to_string(), "empty_file: no requests");
        assert_eq!(failed.request_counts.expect("counts").to_string(), "total=? completed=? failed=?");
    }

    #[test]
    fn lenient_error_shapes() {
        let single: Batch =
            serde_json::from_str(r#"{"id":"b","status":"Failed","errors":{"data":{"code":"x","line":"3"}}}"#)
                .expect("ok");
        assert_eq!(single.errors[0].line.as_deref(), Some("3"));
        let numeric: Batch =
            serde_json::from_str(r#"{"id":"b","status":"failed","errors":{"data":[{"code":429,"line":7}]}}"#)
                .expect("ok");
        assert_eq!(numeric.errors[0].code.as_deref(), Some("429"));
        assert_eq!(numeric.errors[0].line.as_deref(), Some("7"));
        let list: BatchList = serde_json::from_str(r#"{"value":[{"id":"a","status":"completed"}]}"#).expect("ok");
        assert_eq!(list.data[0].created_unix(), None);
        let dated: Batch =
            serde_json::from_str(r#"{"id":"b","status":"validating","created_at":1735689600}"#).expect("ok");
        let iso: Batch =
            serde_json::from_str(r#"{"id":"b","status":"validating","created_at":"2025-01-01T00:00:00Z"}"#)
                .expect("ok");
        assert_eq!((dated.created_unix(), iso.created_unix()), (Some(1_735_689_600), Some(1_735_689_600)));
        assert_eq!(list.data.len(), 1);
    }
}
