//! `greenlight.toml` -> validated, typed configuration.
//!
//! Loading is two passes: `${VAR}` references are expanded inside the file's
//! string values (so a secret never has to live in the file, and arrives exactly
//! as the environment holds it), then the TOML is parsed with unknown keys
//! refused. Every error names the key it is about, so `greenlight check` can print
//! one line an operator can act on.

pub mod container;
pub mod live;
pub mod locate;
pub mod notify;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::domain::plan::Strategy;
use crate::domain::replica::RestartPolicy;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: line {line}: environment variable ${{{var}}} is not set (set it, or remove the reference)")]
    UnsetVar {
        path: PathBuf,
        line: usize,
        var: String,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {key}: {message}")]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    #[serde(default)]
    pub docker: DockerConfig,
    #[serde(default)]
    pub runtime: RuntimeConfig,
    #[serde(default)]
    pub pull: PullConfig,
    pub nginx: NginxConfig,
    #[serde(default, rename = "registry")]
    pub registries: Vec<RegistryConfig>,
    #[serde(default)]
    pub webhooks: WebhooksConfig,
    #[serde(default)]
    pub notify: notify::NotifyConfig,
    #[serde(default, rename = "service")]
    pub services: Vec<ServiceConfig>,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address the HTTP server binds (hooks, admin API, health).
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Bearer token for the admin API.
    pub admin_token: String,
    /// Path of the SQLite state file (relative: from the config file's directory).
    #[serde(default = "default_state")]
    pub state: PathBuf,
    /// Largest request body accepted, in bytes.
    #[serde(default = "default_body_limit")]
    pub body_limit: usize,
    /// How long a delivery's raw body and headers are kept (for redelivery);
    /// older ones keep their row, verdict and deployments, not their body.
    #[serde(default = "default_ledger_retention", deserialize_with = "duration")]
    pub ledger_retention: Duration,
    /// Longest a request body may take to arrive (a webhook's before its
    /// signature can be checked too).
    #[serde(default = "default_body_timeout", deserialize_with = "duration")]
    pub body_timeout: Duration,
    /// Reverse proxies (IP addresses or CIDR ranges) whose `X-Forwarded-For`,
    /// `X-Forwarded-Proto` and `X-Forwarded-Host` are believed; from anyone
    /// else those headers are ignored.
    #[serde(default, deserialize_with = "networks")]
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DockerConfig {
    /// `unix:///var/run/docker.sock`, a path, or `tcp://host:port`. Unset: `DOCKER_HOST`, then the default socket.
    pub socket: Option<String>,
    /// Longest wait for the engine to answer one API call (a pull's progress
    /// stream is bounded by `[pull] timeout` instead).
    #[serde(default = "default_docker_timeout", deserialize_with = "duration")]
    pub timeout: Duration,
}

impl Default for DockerConfig {
    fn default() -> Self {
        DockerConfig {
            socket: None,
            timeout: default_docker_timeout(),
        }
    }
}

/// Which engine runs the replicas: containers of this Docker engine, or the
/// tasks of Docker Swarm services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeKind {
    /// Each replica a container of the engine at `[docker] socket`.
    #[default]
    Docker,
    /// Each colour a Swarm service `<service>-<colour>`, each replica one of
    /// its tasks; the engine at `[docker] socket` must be a Swarm manager.
    Swarm,
}

impl RuntimeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RuntimeKind::Docker => "docker",
            RuntimeKind::Swarm => "swarm",
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// `docker` (default) or `swarm`.
    #[serde(default)]
    pub kind: RuntimeKind,
    /// Settings that apply when `kind = "swarm"`.
    #[serde(default)]
    pub swarm: SwarmConfig,
}

/// Swarm services as greenlight makes them. Tasks publish the service's port
/// in host mode on a random port of their node, and nginx connects to
/// `<node address>:<port>` (never the routing mesh, never an overlay address).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwarmConfig {
    /// Placement constraints of every task, in Swarm's form (`node.role == worker`,
    /// `node.labels.edge == true`).
    #[serde(default)]
    pub constraints: Vec<String>,
    /// Longest a deploy waits for a colour's tasks to run (and, where the image
    /// has a HEALTHCHECK, to be healthy: Swarm runs a task only once it is).
    #[serde(default = "default_swarm_start_timeout", deserialize_with = "duration")]
    pub start_timeout: Duration,
}

impl Default for SwarmConfig {
    fn default() -> Self {
        SwarmConfig {
            constraints: Vec::new(),
            start_timeout: default_swarm_start_timeout(),
        }
    }
}

fn default_swarm_start_timeout() -> Duration {
    Duration::from_secs(60)
}

/// Talking to registries: a registry that is down or answers 5xx is retried with
/// backoff; one that says no (unknown tag, refused credentials) is not.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PullConfig {
    /// Tries of resolving a tag or pulling an image, counting the first.
    #[serde(default = "default_pull_attempts")]
    pub attempts: u32,
    /// Wait after the first failed try; doubled after each next one (with jitter).
    #[serde(default = "default_pull_backoff", deserialize_with = "duration")]
    pub backoff: Duration,
    /// Longest one pull may take before it is cut off as stalled.
    #[serde(default = "default_pull_timeout", deserialize_with = "duration")]
    pub timeout: Duration,
}

impl Default for PullConfig {
    fn default() -> Self {
        PullConfig {
            attempts: default_pull_attempts(),
            backoff: default_pull_backoff(),
            timeout: default_pull_timeout(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NginxMode {
    Host,
    Container,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NginxConfig {
    pub mode: NginxMode,
    /// Directory greenlight renders `<service>.conf` into (as greenlight sees it).
    pub upstreams_dir: PathBuf,
    /// Container mode: name or id of the nginx container.
    pub container: Option<String>,
    /// Host mode: the nginx binary.
    #[serde(default = "default_nginx_binary")]
    pub binary: PathBuf,
    /// The `-c` file (host mode: required; container mode: optional, else the image's default).
    pub config: Option<PathBuf>,
    /// The `-p` prefix, when nginx runs with one.
    pub prefix: Option<PathBuf>,
    /// Base URL of nginx's verify server (see nginx/greenlight-verify.conf).
    #[serde(default = "default_verify_url")]
    pub verify_url: String,
    /// How long to wait after a reload for nginx to route to the new colour.
    #[serde(default = "default_verify_timeout", deserialize_with = "duration")]
    pub verify_timeout: Duration,
    /// Longest wait for old nginx workers to finish their in-flight requests.
    #[serde(default = "default_drain_timeout", deserialize_with = "duration")]
    pub drain_timeout: Duration,
    /// The sites' JSON access log (as greenlight sees it), in the format of
    /// nginx/greenlight-log.conf: a rolling update compares the error rates of
    /// new and old replicas through nginx from it.
    pub access_log: Option<PathBuf>,
}

/// Secrets of the webhook endpoints; an endpoint whose secret is unset refuses all.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhooksConfig {
    /// HMAC secrets of `POST /hooks/github`; several during a rotation.
    #[serde(default)]
    pub github_secrets: Vec<String>,
    /// The token in the path of `POST /hooks/dockerhub/{token}`.
    pub dockerhub_token: Option<String>,
    /// `Authorization: Bearer` token of `POST /hooks/registry`.
    pub registry_token: Option<String>,
    /// Registry host that GitHub package events refer to.
    #[serde(default = "default_github_registry")]
    pub github_registry_host: String,
    /// Registry host that Docker Hub-shaped deliveries refer to.
    #[serde(default = "default_dockerhub_registry")]
    pub dockerhub_registry_host: String,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        WebhooksConfig {
            github_secrets: Vec::new(),
            dockerhub_token: None,
            registry_token: None,
            github_registry_host: default_github_registry(),
            dockerhub_registry_host: default_dockerhub_registry(),
        }
    }
}

/// A service's environment. Values often hold credentials, so Debug shows only
/// the names.
#[derive(Clone, Default, Deserialize)]
#[serde(transparent)]
pub struct EnvVars(pub BTreeMap<String, String>);

impl std::ops::Deref for EnvVars {
    type Target = BTreeMap<String, String>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::fmt::Debug for EnvVars {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.0.keys().map(|k| (k, REDACTED)))
            .finish()
    }
}

/// Shortest admin token, webhook secret or webhook token accepted.
pub const MIN_SECRET: usize = 16;

// Debug never shows a secret: configs may end up in logs and error reports.
const REDACTED: &str = "<redacted>";

fn redacted<T>(secret: &Option<T>) -> Option<&'static str> {
    secret.as_ref().map(|_| REDACTED)
}

impl std::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("listen", &self.listen)
            .field("admin_token", &REDACTED)
            .field("state", &self.state)
            .field("body_limit", &self.body_limit)
            .field("ledger_retention", &self.ledger_retention)
            .field("body_timeout", &self.body_timeout)
            .field("trusted_proxies", &self.trusted_proxies)
            .finish()
    }
}

