//! GitHub `package` / `registry_package` events (and Gitea's GitHub-compatible
//! package events). Signed with `X-Hub-Signature-256: sha256=<hex HMAC-SHA256>`
//! over the raw body, checked before anything is parsed.

use hmac::{Hmac, KeyInit, Mac};
use serde::Deserialize;
use sha2::Sha256;

use super::lenient::{Obj, Text};
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

/// The JSON text of a delivery: GitHub sends `application/json`, or a form with
/// a `payload` field when the hook is set to `x-www-form-urlencoded`.
fn json_text<'b>(
    content_type: Option<&str>,
    body: &'b [u8],
) -> Result<std::borrow::Cow<'b, [u8]>, Unreadable> {
    let ct = super::media_type(content_type);
    match ct.as_str() {
        "application/json" => Ok(body.into()),
        "application/x-www-form-urlencoded" => form_urlencoded::parse(body)
            .find(|(k, _)| k == "payload")
            .map(|(_, v)| v.into_owned().into_bytes().into())
            .ok_or_else(|| Unreadable("form body without a payload field".into())),
        other => Err(Unreadable(format!(
            "unsupported content type {other:?}: send application/json"
        ))),
    }
}

/// What greenlight reads of a GitHub (or Gitea) package delivery. Everything
/// else in the body (the repository, users' profiles, the manifest's layers:
/// most of its ~11 KiB) is checked as JSON and skipped without being built.
#[derive(Deserialize)]
struct Payload<'a> {
    #[serde(borrow, default)]
    action: Text<'a>,
    #[serde(borrow, default)]
    package: Option<Obj<Package<'a>>>,
    #[serde(borrow, default)]
    registry_package: Option<Obj<Package<'a>>>,
    #[serde(borrow, default)]
    sender: Obj<Login<'a>>,
}

#[derive(Deserialize)]
struct Package<'a> {
    /// Gitea: the package type.
    #[serde(borrow, default, rename = "type")]
    kind: Text<'a>,
    /// Gitea: the tag.
    #[serde(borrow, default)]
    version: Text<'a>,
    #[serde(borrow, default)]
    package_type: Text<'a>,
    #[serde(borrow, default)]
    ecosystem: Text<'a>,
    #[serde(borrow, default)]
    name: Text<'a>,
    #[serde(borrow, default)]
    namespace: Text<'a>,
    #[serde(borrow, default)]
    owner: Obj<Login<'a>>,
    #[serde(borrow, default)]
    html_url: Text<'a>,
    #[serde(borrow, default)]
    created_at: Text<'a>,
    #[serde(borrow, default)]
    updated_at: Text<'a>,
    #[serde(borrow, default)]
    package_version: Obj<Version<'a>>,
}

#[derive(Deserialize)]
struct Version<'a> {
    #[serde(borrow, default)]
    container_metadata: Obj<ContainerMetadata<'a>>,
    #[serde(borrow, default)]
    name: Text<'a>,
    #[serde(borrow, default)]
    created_at: Text<'a>,
    #[serde(borrow, default)]
    updated_at: Text<'a>,
    #[serde(borrow, default)]
    author: Obj<Login<'a>>,
}

#[derive(Deserialize)]
struct ContainerMetadata<'a> {
    #[serde(borrow, default)]
    tag: Obj<TagRef<'a>>,
    #[serde(borrow, default)]
    manifest: Obj<ManifestRef<'a>>,
}

#[derive(Deserialize)]
struct TagRef<'a> {
    #[serde(borrow, default)]
    name: Text<'a>,
    #[serde(borrow, default)]
    digest: Text<'a>,
}

#[derive(Deserialize)]
struct ManifestRef<'a> {
    #[serde(borrow, default)]
    digest: Text<'a>,
    #[serde(borrow, default)]
    media_type: Text<'a>,
}

#[derive(Deserialize)]
struct Login<'a> {
    #[serde(borrow, default)]
    login: Text<'a>,
}

fn login<'a>(l: &'a Obj<Login>) -> Option<&'a str> {
    l.get().and_then(|l| l.login.get())
}

