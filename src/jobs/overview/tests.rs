//! Counters, filters, paging and the metadata round trip, on plain values.

use super::*;

fn row(blob: &str, state: RecordState, status: Option<&str>, started_at: u64, tokens: Option<u64>) -> Row {
    let summary = Summary {
        blob: blob.into(),
        etag: "0x1".into(),
        state,
        status: status.map(str::to_string),
        started_at,
        total_tokens: tokens,
        ..Summary::default()
    };
    Row { key: format!("{blob}/0x1"), shown: summary.shown_state().to_string(), summary }
}

fn sample() -> Vec<Row> {
    vec![
        row("batch-input/a.jsonl", RecordState::Ended, Some("completed"), 10, Some(100)),
        row("batch-input/b.jsonl", RecordState::Ended, Some("failed"), 20, Some(5)),
        row("batch-input/c.jsonl", RecordState::Submitted, Some("in_progress"), 30, None),
        row("batch-input/d.jsonl", RecordState::Submitted, Some("validating"), 40, None),
        row("batch-input/e.jsonl", RecordState::Rejected, None, 50, None),
        row("batch-input/nested/f.jsonl", RecordState::DeadLettered, None, 60, None),
        row("batch-input/g.jsonl", RecordState::Deferred, None, 70, None),
        row("batch-input/h.jsonl", RecordState::Submitting, None, 80, None),
    ]
}

#[test]
fn counters_cover_every_record_whatever_the_filter() {
    let o = build(sample(), &Query { state: Some("running".into()), ..Query::default() });
    let c = &o.counters;
    assert_eq!(c.total, 8);
    for (state, n) in [
        ("completed", 1),
        ("failed", 1),
        ("running", 2),
        ("rejected", 1),
        ("dead-lettered", 1),
        ("deferred", 1),
        ("submitting", 1),
    ] {
        assert_eq!(c.by_state.get(state), Some(&n), "{state}");
    }
    assert_eq!(c.running_by_status.get("validating"), Some(&1));
    assert_eq!(c.tokens_used, 105, "tokens of ended jobs only");
    assert_eq!(o.matching, 2);
    assert!(o.rows.iter().all(|r| r.shown == "running"));
}

#[test]
fn rows_come_newest_first_and_filter_by_name_ignoring_case() {
    let o = build(sample(), &Query::default());
    let started: Vec<u64> = o.rows.iter().map(|r| r.summary.started_at).collect();
    assert_eq!(started, [80, 70, 60, 50, 40, 30, 20, 10]);
    let o = build(sample(), &Query { q: Some("NESTED/".into()), ..Query::default() });
    assert_eq!(o.rows.len(), 1);
    assert_eq!(o.rows[0].summary.blob, "batch-input/nested/f.jsonl");
}

#[test]
fn pages_hold_a_hundred_rows_and_out_of_range_pages_are_clamped() {
    let rows: Vec<Row> = (0..250)
        .map(|i| row(&format!("batch-input/{i}.jsonl"), RecordState::Ended, Some("completed"), i, None))
        .collect();
    let first = build(rows.clone(), &Query::default());
    assert_eq!((first.rows.len(), first.page, first.pages, first.matching), (100, 1, 3, 250));
    assert_eq!(first.rows[0].summary.started_at, 249);
    let last = build(rows.clone(), &Query { page: Some(3), ..Query::default() });
    assert_eq!(last.rows.len(), 50);
    assert_eq!(build(rows, &Query { page: Some(99), ..Query::default() }).page, 3);
    assert_eq!(build(Vec::new(), &Query::default()).pages, 1);
}

#[test]
fn a_summary_survives_the_metadata_round_trip_and_keeps_reasons_short() {
    let record = JobRecord {
        blob: "batch-input/<img src=x onerror=alert(1)>.jsonl".into(),
        etag: "0x8D1".into(),
        state: RecordState::Rejected,
        reason: Some("x".repeat(1000)),
        usage: Some(serde_json::json!({"total_tokens": 42})),
        ..JobRecord::default()
    };
    let summary = Summary::of(&record);
    assert_eq!(summary.reason.as_ref().map(String::len), Some(300));
    assert_eq!(summary.total_tokens, Some(42));
    let value = summary.encode();
    assert!(value.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'), "{value}");
    assert_eq!(Summary::decode(&value), Some(summary));
    assert_eq!(Summary::decode("not base64!"), None);
}

#[test]
fn a_record_without_a_readable_summary_is_listed_as_unknown_by_its_name() {
    let item = |metadata: Option<(&str, &str)>| BlobItem {
        name: "batch-input/nested/old.jsonl/0x8DD1.json".into(),
        properties: crate::storage::blob::BlobItemProperties {
            etag: "0x9".into(),
            last_modified: "Mon, 30 Nov 2026 10:00:00 GMT".into(),
            content_length: 300,
        },
        metadata: metadata.map(|(k, v)| [(k.to_string(), v.to_string())].into_iter().collect()),
    };
    for listed in [item(None), item(Some(("Summary", "not base64url json!"))), item(Some(("other", "x")))] {
        let row = row_of(listed);
        assert_eq!(row.shown, UNKNOWN_STATE);
        assert_eq!(row.key, "batch-input/nested/old.jsonl/0x8DD1");
        assert_eq!((row.summary.blob.as_str(), row.summary.etag.as_str()), ("batch-input/nested/old.jsonl", "0x8DD1"));
        assert_eq!(row.summary.started_at, 1_796_032_800);
        assert!(row.summary.reason.as_deref().is_some_and(|r| r.contains("no summary")));
    }
    // A readable summary (the metadata key in any case, as listings may return it) is used as it is.
    let summary = row("batch-input/new.jsonl", RecordState::Ended, Some("expired"), 5, None).summary;
    let listed = row_of(item(Some(("SUMMARY", &summary.encode()))));
    assert_eq!((listed.shown.as_str(), listed.summary), ("expired", summary));

    let mut rows = sample();
    rows.push(row_of(item(None)));
    let o = build(rows, &Query { state: Some(UNKNOWN_STATE.into()), ..Query::default() });
    assert_eq!((o.counters.total, o.counters.by_state.get(UNKNOWN_STATE).copied(), o.matching), (9, Some(1), 1));
}
