//! Which parts go next under the token budget, and how a file ends from its parts' endings.

use super::*;

fn part(tokens: u64, state: PartState, status: Option<&str>) -> Part {
    Part { tokens, state, status: status.map(str::to_string), ..Part::default() }
}

fn file(budget: Option<u64>, parts: Vec<Part>) -> JobRecord {
    JobRecord { token_budget: budget, parts, ..JobRecord::default() }
}

#[test]
fn parts_go_while_the_budget_holds_them() {
    let written = |t| part(t, PartState::Written, None);
    assert_eq!(next_parts(&file(Some(100), vec![written(40), written(40), written(40)])), [0, 1]);
    let one_running = vec![part(40, PartState::Submitted, None), written(40), written(40)];
    assert_eq!(next_parts(&file(Some(100), one_running)), [1]);
    let full = vec![part(90, PartState::Submitted, None), written(40)];
    assert!(next_parts(&file(Some(100), full)).is_empty(), "waits for the running part to end");
    assert_eq!(next_parts(&file(None, vec![written(1), written(1), written(1)])), [0, 1, 2], "no budget known");
    let ended = vec![part(90, PartState::Ended, Some("completed")), written(90)];
    assert_eq!(next_parts(&file(Some(100), ended)), [1], "an ended part holds no tokens");
    assert!(next_parts(&JobRecord { stopped: true, ..file(None, vec![written(1)]) }).is_empty(), "a cancelled file");
}

#[test]
fn a_file_ends_completed_only_when_every_part_did() {
    let ended = |s| part(1, PartState::Ended, Some(s));
    assert_eq!(file_status(&[ended("completed"), ended("completed")]), "completed");
    assert_eq!(file_status(&[ended("completed"), ended("expired")]), "expired");
    assert_eq!(file_status(&[ended("cancelled"), ended("failed")]), "failed");
    assert_eq!(file_status(&[ended("completed"), part(1, PartState::DeadLettered, Some("gone"))]), "dead-lettered");
    assert_eq!(file_status(&[ended("completed"), part(1, PartState::Written, None)]), "cancelled", "never submitted");
}
