//! The demo's behaviour, read once from the environment at start.

use std::collections::HashMap;
use std::time::Duration;

/// Exit code used when `DEMO_EXIT_AFTER_MS` fires and `DEMO_EXIT_CODE` is not set.
pub const DEFAULT_EXIT_CODE: i32 = 3;

/// Everything the environment can change about the demo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// `PORT`, default 8080.
    pub port: u16,
    /// `DEMO_VERSION`, default "dev".
    pub version: String,
    /// `GREENLIGHT_COLOUR` (set by the deployer), default "none".
    pub colour: String,
    /// `DEMO_UNHEALTHY=1`: `/healthz` always answers 503.
    pub unhealthy: bool,
    /// `DEMO_START_DELAY_MS`: `/healthz` answers 503 for this long after start.
    pub start_delay: Duration,
    /// `DEMO_UNHEALTHY_AFTER_MS`: `/healthz` answers 503 from this long after
    /// start on (the app keeps serving everything else).
    pub unhealthy_after: Option<Duration>,
    /// `DEMO_EXIT_AFTER_MS`: the process exits on its own after this long.
    pub exit_after: Option<Duration>,
    /// `DEMO_EXIT_CODE`: the code of that exit, default 3.
    pub exit_code: i32,
    /// `DEMO_ERROR_PERCENT`: this share of the app's requests (everything but
    /// `/healthz`) answer 500, spread evenly (0 to 100).
    pub error_percent: u64,
    /// `DEMO_EXTRA_LATENCY_MS`: every app request (everything but `/healthz`)
    /// is answered this much later (a slower version).
    pub extra_latency: Duration,
    /// `DEMO_UNHEALTHY_REPLICAS`: comma-separated replica numbers (the `k` of
    /// `GREENLIGHT_REPLICA=<service>-<colour>-<k>`) whose `/healthz` answers 503;
    /// with `DEMO_UNHEALTHY_AFTER_MS`, only from that long after start on (and
    /// the other replicas stay healthy).
    pub unhealthy_replicas: Vec<u32>,
    /// `GREENLIGHT_REPLICA` (set by the deployer), default "none".
    pub replica: String,
    /// `DEMO_REQUIRE_FILE`: refuse to start unless this file holds the version
    /// or a later one, compared as text (written by `--migrate`, the release
    /// command).
    pub require_file: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            port: 8080,
            version: "dev".to_string(),
            colour: "none".to_string(),
            unhealthy: false,
            start_delay: Duration::ZERO,
            unhealthy_after: None,
            exit_after: None,
            exit_code: DEFAULT_EXIT_CODE,
            error_percent: 0,
            extra_latency: Duration::ZERO,
            unhealthy_replicas: Vec::new(),
            replica: "none".to_string(),
            require_file: None,
        }
    }
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Config, String> {
        Config::from_vars(std::env::vars().collect())
    }

    /// Reads the given variables; empty values count as unset.
    pub fn from_vars(vars: HashMap<String, String>) -> Result<Config, String> {
        let get = |name: &str| vars.get(name).map(|v| v.trim()).filter(|v| !v.is_empty());
        let number = |name: &str| -> Result<Option<u64>, String> {
            get(name)
                .map(|v| {
                    v.parse::<u64>()
                        .map_err(|_| format!("{name} must be a whole number, got {v:?}"))
                })
                .transpose()
        };
        let mut config = Config::default();
        if let Some(port) = get("PORT") {
            config.port = port
                .parse()
                .map_err(|_| format!("PORT must be a port number, got {port:?}"))?;
        }
        if let Some(version) = get("DEMO_VERSION") {
            config.version = version.to_string();
        }
        if let Some(colour) = get("GREENLIGHT_COLOUR") {
            config.colour = colour.to_string();
        }
        config.unhealthy = matches!(get("DEMO_UNHEALTHY"), Some("1" | "true" | "yes"));
        config.start_delay = Duration::from_millis(number("DEMO_START_DELAY_MS")?.unwrap_or(0));
        config.unhealthy_after = number("DEMO_UNHEALTHY_AFTER_MS")?.map(Duration::from_millis);
        config.exit_after = number("DEMO_EXIT_AFTER_MS")?.map(Duration::from_millis);
        config.error_percent = number("DEMO_ERROR_PERCENT")?.unwrap_or(0);
        config.extra_latency = Duration::from_millis(number("DEMO_EXTRA_LATENCY_MS")?.unwrap_or(0));
        if config.error_percent > 100 {
            return Err(format!(
                "DEMO_ERROR_PERCENT must be 0 to 100, got {}",
                config.error_percent
            ));
        }
        if let Some(list) = get("DEMO_UNHEALTHY_REPLICAS") {
            config.unhealthy_replicas = list
                .split(',')
                .map(|n| {
                    n.trim().parse().map_err(|_| {
                        format!("DEMO_UNHEALTHY_REPLICAS must list replica numbers, got {list:?}")
                    })
                })
                .collect::<Result<_, _>>()?;
        }
        if let Some(replica) = get("GREENLIGHT_REPLICA") {
            config.replica = replica.to_string();
        }
        config.require_file = get("DEMO_REQUIRE_FILE").map(str::to_string);
        if let Some(code) = get("DEMO_EXIT_CODE") {
            config.exit_code = code
                .parse()
                .map_err(|_| format!("DEMO_EXIT_CODE must be an integer, got {code:?}"))?;
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_when_nothing_is_set() {
        assert_eq!(Config::from_vars(vars(&[])).unwrap(), Config::default());
    }

    #[test]
    fn reads_every_variable() {
        let config = Config::from_vars(vars(&[
            ("PORT", "9000"),
            ("DEMO_VERSION", "v2"),
            ("GREENLIGHT_COLOUR", "blue"),
            ("DEMO_UNHEALTHY", "1"),
            ("DEMO_START_DELAY_MS", "1500"),
            ("DEMO_UNHEALTHY_AFTER_MS", "900"),
            ("DEMO_EXIT_AFTER_MS", "200"),
            ("DEMO_EXIT_CODE", "7"),
            ("DEMO_ERROR_PERCENT", "5"),
            ("DEMO_EXTRA_LATENCY_MS", "200"),
            ("DEMO_UNHEALTHY_REPLICAS", "2, 3"),
            ("GREENLIGHT_REPLICA", "web-green-2"),
        ]))
        .unwrap();
        assert_eq!(config.error_percent, 5);
        assert_eq!(config.extra_latency, Duration::from_millis(200));
        assert_eq!(config.unhealthy_replicas, [2, 3]);
        assert_eq!(config.replica, "web-green-2");
        assert_eq!(config.port, 9000);
        assert_eq!(config.version, "v2");
        assert_eq!(config.colour, "blue");
        assert!(config.unhealthy);
        assert_eq!(config.start_delay, Duration::from_millis(1500));
        assert_eq!(config.unhealthy_after, Some(Duration::from_millis(900)));
        assert_eq!(config.exit_after, Some(Duration::from_millis(200)));
        assert_eq!(config.exit_code, 7);
    }

    #[test]
    fn rejects_a_bad_number() {
        let err = Config::from_vars(vars(&[("DEMO_START_DELAY_MS", "soon")])).unwrap_err();
        assert!(err.contains("DEMO_START_DELAY_MS"), "{err}");
    }
}
