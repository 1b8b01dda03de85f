//! How greenlight writes things for people: digests, durations, instants, ages
//! and errors look the same in the CLI, the status page, the notifications and
//! the step notes.

use std::time::{Duration, UNIX_EPOCH};

/// The first 12 hex digits of a digest or image ID, as `docker images` shows them.
pub fn short_digest(digest: &str) -> &str {
    let hex = digest.split_once(':').map_or(digest, |(_, hex)| hex);
    hex.get(..12).unwrap_or(hex)
}

/// A duration in milliseconds for people: `850ms`, `4.2s`, `3m 05s`, `2h 10m`, `3d 4h`.
pub fn duration(ms: i64) -> String {
    let ms = ms.max(0);
    let s = ms / 1000;
    match ms {
        0..=999 => format!("{ms}ms"),
        1_000..=59_999 => format!("{:.1}s", ms as f64 / 1000.0),
        60_000..=3_599_999 => format!("{}m {:02}s", s / 60, s % 60),
        3_600_000..=86_399_999 => format!("{}h {:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// A configured duration, as it reads in the config file (`30s`, `1m 30s`).
pub fn span(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// Unix milliseconds as RFC 3339 UTC, to the second.
pub fn timestamp(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
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

/// An error with its causes ("error sending request" alone says little).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text = format!("{text}: {more}");
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_cut_to_twelve_hex_digits() {
        let d = format!("sha256:{}", "0123456789abcdef".repeat(4));
        assert_eq!(short_digest(&d), "0123456789ab");
        assert_eq!(short_digest("abc"), "abc");
        assert_eq!(short_digest("sha256:ab"), "ab");
    }

    #[test]
    fn durations_read_like_people_say_them() {
        assert_eq!(duration(0), "0ms");
        assert_eq!(duration(850), "850ms");
        assert_eq!(duration(4_249), "4.2s");
        assert_eq!(duration(185_000), "3m 05s");
        assert_eq!(duration(7_800_000), "2h 10m");
        assert_eq!(duration(3 * 86_400_000 + 4 * 3_600_000), "3d 4h");
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
    fn instants_are_rfc3339_utc_seconds() {
        assert_eq!(timestamp(0), "1970-01-01T00:00:00Z");
        assert_eq!(timestamp(1_700_000_000_999), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn error_chains_name_each_cause_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("sending the request")]
        struct Outer(#[source] std::io::Error);
        let e = Outer(std::io::Error::other("connection refused"));
        assert_eq!(error_chain(&e), "sending the request: connection refused");
    }
}
