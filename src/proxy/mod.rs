//! nginx: apply a [`Routing`] (render its file atomically, `nginx -t`, reload),
//! prove the new routing through nginx's verify server, and wait for the old
//! workers to drain.
//!
//! - [`render`]: a routing as an nginx include file, and back.
//! - [`control`]: `nginx -t`, reload and the worker list, on the host or in a container.

pub mod control;
pub mod render;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::config::NginxConfig;
use crate::display::error_chain;
use crate::docker::Engine;
use crate::domain::routing::Routing;

pub use control::NginxControl;

/// Poll interval while waiting for workers to change.
const POLL: Duration = Duration::from_millis(100);
/// Poll interval while waiting for a reload to take: the new workers start
/// within milliseconds, and each poll is one request through nginx.
const VERIFY_POLL: Duration = Duration::from_millis(5);
/// After this long without the new render answering, polls back off
/// (doubling up to `POLL`).
const VERIFY_FAST_FOR: Duration = Duration::from_millis(500);
/// One verify request; a slower answer counts as a failed attempt.
const VERIFY_REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// Header the verify server adds with nginx's `$upstream_addr`.
pub const UPSTREAM_HEADER: &str = "X-Greenlight-Upstream";
/// Header naming the upstream group the verify server proxies to.
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

#[derive(Clone)]
pub struct Nginx {
    cfg: NginxConfig,
    control: NginxControl,
    http: reqwest::Client,
}

impl Nginx {
    pub fn new(cfg: NginxConfig, engine: Engine) -> Nginx {
        // No pooling: each verify request must land on a worker started by the reload.
        let http = crate::tls::builder()
            .pool_max_idle_per_host(0)
            .timeout(VERIFY_REQUEST_TIMEOUT)
            .build()
            .expect("static reqwest client config");
        Nginx {
            control: NginxControl::new(&cfg, engine),
            cfg,
            http,
        }
    }

    pub fn upstream_path(&self, service: &str) -> PathBuf {
        self.cfg.upstreams_dir.join(format!("{service}.conf"))
    }

    /// What the rendered file says nginx routes `service` to: `None` when
    /// there is no file (nothing routed yet). A file that cannot be read or is
    /// not one greenlight rendered (edited by hand, truncated) is an error,
    /// never "nothing routed": planning or reconciling on it would take the
    /// replicas nginx routes to for leftovers.
    pub fn current(&self, service: &str) -> std::result::Result<Option<Routing>, String> {
        let path = self.upstream_path(service);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        render::parse(&text).map(Some).ok_or_else(|| {
            format!(
                "{} is not an upstream file greenlight rendered (edited by hand?): \
                 greenlight will not plan or clean up on a routing it cannot read; \
                 put back the file it wrote, or fix the `# greenlight:` lines",
                path.display()
            )
        })
    }

    /// Atomically replaces the service's file with `routing` (or removes it
    /// when nothing is routed); returns the content it replaced.
    fn write(&self, routing: &Routing) -> Result<Option<String>> {
        let path = self.upstream_path(&routing.service);
        let old = std::fs::read_to_string(&path).ok();
        self.put(
            &path,
            (!routing.backends.is_empty()).then(|| render::render(routing)),
        )?;
        Ok(old)
    }

    fn put(&self, path: &Path, text: Option<String>) -> Result<()> {
        match text {
            Some(text) => write_atomic(path, &text),
            None => match std::fs::remove_file(path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(source) => Err(ProxyError::Write {
                    path: path.to_path_buf(),
                    source,
                }),
            },
        }
    }

    /// Makes nginx route by `routing`: writes its file and reloads. Returns
    /// the workers that ran before the reload (they may still route by the
    /// previous file until they exit). On any failure the previous file is put
    /// back and nginx is left as it was.
    ///
    /// `nginx -s reload` parses the whole configuration before it signals the
    /// master and refuses one it cannot parse, so a separate `nginx -t` first
    /// would only parse it twice; when the reload is refused, `nginx -t` says
    /// why. What parsing cannot catch, the verify after the reload does.
    pub async fn apply(&self, routing: &Routing) -> Result<Vec<u32>> {
        let old_workers = self.control.workers().await?;
        let path = self.upstream_path(&routing.service);
        let previous = self.write(routing)?;
        let outcome = match self.control.reload().await {
            Ok(()) => Ok(()),
            Err(refused) => match self.control.test().await {
                Err(test) => Err(test),
                Ok(_) => Err(refused),
            },
        };
        if let Err(e) = outcome {
            // A failed reload leaves the master on its old config: so must the file.
            return Err(match self.put(&path, previous) {
                Ok(()) => annotate(e, "the previous upstream file is back in place"),
                Err(w) => annotate(
                    e,
                    &format!("putting the previous file back failed too: {w}"),
                ),
            });
        }
        Ok(old_workers)
    }

