//! A smoke pass of the benchmark suite (a few seconds, against the debug handler) so that `bench/run.sh` cannot
//! rot: every measurement runs and produces a figure. The figures themselves are not judged here: timings belong to
//! the benchmarks, not to tests.

use std::path::Path;

use bench::{run, BenchOptions};

#[test]
fn the_benchmark_harness_runs_end_to_end() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf();
    let work = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("bench-smoke-{}", std::process::id()));
    let mut options = BenchOptions::smoke(env!("CARGO_BIN_EXE_handler").into(), root.clone(), work.clone());
    // The original app's check runs when its venv is there (scripts/test.sh and bench/run.sh make it).
    let python = root.join("target/bench/venv/bin/python");
    if !python.exists() {
        crate::helpers::skipped(
            "the original app's Python client is missing (scripts/test.sh makes target/bench/venv)",
        );
    }
    options.python = python.exists().then_some(python);
    let report = run(&options).expect("the bench runs");
    let names: Vec<&str> = report.rows.iter().map(|r| r.name.as_str()).collect();
    for expected in [
        "Cold start",
        "Idle resident memory",
        "terminal path: throughput",
        "terminal path: median latency",
        "running path",
        "256 invocations in flight",
        "Jobs one instance can monitor",
        "Large blob",
        "Chunked",
        "ContentLength",
        "Deploy size",
        "Split (",
        "Merge of the",
    ] {
        assert!(names.iter().any(|n| n.contains(expected)), "no `{expected}` row in {names:#?}");
    }
    if options.python.is_some() {
        assert!(names.iter().any(|n| n.contains("original Python check")), "no original-app row in {names:#?}");
    }
    // The CPU-time split needs schedstat in /proc, which Linux kernels of this kind have.
    if Path::new("/proc/self/schedstat").exists() {
        assert!(names.iter().any(|n| n.contains("CPU per request")), "no CPU-time row in {names:#?}");
    } else {
        crate::helpers::skipped("this kernel has no /proc/<pid>/schedstat, so there is no CPU-time row");
    }
    // Figures are positive, but a smoke pass's tiny blob can take no measurable time beyond its fixed part.
    assert!(report.rows.iter().all(|r| r.value.is_finite() && r.value >= 0.0), "{}", report.markdown());
    assert!(report.rows.iter().filter(|r| r.value > 0.0).count() > report.rows.len() / 2, "{}", report.markdown());
    assert!(report.markdown().lines().count() == report.rows.len() + 2);
    let _ = std::fs::remove_dir_all(work);
}
