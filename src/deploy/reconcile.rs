//! On start, make the store agree with the world. The rendered upstream file is
//! the truth about what is live; containers are found by label; a deployment
//! that was in flight when greenlight stopped is cleaned up and recorded as
//! interrupted (queued ones, never started, are simply run).

use tracing::{info, warn};

use super::Inner;
use crate::docker::{LABEL_COLOUR, LABEL_DEPLOYMENT};
use crate::domain::State;
use crate::store::{now_ms, Deployment, Failure, Live, NewDeployment};

/// How many times in a row a deployment is re-run after being interrupted, so a
/// deployment that crashes greenlight cannot loop forever.
const MAX_RESUMES: u64 = 2;

/// Returns the ids of deployments still `received`, to queue again.
pub(crate) async fn run(inner: &Inner) -> Vec<i64> {
    let strays = inner.nginx.remove_stray_temp_files();
    if strays > 0 {
        info!(files = strays, "removed stray upstream temp files");
    }
    let unfinished = inner.store.unfinished().unwrap_or_else(|e| {
        warn!(error = %e, "cannot read unfinished deployments");
        Vec::new()
    });
    let mut requeue = Vec::new();
    let mut reload = false;
    let mut leftovers = Vec::new();
    for svc in &inner.config.services {
        let current = inner.nginx.current(&svc.name);
        let containers = match inner.engine.service_containers(&svc.name).await {
            Ok(c) => c,
            Err(e) => {
                warn!(service = %svc.name, error = %e, "cannot list containers; skipping reconcile");
                continue;
            }
        };
        let live_container = current.as_ref().and_then(|u| {
            containers.iter().find(|c| {
                c.label(LABEL_DEPLOYMENT) == Some(&u.deployment.to_string())
                    && c.label(LABEL_COLOUR) == Some(u.colour.as_str())
            })
        });
        let stored = inner.store.live(&svc.name).ok().flatten();
        match &current {
            Some(u) if stored.as_ref().and_then(|l| l.deployment_id) != Some(u.deployment) => {
                // The file moved on without the store: it wins.
                let d = inner.store.deployment(u.deployment).ok().flatten();
                let previous = stored.filter(|l| l.digest != u.digest);
                let live = Live {
                    service: svc.name.clone(),
                    colour: u.colour,
                    tag: d.as_ref().and_then(|d| d.tag.clone()),
                    digest: u.digest.clone(),
                    image: d.as_ref().and_then(|d| d.image.clone()).unwrap_or_else(|| {
                        if svc.pull {
                            format!("{}@{}", svc.image, u.digest)
                        } else {
                            u.digest.clone()
                        }
                    }),
                    image_id: d.as_ref().and_then(|d| d.image_id.clone()),
                    container_id: live_container.map(|c| c.id.clone()),
                    address: u.address.clone(),
                    deployment_id: Some(u.deployment),
                    since: now_ms(),
                    previous_tag: previous.as_ref().and_then(|p| p.tag.clone()),
                    previous_digest: previous.as_ref().map(|p| p.digest.clone()),
                    previous_image_id: previous.as_ref().and_then(|p| p.image_id.clone()),
                    pushed_at: d.as_ref().and_then(|d| d.pushed_at),
                };
                info!(service = %svc.name, colour = %u.colour, deployment = u.deployment, "live state taken from the rendered upstream");
                let _ = inner.store.set_live(&live);
                reload = true;
            }
            None if stored.is_some() => {
                warn!(service = %svc.name, "no rendered upstream: nothing is live");
                let _ = inner.store.clear_live(&svc.name);
            }
            _ => {}
        }
        if current.is_some() && live_container.is_none_or(|c| c.state != "running") {
            warn!(service = %svc.name, "the live container is not running; the next deploy replaces it");
        }
        for d in unfinished.iter().filter(|d| d.service == svc.name) {
            if d.state == State::Received {
                requeue.push(d.id);
                continue;
            }
            let went_live = current.as_ref().is_some_and(|u| u.deployment == d.id);
            let error = format!(
                "interrupted at {} by a greenlight restart; {}",
                d.state,
                if went_live {
                    "nginx already routed to it, so it stays live"
                } else {
                    "its container was removed and the previous version kept serving"
                }
            );
            warn!(service = %svc.name, deployment = d.id, "{error}");
            let failure = Failure {
                step: Some(d.state),
                error,
                ..Default::default()
            };
            let _ = inner.store.finish(d.id, State::Interrupted, &failure);
            inner.notifier.finished(d.id);
            if let Some(id) = resume(inner, d) {
                info!(service = %svc.name, deployment = id, resumes = d.id, "re-running the interrupted deployment");
                requeue.push(id);
            }
        }
        let live_id = live_container.map(|l| l.id.clone());
        leftovers.extend(
            containers
                .into_iter()
                .filter(|c| Some(&c.id) != live_id.as_ref())
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
    let old = inner.nginx.workers().await.unwrap_or_default();
    let reloaded = match inner.nginx.test().await {
        Ok(_) => inner.nginx.reload().await.map_err(|e| e.to_string()),
        Err(e) => Err(format!("nginx -t failed: {e}")),
    };
    if let Err(e) = reloaded {
        warn!(error = %e, "cannot make nginx route by the rendered upstreams; leaving the other containers running");
        return requeue;
    }
    if leftovers.is_empty() {
        return requeue;
    }
    match inner.nginx.wait_drained(&old).await {
        Ok(0) => {}
        Ok(left) => warn!(left, "old nginx workers still running after drain_timeout"),
        Err(e) => warn!(error = %e, "cannot watch nginx workers"),
    }
    for (svc, c) in leftovers {
        info!(service = %svc.name, container = %c.name, "removing leftover container");
        let _ = inner.engine.stop(&c.id, svc.rollout.stop_grace).await;
        if let Err(e) = inner.engine.remove(&c.id).await {
            warn!(container = %c.name, error = %e, "cannot remove leftover container");
        }
    }
    requeue
}

/// A webhook's sender will not retry and an operator may have gone home, so an
/// interrupted deployment is run again (at most `MAX_RESUMES` times in a row).
fn resume(inner: &Inner, d: &Deployment) -> Option<i64> {
    let depth = d
        .trigger_detail
        .as_ref()
        .and_then(|t| t.get("resume_depth"))
        .and_then(|v| v.as_u64())
        .unwrap_or(0);
    if depth >= MAX_RESUMES {
        warn!(
            deployment = d.id,
            "interrupted {} times in a row; not re-running it",
            depth + 1
        );
        return None;
    }
    let mut detail = d
        .trigger_detail
        .clone()
        .unwrap_or_else(|| serde_json::json!({}));
    if let Some(obj) = detail.as_object_mut() {
        obj.insert("resumes".into(), d.id.into());
        obj.insert("resume_depth".into(), (depth + 1).into());
    }
    let id = inner
        .store
        .create_deployment(&NewDeployment {
            service: d.service.clone(),
            trigger: d.trigger.clone(),
            trigger_detail: Some(detail),
            tag: d.requested_tag.clone(),
            digest: d.requested_digest.clone(),
            pushed_at: d.pushed_at,
            delivery: d.delivery,
        })
        .ok()?;
    if let Some(row) = d.delivery {
        let _ = inner.store.link_delivery(row, id);
    }
    Some(id)
}
