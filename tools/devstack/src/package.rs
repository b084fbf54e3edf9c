//! The function app as it is published: `host.json`, each function's folder with its `function.json`, and the
//! `handler`. One switch chooses the blob trigger's source: polling (the repository's own `function.json`: local runs,
//! Premium, Dedicated) or Event Grid (`"source": "EventGrid"`, which Flex Consumption requires). The handler is the same
//! either way: the invocation carries the same `Data` and `Metadata`.

use std::path::Path;

use anyhow::Context;
use serde_json::Value;

/// The function folders of the app.
pub const FUNCTIONS: [&str; 3] = ["BlobMonitor", "QueueMonitor", "Jobs"];

/// Writes the app from `root` (the checkout) into `out`: with `event_grid`, every blob trigger gets
/// `"source": "EventGrid"`; with `handler`, that executable is copied in as `handler`.
pub fn write(root: &Path, out: &Path, event_grid: bool, handler: Option<&Path>) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    std::fs::copy(root.join("host.json"), out.join("host.json")).context("copying host.json")?;
    for function in FUNCTIONS {
        let from = root.join(function).join("function.json");
        let text = std::fs::read_to_string(&from).with_context(|| format!("reading {}", from.display()))?;
        let mut json: Value = serde_json::from_str(&text).with_context(|| format!("{} is not JSON", from.display()))?;
        if event_grid {
            event_grid_source(&mut json);
        }
        std::fs::create_dir_all(out.join(function))?;
        std::fs::write(out.join(function).join("function.json"), serde_json::to_string_pretty(&json)? + "\n")?;
    }
    if let Some(handler) = handler {
        std::fs::copy(handler, out.join("handler")).with_context(|| format!("copying {}", handler.display()))?;
    }
    Ok(())
}

/// Sets `"source": "EventGrid"` on every `blobTrigger` binding of a function.json.
pub fn event_grid_source(function: &mut Value) {
    let bindings = function.get_mut("bindings").and_then(Value::as_array_mut).into_iter().flatten();
    for binding in bindings.filter(|b| b.get("type").and_then(Value::as_str) == Some("blobTrigger")) {
        binding["source"] = Value::from("EventGrid");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_blob_triggers_get_the_event_grid_source() {
        let mut f = serde_json::json!({"bindings": [
            {"type": "blobTrigger", "direction": "in", "name": "inputBlob", "path": "batch-input/{name}"},
            {"type": "queue", "direction": "out", "name": "outQueue"}]});
        event_grid_source(&mut f);
        assert_eq!(f["bindings"][0]["source"], "EventGrid");
        assert!(f["bindings"][1].get("source").is_none());
    }
}
