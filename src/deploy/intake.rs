//! What a webhook delivery means, decided in one place: for each push it
//! carries, ignored, already live, stale, a duplicate of a deployment in
//! flight, or a new deployment (which supersedes older queued ones, so the
//! latest push wins).
//!
//! [`judge`] is the decision as a pure function of the service's state;
//! [`admit`] reads that state, decides and acts on one connection. It runs on
//! the ledger's writer thread inside the transaction that records the
//! delivery (ledger.rs), so decisions are serialised and a delivery is one
//! row, written by one path, together with the deployments it created.

use rusqlite::{Connection, Transaction};
use serde::Serialize;

use crate::config::{Config, ServiceConfig};
use crate::display::{short_digest as short, timestamp as time};
use crate::domain::deployment::{State, Trigger};
use crate::store::{self, Deployment, Live, NewDeployment, StoreError};
use crate::webhook::{match_service, Item, PushEvent};

/// How far a push time may lie ahead of its receipt (the sender's clock may
/// run a little ahead). A payload's time is a claim: a later one would pin the
/// version it names and refuse every real push after it as stale; held to
/// this, a forged time can hold a version for at most these 5 seconds.
pub const MAX_CLOCK_SKEW_MS: i64 = 5_000;

/// Most characters of a delivery's `detail` kept in the ledger.
pub const MAX_DETAIL: usize = 2_000;

/// What became of a webhook delivery (or of one push it carried).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Queued,
    Ignored,
    Duplicate,
    Stale,
    AlreadyLive,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Queued => "queued",
            Verdict::Ignored => "ignored",
            Verdict::Duplicate => "duplicate",
            Verdict::Stale => "stale",
            Verdict::AlreadyLive => "already_live",
        }
    }

    /// Which verdict speaks for a delivery of several events.
    fn rank(self) -> u8 {
        match self {
            Verdict::Queued => 4,
            Verdict::Duplicate => 3,
            Verdict::AlreadyLive => 2,
            Verdict::Stale => 1,
            Verdict::Ignored => 0,
        }
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What became of one push.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub event: Option<PushEvent>,
    pub service: Option<String>,
    pub verdict: Verdict,
    pub detail: String,
    pub deployment: Option<i64>,
}

impl Outcome {
    pub fn ignored(why: impl Into<String>) -> Outcome {
        Outcome {
            event: None,
            service: None,
            verdict: Verdict::Ignored,
            detail: why.into(),
            deployment: None,
        }
    }
}

/// What a push means for a service, given its live image and its unfinished
/// deployments (oldest first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Judgement {
    AlreadyLive(String),
    Stale(String),
    Duplicate {
        deployment: i64,
        detail: String,
    },
    /// Deploy it, superseding these queued deployments.
    Deploy {
        supersede: Vec<i64>,
    },
}

/// Whether `event` asks for what deployment `d` already does.
fn same_push(event: &PushEvent, d: &Deployment) -> bool {
    match &event.digest {
        Some(digest) => d.digest.as_ref().or(d.requested_digest.as_ref()) == Some(digest),
        // Docker Hub: no digest; the same tag still to be resolved is a repeat.
        None => {
            d.requested_digest.is_none()
                && d.requested_tag == event.tag
                && (event.pushed_at.is_none()
                    || d.pushed_at.is_none()
                    || event.pushed_at == d.pushed_at)
        }
    }
}

