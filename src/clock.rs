//! Wall-clock time as the app writes it: Unix seconds in records and messages, RFC 3339 in events and on the page.

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// A Unix time as RFC 3339 in UTC, to the second (`2026-11-30T10:00:00Z`).
pub fn rfc3339(unix_secs: u64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix_secs);
    humantime::format_rfc3339_seconds(at).to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_in_utc_to_the_second() {
        assert_eq!(super::rfc3339(1_764_496_800), "2025-11-30T10:00:00Z");
        assert!(super::unix_now() > 1_764_496_800);
    }
}
