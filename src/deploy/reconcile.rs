//! On start, make the store agree with the world. The rendered routing file is
//! the truth about what nginx routes to; replicas are found by label; a
//! deployment that was in flight when greenlight stopped is recorded as
//! interrupted and run again (queued ones, never started, are simply run).

use tracing::{info, warn};

use super::Inner;
use crate::config::ServiceConfig;
use crate::domain::deployment::{FailureKind, State};
use crate::domain::routing::Routing;
use crate::runtime::Replica;
use crate::store::{now_ms, Deployment, Failure, Live, NewDeployment};

/// How many times in a row a deployment is re-run after being interrupted, so a
/// deployment that crashes greenlight cannot loop forever.
const MAX_RESUMES: u32 = 2;

/// Returns the ids of deployments still `received`, to queue again.
pub(crate) async fn run(inner: &Inner) -> Vec<i64> {
    let strays = inner.nginx.remove_stray_files();
    if strays > 0 {
        info!(
            files = strays,
            "removed stray files from the upstreams directory"
        );
    }
    let unfinished = inner.store.unfinished().unwrap_or_else(|e| {
        warn!(error = %e, "cannot read unfinished deployments");
        Vec::new()
    });
    let mut requeue = Vec::new();
    let mut reload = false;
    let mut leftovers = Vec::new();
    let config = inner.config.get();
    for svc in &config.services {
        let replicas = match inner.runtime.replicas(svc).await {
            Ok(r) => r,
            Err(e) => {
                warn!(service = %svc.name, error = %e, "cannot list replicas; skipping reconcile");
                continue;
            }
        };
        let current = match inner.nginx.current(&svc.name) {
            Ok(current) => current.map(|r| identify(r, &replicas)),
            Err(why) => {
                // Nothing is touched: not the live record, not a replica.
                // Deployments in flight are recorded as interrupted, not re-run.
                warn!(service = %svc.name, error = %why, "cannot reconcile the service");
                for d in unfinished.iter().filter(|d| d.service == svc.name) {
                    let failure = Failure {
                        step: d.step.clone(),
                        ..Failure::new(
                            FailureKind::Interrupted,
                            format!("interrupted by a greenlight restart; not re-run: {why}"),
                        )
                    };
                    if let Err(e) = inner.store.finish(d.id, State::Interrupted, Some(&failure)) {
                        warn!(deployment = d.id, error = %e, "cannot record the interruption");
                    }
                }
                continue;
            }
        };
        reload |= agree(inner, svc, current.as_ref());
        if let Some(r) = &current {
            for b in &r.backends {
                if !replicas.iter().any(|c| c.id == b.id && c.running) {
                    warn!(service = %svc.name, replica = %b.name, "a routed replica is not running; the next deploy replaces it");
                }
            }
        }
        for d in unfinished.iter().filter(|d| d.service == svc.name) {
            if d.state == State::Received {
                requeue.push(d.id);
                continue;
            }
            requeue.extend(interrupted(inner, d, current.as_ref()));
        }
        let routed = |c: &Replica| {
            current
                .as_ref()
                .is_some_and(|r| r.backends.iter().any(|b| b.id == c.id))
        };
        leftovers.extend(
            replicas
                .into_iter()
                .filter(|c| !routed(c))
                .map(|c| (svc, c)),
        );
    }
    // nginx must route by the rendered files before anything it might still route
    // to is removed: greenlight may have died between writing a file and the
    // reload, or so soon after a reload that the old workers still route by the
    // previous file. A reload now makes every worker alive before it an old one;
    // once those have drained, no worker routes to a leftover.
    if !reload && leftovers.is_empty() {
        return requeue;
    }
    let old = match inner.nginx.reload_as_rendered().await {
        Ok(old) => old,
        Err(e) => {
            warn!(error = %e, "cannot make nginx route by the rendered upstreams; leaving the other replicas running");
            return requeue;
        }
    };
    if leftovers.is_empty() {
        return requeue;
    }
    match inner.nginx.wait_drained(&old).await {
        Ok(0) => {}
        Ok(left) => warn!(left, "old nginx workers still running after drain_timeout"),
        Err(e) => warn!(error = %e, "cannot watch nginx workers"),
    }
    for svc in &config.services {
        let mine: Vec<Replica> = leftovers
            .iter()
            .filter(|(s, _)| s.name == svc.name)
            .map(|(_, c)| c.clone())
            .collect();
        for c in &mine {
            info!(service = %svc.name, replica = %c.name, "removing a leftover replica");
        }
        let results = inner.runtime.stop_all(&mine, svc.rollout.stop_grace).await;
        for (c, result) in mine.iter().zip(results) {
            match result {
                Ok(()) => {}
                Err(e) if e.kind == crate::runtime::ErrorKind::Deferred => {
                    info!(replica = %c.name, reason = %e, "a leftover replica, unrouted, stops with the rest of its colour");
                }
                Err(e) => warn!(replica = %c.name, error = %e, "cannot remove a leftover replica"),
            }
        }
    }
    requeue
}

/// Gives backends read from a file written before replicas (no replica ID)
/// the replica with their deployment and colour.
fn identify(mut routing: Routing, replicas: &[Replica]) -> Routing {
    for b in routing.backends.iter_mut().filter(|b| b.id.is_empty()) {
        if let Some(c) = replicas
            .iter()
            .find(|c| c.deployment == Some(b.deployment) && c.colour == Some(b.colour))
        {
            b.id = c.id.clone();
            b.name = c.name.clone();
        }
    }
    routing
}

