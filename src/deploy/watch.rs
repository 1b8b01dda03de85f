//! Change underneath: when the engine moves a service's endpoints by itself
//! (Swarm replaces a crashed task, reschedules one off a drained or dead
//! node), nginx must follow within seconds. The watcher listens to the
//! runtime's change stream (Docker events: greenlight's containers on this
//! node, node changes) and also looks every few seconds (tasks on other
//! nodes); when the routed colour's running tasks differ from the routing, it
//! records a `resync` deployment and queues it on the service's worker, so it
//! never runs beside a deployment. The resync gates the new tasks, renders,
//! reloads, verifies and drains like any switch (`steps.rs`, `Run::resync`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tracing::{info, warn};

use super::steps::drift;
use super::Deployer;
use crate::store::{Deployment, NewDeployment};

/// The look the watcher takes without an event (tasks on other nodes).
const LOOK_EVERY: Duration = Duration::from_secs(5);
/// Events come in bursts (a task dies, its replacement starts): one look
/// after the burst.
const SETTLE: Duration = Duration::from_millis(300);
/// After a resync that did not finish the job (a new task failed its gate),
/// the next one waits this long.
const AFTER_FAILURE: Duration = Duration::from_secs(30);
/// The command a resync deployment records.
const COMMAND: &str = "resync";

/// Whether `d` is a resync the watcher queued.
pub(crate) fn is_resync(d: &Deployment) -> bool {
    d.trigger_detail
        .as_ref()
        .and_then(|t| t.get("command"))
        .and_then(|c| c.as_str())
        == Some(COMMAND)
}

/// Starts the watcher when the runtime moves endpoints by itself.
pub(crate) fn spawn(deployer: Deployer) {
    let Some(changes) = deployer.runtime().changes() else {
        return;
    };
    tokio::spawn(async move {
        let mut changes = changes;
        let mut look = tokio::time::interval(LOOK_EVERY);
        let mut last: HashMap<String, (i64, Instant)> = HashMap::new();
        loop {
            tokio::select! {
                event = changes.next() => {
                    if event.is_none() {
                        // The engine's stream ended (a restart): listen again.
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        if let Some(again) = deployer.runtime().changes() {
                            changes = again;
                        }
                        continue;
                    }
                    tokio::time::sleep(SETTLE).await;
                }
                _ = look.tick() => {}
            }
            for svc in &deployer.config().services {
                look_at(&deployer, &svc.name, &mut last).await;
            }
        }
    });
}

/// Queues a resync of `service` when its routing and its tasks disagree and
/// nothing else of it is queued or running.
async fn look_at(deployer: &Deployer, service: &str, last: &mut HashMap<String, (i64, Instant)>) {
    let inner = &deployer.inner;
    let config = inner.config.get();
    let Some(svc) = config.service(service) else {
        return;
    };
    if let Some((id, at)) = last.get(service) {
        match inner.store.deployment(*id) {
            Ok(Some(d)) if d.finished_at.is_none() => return,
            Ok(Some(d))
                if d.state != crate::domain::deployment::State::Succeeded
                    && d.state != crate::domain::deployment::State::AlreadyLive
                    && at.elapsed() < AFTER_FAILURE =>
            {
                return
            }
            _ => {}
        }
    }
    // A deployment in flight owns the routing; look again after it.
    match inner.store.unfinished() {
        Ok(list) if list.iter().any(|d| d.service == service) => return,
        Ok(_) => {}
        Err(e) => return warn!(error = %e, "watcher: cannot read deployments"),
    }
    let Ok(Some(routing)) = inner.nginx.current(service) else {
        return;
    };
    let replicas = match inner.runtime.replicas(svc).await {
        Ok(r) => r,
        Err(e) => return warn!(service, error = %e, "watcher: cannot list tasks"),
    };
    let Some(drift) = drift(&routing, &replicas) else {
        return;
    };
    let live = inner.store.live(service).ok().flatten();
    let new = NewDeployment {
        digest: live.as_ref().map(|l| l.digest.clone()),
        shown_tag: live.as_ref().and_then(|l| l.tag.clone()),
        trigger_detail: Some(serde_json::json!({
            "command": COMMAND,
            "reason": drift.describe(),
        })),
        ..NewDeployment::operator(service, COMMAND)
    };
    match inner.store.create_deployment(&new) {
        Ok(id) => {
            info!(
                service,
                deployment = id,
                "{}; queuing a resync",
                drift.describe()
            );
            last.insert(service.to_string(), (id, Instant::now()));
            deployer.enqueue(service, id);
        }
        Err(e) => warn!(service, error = %e, "watcher: cannot record a resync"),
    }
}
