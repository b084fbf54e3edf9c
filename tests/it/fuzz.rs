//! Mutational fuzzing of everything that parses untrusted input: the streaming blob-envelope reader (checked against
//! a full `serde_json` parse), the envelope decoders, the queue message parser, connection strings and Batch
//! objects, and finally the running router. Seeds are the protocol doc's examples; mutations are byte flips,
//! JSON-significant insertions, deletions, duplications, splices and truncations, from a seeded generator.
//!
//! `FUZZ_ITERATIONS` (default 20,000) and `FUZZ_SEED` set the run; `scripts/fuzz.sh` runs a long one. A failing
//! input is written to `target/tmp/fuzz-failure-<seed>.bin`.

use std::panic::{catch_unwind, AssertUnwindSafe};

use blob_batch_monitor::batch_api::Batch;
use blob_batch_monitor::jobs::message::{parse_work, validate_batch_id, Work};
use blob_batch_monitor::protocol::blob_envelope::ElidingReader;
use blob_batch_monitor::protocol::InvokeRequest;
use blob_batch_monitor::storage::StorageAccount;
use serde_json::Value;

use crate::helpers::{bounded, spawn_app};

const SEEDS: &[&str] = &[
    r#"{"Data":{"inputBlob":"eyJjdXN0b21faWQiOiJ0YXNrLTAifQo="},"Metadata":{"Uri":"\"https://myaccount.blob.core.windows.net/batch-input/job1.jsonl\"","Properties":{"LastModified":"2025-01-01T00:00:00+00:00","ContentLength":141,"BlobType":0,"Metadata":{}},"Metadata":{},"name":"\"job1.jsonl\"","sys":{"MethodName":"BlobMonitor","UtcNow":"2025-01-01T00:00:05.1234567Z"}}}"#,
    r#"{"Data":{"job":"\"{\\\"batchId\\\":\\\"batch_72a2792ef7d24ba7b82c7fe4a37e379f\\\",\\\"blob\\\":\\\"batch-input/job1.jsonl\\\",\\\"attempt\\\":1}\""},"Metadata":{"DequeueCount":"1","Id":"\"6c5d8a4e\"","PopReceipt":"\"AgAAAAMAAAAAAAAAAgtnj8x+1QE=\"","batchId":"\"batch_72a2792ef7d24ba7b82c7fe4a37e379f\"","attempt":"\"1\"","sys":{}}}"#,
    r#"{"Data":{"myQueueItem":"{ message: \"Message sent\" }"},"Metadata":{"DequeueCount":1,"Id":"800ae4b3"}}"#,
    r#"{"submit":"http://127.0.0.1:10000/devstoreaccount1/batch-input/a.jsonl","blob":"batch-input/a.jsonl","etag":"0x8D1","attempt":2}"#,
    r#"{"batchId":"batch_fe3f047a-de39-4068-9008-346795bfc1db","blob":"batch-input/x","etag":"0x1","attempt":3,"failures":1}"#,
    "batch_fe3f047a-de39-4068-9008-346795bfc1db",
    "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;QueueEndpoint=http://127.0.0.1:10001/devstoreaccount1;",
    r#"{"id":"b","status":"failed","errors":{"object":"list","data":[{"code":"empty_file","message":"m","line":"3"}]},"request_counts":{"total":null},"output_blob":""}"#,
];

/// xorshift64*.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545F4914F6CDD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    const SPECIAL: &[u8] = b"\"\\{}[]:,0 \n\x00\xff";
    let mut v = input.to_vec();
    for _ in 0..=rng.below(4) {
        let at = rng.below(v.len() + 1);
        match rng.below(7) {
            0 if !v.is_empty() => {
                let i = at.min(v.len() - 1);
                v[i] ^= 1 << rng.below(8);
            }
            1 => v.insert(at, SPECIAL[rng.below(SPECIAL.len())]),
            2 if at < v.len() => {
                let end = (at + rng.below(16) + 1).min(v.len());
                v.drain(at..end);
            }
            3 if at < v.len() => {
                let end = (at + rng.below(32) + 1).min(v.len());
                let chunk = v[at..end].to_vec();
                let to = rng.below(v.len() + 1);
                v.splice(to..to, chunk);
            }
            4 => {
                let other = SEEDS[rng.below(SEEDS.len())].as_bytes();
                let from = rng.below(other.len());
                v.splice(at..at, other[from..].iter().take(rng.below(64)).copied());
            }
            5 => v.truncate(at),
            _ => v.insert(at, rng.next() as u8),
        }
    }
    v
}

