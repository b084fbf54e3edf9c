//! Starts a real Azurite (the npm package) on free loopback ports, installing it first if it is missing.
//!
//! Used by `devstack up` and by the test harness. Azurite is pinned in the repository's `package.json`; `npm install`
//! puts it under `node_modules/` (ignored by git). Port 0 lets several instances run at once; the chosen ports are
//! read from Azurite's start-up lines. Extra accounts (one per test) come from `AZURITE_ACCOUNTS`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use blob_batch_monitor::storage::connection::{DEVSTORE_ACCOUNT, DEVSTORE_KEY};
use blob_batch_monitor::storage::StorageAccount;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// How long Azurite may take to listen (about 5 s on a small machine; npm cold caches make it slower).
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Where Azurite keeps its data.
#[derive(Clone, Debug)]
pub enum Persistence {
    /// Nothing on disk: for tests.
    InMemory,
    /// A folder (created if missing), so blobs, queues and receipts survive restarts.
    Folder(PathBuf),
}

/// Options for [`Azurite::start`].
#[derive(Clone, Debug)]
pub struct AzuriteOptions {
    pub persistence: Persistence,
    /// `(blob, queue)` ports; 0 picks free ones.
    pub ports: (u16, u16),
    /// Extra accounts as `(name, base64 key)`; when set, `devstoreaccount1` is kept as well.
    pub accounts: Vec<(String, String)>,
    /// Serve https with this `(certificate, key)` PEM pair and accept Entra ID bearer tokens (`--oauth basic`:
    /// Azurite checks a token's issuer, audience and lifetime, not its signature). Azurite allows OAuth only over https.
    pub oauth_tls: Option<(PathBuf, PathBuf)>,
}

impl Default for AzuriteOptions {
    fn default() -> Self {
        AzuriteOptions { persistence: Persistence::InMemory, ports: (0, 0), accounts: Vec::new(), oauth_tls: None }
    }
}

/// A running Azurite; killed when dropped.
pub struct Azurite {
    child: Child,
    pub blob_port: u16,
    pub queue_port: u16,
}

impl Azurite {
    /// Installs Azurite if needed (`npm install` in `project_root`) and starts it.
    pub async fn start(project_root: &Path, options: &AzuriteOptions) -> anyhow::Result<Self> {
        let bin = ensure_installed(project_root).await?;
        let mut cmd = Command::new(&bin);
        cmd.args(arguments(options)?);
        if let Some(accounts) = accounts_env(options) {
            cmd.env("AZURITE_ACCOUNTS", accounts);
        }
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).stdin(Stdio::null()).kill_on_drop(true);
        let mut child = cmd.spawn().with_context(|| format!("starting {}", bin.display()))?;
        let stdout = child.stdout.take().context("azurite stdout")?;
        let stderr = child.stderr.take().context("azurite stderr")?;
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                tracing::warn!(target: "azurite", "{line}");
            }
        });
        let mut lines = BufReader::new(stdout).lines();
        let (mut blob_port, mut queue_port) = (None, None);
        let ports = tokio::time::timeout(START_TIMEOUT, async {
            while let Some(line) = lines.next_line().await? {
                let port = || line.rsplit(':').next().and_then(|p| p.trim().parse::<u16>().ok());
                if line.contains("Blob service is successfully listening") {
                    blob_port = port();
                } else if line.contains("Queue service is successfully listening") {
                    queue_port = port();
                }
                if let (Some(b), Some(q)) = (blob_port, queue_port) {
                    return Ok::<_, std::io::Error>(Some((b, q)));
                }
            }
            Ok(None)
        })
        .await;
        let (blob_port, queue_port) = match ports {
            Ok(Ok(Some(p))) => p,
            Ok(Ok(None)) => bail!("azurite exited before listening (is a port taken?)"),
            Ok(Err(e)) => bail!("reading azurite's output: {e}"),
            Err(_) => bail!("azurite did not listen within {START_TIMEOUT:?}"),
        };
        // Keep draining stdout so Azurite never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Azurite { child, blob_port, queue_port })
    }

    /// The blob endpoint of `account` (path-style).
    pub fn blob_endpoint(&self, account: &str) -> String {
        format!("http://127.0.0.1:{}/{account}", self.blob_port)
    }

    /// The queue endpoint of `account` (path-style).
    pub fn queue_endpoint(&self, account: &str) -> String {
        format!("http://127.0.0.1:{}/{account}", self.queue_port)
    }

    /// A Shared Key connection string for `account` with explicit endpoints.
    pub fn connection_string(&self, account: &str, key: &str) -> String {
        StorageAccount::shared_key_connection_string(
            account,
            key,
            &self.blob_endpoint(account),
            &self.queue_endpoint(account),
        )
    }

    /// The default account's connection string.
    pub fn devstore_connection_string(&self) -> String {
        self.connection_string(DEVSTORE_ACCOUNT, DEVSTORE_KEY)
    }

    /// Stops Azurite gracefully (SIGTERM, so it saves its data), killing it after 10 s.
    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = Command::new("kill").arg("-TERM").arg(pid.to_string()).status().await;
        }
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await.is_err() {
            let _ = self.child.kill().await;
        }
    }
}

