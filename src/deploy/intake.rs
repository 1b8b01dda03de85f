//! What a push means for a service: ignored, already live, stale, a duplicate of
//! a deployment in flight, or a new deployment (which supersedes older queued
//! ones, so the latest push wins). Decisions for all services are serialised so
//! two deliveries of one push cannot both queue a deployment.

use serde::Serialize;

use super::{Deployer, State};
use crate::display::{short_digest, timestamp};
use crate::store::{Deployment, NewDeployment, StoreError};
use crate::webhook::{match_service, PushEvent};

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

/// The verdict of a whole delivery: the strongest of its events'.
pub fn overall(outcomes: &[Outcome]) -> Verdict {
    outcomes
        .iter()
        .map(|o| o.verdict)
        .max_by_key(|v| v.rank())
        .unwrap_or(Verdict::Ignored)
}

/// Whether `event` asks for what deployment `d` already does.
fn same_push(event: &PushEvent, d: &Deployment) -> bool {
    match &event.digest {
        Some(digest) => d.digest.as_ref().or(d.requested_digest.as_ref()) == Some(digest),
        // Docker Hub: no digest; the same tag pushed at the same time is a repeat.
        None => {
            d.requested_digest.is_none()
                && d.requested_tag == event.tag
                && (event.pushed_at.is_none()
                    || d.pushed_at.is_none()
                    || event.pushed_at == d.pushed_at)
        }
    }
}

impl Deployer {
    /// Decides what `event` means and acts on it. `delivery` gives the ledger row
    /// of the delivery that carried it; it is asked for only when a deployment is
    /// created (which refers to it), so a delivery that queues nothing can be
    /// recorded once, with its verdict, after the decision.
    pub fn offer(
        &self,
        event: &PushEvent,
        delivery: &mut dyn FnMut() -> Result<i64, StoreError>,
    ) -> Result<Outcome, StoreError> {
        let _one_at_a_time = self.intake.lock().unwrap_or_else(|e| e.into_inner());
        let config = self.config();
        let store = self.store();
        let mut outcome = Outcome {
            event: Some(event.clone()),
            service: None,
            verdict: Verdict::Ignored,
            detail: String::new(),
            deployment: None,
        };
        let svc = match match_service(config, event) {
            Ok(svc) => svc,
            Err(why) => {
                outcome.detail = why;
                return Ok(outcome);
            }
        };
        outcome.service = Some(svc.name.clone());
        let live = store.live(&svc.name)?;
        if let (Some(digest), Some(l)) = (&event.digest, &live) {
            if &l.digest == digest {
                outcome.verdict = Verdict::AlreadyLive;
                outcome.detail = format!("{}: {} is already live", svc.name, short_digest(digest));
                return Ok(outcome);
            }
        }
        if let (Some(pushed), Some(l)) = (event.pushed_at, &live) {
            if let Some(live_pushed) = l.pushed_at.filter(|lp| pushed < *lp) {
                outcome.verdict = Verdict::Stale;
                outcome.detail = format!(
                    "{}: pushed at {}, before the live image ({} pushed at {}); deploy it by hand to force it",
                    svc.name,
                    timestamp(pushed),
                    short_digest(&l.digest),
                    timestamp(live_pushed)
                );
                return Ok(outcome);
            }
        }
        let active = store.active(&svc.name)?;
        for d in &active {
            if same_push(event, d) {
                outcome.verdict = Verdict::Duplicate;
                outcome.deployment = Some(d.id);
                outcome.detail = format!(
                    "{}: same push as deployment {} ({})",
                    svc.name, d.id, d.state
                );
                return Ok(outcome);
            }
            if let (Some(pushed), Some(theirs)) = (event.pushed_at, d.pushed_at) {
                if pushed < theirs {
                    outcome.verdict = Verdict::Stale;
                    outcome.detail = format!(
                        "{}: pushed at {}, before deployment {} in progress (pushed at {})",
                        svc.name,
                        timestamp(pushed),
                        d.id,
                        timestamp(theirs)
                    );
                    return Ok(outcome);
                }
            }
        }
        let delivery = delivery()?;
        let id = store.create_deployment(&NewDeployment {
            service: svc.name.clone(),
            trigger: event.source.into(),
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
            delivery: Some(delivery),
            resume_of: None,
            resume_depth: 0,
        })?;
        let mut superseded = Vec::new();
        for d in active.iter().filter(|d| d.state == State::Received) {
            if store.supersede(d.id, id)? {
                self.inner.notifier.finished(d.id);
                superseded.push(d.id.to_string());
            }
        }
        self.enqueue(&svc.name, id);
        outcome.verdict = Verdict::Queued;
        outcome.deployment = Some(id);
        outcome.detail = format!(
            "{}: deployment {id} of {}{}",
            svc.name,
            event.describe(),
            if superseded.is_empty() {
                String::new()
            } else {
                format!(" (supersedes {})", superseded.join(", "))
            }
        );
        Ok(outcome)
    }
}
