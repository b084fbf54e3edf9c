//! Process plumbing for the benchmarks: pinning to a core with `taskset`, readiness, `/proc` memory and CPU-time
//! figures, and `wrk` runs and their parsing.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// A child process killed on drop.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

/// `program args…`, pinned to `cpu` with taskset when one is given.
pub fn command(cpu: Option<usize>, program: &Path, args: &[&str]) -> Command {
    match cpu {
        Some(c) => {
            let mut cmd = Command::new("taskset");
            cmd.arg("-c").arg(c.to_string()).arg(program).args(args);
            cmd
        }
        None => {
            let mut cmd = Command::new(program);
            cmd.args(args);
            cmd
        }
    }
}

/// A free loopback port.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// One `GET /` over a fresh connection; true if any HTTP answer came back (as the host's probe counts it).
pub fn probe(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 12];
    matches!(s.read(&mut buf), Ok(n) if n >= 5 && &buf[..5] == b"HTTP/")
}

/// Polls [`probe`] until it succeeds; returns how long that took.
pub fn wait_ready(port: u16, limit: Duration) -> anyhow::Result<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if probe(port) {
            return Ok(start.elapsed());
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    bail!("nothing answered on port {port} within {limit:?}")
}

/// A `/proc/<pid>/status` field in kB (`VmRSS`, `VmHWM`).
pub fn status_kb(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines().find(|l| l.starts_with(field))?.split_whitespace().nth(1)?.parse().ok()
}

/// CPU time a process has used so far, in ns: the sum of its threads' `/proc/<pid>/task/<tid>/schedstat` run times.
/// Exact to the nanosecond (not the 10 ms ticks of `/proc/<pid>/stat`), and time stolen by the hypervisor is not in it.
/// A thread's figure is brought up to date when it stops running or at a scheduler tick, so read it while the process
/// is idle (as the benchmarks do, between wrk runs).
pub fn cpu_ns(pid: u32) -> Option<u64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    // A thread that exits between the listing and the read is skipped, and its time leaves the sum: callers take
    // differences with `checked_sub`.
    Some(tasks.flatten().filter_map(|t| task_cpu_ns(&t.path())).sum())
}

/// One thread's run time from its `schedstat` (`/proc/<pid>/task/<tid>`).
fn task_cpu_ns(task: &Path) -> Option<u64> {
    std::fs::read_to_string(task.join("schedstat")).ok()?.split_whitespace().next()?.parse().ok()
}

/// The handler process's pid when it runs under taskset (taskset execs, so the pid is the same).
pub fn spawn(mut cmd: Command, envs: &[(String, String)]) -> anyhow::Result<Proc> {
    cmd.envs(envs.iter().map(|(k, v)| (k, v))).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    Ok(Proc(cmd.spawn().context("spawning")?))
}

/// What one `wrk` run measured.
#[derive(Clone, Copy, Debug, Default)]
pub struct WrkResult {
    /// Requests completed in the run.
    pub requests: u64,
    pub requests_per_sec: f64,
    pub p50_ms: f64,
    pub errors: u64,
}

/// Runs wrk (pinned to `cpu`) for `secs` with `connections`, optionally with a Lua script.
pub fn wrk(
    cpu: Option<usize>,
    url: &str,
    connections: usize,
    secs: f64,
    script: Option<&Path>,
) -> anyhow::Result<WrkResult> {
    let duration = format!("{}s", secs.max(1.0).round() as u64);
    let conns = connections.to_string();
    let mut args = vec!["-t1", "-c", &conns, "-d", &duration, "--latency", "--timeout", "10s"];
    let script_arg;
    if let Some(s) = script {
        script_arg = s.display().to_string();
        args.push("-s");
        args.push(&script_arg);
    }
    args.push(url);
    let out = command(cpu, Path::new("wrk"), &args).output().context("running wrk (apt-get install wrk)")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    parse_wrk(&text).with_context(|| format!("unreadable wrk output: {text}"))
}

