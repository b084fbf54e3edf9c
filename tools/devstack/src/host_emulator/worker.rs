//! The handler process: started the way the host starts it, probed with `GET /` until it answers, restarted when it
//! dies or overruns `functionTimeout`, and invoked with `POST /<Function>` (functions-protocol.md §1, §4, §5).

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU16, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{Map, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio::sync::{watch, Notify};

use super::envelope::{guid, HOST_VERSION};

/// How long the host waits for the first answer to `GET /` (its `InitializationTimeout`).
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// The host's readiness probe interval.
const PROBE_INTERVAL: Duration = Duration::from_millis(25);

/// How to start the handler.
#[derive(Clone, Debug)]
pub struct WorkerSpec {
    pub executable: PathBuf,
    pub arguments: Vec<String>,
    pub app_root: PathBuf,
    /// App settings, passed as environment variables.
    pub settings: Vec<(String, String)>,
    pub function_timeout: Option<Duration>,
}

/// The outcome of one invocation.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// `None` when no HTTP answer arrived (connection refused or reset, timeout).
    pub status: Option<u16>,
    /// `Outputs` of a 2xx answer (dropped on non-2xx, as the host does).
    pub outputs: Map<String, Value>,
    /// `Logs` of a 2xx answer.
    pub logs: Vec<String>,
    /// Why the invocation failed, if it did.
    pub error: Option<String>,
}

impl Outcome {
    /// 2xx with a readable body.
    pub fn succeeded(&self) -> bool {
        self.error.is_none()
    }
}

/// A supervised handler process.
pub struct Worker {
    spec: WorkerSpec,
    http: reqwest::Client,
    port: AtomicU16,
    ready: watch::Sender<bool>,
    kill: Notify,
    stop: Notify,
    /// How many times the handler has been started.
    pub starts: AtomicU32,
    /// The handler's recent stdout and stderr lines (the host keeps them as `Host.Function.Console` logs).
    output: Arc<std::sync::Mutex<std::collections::VecDeque<String>>>,
}

/// Lines of handler output kept for [`Worker::output`].
const OUTPUT_LINES: usize = 50_000;

fn keep(buffer: &std::sync::Mutex<std::collections::VecDeque<String>>, line: &str) {
    if let Ok(mut b) = buffer.lock() {
        if b.len() == OUTPUT_LINES {
            b.pop_front();
        }
        b.push_back(line.to_string());
    }
}

impl Worker {
    /// Starts the handler and waits until it answers `GET /`; then keeps it running in the background.
    pub async fn start(spec: WorkerSpec) -> anyhow::Result<Arc<Self>> {
        let http = reqwest::Client::builder().pool_max_idle_per_host(64).build()?;
        let (ready, mut ready_rx) = watch::channel(false);
        let worker = Arc::new(Worker {
            spec,
            http,
            port: AtomicU16::new(0),
            ready,
            kill: Notify::new(),
            stop: Notify::new(),
            starts: AtomicU32::new(0),
            output: Arc::default(),
        });
        let (first_tx, first_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(worker.clone().supervise(first_tx));
        match tokio::time::timeout(READY_TIMEOUT, first_rx).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => return Err(e),
            Ok(Err(_)) => anyhow::bail!("the handler supervisor stopped"),
            Err(_) => anyhow::bail!("the handler did not answer GET / within {READY_TIMEOUT:?}"),
        }
        let _ = ready_rx.wait_for(|r| *r).await;
        Ok(worker)
    }

    async fn supervise(self: Arc<Self>, first: tokio::sync::oneshot::Sender<anyhow::Result<()>>) {
        let mut first = Some(first);
        let mut backoff = Duration::from_millis(100);
        loop {
            let started = Instant::now();
            let result = self.run_once(&mut first).await;
            self.ready.send_replace(false);
            match result {
                Ok(true) => return, // stopped on purpose
                Ok(false) => tracing::warn!(target: "host", "handler exited; restarting it"),
                Err(e) => {
                    if let Some(tx) = first.take() {
                        let _ = tx.send(Err(e));
                        return;
                    }
                    tracing::error!(target: "host", "handler failed to start: {e:#}; retrying");
                }
            }
            backoff = if started.elapsed() > Duration::from_secs(10) {
                Duration::from_millis(100)
            } else {
                (backoff * 2).min(Duration::from_secs(5))
            };
            tokio::time::sleep(backoff).await;
        }
    }

