//! The measurements. Each function adds its rows to the report; see the module docs of `bench` for the method.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use blob_batch_monitor::storage::connection::{DEVSTORE_ACCOUNT, DEVSTORE_KEY};
use blob_batch_monitor::storage::StorageAccount;

use super::blob::{self, Framing};
use super::nginx::{Nginx, DONE, RUNNING};
use super::procs::{
    command, cpu_ns, free_port, median, spawn, status_kb, wait_ready, wrk, wrk_post_script, Proc, WrkResult,
};
use super::Part;
use super::{BenchOptions, Report};
use devstack::batch_emulator::{BatchEmulator, EmulatorConfig, Faults, Timings};
use devstack::host_emulator::envelope::{queue_envelope, QueueInfo};

/// The core the handler and its upstream share, and the core of the load generator.
const SHARED_CPU: usize = 0;
const LOAD_CPU: usize = 1;

/// Runs every measurement.
pub fn run(o: &BenchOptions) -> anyhow::Result<Report> {
    std::fs::create_dir_all(&o.work_dir)?;
    let pin = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) >= 2;
    let (shared, load) = if pin { (Some(SHARED_CPU), Some(LOAD_CPU)) } else { (None, None) };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let nginx = Nginx::start(&o.work_dir.join("nginx"), shared)?;
    let mut report = Report::default();
    // Start-up and memory for each build: the static musl build has its own allocator (mimalloc).
    let musl = o.musl_binary.as_ref().map(|m| BenchOptions { handler: m.clone(), ..o.clone() });
    let builds = std::iter::once((o, "")).chain(musl.as_ref().map(|m| (m, " (static musl build)")));
    if o.runs_part(Part::Startup) {
        for (build, label) in builds.clone() {
            startup(build, &nginx, label, &mut report)?;
        }
    }
    if o.runs_part(Part::Checks) {
        overhead(o, &nginx, shared, load, &mut report)?;
    }
    if o.runs_part(Part::Memory) {
        for (build, label) in builds {
            in_flight_memory(build, &nginx, &runtime, load, label, &mut report)?;
        }
    }
    if o.runs_part(Part::Scale) {
        scale(o, &nginx, &runtime, load, &mut report)?;
    }
    if o.runs_part(Part::LargeBlob) {
        large_blob(o, &nginx, &mut report)?;
    }
    if o.runs_part(Part::Page) {
        super::page::page(o, &nginx, &runtime, &mut report)?;
    }
    if o.runs_part(Part::Split) {
        super::split::split(o, &nginx, &runtime, &mut report)?;
    }
    if o.runs_part(Part::Size) {
        deploy_size(o, &mut report)?;
    }
    Ok(report)
}