/// Makes the live record agree with the rendered routing; returns whether
/// nginx must be reloaded to route by the file.
fn agree(inner: &Inner, svc: &ServiceConfig, current: Option<&Routing>) -> bool {
    let stored = inner.store.live(&svc.name).ok().flatten();
    let record = |r: crate::store::Result<()>| {
        if let Err(e) = r {
            warn!(service = %svc.name, error = %e, "cannot record the live state");
        }
    };
    let Some(routing) = current else {
        if stored.is_some() {
            warn!(service = %svc.name, "no rendered upstream: nothing is live");
            record(inner.store.clear_live(&svc.name));
        }
        return false;
    };
    let digests = routing.digests();
    let one_version = match digests.as_slice() {
        [only] => Some(*only),
        _ => None,
    };
    match (one_version, &stored) {
        // Every backend runs one version the store does not know as live: a
        // switch finished without the store. The file wins.
        (Some(digest), _) if stored.as_ref().is_none_or(|l| l.digest != digest) => {
            let deployment = routing.backends[0].deployment;
            let d = inner.store.deployment(deployment).ok().flatten();
            let previous = stored.clone().filter(|l| l.digest != digest);
            let live = Live {
                service: svc.name.clone(),
                colour: routing.colour(),
                tag: d.as_ref().and_then(|d| d.tag.clone()),
                digest: digest.to_string(),
                image: d.as_ref().and_then(|d| d.image.clone()).unwrap_or_else(|| {
                    if svc.pull {
                        format!("{}@{digest}", svc.image)
                    } else {
                        digest.to_string()
                    }
                }),
                image_id: d.as_ref().and_then(|d| d.image_id.clone()),
                deployment_id: Some(deployment),
                since: now_ms(),
                previous_tag: previous.as_ref().and_then(|p| p.tag.clone()),
                previous_digest: previous.as_ref().map(|p| p.digest.clone()),
                previous_image_id: previous.as_ref().and_then(|p| p.image_id.clone()),
                pushed_at: d.as_ref().and_then(|d| d.pushed_at),
                routing: Some(routing.clone()),
            };
            info!(service = %svc.name, deployment, "live state taken from the rendered upstream");
            record(inner.store.set_live(&live));
            true
        }
        (_, Some(l)) => {
            let moved = l.routing.as_ref() != Some(routing);
            if moved {
                record(inner.store.set_routing(routing));
            }
            moved
        }
        // Several versions and none live on record: a first rolling update
        // was cut short. nginx routes by the file; the re-run finishes it.
        (_, None) => true,
    }
}

/// Records an in-flight deployment as interrupted and returns the deployment
/// that runs it again, if any.
fn interrupted(inner: &Inner, d: &Deployment, current: Option<&Routing>) -> Option<i64> {
    let routed_to_it = current.is_some_and(|r| r.backends.iter().any(|b| b.deployment == d.id));
    let step = d.step.clone().unwrap_or_else(|| d.state.to_string());
    let error = format!(
        "interrupted at {step} by a greenlight restart; {}",
        if d.state == State::Unwinding {
            "it was rolling back, which the re-run finishes"
        } else if routed_to_it {
            "nginx already routed to it, so its replicas stay"
        } else {
            "its replicas were removed and the previous version kept serving"
        }
    );
    warn!(service = %d.service, deployment = d.id, "{error}");
    let failure = Failure {
        step: Some(step),
        ..Failure::new(FailureKind::Interrupted, error)
    };
    if let Err(e) = inner.store.finish(d.id, State::Interrupted, Some(&failure)) {
        warn!(deployment = d.id, error = %e, "cannot record the interruption");
    }
    inner.notifier.finished(d.id);
    let id = resume(inner, d, routed_to_it)?;
    info!(service = %d.service, deployment = id, resumes = d.id, "re-running the interrupted deployment");
    Some(id)
}

/// A webhook's sender will not retry and an operator may have gone home, so an
/// interrupted deployment is run again (at most `MAX_RESUMES` times in a row).
/// One that was rolling back runs its way back: a deployment of the previous
/// version.
fn resume(inner: &Inner, d: &Deployment, routed_to_it: bool) -> Option<i64> {
    if d.resume_depth >= MAX_RESUMES {
        warn!(
            deployment = d.id,
            "interrupted {} times in a row; not re-running it",
            d.resume_depth + 1
        );
        return None;
    }
    let (tag, digest, shown_tag) = if d.state == State::Unwinding {
        if !routed_to_it {
            return None;
        }
        (
            None,
            Some(d.previous_digest.clone()?),
            d.previous_tag.clone(),
        )
    } else {
        (
            d.requested_tag.clone(),
            d.requested_digest.clone(),
            d.tag.clone(),
        )
    };
    let mut detail = d
        .trigger_detail
        .clone()
        .unwrap_or_else(|| serde_json::json!({}));
    if let Some(obj) = detail.as_object_mut() {
        obj.insert("resumes".into(), d.id.into());
    }
    let id = inner
        .store
        .create_deployment(&NewDeployment {
            service: d.service.clone(),
            trigger: d.trigger,
            trigger_detail: Some(detail),
            tag,
            digest,
            shown_tag,
            pushed_at: d.pushed_at,
            delivery: d.delivery,
            resume_of: Some(d.id),
            resume_depth: d.resume_depth + 1,
            // A re-run keeps the strategy its deployment was run with.
            strategy: d.strategy,
        })
        .ok()?;
    if let Some(row) = d.delivery {
        if let Err(e) = inner.store.link_delivery(row, id) {
            warn!(deployment = id, error = %e, "cannot link the re-run to its delivery");
        }
    }
    Some(id)
}
