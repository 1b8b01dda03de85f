//! Logging for `serve`: one line per event on stderr, human or JSON.
//!
//! Log lines carry what senders wrote (tags, repository names, delivery ids,
//! reasons): every field value and message is written with its control
//! characters escaped, so no input can break a line, forge another, or send
//! escape sequences to a terminal. Colour is decided in one place
//! ([`colour`]): only ever on a terminal.

use std::fmt;
use std::io::IsTerminal;

use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::{DefaultFields, Writer};
use tracing_subscriber::fmt::FormatFields;

/// The log's format.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Format {
    Human,
    /// One JSON object per line (serde_json escapes every control character).
    Json,
}

/// Whether log lines on stderr may carry colour codes: only when stderr is a
/// terminal and `NO_COLOR` is unset or empty. A log redirected to a file or a
/// pipe never gets escape codes.
pub fn colour() -> bool {
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    std::io::stderr().is_terminal() && !no_color
}

/// Sets the process's logger (`RUST_LOG` filters; default `info`).
pub fn init(format: Format) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour());
    match format {
        Format::Human => builder.fmt_fields(Escaped::default()).init(),
        Format::Json => builder.json().init(),
    }
}

/// Writes fields as tracing's default does, then escapes control characters.
#[derive(Default)]
pub struct Escaped(DefaultFields);

impl<'w> FormatFields<'w> for Escaped {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut plain = String::new();
        self.0.format_fields(Writer::new(&mut plain), fields)?;
        writer.write_str(&escape_controls(&plain))
    }
}

/// `text` with every control character (newline, carriage return, escape,
/// NUL, C1 controls...) written as a Rust escape (`\n`, `\u{1b}`).
pub fn escape_controls(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return text.into();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_cannot_break_or_colour_a_line() {
        assert_eq!(escape_controls("v1.2 plain"), "v1.2 plain");
        let forged = "v1\n2026-01-01T00:00:00Z  INFO greenlight: admin logged in\x1b[31m\0\u{85}";
        let escaped = escape_controls(forged);
        assert!(!escaped.chars().any(char::is_control), "{escaped}");
        assert!(escaped.contains("v1\\n2026"), "{escaped}");
        assert!(escaped.contains("\\u{1b}[31m"), "{escaped}");
        assert_eq!(escape_controls("ünïcode ✓"), "ünïcode ✓");
    }
}