    /// Makes nginx route by the rendered files again (after a restart of
    /// greenlight or of nginx); returns the workers that ran before.
    pub async fn reload_as_rendered(&self) -> Result<Vec<u32>> {
        let old_workers = self.control.workers().await?;
        self.control.test().await?;
        self.control.reload().await?;
        Ok(old_workers)
    }

    /// `nginx -t` over the whole configuration.
    /// `nginx -T`: the whole configuration as nginx reads it.
    pub async fn dump(&self) -> Result<String> {
        self.control.dump().await
    }

    pub async fn test(&self) -> Result<String> {
        self.control.test().await
    }

    /// Removes temp files a crash may have left in the upstreams directory, and
    /// the `.previous` copies older versions kept.
    pub fn remove_stray_files(&self) -> usize {
        let Ok(dir) = std::fs::read_dir(&self.cfg.upstreams_dir) else {
            return 0;
        };
        dir.flatten()
            .filter(|e| {
                let name = e.file_name();
                let name = name.to_string_lossy();
                name.starts_with(".greenlight-tmp") || name.ends_with(".conf.previous")
            })
            .filter(|e| std::fs::remove_file(e.path()).is_ok())
            .count()
    }

    /// Proves that nginx runs `routing`: for each backend index in `prove`, a
    /// request through that backend's private upstream (a name only this
    /// render has) must be answered by that backend with a 2xx. With nothing to
    /// prove (a render that only removes), one remaining backend proves the
    /// render took. A reload is asynchronous, so this polls.
    pub async fn verify(&self, routing: &Routing, prove: &[usize], path: &str) -> Result<Duration> {
        let start = Instant::now();
        let fallback = [0];
        let prove = if prove.is_empty() && !routing.backends.is_empty() {
            &fallback[..]
        } else {
            prove
        };
        for &i in prove {
            let expected = &routing.backends[i].address;
            self.verify_one(
                &routing.service,
                &routing.private_upstream(i),
                path,
                expected,
                start,
            )
            .await?;
        }
        Ok(start.elapsed())
    }

    async fn verify_one(
        &self,
        service: &str,
        upstream: &str,
        path: &str,
        expected: &str,
        start: Instant,
    ) -> Result<()> {
        let url = format!("{}{}", self.cfg.verify_url.trim_end_matches('/'), path);
        let mut wait = VERIFY_POLL;
        loop {
            let answer = self
                .http
                .get(&url)
                .header(SERVICE_HEADER, upstream)
                .send()
                .await;
            let seen = match answer {
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
                    // The backend answered through nginx, badly: that is a
                    // verdict, not a reload still in progress.
                    if last == expected {
                        return Err(ProxyError::Verify {
                            service: service.into(),
                            expected: expected.into(),
                            waited: start.elapsed(),
                            seen: format!("HTTP {} from the new replica", resp.status()),
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
            tokio::time::sleep(wait).await;
            if start.elapsed() > VERIFY_FAST_FOR {
                wait = (wait * 2).min(POLL);
            }
        }
    }

    /// PIDs of nginx's worker processes, old and new.
    pub async fn workers(&self) -> Result<Vec<u32>> {
        self.control.workers().await
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

fn annotate(e: ProxyError, note: &str) -> ProxyError {
    match e {
        ProxyError::Test(t) => ProxyError::Test(format!("{t} ({note})")),
        ProxyError::Reload(t) => ProxyError::Reload(format!("{t} ({note})")),
        ProxyError::Run(t) => ProxyError::Run(format!("{t} ({note})")),
        other => other,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_are_atomic_and_leave_no_temp_file() {
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
