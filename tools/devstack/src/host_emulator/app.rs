//! The function app as the host sees it: host.json and every `*/function.json` under the app root, typed.
//!
//! Only the settings the emulator acts on are read; each has the host's default (functions-protocol.md §6).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use blob_batch_monitor::storage::MessageEncoding;
use serde_json::Value;

/// `extensions.queues` and `extensions.blobs`, with the host's defaults.
#[derive(Clone, Debug)]
pub struct HostSettings {
    pub executable: String,
    pub arguments: Vec<String>,
    pub function_timeout: Option<Duration>,
    pub max_polling_interval: Duration,
    pub visibility_timeout: Duration,
    pub batch_size: usize,
    pub new_batch_threshold: usize,
    pub max_dequeue_count: u32,
    pub message_encoding: MessageEncoding,
    pub blob_parallelism: usize,
    pub poison_blob_threshold: u32,
}

/// One binding of a function.json.
#[derive(Clone, Debug)]
pub struct Binding {
    pub name: String,
    pub kind: String,
    pub direction: String,
    pub path: Option<String>,
    pub queue_name: Option<String>,
    pub connection: String,
    pub data_type: Option<String>,
    /// An `httpTrigger`'s route template (`jobs/{*rest}`); the function's name when absent.
    pub route: Option<String>,
    /// An `httpTrigger`'s methods, lower case (empty: any).
    pub methods: Vec<String>,
    /// A `blobTrigger`'s source: `EventGrid`, or polling when absent (`LogsAndContainerScan`).
    pub source: Option<String>,
}

impl Binding {
    /// Whether a blob trigger is fed by Event Grid rather than by container scans.
    pub fn event_grid(&self) -> bool {
        self.source.as_deref().is_some_and(|s| s.eq_ignore_ascii_case("EventGrid"))
    }
}

/// A function: its folder name (= route) and bindings.
#[derive(Clone, Debug)]
pub struct Function {
    pub name: String,
    pub bindings: Vec<Binding>,
}

impl Function {
    /// The trigger binding.
    pub fn trigger(&self) -> Option<&Binding> {
        self.bindings.iter().find(|b| b.kind.ends_with("Trigger"))
    }

    /// Queue output bindings.
    pub fn queue_outputs(&self) -> impl Iterator<Item = &Binding> {
        self.bindings.iter().filter(|b| b.direction == "out" && b.kind == "queue")
    }
}

/// The whole app.
#[derive(Clone, Debug)]
pub struct App {
    pub root: PathBuf,
    pub host: HostSettings,
    pub functions: Vec<Function>,
}

/// Parses a .NET TimeSpan such as `00:00:30` or `1.00:00:00` (days.hours:minutes:seconds[.fraction]).
pub fn parse_timespan(s: &str) -> Option<Duration> {
    let (days, rest) = match s.split_once('.') {
        Some((d, r)) if r.contains(':') && !d.contains(':') => (d.parse::<u64>().ok()?, r),
        _ => (0, s),
    };
    let parts: Vec<&str> = rest.split(':').collect();
    let [h, m, sec] = parts.as_slice() else {
        return None;
    };
    let secs: f64 = sec.parse().ok()?;
    let whole = days * 86_400 + h.parse::<u64>().ok()? * 3600 + m.parse::<u64>().ok()? * 60;
    Some(Duration::from_secs(whole) + Duration::from_secs_f64(secs))
}

