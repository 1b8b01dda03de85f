//! The container runtime, through the Docker Engine API (bollard). greenlight never
//! shells out to the `docker` CLI.

use std::collections::HashMap;
use std::time::Duration;

use bollard::auth::DockerCredentials;
use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::models::{
    ContainerCreateBody, ContainerUpdateBody, HealthConfig, HostConfig, HostConfigLogConfig,
    NetworkConnectRequest, NetworkCreateRequest, ResourcesUlimits, RestartPolicy,
    RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, InspectContainerOptions, ListContainersOptions,
    ListImagesOptions, ListNetworksOptions, LogsOptions, RemoveContainerOptions,
    RemoveImageOptions, StartContainerOptions, StopContainerOptions, TopOptions,
};
use bollard::Docker;
use futures_util::StreamExt;

use crate::domain::replica::{ContainerOptions, RestartPolicy as Restart};

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("cannot reach the Docker engine at {at}: {source}")]
    Connect {
        at: String,
        source: bollard::errors::Error,
    },
    #[error("{}", describe_api(.0))]
    Api(#[from] bollard::errors::Error),
    #[error("pulling {image}: {message}")]
    Pull { image: String, message: String },
    #[error("{0}")]
    Other(String),
}

pub type Result<T> = std::result::Result<T, DockerError>;

impl DockerError {
    /// The engine refused because something of that name exists.
    pub fn is_conflict(&self) -> bool {
        matches!(
            self,
            DockerError::Api(bollard::errors::Error::DockerResponseServerError {
                status_code: 409,
                ..
            })
        )
    }
}

fn describe_api(e: &bollard::errors::Error) -> String {
    match e {
        bollard::errors::Error::RequestTimeoutError => {
            "the Docker engine did not answer within [docker] timeout".into()
        }
        other => other.to_string(),
    }
}

#[derive(Clone)]
pub struct Engine {
    docker: Docker,
    /// Serialises network creation: Docker does not, and concurrent creates of
    /// one name make duplicates that no container can then join by name.
    networks: std::sync::Arc<tokio::sync::Mutex<()>>,
}

/// What a new container is made of.
#[derive(Debug, Clone)]
pub struct ContainerPlan {
    pub name: String,
    pub image: String,
    pub labels: HashMap<String, String>,
    pub env: Vec<String>,
    pub command: Option<Vec<String>>,
    pub binds: Vec<String>,
    pub network: String,
    pub restart: Restart,
    /// The service's container options (extra networks are joined before the start).
    pub options: ContainerOptions,
}

#[derive(Debug, Clone)]
pub struct ImageInfo {
    pub id: String,
    pub created: Option<String>,
    pub has_healthcheck: bool,
}

#[derive(Debug, Clone)]
pub struct ContainerStatus {
    pub id: String,
    pub running: bool,
    pub restarting: bool,
    pub status: String,
    pub exit_code: Option<i64>,
    pub restart_count: i64,
    /// Docker HEALTHCHECK status (`starting`, `healthy`, `unhealthy`) when the image has one.
    pub health: Option<String>,
    /// IP addresses by network name.
    pub ips: HashMap<String, String>,
    pub labels: HashMap<String, String>,
}

#[derive(Debug, Clone)]
pub struct ManagedContainer {
    pub id: String,
    pub name: String,
    pub state: String,
    pub labels: HashMap<String, String>,
    pub image_id: String,
    /// IP addresses by network name.
    pub ips: HashMap<String, String>,
}

impl ManagedContainer {
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.get(key).map(String::as_str)
    }
}

#[derive(Debug, Clone)]
pub struct ImageSummary {
    pub id: String,
    pub repo_tags: Vec<String>,
    pub repo_digests: Vec<String>,
    pub created: i64,
}

