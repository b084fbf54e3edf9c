//! Tracing set-up for a process whose stdout the Functions host scrapes: `fmt` lines, INFO by default, `RUST_LOG`
//! overrides, ANSI colours only on a terminal (the host would store the escape codes verbatim).
//!
//! Field values are written by [`fields`], which escapes control characters itself: a value taken from a blob name or
//! an API error can neither colour a terminal nor start a forged log line (`\n`). tracing-subscriber's own escaping
//! covers ANSI but not line breaks, and writes character by character, which was ~8 % of a QueueMonitor check.
//! Lines are written to stdout once per runtime turn ([`stdout`]).

mod stdout;

pub use stdout::flush;

use std::cell::Cell;
use std::fmt::{self, Write as _};
use std::io::IsTerminal;
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::Field;
use tracing_subscriber::field::MakeExt;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::format::{self, Writer};
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. Safe to call more than once (later calls do nothing).
pub fn init() {
    let builder = tracing_subscriber::fmt()
        .with_ansi(std::io::stdout().is_terminal())
        .with_target(false)
        .with_timer(Utc)
        .fmt_fields(fields())
        .with_writer(stdout::TurnBuffered);
    // A plain level filter unless RUST_LOG asks for more: EnvFilter's per-span matching costs on every invocation.
    let _ = match std::env::var("RUST_LOG").ok().and_then(|v| EnvFilter::try_new(v).ok()) {
        Some(filter) => builder.with_env_filter(filter).try_init(),
        None => builder.with_max_level(LevelFilter::INFO).try_init(),
    };
}

/// `message k=v k=v`, as tracing-subscriber's default, with every value passed through [`Escaped`].
pub fn fields() -> impl for<'w> tracing_subscriber::fmt::FormatFields<'w> + Send + Sync + 'static {
    format::debug_fn(|w: &mut Writer<'_>, field: &Field, value: &dyn fmt::Debug| {
        if field.name() != "message" {
            w.write_str(field.name())?;
            w.write_char('=')?;
        }
        write!(Escaped(w), "{value:?}")
    })
    .delimited(" ")
}

/// Timestamps as tracing-subscriber's `SystemTime` writes them (`2026-11-28T16:02:46.402419Z`), with the date and the
/// time of day formatted once per second per thread instead of on every line (a sixth of a check's logging cost).
pub struct Utc;

thread_local! {
    /// The second last formatted on this thread, and its `YYYY-MM-DDTHH:MM:SS` text.
    static SECOND: Cell<(u64, [u8; 19])> = const { Cell::new((u64::MAX, [0; 19])) };
}

impl tracing_subscriber::fmt::time::FormatTime for Utc {
    fn format_time(&self, w: &mut Writer<'_>) -> fmt::Result {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let secs = now.as_secs();
        let text = SECOND.with(|cell| match cell.get() {
            (cached, text) if cached == secs => text,
            _ => {
                let text = date_time(secs);
                cell.set((secs, text));
                text
            }
        });
        w.write_str(std::str::from_utf8(&text).map_err(|_| fmt::Error)?)?;
        let mut micros = *b".000000Z";
        let mut n = now.subsec_micros();
        for digit in micros[1..7].iter_mut().rev() {
            *digit = b'0' + (n % 10) as u8;
            n /= 10;
        }
        w.write_str(std::str::from_utf8(&micros).map_err(|_| fmt::Error)?)
    }
}

/// `YYYY-MM-DDTHH:MM:SS` of a Unix time, in UTC (the civil-from-days algorithm of H. Hinnant's date library).
fn date_time(secs: u64) -> [u8; 19] {
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let z = days + 719_468;
    let (era, doe) = (z.div_euclid(146_097), z.rem_euclid(146_097));
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let mut out = *b"0000-00-00T00:00:00";
    let mut put = |at: usize, width: usize, mut value: u64| {
        for digit in out[at..at + width].iter_mut().rev() {
            *digit = b'0' + (value % 10) as u8;
            value /= 10;
        }
    };
    put(0, 4, year.clamp(0, 9_999) as u64);
    put(5, 2, month as u64);
    put(8, 2, day as u64);
    put(11, 2, rem / 3_600);
    put(14, 2, rem / 60 % 60);
    put(17, 2, rem % 60);
    out
}

