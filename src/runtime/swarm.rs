//! Replicas as the tasks of Docker Swarm services. Each colour of a service is
//! one Swarm service, `<service>-blue` or `<service>-green`, labelled by
//! greenlight, its image pinned (`repo@digest` with the registry's
//! credentials, or a local image's ID), N replicas. Each task publishes the
//! service's port in host mode on a random port of its node, and nginx
//! reaches it at `<node address>:<port>`: never the routing mesh (IPVS), never
//! Docker's DNS, never an overlay address.
//!
//! Swarm schedules, places and restarts tasks; greenlight owns the cut-over.
//! A colour is scaled to 0 only after nginx stopped routing to it and its
//! workers drained, so Swarm signals a task only once nothing sends to it,
//! and a rollback is a scale-up of a service that still holds the previous
//! spec. Swarm, not greenlight, chooses which task a scale-down stops, so a
//! colour's tasks are stopped together or not at all; a colour only grows
//! task by task (a rolling update's later batches), its spec untouched.
//! The release command runs as a one-task Swarm job.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use bollard::models::{
    EndpointPortConfig, EndpointPortConfigProtocolEnum, EndpointPortConfigPublishModeEnum,
    EndpointSpec, Limit, Mount, MountTmpfsOptions, MountType, NetworkAttachmentConfig,
    ResourceObject, Service, ServiceSpec, ServiceSpecMode, ServiceSpecModeReplicated,
    ServiceSpecModeReplicatedJob, ServiceSpecUpdateConfig,
    ServiceSpecUpdateConfigFailureActionEnum, Task, TaskSpec, TaskSpecContainerSpec,
    TaskSpecContainerSpecFile, TaskSpecContainerSpecSecrets, TaskSpecLogDriver, TaskSpecPlacement,
    TaskSpecResources, TaskSpecRestartPolicy, TaskSpecRestartPolicyConditionEnum, TaskState,
};
use bollard::query_parameters::{
    EventsOptions, ListServicesOptions, ListTasksOptions, UpdateServiceOptions,
};
use futures_util::stream::BoxStream;
use futures_util::StreamExt;

use super::{
    labels, Containers, Credentials, ErrorKind, ImageInfo, Replica, ReplicaSpec, ReplicaStatus,
    Result, RuntimeError, LABEL_COLOUR, LABEL_DEPLOYMENT, LABEL_DIGEST, LABEL_SERVICE, LABEL_SLOT,
    LABEL_TASK,
};
use crate::config::{ServiceConfig, SwarmConfig};
use crate::docker::Engine;
use crate::domain::deployment::Colour;
use crate::domain::replica::RestartPolicy;
use crate::registry::Repository;

/// Tasks of one start whose container the engine failed to start (not the
/// app: it never ran) that Swarm may start again before the start fails.
const ENGINE_START_RETRIES: usize = 3;
/// Lines of a one-off job's output kept.
const JOB_LOG_LINES: usize = 40;
/// How often a wait on tasks looks again.
const POLL: Duration = Duration::from_millis(200);
/// Beyond the grace period, how long a scale-down may take: Swarm waits ~2 s
/// before it signals a task, then the engine stops and removes it.
const STOP_SLACK: Duration = Duration::from_secs(15);

#[derive(Clone)]
pub struct Services {
    engine: Engine,
    containers: Containers,
    config: SwarmConfig,
}

/// What the engine says of its Swarm membership.
#[derive(Debug, Clone)]
pub struct SwarmState {
    /// `inactive`, `pending`, `active`, `error` or `locked`.
    pub state: String,
    /// It can manage services (a manager of an active Swarm).
    pub manager: bool,
    pub node_id: String,
    pub nodes: i64,
    pub managers: i64,
}

impl SwarmState {
    /// One line for `check` and the log.
    pub fn describe(&self) -> String {
        match (self.state.as_str(), self.manager) {
            ("active", true) => format!(
                "a Swarm manager (node {}; {} node(s), {} manager(s))",
                self.node_id, self.nodes, self.managers
            ),
            ("active", false) => format!("a Swarm worker (node {}), not a manager", self.node_id),
            (state, _) => format!("not in a Swarm (Swarm state: {state})"),
        }
    }
}

/// The Swarm membership of the engine.
pub async fn swarm_state(engine: &Engine) -> Result<SwarmState> {
    let info = engine.api().info().await.map_err(api_error)?;
    let swarm = info.swarm.unwrap_or_default();
    let state = swarm
        .local_node_state
        .map(|s| s.to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "inactive".into());
    Ok(SwarmState {
        manager: state == "active" && swarm.control_available.unwrap_or(false),
        state,
        node_id: swarm.node_id.unwrap_or_default(),
        nodes: swarm.nodes.unwrap_or(0),
        managers: swarm.managers.unwrap_or(0),
    })
}

/// The Swarm service of one colour of a greenlight service.
pub fn colour_service(service: &str, colour: Colour) -> String {
    format!("{service}-{colour}")
}

