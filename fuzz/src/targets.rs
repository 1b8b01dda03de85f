//! The targets: one per parser of untrusted bytes.

use std::collections::HashMap;
use std::path::Path;

use greenlight::config::Config;
use greenlight::http::hooks::parse_delivery;
use greenlight::registry::{self, Repository};
use greenlight::webhook::{self, distribution, dockerhub, github, Item, Parsed, Source};
use proptest::prelude::*;
use serde_json::Value;

use super::{drive, Target};

const PUBLISHED: &str = include_str!("../../tests/fixtures/webhooks/github-package-published.json");
const EMPTY_TAG: &str = include_str!("../../tests/fixtures/webhooks/github-package-empty-tag.json");
const GITEA: &str = include_str!("../../tests/fixtures/webhooks/gitea-package.json");
const DOCKERHUB: &str = include_str!("../../tests/fixtures/webhooks/dockerhub-push.json");
const DISTRIBUTION: &str = include_str!("../../tests/fixtures/webhooks/distribution-push.json");
const HARBOR: &str = include_str!("../../tests/fixtures/webhooks/harbor-push.json");
const EXAMPLE_CONFIG: &str = include_str!("../../greenlight.example.toml");

/// Every target, in the order the long run reports them.
pub fn all() -> Vec<Target> {
    vec![
        Target {
            name: "webhook: GitHub / Gitea package events",
            run: github_events,
        },
        Target {
            name: "webhook: Docker Hub",
            run: dockerhub_pushes,
        },
        Target {
            name: "webhook: CNCF Distribution",
            run: distribution_envelopes,
        },
        Target {
            name: "signature: X-Hub-Signature-256",
            run: signatures,
        },
        Target {
            name: "tokens: path / bearer / CSRF comparison",
            run: tokens,
        },
        Target {
            name: "config loader (greenlight.toml + ${VAR})",
            run: configs,
        },
        Target {
            name: "registry: WWW-Authenticate challenge",
            run: challenges,
        },
        Target {
            name: "image references and tags",
            run: references,
        },
    ]
}

/// Strings a hostile sender would try: control characters, path tricks,
/// quotes, odd Unicode, long runs; plus anything at all.
fn hostile_string() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => any::<String>(),
        2 => "[ -~]{0,40}",
        1 => prop::sample::select(vec![
            "", "../../../../_catalog", "v1\n2026-01-01 INFO forged", "\u{1b}[31mred",
            "a\0b", "127.0.0.1:2375", "169.254.169.254/latest", "%2e%2e/x", "latest",
            "v1.2.3", "sha256:", "ghcr.io", "\"quoted\"", "ä/ö", "\u{202e}rtl", "-v1",
            "${TOKEN}", "$$", "#", "a:b@c", "0001-01-01T00:00:00Z", "3000-01-01T00:00:00Z",
            "2026-11-30T12:00:00.5+08:00", "9999999999999999999999",
        ])
        .prop_map(str::to_string),
        1 => "[a-z0-9._/-]{0,300}",
    ]
}

/// JSON built from the keys the webhook parsers read (and others), with
/// hostile strings and numbers at every level.
fn json_value() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        4 => prop::sample::select(vec![
            "action", "package", "registry_package", "sender", "login", "type", "version",
            "package_type", "ecosystem", "name", "namespace", "owner", "html_url",
            "created_at", "updated_at", "package_version", "container_metadata", "tag",
            "digest", "manifest", "media_type", "author", "push_data", "repository",
            "repo_name", "pushed_at", "pusher", "events", "id", "timestamp", "target",
            "mediaType", "url", "request", "host", "actor",
        ])
        .prop_map(str::to_string),
        1 => hostile_string(),
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        hostile_string().prop_map(Value::String),
        Just(Value::String("container".into())),
        Just(Value::String("push".into())),
        Just(Value::String(format!("sha256:{}", "ab".repeat(32)))),
        Just(Value::String(
            "application/vnd.oci.image.manifest.v1+json".into()
        )),
    ];
    leaf.prop_recursive(5, 64, 8, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key.clone(), inner), 0..8)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// A real payload with bytes changed, cut, repeated or spliced.
