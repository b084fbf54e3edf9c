//! `devstack`: run blob-batch-monitor locally without Azure.
//!
//! `devstack up` starts Azurite, the batch API emulator, the Functions host emulator and the handler; the other
//! subcommands run one piece each, or upload a file. See the README's quick start.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use blob_batch_monitor::http_client::HttpClient;
use blob_batch_monitor::storage::blob::Condition;
use blob_batch_monitor::storage::{StorageAccount, StorageClient};
use clap::{Parser, Subcommand};
use devstack::azurite::{project_root, Azurite, AzuriteOptions, Persistence};
use devstack::batch_emulator::{BatchEmulator, EmulatorConfig, Timings};
use devstack::host_emulator::{FunctionsHost, HostOptions};
use devstack::storage_ops::BlobOps;

#[derive(Parser)]
#[command(
    name = "devstack",
    about = "Run blob-batch-monitor locally: Azurite, a batch API emulator, a Functions host emulator"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the whole local stack and keep it running until Ctrl-C.
    Up(UpArgs),
    /// Write the function app as it is published (host.json, the function folders, the handler) into OUT.
    Package {
        out: PathBuf,
        /// Feed the blob trigger by Event Grid (`"source": "EventGrid"`), as Flex Consumption requires.
        #[arg(long)]
        event_grid: bool,
        /// The handler executable to put in the package.
        #[arg(long)]
        handler: Option<PathBuf>,
    },
    /// Print a valid input file of N chat requests (to try a split: `sample 2500 > big.jsonl`).
    Sample {
        requests: usize,
        /// The deployment every line names.
        #[arg(long, default_value = "gpt-4o-batch")]
        model: String,
    },
    /// Run only the Functions host emulator against the app in APP_DIR with settings from a local.settings.json.
    Host {
        #[arg(long, default_value = ".")]
        app_dir: PathBuf,
        #[arg(long, default_value = "local.settings.json")]
        settings: PathBuf,
        /// The handler executable (default: host.json's defaultExecutablePath in the app folder).
        #[arg(long)]
        executable: Option<PathBuf>,
        /// Container scan interval for blob triggers, in seconds (the real host scans every 10 s).
        #[arg(long, default_value_t = 2)]
        scan_secs: u64,
    },
    /// Run only the batch API emulator.
    BatchApi {
        #[arg(long, default_value_t = 7301)]
        port: u16,
        /// Storage connection strings the emulated service may read from and write to.
        #[arg(long = "storage", default_value = "UseDevelopmentStorage=true")]
        storage: Vec<String>,
        #[arg(long, env = "OPENAI_API_KEY", default_value = "local-emulator-key", hide_env_values = true)]
        api_key: String,
        #[arg(long, default_value_t = 3)]
        phase_secs: u64,
    },
    /// Print a blob (e.g. a job's results.jsonl, by the URL the final log line names).
    Cat {
        url: String,
        #[command(flatten)]
        storage: Connection,
    },
    /// Upload a file as a blob (by default into batch-input on the local Azurite).
    Upload {
        file: PathBuf,
        /// Blob name (default: the file name).
        #[arg(long)]
        name: Option<String>,
        #[arg(long, default_value = "batch-input")]
        container: String,
        #[command(flatten)]
        storage: Connection,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_target(true)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
    match Cli::parse().command {
        Command::Up(args) => up(args).await,
        Command::Package { out, event_grid, handler } => {
            let root = project_root(&std::env::current_dir()?).context("run devstack from inside the checkout")?;
            devstack::package::write(&root, &out, event_grid, handler.as_deref())?;
            let source = if event_grid { "Event Grid" } else { "polling" };
            println!("wrote the app ({source} blob source) into {}", out.display());
            Ok(())
        }
        Command::Sample { requests, model } => {
            use std::io::Write;
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            for i in 0..requests {
                let line = serde_json::json!({"custom_id": format!("task-{i}"), "method": "POST", "url": "/chat/completions",
                    "body": {"model": model, "messages": [{"role": "user", "content": format!("Question {i}")}]}});
                writeln!(out, "{line}")?;
            }
            Ok(())
        }
        Command::Host { app_dir, settings, executable, scan_secs } => {
            let settings = read_settings(&settings)?;
            let mut options = HostOptions::new(app_dir.canonicalize()?, settings);
            options.executable = executable;
            options.blob_scan_interval = Duration::from_secs(scan_secs.max(1));
            let host = FunctionsHost::start(options).await?;
            stop_signal().await;
            host.stop().await;
            Ok(())
        }
        Command::BatchApi { port, storage, api_key, phase_secs } => {
            let accounts = storage.iter().map(|s| StorageAccount::parse(s)).collect::<Result<Vec<_>, _>>()?;
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
            let emulator = BatchEmulator::start(
                listener,
                EmulatorConfig::new(&api_key, accounts, Timings::uniform(Duration::from_secs(phase_secs))),
            )?;
            println!("batch API emulator on {}", emulator.uri());
            stop_signal().await;
            Ok(())
        }
        Command::Cat { url, storage: Connection { connection } } => {
            let blob =
                storage(&connection)?.get_blob_by_url(&url).await?.with_context(|| format!("{url} does not exist"))?;
            use std::io::Write;
            std::io::stdout().write_all(&blob.content)?;
            Ok(())
        }
        Command::Upload { file, name, container, storage: Connection { connection } } => {
            let content = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let name =
                name.unwrap_or_else(|| file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
            let storage = storage(&connection)?;
            storage.create_container(&container).await?;
            let etag =
                storage.put_blob(&container, &name, content.into(), "application/jsonl", Condition::None, &[]).await?;
            println!("uploaded {container}/{name} (ETag {etag})");
            Ok(())
        }
    }
}

/// The storage account a command reads or writes: local Azurite unless told otherwise.
#[derive(clap::Args)]
struct Connection {
    #[arg(long, env = "BlobStorageConnection", default_value = "UseDevelopmentStorage=true", hide_env_values = true)]
    connection: String,
}

/// A storage client for a connection string.
fn storage(connection: &str) -> anyhow::Result<StorageClient> {
    Ok(StorageClient::new(
        HttpClient::new(devstack::TOOL_BODY_LIMIT, &Default::default())?,
        StorageAccount::parse(connection)?,
    ))
}

/// Ctrl-C or SIGTERM.
async fn stop_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

/// Reads `Values` from a local.settings.json.
fn read_settings(path: &std::path::Path) -> anyhow::Result<Vec<(String, String)>> {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?)?;
    let values =
        v.get("Values").and_then(|v| v.as_object()).with_context(|| format!("{} has no Values", path.display()))?;
    Ok(values.iter().map(|(k, v)| (k.clone(), v.as_str().map_or_else(|| v.to_string(), str::to_string))).collect())
}

