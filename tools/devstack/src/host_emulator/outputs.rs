//! Output binding values → queue messages, converted as the host converts them (functions-protocol.md §3.1),
//! including the quirk that a string which happens to be valid base64 is decoded unless `dataType` is `binary`.

use base64::Engine;
use serde_json::Value;

/// The messages (raw bytes, before storage encoding) one `Outputs` value produces.
pub fn messages(value: &Value, binary: bool) -> Result<Vec<Vec<u8>>, String> {
    Ok(match value {
        Value::Null => Vec::new(),
        Value::Array(items) => items.iter().map(element).collect(),
        obj @ Value::Object(_) => vec![indented(obj)],
        Value::String(s) => string(s, binary)?,
        other => vec![other.to_string().into_bytes()],
    })
}

fn indented(v: &Value) -> Vec<u8> {
    serde_json::to_vec_pretty(v).unwrap_or_default()
}

fn element(v: &Value) -> Vec<u8> {
    match v {
        Value::String(s) => s.as_bytes().to_vec(),
        obj @ Value::Object(_) => indented(obj),
        other => other.to_string().into_bytes(),
    }
}

fn string(s: &str, binary: bool) -> Result<Vec<Vec<u8>>, String> {
    let t = s.trim();
    if (t.starts_with('{') && t.ends_with('}')) || (t.starts_with('[') && t.ends_with(']')) {
        // Parsed as JSON; invalid JSON fails the invocation after the 2xx.
        let parsed: Value =
            serde_json::from_str(t).map_err(|e| format!("output string looks like JSON but is not: {e}"))?;
        return messages(&parsed, binary);
    }
    if !binary {
        if let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(s) {
            return Ok(vec![decoded]);
        }
    }
    Ok(vec![s.as_bytes().to_vec()])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn conversions() {
        assert_eq!(messages(&json!({"a": 1}), false).expect("ok"), vec![b"{\n  \"a\": 1\n}".to_vec()]);
        assert_eq!(messages(&json!(["x", {"b": 2}]), false).expect("ok").len(), 2);
        assert_eq!(messages(&json!(null), false).expect("ok"), Vec::<Vec<u8>>::new());
        assert_eq!(messages(&json!([]), false).expect("ok"), Vec::<Vec<u8>>::new());
        // The base64 quirk: "test" is valid base64 and is mangled, unless dataType is binary.
        assert_eq!(messages(&json!("test"), false).expect("ok"), vec![vec![0xb5, 0xeb, 0x2d]]);
        assert_eq!(messages(&json!("test"), true).expect("ok"), vec![b"test".to_vec()]);
        assert_eq!(messages(&json!("not base64!"), false).expect("ok"), vec![b"not base64!".to_vec()]);
        assert_eq!(messages(&json!("[\"a\",\"b\"]"), false).expect("ok").len(), 2);
        assert!(messages(&json!("{broken}"), false).is_err());
        assert_eq!(messages(&json!(5), false).expect("ok"), vec![b"5".to_vec()]);
    }
}