fn mutated(fixtures: &'static [&'static str]) -> impl Strategy<Value = Vec<u8>> {
    (
        prop::sample::select(fixtures.to_vec()),
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..4), 0..8),
    )
        .prop_map(|(text, edits)| {
            let mut bytes = text.as_bytes().to_vec();
            for (at, byte, how) in edits {
                if bytes.is_empty() {
                    break;
                }
                let i = at.index(bytes.len());
                match how {
                    0 => bytes[i] = byte,
                    1 => bytes.truncate(i),
                    2 => bytes.insert(i, byte),
                    _ => {
                        let tail = bytes[i..].to_vec();
                        bytes.extend_from_slice(&tail[..tail.len().min(64)]);
                    }
                }
            }
            bytes
        })
}

/// A body for a parser: bytes, a mutated real payload, or built JSON
/// (sometimes wrapped the way that source would wrap it).
fn body(fixtures: &'static [&'static str]) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        1 => prop::collection::vec(any::<u8>(), 0..512),
        3 => mutated(fixtures),
        3 => json_value().prop_map(|v| v.to_string().into_bytes()),
        2 => (prop::sample::select(vec!["package", "push_data", "events"]), json_value())
            .prop_map(|(k, v)| serde_json::json!({ k: v, "action": "published" }).to_string().into_bytes()),
    ]
}

/// The example config (every key), secrets from a fixed token: what
/// deliveries are matched against.
fn config() -> Config {
    Config::parse(Path::new("fuzz.toml"), EXAMPLE_CONFIG, |_| {
        Some("0123456789abcdef0123".into())
    })
    .expect("the example config parses")
}

/// What must hold of any parsed delivery: its pushes name a repository,
/// carry only real digests, and match a service only with a valid tag.
fn check_parsed(parsed: &Parsed, config: &Config) -> Result<(), String> {
    let Parsed::Items(items) = parsed else {
        return Ok(());
    };
    if items.len() > webhook::MAX_EVENTS {
        return Err(format!("{} events accepted", items.len()));
    }
    for item in items {
        let Item::Push(p) = item else { continue };
        if p.repository.is_empty() {
            return Err(format!("a push without a repository: {p:?}"));
        }
        if p.digest.as_deref().is_some_and(|d| !registry::is_digest(d)) {
            return Err(format!("a push with a malformed digest: {p:?}"));
        }
        let _ = p.describe();
        if let Ok(svc) = webhook::match_service(config, p) {
            let tag = p.tag.as_deref().unwrap_or("");
            if !registry::valid_tag(tag) {
                return Err(format!(
                    "{tag:?} matched service {} although not a tag",
                    svc.name
                ));
            }
        }
    }
    Ok(())
}

fn github_events(
    runner: &mut proptest::test_runner::TestRunner,
    stats: &mut super::Stats,
) -> Result<(), String> {
    let config = config();
    let strategy = (
        prop_oneof![
            4 => Just(Some("package".to_string())),
            1 => Just(Some("registry_package".to_string())),
            1 => Just(Some("ping".to_string())),
            1 => Just(None),
            1 => hostile_string().prop_map(Some),
        ],
        prop_oneof![
            6 => Just("application/json".to_string()),
            1 => Just("application/x-www-form-urlencoded".to_string()),
            1 => hostile_string(),
        ],
        body(&[PUBLISHED, EMPTY_TAG, GITEA]),
    );
    drive(runner, stats, strategy, |(event, ct, body)| {
        let body = if ct.starts_with("application/x-www") {
            let encoded: String = form(&body);
            format!("payload={encoded}").into_bytes()
        } else {
            body
        };
        match github::parse(event.as_deref(), Some("guid"), Some(&ct), &body, "ghcr.io") {
            Ok(parsed) => check_parsed(&parsed, &config),
            Err(_) => Ok(()),
        }
    })
}