/// Parses a verified delivery. `registry_host` is the registry GitHub package
/// events refer to (`[webhooks] github_registry_host`, normally ghcr.io).
pub fn parse(
    event: Option<&str>,
    delivery: Option<&str>,
    content_type: Option<&str>,
    body: &[u8],
    registry_host: &str,
) -> Result<Parsed, Unreadable> {
    if event == Some("ping") {
        return Ok(Parsed::Ping);
    }
    let text = json_text(content_type, body)?;
    let doc: Payload =
        serde_json::from_slice(&text).map_err(|e| Unreadable(format!("invalid JSON: {e}")))?;
    let delivery_id = delivery
        .map(str::to_string)
        .unwrap_or_else(|| super::generated_id("gh"));
    match event {
        Some("package") | Some("registry_package") => {}
        Some(other) => {
            return Ok(Parsed::Items(vec![Item::Ignored(format!(
                "event {other:?} is not handled (subscribe the hook to package events only)"
            ))]))
        }
        None => return Err(Unreadable("missing X-GitHub-Event header".into())),
    }
    let (key, package) = match (&doc.registry_package, &doc.package) {
        (Some(p), _) => ("registry_package", p),
        (None, Some(p)) => ("package", p),
        (None, None) => ("package", &Obj(None)),
    };
    let package = package
        .get()
        .ok_or_else(|| Unreadable(format!("no {key:?} object in the payload")))?;
    // Gitea's GitHub-compatible form: type "container", version = the tag.
    if package.kind.is_string() && package.version.is_string() {
        return gitea(package, &doc, delivery_id);
    }
    let package_type = package
        .package_type
        .0
        .as_deref()
        .or(package.ecosystem.0.as_deref())
        .ok_or_else(|| Unreadable("package without package_type".into()))?;
    if !package_type.eq_ignore_ascii_case("container") {
        return Ok(Parsed::Items(vec![Item::Ignored(format!(
            "package type {package_type:?} is not a container image"
        ))]));
    }
    let action = doc.action.0.as_deref().unwrap_or("");
    if !matches!(action, "published" | "updated" | "create") {
        return Ok(Parsed::Items(vec![Item::Ignored(format!(
            "package action {action:?} is not a push"
        ))]));
    }
    let name = package
        .name
        .get()
        .ok_or_else(|| Unreadable("package without name".into()))?;
    let namespace = package
        .namespace
        .get()
        .or_else(|| login(&package.owner))
        .ok_or_else(|| Unreadable("package without namespace or owner".into()))?;
    let version = package
        .package_version
        .get()
        .ok_or_else(|| Unreadable("package without package_version".into()))?;
    let meta = version.container_metadata.get();
    let tag_ref = meta.and_then(|m| m.tag.get());
    let manifest = meta.and_then(|m| m.manifest.get());
    let digest = tag_ref
        .and_then(|t| t.digest.get())
        .or_else(|| manifest.and_then(|m| m.digest.get()))
        .or_else(|| version.name.get())
        .filter(|d| crate::registry::is_digest(d))
        .map(str::to_string);
    let pushed_at = [
        &version.updated_at,
        &version.created_at,
        &package.updated_at,
    ]
    .into_iter()
    .find_map(|t| t.get().and_then(parse_time));
    Ok(Parsed::Items(vec![Item::Push(PushEvent {
        source: Source::Github,
        delivery_id,
        registry_host: registry_host.to_string(),
        repository: format!("{namespace}/{name}").to_ascii_lowercase(),
        tag: tag_ref.and_then(|t| t.name.get()).map(str::to_string),
        digest,
        media_type: manifest
            .and_then(|m| m.media_type.get())
            .map(str::to_string),
        pushed_at,
        pusher: login(&doc.sender)
            .or_else(|| login(&version.author))
            .map(str::to_string),
    })]))
}

