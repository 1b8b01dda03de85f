//! Webhooks, as pure functions: check a delivery's signature or token, then parse
//! it into `PushEvent`s. No I/O here; the HTTP layer feeds bytes in and the
//! deployer decides what the events mean.

pub mod distribution;
pub mod dockerhub;
pub mod github;
mod lenient;

use serde::{Deserialize, Serialize};

use crate::config::{Config, ServiceConfig};
use crate::registry::Repository;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Github,
    Dockerhub,
    Registry,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Github => "github",
            Source::Dockerhub => "dockerhub",
            Source::Registry => "registry",
        }
    }
}

impl std::str::FromStr for Source {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "github" => Ok(Source::Github),
            "dockerhub" => Ok(Source::Dockerhub),
            "registry" => Ok(Source::Registry),
            _ => Err(format!("unknown webhook source {s:?}")),
        }
    }
}

/// One image push, whatever sent it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushEvent {
    pub source: Source,
    pub delivery_id: String,
    pub registry_host: String,
    pub repository: String,
    /// Empty for a platform manifest of a multi-arch push.
    pub tag: Option<String>,
    /// Unknown for Docker Hub: resolved at the registry.
    pub digest: Option<String>,
    pub media_type: Option<String>,
    /// Unix milliseconds.
    pub pushed_at: Option<i64>,
    pub pusher: Option<String>,
}

impl PushEvent {
    pub fn describe(&self) -> String {
        format!(
            "{}/{}:{}{}",
            self.registry_host,
            self.repository,
            self.tag.as_deref().unwrap_or(""),
            self.digest
                .as_deref()
                .map(|d| format!("@{}", d.chars().take(19).collect::<String>()))
                .unwrap_or_default()
        )
    }
}

/// What a parsed delivery holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// GitHub's hello; answered 200, nothing else.
    Ping,
    Items(Vec<Item>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    Push(PushEvent),
    /// Authentic but not a deployable push (a blob, a pull, another package type).
    Ignored(String),
}

/// Why a delivery could not be read: answered 400 with this text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unreadable(pub String);

/// Why a delivery is not authentic: answered 401. The text never holds a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unauthorized(pub &'static str);

/// The media type of a Content-Type header, lowercased, without parameters.
pub fn media_type(content_type: Option<&str>) -> String {
    content_type
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// Whether a presented token is the configured one (unset refuses all):
/// compared as digests, in constant time.
pub fn token_matches(presented: &str, expected: Option<&str>) -> bool {
    expected.is_some_and(|e| crate::secret::matches(presented.as_bytes(), e.as_bytes()))
}

/// Most events one delivery may carry; a larger one is refused whole (400).
pub const MAX_EVENTS: usize = 64;

/// The grammar of a delivery id (GitHub's GUID, a registry's event id,
/// greenlight's own `gh-<hex>`): 1 to 128 of letters, digits, `.`, `_`, `:`,
/// `-`, starting with a letter or digit. It appears in URLs and logs, so
/// nothing else is accepted from a sender.
pub fn valid_delivery_id(id: &str) -> bool {
    let mut bytes = id.bytes();
    matches!(bytes.next(), Some(c) if c.is_ascii_alphanumeric())
        && id.len() <= 128
        && bytes.all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b':' | b'-'))
}

/// The service a push belongs to: same registry host and repository (case does
/// not matter: registries lowercase names, GHCR owners are case-insensitive;
/// Docker Hub's `library/` and default host are normalised), then a tag that
/// matches the service's globs.
pub fn match_service<'a>(
    config: &'a Config,
    event: &PushEvent,
) -> Result<&'a ServiceConfig, String> {
    let pushed = Repository::parse(&format!("{}/{}", event.registry_host, event.repository));
    // Names from a sender meet the same grammar as the admin API's before
    // anything is matched, logged as a name or sent to a registry.
    if !crate::registry::valid_repository_path(&pushed.path.to_ascii_lowercase()) {
        return Err(format!(
            "invalid repository {:?} (not a Distribution repository name)",
            event.repository
        ));
    }
    if let Some(tag) = event.tag.as_deref().filter(|t| !t.is_empty()) {
        if !crate::registry::valid_tag(tag) {
            return Err(format!(
                "invalid tag {tag:?} (letters, digits, '_', '.', '-'; at most 128)"
            ));
        }
    }
    let svc = config
        .services
        .iter()
        .find(|s| {
            let r = Repository::parse(&s.image);
            r.host.eq_ignore_ascii_case(&pushed.host) && r.path.eq_ignore_ascii_case(&pushed.path)
        })
        .ok_or_else(|| format!("no service deploys {}/{}", pushed.host, pushed.path))?;
    let Some(tag) = event.tag.as_deref().filter(|t| !t.is_empty()) else {
        return Err(format!(
            "{}: no tag (a platform manifest of a multi-arch push; the index carries the tag)",
            svc.name
        ));
    };
    if !svc.pull {
        return Err(format!(
            "{}: the service deploys local images (pull = false)",
            svc.name
        ));
    }
    if !svc.tag_allowed(tag) {
        return Err(format!(
            "{}: tag {tag:?} does not match the service's tags {:?}",
            svc.name, svc.tags
        ));
    }
    Ok(svc)
}

