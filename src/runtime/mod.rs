//! The container runtime, in the deployment's terms: bring an image here, start
//! a replica from a spec, say where it listens and how it is, show its log,
//! stop it, list a service's replicas, prune a service's images.
//!
//! A closed enum, one variant per engine (containers of the Docker engine, or
//! the tasks of Swarm services), each honest about what it does. Engine
//! specifics (container and service specs, conflict codes, pull errors as
//! text, duplicate networks, task ports) stay inside the variant.

pub mod docker;
mod prune;
pub mod swarm;

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::future::join_all;

use crate::config::ServiceConfig;
use crate::domain::deployment::Colour;
use crate::domain::plan::Slot;
use crate::domain::replica::{ContainerOptions, RestartPolicy};

pub use docker::Containers;
pub use swarm::Services;

/// How a runtime call failed, as the deployment must tell it apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// May pass if tried again: a registry or engine that is down or slow.
    Transient,
    /// The registry refused (unknown tag or digest, refused credentials, a bad
    /// reference): trying again changes nothing.
    Refused,
    /// Something of that name exists and greenlight did not make it.
    Conflict,
    /// The engine did not answer within `[docker] timeout`.
    Timeout,
    /// Not done now, by design: Swarm stops a colour's tasks only together,
    /// so an unrouted task stops with the last of its colour.
    Deferred,
    Other,
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct RuntimeError {
    pub kind: ErrorKind,
    pub message: String,
}

impl RuntimeError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> RuntimeError {
        RuntimeError {
            kind,
            message: message.into(),
        }
    }
}

pub type Result<T> = std::result::Result<T, RuntimeError>;

/// An image on this host.
pub use crate::docker::ImageInfo;

/// Everything a new replica is made of.
#[derive(Debug, Clone)]
pub struct ReplicaSpec {
    pub service: String,
    pub slot: Slot,
    pub name: String,
    /// The image by ID: a tag or digest reference can be removed under us
    /// (someone untags the repository) between the pull and the start.
    pub image: String,
    /// The image as every node can find it: `repo@digest`, or the image ID of
    /// a local image (`pull = false`). Swarm services use this one.
    pub reference: String,
    pub deployment: i64,
    pub digest: String,
    pub env: Vec<String>,
    pub command: Option<Vec<String>>,
    pub volumes: Vec<String>,
    pub network: String,
    pub port: u16,
    /// The service's restart policy once the replica has passed its gate.
    pub restart: RestartPolicy,
    /// SIGTERM to SIGKILL when the replica is stopped.
    pub stop_grace: Duration,
    pub options: ContainerOptions,
}

/// A one-off container of a deployment's image (the release command): the
/// service's env, env file, volumes, networks and options, its own command.
#[derive(Debug, Clone)]
pub struct TaskSpec {
    pub service: String,
    /// `<service>-release`.
    pub name: String,
    /// The image by ID.
    pub image: String,
    /// The image as every node can find it (see [`ReplicaSpec::reference`]).
    pub reference: String,
    pub deployment: i64,
    pub env: Vec<String>,
    pub command: Vec<String>,
    pub volumes: Vec<String>,
    pub network: String,
    pub options: ContainerOptions,
}

/// How a one-off container ended.
#[derive(Debug, Clone)]
pub struct TaskOutcome {
    /// Its exit code (`None`: killed at the timeout).
    pub exit_code: Option<i64>,
    /// The last lines of its output.
    pub output: String,
}

/// The service's env file and env, then `GREENLIGHT_*` facts.
fn service_env(
    svc: &ServiceConfig,
    deployment: i64,
    facts: &[(&str, &str)],
) -> std::result::Result<Vec<String>, String> {
    let mut env: Vec<String> = Vec::new();
    if let Some(path) = &svc.env_file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("env_file {}: {e}", path.display()))?;
        env.extend(parse_env_file(&text));
    }
    env.extend(svc.env.iter().map(|(k, v)| format!("{k}={v}")));
    env.push(format!("GREENLIGHT_SERVICE={}", svc.name));
    env.extend(facts.iter().map(|(k, v)| format!("GREENLIGHT_{k}={v}")));
    env.push(format!("GREENLIGHT_DEPLOYMENT={deployment}"));
    Ok(env)
}

