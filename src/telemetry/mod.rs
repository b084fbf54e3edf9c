//! Tracing set-up for a process whose stdout the Functions host scrapes: `fmt` lines, INFO by default, `RUST_LOG`
//! overrides, ANSI colours only on a terminal (the host would store the escape codes verbatim).
//!
//! Each line is written to stdout as it is logged, so the lines of an invocation are out before its response is
//! sent, and a handler that is killed has already written the lines that explain why. Field values pass through
//! [`Escaped`]: a value taken from a blob name or an API error can neither colour a terminal nor start a forged log
//! line (`\n`); tracing-subscriber escapes ANSI sequences but not the line breaks of `%`-formatted values.

use std::fmt::{self, Write as _};
use std::io::IsTerminal;

use tracing::field::Field;
use tracing_subscriber::field::MakeExt;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::format::{self, Writer};
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. Safe to call more than once (later calls do nothing).
pub fn init() {
    let builder =
        tracing_subscriber::fmt().with_ansi(std::io::stdout().is_terminal()).with_target(false).fmt_fields(fields());
    // An `EnvFilter` only when `RUST_LOG` asks for one: its directive parser compiles regular expressions on first
    // use, milliseconds of cold start that the default level does not need.
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

/// Writes through to `W`, escaping C0 controls (line breaks included), DEL and C1 controls.
pub struct Escaped<W>(pub W);

impl<W: fmt::Write> fmt::Write for Escaped<W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
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
    fn escapes_controls_and_keeps_the_rest() {
        assert_eq!(escaped("batch-input/a b.jsonl"), "batch-input/a b.jsonl");
        assert_eq!(escaped("a\nINFO forged"), "a\\nINFO forged");
        assert_eq!(escaped("\x1b[31mred\x1b[0m\r\t"), "\\u{1b}[31mred\\u{1b}[0m\\r\\t");
        assert_eq!(escaped("del\x7f c1\u{9b} latin\u{e9}\u{a0}"), "del\\u{7f} c1\\u{9b} latin\u{e9}\u{a0}");
        assert_eq!(escaped("日本\u{85}"), "日本\\u{85}");
    }
}
