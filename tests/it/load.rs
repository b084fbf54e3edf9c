//! Load: 1,000 blobs dropped at once into the local stack (real handler under the host emulator, Azurite, batch
//! emulator) become 1,000 jobs, each completed once, with no poison entry. Reports the wall time and the number of
//! invocations per job; `LOAD_BLOBS` changes the count.

use std::time::{Duration, Instant};

use crate::helpers::stack::{Stack, StackOptions};
use crate::helpers::{bounded_for, sample_jsonl, wait_for};

fn blobs() -> usize {
    std::env::var("LOAD_BLOBS").ok().and_then(|v| v.parse().ok()).unwrap_or(1000)
}

#[tokio::test]
async fn a_thousand_blobs_become_a_thousand_completed_jobs() {
    bounded_for(Duration::from_secs(600), async {
        let n = blobs();
        let stack = std::sync::Arc::new(Stack::start(StackOptions::default()).await);
        let started = Instant::now();
        let mut uploads = tokio::task::JoinSet::new();
        let content = sample_jsonl(3);
        for i in 0..n {
            let (stack, content) = (stack.clone(), content.clone());
            uploads.spawn(async move { stack.drop_blob(&format!("load/{i:04}.jsonl"), content.as_bytes()).await });
            if uploads.len() >= 32 {
                uploads.join_next().await;
            }
        }
        while uploads.join_next().await.is_some() {}
        let uploaded = started.elapsed();
        let reports = wait_for(&format!("{n} final reports"), Duration::from_secs(540), || async {
            let r = stack.final_reports();
            (r.len() >= n).then_some(r)
        })
        .await;
        let wall = started.elapsed();
        let jobs = stack.emulator.world.jobs();
        assert_eq!(jobs.len(), n, "one job per blob");
        let mut inputs: Vec<&str> = jobs.iter().map(|j| j.input_blob.as_str()).collect();
        inputs.sort_unstable();
        inputs.dedup();
        assert_eq!(inputs.len(), n, "no blob has two jobs");
        assert!(jobs.iter().all(|j| j.status == "completed"));
        assert_eq!(reports.len(), n, "one final report per job");
        assert!(reports.iter().all(|r| r.contains("ended completed")));
        for q in ["monitorjobs-poison", "webjobs-blobtrigger-poison"] {
            assert!(stack.peek(q).await.is_empty(), "{q}");
        }
        let invocations = stack.host.invocations();
        let blob_invocations = invocations.iter().filter(|r| r.function == "BlobMonitor").count();
        let queue_invocations = invocations.len() - blob_invocations;
        let failed = invocations.iter().filter(|r| !r.outcome.succeeded()).count();
        let report = format!(
            "load: {n} blobs uploaded in {:.1} s; all {n} jobs completed {:.1} s after the first upload; \
             {} invocations ({blob_invocations} BlobMonitor, {queue_invocations} QueueMonitor, {failed} failed) = {:.2} per job; \
             batch API calls: {}",
            uploaded.as_secs_f64(),
            wall.as_secs_f64(),
            invocations.len(),
            invocations.len() as f64 / n as f64,
            stack.emulator.world.requests().len(),
        );
        eprintln!("{report}");
        let _ = std::fs::write(std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("load-report.txt"), &report);
    })
    .await;
}
