//! How a file is cut into jobs: at most `BATCH_MAX_REQUESTS` requests and `BATCH_MAX_BYTES` bytes a part, and, when
//! the deployment's enqueued-token quota is known (`BATCH_TOKEN_QUOTA`), at most that many estimated tokens, so that
//! one part can always be enqueued once the others have ended. Parts are whole lines, in order: part `i` is the byte
//! range of the file from its first request to the next part's first request.
//!
//! Tokens are estimated from characters, as Azure's own enqueued count is ("an estimate based on the number of
//! characters", azure-openai-batch.md §8), and on the high side: a request's whole line, in UTF-8 bytes, divided by
//! three. English runs about four characters a token and CJK text about three bytes a character and a token, so the
//! estimate is above the real count for both, and the app never plans more than the quota holds.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// Azure's limits on one job (azure-openai-batch.md §8): the defaults of the settings.
pub const SERVICE_MAX_REQUESTS: u64 = 100_000;
/// 200 MB, the limit every surface documents (blob input is documented up to 1 GB).
pub const DEFAULT_MAX_BYTES: u64 = 200_000_000;

/// The enqueued-token quota per deployment (`BATCH_TOKEN_QUOTA`): one number for every deployment, or
/// `deployment=tokens,…` (with an optional bare number for the others).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TokenQuota {
    pub default: Option<u64>,
    pub per_deployment: HashMap<String, u64>,
}

impl TokenQuota {
    /// Parses the setting; an empty value means no quota is known.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut quota = TokenQuota::default();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let number = |v: &str| {
                v.trim().replace('_', "").parse::<u64>().ok().filter(|n| *n > 0).ok_or_else(|| {
                    format!(
                        "`{v}` is not a number of tokens (write 200000000, or gpt-4o=200000000,gpt-4o-mini=1000000000)"
                    )
                })
            };
            match item.split_once('=') {
                Some((deployment, tokens)) if !deployment.trim().is_empty() => {
                    quota.per_deployment.insert(deployment.trim().to_string(), number(tokens)?);
                }
                Some(_) => return Err(format!("`{item}` names no deployment")),
                None if quota.default.is_none() => quota.default = Some(number(item)?),
                None => return Err("more than one quota for every deployment".into()),
            }
        }
        Ok(quota)
    }

    /// The quota of `deployment`, if known.
    pub fn of(&self, deployment: &str) -> Option<u64> {
        self.per_deployment.get(deployment).copied().or(self.default)
    }
}

/// What one part may hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// `BATCH_MAX_REQUESTS`.
    pub max_requests: u64,
    /// `BATCH_MAX_BYTES`.
    pub max_bytes: u64,
    /// `BATCH_TOKEN_QUOTA`.
    pub quota: TokenQuota,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_requests: SERVICE_MAX_REQUESTS, max_bytes: DEFAULT_MAX_BYTES, quota: TokenQuota::default() }
    }
}

/// The estimated tokens of one request line of `bytes` bytes.
pub fn estimate_tokens(bytes: u64) -> u64 {
    bytes.div_ceil(3)
}

/// One part of a file: the byte range `[start, end)` of its lines, from line `first_line` on.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlannedPart {
    pub first_line: u64,
    pub requests: u64,
    pub start: u64,
    pub end: u64,
    /// Estimated input tokens.
    pub tokens: u64,
}

/// A file's cut into parts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    pub parts: Vec<PlannedPart>,
    /// The deployment every line names, and the token budget of a part for it (the quota), if known.
    pub deployment: Option<String>,
    pub token_budget: Option<u64>,
}

impl Plan {
    /// Whether the file is one job as it is (the service reads it in place).
    pub fn is_whole(&self) -> bool {
        self.parts.len() <= 1
    }

    /// Estimated tokens of the whole file.
    pub fn tokens(&self) -> u64 {
        self.parts.iter().map(|p| p.tokens).sum()
    }
}

/// Why a request cannot go into any part.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TooBig {
    /// Its estimated tokens alone exceed the deployment's quota: no job could ever hold it.
    Tokens { tokens: u64, budget: u64 },
    /// Its line alone is longer than a part may be.
    Bytes { bytes: u64, max: u64 },
}

/// Builds a [`Plan`] from the requests of a file, in order.
#[derive(Debug, Default)]
pub struct Planner {
    limits: Limits,
    plan: Plan,
}

impl Planner {
    pub fn new(limits: Limits) -> Self {
        Planner { limits, plan: Plan::default() }
    }

    /// The file's deployment, from its first line: it sets the token budget of a part.
    pub fn deployment(&mut self, deployment: &str) {
        if self.plan.deployment.is_none() {
            self.plan.token_budget = self.limits.quota.of(deployment);
            self.plan.deployment = Some(deployment.to_string());
        }
    }

