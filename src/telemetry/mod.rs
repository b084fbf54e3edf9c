//! Tracing set-up for a process whose stdout the Functions host scrapes: `fmt` lines, INFO by default, `RUST_LOG`
//! overrides, ANSI colours only on a terminal (the host would store the escape codes verbatim).
//!
//! Each line is written to stdout as it is logged, so the lines of an invocation are out before its response is
//! sent, and a handler that is killed has already written the lines that explain why. Field values pass through
//! [`Escaped`]: a value taken from a blob name or an API error can neither colour a terminal, start a forged log
//! line (`\n`) nor reverse what follows it (`U+202E`); tracing-subscriber escapes ANSI sequences but not the line
//! breaks of `%`-formatted values.

use std::fmt::{self, Write as _};

use crate::escape::Escaped;
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
