//! The health gate: a new container goes live only after N consecutive good HTTP
//! probes of its own address (and Docker's HEALTHCHECK, when the image has one).
//! A container that exits or restarts fails the gate at once. The soak keeps
//! watching it the same way after the switch.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::config::HealthConfig;
use crate::runtime::{ReplicaStatus, Runtime};

/// Lines of the container's log kept for the report.
pub const LOG_TAIL_LINES: usize = 40;

#[derive(Debug)]
pub struct GateFailure {
    pub error: String,
    pub exit_code: Option<i64>,
}

/// The checks of one new replica.
pub struct HealthGate<'a> {
    pub runtime: &'a Runtime,
    pub config: &'a HealthConfig,
    /// Its name, for messages.
    pub name: &'a str,
    pub replica_id: &'a str,
    pub address: &'a str,
    pub docker_healthcheck: bool,
}

impl HealthGate<'_> {
    fn client(&self) -> Result<reqwest::Client, GateFailure> {
        crate::tls::builder()
            .timeout(self.config.timeout)
            .pool_max_idle_per_host(0)
            .build()
            .map_err(|e| GateFailure {
                error: format!("building the probe client: {e}"),
                exit_code: None,
            })
    }

    fn url(&self) -> String {
        format!("http://{}{}", self.address, self.config.path)
    }

    /// The replica as the runtime sees it; an error once it has exited,
    /// restarted, vanished or been declared unhealthy by its HEALTHCHECK.
    async fn container(&self, phase: &str) -> Result<ReplicaStatus, GateFailure> {
        let status = self
            .runtime
            .status(self.replica_id)
            .await
            .map_err(|e| GateFailure {
                error: format!("inspecting {}: {e}", self.name),
                exit_code: None,
            })?;
        let Some(status) = status else {
            return Err(GateFailure {
                error: format!("{} disappeared during the {phase}", self.name),
                exit_code: None,
            });
        };
        if !status.running || status.restarting || status.restart_count > 0 {
            return Err(GateFailure {
                error: format!(
                    "{} {} (exit code {}) during the {phase}",
                    self.name,
                    if status.restart_count > 0 || status.restarting {
                        "crashed and was restarted"
                    } else {
                        "exited"
                    },
                    status
                        .exit_code
                        .map(|c| c.to_string())
                        .unwrap_or_else(|| "unknown".into())
                ),
                exit_code: status.exit_code,
            });
        }
        if self.docker_healthcheck && status.health.as_deref() == Some("unhealthy") {
            return Err(GateFailure {
                error: format!(
                    "Docker HEALTHCHECK reports {} unhealthy during the {phase}",
                    self.name
                ),
                exit_code: None,
            });
        }
        Ok(status)
    }

    /// One HTTP probe: `Ok` with what it saw when the status is the wanted one.
    async fn probe(&self, http: &reqwest::Client, url: &str) -> Result<String, String> {
        match http.get(url).send().await {
            Ok(resp) if resp.status().as_u16() == self.config.status => {
                Ok(format!("HTTP {}", resp.status()))
            }
            Ok(resp) => Err(format!(
                "HTTP {} (want {})",
                resp.status(),
                self.config.status
            )),
            Err(e) => Err(describe(&e)),
        }
    }

    /// Returns how many probes it took.
    pub async fn wait(&self) -> Result<u32, GateFailure> {
        let http = self.client()?;
        let url = self.url();
        let start = Instant::now();
        let mut consecutive = 0u32;
        let mut probes = 0u32;
        loop {
            let status = self.container("health gate").await?;
            probes += 1;
            let last = match self.probe(&http, &url).await {
                Ok(seen) => {
                    consecutive += 1;
                    seen
                }
                Err(seen) => {
                    consecutive = 0;
                    seen
                }
            };
            let docker_ok = !self.docker_healthcheck || status.health.as_deref() == Some("healthy");
            if consecutive >= self.config.healthy_after && docker_ok {
                return Ok(probes);
            }
            if start.elapsed() + self.config.interval > self.config.deadline {
                let docker = if self.docker_healthcheck {
                    format!(
                        "; Docker HEALTHCHECK: {}",
                        status.health.as_deref().unwrap_or("unknown")
                    )
                } else {
                    String::new()
                };
                return Err(GateFailure {
                    error: format!(
                        "{} not healthy within {}: {consecutive} of {} consecutive probes of {url} passed; last probe: {last}{docker}",
                        self.name,
                        crate::display::span(self.config.deadline),
                        self.config.healthy_after
                    ),
                    exit_code: None,
                });
            }
            tokio::time::sleep(self.config.interval).await;
        }
    }

    /// The soak (and a rolling update's monitor): after the switch, every probe
    /// must pass and the replica must keep running for `duration`. Returns the
    /// number of probes, early when `stop` is notified (an operator asked for
    /// a rollback). `phase` names it in messages.
    pub async fn soak(
        &self,
        phase: &str,
        duration: Duration,
        stop: &CancellationToken,
    ) -> Result<u32, GateFailure> {
        let http = self.client()?;
        let url = self.url();
        let end = Instant::now() + duration;
        let mut probes = 0u32;
        loop {
            self.container(phase).await?;
            probes += 1;
            if let Err(seen) = self.probe(&http, &url).await {
                // A refused or cut connection often means the process is exiting:
                // the exit code explains more than the probe, so give Docker a
                // moment to report it.
                for _ in 0..10 {
                    self.container(phase).await?;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                return Err(GateFailure {
                    error: format!(
                        "probe {probes} of {} ({url}) failed during the {phase}: {seen}",
                        self.name
                    ),
                    exit_code: None,
                });
            }
            let now = Instant::now();
            if now >= end {
                return Ok(probes);
            }
            tokio::select! {
                _ = tokio::time::sleep(self.config.interval.min(end - now)) => {}
                _ = stop.cancelled() => return Ok(probes),
            }
        }
    }
}

fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return "timed out".into();
    }
    if e.is_connect() {
        return "connection refused".into();
    }
    crate::display::error_chain(e)
}

/// Bounds a log tail for storage and messages.
pub fn bound_log(text: &str) -> String {
    const MAX: usize = 4096;
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(LOG_TAIL_LINES);
    let mut out = lines[start..].join("\n");
    if out.len() > MAX {
        let cut = out.len() - MAX;
        let cut = (cut..out.len())
            .find(|i| out.is_char_boundary(*i))
            .unwrap_or(out.len());
        out = out[cut..].to_string();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_tails_keep_the_last_lines_within_bounds() {
        let text: String = (0..100).map(|i| format!("line {i}\n")).collect();
        let tail = bound_log(&text);
        assert!(tail.starts_with("line 60"));
        assert!(tail.ends_with("line 99"));
        let long = "é".repeat(5000);
        assert!(bound_log(&long).len() <= 4096);
    }
}
