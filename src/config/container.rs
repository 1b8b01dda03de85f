//! A service's container options (the keys a compose file's app service commonly
//! uses: extra networks, labels, limits, user, read-only root, capabilities,
//! hosts, logging, signals, init, shm, ulimits, the image's HEALTHCHECK), parsed
//! into their engine units and checked, each with the key it is about.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use super::ServiceConfig;
use crate::domain::replica::{ContainerOptions, Healthcheck, SecretFile};

impl ServiceConfig {
    /// The service's container options in engine units.
    pub fn container_options(&self) -> ContainerOptions {
        ContainerOptions {
            networks: self.networks.clone(),
            labels: self.labels.clone(),
            memory: self.memory,
            memory_reservation: self.memory_reservation,
            nano_cpus: self.cpus.map(|c| (c * 1e9).round() as i64),
            user: self.user.clone(),
            read_only: self.read_only,
            tmpfs: self
                .tmpfs
                .iter()
                .map(|t| match t.split_once(':') {
                    Some((path, options)) => (path.to_string(), options.to_string()),
                    None => (t.clone(), String::new()),
                })
                .collect(),
            cap_drop: self.cap_drop.clone(),
            cap_add: self.cap_add.clone(),
            extra_hosts: self.extra_hosts.clone(),
            stop_signal: self.stop_signal.clone(),
            init: self.init,
            shm_size: self.shm_size,
            ulimits: self
                .ulimits
                .iter()
                .map(|(name, u)| {
                    let (soft, hard) = u.soft_hard();
                    (name.clone(), soft, hard)
                })
                .collect(),
            security_opt: self.security_opt.clone(),
            secrets: self.secrets.iter().map(SecretConfig::file).collect(),
            logging: self
                .logging
                .as_ref()
                .map(|l| (l.driver.clone(), l.options.clone())),
            healthcheck: self.healthcheck.as_ref().map(|h| Healthcheck {
                test: if h.disabled() {
                    vec!["NONE".into()]
                } else {
                    h.test.clone().unwrap_or_default()
                },
                interval: h.interval,
                timeout: h.timeout,
                retries: h.retries,
                start_period: h.start_period,
            }),
        }
    }
}

/// A Swarm secret the replicas read as a file (compose `secrets`): its name
/// (the file `/run/secrets/<name>`), or a table naming the secret (`source`)
/// and where and how the file appears (`target`, `uid`, `gid`, `mode`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(
    untagged,
    expecting = "a secret's name, or a table with source and optionally target, uid, gid, mode"
)]
pub enum SecretConfig {
    Name(String),
    File {
        source: String,
        target: Option<String>,
        uid: Option<String>,
        gid: Option<String>,
        mode: Option<u32>,
    },
}

impl SecretConfig {
    /// The file the replica gets, with Swarm's defaults filled in.
    pub fn file(&self) -> SecretFile {
        match self {
            SecretConfig::Name(name) => SecretFile {
                source: name.clone(),
                target: name.clone(),
                uid: "0".into(),
                gid: "0".into(),
                mode: 0o444,
            },
            SecretConfig::File {
                source,
                target,
                uid,
                gid,
                mode,
            } => SecretFile {
                source: source.clone(),
                target: target.clone().unwrap_or_else(|| source.clone()),
                uid: uid.clone().unwrap_or_else(|| "0".into()),
                gid: gid.clone().unwrap_or_else(|| "0".into()),
                mode: mode.unwrap_or(0o444),
            },
        }
    }
}

/// Whether `name` can name a Swarm secret: 1-64 letters, digits, `-`, `_`,
/// `.`, starting and ending with a letter or digit.
fn secret_name(name: &str) -> bool {
    let ends = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    (1..=64).contains(&name.len())
        && ends(name.chars().next())
        && ends(name.chars().last())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// `[service.logging]`: the containers' log driver (compose `logging`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoggingConfig {
    pub driver: String,
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

/// `[service.healthcheck]`: the image's HEALTHCHECK, overridden or disabled.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthcheckConfig {
    /// `["CMD", ...]`, `["CMD-SHELL", "..."]` or `["NONE"]`.
    pub test: Option<Vec<String>>,
    #[serde(default, deserialize_with = "optional_duration")]
    pub interval: Option<Duration>,
    #[serde(default, deserialize_with = "optional_duration")]
    pub timeout: Option<Duration>,
    pub retries: Option<u32>,
    #[serde(default, deserialize_with = "optional_duration")]
    pub start_period: Option<Duration>,
    /// Same as `test = ["NONE"]`.
    #[serde(default)]
    pub disable: bool,
}

