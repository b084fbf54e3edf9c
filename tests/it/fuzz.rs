//! Mutational fuzzing of everything that parses untrusted input: the streaming blob-envelope reader (checked against
//! a full `serde_json` parse), the envelope decoders, the queue message parser, connection strings and Batch
//! objects, the input-file validator (checked against a plain whole-file reference) and the blob content decoder
//! (checked against the base64 crate), and finally the running router. Seeds are the protocol doc's examples;
//! mutations are byte flips, JSON-significant insertions, deletions, duplications, splices and truncations, generated
//! and shrunk by proptest, so a failure is reported as the smallest list of mutations that still fails.
//!
//! `FUZZ_ITERATIONS` (default 20,000 cases) and `FUZZ_SEED` (a fixed RNG seed) set the run; `scripts/fuzz.sh` runs a
//! long one.

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngSeed, TestRunner};

use blob_batch_monitor::batch_api::Batch;
use blob_batch_monitor::jobs::message::{parse_work, validate_batch_id, Work};
use blob_batch_monitor::jobs::validate::{Validator, MAX_PROBLEMS};
use blob_batch_monitor::protocol::blob_content::ContentDecoder;
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

const SPECIAL: &[u8] = b"\"\\{}[]:,0 \n\x00\xff";

/// One change to an input. Positions are proptest indexes, scaled to the input's length when applied.
#[derive(Clone, Debug)]
enum Mutation {
    Flip(Index, u8),
    Special(Index, Index),
    Delete(Index, usize),
    Duplicate(Index, usize, Index),
    /// Part of another seed, spliced in.
    Splice(Index, Index, Index, usize),
    Truncate(Index),
    Byte(Index, u8),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<Index>(), 0u8..8).prop_map(|(at, bit)| Mutation::Flip(at, bit)),
        (any::<Index>(), any::<Index>()).prop_map(|(at, which)| Mutation::Special(at, which)),
        (any::<Index>(), 1usize..=16).prop_map(|(at, n)| Mutation::Delete(at, n)),
        (any::<Index>(), 1usize..=32, any::<Index>()).prop_map(|(at, n, to)| Mutation::Duplicate(at, n, to)),
        (any::<Index>(), any::<Index>(), any::<Index>(), 0usize..64)
            .prop_map(|(at, seed, from, n)| Mutation::Splice(at, seed, from, n)),
        any::<Index>().prop_map(Mutation::Truncate),
        (any::<Index>(), any::<u8>()).prop_map(|(at, b)| Mutation::Byte(at, b)),
    ]
}

/// `input` with `ops` applied in order.
fn apply(input: &[u8], ops: &[Mutation]) -> Vec<u8> {
    let mut v = input.to_vec();
    for op in ops {
        let at = |i: &Index, len: usize| i.index(len + 1);
        match op {
            Mutation::Flip(i, bit) if !v.is_empty() => {
                let i = i.index(v.len());
                v[i] ^= 1 << bit;
            }
            Mutation::Special(i, which) => v.insert(at(i, v.len()), SPECIAL[which.index(SPECIAL.len())]),
            Mutation::Delete(i, n) if !v.is_empty() => {
                let from = i.index(v.len());
                v.drain(from..(from + n).min(v.len()));
            }
            Mutation::Duplicate(i, n, to) if !v.is_empty() => {
                let from = i.index(v.len());
                let chunk = v[from..(from + n).min(v.len())].to_vec();
                let to = at(to, v.len());
                v.splice(to..to, chunk);
            }
            Mutation::Splice(i, seed, from, n) => {
                let other = SEEDS[seed.index(SEEDS.len())].as_bytes();
                let from = from.index(other.len());
                let to = at(i, v.len());
                v.splice(to..to, other[from..].iter().take(*n).copied());
            }
            Mutation::Truncate(i) => v.truncate(at(i, v.len())),
            Mutation::Byte(i, b) => v.insert(at(i, v.len()), *b),
            _ => {}
        }
    }
    v
}

/// `FUZZ_ITERATIONS` cases, from `FUZZ_SEED` when set.
fn config() -> Config {
    let cases = u32::try_from(crate::helpers::count_from_env("FUZZ_ITERATIONS", 20_000)).unwrap_or(u32::MAX);
    let seed = std::env::var("FUZZ_SEED").ok().and_then(|v| v.parse().ok());
    Config {
        cases,
        failure_persistence: None,
        rng_seed: seed.map_or(RngSeed::Random, RngSeed::Fixed),
        ..Config::default()
    }
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
        Ok(Work::Split(key) | Work::Merge(key)) => assert!(key.ends_with(".json") && !key.contains("..")),
        Err(reason) => assert!(!reason.to_string().is_empty()),
    }
}