/// Options of `up`.
#[derive(clap::Args)]
struct UpArgs {
    /// Port of the batch API emulator (the example settings point at 7301).
    #[arg(long, default_value_t = 7301)]
    batch_port: u16,
    /// Seconds each job phase (validating, in_progress, finalizing) lasts in the emulator.
    #[arg(long, default_value_t = 3)]
    phase_secs: u64,
    /// Use an Azurite that is already listening on 10000/10001 instead of starting one.
    #[arg(long)]
    external_azurite: bool,
    /// Build and run the handler in release mode.
    #[arg(long)]
    release: bool,
    /// BATCH_RETRY_DELAY for the local run, in seconds (overrides the settings file when the emulator is used).
    #[arg(long, default_value_t = 5)]
    retry_delay: u64,
    /// An app setting for this run, over the settings file (repeat: `--set BATCH_MAX_REQUESTS=1000`).
    #[arg(long = "set", value_name = "NAME=VALUE")]
    set: Vec<String>,
    /// Run as on Flex Consumption: the blob trigger fed by Event Grid (each new blob posted to the host's webhook as a
    /// `BlobCreated` event, as a subscription would) instead of container scans.
    #[arg(long)]
    event_grid: bool,
    /// With `--event-grid`: post every event twice, as Event Grid may.
    #[arg(long, requires = "event_grid")]
    duplicate_events: bool,
}

