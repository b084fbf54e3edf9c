//! Each rule on a small file, the shapes that must pass, and chunking at every size.

use super::*;
use crate::jobs::plan::TokenQuota;

fn line(id: &str, url: &str, model: &str) -> String {
    format!(
        r#"{{"custom_id":"{id}","method":"POST","url":"{url}","body":{{"model":"{model}","messages":[{{"role":"user","content":"Hi"}}]}}}}"#
    )
}

fn good(id: &str) -> String {
    line(id, "/chat/completions", "gpt-4o-batch")
}

/// The problems of `file` fed in chunks of `chunk` bytes.
fn check_in_chunks(file: &[u8], chunk: usize) -> Vec<Problem> {
    let mut v = Validator::default();
    for c in file.chunks(chunk.max(1)) {
        v.feed(c);
    }
    v.finish().problems
}

fn check(file: &str) -> Vec<Problem> {
    check_in_chunks(file.as_bytes(), file.len().max(1))
}

fn codes(problems: &[Problem]) -> Vec<(u64, &str)> {
    problems.iter().map(|p| (p.line, p.code.as_str())).collect()
}

#[test]
fn valid_files_pass_in_every_shape() {
    let lf = format!("{}\n{}\n", good("a"), good("b"));
    let crlf = format!("{}\r\n{}\r\n", good("a"), good("b"));
    let no_final_newline = format!("{}\n{}", good("a"), good("b"));
    let trailing_blank = format!("{}\n{}\n\n", good("a"), good("b"));
    let non_ascii = format!("{}\n", line("täsk-ü-日本", "/chat/completions", "gpt-4o-batch"));
    let v1 = format!("{}\n{}\n", line("a", "/v1/chat/completions", "m"), line("b", "/v1/chat/completions", "m"));
    let responses = r#"{"custom_id":"r1","method":"POST","url":"/v1/responses","body":{"model":"m","input":"Hi"}}"#;
    for file in [lf, crlf, no_final_newline, trailing_blank, non_ascii, v1, responses.to_string()] {
        for chunk in [1, 2, 3, 5, 64, file.len()] {
            assert_eq!(check_in_chunks(file.as_bytes(), chunk), [], "{file:?} in chunks of {chunk}");
        }
    }
}

#[test]
fn a_bom_is_reported_even_when_it_arrives_byte_by_byte() {
    let file = format!("\u{feff}{}\n", good("a"));
    for chunk in [1, 2, 3, 4, file.len()] {
        assert_eq!(codes(&check_in_chunks(file.as_bytes(), chunk)), [(1, "bom")], "chunk {chunk}");
    }
}

#[test]
fn an_empty_file_or_only_blank_lines_is_empty() {
    assert_eq!(codes(&check("")), [(1, "empty_file")]);
    assert_eq!(codes(&check("\n \r\n\t\n")), [(3, "empty_file")]);
    assert_eq!(codes(&check("\u{feff}")), [(1, "bom"), (1, "empty_file")]);
}

