//! How human output looks: whether stdout is a terminal, whether it may be
//! coloured, and the small formatters every table and progress line shares.

use std::io::IsTerminal;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;

/// What stdout is. Escape codes (colours, spinners, cursor movement) are only
/// ever written to a terminal, so a pipe or a CI log gets plain lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Term {
    /// stdout is a terminal: spinners and redrawn lines are allowed.
    pub interactive: bool,
    /// Colours and bold are allowed: a terminal, `NO_COLOR` unset or empty, `TERM` not `dumb`.
    pub colour: bool,
}

impl Term {
    pub fn detect() -> Term {
        let interactive = std::io::stdout().is_terminal();
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        let dumb = std::env::var("TERM").is_ok_and(|t| t == "dumb");
        let term = Term {
            interactive,
            colour: interactive && !no_color && !dumb,
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

/// The first 12 hex digits of a digest or image ID, as `docker images` shows them.
pub fn short_digest(v: &Value) -> String {
    match v.as_str() {
        Some(d) => d
            .split_once(':')
            .map_or(d, |(_, hex)| hex)
            .chars()
            .take(12)
            .collect(),
        None => "-".into(),
    }
}

/// A duration for people: `850ms`, `4.2s`, `3m05s`, `2h10m`.
pub fn duration(ms: i64) -> String {
    let ms = ms.max(0);
    if ms < 1_000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else if ms < 3_600_000 {
        format!("{}m{:02}s", ms / 60_000, ms % 60_000 / 1000)
    } else {
        format!("{}h{:02}m", ms / 3_600_000, ms % 3_600_000 / 60_000)
    }
}

/// How long ago `at_ms` was, as `docker ps` says it: `12s ago`, `5m ago`, `3h ago`, `2d ago`.
pub fn age(at_ms: i64, now_ms: i64) -> String {
    let s = (now_ms - at_ms).max(0) / 1000;
    match s {
        0 => "just now".into(),
        1..=59 => format!("{s}s ago"),
        60..=3_599 => format!("{}m ago", s / 60),
        3_600..=172_799 => format!("{}h ago", s / 3_600),
        _ => format!("{}d ago", s / 86_400),
    }
}

/// An instant as RFC 3339 UTC, to the second.
pub fn timestamp(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

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
    fn durations_read_like_people_say_them() {
        assert_eq!(duration(0), "0ms");
        assert_eq!(duration(850), "850ms");
        assert_eq!(duration(4_249), "4.2s");
        assert_eq!(duration(185_000), "3m05s");
        assert_eq!(duration(7_800_000), "2h10m");
        assert_eq!(duration(-5), "0ms");
    }

    #[test]
    fn ages_count_back_from_now() {
        let now = 1_000_000_000;
        assert_eq!(age(now, now), "just now");
        assert_eq!(age(now - 12_000, now), "12s ago");
        assert_eq!(age(now - 300_000, now), "5m ago");
        assert_eq!(age(now - 3 * 3_600_000, now), "3h ago");
        assert_eq!(age(now - 3 * 86_400_000, now), "3d ago");
        assert_eq!(age(now + 5_000, now), "just now", "a clock ahead of ours");
    }

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