impl std::fmt::Debug for WebhooksConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhooksConfig")
            .field("github_secrets", &vec![REDACTED; self.github_secrets.len()])
            .field("dockerhub_token", &redacted(&self.dockerhub_token))
            .field("registry_token", &redacted(&self.registry_token))
            .field("github_registry_host", &self.github_registry_host)
            .field("dockerhub_registry_host", &self.dockerhub_registry_host)
            .finish()
    }
}

impl std::fmt::Debug for RegistryConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryConfig")
            .field("host", &self.host)
            .field("username", &self.username)
            .field("password", &redacted(&self.password))
            .field("insecure", &self.insecure)
            .field("ca_file", &self.ca_file)
            .field("token_realms", &self.token_realms)
            .finish()
    }
}

fn default_github_registry() -> String {
    "ghcr.io".into()
}
fn default_dockerhub_registry() -> String {
    "docker.io".into()
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// Registry host as it appears in image references (`ghcr.io`, `docker.io`, `127.0.0.1:5000`).
    pub host: String,
    pub username: Option<String>,
    pub password: Option<String>,
    /// Talk plain HTTP to this registry (default: only for loopback hosts,
    /// `localhost`, 127.0.0.0/8 and `[::1]`, as the Docker daemon does).
    pub insecure: Option<bool>,
    /// PEM file of the CA(s) that signed the registry's certificate, trusted
    /// besides the system's roots (a registry behind a private CA).
    pub ca_file: Option<PathBuf>,
    /// Token services other than the registry's own host that may receive its
    /// credentials, as HTTPS URL prefixes (`https://auth.example.com/`).
    #[serde(default)]
    pub token_realms: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    pub name: String,
    /// Image repository without tag, e.g. `ghcr.io/acme/web`.
    pub image: String,
    /// Pull images from their registry (default). `false`: deploy images built on
    /// this host; a tag is looked up locally and the image ID stands for the digest.
    #[serde(default = "default_true")]
    pub pull: bool,
    /// Tag globs that may be deployed (default: all tags).
    #[serde(default = "default_tags")]
    pub tags: Vec<String>,
    /// Container port the app listens on.
    pub port: u16,
    /// Docker network shared with nginx (created if missing).
    #[serde(default = "default_network")]
    pub network: String,
    #[serde(default)]
    pub env: EnvVars,
    pub env_file: Option<PathBuf>,
    /// Bind mounts / volumes in Docker's `source:target[:mode]` form.
    #[serde(default)]
    pub volumes: Vec<String>,
    /// Overrides the image's CMD.
    pub command: Option<Vec<String>>,
    /// How many replicas serve the service (each `<service>-<colour>-<k>`).
    #[serde(default = "default_replicas")]
    pub replicas: u32,
    /// Docker restart policy of the containers.
    #[serde(default)]
    pub restart: RestartPolicy,
    #[serde(default)]
    pub health: HealthConfig,
    #[serde(default)]
    pub rollout: RolloutConfig,
    /// How a canary deployment steps and judges (`rollout.strategy = "canary"`,
    /// or `greenlight deploy --strategy canary`).
    #[serde(default)]
    pub canary: CanaryConfig,
    /// Per-service notification channels (overrides `[notify]`).
    pub notify: Option<notify::ServiceNotify>,
    /// A one-off command of the new image before any new replica starts.
    pub release: Option<ReleaseConfig>,
    /// Host commands at points of a deployment.
    #[serde(default)]
    pub hooks: HooksConfig,
    // ---- container options (compose's names; see container.rs)
    /// Networks the replicas join besides `network` (e.g. the database's).
    #[serde(default)]
    pub networks: Vec<String>,
    /// Labels of the containers (besides greenlight's own).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Hard memory limit, in bytes.
    #[serde(default, deserialize_with = "container::optional_size")]
    pub memory: Option<u64>,
    /// Soft memory limit, in bytes.
    #[serde(default, deserialize_with = "container::optional_size")]
    pub memory_reservation: Option<u64>,
    pub cpus: Option<f64>,
    pub user: Option<String>,
    #[serde(default)]
    pub read_only: bool,
    /// `path[:options]` tmpfs mounts.
    #[serde(default)]
    pub tmpfs: Vec<String>,
    #[serde(default)]
    pub cap_drop: Vec<String>,
    #[serde(default)]
    pub cap_add: Vec<String>,
    /// `host:address` lines added to the containers' /etc/hosts.
    #[serde(default)]
    pub extra_hosts: Vec<String>,
    pub stop_signal: Option<String>,
    pub init: Option<bool>,
    #[serde(default, deserialize_with = "container::optional_size")]
    pub shm_size: Option<u64>,
    #[serde(default)]
    pub ulimits: BTreeMap<String, container::Ulimit>,
    #[serde(default)]
    pub security_opt: Vec<String>,
    /// Swarm secrets the replicas read as files (`[runtime] kind = "swarm"`).
    #[serde(default)]
    pub secrets: Vec<container::SecretConfig>,
    pub logging: Option<container::LoggingConfig>,
    pub healthcheck: Option<container::HealthcheckConfig>,
}

/// `[service.release]`: run once per deployment, in a one-off container of the
/// new image (the service's env, env file, networks, volumes and options),
/// after the pull and before any new replica starts. Like the service's
/// `command`, it replaces the image's CMD (the ENTRYPOINT stays).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseConfig {
    pub command: Vec<String>,
    /// Longest the command may run; then it is killed and the deployment fails.
    #[serde(default = "default_release_timeout", deserialize_with = "duration")]
    pub timeout: Duration,
}

/// `[service.hooks]`: host commands (argv; `["sh", "-c", "..."]` for a shell),
/// each given the deployment's facts as `GREENLIGHT_*` variables.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HooksConfig {
    /// After the health gate, before nginx routes to the new replicas; a
    /// non-zero exit fails the deployment (nginx unchanged).
    pub pre_switch: Option<Vec<String>>,
    /// After a deployment succeeded; a failure is noted, never undoes it.
    pub post_deploy: Option<Vec<String>>,
    /// After a deployment failed or was rolled back.
    pub on_failure: Option<Vec<String>>,
    /// Longest each hook may run; then its process group is killed.
    #[serde(default = "default_hook_timeout", deserialize_with = "duration")]
    pub timeout: Duration,
}