    /// Runs the handler once. `Ok(true)`: stopped on request; `Ok(false)`: it exited or was killed.
    async fn run_once(
        &self,
        first: &mut Option<tokio::sync::oneshot::Sender<anyhow::Result<()>>>,
    ) -> anyhow::Result<bool> {
        let port = free_port()?;
        self.port.store(port, Ordering::SeqCst);
        let mut cmd = Command::new(&self.spec.executable);
        cmd.args(&self.spec.arguments)
            .current_dir(&self.spec.app_root)
            .envs(self.spec.settings.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("FUNCTIONS_CUSTOMHANDLER_PORT", port.to_string())
            .env("FUNCTIONS_CUSTOMHANDLER_WORKER_ID", guid())
            .env("FUNCTIONS_APP_ROOT_PATH", &self.spec.app_root)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().with_context(|| format!("starting {}", self.spec.executable.display()))?;
        self.starts.fetch_add(1, Ordering::SeqCst);
        let stderr_tail = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        if let Some(out) = child.stdout.take() {
            let output = self.output.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(out).lines();
                while let Ok(Some(l)) = lines.next_line().await {
                    tracing::info!(target: "handler", "{l}");
                    keep(&output, &l);
                }
            });
        }
        if let Some(err) = child.stderr.take() {
            let tail = stderr_tail.clone();
            let output = self.output.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(err).lines();
                while let Ok(Some(l)) = lines.next_line().await {
                    tracing::warn!(target: "handler", "{l}");
                    keep(&output, &l);
                    if let Ok(mut t) = tail.lock() {
                        t.push(l);
                    }
                }
            });
        }
        // Readiness: any HTTP answer to GET / counts.
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                tokio::time::sleep(Duration::from_millis(50)).await;
                let tail = stderr_tail.lock().map(|t| t.join("\n")).unwrap_or_default();
                anyhow::bail!("the handler exited with {status} before it was ready: {tail}");
            }
            if self.http.get(format!("http://127.0.0.1:{port}/")).send().await.is_ok() {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill().await;
                anyhow::bail!("the handler did not answer GET / within {READY_TIMEOUT:?}");
            }
            tokio::time::sleep(PROBE_INTERVAL).await;
        }
        self.ready.send_replace(true);
        if let Some(tx) = first.take() {
            let _ = tx.send(Ok(()));
        }
        tracing::info!(target: "host", port, pid = child.id(), "handler ready");
        tokio::select! {
            status = child.wait() => {
                tracing::warn!(target: "host", "handler exited: {status:?}");
                Ok(false)
            }
            _ = self.kill.notified() => {
                let _ = child.kill().await;
                tracing::warn!(target: "host", "handler killed");
                Ok(false)
            }
            _ = self.stop.notified() => {
                // Graceful: SIGTERM first, as the host does, then a kill.
                if let Some(pid) = child.id() {
                    let _ = Command::new("kill").arg("-TERM").arg(pid.to_string()).status().await;
                }
                if tokio::time::timeout(Duration::from_secs(5), child.wait()).await.is_err() {
                    let _ = child.kill().await;
                }
                Ok(true)
            }
        }
    }

    /// The handler's recent output lines, stdout and stderr interleaved.
    pub fn output(&self) -> Vec<String> {
        self.output.lock().map(|b| b.iter().cloned().collect()).unwrap_or_default()
    }

    /// Kills the handler (SIGKILL); the supervisor restarts it.
    pub fn kill_handler(&self) {
        self.kill.notify_one();
    }

    /// Stops the handler for good.
    pub fn stop(&self) {
        self.stop.notify_one();
    }

    /// The handler's current base URL.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port.load(Ordering::SeqCst))
    }

    /// POSTs an envelope to `/<function>` and interprets the answer as the host does. `has_return`: the function
    /// declares a `$return` output binding.
    pub async fn invoke(&self, function: &str, has_return: bool, body: Vec<u8>) -> Outcome {
        let started = std::time::Instant::now();
        let mut ready = self.ready.subscribe();
        if tokio::time::timeout(READY_TIMEOUT, ready.wait_for(|r| *r)).await.is_err() {
            return Outcome { error: Some("the handler is not running".into()), ..Default::default() };
        }
        let url = format!("{}/{function}", self.base_url());
        let request = self
            .http
            .post(url)
            .header("content-type", "application/json; charset=utf-8")
            .header("x-azure-functions-invocationid", guid())
            .header("x-azure-functions-hostversion", HOST_VERSION)
            .header("user-agent", format!("Azure-Functions-Host/{HOST_VERSION}"))
            .body(body)
            .send();
        let answer = match self.spec.function_timeout {
            Some(limit) => match tokio::time::timeout(limit, request).await {
                Ok(r) => r,
                Err(_) => {
                    // The real host disposes of the single worker process, killing every invocation in flight.
                    tracing::error!(target: "host", "function timeout after {limit:?}: restarting the handler");
                    self.kill_handler();
                    return Outcome { error: Some(format!("function timeout ({limit:?})")), ..Default::default() };
                }
            },
            None => request.await,
        };
        let response = match answer {
            Ok(r) => r,
            Err(e) => {
                return Outcome {
                    error: Some(format!("no answer from the handler: {}", e.without_url())),
                    ..Default::default()
                }
            }
        };
        let status = response.status();
        let content_type =
            response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        let bytes = response.bytes().await.unwrap_or_default();
        let mut outcome = Outcome { status: Some(status.as_u16()), ..Default::default() };
        if !status.is_success() {
            outcome.error = Some(format!("the handler answered {status}; outputs and logs dropped"));
            return outcome;
        }
        if is_no_result(&bytes) {
            // The host completes an invocation only with a non-null result: it waits for `functionTimeout`, then
            // disposes of the single worker process, failing every invocation in flight.
            let limit = self.spec.function_timeout.unwrap_or(DEFAULT_FUNCTION_TIMEOUT);
            tokio::time::sleep(limit.saturating_sub(started.elapsed())).await;
            tracing::error!(target: "host", "function timeout after {limit:?} (a 2xx without a result): restarting the handler");
            self.kill_handler();
            outcome.error = Some(format!("function timeout ({limit:?}): the handler answered {status} with no result"));
            return outcome;
        }
        if !content_type.starts_with("application/json") {
            outcome.error = Some(format!("no MediaTypeFormatter is available for content type `{content_type}`"));
            return outcome;
        }
        match parse_result(&bytes, has_return) {
            Ok((outputs, logs)) => {
                outcome.outputs = outputs;
                outcome.logs = logs;
            }
            Err(e) => outcome.error = Some(e),
        }
        outcome
    }
}