/// The handler's settings, with both upstreams pointing at `api` and `storage` ports.
fn env(o: &BenchOptions, port: u16, api: u16, storage: u16) -> Vec<(String, String)> {
    let conn = StorageAccount::shared_key_connection_string(
        DEVSTORE_ACCOUNT,
        DEVSTORE_KEY,
        &format!("http://127.0.0.1:{storage}/{DEVSTORE_ACCOUNT}"),
        &format!("http://127.0.0.1:{storage}/{DEVSTORE_ACCOUNT}"),
    );
    [
        ("FUNCTIONS_CUSTOMHANDLER_PORT", port.to_string()),
        ("FUNCTIONS_APP_ROOT_PATH", o.app_root.display().to_string()),
        ("OPENAI_ENDPOINT", format!("http://127.0.0.1:{api}")),
        ("OPENAI_API_KEY", "bench-key".into()),
        ("BATCH_OUTPUT_CONTAINER", "batch-output".into()),
        ("BATCH_RETRY_DELAY", "30".into()),
        ("BlobStorageConnection", conn),
        // Completion events off: a terminal check then does what the original app's does (one retrieve and a log
        // line); `overhead_of` measures the path with its event separately.
        ("BATCH_COMPLETED_QUEUE", String::new()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// Starts the handler (pinned to `cpu`) and waits for it.
fn handler(o: &BenchOptions, cpu: Option<usize>, api: u16, storage: u16) -> anyhow::Result<(Proc, u16)> {
    handler_with(o, cpu, api, storage, &[])
}

/// The same, with `extra` settings.
pub(super) fn handler_with(
    o: &BenchOptions,
    cpu: Option<usize>,
    api: u16,
    storage: u16,
    extra: &[(&str, &str)],
) -> anyhow::Result<(Proc, u16)> {
    let port = free_port()?;
    let mut settings = env(o, port, api, storage);
    settings.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let proc = spawn(command(cpu, &o.handler, &[]), &settings)?;
    wait_ready(port, Duration::from_secs(10)).context("the handler did not start")?;
    Ok((proc, port))
}

/// Invokes QueueMonitor on `port` with message `text` and waits for its answer, which must be a success.
pub(super) async fn post_queue(port: u16, text: &str) -> anyhow::Result<()> {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(600)).build()?;
    let answer = client
        .post(format!("http://127.0.0.1:{port}/QueueMonitor"))
        .header("content-type", "application/json")
        .body(queue_body(text))
        .send()
        .await?;
    let status = answer.status();
    let body = answer.text().await?;
    anyhow::ensure!(status.is_success(), "QueueMonitor answered {status}: {body}");
    Ok(())
}

/// A QueueMonitor envelope for `text`, as the host sends it.
fn queue_body(text: &str) -> String {
    let info = QueueInfo {
        id: "6c5d8a4e-2f1b-4c3d-9e8f-7a6b5c4d3e2f",
        pop_receipt: "AgAAAAMAAAAAAAAAAgtnj8x+1QE=",
        dequeue_count: 1,
        insertion_time: "2026-11-28T10:00:00+00:00",
        expiration_time: "2026-12-05T10:00:00+00:00",
        next_visible_time: "2026-11-28T10:10:00+00:00",
    };
    String::from_utf8_lossy(&queue_envelope("QueueMonitor", "job", text.as_bytes(), false, &info)).into_owned()
}

fn startup(o: &BenchOptions, nginx: &Nginx, label: &str, report: &mut Report) -> anyhow::Result<()> {
    let mut times = Vec::new();
    for _ in 0..o.starts {
        let port = free_port()?;
        let started = Instant::now();
        let proc = spawn(command(None, &o.handler, &[]), &env(o, port, nginx.port, nginx.port))?;
        wait_ready(port, Duration::from_secs(10))?;
        times.push(started.elapsed().as_secs_f64() * 1000.0);
        drop(proc);
    }
    report.add(
        &format!("Cold start{label}: process start to first answered `GET /` (median)"),
        median(times),
        "ms",
        Some(("<", 5.0)),
        format!("{} starts, busy-polling every 0.2 ms (the host polls every 25 ms)", o.starts),
    );
    let (proc, _) = handler(o, None, nginx.port, nginx.port)?;
    std::thread::sleep(Duration::from_secs(1));
    let idle = status_kb(proc.pid(), "VmRSS").unwrap_or(0) as f64 / 1024.0;
    report.add(&format!("Idle resident memory{label} (VmRSS 1 s after ready)"), idle, "MB", Some(("<", 8.0)), "");
    Ok(())
}

fn overhead(
    o: &BenchOptions,
    nginx: &Nginx,
    shared: Option<usize>,
    load: Option<usize>,
    report: &mut Report,
) -> anyhow::Result<()> {
    let (proc, port) = handler(o, shared, nginx.port, nginx.port)?;
    overhead_of(o, nginx, shared, load, (proc.pid(), port), "", report)?;
    drop(proc);
    // The same terminal check with its completion event (a second storage call, Put Message).
    let events = [("BATCH_COMPLETED_QUEUE", "batch-completed")];
    let (_with_events, events_port) = handler_with(o, shared, nginx.port, nginx.port, &events)?;
    let url = format!("http://127.0.0.1:{events_port}/QueueMonitor");
    let plain = format!(r#"{{"batchId":"{DONE}","blob":"batch-input/job1.jsonl","attempt":3}}"#);
    let script = wrk_post_script(&o.work_dir, "terminal-events.lua", &queue_body(&plain))?;
    wrk(load, &url, 8, 1.0, Some(&script))?;
    let mut rps = Vec::new();
    for _ in 0..o.runs {
        let r = wrk(load, &url, 8, o.load_secs, Some(&script))?;
        anyhow::ensure!(r.errors == 0, "the handler answered errors under load");
        rps.push(r.requests_per_sec);
    }
    report.add(
        "QueueMonitor terminal path with its completion event: throughput (median)",
        median(rps),
        "checks/s",
        None,
        "a retrieve, then Put Message of the event; the rows above run with events off, as the original app's check",
    );
    if let Some(musl) = &o.musl_binary {
        // The deployed build: same protocol, the static binary.
        let musl_options = BenchOptions { handler: musl.clone(), ..o.clone() };
        let (musl_proc, musl_port) = handler(&musl_options, shared, nginx.port, nginx.port)?;
        overhead_of(o, nginx, shared, load, (musl_proc.pid(), musl_port), " (static musl build)", report)?;
    }
    Ok(())
}

/// Queue messages one instance works on at once with the host's defaults: `batchSize` 16 + `newBatchThreshold` 8.
const HOST_QUEUE_CONCURRENCY: usize = 24;

/// The overhead rows for the handler process `pid` listening on `port`.
fn overhead_of(
    o: &BenchOptions,
    nginx: &Nginx,
    shared: Option<usize>,
    load: Option<usize>,
    (pid, port): (u32, u16),
    label: &str,
    report: &mut Report,
) -> anyhow::Result<()> {
    let dir = &o.work_dir;
    let plain = |id: &str| format!(r#"{{"batchId":"{id}","blob":"batch-input/job1.jsonl","attempt":3}}"#);
    let terminal = wrk_post_script(dir, "terminal.lua", &queue_body(&plain(DONE)))?;
    let running = wrk_post_script(dir, "running.lua", &queue_body(&plain(RUNNING)))?;
    let fake_url = format!("http://127.0.0.1:{}/openai/batches/{DONE}?api-version=2025-04-01-preview", nginx.port);
    let handler_url = format!("http://127.0.0.1:{port}/QueueMonitor");
    // Warm both up (connection pools, page cache).
    wrk(load, &handler_url, 8, 1.0, Some(&terminal))?;
    let (mut ratios, mut p50s, mut running_ratios, mut running_p50s, mut fake_rps, mut handler_rps) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut host_concurrency_ratios = Vec::new();
    let mut costs = Costs::default();
    // Each ratio is taken against nginx measured just before, on the same cores, so a slow or fast spell of the
    // machine moves both. The terminal ratio (the target) gets the most pairs; the other figures get `runs`.
    for i in 0..o.ratio_pairs.max(o.runs) {
        let fake_t0 = cpu_ns(nginx.pid());
        let fake = wrk(load, &fake_url, 8, o.ratio_secs, None)?;
        let (fake_t1, handler_t0) = (cpu_ns(nginx.pid()), cpu_ns(pid));
        let done = wrk(load, &handler_url, 8, o.ratio_secs, Some(&terminal))?;
        anyhow::ensure!(done.errors == 0, "the handler answered errors under load");
        costs.add([fake_t0, fake_t1, cpu_ns(nginx.pid())], [handler_t0, cpu_ns(pid)], &fake, &done);
        ratios.push(done.requests_per_sec / fake.requests_per_sec);
        p50s.push(done.p50_ms);
        fake_rps.push(fake.requests_per_sec);
        handler_rps.push(done.requests_per_sec);
        if i >= o.runs {
            continue;
        }
        let run = wrk(load, &handler_url, 8, o.load_secs, Some(&running))?;
        // The same comparison with as many requests in flight as the host sends one queue function by default.
        let fake_24 = wrk(load, &fake_url, HOST_QUEUE_CONCURRENCY, o.load_secs, None)?;
        let done_24 = wrk(load, &handler_url, HOST_QUEUE_CONCURRENCY, o.load_secs, Some(&terminal))?;
        anyhow::ensure!(run.errors == 0 && done_24.errors == 0, "the handler answered errors under load");
        host_concurrency_ratios.push(done_24.requests_per_sec / fake_24.requests_per_sec);
        running_ratios.push(run.requests_per_sec / fake.requests_per_sec);
        running_p50s.push(run.p50_ms);
    }
    let handler_median = median(handler_rps.clone());
    let pinned =
        if shared.is_some() { "handler and nginx pinned to core 0, wrk to core 1" } else { "unpinned (one core)" };
    let (lowest, highest) = ratios.iter().fold((f64::MAX, 0.0f64), |(lo, hi), &r| (lo.min(r), hi.max(r)));
    let pairs = ratios.len();
    report.add(
        &format!("QueueMonitor terminal path{label}: throughput ÷ the fake API's own (median)"),
        median(ratios),
        "×",
        None,
        format!(
            "information only; {:.0} vs {:.0} req/s; {pairs} pairs, {lowest:.3}–{highest:.3}; 8 connections; {pinned}",
            median(handler_rps),
            median(fake_rps)
        ),
    );
    report.add(
        &format!("QueueMonitor terminal path{label}: the same ratio at {HOST_QUEUE_CONCURRENCY} connections (median)"),
        median(host_concurrency_ratios),
        "×",
        None,
        "the host's default queue concurrency (batchSize 16 + newBatchThreshold 8); the target is read at 8",
    );
    let handler_cpu_per_check = costs.per_check();
    costs.report(label, report);
    if label.is_empty() {
        original_app(o, nginx, shared, handler_median, handler_cpu_per_check, report)?;
    }
    let latency = format!("QueueMonitor terminal path{label}: median latency at 8 connections");
    report.add(&latency, median(p50s), "ms", Some(("<", 1.0)), "");
    report.add(
        &format!("QueueMonitor running path{label} (GET + Put Message): throughput ÷ the fake API's own"),
        median(running_ratios),
        "×",
        None,
        "two upstream calls per invocation against the fake's one",
    );
    let running_latency = format!("QueueMonitor running path{label}: median latency at 8 connections");
    report.add(&running_latency, median(running_p50s), "ms", None, "");
    Ok(())
}

/// Where the shared core's time goes in the terminal-path pairs, from the processes' own CPU time: the fake's time
/// per request when it serves wrk alone, and per check the handler's time and the fake's time serving the handler.
/// Their quotient is the cost form of the throughput ratio (the issue's "the handler may add at most four times the
/// upstream's own cost"), and it shows which side a change moved.
#[derive(Default)]
struct Costs {
    fake_alone: Vec<f64>,
    handler: Vec<f64>,
    fake_for_handler: Vec<f64>,
    ratios: Vec<f64>,
}

impl Costs {
    /// One pair, from CPU-time readings (ns): the fake's before its own run, between the runs and after the
    /// handler's; the handler's before and after its run. Skipped when `/proc` has no schedstat.
    fn add(&mut self, fake_cpu: [Option<u64>; 3], handler_cpu: [Option<u64>; 2], fake: &WrkResult, done: &WrkResult) {
        let ([Some(f0), Some(f1), Some(f2)], [Some(h0), Some(h1)]) = (fake_cpu, handler_cpu) else {
            return;
        };
        let (Some(alone), Some(handler), Some(upstream)) = (f1.checked_sub(f0), h1.checked_sub(h0), f2.checked_sub(f1))
        else {
            return;
        };
        if fake.requests == 0 || done.requests == 0 {
            return;
        }
        let per = |ns: u64, n: u64| ns as f64 / n as f64 / 1000.0;
        let (alone, handler, upstream) =
            (per(alone, fake.requests), per(handler, done.requests), per(upstream, done.requests));
        self.fake_alone.push(alone);
        self.handler.push(handler);
        self.fake_for_handler.push(upstream);
        self.ratios.push(alone / (handler + upstream));
    }

    /// A check's CPU on the shared core, handler and fake together (µs, median), if measured.
    fn per_check(&self) -> Option<f64> {
        (!self.handler.is_empty()).then(|| median(self.handler.clone()) + median(self.fake_for_handler.clone()))
    }

    fn report(self, label: &str, report: &mut Report) {
        if self.ratios.is_empty() {
            return;
        }
        let (alone, handler, upstream) = (median(self.fake_alone), median(self.handler), median(self.fake_for_handler));
        report.add(
            &format!("QueueMonitor terminal path{label}: the fake's CPU per request ÷ a check's CPU (median)"),
            median(self.ratios),
            "×",
            None,
            format!(
                "a check: {handler:.1} µs handler + {upstream:.1} µs fake serving it; the fake alone: {alone:.1} µs per \
                 request (medians; run time from /proc schedstat, same pairs)"
            ),
        );
    }
}

/// A handler whose batch API is an emulator holding every answer for `delay_ms`, with one job in it, and a wrk
/// script that checks that job.
struct HeldUpstream {
    _emulator: BatchEmulator,
    handler: Proc,
    port: u16,
    script: std::path::PathBuf,
}

fn held_upstream(
    o: &BenchOptions,
    nginx: &Nginx,
    runtime: &tokio::runtime::Runtime,
    timings: Timings,
    delay_ms: u64,
    script: &str,
) -> anyhow::Result<HeldUpstream> {
    let (emulator, id) = emulator(runtime, timings)?;
    // Faults apply to API answers only, not to the job's own progress.
    emulator.world.set_faults(Faults { delay_ms, ..Faults::default() });
    let (handler, port) = handler(o, None, port_of(&emulator.uri()), nginx.port)?;
    let script = wrk_post_script(&o.work_dir, script, &queue_body(&format!(r#"{{"batchId":"{id}","attempt":1}}"#)))?;
    Ok(HeldUpstream { _emulator: emulator, handler, port, script })
}

/// Starts a batch emulator on `runtime` and creates one job in it; returns both.
fn emulator(runtime: &tokio::runtime::Runtime, timings: Timings) -> anyhow::Result<(BatchEmulator, String)> {
    let _guard = runtime.enter();
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let emulator = BatchEmulator::start(
        tokio::net::TcpListener::from_std(listener)?,
        EmulatorConfig::new("bench-key", Vec::new(), timings),
    )?;
    let uri = emulator.uri();
    let id = runtime.block_on(async {
        let r = reqwest::Client::new()
            .post(format!("{uri}/openai/v1/batches"))
            .header("api-key", "bench-key")
            .body(r#"{"input_file_id":null,"endpoint":"/chat/completions","completion_window":"24h","input_blob":"http://127.0.0.1/a/b/c.jsonl","output_folder":{"url":"http://127.0.0.1/a/out"}}"#)
            .send()
            .await?;
        let v: serde_json::Value = serde_json::from_slice(&r.bytes().await?)?;
        anyhow::Ok(v["id"].as_str().unwrap_or_default().to_string())
    })?;
    Ok((emulator, id))
}

fn port_of(uri: &str) -> u16 {
    uri.rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or(0)
}

fn in_flight_memory(
    o: &BenchOptions,
    nginx: &Nginx,
    runtime: &tokio::runtime::Runtime,
    load: Option<usize>,
    label: &str,
    report: &mut Report,
) -> anyhow::Result<()> {
    // A job that ends at once (its input is unreachable); every answer is held for a second.
    let up = held_upstream(o, nginx, runtime, Timings::uniform(Duration::from_millis(10)), 1000, "held.lua")?;
    std::thread::sleep(Duration::from_millis(300));
    let (proc, port, script) = (up.handler, up.port, up.script);
    let pid = proc.pid();
    let sampler = std::thread::spawn(move || {
        let mut peak = 0;
        let until = Instant::now() + Duration::from_secs(30);
        while Instant::now() < until {
            match status_kb(pid, "VmRSS") {
                Some(kb) => peak = peak.max(kb),
                None => break,
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        peak
    });
    let secs = o.load_secs.max(3.0);
    let result = wrk(load, &format!("http://127.0.0.1:{port}/QueueMonitor"), 256, secs, Some(&script))?;
    let hwm = status_kb(pid, "VmHWM").unwrap_or(0);
    drop(proc);
    let sampled = sampler.join().unwrap_or(0);
    report.add(
        &format!("Resident memory{label} with 256 invocations in flight (peak)"),
        hwm.max(sampled) as f64 / 1024.0,
        "MB",
        Some(("<", 40.0)),
        format!(
            "fake API holds each call 1 s; {:.0} req/s observed (256 would be every slot busy)",
            result.requests_per_sec
        ),
    );
    Ok(())
}

fn scale(
    o: &BenchOptions,
    nginx: &Nginx,
    runtime: &tokio::runtime::Runtime,
    load: Option<usize>,
    report: &mut Report,
) -> anyhow::Result<()> {
    // Running jobs, an API that answers in 100 ms (a realistic Azure latency), the host's 16 + 8 concurrent checks.
    let up = held_upstream(o, nginx, runtime, Timings::uniform(Duration::from_secs(3600)), 100, "scale.lua")?;
    let (port, script) = (up.port, &up.script);
    let r = wrk(
        load,
        &format!("http://127.0.0.1:{port}/QueueMonitor"),
        HOST_QUEUE_CONCURRENCY,
        o.load_secs.max(2.0),
        Some(script),
    )?;
    report.add("Jobs one instance can monitor at BATCH_RETRY_DELAY=30 (checks/s × 30)", r.requests_per_sec * 30.0, "jobs", Some((">=", 5000.0)),
        format!("{:.0} checks/s with 24 in flight and a 100 ms API; sleeping in the function: 24 jobs (24 slots ÷ 1 job each)", r.requests_per_sec));
    Ok(())
}

fn large_blob(o: &BenchOptions, nginx: &Nginx, report: &mut Report) -> anyhow::Result<()> {
    let url = format!("http://127.0.0.1:{}/{DEVSTORE_ACCOUNT}/batch-input/big.jsonl", nginx.port);
    let body = blob::envelope(o.blob_bytes, &url);
    // The same invocation with a one-request file: its storage round trips (HEAD, record, lease, create) are the
    // fixed part, timed each run and taken off.
    let tiny = blob::envelope(0, &url);
    let mb = body.len() as f64 / (1 << 20) as f64;
    let blob_mb = o.blob_bytes >> 20;
    // (label, setting, peak limit, time limit)
    let configs = [("validation on", "true", 32.0, 3.0), ("validation off", "false", 16.0, 2.0)];
    for (label, setting, peak_limit, time_limit) in configs {
        let extra = [("BATCH_VALIDATE_INPUT", setting)];
        let (proc, port) = handler_with(o, None, nginx.port, nginx.port, &extra)?;
        let mut rows = Vec::new();
        for framing in [Framing::Chunked, Framing::ContentLength] {
            let (mut handler_times, mut discard_times, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..o.runs {
                let (_, d) = blob::post(nginx.port, super::nginx::DISCARD, &body, framing)?;
                let (_, fixed) = blob::post(port, "/BlobMonitor", &tiny, framing)?;
                let (_, h) = blob::post(port, "/BlobMonitor", &body, framing)?;
                let net = h.saturating_sub(fixed);
                handler_times.push(net.as_secs_f64() * 1000.0);
                discard_times.push(d.as_secs_f64() * 1000.0);
                ratios.push(net.as_secs_f64() / d.as_secs_f64());
            }
            rows.push((framing, median(ratios), median(handler_times), median(discard_times)));
        }
        let hwm = status_kb(proc.pid(), "VmHWM").unwrap_or(0) as f64 / 1024.0;
        report.add(
            &format!("Large blob ({blob_mb} MB JSONL, {mb:.0} MB envelope), {label}: handler peak memory (VmHWM)"),
            hwm,
            "MB",
            Some(("<", peak_limit)),
            "over every post, both framings; requests of ~2.2 KB, ~95,000 in 200 MB",
        );
        for (framing, ratio, h, d) in rows {
            report.add(
                &format!("Large blob, {label}, {framing:?}: time net of the fixed round trips ÷ nginx reading and discarding it"),
                ratio,
                "×",
                Some(("<=", time_limit)),
                format!("{h:.0} ms vs {d:.0} ms (medians; the fixed part is a one-request file's invocation, timed each run)"),
            );
        }
    }
    Ok(())
}

/// The original app's status check (`bench/original_check.py`: `AzureOpenAI(...).batches.retrieve(id)`, one Python
/// process) against the same fake on the same core, right after the handler's pairs: checks per second, and CPU per
/// check with the fake's share, against the handler's.
fn original_app(
    o: &BenchOptions,
    nginx: &Nginx,
    shared: Option<usize>,
    handler_rps: f64,
    handler_cpu: Option<f64>,
    report: &mut Report,
) -> anyhow::Result<()> {
    let Some(python) = &o.python else { return Ok(()) };
    let script = o.app_root.join("bench/original_check.py");
    let endpoint = format!("http://127.0.0.1:{}", nginx.port);
    let secs = format!("{}", o.load_secs);
    let (mut rps, mut cpu) = (Vec::new(), Vec::new());
    for _ in 0..o.runs {
        let mut cmd = command(shared, python, &[&script.display().to_string(), &endpoint, DONE, "--seconds", &secs]);
        cmd.stdin(std::process::Stdio::null()).stderr(std::process::Stdio::null());
        let child = cmd.stdout(std::process::Stdio::piped()).spawn().context("starting the original check")?;
        let fake0 = cpu_ns(nginx.pid());
        let out = child.wait_with_output()?;
        let fake1 = cpu_ns(nginx.pid());
        let text = String::from_utf8_lossy(&out.stdout);
        let numbers: Vec<f64> = text.split_whitespace().filter_map(|n| n.parse().ok()).collect();
        let [checks, elapsed, own_cpu] = numbers[..] else {
            anyhow::bail!("the original check printed `{}` (bench/run.sh installs its venv)", text.trim());
        };
        anyhow::ensure!(checks > 0.0 && out.status.success(), "the original check failed");
        rps.push(checks / elapsed);
        if let (Some(f0), Some(f1)) = (fake0, fake1) {
            // The fake served only this loop meanwhile (plus the imports' idle time, which costs it nothing).
            cpu.push((own_cpu * 1e6 + f1.saturating_sub(f0) as f64 / 1000.0) / checks);
        }
    }
    let original = median(rps);
    report.add(
        "Handler checks per second ÷ the original Python check's (same core, same fake, same run)",
        handler_rps / original,
        "×",
        Some((">=", 10.0)),
        format!("{handler_rps:.0} vs {original:.0} checks/s; the original: openai's AzureOpenAI.batches.retrieve in one process"),
    );
    if let (Some(h), false) = (handler_cpu, cpu.is_empty()) {
        let py = median(cpu);
        report.add(
            "The original check's core time per check ÷ the handler's",
            py / h,
            "×",
            None,
            format!("{py:.0} µs vs {h:.1} µs per check, each with the fake's share"),
        );
    }
    Ok(())
}

fn deploy_size(o: &BenchOptions, report: &mut Report) -> anyhow::Result<()> {
    let (path, note) = match &o.musl_binary {
        Some(p) => (p.clone(), "static x86_64-unknown-linux-musl release build"),
        None => (o.handler.clone(), "the binary under test (not the static musl build)"),
    };
    let size = std::fs::metadata(Path::new(&path)).with_context(|| format!("{}", path.display()))?.len() as f64
        / (1 << 20) as f64;
    report.add("Deploy size of `handler`", size, "MB", o.musl_binary.as_ref().map(|_| ("<", 10.0)), note);
    Ok(())
}