/// The decision about `event` for `svc` (a pure function: unit-tested below).
pub fn judge(
    svc: &ServiceConfig,
    live: Option<&Live>,
    active: &[Deployment],
    event: &PushEvent,
) -> Judgement {
    if let (Some(digest), Some(l)) = (&event.digest, live) {
        if &l.digest == digest {
            return Judgement::AlreadyLive(format!(
                "{}: {} is already live",
                svc.name,
                short(digest)
            ));
        }
    }
    if let (Some(pushed), Some(l)) = (event.pushed_at, live) {
        if let Some(live_pushed) = l.pushed_at.filter(|lp| pushed < *lp) {
            return Judgement::Stale(format!(
                "{}: pushed at {}, before the live image ({} pushed at {}); deploy it by hand to force it",
                svc.name,
                time(pushed),
                short(&l.digest),
                time(live_pushed)
            ));
        }
    }
    for d in active {
        if same_push(event, d) {
            return Judgement::Duplicate {
                deployment: d.id,
                detail: format!(
                    "{}: same push as deployment {} ({})",
                    svc.name, d.id, d.state
                ),
            };
        }
        if let (Some(pushed), Some(theirs)) = (event.pushed_at, d.pushed_at) {
            if pushed < theirs {
                return Judgement::Stale(format!(
                    "{}: pushed at {}, before deployment {} in progress (pushed at {})",
                    svc.name,
                    time(pushed),
                    d.id,
                    time(theirs)
                ));
            }
        }
    }
    Judgement::Deploy {
        supersede: active
            .iter()
            .filter(|d| d.state == State::Received)
            .map(|d| d.id)
            .collect(),
    }
}

/// A push time as greenlight trusts it: never later than its receipt plus
/// [`MAX_CLOCK_SKEW_MS`].
pub fn trusted_push_time(claimed: Option<i64>, received_at: i64) -> Option<i64> {
    claimed.map(|t| t.min(received_at.saturating_add(MAX_CLOCK_SKEW_MS)))
}

/// Everything a delivery's pushes came to.
#[derive(Debug, Clone)]
pub struct Admitted {
    pub verdict: Verdict,
    /// The events' details joined, at most [`MAX_DETAIL`] characters.
    pub detail: String,
    pub outcomes: Vec<Outcome>,
    pub services: Vec<String>,
    /// Deployments it queued or is a duplicate of.
    pub deployments: Vec<i64>,
    /// Deployments it created, by service: for the service queues once committed.
    pub queued: Vec<(String, i64)>,
    /// Queued deployments it superseded: they ended without running.
    pub superseded: Vec<i64>,
    /// A ping: answered 200 `pong`.
    pub ping: bool,
}

/// Decides each push of a delivery and acts on it on `conn` (the caller's
/// transaction): new deployments (linked to ledger row `delivery_row`) and
/// the queued ones they supersede. `received_at` bounds the push times.
pub fn admit(
    config: &Config,
    conn: &Transaction,
    items: &[Item],
    ping: bool,
    delivery_row: i64,
    received_at: i64,
) -> Result<Admitted, StoreError> {
    let mut outcomes = Vec::with_capacity(items.len());
    let mut queued = Vec::new();
    let mut superseded = Vec::new();
    for item in items {
        let outcome = match item {
            Item::Ignored(why) => Outcome::ignored(why.clone()),
            Item::Push(event) => {
                let mut event = event.clone();
                event.pushed_at = trusted_push_time(event.pushed_at, received_at);
                let mut outcome = Outcome::ignored(String::new());
                match match_service(config, &event) {
                    Err(why) => outcome.detail = why,
                    Ok(svc) => {
                        outcome.service = Some(svc.name.clone());
                        let live = store::live_on(conn, &svc.name)?;
                        let active = store::active_on(conn, &svc.name)?;
                        match judge(svc, live.as_ref(), &active, &event) {
                            Judgement::AlreadyLive(why) => {
                                outcome.verdict = Verdict::AlreadyLive;
                                outcome.detail = why;
                            }
                            Judgement::Stale(why) => {
                                outcome.verdict = Verdict::Stale;
                                outcome.detail = why;
                            }
                            Judgement::Duplicate { deployment, detail } => {
                                outcome.verdict = Verdict::Duplicate;
                                outcome.deployment = Some(deployment);
                                outcome.detail = detail;
                            }
                            Judgement::Deploy { supersede } => {
                                let id = create(conn, svc, &event, delivery_row)?;
                                let mut gone = Vec::new();
                                for old in supersede {
                                    if store::supersede_on(conn, old, id)? {
                                        gone.push(old.to_string());
                                        superseded.push(old);
                                    }
                                }
                                queued.push((svc.name.clone(), id));
                                outcome.verdict = Verdict::Queued;
                                outcome.deployment = Some(id);
                                outcome.detail = format!(
                                    "{}: deployment {id} of {}{}",
                                    svc.name,
                                    event.describe(),
                                    if gone.is_empty() {
                                        String::new()
                                    } else {
                                        format!(" (supersedes {})", gone.join(", "))
                                    }
                                );
                            }
                        }
                    }
                }
                outcome.event = Some(event);
                outcome
            }
        };
        outcomes.push(outcome);
    }
    Ok(summarise(outcomes, queued, superseded, ping))
}

