//! CNCF Distribution notifications (registry:2, Harbor's and GitLab's registries):
//! an envelope of `events[]`. Only `push` of a manifest or index that carries a
//! tag is a deployable push; blob pushes and pulls arrive too and are ignored.

use serde::Deserialize;

use super::{parse_time, Item, Parsed, PushEvent, Source, Unreadable};

pub const CONTENT_TYPES: [&str; 2] = [
    "application/vnd.docker.distribution.events.v1+json",
    "application/vnd.docker.distribution.events.v2+json",
];

const MANIFEST_TYPES: [&str; 5] = [
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
];

#[derive(Deserialize)]
struct Envelope {
    events: Vec<Event>,
}

#[derive(Deserialize)]
struct Event {
    id: String,
    #[serde(default)]
    timestamp: Option<String>,
    action: String,
    target: Target,
    #[serde(default)]
    request: Option<Request>,
    #[serde(default)]
    actor: Option<Actor>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Target {
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    digest: Option<String>,
    repository: String,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    tag: Option<String>,
}

#[derive(Deserialize)]
struct Request {
    #[serde(default)]
    host: Option<String>,
}

#[derive(Deserialize)]
struct Actor {
    #[serde(default)]
    name: Option<String>,
}

pub fn content_type_ok(content_type: Option<&str>) -> bool {
    let ct = super::media_type(content_type);
    CONTENT_TYPES.contains(&ct.as_str()) || ct == "application/json"
}

/// The delivery id of an envelope: its first event's id.
pub fn parse(body: &[u8]) -> Result<(String, Parsed), Unreadable> {
    let envelope: Envelope = serde_json::from_slice(body).map_err(|e| {
        Unreadable(format!(
            "not a Distribution notification (an object with events[]): {e}"
        ))
    })?;
    let Some(first) = envelope.events.first() else {
        return Err(Unreadable("notification without events".into()));
    };
    if envelope.events.len() > super::MAX_EVENTS {
        return Err(Unreadable(format!(
            "{} events in one notification; at most {} (set the registry's notification threshold lower)",
            envelope.events.len(),
            super::MAX_EVENTS
        )));
    }
    let delivery_id = first.id.clone();
    let items = envelope
        .events
        .into_iter()
        .map(|e| {
            if e.action != "push" {
                return Item::Ignored(format!("{} of {}", e.action, e.target.repository));
            }
            let media_type = e.target.media_type.clone().unwrap_or_default();
            if !MANIFEST_TYPES.contains(&media_type.as_str()) {
                return Item::Ignored(format!(
                    "push of a blob ({media_type}) to {}",
                    e.target.repository
                ));
            }
            let host = e
                .request
                .as_ref()
                .and_then(|r| r.host.clone())
                .filter(|h| !h.is_empty())
                .or_else(|| {
                    let url = reqwest::Url::parse(e.target.url.as_deref()?).ok()?;
                    let host = url.host_str()?.to_string();
                    Some(url.port().map(|p| format!("{host}:{p}")).unwrap_or(host))
                })
                .unwrap_or_default();
            Item::Push(PushEvent {
                source: Source::Registry,
                delivery_id: e.id,
                registry_host: host,
                repository: e.target.repository,
                tag: e.target.tag.filter(|t| !t.is_empty()),
                digest: e.target.digest.filter(|d| crate::registry::is_digest(d)),
                media_type: Some(media_type),
                pushed_at: e.timestamp.as_deref().and_then(parse_time),
                pusher: e.actor.and_then(|a| a.name).filter(|n| !n.is_empty()),
            })
        })
        .collect();
    Ok((delivery_id, Parsed::Items(items)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE: &[u8] = include_bytes!("../../tests/fixtures/webhooks/distribution-push.json");

    #[test]
    fn blob_pushes_are_ignored_and_the_tagged_manifest_is_a_push() {
        let (id, Parsed::Items(items)) = parse(FIXTURE).unwrap() else {
            panic!()
        };
        assert_eq!(id, "02db6a4f-1b85-43a9-b5f4-35830eafdd3b");
        assert!(matches!(&items[0], Item::Ignored(w) if w.contains("blob")));
        let Item::Push(p) = &items[1] else {
            panic!("{items:?}")
        };
        assert_eq!(p.registry_host, "localhost:5000");
        assert_eq!(p.repository, "pixy");
        assert_eq!(p.tag.as_deref(), Some("latest"));
        assert_eq!(
            p.digest.as_deref(),
            Some("sha256:fea8895f450959fa676bcc1df0611ea93823a735a01205fd8622846041d0c7cf")
        );
        assert_eq!(p.pushed_at, parse_time("2018-08-14T15:30:45.102973972Z"));
    }

    #[test]
    fn other_shapes_are_unreadable() {
        assert!(parse(b"{\"events\": []}").is_err());
        assert!(parse(b"[]").is_err());
        assert!(parse(b"{\"events\": [{\"id\": 1}]}").is_err());
        let harbor = include_bytes!("../../tests/fixtures/webhooks/harbor-push.json");
        assert!(parse(harbor).is_err());
    }

    #[test]
    fn a_notification_of_too_many_events_is_refused_whole() {
        let doc: serde_json::Value = serde_json::from_slice(FIXTURE).unwrap();
        let event = doc["events"][1].clone();
        let at_most =
            serde_json::json!({ "events": vec![event.clone(); super::super::MAX_EVENTS] });
        assert!(parse(at_most.to_string().as_bytes()).is_ok());
        let more = serde_json::json!({ "events": vec![event; super::super::MAX_EVENTS + 1] });
        let e = parse(more.to_string().as_bytes()).unwrap_err();
        assert!(e.0.contains("at most 64"), "{e}");
    }

    #[test]
    fn content_types() {
        assert!(content_type_ok(Some(
            "application/vnd.docker.distribution.events.v1+json"
        )));
        assert!(content_type_ok(Some(
            "application/vnd.docker.distribution.events.v2+json; charset=utf-8"
        )));
        assert!(content_type_ok(Some("application/json")));
        assert!(!content_type_ok(Some("text/plain")));
        assert!(!content_type_ok(None));
    }
}
