//! Replicas as containers of the local Docker engine: `<service>-<colour>-<k>`,
//! labelled so a restarted greenlight finds them, on the service's network.

use std::collections::HashSet;
use std::time::Duration;

use super::prune;
use super::{
    labels, Credentials, ErrorKind, ImageInfo, Replica, ReplicaSpec, ReplicaStatus, Result,
    RuntimeError, TaskOutcome, TaskSpec, LABEL_COLOUR, LABEL_DEPLOYMENT, LABEL_DIGEST,
    LABEL_SERVICE, LABEL_SLOT, LABEL_TASK,
};
use crate::config::ServiceConfig;
use crate::display::short_digest;
use crate::docker::{ContainerPlan, DockerError, Engine};
use crate::domain::replica::{ContainerOptions, RestartPolicy};

/// Lines of a one-off container's output kept.
const TASK_LOG_LINES: usize = 40;
use crate::registry::Repository;

#[derive(Clone)]
pub struct Containers {
    engine: Engine,
}

impl Containers {
    pub fn new(engine: Engine) -> Containers {
        Containers { engine }
    }

    pub async fn describe(&self) -> Result<String> {
        self.engine.version().await.map_err(other)
    }

    pub async fn image(&self, reference: &str) -> Result<Option<ImageInfo>> {
        self.engine.inspect_image(reference).await.map_err(other)
    }

    pub async fn pull(&self, reference: &str, credentials: Option<Credentials>) -> Result<()> {
        self.engine
            .pull(reference, credentials)
            .await
            .map_err(|e| match e {
                DockerError::Pull { .. } => {
                    let text = e.to_string();
                    let kind = if pull_error_is_transient(&text) {
                        ErrorKind::Transient
                    } else {
                        ErrorKind::Refused
                    };
                    RuntimeError::new(kind, text)
                }
                e => other(e),
            })
    }

    /// The service's network and its extra ones, created if missing.
    async fn networks(&self, network: &str, options: &ContainerOptions) -> Result<()> {
        for n in std::iter::once(network).chain(options.networks.iter().map(String::as_str)) {
            self.engine
                .ensure_network(n)
                .await
                .map_err(|e| other(format!("network {n}: {e}")))?;
        }
        Ok(())
    }

    pub async fn run_task(&self, spec: &TaskSpec, timeout: Duration) -> Result<TaskOutcome> {
        let engine = &self.engine;
        let name = &spec.name;
        self.networks(&spec.network, &spec.options).await?;
        // One left by a crash or a cut-off run: ours only if labelled so.
        if let Some(stale) = engine.status(name).await.map_err(other)? {
            if stale.labels.get(LABEL_TASK) != Some(&spec.service) {
                return Err(RuntimeError::new(
                    ErrorKind::Conflict,
                    format!("a container named {name} exists and was not made by greenlight: rename or remove it"),
                ));
            }
            engine
                .remove(&stale.id)
                .await
                .map_err(|e| other(format!("removing stale {name}: {e}")))?;
        }
        let plan = ContainerPlan {
            name: name.clone(),
            image: spec.image.clone(),
            labels: [
                (LABEL_TASK.to_string(), spec.service.clone()),
                (LABEL_DEPLOYMENT.to_string(), spec.deployment.to_string()),
            ]
            .into(),
            env: spec.env.clone(),
            command: Some(spec.command.clone()),
            binds: spec.volumes.clone(),
            network: spec.network.clone(),
            restart: RestartPolicy::No,
            options: spec.options.clone(),
        };
        let id = engine
            .create(&plan)
            .await
            .map_err(|e| other(format!("creating {name}: {e}")))?;
        let ran = async {
            engine
                .start(&id)
                .await
                .map_err(|e| other(format!("starting {name}: {e}")))?;
            let end = tokio::time::Instant::now() + timeout;
            let mut wait = Duration::from_millis(50);
            loop {
                let status = engine
                    .status(&id)
                    .await
                    .map_err(other)?
                    .ok_or_else(|| other(format!("{name} vanished while it ran")))?;
                if !status.running {
                    break Ok(status.exit_code);
                }
                if tokio::time::Instant::now() >= end {
                    break Ok(None);
                }
                tokio::time::sleep(wait.min(end - tokio::time::Instant::now())).await;
                wait = (wait * 2).min(Duration::from_millis(500));
            }
        };
        let exit_code = ran.await;
        let output = match &exit_code {
            Ok(_) => engine.log_tail(&id, TASK_LOG_LINES).await,
            Err(_) => String::new(),
        };
        // Killed if still running; gone either way.
        if let Err(e) = engine.remove(&id).await {
            tracing::warn!(container = %name, error = %e, "removing a one-off container");
        }
        Ok(TaskOutcome {
            exit_code: exit_code?,
            output,
        })
    }

