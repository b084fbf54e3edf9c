//! Pre-flight validation of a batch input file, so that a bad file is rejected before it costs a job, with the line
//! of each problem (azure-openai-batch.md §7 lists the rules and Azure's codes).
//!
//! [`Validator`] is fed the decoded blob in chunks of any size and keeps only the line in progress, the first line's
//! `url` and `body.model`, one 128-bit hash and a line number per `custom_id` (24 bytes a request: 2.4 MB at 100,000
//! requests, 24 MB at a million), and the plan of the file's parts ([`super::plan`]), which it builds in the same
//! pass: where each part's lines begin and end. It stops looking after [`MAX_PROBLEMS`]. It does not care where the
//! bytes come from: the invocation's body today, ranges read from storage for a larger file.

use serde::{Deserialize, Serialize};

use serde_json::value::RawValue;
use siphasher::sip128::SipHasher13;

/// Problems reported per file; reading stops after this many.
pub const MAX_PROBLEMS: usize = 20;
/// A longer line is reported rather than held: no chat or responses request comes near it.
pub const MAX_LINE: usize = 16 << 20;
/// Deepest nesting of arrays and objects accepted in a line: serde_json's own limit for a full parse. The service
/// documents none, but fails a job whose line nests 100,000 deep; the lines people send nest a few levels.
pub const MAX_DEPTH: usize = 128;

/// One problem, at a 1-based line as an editor shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    pub line: u64,
    /// Azure's code where it has one: `bom`, `empty_file`, `invalid_json_line`, `missing_custom_id`,
    /// `duplicate_custom_id`, `invalid_method`, `url_mismatch`, `invalid_request`, `model_mismatch`; and the app's own
    /// `request_over_token_budget` and `request_over_size_limit` for a request no part can hold.
    pub code: String,
    pub message: String,
    /// For `duplicate_custom_id`: the line where the id was first used.
    #[serde(rename = "firstLine", default, skip_serializing_if = "Option::is_none")]
    pub first_line: Option<u64>,
}

mod line;

use line::{Body, Line};

use super::plan::{Limits, Plan, Planner, TooBig};

/// What a file's check found: its problems (none: it can be submitted) and how it is cut into jobs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Checked {
    pub problems: Vec<Problem>,
    pub plan: Plan,
}

/// The streaming validator. Feed with [`Validator::feed`], then call [`Validator::finish`].
#[derive(Default)]
pub struct Validator {
    /// The line in progress (without its `\n`).
    line: Vec<u8>,
    /// Lines seen so far, the one in progress included once it has a byte.
    line_no: u64,
    /// Whether the line in progress grew past [`MAX_LINE`] (its bytes are dropped).
    overlong: bool,
    /// The file's first bytes, held until there are three (a BOM may straddle chunks).
    head: Vec<u8>,
    started: bool,
    /// Bytes of the file read so far, and where the line in progress began.
    read: u64,
    line_start: u64,
    requests: u64,
    first_url: Option<String>,
    first_model: Option<String>,
    /// Every `custom_id`'s hash and line; duplicates are found by sorting, when the file ends.
    ids: Vec<([u64; 2], u32)>,
    problems: Vec<Problem>,
    planner: Planner,
}

impl Validator {
    /// A validator that cuts files by `limits`.
    pub fn new(limits: Limits) -> Self {
        Validator { planner: Planner::new(limits), ..Validator::default() }
    }

    /// Whether enough problems were found: the caller may stop feeding.
    pub fn is_done(&self) -> bool {
        self.problems.len() >= MAX_PROBLEMS
    }

    /// Consumes the next bytes of the file.
    pub fn feed(&mut self, mut bytes: &[u8]) {
        if !self.started {
            let take = (3 - self.head.len()).min(bytes.len());
            self.head.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.head.len() < 3 {
                return;
            }
            self.start();
        }
        self.split(bytes);
    }

    /// Checks the head for a BOM, then reads it like the rest.
    fn start(&mut self) {
        self.started = true;
        let head = std::mem::take(&mut self.head);
        match head.strip_prefix(b"\xEF\xBB\xBF") {
            Some(rest) => {
                self.report(
                    1,
                    "bom",
                    "the file starts with a UTF-8 byte-order mark; save it as UTF-8 without BOM".into(),
                );
                (self.read, self.line_start) = (3, 3);
                self.split(rest);
            }
            None => self.split(&head),
        }
    }