impl HealthcheckConfig {
    /// Whether the image's HEALTHCHECK is turned off.
    pub fn disabled(&self) -> bool {
        self.disable
            || self
                .test
                .as_ref()
                .is_some_and(|t| t.first().map(String::as_str) == Some("NONE"))
    }
}

/// One `ulimits` entry: a number (soft = hard) or `{ soft, hard }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum Ulimit {
    Both(i64),
    Pair { soft: i64, hard: i64 },
}

impl Ulimit {
    pub fn soft_hard(self) -> (i64, i64) {
        match self {
            Ulimit::Both(n) => (n, n),
            Ulimit::Pair { soft, hard } => (soft, hard),
        }
    }
}

/// A size in bytes: an integer, or Docker's forms (`512m`, `1g`, `64k`,
/// `512MiB`, `1GB`; binary multiples, as Docker reads them).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let n: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size like \"512m\", \"1g\" or 1048576"))?;
    let unit = unit.trim().to_ascii_lowercase();
    let unit = unit
        .strip_suffix("ib")
        .or_else(|| unit.strip_suffix('b'))
        .unwrap_or(&unit);
    let multiple: u64 = match unit {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        "t" => 1 << 40,
        _ => {
            return Err(format!(
                "{text:?} is not a size: the unit must be b, k, m, g or t (e.g. \"512m\")"
            ))
        }
    };
    Ok((n * multiple as f64) as u64)
}

pub(super) fn optional_size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Int(u64),
        Text(String),
    }
    match Option::<Raw>::deserialize(d)? {
        None => Ok(None),
        Some(Raw::Int(n)) => Ok(Some(n)),
        Some(Raw::Text(t)) => parse_size(&t).map(Some).map_err(serde::de::Error::custom),
    }
}

fn optional_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    super::duration(d).map(Some)
}

/// Docker's smallest memory limit.
const MIN_MEMORY: u64 = 6 << 20;

/// The ulimit names Docker knows.
const ULIMITS: [&str; 15] = [
    "core",
    "cpu",
    "data",
    "fsize",
    "locks",
    "memlock",
    "msgqueue",
    "nice",
    "nofile",
    "nproc",
    "rss",
    "rtprio",
    "rttime",
    "sigpending",
    "stack",
];

