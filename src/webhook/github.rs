//! GitHub `package` / `registry_package` events (and Gitea's GitHub-compatible
//! package events). Signed with `X-Hub-Signature-256: sha256=<hex HMAC-SHA256>`
//! over the raw body, checked before anything is parsed.

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

use super::{parse_time, Item, Parsed, PushEvent, Source, Unauthorized, Unreadable};

/// Checks `header` against each secret (several during a rotation). The MAC
/// comparison is constant-time.
pub fn verify(secrets: &[String], body: &[u8], header: Option<&str>) -> Result<(), Unauthorized> {
    let header = header.ok_or(Unauthorized("missing X-Hub-Signature-256"))?;
    let hex_sig = header
        .trim()
        .strip_prefix("sha256=")
        .ok_or(Unauthorized("X-Hub-Signature-256 is not sha256=<hex>"))?;
    let signature =
        hex::decode(hex_sig).map_err(|_| Unauthorized("X-Hub-Signature-256 is not valid hex"))?;
    if signature.len() != 32 {
        return Err(Unauthorized("X-Hub-Signature-256 has the wrong length"));
    }
    let mut any = false;
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
        mac.update(body);
        // Every secret is tried, so timing does not reveal which one matched.
        any |= mac.verify_slice(&signature).is_ok();
    }
    if any {
        Ok(())
    } else {
        Err(Unauthorized("signature does not match"))
    }
}

/// `sha256=<hex>` of `body` under `secret`: what GitHub sends (tests and tools use it).
pub fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The JSON document of a delivery: GitHub sends `application/json`, or a form
/// with a `payload` field when the hook is set to `x-www-form-urlencoded`.
pub fn json_body(content_type: Option<&str>, body: &[u8]) -> Result<Value, Unreadable> {
    let ct = super::media_type(content_type);
    let text: std::borrow::Cow<[u8]> = match ct.as_str() {
        "application/json" => body.into(),
        "application/x-www-form-urlencoded" => {
            let payload = form_urlencoded::parse(body)
                .find(|(k, _)| k == "payload")
                .map(|(_, v)| v.into_owned())
                .ok_or_else(|| Unreadable("form body without a payload field".into()))?;
            payload.into_bytes().into()
        }
        other => {
            return Err(Unreadable(format!(
                "unsupported content type {other:?}: send application/json"
            )))
        }
    };
    serde_json::from_slice(&text).map_err(|e| Unreadable(format!("invalid JSON: {e}")))
}

/// Parses a verified delivery. `registry_host` is the registry GitHub package
/// events refer to (`[webhooks] github_registry_host`, normally ghcr.io).
pub fn parse(
    event: Option<&str>,
    delivery: Option<&str>,
    doc: &Value,
    registry_host: &str,
) -> Result<Parsed, Unreadable> {
    let delivery_id = delivery
        .map(str::to_string)
        .unwrap_or_else(|| super::generated_id("gh"));
    match event {
        Some("ping") => return Ok(Parsed::Ping),
        Some("package") | Some("registry_package") => {}
        Some(other) => {
            return Ok(Parsed::Items(vec![Item::Ignored(format!(
                "event {other:?} is not handled (subscribe the hook to package events only)"
            ))]))
        }
        None => return Err(Unreadable("missing X-GitHub-Event header".into())),
    }
    let key = if doc.get("registry_package").is_some() {
        "registry_package"
    } else {
        "package"
    };
    let package = doc
        .get(key)
        .filter(|p| p.is_object())
        .ok_or_else(|| Unreadable(format!("no {key:?} object in the payload")))?;
    // Gitea's GitHub-compatible form: type "container", version = the tag.
    if package.get("type").and_then(Value::as_str).is_some()
        && package.get("version").is_some_and(Value::is_string)
    {
        return gitea(package, doc, delivery_id);
    }
    let package_type = package
        .get("package_type")
        .or_else(|| package.get("ecosystem"))
        .and_then(Value::as_str)
        .ok_or_else(|| Unreadable("package without package_type".into()))?;
    if !package_type.eq_ignore_ascii_case("container") {
        return Ok(Parsed::Items(vec![Item::Ignored(format!(
            "package type {package_type:?} is not a container image"
        ))]));
    }
    let action = doc.get("action").and_then(Value::as_str).unwrap_or("");
    if !matches!(action, "published" | "updated" | "create") {
        return Ok(Parsed::Items(vec![Item::Ignored(format!(
            "package action {action:?} is not a push"
        ))]));
    }
    let name =
        str_at(package, &["name"]).ok_or_else(|| Unreadable("package without name".into()))?;
    let namespace = str_at(package, &["namespace"])
        .or_else(|| str_at(package, &["owner", "login"]))
        .ok_or_else(|| Unreadable("package without namespace or owner".into()))?;
    let version = package
        .get("package_version")
        .filter(|v| v.is_object())
        .ok_or_else(|| Unreadable("package without package_version".into()))?;
    let meta = version.get("container_metadata");
    let tag = meta
        .and_then(|m| str_at(m, &["tag", "name"]))
        .map(str::to_string);
    let digest = meta
        .and_then(|m| str_at(m, &["tag", "digest"]).or_else(|| str_at(m, &["manifest", "digest"])))
        .or_else(|| str_at(version, &["name"]))
        .filter(|d| crate::registry::is_digest(d))
        .map(str::to_string);
    let pushed_at = str_at(version, &["updated_at"])
        .and_then(parse_time)
        .or_else(|| str_at(version, &["created_at"]).and_then(parse_time))
        .or_else(|| str_at(package, &["updated_at"]).and_then(parse_time));
    let pusher = str_at(doc, &["sender", "login"])
        .or_else(|| str_at(version, &["author", "login"]))
        .map(str::to_string);
    Ok(Parsed::Items(vec![Item::Push(PushEvent {
        source: Source::Github,
        delivery_id,
        registry_host: registry_host.to_string(),
        repository: format!("{namespace}/{name}").to_ascii_lowercase(),
        tag,
        digest,
        media_type: meta
            .and_then(|m| str_at(m, &["manifest", "media_type"]))
            .map(str::to_string),
        pushed_at,
        pusher,
    })]))
}