    pub async fn start(&self, spec: &ReplicaSpec) -> Result<Replica> {
        let engine = &self.engine;
        let name = &spec.name;
        self.networks(&spec.network, &spec.options).await?;
        // A stale container of this name: a failed or interrupted run left it.
        // Never one nginx routes to: the plan only starts free slots.
        for c in engine
            .containers_labelled(LABEL_SERVICE, &spec.service)
            .await
            .map_err(other)?
        {
            if &c.name == name {
                engine
                    .remove(&c.id)
                    .await
                    .map_err(|e| other(format!("removing stale {name}: {e}")))?;
            }
        }
        let plan = ContainerPlan {
            name: name.clone(),
            image: spec.image.clone(),
            labels: labels(spec).into_iter().collect(),
            env: spec.env.clone(),
            command: spec.command.clone(),
            binds: spec.volumes.clone(),
            network: spec.network.clone(),
            // No restarts until it has passed the gate: a crash there must leave
            // the container exited, with its real exit code, not restarting.
            restart: RestartPolicy::No,
            options: spec.options.clone(),
        };
        let id = engine.create(&plan).await.map_err(|e| {
            if e.is_conflict() {
                RuntimeError::new(
                    ErrorKind::Conflict,
                    format!(
                        "a container named {name} exists and was not made by greenlight: rename or remove it ({e})"
                    ),
                )
            } else {
                other(format!("creating {name}: {e}"))
            }
        })?;
        let started = async {
            engine
                .start(&id)
                .await
                .map_err(|e| other(format!("starting {name}: {e}")))?;
            let status = engine
                .status(&id)
                .await
                .map_err(other)?
                .ok_or_else(|| other(format!("{name} vanished after start")))?;
            let ip = status.ips.get(&spec.network).cloned().ok_or_else(|| {
                other(format!(
                    "{name} has no address on network {} (state: {})",
                    spec.network, status.status
                ))
            })?;
            Ok(Replica {
                id: id.clone(),
                name: name.clone(),
                colour: Some(spec.slot.colour),
                slot: Some(spec.slot.index),
                deployment: Some(spec.deployment),
                digest: Some(spec.digest.clone()),
                image_id: spec.image.clone(),
                running: status.running,
                state: status.status,
                address: Some(format!("{ip}:{}", spec.port)),
            })
        };
        match started.await {
            Ok(replica) => Ok(replica),
            Err(e) => {
                // Nothing else knows of it yet: leave nothing behind.
                let _ = engine.remove(&id).await;
                Err(e)
            }
        }
    }

    /// Read from the replica's network namespace, `/proc/<pid>/net/tcp{,6}`
    /// of its main process (needs the engine on this host).
    pub async fn open_connections(&self, id: &str, port: u16) -> Option<usize> {
        let pid = self.engine.pid(id).await.ok()??;
        let mut n = 0;
        let mut read_any = false;
        for table in ["tcp", "tcp6"] {
            if let Ok(text) = tokio::fs::read_to_string(format!("/proc/{pid}/net/{table}")).await {
                read_any = true;
                n += super::established_to(&text, port);
            }
        }
        read_any.then_some(n)
    }

    pub async fn promote(&self, id: &str, restart: RestartPolicy) -> Result<()> {
        self.engine
            .set_restart_policy(id, restart)
            .await
            .map_err(|e| other(format!("setting the restart policy {restart}: {e}")))
    }