impl Default for HooksConfig {
    fn default() -> Self {
        HooksConfig {
            pre_switch: None,
            post_deploy: None,
            on_failure: None,
            timeout: default_hook_timeout(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    #[serde(default = "default_health_path")]
    pub path: String,
    #[serde(default = "default_health_status")]
    pub status: u16,
    #[serde(default = "default_interval", deserialize_with = "duration")]
    pub interval: Duration,
    #[serde(default = "default_probe_timeout", deserialize_with = "duration")]
    pub timeout: Duration,
    /// Consecutive successful probes needed.
    #[serde(default = "default_healthy_after")]
    pub healthy_after: u32,
    /// Longest the whole gate may take.
    #[serde(default = "default_deadline", deserialize_with = "duration")]
    pub deadline: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            path: default_health_path(),
            status: default_health_status(),
            interval: default_interval(),
            timeout: default_probe_timeout(),
            healthy_after: default_healthy_after(),
            deadline: default_deadline(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutConfig {
    /// Grace period between SIGTERM and SIGKILL when stopping the old colour.
    #[serde(default = "default_stop_grace", deserialize_with = "duration")]
    pub stop_grace: Duration,
    /// Images of this service kept (the live and the previous one are always kept).
    #[serde(default = "default_keep_images")]
    pub keep_images: usize,
    /// After the switch, keep probing the new colour this long while the old one
    /// still runs; a failure switches back in one reload.
    #[serde(default, deserialize_with = "duration")]
    pub soak: Duration,
    /// Longest a deployment may take to reach the switch; a step still running
    /// then is cut off (the steps from the switch on are each bounded).
    #[serde(default = "default_rollout_deadline", deserialize_with = "duration")]
    pub deadline: Duration,
    /// `blue-green` (all replicas at once) or `rolling` (in batches).
    #[serde(default)]
    pub strategy: Strategy,
    /// Rolling: replicas that may run above `replicas` during the update.
    #[serde(default = "default_max_surge")]
    pub max_surge: u32,
    /// Rolling: replicas that may be out of the routing below `replicas`.
    #[serde(default)]
    pub max_unavailable: u32,
    /// Rolling: how long each batch's new replicas are watched before the next.
    #[serde(default = "default_monitor", deserialize_with = "duration")]
    pub monitor: Duration,
    /// Rolling: what a failed batch does: `rollback` (the old version back on
    /// every replica) or `pause` (hold where it is, and notify).
    #[serde(default)]
    pub failure_action: FailureAction,
    /// How long connections still open to old replicas after the drain
    /// (WebSockets, server-sent events) may take to close before the replicas
    /// stop anyway; the number cut is reported.
    #[serde(default = "default_long_lived_timeout", deserialize_with = "duration")]
    pub long_lived_timeout: Duration,
}

impl Default for RolloutConfig {
    fn default() -> Self {
        RolloutConfig {
            stop_grace: default_stop_grace(),
            keep_images: default_keep_images(),
            soak: Duration::ZERO,
            deadline: default_rollout_deadline(),
            strategy: Strategy::default(),
            max_surge: default_max_surge(),
            max_unavailable: 0,
            monitor: default_monitor(),
            failure_action: FailureAction::default(),
            long_lived_timeout: default_long_lived_timeout(),
        }
    }
}

/// A canary deployment: the steps of users' share it goes through, how long
/// each bakes, and the rules that fail, pass or pause it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanaryConfig {
    /// The canary's share of users at each step, in percent, growing; after
    /// the last it takes everyone.
    #[serde(default = "default_canary_steps")]
    pub steps: Vec<u32>,
    /// How long each step is watched before it can pass.
    #[serde(default = "default_bake", deserialize_with = "duration")]
    pub bake: Duration,
    /// Requests the canary must have answered in a step before it can pass.
    #[serde(default = "default_min_requests")]
    pub min_requests: u64,
    /// How often canary and stable are compared (each over the step so far).
    #[serde(default = "default_canary_interval", deserialize_with = "duration")]
    pub interval: Duration,
    /// Consecutive failed checks that abort the canary.
    #[serde(default = "default_failed_checks")]
    pub failed_checks: u32,
    /// How much higher (absolute, 0.01 = one percentage point) the canary's
    /// error rate must be than stable's before the test is asked.
    #[serde(default = "default_error_margin")]
    pub error_margin: f64,
    /// Significance of the one-sided Fisher exact test on the error counts.
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// Fewest canary errors that can fail a check (a single error proves nothing).
    #[serde(default = "default_min_errors")]
    pub min_errors: u64,
    /// Latency: a check fails when the canary's p95 exceeds both
    /// `latency_ratio` x stable's p95 and stable's p95 + `latency_slack`.
    #[serde(default = "default_latency_ratio")]
    pub latency_ratio: f64,
    #[serde(default = "default_latency_slack", deserialize_with = "duration")]
    pub latency_slack: Duration,
    /// Latency: a check fails when the canary's p99 exceeds this, whatever stable does.
    #[serde(default = "default_p99_limit", deserialize_with = "duration")]
    pub p99_limit: Duration,
    /// Flagrant failure, aborting at once: at least `flagrant_errors` canary
    /// errors that are at least `flagrant_rate` of its requests within
    /// `flagrant_window`.
    #[serde(default = "default_flagrant_errors")]
    pub flagrant_errors: u64,
    #[serde(default = "default_flagrant_rate")]
    pub flagrant_rate: f64,
    #[serde(default = "default_flagrant_window", deserialize_with = "duration")]
    pub flagrant_window: Duration,
    /// How long a step's bake may be extended while the canary has too few
    /// requests; then `inconclusive` decides.
    #[serde(default = "default_bake", deserialize_with = "duration")]
    pub max_extension: Duration,
    /// What a step that stays inconclusive does: `pause` (hold the split and
    /// wait for `greenlight canary promote|abort`), `promote` or `abort`.
    #[serde(default)]
    pub inconclusive: Inconclusive,
    /// A cookie whose value `always` or `never` sends its user to the canary
    /// or to stable, whatever the split says.
    #[serde(default = "default_override_cookie")]
    pub override_cookie: String,
    /// Optional allowlist: requests carrying this cookie (any value) go to the canary.
    pub allow_cookie: Option<String>,
    /// Optional allowlist: requests carrying this header (any value) go to the canary.
    pub allow_header: Option<String>,
}

impl Default for CanaryConfig {
    fn default() -> Self {
        CanaryConfig {
            steps: default_canary_steps(),
            bake: default_bake(),
            min_requests: default_min_requests(),
            interval: default_canary_interval(),
            failed_checks: default_failed_checks(),
            error_margin: default_error_margin(),
            alpha: default_alpha(),
            min_errors: default_min_errors(),
            latency_ratio: default_latency_ratio(),
            latency_slack: default_latency_slack(),
            p99_limit: default_p99_limit(),
            flagrant_errors: default_flagrant_errors(),
            flagrant_rate: default_flagrant_rate(),
            flagrant_window: default_flagrant_window(),
            max_extension: default_bake(),
            inconclusive: Inconclusive::default(),
            override_cookie: default_override_cookie(),
            allow_cookie: None,
            allow_header: None,
        }
    }
}

/// What a canary step with too little traffic to judge does in the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Inconclusive {
    /// Hold the split as it is, notify, and wait for an operator.
    #[default]
    Pause,
    Promote,
    Abort,
}

impl Inconclusive {
    pub fn as_str(self) -> &'static str {
        match self {
            Inconclusive::Pause => "pause",
            Inconclusive::Promote => "promote",
            Inconclusive::Abort => "abort",
        }
    }
}

fn default_canary_steps() -> Vec<u32> {
    vec![5, 25, 50]
}
fn default_bake() -> Duration {
    Duration::from_secs(300)
}
fn default_min_requests() -> u64 {
    200
}
fn default_canary_interval() -> Duration {
    Duration::from_secs(30)
}
fn default_failed_checks() -> u32 {
    3
}
fn default_error_margin() -> f64 {
    0.01
}
fn default_alpha() -> f64 {
    0.01
}
fn default_min_errors() -> u64 {
    5
}
fn default_latency_ratio() -> f64 {
    1.2
}
fn default_latency_slack() -> Duration {
    Duration::from_millis(25)
}
fn default_p99_limit() -> Duration {
    Duration::from_secs(2)
}
fn default_flagrant_errors() -> u64 {
    10
}
fn default_flagrant_rate() -> f64 {
    0.10
}
fn default_flagrant_window() -> Duration {
    Duration::from_secs(60)
}
fn default_override_cookie() -> String {
    "greenlight_canary".into()
}

/// A cookie name nginx can read as `$cookie_<name>`.
fn cookie_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// A header name nginx can read as `$http_<name>`.
fn header_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

impl CanaryConfig {
    /// Checks the canary settings; `Err((key under canary., message))`.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.steps.is_empty() {
            return Err(("steps", "needs at least one step, e.g. [5, 25, 50]".into()));
        }
        if self.steps.iter().any(|p| !(1..=99).contains(p)) {
            return Err((
                "steps",
                format!(
                    "{:?}: each step is a share of users from 1 to 99 (percent); after the last step the canary takes everyone",
                    self.steps
                ),
            ));
        }
        if self.steps.windows(2).any(|w| w[0] >= w[1]) {
            return Err((
                "steps",
                format!(
                    "{:?} must grow from step to step (a user moved to the canary stays there)",
                    self.steps
                ),
            ));
        }
        if self.interval.is_zero() || self.interval > self.bake {
            return Err((
                "interval",
                format!(
                    "{} must be more than 0 and at most bake ({})",
                    crate::display::span(self.interval),
                    crate::display::span(self.bake)
                ),
            ));
        }
        if self.failed_checks == 0 {
            return Err(("failed_checks", "must be at least 1".into()));
        }
        if !(0.0..1.0).contains(&self.error_margin) {
            return Err((
                "error_margin",
                format!(
                    "{} must be from 0 to below 1 (0.01 = one percentage point)",
                    self.error_margin
                ),
            ));
        }
        if !(self.alpha > 0.0 && self.alpha <= 0.2) {
            return Err((
                "alpha",
                format!(
                    "{} must be above 0 and at most 0.2 (the chance a check fails a canary no worse than stable; 0.01 is usual)",
                    self.alpha
                ),
            ));
        }
        if self.min_errors == 0 {
            return Err(("min_errors", "must be at least 1".into()));
        }
        if self.latency_ratio.is_nan() || self.latency_ratio < 1.0 {
            return Err((
                "latency_ratio",
                format!(
                    "{} must be at least 1 (1.2 = 20% slower)",
                    self.latency_ratio
                ),
            ));
        }
        if self.p99_limit.is_zero() {
            return Err(("p99_limit", "must be more than 0".into()));
        }
        if !(self.flagrant_rate > 0.0 && self.flagrant_rate <= 1.0) {
            return Err((
                "flagrant_rate",
                format!("{} must be above 0 and at most 1", self.flagrant_rate),
            ));
        }
        if self.flagrant_errors == 0 {
            return Err(("flagrant_errors", "must be at least 1".into()));
        }
        if self.flagrant_window.is_zero() {
            return Err(("flagrant_window", "must be more than 0".into()));
        }
        if self.min_requests == 0 {
            return Err((
                "min_requests",
                "must be at least 1: a step the canary served no request in proves nothing".into(),
            ));
        }
        for (key, name) in [
            ("override_cookie", Some(&self.override_cookie)),
            ("allow_cookie", self.allow_cookie.as_ref()),
        ] {
            if let Some(name) = name {
                if !cookie_name(name) {
                    return Err((
                        key,
                        format!("{name:?} must be 1 to 64 letters, digits or '_' (nginx reads it as $cookie_<name>)"),
                    ));
                }
            }
        }
        if let Some(name) = &self.allow_header {
            if !header_name(name) {
                return Err((
                    "allow_header",
                    format!("{name:?} must be 1 to 64 letters, digits or '-'"),
                ));
            }
        }
        Ok(())
    }
}

