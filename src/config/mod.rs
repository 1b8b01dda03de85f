//! `greenlight.toml` -> validated, typed configuration.
//!
//! Loading is two passes: `${VAR}` references are expanded inside the file's
//! string values (so a secret never has to live in the file, and arrives exactly
//! as the environment holds it), then the TOML is parsed with unknown keys
//! refused. Every error names the key it is about, so `greenlight check` can print
//! one line an operator can act on.

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
    /// Per-service notification channels (overrides `[notify]`).
    pub notify: Option<notify::ServiceNotify>,
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
        }
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

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
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
            let r = &s.rollout;
            if r.strategy == Strategy::Rolling && self.runtime.kind == RuntimeKind::Swarm {
                return Err(bad(
                    &key("rollout.strategy"),
                    "\"rolling\" does not run on [runtime] kind = \"swarm\": Swarm, not greenlight, \
                     chooses which task a scale-down stops, so greenlight cannot take one replica \
                     out of nginx before it is signalled; use \"blue-green\" (each colour a Swarm \
                     service)"
                        .into(),
                ));
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
    fn the_runtime_is_docker_unless_swarm_is_asked_for_and_swarm_refuses_rolling() {
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
        let e = parse(&format!(
            "{swarm}[service.rollout]\nstrategy = \"rolling\"\n"
        ))
        .unwrap_err();
        assert!(e.contains("service[0].rollout.strategy"), "{e}");
        assert!(e.contains("blue-green"), "{e}");
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