/// A replaced HEALTHCHECK as the Engine API takes it (containers and Swarm
/// services alike).
pub fn health_config(h: &crate::domain::replica::Healthcheck) -> HealthConfig {
    let nanos = |d: Option<Duration>| d.map(|d| d.as_nanos() as i64);
    HealthConfig {
        test: (!h.test.is_empty()).then(|| h.test.clone()),
        interval: nanos(h.interval),
        timeout: nanos(h.timeout),
        retries: h.retries.map(i64::from),
        start_period: nanos(h.start_period),
        start_interval: None,
    }
}

/// `(name, soft, hard)` ulimits as the Engine API takes them (containers and
/// Swarm services alike); `None` for none.
pub fn ulimits(limits: &[(String, i64, i64)]) -> Option<Vec<ResourcesUlimits>> {
    (!limits.is_empty()).then(|| {
        limits
            .iter()
            .map(|(name, soft, hard)| ResourcesUlimits {
                name: Some(name.clone()),
                soft: Some(*soft),
                hard: Some(*hard),
            })
            .collect()
    })
}

/// The engine's create-container body of a plan: every container option is
/// mapped here and nowhere else.
fn create_body(plan: &ContainerPlan) -> ContainerCreateBody {
    let o = &plan.options;
    let mut labels = plan.labels.clone();
    for (k, v) in &o.labels {
        labels.entry(k.clone()).or_insert_with(|| v.clone());
    }
    let some_vec = |v: &Vec<String>| (!v.is_empty()).then(|| v.clone());
    ContainerCreateBody {
        image: Some(plan.image.clone()),
        env: Some(plan.env.clone()),
        cmd: plan.command.clone(),
        labels: Some(labels),
        user: o.user.clone(),
        stop_signal: o.stop_signal.clone(),
        healthcheck: o.healthcheck.as_ref().map(health_config),
        host_config: Some(HostConfig {
            binds: some_vec(&plan.binds),
            network_mode: Some(plan.network.clone()),
            restart_policy: Some(RestartPolicy {
                name: Some(restart_policy(plan.restart)),
                maximum_retry_count: None,
            }),
            memory: o.memory.map(|m| m as i64),
            memory_reservation: o.memory_reservation.map(|m| m as i64),
            nano_cpus: o.nano_cpus,
            readonly_rootfs: o.read_only.then_some(true),
            tmpfs: (!o.tmpfs.is_empty()).then(|| {
                o.tmpfs
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            }),
            cap_drop: some_vec(&o.cap_drop),
            cap_add: some_vec(&o.cap_add),
            extra_hosts: some_vec(&o.extra_hosts),
            init: o.init,
            shm_size: o.shm_size.map(|s| s as i64),
            ulimits: ulimits(&o.ulimits),
            security_opt: some_vec(&o.security_opt),
            log_config: o
                .logging
                .as_ref()
                .map(|(driver, options)| HostConfigLogConfig {
                    typ: Some(driver.clone()),
                    config: Some(
                        options
                            .iter()
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect(),
                    ),
                }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn restart_policy(policy: Restart) -> RestartPolicyNameEnum {
    match policy {
        Restart::Always => RestartPolicyNameEnum::ALWAYS,
        Restart::OnFailure => RestartPolicyNameEnum::ON_FAILURE,
        Restart::No => RestartPolicyNameEnum::NO,
        Restart::UnlessStopped => RestartPolicyNameEnum::UNLESS_STOPPED,
    }
}

/// Each network's IP address of a container (networks without one left out).
fn ips(networks: HashMap<String, bollard::models::EndpointSettings>) -> HashMap<String, String> {
    networks
        .into_iter()
        .filter_map(|(name, ep)| {
            ep.ip_address
                .filter(|ip| !ip.is_empty())
                .map(|ip| (name, ip))
        })
        .collect()
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

impl Engine {
    /// Connects to `socket` (a path, `unix://`, `tcp://` or `http://` address), else
    /// `DOCKER_HOST`, else the default socket, and negotiates the API version.
    pub async fn connect(cfg: &crate::config::DockerConfig) -> Result<Engine> {
        let socket = cfg.socket.as_deref();
        let timeout = cfg.timeout.as_secs().max(1);
        let at = socket
            .map(str::to_string)
            .or_else(|| std::env::var("DOCKER_HOST").ok())
            .unwrap_or_else(|| "unix:///var/run/docker.sock".into());
        let err = |source| DockerError::Connect {
            at: at.clone(),
            source,
        };
        let docker = match socket {
            None => Docker::connect_with_defaults().map(|d| d.with_timeout(cfg.timeout)),
            Some(s) if s.starts_with("tcp://") || s.starts_with("http://") => {
                Docker::connect_with_http(s, timeout, bollard::API_DEFAULT_VERSION)
            }
            Some(s) => Docker::connect_with_unix(
                s.trim_start_matches("unix://"),
                timeout,
                bollard::API_DEFAULT_VERSION,
            ),
        }
        .map_err(err)?;
        let docker = docker.negotiate_version().await.map_err(err)?;
        docker.ping().await.map_err(err)?;
        Ok(Engine {
            docker,
            networks: Default::default(),
        })
    }

    /// The bollard client itself, for the Swarm runtime (services, tasks and
    /// nodes: calls nothing else shares).
    pub fn api(&self) -> &Docker {
        &self.docker
    }

    pub async fn version(&self) -> Result<String> {
        let v = self.docker.version().await?;
        Ok(format!(
            "Docker {} (API {})",
            v.version.unwrap_or_default(),
            v.api_version.unwrap_or_default()
        ))
    }

    /// Pulls `image` (a `repo@sha256:...` reference). The engine reports failures
    /// inside a 200 stream, so every item is checked.
    pub async fn pull(&self, image: &str, credentials: Option<DockerCredentials>) -> Result<()> {
        let opts = CreateImageOptions {
            from_image: Some(image.to_string()),
            ..Default::default()
        };
        let mut stream = self.docker.create_image(Some(opts), None, credentials);
        while let Some(item) = stream.next().await {
            match item {
                Ok(info) => {
                    if let Some(message) = info.error_detail.and_then(|d| d.message) {
                        return Err(DockerError::Pull {
                            image: image.into(),
                            message,
                        });
                    }
                }
                Err(e) => {
                    let message = match e {
                        bollard::errors::Error::DockerResponseServerError { message, .. } => {
                            message
                        }
                        bollard::errors::Error::DockerStreamError { error } => error,
                        other => other.to_string(),
                    };
                    return Err(DockerError::Pull {
                        image: image.into(),
                        message,
                    });
                }
            }
        }
        Ok(())
    }

    pub async fn inspect_image(&self, image: &str) -> Result<Option<ImageInfo>> {
        match self.docker.inspect_image(image).await {
            Ok(i) => {
                let has_healthcheck = i
                    .config
                    .and_then(|c| c.healthcheck)
                    .and_then(|h| h.test)
                    .is_some_and(|t| !t.is_empty() && t[0] != "NONE");
                Ok(Some(ImageInfo {
                    id: i.id.unwrap_or_default(),
                    created: i.created,
                    has_healthcheck,
                }))
            }
            Err(e) if not_found(&e) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Makes sure exactly one network is called `name`: creates it if missing,
    /// and removes unused duplicates (made by concurrent creates, ours or
    /// another tool's), which would make every container create fail.
    pub async fn ensure_network(&self, name: &str) -> Result<()> {
        let _one_at_a_time = self.networks.lock().await;
        let filters = HashMap::from([("name".to_string(), vec![name.to_string()])]);
        let mut same: Vec<_> = self
            .docker
            .list_networks(Some(ListNetworksOptions {
                filters: Some(filters),
            }))
            .await?
            .into_iter()
            // The filter matches substrings.
            .filter(|n| n.name.as_deref() == Some(name))
            .collect();
        if same.is_empty() {
            let opts = NetworkCreateRequest {
                name: name.to_string(),
                driver: Some("bridge".into()),
                ..Default::default()
            };
            return match self.docker.create_network(opts).await {
                Ok(_) => Ok(()),
                // Another tool created it meanwhile.
                Err(bollard::errors::Error::DockerResponseServerError {
                    status_code: 409, ..
                }) => Ok(()),
                Err(e) => Err(e.into()),
            };
        }
        // Keep the oldest; remove the others (Docker refuses while one is in use).
        same.sort_by_key(|n| n.created.clone().unwrap_or_default());
        let mut stuck = Vec::new();
        for extra in same.iter().skip(1) {
            let id = extra.id.clone().unwrap_or_default();
            tracing::warn!(network = name, id = %id, "removing a duplicate network");
            if let Err(e) = self.docker.remove_network(&id).await {
                stuck.push(format!("{id} ({e})"));
            }
        }
        if stuck.is_empty() {
            Ok(())
        } else {
            Err(DockerError::Other(format!(
                "several networks are called {name} and these cannot be removed: {}; \
                 remove the unused ones by hand (docker network ls --filter name={name})",
                stuck.join(", ")
            )))
        }
    }

    /// Creates the container of `plan`, joined to its extra networks (not started).
    pub async fn create(&self, plan: &ContainerPlan) -> Result<String> {
        let opts = CreateContainerOptions {
            name: Some(plan.name.clone()),
            ..Default::default()
        };
        let created = self
            .docker
            .create_container(Some(opts), create_body(plan))
            .await?;
        for network in &plan.options.networks {
            let join = NetworkConnectRequest {
                container: created.id.clone(),
                endpoint_config: None,
            };
            if let Err(e) = self.docker.connect_network(network, join).await {
                let _ = self.remove(&created.id).await;
                return Err(DockerError::Other(format!(
                    "joining network {network}: {e}"
                )));
            }
        }
        Ok(created.id)
    }

    /// Changes a container's restart policy.
    pub async fn set_restart_policy(&self, id: &str, policy: Restart) -> Result<()> {
        let opts = ContainerUpdateBody {
            restart_policy: Some(RestartPolicy {
                name: Some(restart_policy(policy)),
                maximum_retry_count: None,
            }),
            ..Default::default()
        };
        self.docker.update_container(id, opts).await?;
        Ok(())
    }

    pub async fn start(&self, id: &str) -> Result<()> {
        self.docker
            .start_container(id, None::<StartContainerOptions>)
            .await?;
        Ok(())
    }

    /// A container's inspection, or `None` if there is no such container.
    async fn inspect(&self, id: &str) -> Result<Option<bollard::models::ContainerInspectResponse>> {
        match self
            .docker
            .inspect_container(id, None::<InspectContainerOptions>)
            .await
        {
            Ok(c) => Ok(Some(c)),
            Err(e) if not_found(&e) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The host PID of a running container's main process (`None`: not
    /// running, or the engine does not say).
    pub async fn pid(&self, id: &str) -> Result<Option<u32>> {
        Ok(self
            .inspect(id)
            .await?
            .and_then(|c| c.state)
            .and_then(|s| s.pid)
            .filter(|p| *p > 0)
            .map(|p| p as u32))
    }

    pub async fn status(&self, id: &str) -> Result<Option<ContainerStatus>> {
        let Some(c) = self.inspect(id).await? else {
            return Ok(None);
        };
        let state = c.state.unwrap_or_default();
        let ips = c
            .network_settings
            .and_then(|n| n.networks)
            .map(ips)
            .unwrap_or_default();
        Ok(Some(ContainerStatus {
            id: c.id.unwrap_or_default(),
            running: state.running.unwrap_or(false),
            restarting: state.restarting.unwrap_or(false),
            status: state.status.map(|s| s.to_string()).unwrap_or_default(),
            exit_code: state.exit_code,
            restart_count: c.restart_count.unwrap_or(0),
            health: state
                .health
                .and_then(|h| h.status)
                .map(|s| s.to_string())
                .filter(|s| !s.is_empty() && s != "none"),
            ips,
            labels: c.config.and_then(|c| c.labels).unwrap_or_default(),
        }))
    }

    /// The last `lines` lines of a container's stdout and stderr.
    pub async fn log_tail(&self, id: &str, lines: usize) -> String {
        let opts = LogsOptions {
            stdout: true,
            stderr: true,
            tail: lines.to_string(),
            ..Default::default()
        };
        let mut out = String::new();
        let mut stream = self.docker.logs(id, Some(opts));
        while let Some(Ok(chunk)) = stream.next().await {
            out.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
            if out.len() > 16 * 1024 {
                break;
            }
        }
        out
    }

    /// SIGTERM, then SIGKILL after `grace`. A container already gone is fine.
    pub async fn stop(&self, id: &str, grace: Duration) -> Result<()> {
        let opts = StopContainerOptions {
            t: Some(grace.as_secs().max(1) as i32),
            ..Default::default()
        };
        match self.docker.stop_container(id, Some(opts)).await {
            Ok(()) => Ok(()),
            Err(e) if not_found(&e) => Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Removes a container (killing it if it runs). A container already gone is fine.
    pub async fn remove(&self, id: &str) -> Result<()> {
        let opts = RemoveContainerOptions {
            force: true,
            v: true,
            ..Default::default()
        };
        match self.docker.remove_container(id, Some(opts)).await {
            Ok(()) => Ok(()),
            Err(e) if not_found(&e) => Ok(()),
            // Removal already in progress.
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 409, ..
            }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Every container labelled `key=value`, running or not.
    pub async fn containers_labelled(
        &self,
        key: &str,
        value: &str,
    ) -> Result<Vec<ManagedContainer>> {
        let mut filters = HashMap::new();
        filters.insert("label".to_string(), vec![format!("{key}={value}")]);
        let opts = ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        };
        Ok(self
            .docker
            .list_containers(Some(opts))
            .await?
            .into_iter()
            .map(|c| ManagedContainer {
                id: c.id.unwrap_or_default(),
                name: c
                    .names
                    .and_then(|n| n.into_iter().next())
                    .unwrap_or_default()
                    .trim_start_matches('/')
                    .to_string(),
                state: c.state.map(|s| s.to_string()).unwrap_or_default(),
                labels: c.labels.unwrap_or_default(),
                image_id: c.image_id.unwrap_or_default(),
                ips: c
                    .network_settings
                    .and_then(|n| n.networks)
                    .map(ips)
                    .unwrap_or_default(),
            })
            .collect())
    }

    pub async fn images(&self) -> Result<Vec<ImageSummary>> {
        let opts = ListImagesOptions {
            all: false,
            ..Default::default()
        };
        Ok(self
            .docker
            .list_images(Some(opts))
            .await?
            .into_iter()
            .map(|i| ImageSummary {
                id: i.id,
                repo_tags: i.repo_tags,
                repo_digests: i.repo_digests,
                created: i.created,
            })
            .collect())
    }

    /// Removes one image reference (`repo:tag` or `repo@digest`); Docker deletes
    /// the image itself with its last reference, and never one a container uses.
    pub async fn remove_image_ref(&self, reference: &str) -> Result<()> {
        let opts = RemoveImageOptions {
            force: false,
            noprune: false,
            ..Default::default()
        };
        match self.docker.remove_image(reference, Some(opts), None).await {
            Ok(_) => Ok(()),
            Err(e) if not_found(&e) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Runs `cmd` in a running container; returns its exit code and combined output.
    pub async fn exec(&self, container: &str, cmd: &[&str]) -> Result<(i64, String)> {
        let opts = CreateExecOptions {
            cmd: Some(cmd.iter().map(|s| s.to_string()).collect()),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            ..Default::default()
        };
        let exec = self.docker.create_exec(container, opts).await?;
        let mut output = String::new();
        if let StartExecResults::Attached {
            output: mut out, ..
        } = self.docker.start_exec(&exec.id, None).await?
        {
            while let Some(chunk) = out.next().await {
                output.push_str(&String::from_utf8_lossy(&chunk?.into_bytes()));
            }
        }
        let inspect = self.docker.inspect_exec(&exec.id).await?;
        Ok((inspect.exit_code.unwrap_or(-1), output))
    }

    /// Processes of a container as (host pid, command line).
    pub async fn processes(&self, container: &str) -> Result<Vec<(u32, String)>> {
        let top = self
            .docker
            .top_processes(container, None::<TopOptions>)
            .await?;
        let titles = top.titles.unwrap_or_default();
        let pid_col = titles.iter().position(|t| t == "PID");
        let cmd_col = titles.iter().position(|t| t == "CMD" || t == "COMMAND");
        let (Some(pid_col), Some(cmd_col)) = (pid_col, cmd_col) else {
            return Err(DockerError::Other(format!(
                "unexpected process listing of {container}: columns {titles:?}"
            )));
        };
        Ok(top
            .processes
            .unwrap_or_default()
            .into_iter()
            .filter_map(|row| {
                let pid = row.get(pid_col)?.parse().ok()?;
                Some((pid, row.get(cmd_col)?.clone()))
            })
            .collect())
    }
}

/// What `greenlight init` reads of a container that may be nginx: how it was
/// started, what it mounts, and where its ports are published.
#[derive(Debug, Clone, Default)]
pub struct ContainerLayout {
    pub name: String,
    pub image: String,
    /// Entrypoint and command, as run.
    pub command: Vec<String>,
    /// Bind mounts as (host source, path in the container, read-write).
    pub binds: Vec<(String, String, bool)>,
    /// Published ports as (container port "8099/tcp", host address, host port).
    pub published: Vec<(String, String, String)>,
    /// The container's addresses on its networks.
    pub ips: Vec<String>,
}

impl Engine {
    /// A handle that has not talked to the engine yet (for nginx on the host,
    /// whose control never calls it).
    pub fn unconnected() -> Option<Engine> {
        Docker::connect_with_defaults().ok().map(|docker| Engine {
            docker,
            networks: Default::default(),
        })
    }

    /// Names of the running containers, optionally only those whose name or
    /// image contains `needle`.
    pub async fn running_containers(&self, needle: &str) -> Result<Vec<String>> {
        let list = self
            .docker
            .list_containers(Some(ListContainersOptions::default()))
            .await?;
        Ok(list
            .into_iter()
            .filter(|c| {
                let image = c.image.as_deref().unwrap_or_default();
                let names = c.names.clone().unwrap_or_default();
                image.contains(needle) || names.iter().any(|n| n.contains(needle))
            })
            .filter_map(|c| c.names.and_then(|n| n.into_iter().next()))
            .map(|n| n.trim_start_matches('/').to_string())
            .collect())
    }

    /// The layout of container `name`, or `None` if there is no such container.
    pub async fn layout(&self, name: &str) -> Result<Option<ContainerLayout>> {
        let Some(c) = self.inspect(name).await? else {
            return Ok(None);
        };
        let config = c.config.unwrap_or_default();
        let mut command = config.entrypoint.unwrap_or_default();
        command.extend(config.cmd.unwrap_or_default());
        let binds = c
            .mounts
            .unwrap_or_default()
            .into_iter()
            .filter(|m| m.typ.as_deref() == Some("bind"))
            .map(|m| {
                (
                    m.source.unwrap_or_default(),
                    m.destination.unwrap_or_default(),
                    m.rw.unwrap_or(false),
                )
            })
            .collect();
        let settings = c.network_settings.unwrap_or_default();
        let published = settings
            .ports
            .unwrap_or_default()
            .into_iter()
            .flat_map(|(port, bindings)| {
                bindings.unwrap_or_default().into_iter().map(move |b| {
                    (
                        port.clone(),
                        b.host_ip.unwrap_or_default(),
                        b.host_port.unwrap_or_default(),
                    )
                })
            })
            .collect();
        Ok(Some(ContainerLayout {
            name: c
                .name
                .unwrap_or_default()
                .trim_start_matches('/')
                .to_string(),
            image: config.image.unwrap_or_default(),
            command,
            binds,
            published,
            ips: settings
                .networks
                .map(|n| ips(n).into_values().collect())
                .unwrap_or_default(),
        }))
    }
}