    pub async fn status(&self, id: &str) -> Result<Option<ReplicaStatus>> {
        Ok(self
            .engine
            .status(id)
            .await
            .map_err(other)?
            .map(|s| ReplicaStatus {
                id: s.id,
                running: s.running,
                restarting: s.restarting,
                status: s.status,
                exit_code: s.exit_code,
                restart_count: s.restart_count,
                health: s.health,
            }))
    }

    pub async fn log_tail(&self, id: &str, lines: usize) -> String {
        self.engine.log_tail(id, lines).await
    }

    pub async fn stop(&self, id: &str, grace: Duration) -> Result<()> {
        self.engine.stop(id, grace).await.map_err(other)?;
        self.engine.remove(id).await.map_err(other)
    }

    pub async fn remove(&self, id: &str) -> Result<()> {
        self.engine.remove(id).await.map_err(other)
    }

    pub async fn replicas(&self, svc: &ServiceConfig) -> Result<Vec<Replica>> {
        let containers = self
            .engine
            .containers_labelled(LABEL_SERVICE, &svc.name)
            .await
            .map_err(other)?;
        Ok(containers
            .into_iter()
            .map(|c| {
                let label = |k: &str| c.labels.get(k).cloned();
                Replica {
                    colour: label(LABEL_COLOUR).and_then(|v| v.parse().ok()),
                    slot: label(LABEL_SLOT).and_then(|v| v.parse().ok()),
                    deployment: label(LABEL_DEPLOYMENT).and_then(|v| v.parse().ok()),
                    digest: label(LABEL_DIGEST),
                    running: c.state == "running",
                    address: c
                        .ips
                        .get(&svc.network)
                        .map(|ip| format!("{ip}:{}", svc.port)),
                    id: c.id,
                    name: c.name,
                    image_id: c.image_id,
                    state: c.state,
                }
            })
            .collect())
    }

    pub async fn prune(
        &self,
        repository: &Repository,
        keep: usize,
        protected: &HashSet<String>,
        deployed: &HashSet<String>,
    ) -> Result<Vec<String>> {
        let images = self.engine.images().await.map_err(other)?;
        let mut removed = Vec::new();
        for image in prune::select(&images, repository, keep, protected, deployed) {
            let mut all = true;
            for reference in prune::references(image, repository) {
                if let Err(e) = self.engine.remove_image_ref(reference).await {
                    tracing::warn!(image = %reference, error = %e, "pruning image");
                    all = false;
                }
            }
            if all {
                removed.push(short_digest(&image.id).to_string());
            }
        }
        Ok(removed)
    }
}

/// An engine error as the runtime tells it (Swarm's too): one the engine
/// did not answer in time is a timeout.
pub(super) fn other(e: impl std::fmt::Display) -> RuntimeError {
    let message = e.to_string();
    let kind = if message.contains("did not answer within [docker] timeout") {
        ErrorKind::Timeout
    } else {
        ErrorKind::Other
    };
    RuntimeError::new(kind, message)
}

/// Docker reports pull failures as text. The registry's refusals (unknown
/// manifest or tag, refused credentials, a bad reference) are final; anything
/// else (refused or reset connections, timeouts, 5xx) may pass.
fn pull_error_is_transient(text: &str) -> bool {
    let t = text.to_ascii_lowercase();
    const FINAL: [&str; 8] = [
        "manifest unknown",
        "not found",
        "unauthorized",
        "denied",
        "authentication required",
        "invalid reference",
        "no basic auth credentials",
        "forbidden",
    ];
    !FINAL.iter().any(|f| t.contains(f))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_errors_that_the_registry_means_are_final() {
        for text in [
            "pulling x: manifest for 127.0.0.1:5000/demo@sha256:ab not found: manifest unknown: manifest unknown",
            "pulling x: pull access denied for demo, repository does not exist or may require 'docker login'",
            "pulling x: unauthorized: authentication required",
        ] {
            assert!(!pull_error_is_transient(text), "{text}");
        }
        for text in [
            "pulling x: Get \"http://127.0.0.1:5000/v2/\": dial tcp 127.0.0.1:5000: connect: connection refused",
            "pulling x: received unexpected HTTP status: 503 Service Unavailable",
            "pulling x: net/http: TLS handshake timeout",
            "pulling x: unexpected EOF",
        ] {
            assert!(pull_error_is_transient(text), "{text}");
        }
    }
}
