//! Controlling nginx: test its configuration, reload it, and list its worker
//! processes, whether nginx runs on the host (its binary, its pid file) or in a
//! container (`docker exec`, the container's process list). Under Swarm nginx
//! is still one of these, whatever runs the replicas.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{ProxyError, Result};
use crate::config::{NginxConfig, NginxMode};
use crate::docker::Engine;

/// The longest an nginx command (`-t`, `-s reload`) may take.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone)]
pub enum NginxControl {
    /// nginx runs on this host: its binary with `-p`/`-c`, workers from /proc.
    Host {
        binary: PathBuf,
        args: Vec<String>,
        config: Option<PathBuf>,
    },
    /// nginx runs in a container of the local Docker engine.
    Container {
        engine: Engine,
        container: String,
        args: Vec<String>,
    },
}

impl NginxControl {
    pub fn new(cfg: &NginxConfig, engine: Engine) -> NginxControl {
        let mut args = Vec::new();
        if let Some(p) = &cfg.prefix {
            args.extend(["-p".to_string(), p.display().to_string()]);
        }
        if let Some(c) = &cfg.config {
            args.extend(["-c".to_string(), c.display().to_string()]);
        }
        match cfg.mode {
            NginxMode::Host => NginxControl::Host {
                binary: cfg.binary.clone(),
                args,
                config: cfg.config.clone(),
            },
            NginxMode::Container => NginxControl::Container {
                engine,
                container: cfg.container.clone().unwrap_or_else(|| "nginx".into()),
                args,
            },
        }
    }

    /// Runs nginx with `extra`, bounded by [`COMMAND_TIMEOUT`] (a hung
    /// `nginx -t`, e.g. on a resolver that never answers for another site's
    /// upstream, must not hold a deployment forever; the process is killed).
    async fn run(&self, extra: &[&str]) -> Result<(bool, String)> {
        match tokio::time::timeout(COMMAND_TIMEOUT, self.run_unbounded(extra)).await {
            Ok(result) => result,
            Err(_) => Err(ProxyError::Run(format!(
                "nginx {} did not finish within {}s",
                extra.join(" "),
                COMMAND_TIMEOUT.as_secs()
            ))),
        }
    }

    async fn run_unbounded(&self, extra: &[&str]) -> Result<(bool, String)> {
        match self {
            NginxControl::Host { binary, args, .. } => {
                let out = tokio::process::Command::new(binary)
                    .args(args)
                    .args(extra)
                    .kill_on_drop(true)
                    .output()
                    .await
                    .map_err(|e| {
                        ProxyError::Run(format!(
                            "cannot run {}: {e} (set [nginx] binary)",
                            binary.display()
                        ))
                    })?;
                let text = format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
                Ok((out.status.success(), text.trim().to_string()))
            }
            NginxControl::Container {
                engine,
                container,
                args,
            } => {
                let mut cmd = vec!["nginx"];
                cmd.extend(args.iter().map(String::as_str));
                cmd.extend(extra);
                let (code, text) = engine.exec(container, &cmd).await.map_err(|e| {
                    ProxyError::Run(format!("docker exec in nginx container {container}: {e}"))
                })?;
                Ok((code == 0, text.trim().to_string()))
            }
        }
    }

    /// `nginx -t` over the whole configuration.
    pub async fn test(&self) -> Result<String> {
        let (ok, text) = self.run(&["-t"]).await?;
        if ok {
            Ok(text)
        } else {
            Err(ProxyError::Test(text))
        }
    }

    /// `nginx -T`: the whole configuration as nginx reads it, every include
    /// inlined (what `greenlight init` reads its paths from).
    pub async fn dump(&self) -> Result<String> {
        let (ok, text) = self.run(&["-T"]).await?;
        if ok {
            Ok(text)
        } else {
            Err(ProxyError::Test(text))
        }
    }

    /// `nginx -s reload`: the master re-reads the config and starts new workers;
    /// the old ones finish what they are serving.
    pub async fn reload(&self) -> Result<()> {
        let (ok, text) = self.run(&["-s", "reload"]).await?;
        if ok {
            Ok(())
        } else {
            Err(ProxyError::Reload(text))
        }
    }

    /// PIDs of nginx's worker processes, old and new.
    pub async fn workers(&self) -> Result<Vec<u32>> {
        Ok(match self {
            NginxControl::Host { config, .. } => host_workers(config.as_deref())
                .into_iter()
                .map(|(pid, _)| pid)
                .collect(),
            NginxControl::Container {
                engine, container, ..
            } => engine
                .processes(container)
                .await
                .map_err(|e| ProxyError::Run(format!("listing processes of {container}: {e}")))?
                .into_iter()
                .filter(|(_, cmd)| cmd.contains("worker process"))
                .map(|(pid, _)| pid)
                .collect(),
        })
    }
}

/// Workers of the host nginx master started with `config` (or of any master).
fn host_workers(config: Option<&Path>) -> Vec<(u32, String)> {
    let procs: Vec<(u32, u32, String)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if !cmdline.starts_with("nginx: ") {
                return None;
            }
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // Fields after the command (which is in parentheses): state, ppid, ...
            let after = &stat[stat.rfind(')')? + 2..];
            let ppid = after.split_whitespace().nth(1)?.parse().ok()?;
            Some((pid, ppid, cmdline))
        })
        .collect();
    let config = config.map(|c| c.display().to_string());
    let masters: Vec<u32> = procs
        .iter()
        .filter(|(_, _, cmd)| cmd.starts_with("nginx: master process"))
        .filter(|(_, _, cmd)| config.as_ref().is_none_or(|c| cmd.contains(c.as_str())))
        .map(|(pid, _, _)| *pid)
        .collect();
    procs
        .iter()
        .filter(|(_, ppid, cmd)| masters.contains(ppid) && cmd.contains("worker process"))
        .map(|(pid, _, cmd)| (*pid, cmd.clone()))
        .collect()
}
