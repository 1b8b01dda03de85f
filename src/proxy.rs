//! nginx: render a service's upstream file, test, reload, prove the new routing,
//! and wait for the old workers to drain.
//!
//! The rendered `<service>.conf` is the truth about what is live: its header
//! records the colour, address and deployment it routes to, so a restarted
//! greenlight reads it back instead of trusting its own database.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::config::{NginxConfig, NginxMode};
use crate::display::error_chain;
use crate::docker::Engine;
use crate::domain::state::Colour;

/// Poll interval while waiting for routing or workers to change.
const POLL: Duration = Duration::from_millis(100);
/// One verify request; a slower answer counts as a failed attempt.
const VERIFY_REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// Header the verify server adds with nginx's `$upstream_addr`.
pub const UPSTREAM_HEADER: &str = "X-Greenlight-Upstream";
/// Header naming the service (upstream group) the verify server proxies to.
pub const SERVICE_HEADER: &str = "X-Greenlight-Service";

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("nginx -t failed: {0}")]
    Test(String),
    #[error("nginx reload failed: {0}")]
    Reload(String),
    #[error("{0}")]
    Run(String),
    #[error("nginx does not route {service} to {expected} after {waited:?} (last seen: {seen})")]
    Verify {
        service: String,
        expected: String,
        waited: Duration,
        seen: String,
    },
}

pub type Result<T> = std::result::Result<T, ProxyError>;

/// Where nginx sends a service's traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub service: String,
    pub colour: Colour,
    pub address: String,
    pub deployment: i64,
    pub digest: String,
}

impl Upstream {
    pub fn render(&self) -> String {
        format!(
            "# Rendered by greenlight; edits are overwritten on the next deploy.\n\
             # greenlight: service={} colour={} address={} deployment={} digest={}\n\
             upstream {} {{\n    server {};\n}}\n",
            self.service,
            self.colour,
            self.address,
            self.deployment,
            self.digest,
            self.service,
            self.address
        )
    }

    pub fn parse(text: &str) -> Option<Upstream> {
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix("# greenlight: "))?;
        let field = |k: &str| {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(k)?.strip_prefix('='))
                .map(str::to_string)
        };
        Some(Upstream {
            service: field("service")?,
            colour: field("colour")?.parse().ok()?,
            address: field("address")?,
            deployment: field("deployment")?.parse().ok()?,
            digest: field("digest")?,
        })
    }
}

/// The content a switch replaced, kept for the way back.
#[derive(Debug, Clone)]
pub struct Previous(Option<String>);

#[derive(Clone)]
pub struct Nginx {
    cfg: NginxConfig,
    engine: Engine,
    http: reqwest::Client,
}

impl Nginx {
    pub fn new(cfg: NginxConfig, engine: Engine) -> Nginx {
        // No pooling: each verify request must land on a worker started by the reload.
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .timeout(VERIFY_REQUEST_TIMEOUT)
            .build()
            .expect("static reqwest client config");
        Nginx { cfg, engine, http }
    }

    pub fn upstream_path(&self, service: &str) -> PathBuf {
        self.cfg.upstreams_dir.join(format!("{service}.conf"))
    }

    fn previous_path(&self, service: &str) -> PathBuf {
        self.cfg
            .upstreams_dir
            .join(format!("{service}.conf.previous"))
    }

    /// What the rendered file says is live, if greenlight rendered one.
    pub fn current(&self, service: &str) -> Option<Upstream> {
        let text = std::fs::read_to_string(self.upstream_path(service)).ok()?;
        Upstream::parse(&text)
    }

    /// Atomically replaces the service's upstream file, keeping the old content
    /// both in memory (returned) and on disk as `<service>.conf.previous`.
    pub fn write(&self, upstream: &Upstream) -> Result<Previous> {
        let path = self.upstream_path(&upstream.service);
        let old = std::fs::read_to_string(&path).ok();
        if let Some(old) = &old {
            write_atomic(&self.previous_path(&upstream.service), old)?;
        }
        write_atomic(&path, &upstream.render())?;
        Ok(Previous(old))
    }

    /// Puts back what `write` replaced.
    pub fn restore(&self, service: &str, previous: &Previous) -> Result<()> {
        let path = self.upstream_path(service);
        match &previous.0 {
            Some(text) => write_atomic(&path, text),
            None => match std::fs::remove_file(&path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(source) => Err(ProxyError::Write { path, source }),
            },
        }
    }