fn create(
    conn: &Connection,
    svc: &ServiceConfig,
    event: &PushEvent,
    delivery_row: i64,
) -> Result<i64, StoreError> {
    store::create_deployment_on(
        conn,
        &NewDeployment {
            service: svc.name.clone(),
            trigger: Trigger::from(event.source),
            trigger_detail: Some(serde_json::json!({
                "source": event.source.as_str(),
                "delivery_id": event.delivery_id,
                "pusher": event.pusher,
                "registry_host": event.registry_host,
                "repository": event.repository,
            })),
            tag: event.tag.clone(),
            digest: event.digest.clone(),
            shown_tag: None,
            pushed_at: event.pushed_at,
            delivery: Some(delivery_row),
            resume_of: None,
            resume_depth: 0,
            strategy: None,
        },
    )
}

/// The verdict of a whole delivery (the strongest of its events'), its
/// detail, and the services and deployments it concerns.
fn summarise(
    outcomes: Vec<Outcome>,
    queued: Vec<(String, i64)>,
    superseded: Vec<i64>,
    ping: bool,
) -> Admitted {
    let verdict = outcomes
        .iter()
        .map(|o| o.verdict)
        .max_by_key(|v| v.rank())
        .unwrap_or(Verdict::Ignored);
    let detail = if ping {
        "ping".to_string()
    } else {
        let parts: Vec<&str> = outcomes
            .iter()
            .map(|o| o.detail.as_str())
            .filter(|d| !d.is_empty())
            .collect();
        cap(parts.join("; "), MAX_DETAIL)
    };
    let mut deployments: Vec<i64> = outcomes
        .iter()
        .filter(|o| matches!(o.verdict, Verdict::Queued | Verdict::Duplicate))
        .filter_map(|o| o.deployment)
        .collect();
    deployments.sort_unstable();
    deployments.dedup();
    let mut services: Vec<String> = outcomes.iter().filter_map(|o| o.service.clone()).collect();
    services.sort();
    services.dedup();
    Admitted {
        verdict,
        detail,
        outcomes,
        services,
        deployments,
        queued,
        superseded,
        ping,
    }
}