    fn split(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() && !self.is_done() {
            match memchr::memchr(b'\n', bytes) {
                // A whole line in this piece: checked where it is, without a copy.
                Some(end) if self.line.is_empty() && !self.overlong => {
                    self.line_no += 1;
                    self.read += end as u64 + 1;
                    self.check_line(&bytes[..end]);
                    self.line_start = self.read;
                    bytes = &bytes[end + 1..];
                }
                Some(end) => {
                    self.push(&bytes[..end]);
                    self.read += 1;
                    self.end_line();
                    bytes = &bytes[end + 1..];
                }
                None => {
                    self.push(bytes);
                    bytes = &[];
                }
            }
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        self.read += bytes.len() as u64;
        if self.overlong {
            return;
        }
        if self.line.len() + bytes.len() > MAX_LINE {
            self.overlong = true;
            self.line = Vec::new();
            return;
        }
        self.line.extend_from_slice(bytes);
    }

    fn end_line(&mut self) {
        self.line_no += 1;
        let line = std::mem::take(&mut self.line);
        self.check_line(&line);
        self.line_start = self.read;
        // The buffer is reused unless one long line made it large.
        if line.capacity() <= 1 << 20 {
            self.line = line;
            self.line.clear();
        }
        self.overlong = false;
    }

    /// Ready for another file, cut by `limits`, keeping the buffers' memory (a long-lived checker reuses one
    /// validator).
    pub fn reset(&mut self, limits: Limits) {
        let mut ids = std::mem::take(&mut self.ids);
        ids.clear();
        let mut line = std::mem::take(&mut self.line);
        line.clear();
        *self = Validator { ids, line, planner: Planner::new(limits), ..Validator::default() };
    }

    /// The file has ended: the problems found, in line order (at most [`MAX_PROBLEMS`]), and its plan.
    pub fn finish(mut self) -> Checked {
        self.finish_file()
    }

    /// [`Validator::finish`] for a validator that goes on to the next file after [`Validator::reset`].
    pub fn finish_file(&mut self) -> Checked {
        if !self.started {
            self.start();
        }
        if !self.is_done() && (!self.line.is_empty() || self.overlong) {
            let line = std::mem::take(&mut self.line);
            self.line_no += 1;
            self.check_line(&line);
        }
        self.report_duplicates();
        if self.requests == 0 && self.problems.iter().all(|p| p.code == "bom") {
            let line = self.line_no.max(1);
            self.report(line, "empty_file", "the file holds no request (it is empty or only blank lines)".into());
        }
        let planner = std::mem::take(&mut self.planner);
        Checked { problems: std::mem::take(&mut self.problems), plan: planner.finish(self.read) }
    }

    /// Each `custom_id` used before, at the line that used it again (with the first line), merged into the other
    /// problems in line order: on one line, a duplicate comes before the rules checked after the id.
    fn report_duplicates(&mut self) {
        self.ids.sort_unstable();
        let mut duplicates = Vec::new();
        for pair in self.ids.windows(2) {
            let (first, again) = (pair[0], pair[1]);
            if first.0 == again.0 {
                let original = self.ids.partition_point(|e| e.0 < first.0);
                let first_line = u64::from(self.ids[original].1);
                let message = format!("this `custom_id` was already used on line {first_line}");
                let line = u64::from(again.1);
                duplicates.push(Problem {
                    line,
                    code: "duplicate_custom_id".into(),
                    message,
                    first_line: Some(first_line),
                });
            }
        }
        if duplicates.is_empty() {
            return;
        }
        let rank = |p: &Problem| (p.line, u8::from(p.code != "bom") + u8::from(p.code != "duplicate_custom_id"));
        self.problems.extend(duplicates);
        self.problems.sort_by_key(rank);
        self.problems.truncate(MAX_PROBLEMS);
    }

    fn report(&mut self, line: u64, code: &str, message: String) {
        self.record(Problem { line, code: code.into(), message, first_line: None });
    }

    fn record(&mut self, problem: Problem) {
        if !self.is_done() {
            self.problems.push(problem);
        }
    }

    fn check_line(&mut self, raw: &[u8]) {
        let n = self.line_no;
        if self.overlong {
            self.requests += 1;
            return self.report(n, "invalid_request", format!("the line is longer than {} MiB", MAX_LINE >> 20));
        }
        let text = raw.strip_suffix(b"\r").unwrap_or(raw);
        if text.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        self.requests += 1;
        // serde would also read a struct from a JSON array.
        if text.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return self.report(n, "invalid_json_line", "the line is not a JSON object".into());
        }
        // UTF-8 first, for the whole line: serde_json does not check the strings it skips.
        let Ok(text) = std::str::from_utf8(text) else {
            return self.report(n, "invalid_json_line", "the line is not UTF-8 text".into());
        };
        let line: Line<'_> = match serde_json::from_str(text) {
            Ok(line) => line,
            Err(e) => return self.report(n, "invalid_json_line", format!("the line is not one JSON object: {e}")),
        };
        // serde_json skips the values the rules do not read without a depth limit.
        if nests_deeper_than(text.as_bytes(), MAX_DEPTH) {
            let message = format!("the line nests arrays and objects more than {MAX_DEPTH} levels deep");
            return self.report(n, "invalid_json_line", message);
        }
        self.check_custom_id(n, line.custom_id);
        if string_of(line.method).as_deref() != Some("POST") {
            self.report(n, "invalid_method", "`method` must be \"POST\"".into());
        }
        match (string_of(line.url), &self.first_url) {
            (None, _) => self.report(n, "url_mismatch", "`url` is missing or not a string".into()),
            (Some(url), None) => self.first_url = Some(url),
            (Some(url), Some(first)) if &url != first => {
                let message = format!("`url` is {url:?} where the first line has {first:?}; one file, one url");
                self.report(n, "url_mismatch", message);
            }
            _ => {}
        }
        let Some(Body::Object { model }) = line.body else {
            return self.report(n, "invalid_request", "`body` must be a JSON object".into());
        };
        match (model.and_then(|m| string_of(Some(m))), &self.first_model) {
            (None, _) => self.report(n, "invalid_request", "`body.model` (the deployment name) is missing".into()),
            (Some(model), None) => {
                self.planner.deployment(&model);
                self.first_model = Some(model);
            }
            (Some(model), Some(first)) if &model != first => {
                let message =
                    format!("`body.model` is {model:?} where the first line has {first:?}; one deployment per file");
                self.report(n, "model_mismatch", message);
            }
            _ => {}
        }
        self.plan_request(n);
    }

    /// Puts the request just checked into a part, or says why no part can hold it.
    fn plan_request(&mut self, n: u64) {
        match self.planner.request(n, self.line_start, self.read) {
            Ok(()) => {}
            Err(TooBig::Tokens { tokens, budget }) => self.report(
                n,
                "request_over_token_budget",
                format!(
                    "the request is estimated at {tokens} tokens, more than the deployment's whole enqueued-token \
                     quota ({budget}, BATCH_TOKEN_QUOTA): no job can hold it"
                ),
            ),
            Err(TooBig::Bytes { bytes, max }) => self.report(
                n,
                "request_over_size_limit",
                format!("the request's line is {bytes} bytes, more than a job may hold (BATCH_MAX_BYTES = {max})"),
            ),
        }
    }

    fn check_custom_id(&mut self, n: u64, raw: Option<&RawValue>) {
        let id = match raw.and_then(|r| string_of(Some(r))) {
            Some(id) if !id.is_empty() => id,
            _ => return self.report(n, "missing_custom_id", "`custom_id` must be a non-empty string".into()),
        };
        let hash = SipHasher13::new().hash(id.as_bytes()).as_u128();
        // Line numbers fit: a line takes at least two bytes, and no file reaches 8 GB.
        let line = u32::try_from(n).unwrap_or(u32::MAX);
        self.ids.push(([(hash >> 64) as u64, hash as u64], line));
    }
}

/// Whether valid JSON `text` nests arrays and objects deeper than `limit`. Fewer opening brackets than the limit
/// cannot nest deeper, which settles almost every line with one vectorised count; the rest are walked, skipping
/// strings.
fn nests_deeper_than(text: &[u8], limit: usize) -> bool {
    if memchr::memchr2_iter(b'[', b'{', text).count() <= limit {
        return false;
    }
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in text {
        match (in_string, b) {
            (true, _) if escaped => escaped = false,
            (true, b'\\') => escaped = true,
            (true, b'"') | (false, b'"') => in_string = !in_string,
            (false, b'[' | b'{') => {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            (false, b']' | b'}') => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// A raw JSON value as a string, if it is one.
fn string_of(raw: Option<&RawValue>) -> Option<String> {
    serde_json::from_str::<String>(raw?.get()).ok()
}

#[cfg(test)]
mod tests;
