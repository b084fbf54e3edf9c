//! Escaping of text that came from users (blob names, `custom_id`s, API messages) wherever it is shown as a line:
//! stdout, the response's `Logs` (the host writes those entries as they are) and the operators' page. Line breaks and
//! other controls could forge a log line or colour a terminal; bidirectional controls (`U+202E` and its kin) could
//! make `rtl-\u{202e}gnp.jsonl` read as `rtl-lnosj.png`. Each such character is written as `\u{…}`, visibly.

use std::borrow::Cow;
use std::fmt::{self, Write as _};

/// Whether `c` is written escaped: C0 controls (line breaks included), DEL, C1 controls, the bidirectional marks,
/// embeddings, overrides and isolates, and the Unicode line and paragraph separators.
pub fn needs_escape(c: char) -> bool {
    c < ' '
        || ('\u{7f}'..='\u{9f}').contains(&c)
        || matches!(c, '\u{61c}' | '\u{200e}' | '\u{200f}' | '\u{2028}' | '\u{2029}')
        || ('\u{202a}'..='\u{202e}').contains(&c)
        || ('\u{2066}'..='\u{2069}').contains(&c)
}

/// `s` with every character of [`needs_escape`] escaped; borrowed when there is none.
pub fn escaped(s: &str) -> Cow<'_, str> {
    if !s.chars().any(needs_escape) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    // Writing to a String cannot fail.
    let _ = Escaped(&mut out).write_str(s);
    Cow::Owned(out)
}

/// Writes through to `W`, escaping every character of [`needs_escape`].
pub struct Escaped<W>(pub W);

impl<W: fmt::Write> fmt::Write for Escaped<W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut clean = 0;
        for (i, c) in s.char_indices().filter(|(_, c)| needs_escape(*c)) {
            self.0.write_str(&s[clean..i])?;
            match c {
                '\n' => self.0.write_str("\\n")?,
                '\r' => self.0.write_str("\\r")?,
                '\t' => self.0.write_str("\\t")?,
                c => write!(self.0, "\\u{{{:x}}}", c as u32)?,
            }
            clean = i + c.len_utf8();
        }
        self.0.write_str(&s[clean..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_controls_and_bidi_and_keeps_the_rest() {
        assert_eq!(escaped("batch-input/a b.jsonl"), "batch-input/a b.jsonl");
        assert!(matches!(escaped("plain"), Cow::Borrowed(_)));
        assert_eq!(escaped("a\nINFO forged"), "a\\nINFO forged");
        assert_eq!(escaped("\x1b[31mred\x1b[0m\r\t\0"), "\\u{1b}[31mred\\u{1b}[0m\\r\\t\\u{0}");
        assert_eq!(escaped("del\x7f c1\u{9b} latin\u{e9}\u{a0}"), "del\\u{7f} c1\\u{9b} latin\u{e9}\u{a0}");
        assert_eq!(escaped("日本\u{85}"), "日本\\u{85}");
        assert_eq!(escaped("rtl-\u{202e}gnp.jsonl"), "rtl-\\u{202e}gnp.jsonl");
        assert_eq!(
            escaped("\u{2066}x\u{2069}\u{200f}\u{61c}\u{2028}"),
            "\\u{2066}x\\u{2069}\\u{200f}\\u{61c}\\u{2028}"
        );
    }
}
