//! One Azurite per test run, shared by all tests, with one storage account per test so that every test has its own
//! `monitorjobs`, `batch-input`, … and tests run in parallel without seeing each other.
//!
//! A second instance serves https and accepts Entra ID tokens ([`oauth`]), for identity-based connections.
//!
//! Tests run on many short-lived runtimes, so Azurite is a plain child process started from a std thread, wrapped in
//! a shell watchdog that kills it when this test process exits (statics are never dropped).

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use blob_batch_monitor::storage::connection::DEVSTORE_KEY;
use blob_batch_monitor::storage::StorageAccount;
use devstack::azurite::{accounts_env, arguments, AzuriteOptions, ListeningPorts};

/// Accounts created up front; each test takes the next one.
const ACCOUNTS: usize = 96;

/// The shared Azurite's ports.
pub struct SharedAzurite {
    pub blob_port: u16,
    pub queue_port: u16,
    /// Served over https (`https://localhost:<port>`, the test certificate's name) with `--oauth basic`.
    oauth: bool,
    next: AtomicUsize,
}

static AZURITE: OnceLock<SharedAzurite> = OnceLock::new();
static OAUTH_AZURITE: OnceLock<SharedAzurite> = OnceLock::new();

fn account_name(i: usize) -> String {
    format!("acct{i:03}")
}

/// The shared instance, started on first use.
pub fn shared() -> &'static SharedAzurite {
    AZURITE.get_or_init(|| start(false).unwrap_or_else(|e| panic!("cannot start Azurite: {e:#}")))
}

/// The https instance that accepts bearer tokens (certificate: `tests/fixtures/tls`), started on first use.
pub fn oauth() -> &'static SharedAzurite {
    OAUTH_AZURITE.get_or_init(|| start(true).unwrap_or_else(|e| panic!("cannot start Azurite with OAuth: {e:#}")))
}

fn start(oauth: bool) -> anyhow::Result<SharedAzurite> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let bin = root.join("node_modules/.bin/azurite");
    if !bin.exists() {
        let ok = Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(root)
            .status()?
            .success();
        anyhow::ensure!(ok && bin.exists(), "npm install did not install Azurite");
    }
    let tls = root.join("tests/fixtures/tls");
    let options = AzuriteOptions {
        accounts: (0..ACCOUNTS).map(|i| (account_name(i), DEVSTORE_KEY.to_string())).collect(),
        oauth_tls: oauth.then(|| (tls.join("localhost.pem"), tls.join("localhost.key"))),
        ..AzuriteOptions::default()
    };
    // The watchdog: run Azurite in the background with its output in a log file (a pipe would break when this
    // process exits first), and kill it once this test process is gone.
    let log = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("azurite-{}-{oauth}.log", std::process::id()));
    let script = r#"bin="$1"; watched="$2"; log="$3"; shift 3; "$bin" "$@" >"$log" 2>&1 & child=$!
while kill -0 "$watched" 2>/dev/null && kill -0 "$child" 2>/dev/null; do sleep 0.5; done
kill "$child" 2>/dev/null; wait "$child" 2>/dev/null; rm -f "$log""#;
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(script).arg("azurite-watchdog").arg(&bin).arg(std::process::id().to_string()).arg(&log);
    cmd.args(arguments(&options)?);
    if let Some(accounts) = accounts_env(&options) {
        cmd.env("AZURITE_ACCOUNTS", accounts);
    }
    cmd.stdout(Stdio::null()).stderr(Stdio::inherit()).stdin(Stdio::null()).spawn()?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    let (blob_port, queue_port) = loop {
        let mut ports = ListeningPorts::default();
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(p) = text.lines().find_map(|l| ports.read(l)) {
            break p;
        }
        anyhow::ensure!(std::time::Instant::now() < deadline, "Azurite did not start listening; its log: {text}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    Ok(SharedAzurite { blob_port, queue_port, oauth, next: AtomicUsize::new(0) })
}

impl SharedAzurite {
    /// A storage account no other test uses: `(name, connection string)`.
    pub fn fresh_account(&self) -> (String, String) {
        let i = self.next.fetch_add(1, Ordering::SeqCst);
        assert!(i < ACCOUNTS, "more than {ACCOUNTS} tests want an account: raise ACCOUNTS");
        let name = account_name(i);
        let (blob, queue) = self.endpoints(&name);
        let conn = StorageAccount::shared_key_connection_string(&name, DEVSTORE_KEY, &blob, &queue);
        (name, conn)
    }

    /// The blob and queue service roots of account `name`.
    pub fn endpoints(&self, name: &str) -> (String, String) {
        let base = if self.oauth { "https://localhost" } else { "http://127.0.0.1" };
        (format!("{base}:{}/{name}", self.blob_port), format!("{base}:{}/{name}", self.queue_port))
    }
}

/// Two free ports for an Azurite that a test stops and starts again on the same ports. They lie below the kernel's
/// ephemeral range, which is where every port-0 bind of the other tests running meanwhile comes from, so no one
/// takes them while this Azurite is down.
pub fn restartable_ports() -> (u16, u16) {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    let low: u16 = range.split_whitespace().next().and_then(|p| p.parse().ok()).unwrap_or(32768);
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let offset = (std::process::id() as usize * 7919 + NEXT.fetch_add(2, Ordering::SeqCst)) % 8000;
    let free = |port: u16| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok();
    let candidates = (0..8000).map(|i| low - 10_000 + ((offset + i) % 8000) as u16);
    let mut found = candidates.filter(|p| free(*p) && free(*p + 8000));
    let blob = found.next().expect("a free port below the ephemeral range");
    (blob, blob + 8000)
}