impl App {
    /// Loads host.json and the function folders under `root`.
    pub fn load(root: &Path) -> anyhow::Result<Self> {
        let host_path = root.join("host.json");
        let host: Value = serde_json::from_str(
            &std::fs::read_to_string(&host_path).with_context(|| format!("reading {}", host_path.display()))?,
        )
        .with_context(|| format!("parsing {}", host_path.display()))?;
        let get = |p: &str| host.pointer(p);
        let span =
            |p: &str, default: Duration| get(p).and_then(Value::as_str).and_then(parse_timespan).unwrap_or(default);
        let num = |p: &str, default: u64| get(p).and_then(Value::as_u64).unwrap_or(default);
        let executable = get("/customHandler/description/defaultExecutablePath")
            .and_then(Value::as_str)
            .context("host.json has no customHandler.description.defaultExecutablePath")?
            .to_string();
        let arguments = get("/customHandler/description/arguments")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect())
            .unwrap_or_default();
        let encoding = match get("/extensions/queues/messageEncoding").and_then(Value::as_str) {
            None => MessageEncoding::Base64,
            Some(s) => MessageEncoding::parse(s).with_context(|| format!("host.json messageEncoding `{s}`"))?,
        };
        let batch_size = num("/extensions/queues/batchSize", 16).clamp(1, 32) as usize;
        let settings = HostSettings {
            executable,
            arguments,
            function_timeout: get("/functionTimeout").and_then(Value::as_str).and_then(parse_timespan),
            max_polling_interval: span("/extensions/queues/maxPollingInterval", Duration::from_secs(60))
                .max(Duration::from_millis(100)),
            visibility_timeout: span("/extensions/queues/visibilityTimeout", Duration::ZERO),
            batch_size,
            // N × batchSize / 2 with N = 1 (Consumption) by default.
            new_batch_threshold: num("/extensions/queues/newBatchThreshold", (batch_size / 2) as u64) as usize,
            max_dequeue_count: num("/extensions/queues/maxDequeueCount", 5) as u32,
            message_encoding: encoding,
            blob_parallelism: num("/extensions/blobs/maxDegreeOfParallelism", 8) as usize,
            poison_blob_threshold: num("/extensions/blobs/poisonBlobThreshold", 5) as u32,
        };

        let mut functions = Vec::new();
        let mut dirs: Vec<_> = std::fs::read_dir(root)?.filter_map(Result::ok).map(|e| e.path()).collect();
        dirs.sort();
        for dir in dirs {
            let fj = dir.join("function.json");
            if !fj.is_file() {
                continue;
            }
            let v: Value = serde_json::from_str(&std::fs::read_to_string(&fj)?)
                .with_context(|| format!("parsing {}", fj.display()))?;
            let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
            let bindings = v
                .get("bindings")
                .and_then(Value::as_array)
                .with_context(|| format!("{} has no bindings", fj.display()))?
                .iter()
                .map(|b| {
                    let s = |k: &str| b.get(k).and_then(Value::as_str).map(str::to_string);
                    Binding {
                        name: s("name").unwrap_or_default(),
                        kind: s("type").unwrap_or_default(),
                        direction: s("direction").unwrap_or_default(),
                        path: s("path"),
                        queue_name: s("queueName"),
                        route: s("route"),
                        methods: b
                            .get("methods")
                            .and_then(Value::as_array)
                            .map(|m| m.iter().filter_map(Value::as_str).map(str::to_ascii_lowercase).collect())
                            .unwrap_or_default(),
                        // An empty connection means AzureWebJobsStorage.
                        connection: s("connection")
                            .filter(|c| !c.is_empty())
                            .unwrap_or_else(|| "AzureWebJobsStorage".into()),
                        data_type: s("dataType"),
                        source: s("source"),
                    }
                })
                .collect();
            functions.push(Function { name, bindings });
        }
        if functions.is_empty() {
            bail!("no */function.json under {}", root.display());
        }
        Ok(App { root: root.to_path_buf(), host: settings, functions })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timespans() {
        assert_eq!(parse_timespan("00:00:02"), Some(Duration::from_secs(2)));
        assert_eq!(parse_timespan("00:10:00"), Some(Duration::from_secs(600)));
        assert_eq!(parse_timespan("1.00:00:01"), Some(Duration::from_secs(86_401)));
        assert_eq!(parse_timespan("00:00:00.5"), Some(Duration::from_millis(500)));
        assert_eq!(parse_timespan("soon"), None);
    }

    #[test]
    fn loads_this_repository_app() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let app = App::load(&root).expect("loads");
        assert_eq!(app.host.executable, "handler");
        assert_eq!(app.host.message_encoding, MessageEncoding::Base64);
        assert_eq!(app.host.visibility_timeout, Duration::from_secs(30));
        let names: Vec<&str> = app.functions.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["BlobMonitor", "Jobs", "QueueMonitor"]);
        let blob = &app.functions[0];
        assert_eq!(blob.trigger().and_then(|t| t.path.as_deref()), Some("batch-input/{name}"));
        assert_eq!(blob.trigger().and_then(|t| t.data_type.as_deref()), Some("binary"));
        assert_eq!(blob.queue_outputs().count(), 1);
        let jobs = app.functions[1].trigger().expect("an HTTP trigger");
        assert_eq!((jobs.kind.as_str(), jobs.route.as_deref()), ("httpTrigger", Some("jobs/{*rest}")));
        assert_eq!(jobs.methods, ["get", "post"]);
    }
}
