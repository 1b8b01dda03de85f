//! The release binary of greenlight, the config the benchmarks run it with, and memory
//! sampling from /proc. The process handle itself is testkit's
//! [`greenlight_testkit::greenlight::Greenlight`].

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use greenlight_testkit::env::{workspace_root, Nginx, NotifyEndpoint, Registry, RegistryOpts};
pub use greenlight_testkit::greenlight::{http_ok, stop_child, Greenlight};

pub const TOKEN: &str = "bench-admin-token-0123456789";
pub const GITHUB_SECRET: &str = "bench-github-secret";
pub const REGISTRY_TOKEN: &str = "bench-registry-token";

/// The config of one service of local images (`pull = false`) behind `nginx`,
/// with `service_lines` in its table and `rollout_lines` in its `[service.rollout]`.
pub fn local_service_config(
    nginx: &Nginx,
    service: &str,
    repo: &str,
    service_lines: &str,
    rollout_lines: &str,
) -> String {
    config_for(
        nginx,
        &[ServiceSpec {
            name: service.to_string(),
            image: repo.to_string(),
            network: format!("{service}-net"),
            extra: format!("pull = false\n{service_lines}"),
        }],
        "ghcr.io",
    )
    .replacen(
        "keep_images = 2\n",
        &format!("keep_images = 2\n{rollout_lines}"),
        1,
    )
}

/// Asks `gl` to deploy `tag` of `service` through its admin API; the deployment's id.
pub async fn deploy_tag(
    client: &reqwest::Client,
    gl: &Greenlight,
    service: &str,
    tag: &str,
) -> Result<i64> {
    let v: serde_json::Value = client
        .post(format!("{}/api/services/{service}/deploy", gl.url()))
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({ "tag": tag }))
        .send()
        .await?
        .json()
        .await?;
    v["deployment"]
        .as_i64()
        .with_context(|| format!("deploy refused: {v}"))
}

/// A registry that notifies the greenlight listening on `gl_port` of each push.
pub fn notifying_registry(gl_port: u16) -> Result<Registry> {
    Registry::start(RegistryOpts {
        notify: Some(NotifyEndpoint {
            url: format!("http://127.0.0.1:{gl_port}/hooks/registry"),
            token: REGISTRY_TOKEN.into(),
        }),
        ..Default::default()
    })
}

/// Builds `greenlight` in release (a no-op when up to date) and returns its path.
/// `GREENLIGHT_BIN` overrides both.
pub fn greenlight_binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("GREENLIGHT_BIN") {
        return Ok(PathBuf::from(path));
    }
    let root = workspace_root();
    let binary = root.join("target/release/greenlight");
    if is_fresh(&binary, &root) {
        return Ok(binary);
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!("building greenlight (cargo build --release --bin greenlight) ...");
    let status = Command::new(cargo)
        .args([
            "build",
            "--release",
            "--bin",
            "greenlight",
            "--manifest-path",
        ])
        .arg(root.join("Cargo.toml"))
        .env_remove("CARGO_TARGET_DIR")
        .stdin(Stdio::null())
        .status()
        .context("cannot run cargo")?;
    ensure!(status.success(), "cargo build of greenlight failed");
    ensure!(binary.is_file(), "{} was not built", binary.display());
    Ok(binary)
}

/// Whether `binary` exists and is newer than every file of the product's sources.
fn is_fresh(binary: &Path, root: &Path) -> bool {
    fn newest(path: &Path) -> Option<std::time::SystemTime> {
        let meta = std::fs::metadata(path).ok()?;
        if meta.is_dir() {
            std::fs::read_dir(path)
                .ok()?
                .flatten()
                .filter_map(|e| newest(&e.path()))
                .max()
        } else {
            meta.modified().ok()
        }
    }
    let Some(built) = std::fs::metadata(binary).and_then(|m| m.modified()).ok() else {
        return false;
    };
    ["src", "Cargo.toml", "Cargo.lock"]
        .iter()
        .filter_map(|p| newest(&root.join(p)))
        .all(|t| t <= built)
}

pub use greenlight_testkit::greenlight::ServiceSpec;

/// A greenlight config for `nginx` and `services`, with webhooks configured.
pub fn config_for(nginx: &Nginx, services: &[ServiceSpec], github_registry_host: &str) -> String {
    let mut text = greenlight_testkit::greenlight::config_for(nginx, TOKEN, services);
    text.push_str(&format!(
        r#"
[webhooks]
github_secrets = ["{GITHUB_SECRET}"]
registry_token = "{REGISTRY_TOKEN}"
github_registry_host = "{github_registry_host}"
"#
    ));
    text
}

/// `(VmRSS, VmHWM)` of a process in KiB, from /proc/<pid>/status.
pub fn rss_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        status
            .lines()
            .find(|l| l.starts_with(name))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// Samples a process's VmRSS every 50 ms on its own thread; `stop` returns the largest
/// sample and the kernel's VmHWM (peak since the process started), in KiB.
pub struct RssSampler {
    pid: u32,
    stop: Arc<AtomicBool>,
    handle: thread::JoinHandle<u64>,
}

impl RssSampler {
    pub fn start(pid: u32) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let handle = thread::spawn(move || {
            let mut max = 0;
            while !flag.load(Ordering::Relaxed) {
                if let Some((rss, _)) = rss_kib(pid) {
                    max = max.max(rss);
                }
                thread::sleep(Duration::from_millis(50));
            }
            max
        });
        RssSampler { pid, stop, handle }
    }

    pub fn stop(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        let max = self.handle.join().unwrap_or(0);
        let hwm = rss_kib(self.pid).map(|(_, h)| h).unwrap_or(0);
        (max, hwm)
    }
}

pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}
