//! What a replica is asked to be, independent of the engine that runs it.

use std::fmt;

use serde::{Deserialize, Serialize};

/// What the engine does when a replica's process exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    No,
    Always,
    #[default]
    UnlessStopped,
    OnFailure,
}

impl RestartPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            RestartPolicy::No => "no",
            RestartPolicy::Always => "always",
            RestartPolicy::UnlessStopped => "unless-stopped",
            RestartPolicy::OnFailure => "on-failure",
        }
    }
}

impl fmt::Display for RestartPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The container options of a service's replicas (and of its release
/// container), in engine units: each engine maps this in one place.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ContainerOptions {
    /// Networks besides the one nginx reaches the replicas on.
    pub networks: Vec<String>,
    /// The operator's labels (greenlight adds its own).
    pub labels: std::collections::BTreeMap<String, String>,
    /// Hard memory limit, bytes.
    pub memory: Option<u64>,
    /// Soft memory limit, bytes.
    pub memory_reservation: Option<u64>,
    /// CPU limit in billionths of a CPU (Docker's NanoCpus).
    pub nano_cpus: Option<i64>,
    pub user: Option<String>,
    pub read_only: bool,
    /// Mount point -> options (`size=64m,...`, empty for none).
    pub tmpfs: std::collections::BTreeMap<String, String>,
    pub cap_drop: Vec<String>,
    pub cap_add: Vec<String>,
    /// `host:address` lines.
    pub extra_hosts: Vec<String>,
    pub stop_signal: Option<String>,
    pub init: Option<bool>,
    /// /dev/shm size, bytes.
    pub shm_size: Option<u64>,
    /// (name, soft, hard).
    pub ulimits: Vec<(String, i64, i64)>,
    pub security_opt: Vec<String>,
    /// Swarm secrets, each read as a file.
    pub secrets: Vec<SecretFile>,
    /// Log driver and its options.
    pub logging: Option<(String, std::collections::BTreeMap<String, String>)>,
    /// The image's HEALTHCHECK replaced (`test = ["NONE"]`: turned off).
    pub healthcheck: Option<Healthcheck>,
}

/// A Swarm secret as a file in the replica: `source` (the secret's name) at
/// `target` (a name under `/run/secrets/`, or an absolute path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretFile {
    pub source: String,
    pub target: String,
    pub uid: String,
    pub gid: String,
    /// File mode (Swarm's default 0o444).
    pub mode: u32,
}

impl SecretFile {
    /// Where the replica finds the file.
    pub fn path(&self) -> String {
        if self.target.starts_with('/') {
            self.target.clone()
        } else {
            format!("/run/secrets/{}", self.target)
        }
    }
}

/// A HEALTHCHECK as the engine takes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Healthcheck {
    pub test: Vec<String>,
    pub interval: Option<std::time::Duration>,
    pub timeout: Option<std::time::Duration>,
    pub retries: Option<u32>,
    pub start_period: Option<std::time::Duration>,
}

impl Healthcheck {
    pub fn disabled(&self) -> bool {
        self.test.first().map(String::as_str) == Some("NONE")
    }
}