/// What a rolling update does when a batch fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum FailureAction {
    /// Put back the old version on every replica already replaced.
    #[default]
    Rollback,
    /// Hold: the replicas already replaced keep serving beside the old ones.
    Pause,
}

fn default_true() -> bool {
    true
}
fn default_listen() -> String {
    "127.0.0.1:8787".into()
}
fn default_state() -> PathBuf {
    "greenlight.db".into()
}
fn default_ledger_retention() -> Duration {
    Duration::from_secs(30 * 24 * 3600)
}
fn default_body_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_body_limit() -> usize {
    1024 * 1024
}
fn default_nginx_binary() -> PathBuf {
    "nginx".into()
}
fn default_verify_url() -> String {
    "http://127.0.0.1:8099".into()
}
fn default_verify_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_drain_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_tags() -> Vec<String> {
    vec!["*".into()]
}
fn default_network() -> String {
    "greenlight".into()
}
fn default_replicas() -> u32 {
    1
}
fn default_max_surge() -> u32 {
    1
}
fn default_monitor() -> Duration {
    Duration::from_secs(30)
}
fn default_health_path() -> String {
    "/healthz".into()
}
fn default_health_status() -> u16 {
    200
}
fn default_interval() -> Duration {
    Duration::from_millis(500)
}
fn default_probe_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_healthy_after() -> u32 {
    3
}
fn default_deadline() -> Duration {
    Duration::from_secs(60)
}
fn default_stop_grace() -> Duration {
    Duration::from_secs(10)
}
fn default_keep_images() -> usize {
    3
}
fn default_rollout_deadline() -> Duration {
    Duration::from_secs(15 * 60)
}
fn default_long_lived_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_release_timeout() -> Duration {
    Duration::from_secs(10 * 60)
}
fn default_hook_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_docker_timeout() -> Duration {
    Duration::from_secs(120)
}
fn default_pull_attempts() -> u32 {
    5
}
fn default_pull_backoff() -> Duration {
    Duration::from_secs(1)
}
fn default_pull_timeout() -> Duration {
    Duration::from_secs(10 * 60)
}

fn networks<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<ipnet::IpNet>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|text| {
            text.parse::<ipnet::IpNet>()
                .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| {
                    serde::de::Error::custom(format!(
                        "{text:?} is not an IP address or a CIDR range like \"10.0.0.0/8\""
                    ))
                })
        })
        .collect()
}

pub(crate) fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(text.trim()).map_err(|e| {
        serde::de::Error::custom(format!(
            "bad duration {text:?} ({e}); write e.g. \"500ms\", \"30s\", \"2m\""
        ))
    })
}

