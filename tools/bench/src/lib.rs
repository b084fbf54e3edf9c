//! # bench
//!
//! The benchmark suite, a crate of its own (the product library and the local stack know nothing of it): large-blob streaming, invocation overhead, cold start, memory and deploy size,
//! each measured several times on this machine and reported as a median next to its target, ratios taken against
//! a baseline measured in the same run. `bench/run.sh` builds the release handler and runs it; the test suite runs
//! a smoke pass (`BenchOptions::smoke`) so the harness cannot rot.
//!
//! Public tools do the measuring: `wrk` generates HTTP load, nginx plays the instant upstream, `taskset` pins
//! processes, `/proc/<pid>/status` gives resident memory. The handler runs its production code paths throughout.

mod blob;
mod nginx;
mod page;
pub mod procs;
mod scenarios;
mod split;

use std::fmt::Write as _;
use std::path::PathBuf;

pub use scenarios::run;

/// How much to measure.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// The handler executable under test.
    pub handler: PathBuf,
    /// The app root (host.json), as `FUNCTIONS_APP_ROOT_PATH`.
    pub app_root: PathBuf,
    /// Scratch folder.
    pub work_dir: PathBuf,
    /// Repetitions of each measurement (the median is reported).
    pub runs: usize,
    /// Seconds of each wrk run.
    pub load_secs: f64,
    /// Fake-then-handler pairs for the invocation-overhead ratio, the noisiest figure: more, shorter runs than the
    /// others, so that its median moves less with the machine.
    pub ratio_pairs: usize,
    /// Seconds of each wrk run of those pairs.
    pub ratio_secs: f64,
    /// Size of the large blob.
    pub blob_bytes: usize,
    /// Cold starts to time.
    pub starts: usize,
    /// The static binary to size, if built.
    pub musl_binary: Option<PathBuf>,
    /// Job records behind the operators' page measurement.
    pub page_records: usize,
    /// Requests in the file that is split into parts.
    pub split_requests: u64,
    /// A Python with the `openai` package (bench/requirements.txt), to run the original app's check beside the
    /// handler's; skipped when `None`.
    pub python: Option<PathBuf>,
    /// The parts to measure; all of them when empty.
    pub only: Vec<Part>,
}

/// A part of the suite, to re-measure one figure without the rest (`devstack bench --only large-blob`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    /// Cold start and idle memory.
    Startup,
    /// Status checks against the instant upstream, and the original app's check.
    Checks,
    /// Memory with invocations in flight.
    Memory,
    /// Jobs followed per instance.
    Scale,
    /// The 200 MB blob, validation on and off.
    LargeBlob,
    /// The operators' page over job records in Azurite.
    Page,
    /// A file far over one job's limits: split and merged.
    Split,
    /// The binary's size.
    Size,
}

impl BenchOptions {
    /// Whether this run measures `part`.
    pub fn runs_part(&self, part: Part) -> bool {
        self.only.is_empty() || self.only.contains(&part)
    }

    /// The full run: 5 repetitions, 5 s loads, 11 ratio pairs of 3 s, a 200 MB blob, 21 cold starts.
    pub fn full(handler: PathBuf, app_root: PathBuf, work_dir: PathBuf) -> Self {
        BenchOptions {
            handler,
            app_root,
            work_dir,
            runs: 5,
            load_secs: 5.0,
            ratio_pairs: 11,
            ratio_secs: 3.0,
            blob_bytes: 200 << 20,
            starts: 21,
            page_records: 10_000,
            split_requests: 1_000_000,
            musl_binary: None,
            python: None,
            only: Vec::new(),
        }
    }

    /// A few seconds: proves the harness works, measures nothing worth quoting.
    pub fn smoke(handler: PathBuf, app_root: PathBuf, work_dir: PathBuf) -> Self {
        BenchOptions {
            handler,
            app_root,
            work_dir,
            runs: 1,
            load_secs: 1.0,
            ratio_pairs: 1,
            ratio_secs: 1.0,
            blob_bytes: 4 << 20,
            starts: 3,
            page_records: 300,
            split_requests: 20_000,
            musl_binary: None,
            python: None,
            only: Vec::new(),
        }
    }
}

/// One row of the table.
#[derive(Clone, Debug)]
pub struct Row {
    pub name: String,
    pub value: f64,
    pub unit: &'static str,
    /// `(comparison, limit)`, e.g. `("<", 64.0)`; `None` for figures reported without a target.
    pub target: Option<(&'static str, f64)>,
    pub note: String,
}

impl Row {
    /// Whether the figure meets its target (`None` when there is none).
    pub fn met(&self) -> Option<bool> {
        self.target.map(|(cmp, limit)| match cmp {
            "<" => self.value < limit,
            "<=" => self.value <= limit,
            ">=" => self.value >= limit,
            _ => self.value > limit,
        })
    }
}

/// All rows, rendered as a Markdown table.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub rows: Vec<Row>,
}

impl Report {
    pub fn add(
        &mut self,
        name: &str,
        value: f64,
        unit: &'static str,
        target: Option<(&'static str, f64)>,
        note: impl Into<String>,
    ) {
        self.rows.push(Row { name: name.into(), value, unit, target, note: note.into() });
    }

    pub fn markdown(&self) -> String {
        let mut s = String::from("| Figure | Measured | Target | Met | Notes |\n|---|---|---|---|---|\n");
        for r in &self.rows {
            let target = r.target.map_or("—".to_string(), |(c, l)| format!("{c} {l} {}", r.unit));
            let met = match r.met() {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "—",
            };
            let _ = writeln!(s, "| {} | {:.3} {} | {target} | {met} | {} |", r.name, r.value, r.unit, r.note);
        }
        s
    }
}
