//! Load: 1,000 blobs dropped at once into the local stack (real handler under the host emulator, Azurite, batch
//! emulator) become 1,000 jobs, each completed once, with no poison entry. Reports the wall time and the number of
//! invocations per job; `LOAD_BLOBS` changes the count.

use std::time::{Duration, Instant};

use crate::helpers::stack::{Stack, StackOptions};
use crate::helpers::{bounded_for, sample_jsonl};

fn blobs() -> usize {
    crate::helpers::count_from_env("LOAD_BLOBS", 1000) as usize
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
        let reports = stack.wait_for_reports(n, Duration::from_secs(540)).await;
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
        stack.assert_no_poison().await;
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

/// Blobs in the chaos test (`CHAOS_BLOBS`; issue 19 found duplicates at 4,000).
fn chaos_blobs() -> usize {
    crate::helpers::count_from_env("CHAOS_BLOBS", 200) as usize
}

#[tokio::test]
async fn under_kills_and_storage_outages_every_blob_has_exactly_one_running_job() {
    use devstack::azurite::{Azurite, AzuriteOptions, Persistence};
    use devstack::batch_emulator::{Faults, Timings};
    let n = chaos_blobs();
    // Creates are held 0.5 s each, four at a time, then each job is checked a few times: about 0.6 s per blob on two
    // cores with the debug handler, beside the uploads, the kills and the outages.
    let limit = Duration::from_secs(300 + n as u64 * 6 / 10);
    bounded_for(limit + Duration::from_secs(300), async {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let dir =
            std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("azurite-chaos-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let options = AzuriteOptions {
            persistence: Persistence::Folder(dir.clone()),
            ports: crate::helpers::azurite::restartable_ports(),
            ..AzuriteOptions::default()
        };
        let mut azurite = Azurite::start(root, &options).await.expect("azurite");
        let stack = Stack::start(StackOptions {
            connection: Some(azurite.devstore_connection_string()),
            timings: Timings::uniform(Duration::from_millis(500)),
            ..StackOptions::default()
        })
        .await;
        // Each create is held after the job exists, so that kills land inside creates.
        stack.emulator.world.set_faults(Faults { hold_create_ms: 500, ..Faults::default() });
        let started = Instant::now();
        let content = sample_jsonl(2);
        for i in 0..n {
            stack.drop_blob(&format!("chaos-{i:05}.jsonl"), content.as_bytes()).await;
        }
        // Kills every 3 to 6 s, and Azurite stopped for 3 s twice, while the blobs are being taken up.
        let worker = stack.host.worker();
        let mut kills = 0;
        for round in 0..12u64 {
            tokio::time::sleep(Duration::from_secs(3 + round % 4)).await;
            worker.kill_handler();
            kills += 1;
            if round == 3 || round == 8 {
                azurite.stop().await;
                tokio::time::sleep(Duration::from_secs(3)).await;
                azurite = Azurite::start(root, &options).await.expect("azurite");
            }
        }
        let progress = async {
            loop {
                tokio::time::sleep(Duration::from_secs(60)).await;
                let jobs = stack.emulator.world.jobs().len();
                eprintln!(
                    "chaos: {:.0} s: {jobs} jobs, {} final reports",
                    started.elapsed().as_secs_f64(),
                    stack.final_reports().len()
                );
            }
        };
        let records = tokio::select! {
            records = stack.wait_for_endings(n, limit) => records,
            () = progress => unreachable!("the progress reporter never ends"),
        };
        let jobs = stack.emulator.world.jobs();
        let mut by_blob: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
        for j in &jobs {
            by_blob.entry(j.input_blob.as_str()).or_default().push(j.status.as_str());
        }
        assert_eq!(by_blob.len(), n, "every blob got a job");
        let unwatched: Vec<_> = by_blob
            .iter()
            .filter(|(_, statuses)| statuses.iter().filter(|s| !matches!(**s, "cancelled" | "cancelling")).count() != 1)
            .collect();
        assert!(unwatched.is_empty(), "blobs without exactly one job that was not cancelled: {unwatched:?}");
        let odd: Vec<_> = records.iter().filter(|r| r.status.as_deref() != Some("completed")).collect();
        assert!(odd.is_empty(), "jobs that did not complete: {odd:#?}");
        stack.assert_no_poison().await;
        let report = format!(
            "chaos: {n} blobs, {kills} handler kills, Azurite stopped twice for 3 s: every blob has one job followed \
             to completion; {} jobs of interrupted creates adopted, {} spare jobs cancelled; {} creates; {:.1} s",
            worker.output().iter().filter(|l| l.contains("an interrupted attempt created")).count(),
            jobs.len() - n,
            stack.emulator.world.count("POST", "/batches") - stack.emulator.world.count("POST", "/cancel"),
            started.elapsed().as_secs_f64()
        );
        eprintln!("{report}");
        azurite.stop().await;
        let _ = std::fs::remove_dir_all(&dir);
    })
    .await;
}