fn form(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' => (*b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn dockerhub_pushes(
    runner: &mut proptest::test_runner::TestRunner,
    stats: &mut super::Stats,
) -> Result<(), String> {
    let config = config();
    drive(runner, stats, body(&[DOCKERHUB, HARBOR]), |body| {
        match dockerhub::parse(&body, "docker.io") {
            Ok(parsed) => {
                check_parsed(&parsed, &config)?;
                // A Docker Hub payload's push time is never trusted.
                if let Parsed::Items(items) = &parsed {
                    if items
                        .iter()
                        .any(|i| matches!(i, Item::Push(p) if p.pushed_at.is_some()))
                    {
                        return Err("a Docker Hub push time was taken from the payload".into());
                    }
                }
                Ok(())
            }
            Err(_) => Ok(()),
        }
    })
}

fn distribution_envelopes(
    runner: &mut proptest::test_runner::TestRunner,
    stats: &mut super::Stats,
) -> Result<(), String> {
    let config = config();
    let many = (1usize..300).prop_map(|n| {
        let event: Value =
            serde_json::from_str::<Value>(DISTRIBUTION).unwrap()["events"][1].clone();
        serde_json::json!({ "events": vec![event; n] })
            .to_string()
            .into_bytes()
    });
    let strategy = prop_oneof![8 => body(&[DISTRIBUTION, HARBOR]), 1 => many];
    let headers: HashMap<String, String> = [(
        "content-type".to_string(),
        distribution::CONTENT_TYPES[0].to_string(),
    )]
    .into();
    // Through the webhook endpoint's own entry, which checks the delivery id
    // (the envelope's first event id, chosen by the sender).
    drive(runner, stats, strategy, |body| {
        match parse_delivery(&config, Source::Registry, &headers, &body) {
            Ok((id, parsed)) => {
                if !webhook::valid_delivery_id(&id) {
                    return Err(format!("delivery id {id:?} accepted"));
                }
                check_parsed(&parsed, &config)
            }
            Err(_) => Ok(()),
        }
    })
}

fn signatures(
    runner: &mut proptest::test_runner::TestRunner,
    stats: &mut super::Stats,
) -> Result<(), String> {
    let strategy = (
        "[ -~]{1,40}",
        prop::collection::vec(any::<u8>(), 0..256),
        prop::collection::vec(any::<u8>(), 0..256),
        prop_oneof![
            Just(None),
            hostile_string().prop_map(Some),
            "sha256=[0-9a-f]{64}".prop_map(Some),
            "sha256=[0-9A-F]{0,70}".prop_map(Some),
        ],
    );
    drive(runner, stats, strategy, |(secret, body, other, header)| {
        let secrets = vec!["an-old-secret-0123".to_string(), secret.clone()];
        let good = github::sign(&secret, &body);
        if github::verify(&secrets, &body, Some(&good)).is_err() {
            return Err("a genuine signature was refused".into());
        }
        if other != body && github::verify(&secrets, &other, Some(&good)).is_ok() {
            return Err("a signature verified another body".into());
        }
        if let Some(h) = header {
            let genuine = secrets
                .iter()
                .any(|s| github::sign(s, &body).eq_ignore_ascii_case(h.trim()));
            if !genuine && github::verify(&secrets, &body, Some(&h)).is_ok() {
                return Err(format!("a forged header {h:?} verified"));
            }
        }
        Ok(())
    })
}