async fn up(args: UpArgs) -> anyhow::Result<()> {
    let UpArgs { batch_port, phase_secs, external_azurite, release, retry_delay, set, event_grid, duplicate_events } =
        args;
    let root =
        project_root(&std::env::current_dir()?).context("run devstack from inside the blob-batch-monitor checkout")?;
    let profile = if release { "release" } else { "debug" };
    println!("building the handler ({profile})…");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = tokio::process::Command::new(cargo);
    build.args(["build", "--bin", "handler"]).current_dir(&root);
    if release {
        build.arg("--release");
    }
    anyhow::ensure!(build.status().await?.success(), "building the handler failed");
    let executable = root.join("target").join(profile).join("handler");

    let azurite = if external_azurite {
        None
    } else {
        let options = AzuriteOptions {
            persistence: Persistence::Folder(root.join(".devstack/azurite")),
            ports: (10000, 10001),
            ..AzuriteOptions::default()
        };
        Some(
            Azurite::start(&root, &options)
                .await
                .context("starting Azurite on 10000/10001 (already running? pass --external-azurite)")?,
        )
    };
    let storage_conn = "UseDevelopmentStorage=true";
    let account = StorageAccount::parse(storage_conn)?;
    let storage = StorageClient::new(HttpClient::new(devstack::TOOL_BODY_LIMIT, &Default::default())?, account.clone());
    for c in ["batch-input", "batch-output"] {
        storage.create_container(c).await.with_context(|| format!("creating container {c}"))?;
    }
    storage.create_queue("monitorjobs").await?;

    let settings_file = if root.join("local.settings.json").exists() {
        root.join("local.settings.json")
    } else {
        root.join("local.settings.json.example")
    };
    let mut settings = read_settings(&settings_file)?;
    let endpoint = settings.iter().find(|(k, _)| k == "OPENAI_ENDPOINT").map(|(_, v)| v.clone()).unwrap_or_default();
    let key = settings.iter().find(|(k, _)| k == "OPENAI_API_KEY").map(|(_, v)| v.clone()).unwrap_or_default();
    let emulator = if endpoint.contains(&format!("127.0.0.1:{batch_port}"))
        || endpoint.contains(&format!("localhost:{batch_port}"))
    {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", batch_port))
            .await
            .with_context(|| format!("binding the batch emulator to port {batch_port}"))?;
        settings.retain(|(k, _)| k != "BATCH_RETRY_DELAY");
        settings.push(("BATCH_RETRY_DELAY".into(), retry_delay.to_string()));
        Some(BatchEmulator::start(
            listener,
            EmulatorConfig::new(&key, vec![account], Timings::uniform(Duration::from_secs(phase_secs))),
        )?)
    } else {
        println!("OPENAI_ENDPOINT is {endpoint}: not starting the batch emulator");
        None
    };

    for pair in &set {
        let (name, value) = pair.split_once('=').with_context(|| format!("--set {pair}: write NAME=VALUE"))?;
        settings.retain(|(k, _)| k != name);
        settings.push((name.to_string(), value.to_string()));
    }
    // With Event Grid, the app as the Flex package has it: the same folders, the blob trigger's source switched.
    let app_root = if event_grid {
        let dir = root.join(".devstack/app-event-grid");
        devstack::package::write(&root, &dir, true, None)?;
        dir
    } else {
        root.clone()
    };
    let mut options = HostOptions::new(app_root, settings);
    options.executable = Some(executable);
    options.flex = event_grid;
    options.blob_scan_interval = Duration::from_secs(2);
    // Where `func start` serves HTTP triggers.
    options.http_port = Some(7071);
    let host = FunctionsHost::start(options).await?;
    let _watcher = match (event_grid, host.http_address()) {
        (true, Some(addr)) => {
            let webhook = format!("http://{addr}/runtime/webhooks/blobs?functionName=Host.Functions.BlobMonitor");
            let copies = if duplicate_events { 2 } else { 1 };
            let watch = devstack::event_grid_watcher::watch(storage.clone(), "batch-input".into(), webhook, copies);
            Some(AbortOnDrop(tokio::spawn(watch)))
        }
        _ => None,
    };

    println!();
    println!("blob-batch-monitor is running locally (settings from {}):", settings_file.display());
    println!("  Azurite         blob http://127.0.0.1:10000/devstoreaccount1, queue http://127.0.0.1:10001/devstoreaccount1 (data in .devstack/azurite)");
    if let Some(e) = &emulator {
        println!("  batch emulator  {} (jobs: {}/_emulator/batches)", e.uri(), e.uri());
    }
    println!("  handler         {}", host.worker().base_url());
    if event_grid {
        println!(
            "  blob source     Event Grid: each upload is posted to /runtime/webhooks/blobs as BlobCreated{}",
            if duplicate_events { ", twice" } else { "" }
        );
    }
    if let Some(addr) = host.http_address() {
        println!("  jobs page       http://{addr}/api/jobs");
    }
    println!();
    println!("Drop a JSONL file into batch-input, e.g.:  cargo run -p devstack -- upload samples/chat.jsonl");
    println!(
        "Results land in the batch-output container; read one with:  cargo run -p devstack -- cat <output_blob URL>"
    );
    println!("Ctrl-C stops everything.");
    stop_signal().await;
    println!("stopping…");
    host.stop().await;
    drop(emulator);
    if let Some(a) = azurite {
        a.stop().await;
    }
    Ok(())
}

/// Aborts a background task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
