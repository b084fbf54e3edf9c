//! The operators' page with many jobs: job records written to a real Azurite, then the time of `GET /api/jobs`
//! (listing the records with their metadata, building the counters and rendering the page) against the handler.

use std::time::{Duration, Instant};

use blob_batch_monitor::http_client::HttpClient;
use blob_batch_monitor::jobs::record::{JobRecord, RecordState};
use blob_batch_monitor::jobs::records::RecordStore;
use blob_batch_monitor::storage::blob::Condition;
use blob_batch_monitor::storage::{StorageAccount, StorageClient};

use super::nginx::Nginx;
use super::procs::median;
use super::{BenchOptions, Report};
use devstack::azurite::{Azurite, AzuriteOptions};

/// Records written at once.
const WRITES_IN_FLIGHT: usize = 200;

pub fn page(
    o: &BenchOptions,
    nginx: &Nginx,
    runtime: &tokio::runtime::Runtime,
    report: &mut Report,
) -> anyhow::Result<()> {
    let azurite = runtime.block_on(Azurite::start(&o.app_root, &AzuriteOptions::default()))?;
    let conn = azurite.devstore_connection_string();
    let storage = StorageClient::new(
        HttpClient::new(devstack::TOOL_BODY_LIMIT, &Default::default())?,
        StorageAccount::parse(&conn)?,
    );
    let store = RecordStore::new(storage, "batch-records".into());
    let states = [RecordState::Submitted, RecordState::Ended, RecordState::Rejected, RecordState::DeadLettered];
    runtime.block_on(async {
        let ids: Vec<usize> = (0..o.page_records).collect();
        for chunk in ids.chunks(WRITES_IN_FLIGHT) {
            let writes: Vec<_> = chunk
                .iter()
                .map(|&i| {
                    let store = store.clone();
                    let record = JobRecord {
                        blob: format!("batch-input/jobs/{i:06}.jsonl"),
                        etag: "0x8DD1".into(),
                        state: states[i % states.len()],
                        status: Some(if i % 4 == 1 { "completed" } else { "in_progress" }.into()),
                        batch_id: Some(format!("batch_{i:032}")),
                        reason: (i % 4 >= 2).then(|| {
                            "line 12: duplicate_custom_id: `custom_id` \"task-7\" was already used on line 3".into()
                        }),
                        started_at: 1_764_000_000 + i as u64,
                        ..JobRecord::default()
                    };
                    tokio::spawn(async move {
                        store.put(&RecordStore::key(&record.blob, &record.etag), &record, Condition::None).await
                    })
                })
                .collect();
            for w in writes {
                w.await??;
            }
        }
        anyhow::Ok(())
    })?;
    let (_proc, port) =
        super::scenarios::handler_with(o, None, nginx.port, nginx.port, &[("BlobStorageConnection", &conn)])?;
    let client = reqwest::Client::builder().timeout(Duration::from_secs(60)).build()?;
    let (times, bytes) = runtime.block_on(async {
        let (mut times, mut bytes) = (Vec::new(), 0);
        for _ in 0..o.runs.max(1) {
            let started = Instant::now();
            let answer = client.get(format!("http://127.0.0.1:{port}/api/jobs")).send().await?;
            anyhow::ensure!(answer.status().is_success(), "the page answered {}", answer.status());
            bytes = answer.bytes().await?.len();
            times.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        anyhow::Ok((times, bytes))
    })?;
    // The part of the page's time that is Azurite's: the same listing, from here.
    let listing = runtime.block_on(async {
        let mut times = Vec::new();
        for _ in 0..o.runs.max(1) {
            let started = Instant::now();
            let records = store.list().await?;
            anyhow::ensure!(records.len() == o.page_records, "listed {} records", records.len());
            times.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        anyhow::Ok(times)
    })?;
    report.add(
        &format!("Operators' page, {} job records in Azurite: GET /api/jobs (median)", o.page_records),
        median(times),
        "ms",
        Some(("<", 1000.0)),
        format!("list every record's metadata (pages of 5,000), count, sort, render 100 rows; {bytes} bytes of HTML"),
    );
    report.add(
        "Operators' page: of which Azurite listing the records (median)",
        median(listing),
        "ms",
        None,
        "the same List Blobs calls with metadata, made by the bench itself",
    );
    drop(azurite);
    Ok(())
}