    /// The request on `line`, whose line takes the bytes `[start, end)` of the file.
    pub fn request(&mut self, line: u64, start: u64, end: u64) -> Result<(), TooBig> {
        let bytes = end - start;
        let tokens = estimate_tokens(bytes);
        if let Some(budget) = self.plan.token_budget.filter(|b| tokens > *b) {
            return Err(TooBig::Tokens { tokens, budget });
        }
        if bytes > self.limits.max_bytes {
            return Err(TooBig::Bytes { bytes, max: self.limits.max_bytes });
        }
        let fits = self.plan.parts.last().is_some_and(|p| {
            p.requests < self.limits.max_requests
                && end - p.start <= self.limits.max_bytes
                && self.plan.token_budget.is_none_or(|b| p.tokens + tokens <= b)
        });
        match self.plan.parts.last_mut() {
            Some(part) if fits => {
                part.requests += 1;
                part.end = end;
                part.tokens += tokens;
            }
            _ => {
                // The previous part ends where this one begins, blank lines between them included.
                if let Some(previous) = self.plan.parts.last_mut() {
                    previous.end = start;
                }
                self.plan.parts.push(PlannedPart { first_line: line, requests: 1, start, end, tokens });
            }
        }
        Ok(())
    }

    /// The plan, for a file of `total` bytes: the last part runs to the end of the file.
    pub fn finish(mut self, total: u64) -> Plan {
        if let Some(last) = self.plan.parts.last_mut() {
            last.end = total;
        }
        self.plan
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(requests: u64, bytes: u64, quota: Option<u64>) -> Limits {
        Limits { max_requests: requests, max_bytes: bytes, quota: TokenQuota { default: quota, ..Default::default() } }
    }

    /// `n` requests of `len` bytes each, back to back.
    fn plan(l: Limits, n: u64, len: u64) -> Plan {
        let mut p = Planner::new(l);
        p.deployment("gpt-4o-batch");
        for i in 0..n {
            p.request(i + 1, i * len, (i + 1) * len).expect("fits");
        }
        p.finish(n * len)
    }

    #[test]
    fn a_file_within_every_limit_is_one_part() {
        let p = plan(Limits::default(), 10, 100);
        assert!(p.is_whole());
        assert_eq!(p.parts[0], PlannedPart { first_line: 1, requests: 10, start: 0, end: 1000, tokens: 340 });
    }

    #[test]
    fn parts_are_cut_by_requests_bytes_and_tokens() {
        let by_requests = plan(limits(1000, u64::MAX, None), 2500, 10);
        let counts: Vec<u64> = by_requests.parts.iter().map(|p| p.requests).collect();
        assert_eq!(counts, [1000, 1000, 500]);
        assert_eq!(
            (by_requests.parts[1].start, by_requests.parts[1].end, by_requests.parts[1].first_line),
            (10_000, 20_000, 1001)
        );
        let by_bytes = plan(limits(u64::MAX, 1000, None), 25, 100);
        assert_eq!(by_bytes.parts.iter().map(|p| p.requests).collect::<Vec<_>>(), [10, 10, 5]);
        // 99 bytes are 33 tokens; a budget of 100 holds three.
        let by_tokens = plan(limits(u64::MAX, u64::MAX, Some(100)), 7, 99);
        assert_eq!(by_tokens.parts.iter().map(|p| p.requests).collect::<Vec<_>>(), [3, 3, 1]);
        assert!(by_tokens.parts.iter().all(|p| p.tokens <= 100));
        assert_eq!(by_tokens.token_budget, Some(100));
    }

    #[test]
    fn blank_lines_between_parts_go_with_the_earlier_part_and_the_last_runs_to_the_end() {
        let mut p = Planner::new(limits(1, u64::MAX, None));
        p.request(1, 0, 10).expect("fits");
        // Line 2 is blank (bytes 10..11).
        p.request(3, 11, 21).expect("fits");
        let plan = p.finish(22);
        assert_eq!((plan.parts[0].start, plan.parts[0].end), (0, 11));
        assert_eq!((plan.parts[1].start, plan.parts[1].end, plan.parts[1].first_line), (11, 22, 3));
    }

    #[test]
    fn a_request_over_the_budget_or_the_size_fits_no_part() {
        let mut p = Planner::new(limits(10, 50, Some(10)));
        p.deployment("d");
        assert_eq!(p.request(1, 0, 31), Err(TooBig::Tokens { tokens: 11, budget: 10 }));
        let mut p = Planner::new(limits(10, 50, None));
        assert_eq!(p.request(1, 0, 51), Err(TooBig::Bytes { bytes: 51, max: 50 }));
    }

    #[test]
    fn quotas_per_deployment_or_for_all() {
        let q = TokenQuota::parse("gpt-4o=200_000_000, gpt-4o-mini=1000000000, 90000").expect("parses");
        assert_eq!(
            (q.of("gpt-4o"), q.of("gpt-4o-mini"), q.of("other")),
            (Some(200_000_000), Some(1_000_000_000), Some(90_000))
        );
        assert_eq!(TokenQuota::parse("").expect("empty"), TokenQuota::default());
        assert!(TokenQuota::parse("gpt-4o=lots").is_err());
        assert!(TokenQuota::parse("=5").is_err());
        assert!(TokenQuota::parse("5,6").is_err());
        assert!(TokenQuota::parse("0").is_err());
    }
}