#[test]
fn the_seeds_themselves_pass() {
    for seed_input in SEEDS {
        check(seed_input.as_bytes(), 7);
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn parsers_survive_mutated_inputs_and_agree_with_a_full_parse(
        seed in any::<Index>(),
        ops in vec(mutation(), 1..=5),
        chunking in 1usize..=64,
    ) {
        check(&apply(SEEDS[seed.index(SEEDS.len())].as_bytes(), &ops), chunking);
    }

    #[test]
    fn the_validator_agrees_with_a_whole_file_reference_on_mutated_files(
        seed in any::<Index>(),
        ops in vec(mutation(), 1..=12),
        chunking in 1usize..=64,
        escape in any::<bool>(),
    ) {
        check_jsonl(&apply(JSONL_SEEDS[seed.index(JSONL_SEEDS.len())].as_bytes(), &ops), chunking, escape);
    }
}

const JSONL_SEEDS: &[&str] = &[
    "{\"custom_id\":\"a\",\"method\":\"POST\",\"url\":\"/chat/completions\",\"body\":{\"model\":\"m\",\"messages\":[]}}\n{\"custom_id\":\"b\",\"method\":\"POST\",\"url\":\"/chat/completions\",\"body\":{\"model\":\"m\"}}\n",
    "\u{feff}{\"custom_id\":\"a\",\"method\":\"POST\",\"url\":\"/v1/responses\",\"body\":{\"model\":\"m\",\"input\":\"Hi\"}}\r\n\r\n",
    "{\"custom_id\":\"x\",\"method\":\"GET\",\"url\":\"/u\",\"body\":{\"model\":\"m\"}}\n{\"custom_id\":\"x\",\"method\":\"POST\",\"url\":\"/v\",\"body\":[]}",
];

fn validate(input: &[u8], chunking: usize) -> Vec<(u64, String)> {
    let mut v = Validator::default();
    input.chunks(chunking.max(1)).for_each(|c| v.feed(c));
    v.finish().problems.into_iter().map(|p| (p.line, p.code)).collect()
}

/// The rules of azure-openai-batch.md §7 applied to a whole file at once with `serde_json::Value`: the oracle.
fn reference(input: &[u8]) -> Vec<(u64, String)> {
    let mut out: Vec<(u64, String)> = Vec::new();
    let body = match input.strip_prefix(b"\xEF\xBB\xBF") {
        Some(rest) => {
            out.push((1, "bom".into()));
            rest
        }
        None => input,
    };
    let (mut ids, mut url, mut model, mut requests) = (std::collections::HashMap::new(), None, None, 0u64);
    let lines = body.split(|b| *b == b'\n').collect::<Vec<_>>();
    let total =
        body.iter().filter(|b| **b == b'\n').count() as u64 + u64::from(!body.is_empty() && !body.ends_with(b"\n"));
    for (i, raw) in lines.iter().enumerate() {
        let n = i as u64 + 1;
        let text = raw.strip_suffix(b"\r").unwrap_or(raw);
        if text.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        requests += 1;
        let Ok(Value::Object(line)) = serde_json::from_slice::<Value>(text) else {
            out.push((n, "invalid_json_line".into()));
            continue;
        };
        match line.get("custom_id").and_then(Value::as_str).filter(|s| !s.is_empty()) {
            None => out.push((n, "missing_custom_id".into())),
            Some(id) if ids.contains_key(id) => out.push((n, "duplicate_custom_id".into())),
            Some(id) => {
                ids.insert(id.to_string(), n);
            }
        }
        if line.get("method").and_then(Value::as_str) != Some("POST") {
            out.push((n, "invalid_method".into()));
        }
        match (line.get("url").and_then(Value::as_str), &url) {
            (None, _) => out.push((n, "url_mismatch".into())),
            (Some(u), None) => url = Some(u.to_string()),
            (Some(u), Some(first)) if u != first => out.push((n, "url_mismatch".into())),
            _ => {}
        }
        match line.get("body").and_then(Value::as_object).map(|b| b.get("model").and_then(Value::as_str)) {
            None | Some(None) => out.push((n, "invalid_request".into())),
            Some(Some(m)) if model.is_none() => model = Some(m.to_string()),
            Some(Some(m)) if Some(m) != model.as_deref() => out.push((n, "model_mismatch".into())),
            _ => {}
        }
    }
    if requests == 0 && out.iter().all(|(_, c)| c == "bom") {
        out.push((total.max(1), "empty_file".into()));
    }
    out.truncate(MAX_PROBLEMS);
    out
}

/// The validator agrees with the reference at any chunking; the content decoder recovers any bytes from their
/// base64, escaped or not, at any chunking.
fn check_jsonl(input: &[u8], chunking: usize, escape: bool) {
    let expected = reference(input);
    assert_eq!(validate(input, input.len().max(1)), expected, "whole: {:?}", String::from_utf8_lossy(input));
    assert_eq!(validate(input, chunking), expected, "chunks of {chunking}");
    use base64::Engine;
    let mut raw = base64::engine::general_purpose::STANDARD.encode(input);
    if escape {
        raw = raw.replace('+', "\\u002B").replace('/', "\\/");
    }
    let mut decoder = ContentDecoder::new();
    let mut decoded = Vec::new();
    raw.as_bytes().chunks(chunking).for_each(|c| decoder.feed(c, &mut |b| decoded.extend_from_slice(b)));
    decoder.finish(&mut |b| decoded.extend_from_slice(b)).expect("valid base64 decodes");
    assert_eq!(decoded, input);
}

#[tokio::test]
async fn the_router_answers_every_mutated_envelope_and_never_dies() {
    bounded(async {
        let app = spawn_app().await;
        // Mutated envelopes (the first three seeds), the same ones every run.
        let mut runner = TestRunner::deterministic();
        let inputs = (0..3usize, vec(mutation(), 1..=5)).prop_map(|(seed, ops)| apply(SEEDS[seed].as_bytes(), &ops));
        for _ in 0..300 {
            let input = inputs.new_tree(&mut runner).expect("an input").current();
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
