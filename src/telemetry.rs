//! Logging for `serve`: one line per event on stderr, human or JSON.
//!
//! Log lines carry what senders wrote (tags, repository names, delivery ids,
//! reasons): every field value and message is written with its control
//! characters escaped, so no input can break a line, forge another, or send
//! escape sequences to a terminal. Whether to colour is decided in one place
//! ([`colour_enabled`]), for these logs and for the CLI's output alike.

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

/// `--color`: when output may carry colour codes.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ColorWhen {
    /// On a terminal, unless `NO_COLOR` is set (or `TERM=dumb`); `CLICOLOR_FORCE`
    /// forces it elsewhere.
    #[default]
    Auto,
    Always,
    Never,
}

/// Whether output may be coloured (pure: `terminal` is whether it goes to one,
/// `env` reads the environment). The flag wins; in `auto`, `NO_COLOR` (set and
/// not empty) forbids colour, `CLICOLOR_FORCE` (set and not `0`) forces it, and
/// otherwise only a terminal that is not `dumb` gets it. A log or output
/// redirected to a file or a pipe gets no escape codes unless forced.
pub fn colour_enabled(
    when: ColorWhen,
    terminal: bool,
    env: impl Fn(&str) -> Option<String>,
) -> bool {
    let set = |name: &str| env(name).filter(|v| !v.is_empty());
    match when {
        ColorWhen::Always => true,
        ColorWhen::Never => false,
        ColorWhen::Auto if set("NO_COLOR").is_some() => false,
        ColorWhen::Auto if set("CLICOLOR_FORCE").is_some_and(|v| v != "0") => true,
        ColorWhen::Auto => terminal && env("TERM").as_deref() != Some("dumb"),
    }
}

/// [`colour_enabled`] for serve's log, which goes to stderr.
pub fn colour(when: ColorWhen) -> bool {
    colour_enabled(when, std::io::stderr().is_terminal(), |v| {
        std::env::var(v).ok()
    })
}

/// Sets the process's logger (`RUST_LOG` filters; default `info`).
pub fn init(format: Format, when: ColorWhen) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour(when));
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

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn auto_colours_a_terminal_only() {
        assert!(colour_enabled(ColorWhen::Auto, true, env(&[])));
        assert!(!colour_enabled(ColorWhen::Auto, false, env(&[])));
        assert!(!colour_enabled(
            ColorWhen::Auto,
            true,
            env(&[("TERM", "dumb")])
        ));
    }

    #[test]
    fn no_color_forbids_and_clicolor_force_forces_in_auto() {
        assert!(!colour_enabled(
            ColorWhen::Auto,
            true,
            env(&[("NO_COLOR", "1")])
        ));
        // An empty NO_COLOR is as if unset (no-color.org).
        assert!(colour_enabled(
            ColorWhen::Auto,
            true,
            env(&[("NO_COLOR", "")])
        ));
        assert!(colour_enabled(
            ColorWhen::Auto,
            false,
            env(&[("CLICOLOR_FORCE", "1")])
        ));
        assert!(colour_enabled(
            ColorWhen::Auto,
            false,
            env(&[("CLICOLOR_FORCE", "1"), ("TERM", "dumb")])
        ));
        assert!(!colour_enabled(
            ColorWhen::Auto,
            false,
            env(&[("CLICOLOR_FORCE", "0")])
        ));
        assert!(!colour_enabled(
            ColorWhen::Auto,
            false,
            env(&[("CLICOLOR_FORCE", "")])
        ));
        // Both set: the one that forbids wins.
        let both = [("NO_COLOR", "1"), ("CLICOLOR_FORCE", "1")];
        assert!(!colour_enabled(ColorWhen::Auto, true, env(&both)));
    }

    #[test]
    fn the_flag_wins_over_the_environment_and_the_terminal() {
        let both = [("NO_COLOR", "1"), ("CLICOLOR_FORCE", "1"), ("TERM", "dumb")];
        for terminal in [true, false] {
            assert!(colour_enabled(ColorWhen::Always, terminal, env(&both)));
            assert!(colour_enabled(ColorWhen::Always, terminal, env(&[])));
            assert!(!colour_enabled(ColorWhen::Never, terminal, env(&both)));
            assert!(!colour_enabled(ColorWhen::Never, terminal, env(&[])));
        }
    }

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
