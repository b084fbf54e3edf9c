//! One test per transition of the lifecycle, on plain values.

use std::time::Duration;

use http::StatusCode;
use serde_json::json;

use super::*;

const POLICY: Policy =
    Policy { retry_delay: Duration::from_secs(30), backoff_cap: Duration::from_secs(3600), max_failures: 5 };

fn batch(status: &str, errors: serde_json::Value) -> Batch {
    serde_json::from_value(json!({"id": "batch_1", "status": status, "errors": {"data": errors}})).expect("a batch")
}

fn api_error(status: Option<u16>, code: Option<&str>, retry_after: Option<u64>) -> BatchError {
    BatchError {
        status: status.map(|s| StatusCode::from_u16(s).expect("status")),
        code: code.map(str::to_string),
        message: "m".into(),
        retry_after: retry_after.map(Duration::from_secs),
    }
}

fn check(attempt: u32, failures: u32) -> MonitorMessage {
    MonitorMessage { attempt, failures, ..MonitorMessage::new("batch_1".into(), Some("batch-input/a.jsonl".into())) }
}

/// The record of the checked job, with `failures` consecutive failed checks.
fn recorded(failures: u32) -> JobRecord {
    JobRecord { batch_id: Some("batch_1".into()), state: RecordState::Submitted, failures, ..JobRecord::default() }
}

#[test]
fn failures_are_counted_by_the_record_not_by_the_message() {
    let e = Err(api_error(Some(503), None, None));
    let forged = check(2, 29);
    assert!(
        matches!(after_check(&POLICY, &forged, Some(&recorded(0)), &e), AfterCheck::Again { next, .. } if next.failures == 1)
    );
    let step = after_check(&POLICY, &check(2, 0), Some(&recorded(4)), &e);
    assert!(matches!(step, AfterCheck::GiveUp { .. }), "the record's count decides: {step:?}");
    let step = after_check(&POLICY, &check(2, 4), None, &e);
    assert!(matches!(step, AfterCheck::GiveUp { .. }), "without a record, the message is all there is: {step:?}");
}

#[test]
fn a_running_job_is_checked_again_after_the_retry_delay() {
    for status in ["validating", "in_progress", "finalizing", "cancelling"] {
        let step = after_check(&POLICY, &check(3, 2), Some(&recorded(2)), &Ok(batch(status, json!([]))));
        assert_eq!(step, AfterCheck::Again { next: check(4, 0), after: POLICY.retry_delay }, "{status}");
    }
}

#[test]
fn every_terminal_status_ends_the_job() {
    for status in ["completed", "failed", "expired", "cancelled"] {
        assert_eq!(
            after_check(&POLICY, &check(0, 0), Some(&recorded(0)), &Ok(batch(status, json!([])))),
            AfterCheck::End,
            "{status}"
        );
    }
}

#[test]
fn a_token_limit_failure_is_resubmitted_when_there_is_a_record() {
    let failed = batch("failed", json!([{"code": "token_limit_exceeded", "message": "quota"}]));
    assert_eq!(after_check(&POLICY, &check(1, 0), Some(&recorded(0)), &Ok(failed.clone())), AfterCheck::Resubmit);
    assert_eq!(after_check(&POLICY, &check(1, 0), None, &Ok(failed)), AfterCheck::End, "no record: report it");
    let by_message = batch("failed", json!([{"code": "x", "message": "token_limit_exceeded for deployment"}]));
    assert!(is_token_limit_failure(&by_message));
    assert!(!is_token_limit_failure(&batch("failed", json!([{"code": "invalid_json_line"}]))));
}

#[test]
fn an_unknown_batch_is_given_up_at_once() {
    let step =
        after_check(&POLICY, &check(7, 0), Some(&recorded(0)), &Err(api_error(Some(404), Some("not_found"), None)));
    assert!(matches!(step, AfterCheck::GiveUp { reason } if reason.contains("does not know batch batch_1")));
}

#[test]
fn a_failed_check_backs_off_then_gives_up() {
    let e = Err(api_error(Some(503), None, None));
    assert_eq!(
        after_check(&POLICY, &check(2, 0), Some(&recorded(0)), &e),
        AfterCheck::Again { next: check(3, 1), after: Duration::from_secs(30) }
    );
    assert_eq!(
        after_check(&POLICY, &check(3, 2), Some(&recorded(2)), &e),
        AfterCheck::Again { next: check(4, 3), after: Duration::from_secs(120) }
    );
    let step = after_check(&POLICY, &check(9, 4), Some(&recorded(4)), &e);
    assert!(matches!(step, AfterCheck::GiveUp { reason } if reason.starts_with("5 consecutive status checks")));
}

#[test]
fn a_refused_key_waits_at_least_five_minutes_and_a_throttle_as_long_as_asked() {
    let step = after_check(&POLICY, &check(0, 0), Some(&recorded(0)), &Err(api_error(Some(401), None, None)));
    assert!(matches!(step, AfterCheck::Again { after, .. } if after == UNAUTHORIZED_MIN_DELAY));
    let step = after_check(&POLICY, &check(0, 0), Some(&recorded(0)), &Err(api_error(Some(429), None, Some(90))));
    assert!(matches!(step, AfterCheck::Again { after, .. } if after == Duration::from_secs(90)));
}

