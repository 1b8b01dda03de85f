//! A real `greenlight serve` child process, given the path of its binary.
//!
//! The benchmark uses it with the release binary; an integration test can pass
//! `env!("CARGO_BIN_EXE_greenlight")`. The config text may hold `{listen}` and `{state}`,
//! which become `127.0.0.1:<port>` and a SQLite file in the process's own temp dir.
//!
//! ```no_run
//! use greenlight_testkit::{env::free_port, greenlight::Greenlight};
//! # fn main() -> anyhow::Result<()> {
//! let config = "[server]\nlisten = \"{listen}\"\nstate = \"{state}\"\n# ...\n";
//! let binary = std::path::Path::new("target/release/greenlight");
//! let gl = Greenlight::spawn(binary, free_port(), config, None)?;
//! println!("ready after {:?} at {}", gl.ready_after, gl.url());
//! # Ok(()) }
//! ```

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::env::Nginx;

/// How long a started greenlight may take to answer `/healthz` with 200.
pub const READY_DEADLINE: Duration = Duration::from_secs(60);

/// How long a stopped greenlight may take to exit after SIGTERM before it is killed.
pub const STOP_DEADLINE: Duration = Duration::from_secs(10);

/// A running `greenlight serve`: SIGTERM (then SIGKILL) on drop.
pub struct Greenlight {
    /// Its temp dir: `greenlight.toml`, `state.db`, `greenlight.log`.
    pub dir: tempfile::TempDir,
    /// The port it listens on, on 127.0.0.1.
    pub port: u16,
    /// From spawn to the first `200` from `/healthz`.
    pub ready_after: Duration,
    child: Child,
}

impl Greenlight {
    /// Writes `config` (`{listen}` and `{state}` filled in) into a new temp dir, starts
    /// `binary --config <it> serve` listening on `port`, and waits (at most
    /// [`READY_DEADLINE`]) until `/healthz` answers 200. `rust_log`: `None` removes
    /// `RUST_LOG`, so greenlight logs at its default level (`info`).
    pub fn spawn(binary: &Path, port: u16, config: &str, rust_log: Option<&str>) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("greenlight-").tempdir()?;
        let config = config
            .replace("{listen}", &format!("127.0.0.1:{port}"))
            .replace(
                "{state}",
                &dir.path().join("state.db").display().to_string(),
            );
        let config_path = dir.path().join("greenlight.toml");
        std::fs::write(&config_path, config)?;
        let log = std::fs::File::create(dir.path().join("greenlight.log"))?;
        let mut command = Command::new(binary);
        command
            .arg("--config")
            .arg(&config_path)
            .arg("serve")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log));
        match rust_log {
            Some(filter) => command.env("RUST_LOG", filter),
            None => command.env_remove("RUST_LOG"),
        };
        let started = Instant::now();
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let mut gl = Greenlight {
            dir,
            port,
            ready_after: Duration::ZERO,
            child,
        };
        loop {
            if http_ok(port, "/healthz") {
                gl.ready_after = started.elapsed();
                return Ok(gl);
            }
            if let Some(status) = gl.child.try_wait()? {
                bail!("greenlight exited with {status} at start:\n{}", gl.log());
            }
            if started.elapsed() > READY_DEADLINE {
                bail!("greenlight did not become ready:\n{}", gl.log());
            }
            thread::sleep(Duration::from_millis(2));
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Its log (stdout and stderr) so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("greenlight.log")).unwrap_or_default()
    }
}

impl Drop for Greenlight {
    fn drop(&mut self) {
        stop_child(&mut self.child);
    }
}

/// SIGTERM, up to [`STOP_DEADLINE`] to exit, then SIGKILL; reaps the child.
pub fn stop_child(child: &mut Child) {
    if let Ok(None) = child.try_wait() {
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + STOP_DEADLINE;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
    }
    let _ = child.wait();
}

/// A readiness check from synchronous code: `GET path` on `127.0.0.1:port` answers 200.
/// A finished command for an assertion message: its exit code, stdout and stderr.
pub fn describe(out: &std::process::Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The `greenlight` CLI's own environment variables removed from `command`, so a
/// test's run sees what a fresh shell would.
pub fn without_greenlight_env(command: &mut Command) -> &mut Command {
    command
        .env_remove("GREENLIGHT_CONFIG")
        .env_remove("GREENLIGHT_TOKEN")
        .env_remove("GREENLIGHT_URL")
}

pub fn http_ok(port: u16, path: &str) -> bool {
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 12];
    s.read_exact(&mut buf).is_ok() && buf.ends_with(b"200")
}

/// A service in a generated config; `extra` is added to its `[[service]]` table.
pub struct ServiceSpec {
    pub name: String,
    pub image: String,
    pub network: String,
    pub extra: String,
}

/// A greenlight config for `nginx` (host or container mode) and `services`, with
/// quick health checks and short grace periods for tests and benchmarks;
/// `{listen}` and `{state}` are left for [`Greenlight::spawn`] to fill.
pub fn config_for(nginx: &Nginx, admin_token: &str, services: &[ServiceSpec]) -> String {
    let nginx_section = match nginx.container_name() {
        Some(name) => format!(
            "mode = \"container\"\ncontainer = \"{name}\"\nconfig = \"{}\"\n",
            nginx.config_path_in_runtime().display()
        ),
        None => format!(
            "mode = \"host\"\nbinary = \"/usr/sbin/nginx\"\nconfig = \"{}\"\nprefix = \"{}\"\n",
            nginx.conf_path().display(),
            nginx.dir().display()
        ),
    };
    let mut text = format!(
        r#"[server]
listen = "{{listen}}"
admin_token = "{admin_token}"
state = "{{state}}"

[nginx]
{nginx_section}upstreams_dir = "{}"
verify_url = "{}"
verify_timeout = "10s"
drain_timeout = "20s"
access_log = "{}"
"#,
        nginx.upstreams_dir().display(),
        nginx.verify_url(),
        nginx.access_log_path().display()
    );
    for s in services {
        text.push_str(&format!(
            r#"
[[service]]
name = "{}"
image = "{}"
port = 8080
network = "{}"
{}
[service.health]
path = "/healthz"
interval = "100ms"
timeout = "1s"
healthy_after = 3
deadline = "10s"

[service.rollout]
stop_grace = "5s"
keep_images = 2
"#,
            s.name, s.image, s.network, s.extra
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn http_ok_wants_a_200() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = thread::spawn(move || {
            for reply in ["HTTP/1.0 200 OK\r\n\r\n", "HTTP/1.0 503 Busy\r\n\r\n"] {
                let (mut s, _) = listener.accept().unwrap();
                let mut buf = [0u8; 256];
                let _ = s.read(&mut buf);
                s.write_all(reply.as_bytes()).unwrap();
            }
        });
        assert!(http_ok(port, "/healthz"));
        assert!(!http_ok(port, "/healthz"));
        server.join().unwrap();
    }

    #[test]
    fn a_binary_that_exits_at_start_is_reported_with_its_log() {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let err = Greenlight::spawn(Path::new("/bin/false"), port, "{listen}", None)
            .err()
            .expect("/bin/false never becomes ready");
        assert!(format!("{err:#}").contains("exited"), "{err:#}");
    }
}