/// Without a `functionTimeout` in host.json, the Consumption plan's default.
const DEFAULT_FUNCTION_TIMEOUT: Duration = Duration::from_secs(300);

/// A 2xx body that gives the host no result: empty, or `null`.
fn is_no_result(bytes: &[u8]) -> bool {
    let text = bytes.trim_ascii();
    text.is_empty() || text == b"null"
}

/// Reads `{"Outputs", "Logs", "ReturnValue"}` (top-level names matched case-insensitively). `ReturnValue` becomes
/// the `$return` output when the function declares one; otherwise an object `ReturnValue` is merged into `Outputs`,
/// its entries winning (host `WorkerFunctionInvoker.HandleOutputDictionary` assigns them after the outputs).
fn parse_result(bytes: &[u8], has_return: bool) -> Result<(Map<String, Value>, Vec<String>), String> {
    let Ok(Value::Object(top)) = serde_json::from_slice::<Value>(bytes) else {
        return Err("the handler's 2xx body is not a JSON object".into());
    };
    let get = |name: &str| top.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v);
    let mut outputs = match get("Outputs") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(o)) => o.clone(),
        Some(_) => return Err("`Outputs` is not an object".into()),
    };
    match get("ReturnValue") {
        Some(value) if has_return => {
            outputs.insert("$return".into(), value.clone());
        }
        Some(Value::Object(returned)) => outputs.extend(returned.clone()),
        _ => {}
    }
    let logs = match get("Logs") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| v.as_str().map(str::to_string).ok_or("`Logs` must be an array of strings"))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err("`Logs` must be an array of strings".into()),
    };
    Ok((outputs, logs))
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_parsing_follows_the_host() {
        let (o, l) = parse_result(br#"{"Outputs":{"q":{"a":1}},"Logs":["x"],"ReturnValue":null}"#, false).expect("ok");
        assert_eq!(o.len(), 1);
        assert_eq!(l, ["x"]);
        assert!(parse_result(br#"{"outputs":{},"logs":[]}"#, false).is_ok());
        assert!(parse_result(br#"{"Logs":[1]}"#, false).is_err());
    }

    #[test]
    fn an_object_return_value_is_merged_into_the_outputs_unless_there_is_a_return_binding() {
        let body =
            br#"{"Outputs":{"q":{"from":"outputs"},"r":1},"Logs":[],"ReturnValue":{"q":{"from":"return"},"s":2}}"#;
        let (merged, _) = parse_result(body, false).expect("ok");
        assert_eq!(merged["q"]["from"], "return", "ReturnValue's entries are assigned last");
        assert_eq!((merged["r"].clone(), merged["s"].clone()), (Value::from(1), Value::from(2)));
        let (returned, _) = parse_result(body, true).expect("ok");
        assert_eq!(returned["q"]["from"], "outputs");
        assert_eq!(returned["$return"]["s"], 2);
        let (plain, _) = parse_result(br#"{"Outputs":{},"ReturnValue":"text"}"#, false).expect("ok");
        assert!(plain.is_empty(), "a non-object ReturnValue adds nothing without a $return binding");
    }

    #[test]
    fn an_empty_or_null_body_is_no_result() {
        for body in [&b""[..], b"null", b"  null\n", b"\n"] {
            assert!(is_no_result(body), "{body:?}");
        }
        for body in [&b"{}"[..], b"nullx", b"[]"] {
            assert!(!is_no_result(body), "{body:?}");
        }
    }
}