/// Parses `N requests in`, `Requests/sec:`, the `50%` latency line and error counts of wrk's output.
pub fn parse_wrk(text: &str) -> Option<WrkResult> {
    let requests = text.lines().find(|l| l.contains(" requests in "))?.split_whitespace().next()?.parse().ok()?;
    let rps = text.lines().find(|l| l.starts_with("Requests/sec:"))?.split_whitespace().nth(1)?.parse().ok()?;
    let p50 =
        text.lines().map(str::trim).find(|l| l.starts_with("50%"))?.split_whitespace().nth(1).and_then(duration_ms)?;
    let errors = text
        .lines()
        .filter(|l| l.contains("Non-2xx or 3xx responses:") || l.contains("Socket errors:"))
        // The counts follow the colon ("Non-2xx or 3xx responses: 3", "Socket errors: connect 0, read 1, …").
        .filter_map(|l| l.split_once(':').map(|(_, counts)| counts))
        .flat_map(|c| {
            c.split(|ch: char| !ch.is_ascii_digit()).filter_map(|n| n.parse::<u64>().ok()).collect::<Vec<_>>()
        })
        .sum();
    Some(WrkResult { requests, requests_per_sec: rps, p50_ms: p50, errors })
}

fn duration_ms(s: &str) -> Option<f64> {
    let (num, unit) = s.split_at(s.find(|c: char| c.is_ascii_alphabetic())?);
    let v: f64 = num.parse().ok()?;
    Some(match unit {
        "us" => v / 1000.0,
        "ms" => v,
        "s" => v * 1000.0,
        "m" => v * 60_000.0,
        _ => return None,
    })
}

/// Writes a wrk Lua script that POSTs `body` with the host's headers.
pub fn wrk_post_script(dir: &Path, name: &str, body: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join(name);
    let script = format!(
        "wrk.method = \"POST\"\nwrk.headers[\"Content-Type\"] = \"application/json; charset=utf-8\"\n\
         wrk.headers[\"X-Azure-Functions-InvocationId\"] = \"9e7c4b1e-3f4a-4b7e-9d0c-2a1b3c4d5e6f\"\nwrk.body = [==[{body}]==]\n"
    );
    std::fs::write(&path, script)?;
    Ok(path)
}

/// The median of some figures.
pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_wrk_output() {
        let out = "Running 3s test @ http://127.0.0.1:1/\n  1 threads and 8 connections\n  Thread Stats   Avg      Stdev     Max   +/- Stdev\n    Latency   210.00us   40.00us   1.20ms   90.00%\n  Latency Distribution\n     50%  198.00us\n     75%  220.00us\n     90%  250.00us\n     99%  400.00us\n  120000 requests in 3.00s, 20.00MB read\n  Socket errors: connect 0, read 2, write 0, timeout 1\n  Non-2xx or 3xx responses: 3\nRequests/sec:  40000.12\nTransfer/sec:      6.67MB\n";
        let r = parse_wrk(out).expect("parses");
        assert_eq!(r.requests, 120000);
        assert_eq!(r.requests_per_sec, 40000.12);
        assert!((r.p50_ms - 0.198).abs() < 1e-9);
        assert_eq!(r.errors, 6);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
    }

    #[test]
    fn cpu_time_grows_with_work() {
        // This thread's own figure: the test harness's other threads come and go, so the process's sum may shrink.
        let me = Path::new("/proc").join(std::fs::read_link("/proc/thread-self").expect("/proc/thread-self"));
        let Some(before) = task_cpu_ns(&me) else {
            assert!(!me.join("schedstat").exists(), "schedstat exists but was not read");
            assert!(std::env::var("CI").map_or(true, |v| v != "true"), "CI=true, but this kernel has no schedstat");
            eprintln!("WARNING: this kernel has no /proc/<pid>/task/<tid>/schedstat: the CPU-time test was skipped");
            return;
        };
        let mut x = 0u64;
        for i in 0..1_000_000u64 {
            x = std::hint::black_box(x.rotate_left(5) ^ i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        }
        // Sleeping switches this thread out, which brings its run time up to date.
        std::thread::sleep(std::time::Duration::from_millis(2));
        let after = task_cpu_ns(&me).expect("read again");
        assert!(after > before, "{before} -> {after} (x = {x})");
        assert!(cpu_ns(std::process::id()).expect("the process's sum") >= after);
        assert_eq!(cpu_ns(u32::MAX), None, "no such process");
    }
}