/// The one place a replica's spec becomes a Swarm service: `replicas` tasks
/// of `spec`'s colour. Every container option greenlight knows maps here.
pub fn service_spec(spec: &ReplicaSpec, replicas: u32, config: &SwarmConfig) -> ServiceSpec {
    let colour = spec.slot.colour;
    let mut labels: HashMap<String, String> = labels(spec).into_iter().collect();
    // Swarm numbers the tasks; each task's slot is its own.
    labels.remove(LABEL_SLOT);
    // Each task names itself by its slot (Swarm expands the template per task).
    let replica_var = "GREENLIGHT_REPLICA=";
    let mut env: Vec<String> = spec
        .env
        .iter()
        .filter(|e| !e.starts_with(replica_var))
        .cloned()
        .collect();
    env.push(format!(
        "{replica_var}{}-{colour}-{{{{.Task.Slot}}}}",
        spec.service
    ));
    let o = &spec.options;
    let mut mounts: Vec<Mount> = spec.volumes.iter().map(|v| mount(v)).collect();
    mounts.extend(o.tmpfs.iter().map(|(target, options)| {
        Mount {
            typ: Some(MountType::TMPFS),
            target: Some(target.clone()),
            tmpfs_options: Some(MountTmpfsOptions {
                size_bytes: options
                    .split(',')
                    .find_map(|o| o.strip_prefix("size="))
                    .and_then(|size| crate::config::container::parse_size(size).ok())
                    .map(|b| b as i64),
                ..Default::default()
            }),
            ..Default::default()
        }
    }));
    for (k, v) in &o.labels {
        labels.entry(k.clone()).or_insert_with(|| v.clone());
    }
    let some_vec = |v: &Vec<String>| (!v.is_empty()).then(|| v.clone());
    let condition = match spec.restart {
        RestartPolicy::No => TaskSpecRestartPolicyConditionEnum::NONE,
        RestartPolicy::OnFailure => TaskSpecRestartPolicyConditionEnum::ON_FAILURE,
        RestartPolicy::Always | RestartPolicy::UnlessStopped => {
            TaskSpecRestartPolicyConditionEnum::ANY
        }
    };
    ServiceSpec {
        name: Some(colour_service(&spec.service, colour)),
        labels: Some(labels.clone()),
        task_template: Some(TaskSpec {
            container_spec: Some(TaskSpecContainerSpec {
                image: Some(spec.reference.clone()),
                labels: Some(labels),
                // `command` replaces the image's CMD, as with a container.
                args: spec.command.clone(),
                env: Some(env),
                mounts: (!mounts.is_empty()).then_some(mounts),
                stop_grace_period: Some(spec.stop_grace.as_nanos() as i64),
                // The container options Swarm has (shm_size and security_opt
                // it has not: the config refuses them on Swarm).
                user: o.user.clone(),
                read_only: o.read_only.then_some(true),
                stop_signal: o.stop_signal.clone(),
                init: o.init,
                capability_add: some_vec(&o.cap_add),
                capability_drop: some_vec(&o.cap_drop),
                // Swarm takes /etc/hosts lines: "address host".
                hosts: (!o.extra_hosts.is_empty()).then(|| {
                    o.extra_hosts
                        .iter()
                        .filter_map(|h| h.split_once(':'))
                        .map(|(host, address)| format!("{address} {host}"))
                        .collect()
                }),
                ulimits: crate::docker::ulimits(&o.ulimits),
                health_check: o.healthcheck.as_ref().map(crate::docker::health_config),
                // By name here; Swarm wants each one's ID, looked up when
                // the service is created or updated (`with_secret_ids`).
                secrets: (!o.secrets.is_empty()).then(|| {
                    o.secrets
                        .iter()
                        .map(|f| TaskSpecContainerSpecSecrets {
                            secret_name: Some(f.source.clone()),
                            secret_id: None,
                            file: Some(TaskSpecContainerSpecFile {
                                name: Some(f.target.clone()),
                                uid: Some(f.uid.clone()),
                                gid: Some(f.gid.clone()),
                                mode: Some(f.mode),
                            }),
                        })
                        .collect()
                }),
                ..Default::default()
            }),
            resources: (o.memory.is_some()
                || o.nano_cpus.is_some()
                || o.memory_reservation.is_some())
            .then(|| TaskSpecResources {
                limits: Some(Limit {
                    nano_cpus: o.nano_cpus,
                    memory_bytes: o.memory.map(|m| m as i64),
                    ..Default::default()
                }),
                reservations: o.memory_reservation.map(|m| ResourceObject {
                    memory_bytes: Some(m as i64),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            log_driver: o
                .logging
                .as_ref()
                .map(|(driver, options)| TaskSpecLogDriver {
                    name: Some(driver.clone()),
                    options: Some(options.clone().into_iter().collect()),
                }),
            // Extra networks must be Swarm-scoped (overlay) networks.
            networks: (!o.networks.is_empty()).then(|| {
                o.networks
                    .iter()
                    .map(|n| NetworkAttachmentConfig {
                        target: Some(n.clone()),
                        ..Default::default()
                    })
                    .collect()
            }),
            restart_policy: Some(TaskSpecRestartPolicy {
                condition: Some(condition),
                ..Default::default()
            }),
            placement: (!config.constraints.is_empty()).then(|| TaskSpecPlacement {
                constraints: Some(config.constraints.clone()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        mode: Some(ServiceSpecMode {
            replicated: Some(ServiceSpecModeReplicated {
                replicas: Some(replicas as i64),
            }),
            ..Default::default()
        }),
        // An idle colour that still has tasks (left by a crash) is replaced
        // all at once: nginx does not route to it.
        update_config: Some(ServiceSpecUpdateConfig {
            parallelism: Some(0),
            failure_action: Some(ServiceSpecUpdateConfigFailureActionEnum::CONTINUE),
            ..Default::default()
        }),
        endpoint_spec: Some(EndpointSpec {
            ports: Some(vec![EndpointPortConfig {
                protocol: Some(EndpointPortConfigProtocolEnum::TCP),
                target_port: Some(spec.port as i64),
                // No published port: each task gets a free one of its node.
                published_port: None,
                publish_mode: Some(EndpointPortConfigPublishModeEnum::HOST),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A one-off (the release command) as a Swarm job: the service's task
/// template (through [`service_spec`], so every container option maps the
/// same way), one task to complete, never restarted, no port, labelled as a
/// one-off (never taken for a replica).
pub fn job_spec(task: &super::TaskSpec, config: &SwarmConfig) -> ServiceSpec {
    let as_replica = ReplicaSpec {
        service: task.service.clone(),
        slot: crate::domain::plan::Slot {
            colour: Colour::Blue,
            index: 0,
        },
        name: task.name.clone(),
        image: task.image.clone(),
        reference: task.reference.clone(),
        deployment: task.deployment,
        digest: String::new(),
        env: task.env.clone(),
        command: Some(task.command.clone()),
        volumes: task.volumes.clone(),
        network: task.network.clone(),
        port: 0,
        restart: RestartPolicy::No,
        stop_grace: Duration::from_secs(10),
        options: task.options.clone(),
    };
    let mut spec = service_spec(&as_replica, 1, config);
    let mut labels: HashMap<String, String> = task
        .options
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    labels.insert(LABEL_TASK.into(), task.service.clone());
    labels.insert(LABEL_DEPLOYMENT.into(), task.deployment.to_string());
    spec.name = Some(task.name.clone());
    spec.labels = Some(labels.clone());
    if let Some(c) = spec
        .task_template
        .as_mut()
        .and_then(|t| t.container_spec.as_mut())
    {
        c.labels = Some(labels);
        // The env as given: no per-slot replica name.
        c.env = Some(task.env.clone());
    }
    spec.mode = Some(ServiceSpecMode {
        replicated_job: Some(ServiceSpecModeReplicatedJob {
            max_concurrent: Some(1),
            total_completions: Some(1),
        }),
        ..Default::default()
    });
    spec.update_config = None;
    spec.endpoint_spec = None;
    spec
}

/// A volume in Docker's `source:target[:mode]` form: a bind mount when the
/// source is a path, else a named volume.
fn mount(volume: &str) -> Mount {
    let parts: Vec<&str> = volume.split(':').collect();
    let (source, target, mode) = match parts.as_slice() {
        [target] => ("", *target, ""),
        [source, target] => (*source, *target, ""),
        [source, target, mode, ..] => (*source, *target, *mode),
        [] => ("", "", ""),
    };
    Mount {
        typ: Some(if source.starts_with('/') {
            MountType::BIND
        } else {
            MountType::VOLUME
        }),
        source: (!source.is_empty()).then(|| source.to_string()),
        target: Some(target.to_string()),
        read_only: Some(mode.split(',').any(|m| m == "ro")),
        ..Default::default()
    }
}

/// How many tasks a replicated service wants.
fn wanted_replicas(service: &Service) -> Option<i64> {
    service
        .spec
        .as_ref()?
        .mode
        .as_ref()?
        .replicated
        .as_ref()?
        .replicas
}

fn api_error(e: bollard::errors::Error) -> RuntimeError {
    super::docker::other(crate::docker::DockerError::from(e))
}

fn missing_secret(name: &str) -> RuntimeError {
    RuntimeError::new(
        ErrorKind::Refused,
        format!(
            "the Swarm secret {name:?} does not exist: create it on a manager \
             (printf %s \"$VALUE\" | docker secret create {name} -)"
        ),
    )
}

fn other(message: impl Into<String>) -> RuntimeError {
    RuntimeError::new(ErrorKind::Other, message)
}

fn not_found(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

fn task_state(t: &Task) -> Option<TaskState> {
    t.status.as_ref().and_then(|s| s.state)
}

/// Still starting or running (not yet shut down, failed or removed).
fn alive(t: &Task) -> bool {
    task_state(t).is_some_and(|s| s <= TaskState::RUNNING)
}

fn running(t: &Task) -> bool {
    task_state(t) == Some(TaskState::RUNNING) && t.desired_state == Some(TaskState::RUNNING)
}

fn task_label<'t>(t: &'t Task, key: &str) -> Option<&'t str> {
    t.spec
        .as_ref()?
        .container_spec
        .as_ref()?
        .labels
        .as_ref()?
        .get(key)
        .map(String::as_str)
}

/// The host port a task publishes its `target` port on.
fn host_port(t: &Task, target: u16) -> Option<i64> {
    t.status
        .as_ref()?
        .port_status
        .as_ref()?
        .ports
        .as_ref()?
        .iter()
        .find(|p| {
            p.target_port == Some(target as i64)
                && p.publish_mode == Some(EndpointPortConfigPublishModeEnum::HOST)
        })
        .and_then(|p| p.published_port)
}

/// Whether a failed task's container never ran: the engine could not start
/// it (Swarm's "starting container failed: ..."), as opposed to an app that
/// exited.
fn never_started(t: &Task) -> bool {
    t.status
        .as_ref()
        .and_then(|s| s.err.as_deref())
        .is_some_and(|e| e.starts_with("starting container failed"))
}

/// One line about a task that is not running: its state and Swarm's words.
fn task_summary(t: &Task) -> String {
    let status = t.status.clone().unwrap_or_default();
    let mut out = format!(
        "task {} (slot {}): {}",
        t.id.as_deref().unwrap_or("?"),
        t.slot.unwrap_or(0),
        status
            .state
            .map(|s| s.to_string())
            .unwrap_or_else(|| "unknown".into())
    );
    if let Some(err) = status.err.filter(|e| !e.is_empty()) {
        out.push_str(&format!(" ({err})"));
    } else if let Some(msg) = status.message.filter(|m| !m.is_empty()) {
        out.push_str(&format!(" ({msg})"));
    }
    out
}

impl Services {
    pub fn new(engine: Engine, config: SwarmConfig) -> Services {
        Services {
            containers: Containers::new(engine.clone()),
            engine,
            config,
        }
    }

    /// The engine, and that it manages a Swarm (an error if it does not).
    pub async fn describe(&self) -> Result<String> {
        let version = self.containers.describe().await?;
        let swarm = swarm_state(&self.engine).await?;
        if !swarm.manager {
            return Err(other(format!(
                "{version} is {}: [runtime] kind = \"swarm\" needs a Swarm manager (run `docker swarm init` \
                 on this host, or point [docker] socket at a manager)",
                swarm.describe()
            )));
        }
        Ok(format!("{version}, {}", swarm.describe()))
    }

    /// Images are pulled and inspected on this node (the manager greenlight
    /// talks to); each node's engine pulls for its own tasks.
    pub async fn image(&self, reference: &str) -> Result<Option<ImageInfo>> {
        self.containers.image(reference).await
    }

    pub async fn pull(&self, reference: &str, credentials: Option<Credentials>) -> Result<()> {
        self.containers.pull(reference, credentials).await
    }

    /// Starts one colour's tasks. Slots 1..=N: the colour's service is set
    /// to the specs, N tasks (blue-green, a canary, a rolling update's first
    /// batch). Other slots (a rolling update's later batches): the colour
    /// already runs this digest, and its service is only scaled up to the
    /// highest slot asked for, so the tasks it runs, routed ones among them,
    /// are left as they are. Waits until the tasks run.
    pub async fn start_all(
        &self,
        specs: &[ReplicaSpec],
        credentials: Option<Credentials>,
    ) -> Vec<Result<Replica>> {
        let Some(first) = specs.first() else {
            return Vec::new();
        };
        let n = specs.len() as u32;
        let slots: HashSet<u32> = specs.iter().map(|s| s.slot.index).collect();
        let top = slots.iter().copied().max().unwrap_or(0);
        let one_colour = specs
            .iter()
            .all(|s| s.service == first.service && s.slot.colour == first.slot.colour);
        let started = if !one_colour || slots.len() != specs.len() || slots.contains(&0) {
            Err(other(
                "on Swarm a deployment starts tasks of one colour at a time, each slot once",
            ))
        } else if slots == (1..=n).collect::<HashSet<u32>>() {
            self.start_colour(first, n, credentials).await
        } else {
            self.scale_up(first, top, credentials).await
        };
        match started {
            Ok(replicas) => specs
                .iter()
                .map(|spec| {
                    replicas
                        .iter()
                        .find(|r| r.slot == Some(spec.slot.index))
                        .cloned()
                        .ok_or_else(|| other(format!("no running task for {}", spec.name)))
                })
                .collect(),
            Err(e) => specs.iter().map(|_| Err(e.clone())).collect(),
        }
    }

    /// Fills in the ID of each secret the spec names; a secret that does not
    /// exist is refused with the command that makes it.
    async fn with_secret_ids(&self, spec: &mut ServiceSpec) -> Result<()> {
        let Some(secrets) = spec
            .task_template
            .as_mut()
            .and_then(|t| t.container_spec.as_mut())
            .and_then(|c| c.secrets.as_mut())
        else {
            return Ok(());
        };
        for secret in secrets {
            let name = secret.secret_name.clone().unwrap_or_default();
            secret.secret_id = Some(self.secret_id(&name).await?);
        }
        Ok(())
    }

    /// The ID of the Swarm secret named `name`.
    pub async fn secret_id(&self, name: &str) -> Result<String> {
        match self.engine.api().inspect_secret(name).await {
            // Inspect also matches by ID prefix: the name must be the name.
            Ok(s) if s.spec.as_ref().and_then(|s| s.name.as_deref()) == Some(name) => {
                Ok(s.id.unwrap_or_default())
            }
            Ok(_) => Err(missing_secret(name)),
            Err(e) if not_found(&e) => Err(missing_secret(name)),
            Err(e) => Err(api_error(e)),
        }
    }

    /// Sets the service `current` (as inspected, named `name`) to `replicas`
    /// tasks, its spec otherwise as it is.
    async fn set_replicas(
        &self,
        name: &str,
        current: &Service,
        replicas: u32,
        credentials: Option<Credentials>,
    ) -> Result<()> {
        let mut spec = current.spec.clone().unwrap_or_default();
        spec.mode = Some(ServiceSpecMode {
            replicated: Some(ServiceSpecModeReplicated {
                replicas: Some(replicas as i64),
            }),
            ..Default::default()
        });
        let opts = UpdateServiceOptions {
            version: current.version.as_ref().and_then(|v| v.index).unwrap_or(0) as i32,
            ..Default::default()
        };
        self.engine
            .api()
            .update_service(name, spec, opts, credentials)
            .await
            .map(drop)
            .map_err(|e| other(format!("scaling {name} to {replicas}: {}", api_error(e))))
    }

    /// Scales the colour of `spec` up to `top` tasks, keeping its service's
    /// spec, which must be of `spec`'s digest (a deployment re-run after a
    /// crash continues what the interrupted one started); waits until tasks
    /// 1..=top run.
    async fn scale_up(
        &self,
        spec: &ReplicaSpec,
        top: u32,
        credentials: Option<Credentials>,
    ) -> Result<Vec<Replica>> {
        let api = self.engine.api();
        let name = colour_service(&spec.service, spec.slot.colour);
        let current = match api.inspect_service(&name, None).await {
            Ok(s) => s,
            Err(e) if not_found(&e) => {
                return Err(other(format!(
                    "{name} does not exist: a rolling update on Swarm starts with slot 1"
                )))
            }
            Err(e) => return Err(api_error(e)),
        };
        let labels = current
            .spec
            .as_ref()
            .and_then(|s| s.labels.clone())
            .unwrap_or_default();
        let label = |key: &str| labels.get(key).cloned();
        if label(LABEL_SERVICE).as_deref() != Some(spec.service.as_str()) {
            return Err(RuntimeError::new(
                ErrorKind::Conflict,
                format!(
                    "a Swarm service named {name} exists and was not made by greenlight: \
                     rename or remove it"
                ),
            ));
        }
        if label(LABEL_DIGEST).as_deref() != Some(spec.digest.as_str()) {
            return Err(other(format!(
                "{name} runs {}, not {}: Swarm would replace all of its tasks, routed ones \
                 among them, to change it; a rolling update adds tasks to a colour only \
                 while it runs the target digest (deploy blue-green to move on)",
                label(LABEL_DIGEST).unwrap_or_else(|| "another image".into()),
                spec.digest
            )));
        }
        let deployment = label(LABEL_DEPLOYMENT).unwrap_or_default();
        // Tasks that ended before (one killed and replaced) are history, not
        // this start's failure.
        let before: HashSet<String> = self
            .tasks(&name, false)
            .await?
            .into_iter()
            .filter_map(|t| t.id)
            .collect();
        if wanted_replicas(&current).unwrap_or(0) < top as i64 {
            // The new tasks' nodes pull with the credentials given now.
            self.set_replicas(&name, &current, top, credentials).await?;
        }
        self.wait_running(&name, &deployment, &before, spec, top)
            .await
    }

    async fn start_colour(
        &self,
        spec: &ReplicaSpec,
        n: u32,
        credentials: Option<Credentials>,
    ) -> Result<Vec<Replica>> {
        let api = self.engine.api();
        let name = colour_service(&spec.service, spec.slot.colour);
        let mut wanted = service_spec(spec, n, &self.config);
        self.with_secret_ids(&mut wanted).await?;
        match api.inspect_service(&name, None).await {
            Ok(existing) => {
                let owner = existing
                    .spec
                    .as_ref()
                    .and_then(|s| s.labels.as_ref())
                    .and_then(|l| l.get(LABEL_SERVICE));
                if owner != Some(&spec.service) {
                    return Err(RuntimeError::new(
                        ErrorKind::Conflict,
                        format!(
                            "a Swarm service named {name} exists and was not made by greenlight: \
                             rename or remove it"
                        ),
                    ));
                }
                let version = existing.version.and_then(|v| v.index).unwrap_or(0);
                let opts = UpdateServiceOptions {
                    version: version as i32,
                    ..Default::default()
                };
                api.update_service(&name, wanted, opts, credentials)
                    .await
                    .map_err(|e| {
                        other(format!("updating Swarm service {name}: {}", api_error(e)))
                    })?;
            }
            Err(e) if not_found(&e) => {
                api.create_service(wanted, credentials).await.map_err(|e| {
                    other(format!("creating Swarm service {name}: {}", api_error(e)))
                })?;
            }
            Err(e) => return Err(api_error(e)),
        }
        self.wait_running(
            &name,
            &spec.deployment.to_string(),
            &HashSet::new(),
            spec,
            n,
        )
        .await
    }

    /// Waits until tasks 1..=n of the service's spec (of `deployment`) run;
    /// a task of it that fails or is rejected (other than those in `before`)
    /// ends the wait at once, with Swarm's reason.
    async fn wait_running(
        &self,
        name: &str,
        deployment: &str,
        before: &HashSet<String>,
        spec: &ReplicaSpec,
        n: u32,
    ) -> Result<Vec<Replica>> {
        let deadline = Instant::now() + self.config.start_timeout;
        let mut warned = HashSet::new();
        loop {
            let tasks = self.tasks(name, false).await?;
            let ours: Vec<&Task> = tasks
                .iter()
                .filter(|t| task_label(t, LABEL_DEPLOYMENT) == Some(deployment))
                .collect();
            let failed: Vec<&Task> = ours
                .iter()
                .copied()
                .filter(|t| {
                    matches!(task_state(t), Some(TaskState::FAILED | TaskState::REJECTED))
                        && !before.contains(t.id.as_deref().unwrap_or_default())
                })
                .collect();
            // The engine failing to start a container (e.g. Docker 20.10's
            // EBUSY remounting a task's secrets read-only while other
            // containers start) is not the app's failure: Swarm starts the
            // task again, unless the service never restarts, a few times.
            let engine_only = spec.restart != RestartPolicy::No
                && failed.len() <= ENGINE_START_RETRIES
                && failed.iter().all(|t| never_started(t));
            if engine_only {
                for t in &failed {
                    if warned.insert(t.id.clone().unwrap_or_default()) {
                        tracing::warn!(
                            service = name,
                            task = %task_summary(t),
                            "the engine could not start a task's container; Swarm starts it again"
                        );
                    }
                }
            }
            if let Some(t) = failed.first().filter(|_| !engine_only) {
                let exit = t
                    .status
                    .as_ref()
                    .and_then(|s| s.container_status.as_ref())
                    .and_then(|c| c.exit_code);
                return Err(other(format!(
                    "{name}: {}{}",
                    task_summary(t),
                    exit.map(|c| format!(", exit code {c}")).unwrap_or_default()
                )));
            }
            let up: Vec<&Task> = ours.iter().copied().filter(|t| running(t)).collect();
            let slots: HashSet<i64> = up.iter().filter_map(|t| t.slot).collect();
            if (1..=n as i64).all(|k| slots.contains(&k))
                && up.iter().all(|t| host_port(t, spec.port).is_some())
            {
                let mut nodes = HashMap::new();
                let mut out = Vec::new();
                for t in up
                    .into_iter()
                    .filter(|t| t.slot.is_some_and(|k| k <= n as i64))
                {
                    out.push(
                        self.replica(t, &spec.service, spec.port, &mut nodes)
                            .await?,
                    );
                }
                return Ok(out);
            }
            if Instant::now() >= deadline {
                let waiting: Vec<String> = ours
                    .iter()
                    .filter(|t| !running(t) && t.desired_state == Some(TaskState::RUNNING))
                    .map(|t| task_summary(t))
                    .collect();
                return Err(RuntimeError::new(
                    ErrorKind::Timeout,
                    format!(
                        "{name}: {} of {n} tasks running after {} (runtime.swarm.start_timeout){}",
                        slots.len(),
                        crate::display::span(self.config.start_timeout),
                        if waiting.is_empty() {
                            String::new()
                        } else {
                            format!("; {}", waiting.join("; "))
                        }
                    ),
                ));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The tasks of Swarm service `service` (a name or ID); only those Swarm
    /// wants running when `wanted_running`.
    async fn tasks(&self, service: &str, wanted_running: bool) -> Result<Vec<Task>> {
        // The service filter also matches by name prefix, and a service that
        // does not exist is an error: look it up first, keep its own tasks.
        let ids = self.service_ids(service).await?;
        let Some(id) = ids.iter().next() else {
            return Ok(Vec::new());
        };
        let mut filters = HashMap::from([("service".to_string(), vec![id.clone()])]);
        if wanted_running {
            filters.insert("desired-state".into(), vec!["running".into()]);
        }
        let tasks = self
            .engine
            .api()
            .list_tasks(Some(ListTasksOptions {
                filters: Some(filters),
            }))
            .await
            .map_err(api_error)?;
        Ok(tasks
            .into_iter()
            .filter(|t| t.service_id.as_ref().is_some_and(|id| ids.contains(id)))
            .collect())
    }

    /// The IDs of the service named (or with the ID) `service`.
    async fn service_ids(&self, service: &str) -> Result<HashSet<String>> {
        match self.engine.api().inspect_service(service, None).await {
            Ok(s) => Ok(s.id.into_iter().collect()),
            Err(e) if not_found(&e) => Ok(HashSet::new()),
            Err(e) => Err(api_error(e)),
        }
    }

    /// A task as a replica, with its address when it publishes the port.
    async fn replica(
        &self,
        t: &Task,
        service: &str,
        port: u16,
        nodes: &mut HashMap<String, String>,
    ) -> Result<Replica> {
        let colour: Option<Colour> = task_label(t, LABEL_COLOUR).and_then(|c| c.parse().ok());
        let slot = t.slot.unwrap_or(0) as u32;
        let address = match (host_port(t, port), t.node_id.as_deref()) {
            (Some(p), Some(node)) => Some(format!("{}:{p}", self.node_address(node, nodes).await?)),
            _ => None,
        };
        Ok(Replica {
            id: t.id.clone().unwrap_or_default(),
            name: match colour {
                Some(c) => format!("{service}-{c}-{slot}"),
                None => format!("{service}-?-{slot}"),
            },
            colour,
            slot: Some(slot),
            deployment: task_label(t, LABEL_DEPLOYMENT).and_then(|d| d.parse().ok()),
            digest: task_label(t, LABEL_DIGEST).map(str::to_string),
            image_id: t
                .spec
                .as_ref()
                .and_then(|s| s.container_spec.as_ref())
                .and_then(|c| c.image.clone())
                .unwrap_or_default(),
            running: running(t),
            state: task_state(t)
                .map(|s| s.to_string())
                .unwrap_or_else(|| "unknown".into()),
            address,
        })
    }

    /// The address a node's published ports are reached at (its Swarm
    /// address), looked up once per call site.
    async fn node_address(
        &self,
        node: &str,
        cache: &mut HashMap<String, String>,
    ) -> Result<String> {
        if let Some(addr) = cache.get(node) {
            return Ok(addr.clone());
        }
        let n = self
            .engine
            .api()
            .inspect_node(node)
            .await
            .map_err(api_error)?;
        let addr = n
            .status
            .and_then(|s| s.addr)
            .filter(|a| !a.is_empty() && a != "0.0.0.0")
            .ok_or_else(|| {
                other(format!(
                    "Swarm node {node} has no address its published ports can be reached at \
                     (join it with --advertise-addr)"
                ))
            })?;
        cache.insert(node.to_string(), addr.clone());
        Ok(addr)
    }

    /// Runs a one-off (the release command) as a Swarm job, `<service>-release`:
    /// one task, never restarted, placed and given secrets, networks and
    /// mounts like the service's tasks, its image pulled on its node with the
    /// registry's credentials. Waits for its end, at most `timeout` (then the
    /// job is removed, which kills it), keeps its output's tail, and removes
    /// the job.
    pub async fn run_job(
        &self,
        spec: &super::TaskSpec,
        timeout: Duration,
        credentials: Option<Credentials>,
    ) -> Result<super::TaskOutcome> {
        let api = self.engine.api();
        let name = spec.name.clone();
        // One left by a crash or a cut-off run: ours only if labelled so.
        match api.inspect_service(&name, None).await {
            Ok(stale) => {
                let owner = stale
                    .spec
                    .as_ref()
                    .and_then(|s| s.labels.as_ref())
                    .and_then(|l| l.get(LABEL_TASK).cloned());
                if owner.as_deref() != Some(spec.service.as_str()) {
                    return Err(RuntimeError::new(
                        ErrorKind::Conflict,
                        format!(
                            "a Swarm service named {name} exists and was not made by greenlight: \
                             rename or remove it"
                        ),
                    ));
                }
                self.remove_job(&name).await?;
            }
            Err(e) if not_found(&e) => {}
            Err(e) => return Err(api_error(e)),
        }
        let mut wanted = job_spec(spec, &self.config);
        self.with_secret_ids(&mut wanted).await?;
        api.create_service(wanted, credentials)
            .await
            .map_err(|e| other(format!("creating Swarm job {name}: {}", api_error(e))))?;
        let deadline = Instant::now() + timeout;
        let ended = loop {
            let tasks = self.tasks(&name, false).await?;
            if let Some(t) = tasks.iter().find(|t| {
                matches!(
                    task_state(t),
                    Some(
                        TaskState::COMPLETE
                            | TaskState::FAILED
                            | TaskState::REJECTED
                            | TaskState::SHUTDOWN
                    )
                )
            }) {
                break Some(t.clone());
            }
            if Instant::now() >= deadline {
                break None;
            }
            tokio::time::sleep(POLL).await;
        };
        let outcome = match &ended {
            Some(t) => {
                let id = t.id.clone().unwrap_or_default();
                let mut output = self.log_tail(&id, JOB_LOG_LINES).await;
                let exit_code = t
                    .status
                    .as_ref()
                    .and_then(|s| s.container_status.as_ref())
                    .and_then(|c| c.exit_code);
                let exit_code = match (task_state(t), exit_code) {
                    (Some(TaskState::COMPLETE), code) => Some(code.unwrap_or(0)),
                    (_, Some(code)) if code != 0 => Some(code),
                    // It never ran (an image its node cannot pull, a
                    // constraint no node meets): Swarm's words, exit 1.
                    _ => {
                        output.push_str(&format!("\n{}\n", task_summary(t)));
                        Some(1)
                    }
                };
                super::TaskOutcome { exit_code, output }
            }
            None => super::TaskOutcome {
                exit_code: None,
                output: match self.tasks(&name, false).await?.first() {
                    Some(t) => {
                        self.log_tail(t.id.as_deref().unwrap_or_default(), JOB_LOG_LINES)
                            .await
                    }
                    None => String::new(),
                },
            },
        };
        if let Err(e) = self.remove_job(&name).await {
            tracing::warn!(job = %name, error = %e, "removing a one-off Swarm job");
        }
        Ok(outcome)
    }

    /// Removes a job service (killing its task) and waits until its task is
    /// gone, so the next one of that name can be made.
    async fn remove_job(&self, name: &str) -> Result<()> {
        match self.engine.api().delete_service(name).await {
            Ok(()) => {}
            Err(e) if not_found(&e) => return Ok(()),
            Err(e) => return Err(api_error(e)),
        }
        let deadline = Instant::now() + STOP_SLACK;
        while !self.service_ids(name).await?.is_empty() {
            if Instant::now() >= deadline {
                return Err(other(format!("{name} was removed but is still listed")));
            }
            tokio::time::sleep(POLL).await;
        }
        Ok(())
    }

    /// Swarm applies the restart policy from the start: a task that fails
    /// its gate fails the deployment, which scales its colour back to 0.
    pub async fn promote(&self, _id: &str, _restart: RestartPolicy) -> Result<()> {
        Ok(())
    }

    pub async fn status(&self, id: &str) -> Result<Option<ReplicaStatus>> {
        let t = match self.engine.api().inspect_task(id).await {
            Ok(t) => t,
            Err(e) if not_found(&e) => return Ok(None),
            Err(e) => return Err(api_error(e)),
        };
        let up = running(&t);
        Ok(Some(ReplicaStatus {
            id: id.to_string(),
            running: up,
            restarting: false,
            status: task_state(&t)
                .map(|s| s.to_string())
                .unwrap_or_else(|| "unknown".into()),
            exit_code: t
                .status
                .as_ref()
                .and_then(|s| s.container_status.as_ref())
                .and_then(|c| c.exit_code)
                .filter(|_| !up),
            // Swarm replaces a task that fails rather than restarting it.
            restart_count: 0,
            // Swarm reports a task with a HEALTHCHECK running only once it is
            // healthy, and fails it when it turns unhealthy.
            health: Some(if up { "healthy" } else { "starting" }.to_string()),
        }))
    }

    /// The last `lines` lines a task wrote (through Swarm's task logs, from
    /// whichever node it ran on).
    pub async fn log_tail(&self, id: &str, lines: usize) -> String {
        let opts = bollard::query_parameters::LogsOptions {
            stdout: true,
            stderr: true,
            tail: lines.to_string(),
            ..Default::default()
        };
        let mut out = String::new();
        let mut stream = self.engine.api().task_logs(id, Some(opts));
        while let Some(Ok(chunk)) = stream.next().await {
            out.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
            if out.len() > 16 * 1024 {
                break;
            }
        }
        out
    }

    /// Scales each colour whose every wanted task is in `replicas` to 0 and
    /// waits for its tasks to end (`grace`: `None` for replicas that never
    /// served; the service's own stop grace applies either way). A task whose
    /// colour also runs tasks not in `replicas` is left running, reported.
    pub async fn stop_all(&self, replicas: &[Replica], grace: Option<Duration>) -> Vec<Result<()>> {
        let api = self.engine.api();
        // The Swarm service of each replica (gone: nothing to stop).
        let mut services: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        let mut out: Vec<Result<()>> = replicas.iter().map(|_| Ok(())).collect();
        for (i, r) in replicas.iter().enumerate() {
            match api.inspect_task(&r.id).await {
                Ok(t) if t.desired_state == Some(TaskState::RUNNING) || alive(&t) => {
                    if let Some(service) = t.service_id {
                        services.entry(service).or_default().push(i);
                    }
                }
                Ok(_) => {}
                Err(e) if not_found(&e) => {}
                Err(e) => out[i] = Err(api_error(e)),
            }
        }
        for (service, members) in services {
            let result = self.scale_down(&service, &members, replicas, grace).await;
            for i in members {
                out[i] = result.clone();
            }
        }
        out
    }

    async fn scale_down(
        &self,
        service: &str,
        members: &[usize],
        replicas: &[Replica],
        grace: Option<Duration>,
    ) -> Result<()> {
        let api = self.engine.api();
        let ids: HashSet<&str> = members.iter().map(|&i| replicas[i].id.as_str()).collect();
        let wanted = self.tasks(service, true).await?;
        let others: Vec<String> = wanted
            .iter()
            .filter(|t| !ids.contains(t.id.as_deref().unwrap_or_default()))
            .map(|t| t.id.clone().unwrap_or_default())
            .collect();
        let current = match api.inspect_service(service, None).await {
            Ok(s) => s,
            Err(e) if not_found(&e) => return Ok(()),
            Err(e) => return Err(api_error(e)),
        };
        let name = current
            .spec
            .as_ref()
            .and_then(|s| s.name.clone())
            .unwrap_or_else(|| service.to_string());
        if !others.is_empty() {
            return Err(RuntimeError::new(
                ErrorKind::Deferred,
                format!(
                    "Swarm stops the tasks of {name} only all together (it would choose which \
                     one a scale-down stops), and {} more of them run",
                    others.len()
                ),
            ));
        }
        if wanted_replicas(&current) != Some(0) {
            self.set_replicas(&name, &current, 0, None).await?;
        }
        let spec_grace = current
            .spec
            .as_ref()
            .and_then(|s| s.task_template.as_ref())
            .and_then(|t| t.container_spec.as_ref())
            .and_then(|c| c.stop_grace_period)
            .map(|ns| Duration::from_nanos(ns.max(0) as u64))
            .unwrap_or(Duration::from_secs(10));
        let deadline = Instant::now() + grace.unwrap_or(spec_grace).max(spec_grace) + STOP_SLACK;
        loop {
            let left: Vec<Task> = self
                .tasks(service, false)
                .await?
                .into_iter()
                .filter(alive)
                .collect();
            if left.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(RuntimeError::new(
                    ErrorKind::Timeout,
                    format!(
                        "{name} is scaled to 0 but {} of its tasks still run",
                        left.len()
                    ),
                ));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Every task Swarm wants running of the service's colours.
    pub async fn replicas(&self, svc: &ServiceConfig) -> Result<Vec<Replica>> {
        let filters = HashMap::from([(
            "label".to_string(),
            vec![format!("{LABEL_SERVICE}={}", svc.name)],
        )]);
        let services = self
            .engine
            .api()
            .list_services(Some(ListServicesOptions {
                filters: Some(filters),
                ..Default::default()
            }))
            .await
            .map_err(api_error)?;
        let mut nodes = HashMap::new();
        let mut out = Vec::new();
        for s in services {
            let Some(id) = s.id else { continue };
            for t in self.tasks(&id, true).await? {
                out.push(self.replica(&t, &svc.name, svc.port, &mut nodes).await?);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Yields whenever a greenlight task may have changed: a container of a
    /// greenlight service on this node started, died or changed health, or a
    /// node changed (went down, was drained). Tasks on other nodes show up
    /// through their node's events or the watcher's periodic look. Ends when
    /// the engine's event stream does.
    pub fn changes(&self) -> BoxStream<'static, ()> {
        let api = self.engine.api().clone();
        let subscribe = |filters: Vec<(&str, Vec<String>)>| {
            let filters = filters
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect();
            api.events(Some(EventsOptions {
                filters: Some(filters),
                ..Default::default()
            }))
        };
        let containers = subscribe(vec![
            ("type", vec!["container".into()]),
            ("label", vec![LABEL_SERVICE.into()]),
            (
                "event",
                ["start", "die", "destroy", "health_status", "kill"]
                    .map(String::from)
                    .to_vec(),
            ),
        ]);
        let nodes = subscribe(vec![("type", vec!["node".into()])]);
        futures_util::stream::select(containers, nodes)
            .take_while(|e| std::future::ready(e.is_ok()))
            .map(|_| ())
            .boxed()
    }

    /// Prunes this manager's images as on one host (the engine refuses to
    /// remove an image a container uses; the live and rollback images are
    /// protected). Each other node keeps its own images: greenlight cannot
    /// reach their engines, so they are pruned per node.
    pub async fn prune(
        &self,
        repository: &Repository,
        keep: usize,
        protected: &HashSet<String>,
        deployed: &HashSet<String>,
    ) -> Result<Vec<String>> {
        self.containers
            .prune(repository, keep, protected, deployed)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::plan::Slot;

    fn spec() -> ReplicaSpec {
        ReplicaSpec {
            service: "web".into(),
            slot: Slot {
                colour: Colour::Green,
                index: 1,
            },
            name: "web-green-1".into(),
            image: "sha256:abc".into(),
            reference: "registry.example/web@sha256:def".into(),
            deployment: 7,
            digest: "sha256:def".into(),
            env: vec![
                "A=1".into(),
                "GREENLIGHT_SERVICE=web".into(),
                "GREENLIGHT_REPLICA=web-green-1".into(),
            ],
            command: Some(vec!["serve".into()]),
            volumes: vec!["/srv/data:/data:ro".into(), "cache:/cache".into()],
            network: "greenlight".into(),
            port: 8080,
            restart: RestartPolicy::UnlessStopped,
            stop_grace: Duration::from_secs(5),
            options: Default::default(),
        }
    }

    #[test]
    fn the_container_options_map_into_the_swarm_service() {
        use crate::domain::replica::{ContainerOptions, Healthcheck, SecretFile};
        let mut spec = spec();
        spec.options = ContainerOptions {
            networks: vec!["db".into()],
            labels: [("team".to_string(), "web".to_string())].into(),
            memory: Some(512 << 20),
            memory_reservation: Some(256 << 20),
            nano_cpus: Some(1_500_000_000),
            user: Some("1000:1000".into()),
            read_only: true,
            tmpfs: [("/tmp".to_string(), "size=64m".to_string())].into(),
            cap_drop: vec!["ALL".into()],
            cap_add: vec!["NET_BIND_SERVICE".into()],
            extra_hosts: vec!["db.internal:10.0.0.5".into()],
            stop_signal: Some("SIGINT".into()),
            init: Some(true),
            ulimits: vec![("nofile".into(), 1024, 2048)],
            logging: Some((
                "json-file".into(),
                [("max-size".to_string(), "10m".to_string())].into(),
            )),
            healthcheck: Some(Healthcheck {
                test: vec!["NONE".into()],
                ..Default::default()
            }),
            secrets: vec![SecretFile {
                source: "db_password".into(),
                target: "db".into(),
                uid: "1000".into(),
                gid: "0".into(),
                mode: 0o400,
            }],
            ..Default::default()
        };
        let s = service_spec(&spec, 2, &SwarmConfig::default());
        assert_eq!(s.labels.as_ref().unwrap()["team"], "web");
        let task = s.task_template.unwrap();
        let c = task.container_spec.unwrap();
        assert_eq!(c.user.as_deref(), Some("1000:1000"));
        assert_eq!(c.read_only, Some(true));
        assert_eq!(c.stop_signal.as_deref(), Some("SIGINT"));
        assert_eq!(c.init, Some(true));
        assert_eq!(c.capability_drop.unwrap(), ["ALL"]);
        assert_eq!(c.capability_add.unwrap(), ["NET_BIND_SERVICE"]);
        assert_eq!(c.hosts.unwrap(), ["10.0.0.5 db.internal"]);
        assert_eq!(c.ulimits.unwrap()[0].hard, Some(2048));
        assert_eq!(c.health_check.unwrap().test.unwrap(), ["NONE"]);
        // The secret by name; its ID is looked up when the service is made.
        let secret = &c.secrets.as_ref().unwrap()[0];
        assert_eq!(secret.secret_name.as_deref(), Some("db_password"));
        assert_eq!(secret.secret_id, None);
        let file = secret.file.as_ref().unwrap();
        assert_eq!(
            (file.name.as_deref(), file.uid.as_deref(), file.mode),
            (Some("db"), Some("1000"), Some(0o400))
        );
        let tmpfs = c.mounts.unwrap().pop().unwrap();
        assert_eq!(tmpfs.typ, Some(MountType::TMPFS));
        assert_eq!(tmpfs.tmpfs_options.unwrap().size_bytes, Some(64 << 20));
        let resources = task.resources.unwrap();
        let limits = resources.limits.unwrap();
        assert_eq!(limits.memory_bytes, Some(512 << 20));
        assert_eq!(limits.nano_cpus, Some(1_500_000_000));
        assert_eq!(
            resources.reservations.unwrap().memory_bytes,
            Some(256 << 20)
        );
        assert_eq!(task.log_driver.unwrap().name.as_deref(), Some("json-file"));
        assert_eq!(task.networks.unwrap()[0].target.as_deref(), Some("db"));
    }

    #[test]
    fn a_container_the_engine_could_not_start_is_told_from_an_app_that_exited() {
        let failed = |err: &str| Task {
            status: Some(bollard::models::TaskStatus {
                state: Some(TaskState::FAILED),
                err: Some(err.into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(never_started(&failed(
            "starting container failed: unable to remount dir as readonly: device or resource busy"
        )));
        assert!(!never_started(&failed("task: non-zero exit (3)")));
        assert!(!never_started(&Task::default()));
    }

    #[test]
    fn a_release_is_a_one_task_job_never_taken_for_a_replica() {
        let mut options = crate::domain::replica::ContainerOptions::default();
        options.labels.insert("team".into(), "web".into());
        options.user = Some("1000".into());
        let task = crate::runtime::TaskSpec {
            service: "web".into(),
            name: "web-release".into(),
            image: "sha256:abc".into(),
            reference: "registry.example/web@sha256:def".into(),
            deployment: 9,
            env: vec!["A=1".into(), "GREENLIGHT_RELEASE_DIGEST=sha256:def".into()],
            command: vec!["/app".into(), "migrate".into()],
            volumes: vec!["/srv/data:/data".into()],
            network: "greenlight".into(),
            options,
        };
        let config = SwarmConfig {
            constraints: vec!["node.role == manager".into()],
            ..Default::default()
        };
        let s = job_spec(&task, &config);
        assert_eq!(s.name.as_deref(), Some("web-release"));
        let labels = s.labels.unwrap();
        assert_eq!(labels[LABEL_TASK], "web");
        assert_eq!(labels[LABEL_DEPLOYMENT], "9");
        assert_eq!(labels["team"], "web");
        // Not a replica: nothing lists it as one of the service's colours.
        assert!(!labels.contains_key(LABEL_SERVICE));
        let job = s.mode.unwrap().replicated_job.unwrap();
        assert_eq!(
            (job.max_concurrent, job.total_completions),
            (Some(1), Some(1))
        );
        assert!(s.endpoint_spec.is_none() && s.update_config.is_none());
        let t = s.task_template.unwrap();
        assert_eq!(
            t.restart_policy.unwrap().condition,
            Some(TaskSpecRestartPolicyConditionEnum::NONE)
        );
        assert_eq!(
            t.placement.unwrap().constraints.unwrap(),
            ["node.role == manager"]
        );
        let c = t.container_spec.unwrap();
        assert_eq!(c.image.as_deref(), Some("registry.example/web@sha256:def"));
        assert_eq!(c.args.unwrap(), ["/app", "migrate"]);
        assert_eq!(c.env.unwrap(), task.env);
        assert_eq!(c.user.as_deref(), Some("1000"));
        assert!(!c.labels.unwrap().contains_key(LABEL_SERVICE));
        assert_eq!(c.mounts.unwrap()[0].target.as_deref(), Some("/data"));
    }

    #[test]
    fn a_colour_is_one_labelled_service_publishing_in_host_mode() {
        let config = SwarmConfig {
            constraints: vec!["node.role == worker".into()],
            ..Default::default()
        };
        let s = service_spec(&spec(), 3, &config);
        assert_eq!(s.name.as_deref(), Some("web-green"));
        let labels = s.labels.clone().unwrap();
        assert_eq!(labels[LABEL_SERVICE], "web");
        assert_eq!(labels[LABEL_COLOUR], "green");
        assert_eq!(labels[LABEL_DEPLOYMENT], "7");
        assert_eq!(labels[LABEL_DIGEST], "sha256:def");
        assert!(!labels.contains_key(LABEL_SLOT));
        assert_eq!(
            s.mode.unwrap().replicated.unwrap().replicas,
            Some(3),
            "N replicas"
        );
        let task = s.task_template.unwrap();
        let c = task.container_spec.unwrap();
        // Pinned: every node finds the same image.
        assert_eq!(c.image.as_deref(), Some("registry.example/web@sha256:def"));
        assert_eq!(c.args, Some(vec!["serve".to_string()]));
        assert_eq!(c.stop_grace_period, Some(5_000_000_000));
        let env = c.env.unwrap();
        assert!(env.contains(&"A=1".to_string()));
        assert!(env.contains(&"GREENLIGHT_REPLICA=web-green-{{.Task.Slot}}".to_string()));
        assert_eq!(
            env.iter()
                .filter(|e| e.starts_with("GREENLIGHT_REPLICA="))
                .count(),
            1
        );
        let mounts = c.mounts.unwrap();
        assert_eq!(mounts[0].typ, Some(MountType::BIND));
        assert_eq!(mounts[0].read_only, Some(true));
        assert_eq!(mounts[1].typ, Some(MountType::VOLUME));
        assert_eq!(mounts[1].source.as_deref(), Some("cache"));
        assert_eq!(
            task.restart_policy.unwrap().condition,
            Some(TaskSpecRestartPolicyConditionEnum::ANY)
        );
        assert_eq!(
            task.placement.unwrap().constraints.unwrap(),
            ["node.role == worker"]
        );
        let port = &s.endpoint_spec.unwrap().ports.unwrap()[0];
        assert_eq!(port.target_port, Some(8080));
        assert_eq!(port.published_port, None, "a free port of each task's node");
        assert_eq!(
            port.publish_mode,
            Some(EndpointPortConfigPublishModeEnum::HOST),
            "never the routing mesh"
        );
    }
}