/// Azurite's command-line arguments for `options` (loopback only, telemetry off).
pub fn arguments(options: &AzuriteOptions) -> anyhow::Result<Vec<String>> {
    let mut args: Vec<String> = [
        "--silent",
        "--disableTelemetry",
        "--blobHost",
        "127.0.0.1",
        "--queueHost",
        "127.0.0.1",
        "--tableHost",
        "127.0.0.1",
        "--tablePort",
        "0",
        // The current Azure SDKs send x-ms-version headers newer than the newest Azurite knows; Azurite answers them
        // 400 unless told to let them through (the README's event consumer uses such an SDK).
        "--skipApiVersionCheck",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(["--blobPort".into(), options.ports.0.to_string(), "--queuePort".into(), options.ports.1.to_string()]);
    if let Some((cert, key)) = &options.oauth_tls {
        args.extend(["--cert".into(), cert.display().to_string(), "--key".into(), key.display().to_string()]);
        args.extend(["--oauth".into(), "basic".into()]);
    }
    match &options.persistence {
        Persistence::InMemory => args.push("--inMemoryPersistence".into()),
        Persistence::Folder(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            args.push("--location".into());
            args.push(dir.display().to_string());
        }
    }
    Ok(args)
}

/// The `AZURITE_ACCOUNTS` value for extra accounts (the default account is kept).
pub fn accounts_env(options: &AzuriteOptions) -> Option<String> {
    if options.accounts.is_empty() {
        return None;
    }
    let mut all = vec![format!("{DEVSTORE_ACCOUNT}:{DEVSTORE_KEY}")];
    all.extend(options.accounts.iter().map(|(n, k)| format!("{n}:{k}")));
    Some(all.join(";"))
}

/// Reads Azurite's start-up lines (`… Blob service is successfully listening at http://127.0.0.1:45729`).
#[derive(Default, Debug)]
pub struct ListeningPorts {
    blob: Option<u16>,
    queue: Option<u16>,
}

impl ListeningPorts {
    /// Feeds one line; returns `(blob, queue)` once both are known.
    pub fn read(&mut self, line: &str) -> Option<(u16, u16)> {
        let port = || line.rsplit(':').next().and_then(|p| p.trim().parse::<u16>().ok());
        if line.contains("Blob service is successfully listening") {
            self.blob = port();
        } else if line.contains("Queue service is successfully listening") {
            self.queue = port();
        }
        Some((self.blob?, self.queue?))
    }
}

/// The Azurite executable under `project_root/node_modules/.bin`, installed with `npm install` when missing.
pub async fn ensure_installed(project_root: &Path) -> anyhow::Result<PathBuf> {
    let bin = project_root.join("node_modules/.bin/azurite");
    if bin.exists() {
        return Ok(bin);
    }
    tracing::info!("installing Azurite with npm (once)");
    let status = Command::new("npm")
        .args(["install", "--no-audit", "--no-fund", "--loglevel=error"])
        .current_dir(project_root)
        .stdin(Stdio::null())
        .status()
        .await
        .context("running npm (Node.js and npm are needed for Azurite)")?;
    if !status.success() || !bin.exists() {
        bail!("`npm install` in {} did not install Azurite ({status})", project_root.display());
    }
    Ok(bin)
}

/// The workspace root: the nearest ancestor of `start` holding `package.json` and `host.json`.
pub fn project_root(start: &Path) -> Option<PathBuf> {
    start.ancestors().find(|d| d.join("package.json").exists() && d.join("host.json").exists()).map(Path::to_path_buf)
}