fn gitea(package: &Package, doc: &Payload, delivery_id: String) -> Result<Parsed, Unreadable> {
    let kind = package.kind.get().unwrap_or("");
    if !kind.eq_ignore_ascii_case("container") {
        return Ok(Parsed::Items(vec![Item::Ignored(format!(
            "package type {kind:?} is not a container image"
        ))]));
    }
    let action = doc.action.0.as_deref().unwrap_or("");
    if action != "created" {
        return Ok(Parsed::Items(vec![Item::Ignored(format!(
            "package action {action:?} is not a push"
        ))]));
    }
    let name = package
        .name
        .get()
        .ok_or_else(|| Unreadable("package without name".into()))?;
    let owner = login(&package.owner).ok_or_else(|| Unreadable("package without owner".into()))?;
    let host = package
        .html_url
        .get()
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
        tag: package.version.get().map(str::to_string),
        digest: None,
        media_type: None,
        pushed_at: package.created_at.get().and_then(parse_time),
        pusher: login(&doc.sender).map(str::to_string),
    })]))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PUBLISHED: &str =
        include_str!("../../tests/fixtures/webhooks/github-package-published.json");
    const EMPTY_TAG: &str =
        include_str!("../../tests/fixtures/webhooks/github-package-empty-tag.json");
    const GITEA: &str = include_str!("../../tests/fixtures/webhooks/gitea-package.json");

    const JSON: Option<&str> = Some("application/json");

    fn parse_json(
        event: Option<&str>,
        delivery: Option<&str>,
        body: &str,
    ) -> Result<Parsed, Unreadable> {
        parse(event, delivery, JSON, body.as_bytes(), "ghcr.io")
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
        let p = push(parse_json(Some("package"), Some("guid-1"), PUBLISHED).unwrap());
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
        let p = push(parse_json(Some("package"), Some("guid-2"), EMPTY_TAG).unwrap());
        assert_eq!(p.tag, None);
        assert_eq!(
            p.digest.as_deref(),
            Some("sha256:e312a84da724b2de60d64c3241b69e6c89c3ce7ec82e55cd9793ddc1978008c1")
        );
    }

    #[test]
    fn the_legacy_registry_package_event_is_read_the_same_way() {
        let legacy = PUBLISHED.replacen("\"package\":", "\"registry_package\":", 1);
        let p = push(parse_json(Some("registry_package"), Some("g"), &legacy).unwrap());
        assert_eq!(p.tag.as_deref(), Some("0e2a89b"));
    }

    #[test]
    fn gitea_container_packages_resolve_their_tag_at_their_host() {
        let p = push(parse_json(Some("package"), Some("g"), GITEA).unwrap());
        assert_eq!(p.registry_host, "localhost:3000");
        assert_eq!(p.repository, "user1/giteacontainer");
        assert_eq!(p.tag.as_deref(), Some("latest"));
        assert_eq!(p.digest, None);
    }

    #[test]
    fn other_events_and_packages_are_ignored_with_a_reason() {
        assert_eq!(parse_json(Some("ping"), None, "{}").unwrap(), Parsed::Ping);
        match parse_json(Some("push"), None, "{}").unwrap() {
            Parsed::Items(items) => assert!(
                matches!(&items[0], Item::Ignored(w) if w.contains("\"push\" is not handled"))
            ),
            other => panic!("{other:?}"),
        }
        let npm = PUBLISHED.replace("\"CONTAINER\"", "\"npm\"");
        match parse_json(Some("package"), None, &npm).unwrap() {
            Parsed::Items(items) => {
                assert!(matches!(&items[0], Item::Ignored(w) if w.contains("not a container")))
            }
            other => panic!("{other:?}"),
        }
        assert!(parse_json(None, None, "{}").is_err());
        assert!(parse_json(Some("package"), None, "{\"package\": 3}").is_err());
        assert!(parse_json(Some("package"), None, "[1,2]").is_err());
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
    fn odd_shapes_are_unreadable_or_ignored_and_unread_parts_are_still_checked() {
        let form = |json: &str| {
            let encoded: String = form_urlencoded::byte_serialize(json.as_bytes()).collect();
            format!("payload={encoded}")
        };
        let unreadable = [
            "[1,2]",
            "\"text\"",
            r#"{"package": 3}"#,
            r#"{"package": [{"name": "x"}], "action": "published"}"#,
            r#"{"package": {"package_type": "container", "name": "a", "owner": {"login": 7}}, "action": "published"}"#,
            // Invalid JSON, even where nothing is read, and trailing bytes.
            r#"{"repository": {"a": }}"#,
            "{} x",
            r#"{"package": {}"#,
        ];
        for body in unreadable {
            assert!(parse_json(Some("package"), None, body).is_err(), "{body}");
        }
        // The form payload reads like the JSON body.
        let via_form = parse(
            Some("package"),
            Some("g"),
            Some("application/x-www-form-urlencoded"),
            form(PUBLISHED).as_bytes(),
            "ghcr.io",
        )
        .unwrap();
        assert_eq!(
            via_form,
            parse_json(Some("package"), Some("g"), PUBLISHED).unwrap()
        );
        let gitea_minimal = r#"{"package": {"type": "container", "version": "v1", "name": "n", "owner": {"login": "o"}, "html_url": "http://h:3000/x"}, "action": "created"}"#;
        let p = push(parse_json(Some("package"), Some("g"), gitea_minimal).unwrap());
        assert_eq!(
            (p.registry_host.as_str(), p.repository.as_str()),
            ("h:3000", "o/n")
        );
    }

    #[test]
    fn bodies_are_json_or_a_form_payload() {
        let ok = |ct: &str, body: &[u8]| parse(Some("star"), None, Some(ct), body, "ghcr.io");
        assert!(ok("application/json; charset=utf-8", b"{}").is_ok());
        assert!(ok(
            "application/x-www-form-urlencoded",
            b"payload=%7B%22a%22%3A1%7D"
        )
        .is_ok());
        assert!(ok("application/x-www-form-urlencoded", b"other=1")
            .unwrap_err()
            .0
            .contains("payload field"));
        assert!(ok("text/plain", b"{}")
            .unwrap_err()
            .0
            .contains("unsupported content type"));
        assert!(parse(Some("star"), None, None, b"{}", "ghcr.io").is_err());
        assert!(ok("application/json", b"{\"a\":")
            .unwrap_err()
            .0
            .contains("invalid JSON"));
    }
}