/// `text` cut to at most `max` characters, saying how much was left out.
pub fn cap(text: String, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text,
        Some((end, _)) => {
            let left = text[end..].chars().count();
            format!("{} ... ({left} more characters)", &text[..end])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    use crate::webhook::tests::config;
    use crate::webhook::Source;

    fn digest(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    fn push(tag: &str, d: Option<char>, pushed_at: Option<i64>) -> Item {
        Item::Push(PushEvent {
            source: Source::Github,
            delivery_id: "guid".into(),
            registry_host: "ghcr.io".into(),
            repository: "theryangeary/www".into(),
            tag: Some(tag.into()),
            digest: d.map(digest),
            media_type: None,
            pushed_at,
            pusher: Some("dev".into()),
        })
    }

    /// Runs `admit` the way the ledger's writer does: in a transaction, for a
    /// delivery row of its own.
    fn admit_one(store: &Store, items: &[Item], received_at: i64) -> Admitted {
        let mut conn = store.conn();
        let tx = conn.transaction().unwrap();
        tx.execute(
            "INSERT INTO deliveries (source, delivery_id, received_at, headers, body, verdict) \
             VALUES ('github', 'guid', 1, '{}', X'', 'received')",
            [],
        )
        .unwrap();
        let row = tx.last_insert_rowid();
        let admitted = admit(&config(), &tx, items, false, row, received_at).unwrap();
        tx.commit().unwrap();
        admitted
    }

    #[test]
    fn a_push_queues_one_deployment_and_its_repeat_is_a_duplicate() {
        let store = Store::in_memory().unwrap();
        let first = admit_one(&store, &[push("v1", Some('a'), Some(1_000))], 2_000);
        assert_eq!(first.verdict, Verdict::Queued);
        let (service, id) = first.queued[0].clone();
        assert_eq!(service, "www");
        let d = store.deployment(id).unwrap().unwrap();
        assert_eq!(
            (d.trigger.as_str(), d.digest.clone()),
            ("github", Some(digest('a')))
        );
        assert!(d.delivery.is_some(), "linked to its delivery row");
        let again = admit_one(&store, &[push("v1", Some('a'), Some(1_000))], 3_000);
        assert_eq!(again.verdict, Verdict::Duplicate);
        assert_eq!(again.deployments, vec![id]);
        assert!(again.queued.is_empty());
    }

    #[test]
    fn a_newer_push_supersedes_a_queued_one_and_an_older_one_is_stale() {
        let store = Store::in_memory().unwrap();
        let v1 = admit_one(&store, &[push("v1", Some('a'), Some(1_000))], 5_000);
        let v2 = admit_one(&store, &[push("v2", Some('b'), Some(2_000))], 5_000);
        assert_eq!(v2.superseded, vec![v1.queued[0].1]);
        assert!(v2.detail.contains("supersedes"), "{}", v2.detail);
        let late = admit_one(&store, &[push("v0", Some('c'), Some(500))], 5_000);
        assert_eq!(late.verdict, Verdict::Stale, "{}", late.detail);
    }

    #[test]
    fn pushes_outside_the_service_or_its_tags_are_ignored_with_a_reason() {
        let store = Store::in_memory().unwrap();
        let a = admit_one(
            &store,
            &[
                push("release-x", Some('a'), None),
                push("../../x", None, None),
                Item::Ignored("a blob".into()),
            ],
            1,
        );
        assert_eq!(a.verdict, Verdict::Ignored);
        assert!(a.detail.contains("does not match"), "{}", a.detail);
        assert!(a.detail.contains("invalid tag"), "{}", a.detail);
        assert!(a.detail.contains("a blob"), "{}", a.detail);
        assert!(store.active("www").unwrap().is_empty());
    }

    /// Finding 2: a claimed push time is held to its receipt, so a delivery
    /// claiming the far future cannot make every later push stale.
    #[test]
    fn a_push_time_from_the_future_is_held_to_its_receipt() {
        let store = Store::in_memory().unwrap();
        let received = 1_700_000_000_000;
        let year_3000 = 32_503_680_000_000;
        let a = admit_one(&store, &[push("v1", Some('a'), Some(year_3000))], received);
        let d = store.deployment(a.queued[0].1).unwrap().unwrap();
        assert_eq!(d.pushed_at, Some(received + MAX_CLOCK_SKEW_MS));
        // The next real push, a minute later, is newer.
        let b = admit_one(
            &store,
            &[push("v2", Some('b'), Some(received + 120_000))],
            received + 120_000,
        );
        assert_eq!(b.verdict, Verdict::Queued, "{}", b.detail);
        assert_eq!(trusted_push_time(None, 5), None);
        assert_eq!(trusted_push_time(Some(7), 5), Some(7));
    }

    #[test]
    fn details_are_capped() {
        let long = "x".repeat(MAX_DETAIL + 10);
        let capped = cap(long, MAX_DETAIL);
        assert!(capped.ends_with("(10 more characters)"), "{capped}");
        assert_eq!(cap("short".into(), MAX_DETAIL), "short");
    }
}