impl TaskSpec {
    /// The release container of `svc` for a deployment of `image` (by ID;
    /// `reference` as every node finds it).
    pub fn release(
        svc: &ServiceConfig,
        command: &[String],
        deployment: i64,
        digest: &str,
        image: &str,
        reference: &str,
    ) -> std::result::Result<TaskSpec, String> {
        let env = service_env(svc, deployment, &[("RELEASE_DIGEST", digest)])?;
        let mut options = svc.container_options();
        // A one-off is not health-checked.
        options.healthcheck = None;
        Ok(TaskSpec {
            service: svc.name.clone(),
            name: format!("{}-release", svc.name),
            image: image.to_string(),
            reference: reference.to_string(),
            deployment,
            env,
            command: command.to_vec(),
            volumes: svc.volumes.clone(),
            network: svc.network.clone(),
            options,
        })
    }
}

impl ReplicaSpec {
    /// The spec of `slot` of `service` for a deployment: the service's env file
    /// and env, plus `GREENLIGHT_*` facts the app may log.
    pub fn new(
        svc: &ServiceConfig,
        slot: Slot,
        deployment: i64,
        digest: &str,
        image: &str,
        reference: &str,
    ) -> std::result::Result<ReplicaSpec, String> {
        let name = slot.name(&svc.name);
        let colour = slot.colour.to_string();
        let env = service_env(
            svc,
            deployment,
            &[("COLOUR", colour.as_str()), ("REPLICA", name.as_str())],
        )?;
        Ok(ReplicaSpec {
            service: svc.name.clone(),
            slot,
            name,
            image: image.to_string(),
            reference: reference.to_string(),
            deployment,
            digest: digest.to_string(),
            env,
            command: svc.command.clone(),
            volumes: svc.volumes.clone(),
            network: svc.network.clone(),
            port: svc.port,
            options: svc.container_options(),
            restart: svc.restart,
            stop_grace: svc.rollout.stop_grace,
        })
    }
}

/// A replica of a service, as the runtime lists it.
#[derive(Debug, Clone)]
pub struct Replica {
    pub id: String,
    pub name: String,
    pub colour: Option<Colour>,
    pub slot: Option<u32>,
    pub deployment: Option<i64>,
    pub digest: Option<String>,
    pub image_id: String,
    pub running: bool,
    /// The engine's word for its state (`running`, `exited`, ...).
    pub state: String,
    /// `ip:port` on the service's network, when it has an address there.
    pub address: Option<String>,
}

/// How a replica is doing right now.
#[derive(Debug, Clone)]
pub struct ReplicaStatus {
    pub id: String,
    pub running: bool,
    pub restarting: bool,
    /// The engine's word for its state.
    pub status: String,
    pub exit_code: Option<i64>,
    pub restart_count: i64,
    /// The image's HEALTHCHECK verdict (`starting`, `healthy`, `unhealthy`), if it has one.
    pub health: Option<String>,
}

/// The engine greenlight runs replicas on.
#[derive(Clone)]
pub enum Runtime {
    /// Containers of the local Docker engine.
    Docker(Containers),
    /// Tasks of Swarm services, one service per colour.
    Swarm(Services),
}

impl Runtime {
    /// The engine `[runtime] kind` names, over a connected Docker engine.
    pub fn new(config: &crate::config::RuntimeConfig, engine: crate::docker::Engine) -> Runtime {
        match config.kind {
            crate::config::RuntimeKind::Docker => Runtime::Docker(Containers::new(engine)),
            crate::config::RuntimeKind::Swarm => {
                Runtime::Swarm(Services::new(engine, config.swarm.clone()))
            }
        }
    }

    /// What the engine is, for `check` and the log.
    pub async fn describe(&self) -> Result<String> {
        match self {
            Runtime::Docker(c) => c.describe().await,
            Runtime::Swarm(s) => s.describe().await,
        }
    }

    /// The image, if it is on this host.
    pub async fn image(&self, reference: &str) -> Result<Option<ImageInfo>> {
        match self {
            Runtime::Docker(c) => c.image(reference).await,
            Runtime::Swarm(s) => s.image(reference).await,
        }
    }

