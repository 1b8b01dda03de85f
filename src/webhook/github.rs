//! GitHub `package` / `registry_package` events (and Gitea's GitHub-compatible
//! package events). Signed with `X-Hub-Signature-256: sha256=<hex HMAC-SHA256>`
//! over the raw body, checked before anything is parsed.

use hmac::{Hmac, Mac};
use serde::Deserialize;
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
    with_json(content_type, body, |text| serde_json::from_slice(text))
}

/// [`json_body`] with only what [`parse`] reads: the same answers from `parse`,
/// at a fraction of the cost for a full-size package event.
pub fn document(content_type: Option<&str>, body: &[u8]) -> Result<Value, Unreadable> {
    use serde::de::DeserializeSeed;
    with_json(content_type, body, |text| {
        let mut de = serde_json::Deserializer::from_slice(text);
        let doc = Pruned(READ).deserialize(&mut de)?;
        de.end()?;
        Ok(doc)
    })
}

fn with_json(
    content_type: Option<&str>,
    body: &[u8],
    read: impl FnOnce(&[u8]) -> serde_json::Result<Value>,
) -> Result<Value, Unreadable> {
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
    read(&text).map_err(|e| Unreadable(format!("invalid JSON: {e}")))
}

/// The paths of a GitHub (or Gitea) package delivery that [`parse`] reads. Only
/// these are built into the document; the rest of the body (the repository,
/// users' profiles, the manifest's layers: most of its ~11 KiB) is checked as
/// JSON and skipped.
const READ: &[Keep] = &[
    Keep::node("action", &[]),
    Keep::node("package", PACKAGE),
    Keep::node("registry_package", PACKAGE),
    Keep::node("sender", LOGIN),
];
const LOGIN: &[Keep] = &[Keep::node("login", &[])];
const PACKAGE: &[Keep] = &[
    Keep::node("type", &[]),
    Keep::node("version", &[]),
    Keep::node("package_type", &[]),
    Keep::node("ecosystem", &[]),
    Keep::node("name", &[]),
    Keep::node("namespace", &[]),
    Keep::node("owner", LOGIN),
    Keep::node("html_url", &[]),
    Keep::node("created_at", &[]),
    Keep::node("updated_at", &[]),
    Keep::node(
        "package_version",
        &[
            Keep::node(
                "container_metadata",
                &[
                    Keep::node("tag", &[Keep::node("name", &[]), Keep::node("digest", &[])]),
                    Keep::node(
                        "manifest",
                        &[Keep::node("digest", &[]), Keep::node("media_type", &[])],
                    ),
                ],
            ),
            Keep::node("name", &[]),
            Keep::node("created_at", &[]),
            Keep::node("updated_at", &[]),
            Keep::node("author", LOGIN),
        ],
    ),
];

/// A key kept in the document, and which of its keys are kept in turn (all of
/// it when `children` is empty).
struct Keep {
    key: &'static str,
    children: &'static [Keep],
}

impl Keep {
    const fn node(key: &'static str, children: &'static [Keep]) -> Keep {
        Keep { key, children }
    }
}

/// Deserializes a JSON value keeping only the keys in `0` of an object (a value
/// that is not an object is kept whole, so readers see what they would have).
struct Pruned(&'static [Keep]);

impl<'de> serde::de::DeserializeSeed<'de> for Pruned {
    type Value = Value;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        if self.0.is_empty() {
            return Value::deserialize(d);
        }
        d.deserialize_any(self)
    }
}

macro_rules! whole {
    ($($visit:ident: $ty:ty),*) => {$(
        fn $visit<E: serde::de::Error>(self, v: $ty) -> Result<Value, E> {
            serde::de::Visitor::$visit(ValueVisitor, v)
        }
    )*};
}

/// serde_json's own visitor for a `Value`, reached through `Value::deserialize`.
struct ValueVisitor;

impl<'de> serde::de::Visitor<'de> for ValueVisitor {
    type Value = Value;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(v.into())
    }
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(v.into())
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E: serde::de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Value::deserialize(d)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(v) = seq.next_element()? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut m = serde_json::Map::new();
        while let Some((k, v)) = map.next_entry::<String, Value>()? {
            m.insert(k, v);
        }
        Ok(Value::Object(m))
    }
}

impl<'de> serde::de::Visitor<'de> for Pruned {
    type Value = Value;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    whole!(visit_bool: bool, visit_i64: i64, visit_u64: u64, visit_f64: f64, visit_str: &str, visit_string: String);
    fn visit_unit<E: serde::de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<Value, A::Error> {
        ValueVisitor.visit_seq(seq)
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut kept = serde_json::Map::new();
        while let Some(Key(key)) = map.next_key()? {
            match self.0.iter().find(|k| k.key == key) {
                Some(k) => {
                    let v = map.next_value_seed(Pruned(k.children))?;
                    kept.insert(key.into_owned(), v);
                }
                None => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        Ok(Value::Object(kept))
    }
}

/// An object key, borrowed from the body when it has no escapes.
struct Key<'de>(std::borrow::Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object key")
            }
            fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(v.into()))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(v.to_string().into()))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(v.into()))
            }
        }
        d.deserialize_str(V)
    }
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
    fn the_pruned_document_parses_exactly_like_the_whole_one() {
        let legacy = PUBLISHED.replacen("\"package\":", "\"registry_package\":", 1);
        let npm = PUBLISHED.replace("\"CONTAINER\"", "\"npm\"");
        let bodies = [
            PUBLISHED,
            EMPTY_TAG,
            GITEA,
            &legacy,
            &npm,
            "{}",
            "[1,2]",
            "\"text\"",
            r#"{"package": 3}"#,
            r#"{"package": [{"name": "x"}], "action": "published"}"#,
            r#"{"package": {"package_type": "container", "name": "a", "owner": {"login": 7}}}"#,
            r#"{"action": "published", "action": "updated", "package": {"package_type": 1}}"#,
            r#"{"package": {"type": "container", "version": "v1", "name": "n", "owner": {"login": "o"}, "html_url": "http://h:3000/x"}, "action": "created"}"#,
        ];
        for body in bodies {
            let whole = json_body(Some("application/json"), body.as_bytes()).unwrap();
            let pruned = document(Some("application/json"), body.as_bytes()).unwrap();
            for event in ["package", "registry_package"] {
                assert_eq!(
                    parse(Some(event), Some("g"), &pruned, "ghcr.io"),
                    parse(Some(event), Some("g"), &whole, "ghcr.io"),
                    "{event}: {body}"
                );
            }
        }
        // What is left out of the document is what nothing reads.
        let pruned = document(Some("application/json"), PUBLISHED.as_bytes()).unwrap();
        assert!(pruned.get("repository").is_none());
        assert!(pruned["package"]["owner"].get("avatar_url").is_none());
        assert_eq!(pruned["sender"]["login"], "theryangeary");
        // Invalid JSON, even where nothing is read, and trailing bytes are refused.
        for bad in [r#"{"repository": {"a": }}"#, "{} x", r#"{"package": {}"#] {
            assert!(document(Some("application/json"), bad.as_bytes())
                .unwrap_err()
                .0
                .contains("invalid JSON"));
        }
        let form = b"payload=%7B%22action%22%3A%22published%22%2C%22x%22%3A1%7D";
        let doc = document(Some("application/x-www-form-urlencoded"), form).unwrap();
        assert_eq!(doc, serde_json::json!({"action": "published"}));
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