/// Expands `${VAR}` (and `$$`, a literal `$`) inside one string value.
pub fn expand_env(text: &str, lookup: &impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some((var, tail)) = after
            .strip_prefix('{')
            .and_then(|body| body.split_once('}'))
        {
            out.push_str(&lookup(var).ok_or_else(|| var.to_string())?);
            rest = tail;
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// The file with `${VAR}` expanded inside its string values only: a secret
/// holding `"`, `\n` or `#` arrives exactly as the environment holds it, and a
/// reference in a comment or a key is left alone. A file that is not TOML is
/// returned as it is, for the parser to report.
fn expand_strings(
    path: &Path,
    raw: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, ConfigError> {
    if !raw.contains('$') {
        return Ok(raw.to_string());
    }
    let Ok(mut doc) = raw.parse::<toml_edit::DocumentMut>() else {
        return Ok(raw.to_string());
    };
    let mut unset = None;
    walk_strings(doc.as_item_mut(), &mut |v| {
        let Some(text) = v.as_str().filter(|t| t.contains('$')) else {
            return;
        };
        match expand_env(text, &lookup) {
            Ok(expanded) => {
                let decor = v.decor().clone();
                *v = expanded.into();
                *v.decor_mut() = decor;
            }
            Err(var) => {
                unset.get_or_insert(var);
            }
        }
    });
    if let Some(var) = unset {
        let needle = format!("${{{var}}}");
        let line = raw
            .lines()
            .position(|l| !l.trim_start().starts_with('#') && l.contains(&needle))
            .map_or(0, |n| n + 1);
        return Err(ConfigError::UnsetVar {
            path: path.to_path_buf(),
            line,
            var,
        });
    }
    Ok(doc.to_string())
}

/// Calls `f` on every value (strings in arrays and inline tables too).
fn walk_strings(item: &mut toml_edit::Item, f: &mut impl FnMut(&mut toml_edit::Value)) {
    fn value(v: &mut toml_edit::Value, f: &mut impl FnMut(&mut toml_edit::Value)) {
        match v {
            toml_edit::Value::Array(a) => a.iter_mut().for_each(|v| value(v, f)),
            toml_edit::Value::InlineTable(t) => t.iter_mut().for_each(|(_, v)| value(v, f)),
            other => f(other),
        }
    }
    match item {
        toml_edit::Item::Value(v) => value(v, f),
        toml_edit::Item::Table(t) => t.iter_mut().for_each(|(_, i)| walk_strings(i, f)),
        toml_edit::Item::ArrayOfTables(a) => a
            .iter_mut()
            .for_each(|t| t.iter_mut().for_each(|(_, i)| walk_strings(i, f))),
        toml_edit::Item::None => {}
    }
}

/// A TOML or type error as the operator reads it: the line, the key, the words.
fn parse_error(path: &Path, text: &str, key: &str, e: toml::de::Error) -> ConfigError {
    let message = e.message().trim();
    let at = e
        .span()
        .map(|s| format!("line {}: ", line_of(text, s.start)))
        .unwrap_or_default();
    let message = if key.is_empty() || key == "." {
        format!("{at}{message}")
    } else {
        format!("{at}{key}: {message}")
    };
    ConfigError::Parse {
        path: path.to_path_buf(),
        message,
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let raw = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, &raw, |v| std::env::var(v).ok())
    }

    pub fn parse(
        path: &Path,
        raw: &str,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let text = expand_strings(path, raw, lookup)?;
        let de = toml::Deserializer::parse(&text).map_err(|e| parse_error(path, &text, "", e))?;
        let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            parse_error(path, &text, &key, e.into_inner())
        })?;
        let mut config = config;
        config.server.state = locate::relative_to_config(path, &config.server.state);
        config.validate(path)?;
        Ok(config)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let bad = |key: &str, message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            key: key.to_string(),
            message,
        };
        if self.server.admin_token.chars().count() < MIN_SECRET {
            return Err(bad(
                "server.admin_token",
                "must be at least 16 characters (generate one with `openssl rand -hex 32`)".into(),
            ));
        }
        let short = |s: &str| s.chars().count() < MIN_SECRET;
        let secrets = self
            .webhooks
            .github_secrets
            .iter()
            .enumerate()
            .map(|(i, s)| (format!("webhooks.github_secrets[{i}]"), Some(s)))
            .chain([
                (
                    "webhooks.dockerhub_token".to_string(),
                    self.webhooks.dockerhub_token.as_ref(),
                ),
                (
                    "webhooks.registry_token".to_string(),
                    self.webhooks.registry_token.as_ref(),
                ),
            ]);
        for (key, secret) in secrets {
            if secret.is_some_and(|s| short(s)) {
                return Err(bad(
                    &key,
                    format!(
                        "must be at least {MIN_SECRET} characters, like the admin token \
                         (generate one with `openssl rand -hex 32`)"
                    ),
                ));
            }
        }
        if self.server.body_timeout.is_zero() {
            return Err(bad("server.body_timeout", "must be longer than 0s".into()));
        }
        for (i, r) in self.registries.iter().enumerate() {
            if let Some(file) = &r.ca_file {
                crate::tls::read_certificates(file)
                    .map_err(|e| bad(&format!("registry[{i}].ca_file"), e))?;
            }
            for realm in &r.token_realms {
                if !realm.starts_with("https://") || reqwest::Url::parse(realm).is_err() {
                    return Err(bad(
                        &format!("registry[{i}].token_realms"),
                        format!("{realm:?} must be an https:// URL (credentials never go over plain HTTP)"),
                    ));
                }
            }
        }
        if self.server.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(bad(
                "server.listen",
                format!(
                    "{:?} is not an address like \"127.0.0.1:8787\"",
                    self.server.listen
                ),
            ));
        }
        match self.nginx.mode {
            NginxMode::Container if self.nginx.container.is_none() => {
                return Err(bad(
                    "nginx.container",
                    "required when nginx.mode = \"container\" (the nginx container's name)".into(),
                ))
            }
            NginxMode::Host if self.nginx.config.is_none() => {
                return Err(bad(
                    "nginx.config",
                    "required when nginx.mode = \"host\" (the file nginx runs with -c)".into(),
                ))
            }
            _ => {}
        }
        if self.runtime.swarm.start_timeout.is_zero() {
            return Err(bad(
                "runtime.swarm.start_timeout",
                "must be longer than 0s".into(),
            ));
        }
        if self.pull.attempts == 0 {
            return Err(bad(
                "pull.attempts",
                "must be at least 1 (the first try counts)".into(),
            ));
        }
        if self.pull.timeout.is_zero() || self.docker.timeout.is_zero() {
            let key = if self.pull.timeout.is_zero() {
                "pull.timeout"
            } else {
                "docker.timeout"
            };
            return Err(bad(key, "must be longer than 0s".into()));
        }
        if reqwest::Url::parse(&self.nginx.verify_url).is_err() {
            return Err(bad(
                "nginx.verify_url",
                format!("{:?} is not a URL", self.nginx.verify_url),
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, s) in self.services.iter().enumerate() {
            let key = |k: &str| format!("service[{i}].{k}");
            if !valid_name(&s.name) {
                return Err(bad(
                    &key("name"),
                    format!(
                        "{:?} must be 1-40 characters of a-z, 0-9, '-' or '_', starting with a letter",
                        s.name
                    ),
                ));
            }
            if !seen.insert(s.name.clone()) {
                return Err(bad(
                    &key("name"),
                    format!("service {:?} is defined twice", s.name),
                ));
            }
            let repo = crate::domain::image::Repository::parse(&s.image);
            if !crate::domain::image::valid_host(&repo.host)
                || !crate::domain::image::valid_repository_path(&repo.path.to_ascii_lowercase())
            {
                return Err(bad(
                    &key("image"),
                    format!(
                        "{:?} is not an image repository like \"ghcr.io/acme/web\" (registry host {:?}, path {:?})",
                        s.image, repo.host, repo.path
                    ),
                ));
            }
            if s.image.is_empty() || s.image.contains('@') || last_segment_has_tag(&s.image) {
                return Err(bad(
                    &key("image"),
                    format!(
                        "{:?} must be a repository without tag or digest, e.g. \"ghcr.io/acme/web\"",
                        s.image
                    ),
                ));
            }
            for t in &s.tags {
                if let Err(e) = globset::Glob::new(t) {
                    return Err(bad(&key("tags"), format!("bad glob {t:?}: {e}")));
                }
            }
            if s.port == 0 {
                return Err(bad(&key("port"), "must be a port number 1-65535".into()));
            }
            if !s.health.path.starts_with('/') {
                return Err(bad(&key("health.path"), "must start with '/'".into()));
            }
            if s.health.healthy_after == 0 {
                return Err(bad(
                    &key("health.healthy_after"),
                    "must be at least 1".into(),
                ));
            }
            if s.rollout.deadline < s.health.deadline {
                return Err(bad(
                    &key("rollout.deadline"),
                    format!(
                        "{:?} is shorter than health.deadline {:?}: the health gate alone may take that long",
                        s.rollout.deadline, s.health.deadline
                    ),
                ));
            }
            // A stop is one Docker call that waits out the grace period; the
            // engine's answer must come within [docker] timeout.
            if s.rollout.stop_grace + Duration::from_secs(1) > self.docker.timeout {
                return Err(bad(
                    &key("rollout.stop_grace"),
                    format!(
                        "{} leaves no room within [docker] timeout {} (a stop waits out the \
                         grace period in one Docker call): keep it at least 1s shorter",
                        crate::display::span(s.rollout.stop_grace),
                        crate::display::span(self.docker.timeout)
                    ),
                ));
            }
            if s.rollout.keep_images < 2 {
                return Err(bad(
                    &key("rollout.keep_images"),
                    "must be at least 2 (the live image and the one a rollback needs)".into(),
                ));
            }
            if s.name.contains("__") {
                return Err(bad(
                    &key("name"),
                    format!(
                        "{:?} must not contain \"__\" (greenlight names its private upstreams <service>__<n>)",
                        s.name
                    ),
                ));
            }
            if !(1..=MAX_REPLICAS).contains(&s.replicas) {
                return Err(bad(
                    &key("replicas"),
                    format!("must be 1 to {MAX_REPLICAS}, got {}", s.replicas),
                ));
            }
            s.canary
                .validate()
                .map_err(|(k, message)| bad(&key(&format!("canary.{k}")), message))?;
            let var = crate::domain::routing::Routing::upstream_variable(&s.name);
            if let Some(other) = self.services[..i]
                .iter()
                .find(|o| crate::domain::routing::Routing::upstream_variable(&o.name) == var)
            {
                return Err(bad(
                    &key("name"),
                    format!(
                        "{:?} and {:?} would share nginx's variable ${var} ('-' reads as '_'): rename one",
                        s.name, other.name
                    ),
                ));
            }
            container::validate(s).map_err(|(k, m)| bad(&key(&k), m))?;
            if let Some(release) = &s.release {
                if release.command.first().is_none_or(|c| c.is_empty()) {
                    return Err(bad(
                        &key("release.command"),
                        "must name a command, like [\"/app\", \"migrate\"]".into(),
                    ));
                }
                if release.timeout.is_zero() {
                    return Err(bad(
                        &key("release.timeout"),
                        "must be longer than 0s".into(),
                    ));
                }
            }
            for (name, argv) in s.hooks.each() {
                if argv.first().is_none_or(|c| c.is_empty()) {
                    return Err(bad(
                        &key(&format!("hooks.{name}")),
                        "must be a command as a list, like [\"/usr/local/bin/smoke\", \"--quick\"] (use [\"sh\", \"-c\", \"...\"] for a shell)".into(),
                    ));
                }
            }
            if s.hooks.timeout.is_zero() {
                return Err(bad(&key("hooks.timeout"), "must be longer than 0s".into()));
            }
            let r = &s.rollout;
            if r.strategy == Strategy::Canary && self.nginx.access_log.is_none() {
                return Err(bad(
                    &key("rollout.strategy"),
                    "a canary is judged from nginx's access log: set [nginx] access_log (the site's log in the format of nginx/greenlight-log.conf)".into(),
                ));
            }
            if self.runtime.kind == RuntimeKind::Docker && !s.secrets.is_empty() {
                let first = s.secrets[0].file();
                return Err(bad(
                    &key("secrets"),
                    format!(
                        "secrets are Swarm secrets (docker secret create), which only Swarm tasks \
                         get: use [runtime] kind = \"swarm\", or on one host mount the file \
                         instead: volumes = [\"/etc/greenlight/secrets/{}:{}:ro\"]",
                        first.source,
                        first.path()
                    ),
                ));
            }
            if self.runtime.kind == RuntimeKind::Swarm {
                for (option, set) in [
                    ("shm_size", s.shm_size.is_some()),
                    ("security_opt", !s.security_opt.is_empty()),
                ] {
                    if set {
                        return Err(bad(
                            &key(option),
                            format!("Swarm services have no {option}: remove it, or use [runtime] kind = \"docker\""),
                        ));
                    }
                }
            }
            if r.strategy == Strategy::Rolling {
                if r.max_surge == 0 && r.max_unavailable == 0 {
                    return Err(bad(
                        &key("rollout.max_surge"),
                        "max_surge and max_unavailable are both 0: a rolling update could never replace a replica (the usual zero-loss choice is max_surge = 1, max_unavailable = 0)".into(),
                    ));
                }
                if r.max_unavailable >= s.replicas {
                    return Err(bad(
                        &key("rollout.max_unavailable"),
                        format!(
                            "{} would let every one of the {} replicas leave the routing at once: make it less than replicas",
                            r.max_unavailable, s.replicas
                        ),
                    ));
                }
                if !r.soak.is_zero() {
                    return Err(bad(
                        &key("rollout.soak"),
                        "the soak is blue-green's; a rolling update watches each batch for rollout.monitor".into(),
                    ));
                }
            }
        }
        notify::validate(self).map_err(|(key, message)| bad(&key, message))?;
        Ok(())
    }

    pub fn service(&self, name: &str) -> Option<&ServiceConfig> {
        self.services.iter().find(|s| s.name == name)
    }

    /// The `[[registry]]` entry for an image's registry host, if configured.
    pub fn registry_for(&self, host: &str) -> Option<&RegistryConfig> {
        self.registries
            .iter()
            .find(|r| r.host.eq_ignore_ascii_case(host))
    }
}