/// An RFC 3339 time with its offset (`2018-08-14T15:30:44.5+08:00`: Gitea's and
/// Distribution's times are in the server's zone) as Unix milliseconds.
/// `None` for anything else, and for times at or before 1970 (GitHub writes
/// `0001-01-01T00:00:00Z` for "unknown").
pub fn parse_time(text: &str) -> Option<i64> {
    let ms = text.parse::<jiff::Timestamp>().ok()?.as_millisecond();
    (ms > 0).then_some(ms)
}

pub fn generated_id(prefix: &str) -> String {
    let n: u128 = rand::random();
    format!("{prefix}-{n:032x}")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::path::Path;

    /// Services `www` (ghcr.io/TheRyanGeary/www, tags `[0-9a-f]*` and `v*`)
    /// and `hub` (Docker Hub's nginx): the config of webhook and intake tests.
    pub(crate) fn config() -> Config {
        Config::parse(
            Path::new("t.toml"),
            r#"
[server]
admin_token = "0123456789abcdef0123"
[nginx]
mode = "host"
upstreams_dir = "/tmp"
config = "/etc/nginx/nginx.conf"
[[service]]
name = "www"
image = "ghcr.io/TheRyanGeary/www"
tags = ["[0-9a-f]*", "v*"]
port = 80
[[service]]
name = "hub"
image = "nginx"
port = 80
"#,
            |_| None,
        )
        .unwrap()
    }

    fn event(host: &str, repo: &str, tag: Option<&str>) -> PushEvent {
        PushEvent {
            source: Source::Github,
            delivery_id: "d".into(),
            registry_host: host.into(),
            repository: repo.into(),
            tag: tag.map(str::to_string),
            digest: None,
            media_type: None,
            pushed_at: None,
            pusher: None,
        }
    }

    #[test]
    fn services_match_by_host_and_repository_ignoring_case() {
        let c = config();
        let e = event("ghcr.io", "theryangeary/www", Some("0e2a89b"));
        assert_eq!(match_service(&c, &e).unwrap().name, "www");
        let e = event("docker.io", "library/nginx", Some("1.27"));
        assert_eq!(match_service(&c, &e).unwrap().name, "hub");
        let e = event("docker.io", "nginx", Some("1.27"));
        assert_eq!(match_service(&c, &e).unwrap().name, "hub");
    }

    #[test]
    fn unmatched_pushes_say_why() {
        let c = config();
        let e = event("ghcr.io", "someone/else", Some("v1"));
        assert!(match_service(&c, &e)
            .unwrap_err()
            .contains("no service deploys ghcr.io/someone/else"));
        let e = event("ghcr.io", "theryangeary/www", Some(""));
        assert!(match_service(&c, &e).unwrap_err().contains("no tag"));
        let e = event("ghcr.io", "theryangeary/www", Some("release-x"));
        assert!(match_service(&c, &e)
            .unwrap_err()
            .contains("does not match"));
    }

    #[test]
    fn times_parse_with_and_without_fractions_and_zero_is_unknown() {
        assert_eq!(parse_time("1970-01-01T00:00:01Z"), Some(1000));
        assert_eq!(
            parse_time("2018-08-14T15:30:44.588042658Z"),
            Some(1534260644588)
        );
        assert_eq!(parse_time("0001-01-01T00:00:00Z"), None);
        assert_eq!(parse_time("yesterday"), None);
    }

    /// Finding 2: every offset counts (was: `+08:00` read as UTC, `-05:00` not at all).
    #[test]
    fn times_are_read_with_their_offset() {
        let utc = parse_time("2026-11-30T04:00:00.5Z").unwrap();
        assert_eq!(parse_time("2026-11-30T12:00:00.5+08:00"), Some(utc));
        assert_eq!(parse_time("2026-11-29T23:00:00.5-05:00"), Some(utc));
        assert_eq!(parse_time("2026-11-30T04:00:00.5+00:00"), Some(utc));
        assert_eq!(
            parse_time("2026-11-30T04:00:00"),
            None,
            "no offset: not RFC 3339"
        );
    }

    #[test]
    fn delivery_ids_are_guids_and_event_ids_only() {
        for ok in [
            "72d3162e-cc78-11e3-81ab-4c9367dc0958",
            "gh-00ff",
            "a",
            "x.y_z:1",
        ] {
            assert!(valid_delivery_id(ok), "{ok}");
        }
        for bad in [
            "",
            "../services/core/rollback?from=",
            "a/b",
            "a b",
            "-a",
            "é",
            &"a".repeat(129),
        ] {
            assert!(!valid_delivery_id(bad), "{bad}");
        }
    }

    /// Finding 3: a webhook tag meets the tag grammar, whatever the globs say.
    #[test]
    fn a_tag_or_repository_outside_the_grammar_is_ignored_as_invalid() {
        let c = config();
        for tag in [
            "../../../../_catalog",
            "v1\nINFO forged",
            "a\0b",
            "-v1",
            "a:b",
        ] {
            let e = event("docker.io", "nginx", Some(tag));
            let why = match_service(&c, &e).unwrap_err();
            assert!(why.starts_with("invalid tag"), "{tag:?}: {why}");
        }
        let e = event("ghcr.io", "theryangeary/../www", Some("v1"));
        assert!(match_service(&c, &e)
            .unwrap_err()
            .starts_with("invalid repository"));
    }

    #[test]
    fn tokens_compare_exactly_and_an_unset_token_refuses_all() {
        assert!(token_matches("abc", Some("abc")));
        assert!(!token_matches("abd", Some("abc")));
        assert!(!token_matches("ab", Some("abc")));
        assert!(!token_matches("", None));
        assert!(!token_matches("", Some("")));
    }
}