/// Writes through to `W`, escaping C0 controls (line breaks included), DEL and C1 controls.
pub struct Escaped<W>(pub W);

impl<W: fmt::Write> fmt::Write for Escaped<W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        // Fast path: no byte below 0x20, no DEL, and no 0xC2 (the lead byte of U+0080..U+00BF, the C1 range's home).
        // A fold rather than `any`: without an early exit the check compiles to vector code.
        if !s.bytes().fold(false, |found, b| found | (b < 0x20) | (b == 0x7f) | (b == 0xc2)) {
            return self.0.write_str(s);
        }
        let mut clean = 0;
        for (i, c) in s.char_indices() {
            let escape = match c {
                '\n' => Some("\\n"),
                '\r' => Some("\\r"),
                '\t' => Some("\\t"),
                c if c < ' ' || ('\u{7f}'..='\u{9f}').contains(&c) => None,
                _ => continue,
            };
            self.0.write_str(&s[clean..i])?;
            match escape {
                Some(e) => self.0.write_str(e)?,
                None => write!(self.0, "\\u{{{:x}}}", c as u32)?,
            }
            clean = i + c.len_utf8();
        }
        self.0.write_str(&s[clean..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn escaped(s: &str) -> String {
        let mut out = String::new();
        Escaped(&mut out).write_str(s).expect("writes");
        out
    }

    #[test]
    fn dates_are_civil_utc_dates() {
        // Expected values from Python's datetime.fromtimestamp(t, UTC).
        for (secs, expected) in [
            (0, "1970-01-01T00:00:00"),
            (951_782_400, "2000-02-29T00:00:00"),
            (951_868_799, "2000-02-29T23:59:59"),
            (1_735_689_600, "2025-01-01T00:00:00"),
            (1_796_083_199, "2026-11-30T23:59:59"),
            (4_107_542_400, "2100-03-01T00:00:00"),
        ] {
            assert_eq!(std::str::from_utf8(&date_time(secs)), Ok(expected), "{secs}");
        }
    }

    #[test]
    fn timestamps_have_the_subscriber_default_shape() {
        use tracing_subscriber::fmt::time::FormatTime;
        let mut first = String::new();
        Utc.format_time(&mut Writer::new(&mut first)).expect("writes");
        let mut second = String::new();
        Utc.format_time(&mut Writer::new(&mut second)).expect("writes from the cache");
        for t in [&first, &second] {
            let b = t.as_bytes();
            assert_eq!(b.len(), 27, "{t}");
            assert!(t.starts_with("20") && t.ends_with('Z') && b[10] == b'T' && b[19] == b'.', "{t}");
            assert!(b.iter().enumerate().all(|(i, c)| [4, 7, 10, 13, 16, 19, 26].contains(&i) || c.is_ascii_digit()));
        }
        assert!(first <= second, "{first} then {second}");
    }

    #[test]
    fn escapes_controls_and_keeps_the_rest() {
        assert_eq!(escaped("batch-input/a b.jsonl"), "batch-input/a b.jsonl");
        assert_eq!(escaped("a\nINFO forged"), "a\\nINFO forged");
        assert_eq!(escaped("\x1b[31mred\x1b[0m\r\t"), "\\u{1b}[31mred\\u{1b}[0m\\r\\t");
        assert_eq!(escaped("del\x7f c1\u{9b} latin\u{e9}\u{a0}"), "del\\u{7f} c1\\u{9b} latin\u{e9}\u{a0}");
        assert_eq!(escaped("日本\u{85}"), "日本\\u{85}");
    }
}