    /// Removes temp files a crash may have left in the upstreams directory.
    pub fn remove_stray_temp_files(&self) -> usize {
        let Ok(dir) = std::fs::read_dir(&self.cfg.upstreams_dir) else {
            return 0;
        };
        dir.flatten()
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with(".greenlight-tmp")
            })
            .filter(|e| std::fs::remove_file(e.path()).is_ok())
            .count()
    }

    fn cli_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if let Some(p) = &self.cfg.prefix {
            args.extend(["-p".to_string(), p.display().to_string()]);
        }
        if let Some(c) = &self.cfg.config {
            args.extend(["-c".to_string(), c.display().to_string()]);
        }
        args
    }

    async fn run(&self, extra: &[&str]) -> Result<(bool, String)> {
        let mut args = self.cli_args();
        args.extend(extra.iter().map(|s| s.to_string()));
        match self.cfg.mode {
            NginxMode::Host => {
                let out = tokio::process::Command::new(&self.cfg.binary)
                    .args(&args)
                    .kill_on_drop(true)
                    .output()
                    .await
                    .map_err(|e| {
                        ProxyError::Run(format!(
                            "cannot run {}: {e} (set [nginx] binary)",
                            self.cfg.binary.display()
                        ))
                    })?;
                let text = format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
                Ok((out.status.success(), text.trim().to_string()))
            }
            NginxMode::Container => {
                let container = self.cfg.container.as_deref().unwrap_or("nginx");
                let mut cmd = vec!["nginx"];
                cmd.extend(args.iter().map(String::as_str));
                let (code, text) = self.engine.exec(container, &cmd).await.map_err(|e| {
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

    /// Proves nginx routes `service` to `expected` by asking its verify server,
    /// which echoes `$upstream_addr`. A reload is asynchronous, so this polls.
    pub async fn verify(&self, service: &str, path: &str, expected: &str) -> Result<()> {
        let start = Instant::now();
        let url = format!("{}{}", self.cfg.verify_url.trim_end_matches('/'), path);
        loop {
            let seen = match self
                .http
                .get(&url)
                .header(SERVICE_HEADER, service)
                .send()
                .await
            {
                Ok(resp) => {
                    let addr = resp
                        .headers()
                        .get(UPSTREAM_HEADER)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string();
                    // `$upstream_addr` lists every server tried; the last one answered.
                    let last = addr.rsplit(", ").next().unwrap_or("");
                    if last == expected && resp.status().is_success() {
                        return Ok(());
                    }
                    // The new container answered through nginx, badly: that is a
                    // verdict, not a reload still in progress.
                    if last == expected {
                        return Err(ProxyError::Verify {
                            service: service.into(),
                            expected: expected.into(),
                            waited: start.elapsed(),
                            seen: format!("HTTP {} from the new container", resp.status()),
                        });
                    }
                    if addr.is_empty() {
                        format!(
                            "HTTP {} without {UPSTREAM_HEADER} (is the verify server of nginx/greenlight-verify.conf included?)",
                            resp.status()
                        )
                    } else {
                        format!("HTTP {} from {addr}", resp.status())
                    }
                }
                Err(e) => format!("{} unreachable: {}", self.cfg.verify_url, error_chain(&e)),
            };
            if start.elapsed() >= self.cfg.verify_timeout {
                return Err(ProxyError::Verify {
                    service: service.into(),
                    expected: expected.into(),
                    waited: start.elapsed(),
                    seen,
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// nginx's worker processes as (pid, command line).
    async fn worker_processes(&self) -> Result<Vec<(u32, String)>> {
        match self.cfg.mode {
            NginxMode::Host => Ok(host_workers(self.cfg.config.as_deref())),
            NginxMode::Container => {
                let container = self.cfg.container.as_deref().unwrap_or("nginx");
                let procs = self.engine.processes(container).await.map_err(|e| {
                    ProxyError::Run(format!("listing processes of {container}: {e}"))
                })?;
                Ok(procs
                    .into_iter()
                    .filter(|(_, cmd)| cmd.contains("worker process"))
                    .collect())
            }
        }
    }

    /// PIDs of nginx's worker processes, old and new.
    pub async fn workers(&self) -> Result<Vec<u32>> {
        Ok(self
            .worker_processes()
            .await?
            .into_iter()
            .map(|(pid, _)| pid)
            .collect())
    }

    /// Waits until none of `old` is still running, at most `drain_timeout`.
    /// Returns how many were still running when it gave up.
    pub async fn wait_drained(&self, old: &[u32]) -> Result<usize> {
        let deadline = Instant::now() + self.cfg.drain_timeout;
        loop {
            let now = self.workers().await?;
            let left = old.iter().filter(|p| now.contains(p)).count();
            if left == 0 || Instant::now() >= deadline {
                return Ok(left);
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

fn write_atomic(path: &Path, text: &str) -> Result<()> {
    let err = |source| ProxyError::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".greenlight-tmp")
        .tempfile_in(dir)
        .map_err(err)?;
    tmp.write_all(text.as_bytes()).map_err(err)?;
    tmp.as_file().sync_all().map_err(err)?;
    // nginx reads the file as its own user.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o644))
            .map_err(err)?;
    }
    tmp.persist(path).map_err(|e| err(e.error))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rendered_file_carries_what_it_routes_to() {
        let u = Upstream {
            service: "web".into(),
            colour: Colour::Green,
            address: "172.18.0.3:8080".into(),
            deployment: 12,
            digest: "sha256:abc".into(),
        };
        let text = u.render();
        assert!(
            text.contains("upstream web {\n    server 172.18.0.3:8080;\n}"),
            "{text}"
        );
        assert_eq!(Upstream::parse(&text), Some(u));
        assert_eq!(Upstream::parse("upstream web { server 1.2.3.4:80; }"), None);
    }

    #[test]
    fn writes_are_atomic_and_keep_the_previous_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("web.conf");
        write_atomic(&path, "one").unwrap();
        write_atomic(&path, "two").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "two");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, vec!["web.conf"]);
    }
}