/// The properties every input must satisfy; panics (caught by the driver) on a violation.
fn check(input: &[u8], chunking: usize) {
    // 1. The streaming reader never panics, and agrees with a full parse whenever `Data` holds only strings.
    let mut reader = ElidingReader::new(1 << 20);
    let fed = input.chunks(chunking.max(1)).try_for_each(|c| reader.feed(c));
    let streamed = fed.ok().and_then(|_| reader.finish().ok());
    if let Ok(Value::Object(full)) = serde_json::from_slice::<Value>(input) {
        let data_is_strings =
            full.get("Data").and_then(Value::as_object).is_some_and(|d| d.values().all(Value::is_string));
        let keys_unique = serde_json::from_slice::<InvokeRequest>(input).is_ok();
        if data_is_strings && keys_unique && full.keys().filter(|k| k.eq_ignore_ascii_case("data")).count() == 1 {
            let (req, elided) = streamed.expect("the reader must accept what serde_json accepts");
            let expected_meta = full.get("Metadata").and_then(Value::as_object).cloned().unwrap_or_default();
            assert_eq!(req.metadata, expected_meta, "metadata differs from a full parse");
            // Every Data value is elided (a repeated key is elided each time; the parse keeps the last one).
            let names: std::collections::BTreeSet<&str> = elided.iter().map(|e| e.binding.as_str()).collect();
            let keys: std::collections::BTreeSet<&str> =
                full["Data"].as_object().map(|d| d.keys().map(String::as_str).collect()).unwrap_or_default();
            assert_eq!(names, keys, "every Data string is elided");
        }
    }
    // 2. Envelope decoders and the message parser never panic; whatever they accept is safe to use.
    if let Ok(req) = InvokeRequest::from_slice(input) {
        let _ = req.metadata_u64("DequeueCount");
        let _ = req.metadata_str("Uri");
        if let Ok(text) = req.queue_text("job") {
            accept_work(&text);
        }
    }
    accept_work(&String::from_utf8_lossy(input));
    // 3. Connection strings and Batch objects never panic.
    let _ = StorageAccount::parse(&String::from_utf8_lossy(input));
    let _ = serde_json::from_slice::<Batch>(input);
}

fn accept_work(text: &str) {
    match parse_work(text, "http://127.0.0.1:10000/devstoreaccount1") {
        Ok(Work::Check(m)) => {
            assert!(validate_batch_id(&m.batch_id).is_ok() && !m.batch_id.contains(['/', '?', '#', ' ']))
        }
        Ok(Work::Submit(m)) => assert!(m.submit.starts_with("http://127.0.0.1:10000/devstoreaccount1/")),
        Err(reason) => assert!(!reason.to_string().is_empty()),
    }
}

fn iterations() -> u64 {
    std::env::var("FUZZ_ITERATIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000)
}

#[test]
fn parsers_survive_mutated_inputs_and_agree_with_a_full_parse() {
    let seed: u64 = std::env::var("FUZZ_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(0x0bad_5eed);
    let mut rng = Rng(seed | 1);
    for seed_input in SEEDS {
        check(seed_input.as_bytes(), 7);
    }
    for i in 0..iterations() {
        let base = SEEDS[rng.below(SEEDS.len())].as_bytes();
        let input = mutate(&mut rng, base);
        let chunking = 1 + rng.below(64);
        if catch_unwind(AssertUnwindSafe(|| check(&input, chunking))).is_err() {
            let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("fuzz-failure-{seed}-{i}.bin"));
            let _ = std::fs::write(&path, &input);
            panic!("iteration {i} (seed {seed}, chunking {chunking}) failed; input saved to {}", path.display());
        }
    }
}

#[tokio::test]
async fn the_router_answers_every_mutated_envelope_and_never_dies() {
    bounded(async {
        let app = spawn_app().await;
        let mut rng = Rng(0x5eed_f00d);
        for _ in 0..300 {
            let base = SEEDS[rng.below(3)].as_bytes();
            let input = mutate(&mut rng, base);
            for function in ["BlobMonitor", "QueueMonitor"] {
                let answer = app.post(function, input.clone()).await;
                assert!(answer.status.as_u16() < 600);
                assert_eq!(answer.content_type, "application/json", "every answer is JSON");
                assert!(answer.body.is_object());
            }
        }
        let probe = app.http.get(format!("http://{}/", app.addr)).send().await.expect("still alive");
        assert!(probe.status().is_success());
    })
    .await;
}