#[test]
fn backoff_doubles_caps_and_honours_the_server() {
    let (base, cap) = (Duration::from_secs(30), Duration::from_secs(3600));
    assert_eq!(backoff(base, 1, cap, None), Duration::from_secs(30));
    assert_eq!(backoff(base, 4, cap, None), Duration::from_secs(240));
    assert_eq!(backoff(base, 40, cap, None), cap);
    assert_eq!(backoff(base, 1, cap, Some(Duration::from_millis(61_500))), Duration::from_secs(62), "rounded up");
    assert_eq!(backoff(base, 1, cap, Some(Duration::from_secs(86_400))), cap, "a server hint is capped too");
}

#[test]
fn a_create_refused_for_good_is_dead_lettered() {
    assert_eq!(
        after_refusal(&POLICY, 1, &api_error(Some(400), Some("invalid_request"), None), true),
        AfterRefusal::DeadLetter
    );
    assert_eq!(after_refusal(&POLICY, 1, &api_error(Some(404), None, None), false), AfterRefusal::DeadLetter);
}

#[test]
fn a_transient_create_failure_is_left_to_the_host_twice_then_deferred() {
    let e = api_error(Some(500), None, None);
    assert_eq!(after_refusal(&POLICY, 1, &e, true), AfterRefusal::HostRetry);
    assert_eq!(after_refusal(&POLICY, 2, &e, true), AfterRefusal::HostRetry);
    assert_eq!(after_refusal(&POLICY, 3, &e, true), AfterRefusal::Defer { after: Duration::from_secs(120) });
    assert_eq!(after_refusal(&POLICY, 1, &e, false), AfterRefusal::Defer { after: Duration::from_secs(30) });
    assert_eq!(after_refusal(&POLICY, 5, &e, false), AfterRefusal::DeadLetter, "too many failures");
}

#[test]
fn a_full_token_quota_is_deferred_forever_and_a_refused_key_for_five_minutes() {
    let quota = api_error(Some(400), Some("token_limit_exceeded"), None);
    assert!(matches!(after_refusal(&POLICY, 50, &quota, false), AfterRefusal::Defer { .. }), "never given up");
    let key = api_error(Some(401), None, None);
    assert_eq!(after_refusal(&POLICY, 1, &key, true), AfterRefusal::Defer { after: UNAUTHORIZED_MIN_DELAY });
}

#[test]
fn superseded_checks_are_recognised() {
    let record = |state, batch: Option<&str>, checks| JobRecord {
        state,
        batch_id: batch.map(str::to_string),
        checks,
        ..JobRecord::default()
    };
    let m = check(3, 0);
    assert_eq!(superseded(&record(RecordState::Submitted, Some("batch_1"), 3), &m), None, "the current check");
    assert_eq!(superseded(&record(RecordState::Submitted, Some("batch_1"), 2), &m), None, "put, not yet counted");
    let forged = superseded(&record(RecordState::Submitted, Some("batch_1"), 1), &m);
    assert!(forged.is_some_and(|why| why.contains("ahead of the record")), "never put by this app");
    assert!(superseded(&record(RecordState::Submitted, Some("batch_1"), 4), &m).is_some(), "a duplicate delivery");
    assert!(superseded(&record(RecordState::Submitted, Some("batch_2"), 0), &m).is_some(), "another batch");
    assert!(superseded(&record(RecordState::Ended, Some("batch_1"), 3), &m).is_some(), "already ended");
    assert!(superseded(&record(RecordState::DeadLettered, Some("batch_1"), 3), &m).is_some());
}

#[test]
fn only_the_chain_the_record_names_goes_on() {
    let on = |record_chain: Option<&str>, message_chain: Option<&str>| {
        let r = JobRecord {
            state: RecordState::Submitted,
            batch_id: Some("batch_1".into()),
            chain: record_chain.map(str::to_string),
            ..JobRecord::default()
        };
        let m = MonitorMessage { chain: message_chain.map(str::to_string), ..check(0, 0) };
        superseded(&r, &m)
    };
    assert_eq!(on(Some("run-2"), Some("run-2")), None, "the current chain");
    let old = on(Some("run-2"), Some("run-1"));
    assert!(old.is_some_and(|why| why.contains("another chain")), "monitoring was handed over again");
    assert_eq!(on(None, Some("run-1")), None, "a record from before chains");
    assert_eq!(on(Some("run-2"), None), None, "a message from before chains (or the original app's)");
}

#[test]
fn a_settled_record_restarts_monitoring_only_before_the_first_check() {
    let mut r = JobRecord { blob: "batch-input/a.jsonl".into(), ..JobRecord::default() };
    assert_eq!(settled(&r), None, "a fresh record needs a job");
    r.state = RecordState::Deferred;
    assert_eq!(settled(&r), None, "a deferred one too");
    r.state = RecordState::Submitted;
    r.batch_id = Some("batch_1".into());
    assert_eq!(settled(&r), Some(Settled::Restart { batch_id: "batch_1".into() }));
    r.checks = 1;
    assert!(matches!(settled(&r), Some(Settled::Done { .. })), "monitoring is under way");
    let dead = JobRecord { state: RecordState::DeadLettered, reason: Some("refused".into()), ..JobRecord::default() };
    assert!(matches!(settled(&dead), Some(Settled::Done { reason }) if reason.contains("refused")));
}
