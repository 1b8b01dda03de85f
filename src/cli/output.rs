//! How human output looks: whether stdout is a terminal, whether it may be
//! coloured, and the small formatters every table and progress line shares.

use std::io::IsTerminal;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::telemetry::{colour_enabled, ColorWhen};

/// What stdout is. Escape codes (colours, spinners, cursor movement) are only
/// ever written to a terminal, so a pipe or a CI log gets plain lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Term {
    /// stdout is a terminal: spinners and redrawn lines are allowed.
    pub interactive: bool,
    /// Colours and bold are allowed (`--color`, `NO_COLOR`, `CLICOLOR_FORCE`,
    /// a terminal: see [`crate::telemetry::colour_enabled`]).
    pub colour: bool,
}

impl Term {
    pub fn detect(when: ColorWhen) -> Term {
        let interactive = std::io::stdout().is_terminal();
        let term = Term {
            interactive,
            colour: colour_enabled(when, interactive, |v| std::env::var(v).ok()),
        };
        // indicatif and console decide on their own otherwise; one decision for all.
        console::set_colors_enabled(term.colour);
        term
    }

    /// Plain output, as to a pipe.
    #[cfg(test)]
    pub const PLAIN: Term = Term {
        interactive: false,
        colour: false,
    };

    pub fn paint(&self, text: &str, tone: Tone) -> String {
        if !self.colour {
            return text.to_string();
        }
        let style = console::Style::new().force_styling(true);
        let style = match tone {
            Tone::Plain => return text.to_string(),
            Tone::Good => style.green(),
            Tone::Bad => style.red().bold(),
            Tone::Warn => style.yellow(),
            Tone::Busy => style.cyan(),
            Tone::Dim => style.dim(),
            Tone::Bold => style.bold(),
            Tone::Blue => style.blue(),
        };
        style.apply_to(text).to_string()
    }
}

/// What a value means to the reader, painted only when colour is allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tone {
    Plain,
    Good,
    Bad,
    Warn,
    Busy,
    Dim,
    Bold,
    Blue,
}

/// The tone of a deployment state: green live, red failed, yellow did not run
/// to the end, cyan still running.
pub fn state_tone(state: &str) -> Tone {
    match state {
        "succeeded" => Tone::Good,
        "already_live" => Tone::Dim,
        "failed" | "rolled_back" => Tone::Bad,
        "interrupted" | "stale" | "superseded" => Tone::Warn,
        "-" => Tone::Plain,
        _ => Tone::Busy,
    }
}

/// A colour is shown in its colour.
pub fn colour_tone(colour: &str) -> Tone {
    match colour {
        "blue" => Tone::Blue,
        "green" => Tone::Good,
        _ => Tone::Plain,
    }
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A JSON value as a cell: strings bare, `null` as "-".
pub fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) if s.is_empty() => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A digest or image ID from the API, cut as `docker images` shows it ("-" when absent).
pub fn short_digest(v: &Value) -> String {
    v.as_str().map_or_else(
        || "-".into(),
        |d| crate::display::short_digest(d).to_string(),
    )
}

pub use crate::display::{age, duration, timestamp};

/// The first line of `s`, cut to `max` characters with an ellipsis: a table
/// cell stays one line; the full text is in `--json` and `history --steps`.
pub fn truncate(s: &str, max: usize) -> String {
    let line = s.lines().next().unwrap_or("").trim();
    let more_lines = s.trim().lines().nth(1).is_some();
    if line.chars().count() > max {
        let cut: String = line.chars().take(max.saturating_sub(1)).collect();
        format!("{}…", cut.trim_end())
    } else if more_lines {
        format!("{line} …")
    } else {
        line.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_cut_to_twelve_hex_digits() {
        let d = Value::from("sha256:0123456789abcdef0123");
        assert_eq!(short_digest(&d), "0123456789ab");
        assert_eq!(short_digest(&Value::Null), "-");
    }

    #[test]
    fn truncation_keeps_one_line_and_marks_what_was_cut() {
        assert_eq!(truncate("short", 10), "short");
        assert_eq!(truncate("0123456789abc", 10), "012345678…");
        assert_eq!(
            truncate("nginx -t failed:\nline 2", 40),
            "nginx -t failed: …"
        );
    }

    #[test]
    fn plain_output_has_no_escape_codes() {
        assert_eq!(Term::PLAIN.paint("failed", Tone::Bad), "failed");
        let colour = Term {
            interactive: true,
            colour: true,
        };
        assert!(colour.paint("failed", Tone::Bad).contains('\u{1b}'));
    }
}