    /// Pulls `reference` (`repo@sha256:...`) with the registry's credentials.
    pub async fn pull(&self, reference: &str, credentials: Option<Credentials>) -> Result<()> {
        match self {
            Runtime::Docker(c) => c.pull(reference, credentials).await,
            Runtime::Swarm(s) => s.pull(reference, credentials).await,
        }
    }

    /// Starts a replica from each spec (Docker: each with no restarts, so a
    /// crash during its gate shows its real exit code; Swarm: the specs are
    /// one colour's tasks, its service set to them at once); returns each
    /// with its address, in the order of `specs`, or why it did not start.
    pub async fn start_all(
        &self,
        specs: &[ReplicaSpec],
        credentials: Option<Credentials>,
    ) -> Vec<Result<Replica>> {
        match self {
            Runtime::Docker(c) => join_all(specs.iter().map(|spec| c.start(spec))).await,
            Runtime::Swarm(s) => s.start_all(specs, credentials).await,
        }
    }

    /// Runs a one-off container to its end, at most `timeout` (then it is
    /// killed), and removes it; its output's tail is kept. On Swarm it is a
    /// job (one task, never restarted), which gets what tasks get (secrets,
    /// overlay networks, placement) on the node Swarm picks.
    pub async fn run_task(
        &self,
        spec: &TaskSpec,
        timeout: Duration,
        credentials: Option<Credentials>,
    ) -> Result<TaskOutcome> {
        match self {
            Runtime::Docker(c) => c.run_task(spec, timeout).await,
            Runtime::Swarm(s) => s.run_job(spec, timeout, credentials).await,
        }
    }

    /// How many TCP connections to `port` a replica has established now (the
    /// clients nginx still relays to it), or `None` when that cannot be seen.
    pub async fn open_connections(&self, id: &str, port: u16) -> Option<usize> {
        match self {
            Runtime::Docker(c) => c.open_connections(id, port).await,
            // Tasks may run on other nodes, out of this host's sight.
            Runtime::Swarm(_) => None,
        }
    }

    /// A replica that passed its gate gets the service's restart policy.
    pub async fn promote(&self, id: &str, restart: RestartPolicy) -> Result<()> {
        match self {
            Runtime::Docker(c) => c.promote(id, restart).await,
            Runtime::Swarm(s) => s.promote(id, restart).await,
        }
    }

    pub async fn status(&self, id: &str) -> Result<Option<ReplicaStatus>> {
        match self {
            Runtime::Docker(c) => c.status(id).await,
            Runtime::Swarm(s) => s.status(id).await,
        }
    }

    /// The last `lines` lines of a replica's output.
    pub async fn log_tail(&self, id: &str, lines: usize) -> String {
        match self {
            Runtime::Docker(c) => c.log_tail(id, lines).await,
            Runtime::Swarm(s) => s.log_tail(id, lines).await,
        }
    }

    /// Stops replicas gracefully (SIGTERM, then SIGKILL after `grace`) and
    /// removes them, all at once; one already gone is fine. Returns each
    /// one's outcome, in order. Swarm stops a colour's tasks only together
    /// (it, not greenlight, would choose which task a scale-down stops): a
    /// task whose colour still has tasks not in `replicas` is left running,
    /// [`ErrorKind::Deferred`].
    pub async fn stop_all(&self, replicas: &[Replica], grace: Duration) -> Vec<Result<()>> {
        match self {
            Runtime::Docker(c) => join_all(replicas.iter().map(|r| c.stop(&r.id, grace))).await,
            Runtime::Swarm(s) => s.stop_all(replicas, Some(grace)).await,
        }
    }

    /// Removes replicas at once (they never served), one after another; one
    /// already gone is fine. Returns each one's outcome, in order.
    pub async fn remove_all(&self, replicas: &[Replica]) -> Vec<Result<()>> {
        match self {
            Runtime::Docker(c) => {
                let mut out = Vec::new();
                for r in replicas {
                    out.push(c.remove(&r.id).await);
                }
                out
            }
            Runtime::Swarm(s) => s.stop_all(replicas, None).await,
        }
    }

