//! Docker Hub webhooks. They are not signed and carry no digest or delivery id:
//! authenticity is the unguessable token in the URL, and the payload is only a
//! claim, so the tag is resolved to a digest at the registry before deploying,
//! and its `pushed_at` is not trusted: the out-of-order guard compares the
//! resolved image's creation time with the live one's instead (resolving).

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
    Ok(Parsed::Items(vec![Item::Push(PushEvent {
        source: Source::Dockerhub,
        delivery_id: super::generated_id("dockerhub"),
        registry_host: registry_host.to_string(),
        repository: repo.to_ascii_lowercase(),
        tag: Some(tag.to_string()),
        digest: None,
        media_type: None,
        // A claim anyone with the URL can make (a year-3000 time would pin
        // the version it names): the image's creation time decides instead.
        pushed_at: None,
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
        assert_eq!(p.pushed_at, None, "the payload's time is not trusted");
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