impl HooksConfig {
    /// The hooks that are set, by name.
    pub fn each(&self) -> impl Iterator<Item = (&'static str, &Vec<String>)> {
        [
            ("pre_switch", &self.pre_switch),
            ("post_deploy", &self.post_deploy),
            ("on_failure", &self.on_failure),
        ]
        .into_iter()
        .filter_map(|(n, h)| h.as_ref().map(|h| (n, h)))
    }
}

impl ServiceConfig {
    pub fn tag_allowed(&self, tag: &str) -> bool {
        self.tags.iter().any(|g| {
            globset::Glob::new(g)
                .map(|g| g.compile_matcher().is_match(tag))
                .unwrap_or(false)
        })
    }
}

/// Most replicas of one service.
pub const MAX_REPLICAS: u32 = 64;

/// The service-name grammar (also the verify server's, nginx/greenlight-verify.conf).
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase())
        && name.len() <= 40
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

fn last_segment_has_tag(image: &str) -> bool {
    image.rsplit('/').next().is_some_and(|s| s.contains(':'))
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[server]
listen = "127.0.0.1:8787"
admin_token = "${TOKEN}"
state = "/var/lib/greenlight/state.db"

[nginx]
mode = "host"
upstreams_dir = "/etc/nginx/greenlight"
config = "/etc/nginx/nginx.conf"
drain_timeout = "45s"

[[registry]]
host = "ghcr.io"
username = "bot"
password = "${TOKEN}"

[[service]]
name = "web"
image = "ghcr.io/acme/web"
tags = ["v*", "main"]
port = 8080
[service.health]
interval = "250ms"
"#;

    fn env(v: &str) -> Option<String> {
        (v == "TOKEN").then(|| "0123456789abcdef0123".to_string())
    }

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(Path::new("g.toml"), text, env).map_err(|e| e.to_string())
    }

    #[test]
    fn a_complete_config_parses_with_defaults_filled_in() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.server.admin_token, "0123456789abcdef0123");
        assert_eq!(c.nginx.drain_timeout, Duration::from_secs(45));
        let web = c.service("web").unwrap();
        assert_eq!(web.health.interval, Duration::from_millis(250));
        assert_eq!(web.health.healthy_after, 3);
        assert_eq!(web.rollout.keep_images, 3);
        assert!(web.tag_allowed("v1.2.3"));
        assert!(web.tag_allowed("main"));
        assert!(!web.tag_allowed("feature-x"));
        assert_eq!(
            c.registry_for("GHCR.io").unwrap().username.as_deref(),
            Some("bot")
        );
    }

    #[test]
    fn the_runtime_is_docker_unless_swarm_is_asked_for_where_every_strategy_runs() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.runtime.kind, RuntimeKind::Docker);
        let swarm = GOOD.replace(
            "[[registry]]",
            "[runtime]\nkind = \"swarm\"\n[runtime.swarm]\nconstraints = [\"node.role == worker\"]\nstart_timeout = \"90s\"\n\n[[registry]]",
        );
        let c = parse(&swarm).unwrap();
        assert_eq!(c.runtime.kind, RuntimeKind::Swarm);
        assert_eq!(c.runtime.swarm.constraints, ["node.role == worker"]);
        assert_eq!(c.runtime.swarm.start_timeout, Duration::from_secs(90));
        let logged = swarm.replace(
            "drain_timeout = \"45s\"\n",
            "drain_timeout = \"45s\"\naccess_log = \"/var/log/nginx/access.log\"\n",
        );
        for strategy in ["rolling", "canary", "blue-green"] {
            let c = parse(&format!(
                "{logged}[service.rollout]\nstrategy = \"{strategy}\"\n"
            ))
            .unwrap();
            assert_eq!(c.services[0].rollout.strategy.as_str(), strategy);
        }
        // Swarm secrets: by name, or as a table; checked; refused on docker.
        let with_secrets = |runtime: &str, secrets: &str| {
            parse(&runtime.replace(
                "port = 8080\n",
                &format!("port = 8080\nsecrets = {secrets}\n"),
            ))
        };
        let c = with_secrets(
            &swarm,
            "[\"db_password\", { source = \"api-key\", target = \"/etc/app/key\", uid = \"1000\", mode = 0o400 }]",
        )
        .unwrap();
        let files: Vec<_> = c.services[0].secrets.iter().map(|s| s.file()).collect();
        assert_eq!(files[0].path(), "/run/secrets/db_password");
        assert_eq!((files[0].mode, files[0].uid.as_str()), (0o444, "0"));
        assert_eq!(files[1].path(), "/etc/app/key");
        assert_eq!((files[1].mode, files[1].uid.as_str()), (0o400, "1000"));
        assert_eq!(c.services[0].container_options().secrets, files);
        for (secrets, says) in [
            ("[\"no spaces\"]", "is not a secret name"),
            (
                "[{ source = \"a\", target = \"../x\" }]",
                "must be a file name",
            ),
            (
                "[{ source = \"a\", target = \"sub/x\" }]",
                "must be a file name",
            ),
            ("[{ source = \"a\", mode = 4095 }]", "is not a file mode"),
            (
                "[\"a\", { source = \"b\", target = \"a\" }]",
                "two secrets are mounted at /run/secrets/a",
            ),
            ("[{ target = \"a\" }]", "a secret's name, or a table"),
        ] {
            let e = with_secrets(&swarm, secrets).unwrap_err();
            assert!(e.contains("secrets") && e.contains(says), "{secrets}: {e}");
        }
        let e = with_secrets(GOOD, "[\"db_password\"]").unwrap_err();
        assert!(e.contains("service[0].secrets"), "{e}");
        assert!(e.contains("kind = \"swarm\""), "{e}");
        assert!(e.contains("/run/secrets/db_password:ro"), "{e}");
        let e = parse(&GOOD.replace("[[registry]]", "[runtime]\nkind = \"k8s\"\n[[registry]]"))
            .unwrap_err();
        assert!(
            e.contains("runtime.kind") || e.contains("unknown variant"),
            "{e}"
        );
        let e = parse(&swarm.replace("\"90s\"", "\"0s\"")).unwrap_err();
        assert!(e.contains("runtime.swarm.start_timeout"), "{e}");
    }

    #[test]
    fn an_unknown_key_is_named() {
        let e = parse(&GOOD.replace("port = 8080", "port = 8080\nprot = 1")).unwrap_err();
        assert!(e.contains("unknown field `prot`"), "{e}");
        assert!(e.contains("service"), "{e}");
    }

    #[test]
    fn a_missing_required_key_is_named() {
        let e = parse(&GOOD.replace("port = 8080", "")).unwrap_err();
        assert!(e.contains("missing field `port`"), "{e}");
    }

    #[test]
    fn a_bad_duration_is_named_with_its_key() {
        let e = parse(&GOOD.replace("\"45s\"", "\"45 parsecs\"")).unwrap_err();
        assert!(e.contains("nginx.drain_timeout"), "{e}");
        assert!(e.contains("bad duration"), "{e}");
    }

    #[test]
    fn an_unset_variable_is_named_with_its_line() {
        let e = parse(&GOOD.replace("${TOKEN}\"\nstate", "${NOPE}\"\nstate")).unwrap_err();
        assert!(e.contains("${NOPE} is not set"), "{e}");
        assert!(e.contains("line 4"), "{e}");
    }

    #[test]
    fn variables_in_comments_are_left_alone_and_dollars_escape() {
        let out = expand_strings(
            Path::new("g.toml"),
            "# uses ${UNSET}\nx = \"a$$b ${TOKEN}\" # and ${UNSET}\n",
            env,
        )
        .unwrap();
        assert_eq!(
            out,
            "# uses ${UNSET}\nx = \"a$b 0123456789abcdef0123\" # and ${UNSET}\n"
        );
    }

    /// Finding 9: a secret arrives exactly as the environment holds it; a `#`
    /// earlier on the line does not hide an unset variable.
    #[test]
    fn a_secret_with_quotes_newlines_and_hashes_arrives_exactly() {
        let secret = "a\"b\\c\nd\te#f ${NOT_A_VAR} \u{1b}";
        let text = GOOD.replace("password = \"${TOKEN}\"", "password = \"${SECRET}\"");
        let c = Config::parse(Path::new("g.toml"), &text, |v| match v {
            "SECRET" => Some(secret.to_string()),
            other => env(other),
        })
        .unwrap();
        assert_eq!(c.registries[0].password.as_deref(), Some(secret));
        let hidden = GOOD.replace(
            "admin_token = \"${TOKEN}\"",
            "admin_token = \"#${TOKEN}${UNSET_ONE}\"",
        );
        let e = parse(&hidden).unwrap_err();
        assert!(
            e.contains("${UNSET_ONE} is not set") && e.contains("line 4"),
            "{e}"
        );
    }

    #[test]
    fn webhook_secrets_are_as_long_as_the_admin_token() {
        let short =
            format!("{GOOD}\n[webhooks]\ngithub_secrets = [\"0123456789abcdef\", \"tooshort\"]\n");
        let e = parse(&short).unwrap_err();
        assert!(
            e.contains("webhooks.github_secrets[1]") && e.contains("16"),
            "{e}"
        );
        let e = parse(&format!("{GOOD}\n[webhooks]\ndockerhub_token = \"abc\"\n")).unwrap_err();
        assert!(e.contains("webhooks.dockerhub_token"), "{e}");
        assert!(parse(&format!(
            "{GOOD}\n[webhooks]\nregistry_token = \"0123456789abcdef\"\n"
        ))
        .is_ok());
    }

    #[test]
    fn an_image_whose_host_or_path_is_not_one_is_refused() {
        for image in [".0/a", "ghcr.io/a b", "ghcr.io/../x"] {
            let e = parse(&GOOD.replace("ghcr.io/acme/web\"", &format!("{image}\""))).unwrap_err();
            assert!(e.contains("service[0].image"), "{image}: {e}");
        }
    }

    #[test]
    fn semantic_errors_name_the_key() {
        let e =
            parse(&GOOD.replace("ghcr.io/acme/web\"", "ghcr.io/acme/web:latest\"")).unwrap_err();
        assert!(e.contains("service[0].image"), "{e}");
        let e = parse(&GOOD.replace("mode = \"host\"", "mode = \"container\"")).unwrap_err();
        assert!(e.contains("nginx.container"), "{e}");
        let e = parse(&GOOD.replace("name = \"web\"", "name = \"Web!\"")).unwrap_err();
        assert!(e.contains("service[0].name"), "{e}");
        let e = parse(&format!(
            "{GOOD}\n[docker]\ntimeout = \"10s\"\n[service.rollout]\nstop_grace = \"10s\"\n"
        ))
        .unwrap_err();
        assert!(e.contains("service[0].rollout.stop_grace"), "{e}");
        assert!(e.contains("[docker] timeout 10s"), "{e}");
    }

    #[test]
    fn canary_settings_are_checked_with_their_key() {
        let c = parse(GOOD).unwrap();
        let canary = &c.service("web").unwrap().canary;
        assert_eq!(canary.steps, [5, 25, 50]);
        assert_eq!(canary.bake, Duration::from_secs(300));
        assert_eq!(canary.min_requests, 200);
        assert_eq!(canary.inconclusive, Inconclusive::Pause);
        for (lines, key, says) in [
            ("steps = [25, 5]", "canary.steps", "must grow"),
            ("steps = [0, 50]", "canary.steps", "from 1 to 99"),
            ("steps = []", "canary.steps", "at least one"),
            ("interval = \"10m\"", "canary.interval", "at most bake"),
            ("alpha = 0.5", "canary.alpha", "at most 0.2"),
            ("latency_ratio = 0.9", "canary.latency_ratio", "at least 1"),
            (
                "override_cookie = \"a-b\"",
                "canary.override_cookie",
                "letters, digits or '_'",
            ),
            (
                "allow_header = \"X Beta\"",
                "canary.allow_header",
                "letters, digits or '-'",
            ),
            ("inconclusive = \"wait\"", "inconclusive", "unknown variant"),
        ] {
            let e = parse(&format!("{GOOD}[service.canary]\n{lines}\n")).unwrap_err();
            assert!(e.contains(key) && e.contains(says), "{lines}: {e}");
        }
        // A canary is judged from the access log: without one it is refused.
        let e = parse(&format!("{GOOD}[service.rollout]\nstrategy = \"canary\"\n")).unwrap_err();
        assert!(
            e.contains("service[0].rollout.strategy") && e.contains("access_log"),
            "{e}"
        );
        let with_log = GOOD.replace(
            "drain_timeout = \"45s\"\n",
            "drain_timeout = \"45s\"\naccess_log = \"/var/log/nginx/g.json\"\n",
        );
        parse(&format!(
            "{with_log}[service.rollout]\nstrategy = \"canary\"\n"
        ))
        .unwrap();
        // Two names nginx would read as one variable.
        let twins = format!(
            "{GOOD}\n[[service]]\nname = \"my-app\"\nimage = \"a/b\"\nport = 1\n\n[[service]]\nname = \"my_app\"\nimage = \"a/c\"\nport = 1\n"
        );
        let e = parse(&twins).unwrap_err();
        assert!(e.contains("$greenlight_my_app_upstream"), "{e}");
    }

    #[test]
    fn the_example_config_documents_a_valid_config() {
        let text = include_str!("../../greenlight.example.toml");
        let c = Config::parse(Path::new("greenlight.example.toml"), text, |_| {
            Some("0123456789abcdef0123".into())
        })
        .unwrap();
        assert_eq!(c.services[0].name, "web");
        assert_eq!(c.services[0].rollout.soak, Duration::from_secs(30));
        assert_eq!(c.pull.attempts, 5);
    }

    /// The keys agreed with `greenlight import-compose` (which emits them) all
    /// parse, into what they say.
    #[test]
    fn every_container_option_release_and_hook_key_parses() {
        let keys = r#"
networks    = ["backend"]
labels      = { "com.example.team" = "web" }
memory      = "512m"
memory_reservation = "256m"
cpus        = 1.5
user        = "1000:1000"
read_only   = true
tmpfs       = ["/tmp", "/run:size=64m"]
cap_drop    = ["ALL"]
cap_add     = ["NET_BIND_SERVICE"]
extra_hosts = ["db.internal:10.0.0.5"]
stop_signal = "SIGINT"
init        = true
shm_size    = "64m"
ulimits     = { nofile = { soft = 1024, hard = 2048 }, nproc = 512 }
security_opt = ["no-new-privileges:true"]

[service.logging]
driver  = "json-file"
options = { max-size = "10m", max-file = "3" }

[service.healthcheck]
test         = ["CMD", "/app", "health"]
interval     = "10s"
timeout      = "3s"
retries      = 3
start_period = "5s"

[service.release]
command = ["/app", "migrate"]
timeout = "10m"

[service.hooks]
pre_switch  = ["/usr/local/bin/smoke", "--quick"]
post_deploy = ["/usr/local/bin/purge-cdn"]
on_failure  = ["/usr/local/bin/page-someone"]
timeout     = "60s"
"#;
        let c = parse(&GOOD.replace("[service.health]\ninterval = \"250ms\"\n", keys)).unwrap();
        let web = c.service("web").unwrap();
        let o = web.container_options();
        assert_eq!(o.networks, ["backend"]);
        assert_eq!(o.memory, Some(512 << 20));
        assert_eq!(o.memory_reservation, Some(256 << 20));
        assert_eq!(o.nano_cpus, Some(1_500_000_000));
        assert_eq!(o.tmpfs["/run"], "size=64m");
        assert_eq!(o.tmpfs["/tmp"], "");
        assert_eq!(o.shm_size, Some(64 << 20));
        assert!(o.ulimits.contains(&("nofile".into(), 1024, 2048)));
        assert!(o.ulimits.contains(&("nproc".into(), 512, 512)));
        assert_eq!(o.logging.as_ref().unwrap().1["max-file"], "3");
        let h = o.healthcheck.unwrap();
        assert_eq!(h.test, ["CMD", "/app", "health"]);
        assert_eq!(h.start_period, Some(Duration::from_secs(5)));
        assert_eq!(
            web.release.as_ref().unwrap().timeout,
            Duration::from_secs(600)
        );
        assert_eq!(web.hooks.each().count(), 3);
        // disable = true is test = ["NONE"].
        let off = parse(&GOOD.replace(
            "[service.health]\ninterval = \"250ms\"\n",
            "[service.healthcheck]\ndisable = true\n",
        ))
        .unwrap();
        assert!(off.services[0]
            .container_options()
            .healthcheck
            .unwrap()
            .disabled());
    }

    #[test]
    fn debug_output_never_shows_a_secret() {
        let text = include_str!("../../greenlight.example.toml");
        let secret = "s3cr3t-value-0123456789";
        let c = Config::parse(Path::new("greenlight.example.toml"), text, |_| {
            Some(secret.into())
        })
        .unwrap();
        let shown = format!("{c:?}");
        assert!(!shown.contains(secret), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
        assert!(
            shown.contains("ghcr.io"),
            "non-secrets still shown: {shown}"
        );
    }
}