    /// Changes underneath that move a service's endpoints (Swarm replacing or
    /// rescheduling a task): a stream that yields when one may have happened,
    /// or `None` when the engine moves nothing by itself.
    pub fn changes(&self) -> Option<futures_util::stream::BoxStream<'static, ()>> {
        match self {
            Runtime::Docker(_) => None,
            Runtime::Swarm(s) => Some(s.changes()),
        }
    }

    /// Every replica greenlight made for `svc`, running or not.
    pub async fn replicas(&self, svc: &ServiceConfig) -> Result<Vec<Replica>> {
        match self {
            Runtime::Docker(c) => c.replicas(svc).await,
            Runtime::Swarm(s) => s.replicas(svc).await,
        }
    }

    /// Removes `repository`'s images beyond the newest `keep`, only ones in
    /// `deployed` and never one in `protected` (image IDs); returns the short
    /// IDs removed.
    pub async fn prune(
        &self,
        repository: &crate::registry::Repository,
        keep: usize,
        protected: &std::collections::HashSet<String>,
        deployed: &std::collections::HashSet<String>,
    ) -> Result<Vec<String>> {
        match self {
            Runtime::Docker(c) => c.prune(repository, keep, protected, deployed).await,
            Runtime::Swarm(s) => s.prune(repository, keep, protected, deployed).await,
        }
    }
}

/// Registry credentials for a pull.
pub type Credentials = bollard::auth::DockerCredentials;

/// Established connections to local `port` in a `/proc/net/tcp` or `tcp6`
/// table (a network namespace's sockets: local address, remote, state).
pub fn established_to(table: &str, port: u16) -> usize {
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let mut fields = line.split_whitespace();
            let local = fields.nth(1).unwrap_or_default();
            let state = fields.nth(1).unwrap_or_default();
            let local_port = local
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            // 01: TCP_ESTABLISHED.
            state == "01" && local_port == Some(port)
        })
        .count()
}

/// `KEY=VALUE` lines; blank lines and `#` comments skipped.
fn parse_env_file(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && l.contains('='))
        .map(|l| l.strip_prefix("export ").unwrap_or(l).to_string())
        .collect()
}

/// The labels a replica carries, so a restarted greenlight finds it.
pub fn labels(spec: &ReplicaSpec) -> BTreeMap<String, String> {
    [
        (LABEL_SERVICE, spec.service.clone()),
        (LABEL_COLOUR, spec.slot.colour.to_string()),
        (LABEL_SLOT, spec.slot.index.to_string()),
        (LABEL_DEPLOYMENT, spec.deployment.to_string()),
        (LABEL_DIGEST, spec.digest.clone()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

pub const LABEL_SERVICE: &str = "greenlight.service";
pub const LABEL_COLOUR: &str = "greenlight.colour";
pub const LABEL_SLOT: &str = "greenlight.slot";
pub const LABEL_DEPLOYMENT: &str = "greenlight.deployment";
pub const LABEL_DIGEST: &str = "greenlight.digest";
/// On a one-off (release) container: its service. Not `greenlight.service`,
/// so it is never taken for a replica.
pub const LABEL_TASK: &str = "greenlight.task-of";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn established_connections_to_the_port_are_counted() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1
   1: 020012AC:1F90 010012AC:C350 01 00000000:00000000 00:00000000 00000000     0        0 2 1
   2: 020012AC:1F90 010012AC:C352 01 00000000:00000000 00:00000000 00000000     0        0 3 1
   3: 020012AC:1F90 010012AC:C354 06 00000000:00000000 00:00000000 00000000     0        0 0 3
   4: 020012AC:A2F0 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 4 1
";
        // Two established to 8080 (0x1F90); the listener, a TIME_WAIT and an
        // outgoing connection to someone's 8080 do not count.
        assert_eq!(established_to(table, 8080), 2);
        assert_eq!(established_to(table, 80), 0);
    }

    #[test]
    fn env_files_skip_comments_and_blank_lines() {
        let env = parse_env_file("# c\nA=1\n\nexport B=two words\nnonsense\n");
        assert_eq!(env, vec!["A=1", "B=two words"]);
    }
}
