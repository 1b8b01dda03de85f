//! Webhooks, as pure functions: check a delivery's signature or token, then parse
//! it into `PushEvent`s. No I/O here; the HTTP layer feeds bytes in and the
//! deployer decides what the events mean.

pub mod distribution;
pub mod dockerhub;
pub mod github;

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
                .map(|d| format!("@{}", &d[..d.len().min(19)]))
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

/// Constant-time comparison of a presented token with the configured one.
pub fn token_matches(presented: &str, expected: Option<&str>) -> bool {
    use subtle::ConstantTimeEq;
    match expected {
        Some(e) if !e.is_empty() => presented.as_bytes().ct_eq(e.as_bytes()).into(),
        _ => false,
    }
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

pub fn parse_time(text: &str) -> Option<i64> {
    let t = humantime::parse_rfc3339_weak(text.trim_end_matches('Z')).ok()?;
    let ms = t.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis() as i64;
    // GitHub writes 0001-01-01T00:00:00Z for "unknown".
    (ms > 0).then_some(ms)
}

pub fn generated_id(prefix: &str) -> String {
    use rand::Rng;
    let n: u128 = rand::thread_rng().gen();
    format!("{prefix}-{n:032x}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config() -> Config {
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

    #[test]
    fn tokens_compare_exactly_and_an_unset_token_refuses_all() {
        assert!(token_matches("abc", Some("abc")));
        assert!(!token_matches("abd", Some("abc")));
        assert!(!token_matches("ab", Some("abc")));
        assert!(!token_matches("", None));
        assert!(!token_matches("", Some("")));
    }
}