fn tokens(
    runner: &mut proptest::test_runner::TestRunner,
    stats: &mut super::Stats,
) -> Result<(), String> {
    let strategy = (hostile_string(), hostile_string(), hostile_string());
    drive(runner, stats, strategy, |(presented, expected, header)| {
        let ok = greenlight::secret::matches(presented.as_bytes(), expected.as_bytes());
        if ok != (presented == expected && !expected.is_empty()) {
            return Err(format!("{presented:?} vs {expected:?} compared {ok}"));
        }
        if let Some(t) = greenlight::secret::bearer(&header) {
            if t.is_empty() || !header.ends_with(t) {
                return Err(format!("bearer({header:?}) = {t:?}"));
            }
        }
        let prefixed = format!("Bearer {expected}");
        let taken = greenlight::secret::bearer(&prefixed);
        if !expected.is_empty() && !expected.starts_with(' ') && taken != Some(expected.as_str()) {
            return Err(format!("bearer({prefixed:?}) = {taken:?}"));
        }
        if webhook::valid_delivery_id(&presented) && presented.chars().any(|c| c == '/' || c == '?')
        {
            return Err(format!("delivery id {presented:?} accepted"));
        }
        Ok(())
    })
}

fn configs(
    runner: &mut proptest::test_runner::TestRunner,
    stats: &mut super::Stats,
) -> Result<(), String> {
    let text = prop_oneof![
        1 => any::<String>(),
        4 => mutated(&[EXAMPLE_CONFIG]).prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
    ];
    let strategy = (text, hostile_string());
    drive(runner, stats, strategy, |(text, secret)| {
        let lookup = |_: &str| Some(secret.clone());
        let _ = Config::parse(Path::new("fuzz.toml"), &text, lookup);
        // A secret reaches its value exactly, whatever it holds.
        if secret.chars().count() >= 16 {
            let env: HashMap<&str, String> = [("GREENLIGHT_TOKEN", secret.clone())].into();
            if let Ok(c) = Config::parse(Path::new("fuzz.toml"), EXAMPLE_CONFIG, |v| {
                Some(
                    env.get(v)
                        .cloned()
                        .unwrap_or_else(|| "0123456789abcdef0123".into()),
                )
            }) {
                if c.server.admin_token != secret {
                    return Err(format!("{secret:?} became {:?}", c.server.admin_token));
                }
            }
        }
        Ok(())
    })
}

fn challenges(
    runner: &mut proptest::test_runner::TestRunner,
    stats: &mut super::Stats,
) -> Result<(), String> {
    let strategy = prop_oneof![
        hostile_string(),
        (hostile_string(), hostile_string(), hostile_string()).prop_map(|(r, s, sc)| {
            format!("Bearer realm=\"{r}\",service=\"{s}\",scope=\"{sc}\"")
        }),
        any::<String>().prop_map(|s| format!("Bearer {s}")),
    ];
    drive(runner, stats, strategy, |challenge| {
        for (k, _) in registry::parse_challenge(&challenge) {
            if k.is_empty() || k.chars().any(|c| c.is_ascii_uppercase()) {
                return Err(format!("key {k:?} from {challenge:?}"));
            }
        }
        Ok(())
    })
}

fn references(
    runner: &mut proptest::test_runner::TestRunner,
    stats: &mut super::Stats,
) -> Result<(), String> {
    let strategy = (hostile_string(), hostile_string());
    drive(runner, stats, strategy, |(image, tag)| {
        let repo = Repository::parse(&image);
        let base = repo.api_base(None);
        if registry::valid_tag(&tag)
            && registry::valid_repository_path(&repo.path)
            && registry::valid_host(&repo.host)
        {
            let url = registry::manifest_url(&base, &repo.path, &tag)
                .map_err(|e| format!("{image:?} {tag:?}: {e}"))?;
            if url.path().contains("/../") || !url.path().starts_with("/v2/") {
                return Err(format!("{url} from {image:?} {tag:?}"));
            }
        }
        if registry::valid_tag(&tag)
            && (tag.is_empty() || tag.contains(['/', ':', '\n', '\0']) || tag.len() > 128)
        {
            return Err(format!("{tag:?} passed as a tag"));
        }
        Ok(())
    })
}