/// Checks one service's container options; the error names the key.
pub(super) fn validate(s: &ServiceConfig) -> Result<(), (String, String)> {
    let bad = |k: &str, m: String| Err((k.to_string(), m));
    let mut seen = std::collections::BTreeSet::new();
    for n in &s.networks {
        if n.is_empty() || n.contains(char::is_whitespace) {
            return bad("networks", format!("{n:?} is not a network name"));
        }
        if n == &s.network {
            return bad(
                "networks",
                format!("{n:?} is already the service's `network` (the one nginx reaches); list only the others"),
            );
        }
        if !seen.insert(n) {
            return bad("networks", format!("{n:?} is listed twice"));
        }
    }
    for k in s.labels.keys() {
        if k.starts_with("greenlight.") {
            return bad(
                "labels",
                format!("{k:?}: labels under \"greenlight.\" are greenlight's own (it finds its replicas by them)"),
            );
        }
        if k.is_empty() {
            return bad("labels", "a label needs a name".into());
        }
    }
    if let Some(m) = s.memory {
        if m < MIN_MEMORY {
            return bad(
                "memory",
                format!("{m} bytes is below Docker's smallest limit, 6m"),
            );
        }
    }
    if let (Some(r), Some(m)) = (s.memory_reservation, s.memory) {
        if r > m {
            return bad(
                "memory_reservation",
                format!("{r} bytes is above memory ({m} bytes): a reservation is the soft limit under it"),
            );
        }
    }
    if let Some(c) = s.cpus {
        if !(c.is_finite() && c > 0.0 && c <= 1024.0) {
            return bad(
                "cpus",
                format!("{c} must be a number of CPUs above 0, like 1.5"),
            );
        }
    }
    if let Some(u) = &s.user {
        let ok = |p: &str| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
        };
        let mut parts = u.splitn(2, ':');
        let user = parts.next().unwrap_or_default();
        if !ok(user) || parts.next().is_some_and(|g| !ok(g)) {
            return bad(
                "user",
                format!("{u:?} is not a user like \"1000\", \"1000:1000\" or \"app:app\""),
            );
        }
    }
    for t in &s.tmpfs {
        let path = t.split(':').next().unwrap_or_default();
        if !path.starts_with('/') {
            return bad(
                "tmpfs",
                format!("{t:?} must be an absolute path inside the container, optionally with options (\"/run:size=64m\")"),
            );
        }
        if let Some(size) = t
            .split_once(':')
            .and_then(|(_, o)| o.split(',').find_map(|o| o.strip_prefix("size=")))
        {
            parse_size(size).map_err(|e| ("tmpfs".to_string(), e))?;
        }
    }
    for (key, caps) in [("cap_drop", &s.cap_drop), ("cap_add", &s.cap_add)] {
        for c in caps {
            if c.is_empty()
                || !c
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
            {
                return bad(
                    key,
                    format!("{c:?} is not a capability name like \"NET_ADMIN\" or \"ALL\""),
                );
            }
        }
    }
    for h in &s.extra_hosts {
        let Some((host, addr)) = h.split_once(':') else {
            return bad(
                "extra_hosts",
                format!("{h:?} must be \"host:address\", like \"db.internal:10.0.0.5\""),
            );
        };
        if host.is_empty() || (addr != "host-gateway" && addr.parse::<std::net::IpAddr>().is_err())
        {
            return bad(
                "extra_hosts",
                format!("{h:?} must be \"host:address\" with an IP address (or host-gateway)"),
            );
        }
    }
    if let Some(sig) = &s.stop_signal {
        let name = sig.strip_prefix("SIG").unwrap_or(sig);
        let ok = sig.parse::<u8>().is_ok_and(|n| (1..=64).contains(&n))
            || (!name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '+'));
        if !ok {
            return bad(
                "stop_signal",
                format!("{sig:?} is not a signal like \"SIGINT\" or \"15\""),
            );
        }
    }
    for (name, limit) in &s.ulimits {
        if !ULIMITS.contains(&name.as_str()) {
            return bad(
                "ulimits",
                format!(
                    "{name:?} is not a ulimit Docker knows ({})",
                    ULIMITS.join(", ")
                ),
            );
        }
        let (soft, hard) = limit.soft_hard();
        if soft > hard {
            return bad(
                "ulimits",
                format!("{name}: soft {soft} is above hard {hard}"),
            );
        }
    }
    if s.security_opt.iter().any(|o| o.trim().is_empty()) {
        return bad("security_opt", "an option cannot be empty".into());
    }
    let mut paths = std::collections::HashSet::new();
    for secret in s.secrets.iter().map(SecretConfig::file) {
        if !secret_name(&secret.source) {
            return bad(
                "secrets",
                format!(
                    "{:?} is not a secret name (letters, digits, '-', '_', '.'; at most 64)",
                    secret.source
                ),
            );
        }
        let target = &secret.target;
        if target.is_empty()
            || target.split('/').any(|part| part == "..")
            || (!target.starts_with('/') && target.contains('/'))
        {
            return bad(
                "secrets",
                format!(
                    "target {target:?} of {:?} must be a file name (under /run/secrets/) or an absolute path, without \"..\"",
                    secret.source
                ),
            );
        }
        if secret.mode > 0o777 {
            return bad(
                "secrets",
                format!(
                    "mode {:#o} of {:?} is not a file mode (0o000-0o777; in TOML write 0o400)",
                    secret.mode, secret.source
                ),
            );
        }
        if !paths.insert(secret.path()) {
            return bad(
                "secrets",
                format!("two secrets are mounted at {}", secret.path()),
            );
        }
    }
    if let Some(l) = &s.logging {
        if l.driver.trim().is_empty() {
            return bad(
                "logging.driver",
                "must name a log driver, like \"json-file\"".into(),
            );
        }
    }
    if let Some(h) = &s.healthcheck {
        if let Some(test) = &h.test {
            match test.first().map(String::as_str) {
                Some("NONE") if test.len() == 1 => {}
                Some("CMD") if test.len() > 1 => {}
                Some("CMD-SHELL") if test.len() == 2 => {}
                _ => {
                    return bad(
                        "healthcheck.test",
                        format!("{test:?} must be [\"CMD\", program, args...], [\"CMD-SHELL\", \"command\"] or [\"NONE\"]"),
                    )
                }
            }
        }
        if h.disable && h.test.as_ref().is_some_and(|t| t[0] != "NONE") {
            return bad(
                "healthcheck.disable",
                "disable = true and a test: choose one".into(),
            );
        }
        for (k, d) in [
            ("healthcheck.interval", h.interval),
            ("healthcheck.timeout", h.timeout),
        ] {
            if d.is_some_and(|d| d < Duration::from_millis(1)) {
                return bad(k, "must be at least 1ms".into());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_docker_reads_them() {
        assert_eq!(parse_size("512m").unwrap(), 512 << 20);
        assert_eq!(parse_size("1g").unwrap(), 1 << 30);
        assert_eq!(parse_size("1048576").unwrap(), 1 << 20);
        assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("64k").unwrap(), 64 << 10);
        assert_eq!(parse_size("1.5g").unwrap(), 3 << 29);
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("m").is_err());
    }
}