fn gitea(package: &Value, doc: &Value, delivery_id: String) -> Result<Parsed, Unreadable> {
    let kind = str_at(package, &["type"]).unwrap_or("");
    if !kind.eq_ignore_ascii_case("container") {
        return Ok(Parsed::Items(vec![Item::Ignored(format!(
            "package type {kind:?} is not a container image"
        ))]));
    }
    let action = doc.get("action").and_then(Value::as_str).unwrap_or("");
    if action != "created" {
        return Ok(Parsed::Items(vec![Item::Ignored(format!(
            "package action {action:?} is not a push"
        ))]));
    }
    let name =
        str_at(package, &["name"]).ok_or_else(|| Unreadable("package without name".into()))?;
    let owner = str_at(package, &["owner", "login"])
        .ok_or_else(|| Unreadable("package without owner".into()))?;
    let host = str_at(package, &["html_url"])
        .and_then(|u| reqwest::Url::parse(u).ok())
        .and_then(|u| {
            u.host_str().map(|h| {
                u.port()
                    .map(|p| format!("{h}:{p}"))
                    .unwrap_or_else(|| h.to_string())
            })
        })
        .ok_or_else(|| Unreadable("package without html_url".into()))?;
    Ok(Parsed::Items(vec![Item::Push(PushEvent {
        source: Source::Github,
        delivery_id,
        registry_host: host,
        repository: format!("{owner}/{name}").to_ascii_lowercase(),
        tag: str_at(package, &["version"]).map(str::to_string),
        digest: None,
        media_type: None,
        pushed_at: str_at(package, &["created_at"]).and_then(parse_time),
        pusher: str_at(doc, &["sender", "login"]).map(str::to_string),
    })]))
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter()
        .try_fold(v, |v, k| v.get(k))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PUBLISHED: &str =
        include_str!("../../tests/fixtures/webhooks/github-package-published.json");
    const EMPTY_TAG: &str =
        include_str!("../../tests/fixtures/webhooks/github-package-empty-tag.json");
    const GITEA: &str = include_str!("../../tests/fixtures/webhooks/gitea-package.json");

    fn doc(text: &str) -> Value {
        serde_json::from_str(text).unwrap()
    }

    fn push(parsed: Parsed) -> PushEvent {
        match parsed {
            Parsed::Items(mut items) => match items.remove(0) {
                Item::Push(p) => p,
                other => panic!("not a push: {other:?}"),
            },
            other => panic!("not items: {other:?}"),
        }
    }

    #[test]
    fn a_published_container_package_is_a_push_of_its_tag_and_digest() {
        let p = push(parse(Some("package"), Some("guid-1"), &doc(PUBLISHED), "ghcr.io").unwrap());
        assert_eq!(p.delivery_id, "guid-1");
        assert_eq!(p.registry_host, "ghcr.io");
        assert_eq!(p.repository, "theryangeary/www");
        assert_eq!(p.tag.as_deref(), Some("0e2a89b"));
        assert_eq!(
            p.digest.as_deref(),
            Some("sha256:89160c587d0c36bf54090497a465445c14980ba48efbcf3b0d03c49b76f3feb8")
        );
        assert_eq!(
            p.media_type.as_deref(),
            Some("application/vnd.docker.distribution.manifest.list.v2+json")
        );
        assert_eq!(p.pusher.as_deref(), Some("theryangeary"));
        assert_eq!(p.pushed_at, parse_time("2025-11-03T13:50:26Z"));
    }

    #[test]
    fn a_platform_manifest_has_no_tag() {
        let p = push(parse(Some("package"), Some("guid-2"), &doc(EMPTY_TAG), "ghcr.io").unwrap());
        assert_eq!(p.tag, None);
        assert_eq!(
            p.digest.as_deref(),
            Some("sha256:e312a84da724b2de60d64c3241b69e6c89c3ce7ec82e55cd9793ddc1978008c1")
        );
    }

    #[test]
    fn the_legacy_registry_package_event_is_read_the_same_way() {
        let legacy = PUBLISHED.replacen("\"package\":", "\"registry_package\":", 1);
        let p = push(
            parse(
                Some("registry_package"),
                Some("g"),
                &doc(&legacy),
                "ghcr.io",
            )
            .unwrap(),
        );
        assert_eq!(p.tag.as_deref(), Some("0e2a89b"));
    }

    #[test]
    fn gitea_container_packages_resolve_their_tag_at_their_host() {
        let p = push(parse(Some("package"), Some("g"), &doc(GITEA), "ghcr.io").unwrap());
        assert_eq!(p.registry_host, "localhost:3000");
        assert_eq!(p.repository, "user1/giteacontainer");
        assert_eq!(p.tag.as_deref(), Some("latest"));
        assert_eq!(p.digest, None);
    }

    #[test]
    fn other_events_and_packages_are_ignored_with_a_reason() {
        assert_eq!(
            parse(Some("ping"), None, &doc("{}"), "ghcr.io").unwrap(),
            Parsed::Ping
        );
        match parse(Some("push"), None, &doc("{}"), "ghcr.io").unwrap() {
            Parsed::Items(items) => assert!(
                matches!(&items[0], Item::Ignored(w) if w.contains("\"push\" is not handled"))
            ),
            other => panic!("{other:?}"),
        }
        let npm = PUBLISHED.replace("\"CONTAINER\"", "\"npm\"");
        match parse(Some("package"), None, &doc(&npm), "ghcr.io").unwrap() {
            Parsed::Items(items) => {
                assert!(matches!(&items[0], Item::Ignored(w) if w.contains("not a container")))
            }
            other => panic!("{other:?}"),
        }
        assert!(parse(None, None, &doc("{}"), "ghcr.io").is_err());
        assert!(parse(Some("package"), None, &doc("{\"package\": 3}"), "ghcr.io").is_err());
        assert!(parse(Some("package"), None, &doc("[1,2]"), "ghcr.io").is_err());
    }

    #[test]
    fn signatures_are_checked_against_every_secret() {
        let body = br#"{"zen":"hi"}"#;
        let good = sign("new", body);
        let secrets = vec!["old".to_string(), "new".to_string()];
        assert!(verify(&secrets, body, Some(&good)).is_ok());
        let table: Vec<(&str, Option<String>)> = vec![
            ("wrong secret", Some(sign("other", body))),
            ("another body", Some(sign("new", b"{}"))),
            (
                "no prefix",
                Some(good.trim_start_matches("sha256=").to_string()),
            ),
            (
                "odd-length hex",
                Some(format!("{}a", &good[..good.len() - 2])),
            ),
            ("not hex", Some(format!("sha256={}", "zz".repeat(32)))),
            ("short", Some("sha256=abcd".into())),
            ("empty", Some(String::new())),
            ("sha1", Some(good.replace("sha256=", "sha1="))),
            ("missing", None),
        ];
        for (what, header) in table {
            assert!(
                verify(&secrets, body, header.as_deref()).is_err(),
                "{what} was accepted"
            );
        }
        assert!(
            verify(&[], body, Some(&good)).is_err(),
            "no secrets configured refuses all"
        );
    }

    #[test]
    fn bodies_are_json_or_a_form_payload() {
        assert!(json_body(Some("application/json; charset=utf-8"), b"{}").is_ok());
        let form = b"payload=%7B%22a%22%3A1%7D";
        assert_eq!(
            json_body(Some("application/x-www-form-urlencoded"), form).unwrap()["a"],
            1
        );
        assert!(json_body(Some("text/plain"), b"{}")
            .unwrap_err()
            .0
            .contains("unsupported content type"));
        assert!(json_body(None, b"{}").is_err());
        assert!(json_body(Some("application/json"), b"{\"a\":")
            .unwrap_err()
            .0
            .contains("invalid JSON"));
    }
}