#[test]
fn each_rule_reports_its_code_at_its_line() {
    let cases = [
        ("not json", "invalid_json_line"),
        ("[1,2]", "invalid_json_line"),
        (r#"{"custom_id":"x","method":"POST""#, "invalid_json_line"),
        (r#"{"method":"POST","url":"/chat/completions","body":{"model":"gpt-4o-batch"}}"#, "missing_custom_id"),
        (
            r#"{"custom_id":7,"method":"POST","url":"/chat/completions","body":{"model":"gpt-4o-batch"}}"#,
            "missing_custom_id",
        ),
        (
            r#"{"custom_id":"","method":"POST","url":"/chat/completions","body":{"model":"gpt-4o-batch"}}"#,
            "missing_custom_id",
        ),
        (
            r#"{"custom_id":"x","method":"GET","url":"/chat/completions","body":{"model":"gpt-4o-batch"}}"#,
            "invalid_method",
        ),
        (r#"{"custom_id":"x","url":"/chat/completions","body":{"model":"gpt-4o-batch"}}"#, "invalid_method"),
        (r#"{"custom_id":"x","method":"POST","body":{"model":"gpt-4o-batch"}}"#, "url_mismatch"),
        (&line("x", "/embeddings", "gpt-4o-batch"), "url_mismatch"),
        (r#"{"custom_id":"x","method":"POST","url":"/chat/completions","body":"text"}"#, "invalid_request"),
        (r#"{"custom_id":"x","method":"POST","url":"/chat/completions"}"#, "invalid_request"),
        (r#"{"custom_id":"x","method":"POST","url":"/chat/completions","body":{"messages":[]}}"#, "invalid_request"),
        (&line("x", "/chat/completions", "other-deployment"), "model_mismatch"),
        (&good("a"), "duplicate_custom_id"),
    ];
    for (bad, code) in cases {
        let file = format!("{}\n{}\n{bad}\n{}\n", good("a"), good("b"), good("c"));
        let problems = check(&file);
        assert_eq!(codes(&problems), [(3, code)], "{bad}");
        assert!(!problems[0].message.is_empty());
    }
}

#[test]
fn a_duplicate_names_the_first_line_too() {
    let file = format!("{}\n\n{}\n{}\n", good("same"), good("b"), good("same"));
    let problems = check(&file);
    assert_eq!(codes(&problems), [(4, "duplicate_custom_id")]);
    assert_eq!(problems[0].first_line, Some(1));
    assert!(problems[0].message.contains("line 1"), "{}", problems[0].message);
}

#[test]
fn more_than_100000_requests_are_cut_into_parts_not_refused() {
    let mut v = Validator::new(Limits::default());
    let mut bytes = 0u64;
    for i in 0..=100_000 {
        let line = format!("{}\n", good(&format!("task-{i}")));
        bytes += line.len() as u64;
        v.feed(line.as_bytes());
    }
    let checked = v.finish();
    assert_eq!(checked.problems, []);
    let parts: Vec<(u64, u64)> = checked.plan.parts.iter().map(|p| (p.first_line, p.requests)).collect();
    assert_eq!(parts, [(1, 100_000), (100_001, 1)]);
    assert_eq!(checked.plan.parts[1].end, bytes);
    assert_eq!(checked.plan.parts[0].end, checked.plan.parts[1].start);
}

#[test]
fn part_boundaries_fall_on_line_starts_at_any_chunking() {
    let lines: Vec<String> = (0..25).map(|i| format!("{}\n", good(&format!("t{i}")))).collect();
    let file = lines.concat();
    let limits = Limits { max_requests: 10, ..Limits::default() };
    for chunk in [1, 7, 64, file.len()] {
        let mut v = Validator::new(limits.clone());
        file.as_bytes().chunks(chunk).for_each(|c| v.feed(c));
        let plan = v.finish().plan;
        let cuts: Vec<(u64, u64)> = plan.parts.iter().map(|p| (p.start, p.end)).collect();
        let at = |line: usize| lines[..line].iter().map(|l| l.len() as u64).sum::<u64>();
        assert_eq!(cuts, [(0, at(10)), (at(10), at(20)), (at(20), at(25))], "chunks of {chunk}");
    }
}

#[test]
fn a_request_over_the_token_budget_is_a_problem_with_its_line() {
    let quota = TokenQuota { default: Some(100), ..TokenQuota::default() };
    let mut v = Validator::new(Limits { quota, ..Limits::default() });
    let big = good("big").replace("Hi", &"x".repeat(400));
    v.feed(format!("{}\n{big}\n", good("a")).as_bytes());
    let checked = v.finish();
    assert_eq!(codes(&checked.problems), [(2, "request_over_token_budget")]);
}

#[test]
fn a_custom_id_repeated_in_another_part_is_a_duplicate() {
    let file = format!("{}\n{}\n{}\n", good("a"), good("b"), good("a"));
    let mut v = Validator::new(Limits { max_requests: 1, ..Limits::default() });
    v.feed(file.as_bytes());
    let checked = v.finish();
    assert_eq!(checked.plan.parts.len(), 3);
    assert_eq!(codes(&checked.problems), [(3, "duplicate_custom_id")]);
}

#[test]
fn reading_stops_after_twenty_problems() {
    let file: String = (0..50).map(|_| "garbage\n").collect();
    let mut v = Validator::default();
    v.feed(file.as_bytes());
    assert!(v.is_done());
    let problems = v.finish().problems;
    assert_eq!(problems.len(), MAX_PROBLEMS);
    assert_eq!(problems.last().map(|p| p.line), Some(20));
}

#[test]
fn a_line_nested_too_deep_is_refused_with_its_line() {
    let nested = |depth: usize| format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    let deep = good("b").replace("\"messages\"", &format!("\"x\":{},\"messages\"", nested(100_000)));
    let problems = check(&format!("{}\n{deep}\n", good("a")));
    assert_eq!(codes(&problems), [(2, "invalid_json_line")]);
    assert!(problems[0].message.contains("128 levels"), "{}", problems[0].message);
    // At the limit it passes; brackets inside strings do not count.
    let at_limit = good("c").replace("\"messages\"", &format!("\"x\":{},\"messages\"", nested(MAX_DEPTH - 2)));
    let in_strings = good("d").replace("Hi", &"[{".repeat(500));
    assert_eq!(codes(&check(&format!("{at_limit}\n{in_strings}\n"))), []);
    assert!(nests_deeper_than(format!(r#"["\\\"", {}]"#, nested(MAX_DEPTH)).as_bytes(), MAX_DEPTH));
}
