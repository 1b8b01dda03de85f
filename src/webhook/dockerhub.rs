//! Docker Hub webhooks. They are not signed and carry no digest or delivery id:
//! authenticity is the unguessable token in the URL, and the payload is only a
//! claim, so the tag is resolved to a digest at the registry before deploying.

use serde_json::Value;

use super::{Item, Parsed, PushEvent, Source, Unreadable};

/// `registry_host`: `[webhooks] dockerhub_registry_host` (normally docker.io).
pub fn parse(body: &[u8], registry_host: &str) -> Result<Parsed, Unreadable> {
    let doc: Value =
        serde_json::from_slice(body).map_err(|e| Unreadable(format!("invalid JSON: {e}")))?;
    let push = doc
        .get("push_data")
        .filter(|p| p.is_object())
        .ok_or_else(|| Unreadable("no push_data object: not a Docker Hub push".into()))?;
    let repo = doc
        .get("repository")
        .and_then(|r| r.get("repo_name"))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| Unreadable("no repository.repo_name".into()))?;
    let tag = push
        .get("tag")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty());
    let Some(tag) = tag else {
        return Ok(Parsed::Items(vec![Item::Ignored(
            "push without a tag".into(),
        )]));
    };
    let pushed_at = push
        .get("pushed_at")
        .and_then(Value::as_i64)
        .map(|s| s * 1000);
    Ok(Parsed::Items(vec![Item::Push(PushEvent {
        source: Source::Dockerhub,
        delivery_id: super::generated_id("dockerhub"),
        registry_host: registry_host.to_string(),
        repository: repo.to_ascii_lowercase(),
        tag: Some(tag.to_string()),
        digest: None,
        media_type: None,
        pushed_at,
        pusher: push
            .get("pusher")
            .and_then(Value::as_str)
            .map(str::to_string),
    })]))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE: &[u8] = include_bytes!("../../tests/fixtures/webhooks/dockerhub-push.json");

    #[test]
    fn a_push_is_a_tag_to_resolve() {
        let Parsed::Items(items) = parse(FIXTURE, "docker.io").unwrap() else {
            panic!()
        };
        let Item::Push(p) = &items[0] else {
            panic!("{items:?}")
        };
        assert_eq!(p.repository, "svendowideit/testhook");
        assert_eq!(p.tag.as_deref(), Some("latest"));
        assert_eq!(p.digest, None);
        assert_eq!(p.pushed_at, Some(1_417_566_161_000));
        assert_eq!(p.pusher.as_deref(), Some("trustedbuilder"));
        assert!(p.delivery_id.starts_with("dockerhub-"));
    }

    #[test]
    fn other_shapes_are_unreadable() {
        assert!(parse(b"{\"push_data\":", "docker.io").is_err());
        assert!(parse(b"{}", "docker.io")
            .unwrap_err()
            .0
            .contains("push_data"));
        assert!(parse(br#"{"push_data":{"tag":"x"},"repository":{}}"#, "docker.io").is_err());
        let harbor = include_bytes!("../../tests/fixtures/webhooks/harbor-push.json");
        assert!(parse(harbor, "docker.io").is_err());
    }
}
