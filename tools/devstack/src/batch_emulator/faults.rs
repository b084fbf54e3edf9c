//! Fault injection for tests: a share of 429s (with `retry-after-ms`), 500/503s, slow answers. Off by default.
//!
//! Decisions come from a seeded generator (fastrand), so a run with the same seed and request order fails the same way.

use std::time::Duration;

/// What to inject into API answers (not into `/_emulator` control calls).
#[derive(Clone, Debug, Default, serde::Deserialize, serde::Serialize)]
#[serde(default)]
pub struct Faults {
    /// Percentage (0–100) of API calls answered 429.
    pub throttle_percent: u8,
    /// The `retry-after-ms` sent with a 429.
    pub retry_after_ms: u64,
    /// Percentage (0–100) of API calls answered 500 or 503.
    pub unavailable_percent: u8,
    /// Delay before every API answer.
    pub delay_ms: u64,
    /// Delay between accepting a create (the job exists) and answering it: the window in which a client that dies
    /// leaves a job it never heard of.
    pub hold_create_ms: u64,
    /// The next N creates are refused with HTTP 400 `token_limit_exceeded` (the fail-fast regions).
    pub token_limit_creates: u32,
    /// The next N created jobs fail validation with `token_limit_exceeded` (the other regions).
    pub token_limit_jobs: u32,
    /// Answer a list with `$filter` or `$orderby` 400, as a surface without OData support might.
    pub refuse_odata: bool,
}

/// The injected answer, if any.
#[derive(Debug, PartialEq, Eq)]
pub enum Injected {
    Throttle(Duration),
    Unavailable(u16),
}

impl Faults {
    /// Rolls the dice for one request.
    pub fn decide(&self, rng: &Dice) -> Option<Injected> {
        let roll = rng.below(100);
        if roll < self.throttle_percent {
            return Some(Injected::Throttle(Duration::from_millis(self.retry_after_ms)));
        }
        if roll < self.throttle_percent.saturating_add(self.unavailable_percent) {
            return Some(Injected::Unavailable(if rng.below(2) == 0 { 500 } else { 503 }));
        }
        None
    }
}

/// The seeded generator the decisions come from (fastrand), shared by the emulator's requests.
#[derive(Debug)]
pub struct Dice(std::sync::Mutex<fastrand::Rng>);

impl Dice {
    pub fn new(seed: u64) -> Self {
        Dice(std::sync::Mutex::new(fastrand::Rng::with_seed(seed)))
    }

    fn below(&self, n: u8) -> u8 {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).u8(0..n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_are_respected() {
        let rng = Dice::new(42);
        let f = Faults { throttle_percent: 30, unavailable_percent: 20, retry_after_ms: 5, ..Faults::default() };
        let (mut t, mut u) = (0, 0);
        for _ in 0..10_000 {
            match f.decide(&rng) {
                Some(Injected::Throttle(d)) => {
                    assert_eq!(d, Duration::from_millis(5));
                    t += 1
                }
                Some(Injected::Unavailable(s)) => {
                    assert!(s == 500 || s == 503);
                    u += 1
                }
                None => {}
            }
        }
        assert!((2700..3300).contains(&t), "{t}");
        assert!((1700..2300).contains(&u), "{u}");
        assert_eq!(Faults::default().decide(&rng), None);
    }
}
