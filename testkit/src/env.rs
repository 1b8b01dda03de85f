//! Real parts for integration tests: demo images, a Distribution registry, nginx.
//!
//! Everything here is synchronous (plain `std::process::Command` around the docker CLI
//! and the host binaries) and short enough to call from a `#[tokio::test]` body. Every
//! part is isolated per test (names from a caller-given prefix, see [`unique_prefix`],
//! free ports, its own temp directory) and is stopped and removed in `Drop`, so a
//! panicking test cleans up too.
//!
//! ```no_run
//! use greenlight_testkit::env::*;
//!
//! # fn main() -> anyhow::Result<()> {
//! let prefix = unique_prefix("swap");
//! let _cleanup = DockerCleanup::new(&prefix);
//! let registry = Registry::start(RegistryOpts::default())?;
//! build_demo_image("greenlight-demo:v1", "v1", DemoImageOpts::default())?;
//! let digest = registry.push("greenlight-demo:v1", "demo/app", "latest")?;
//! let app = format!("{prefix}app");
//! let nginx = Nginx::host(&prefix, &[&app])?;
//! // ... run greenlight against registry.host(), nginx.upstreams_dir(), ...
//! # Ok(()) }
//! ```
//!
//! Only the tests use the docker CLI; the product talks to the engine API.

use std::fmt::Write as _;
use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use tempfile::TempDir;

/// How long a started part (registry, nginx) may take to answer before start fails.
pub const START_DEADLINE: Duration = Duration::from_secs(20);

/// How long a stopped host process may take to exit before it is killed.
const STOP_DEADLINE: Duration = Duration::from_secs(5);

/// Timeout of each of the small HTTP requests this module makes itself.
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);

/// Attempts at starting a part on a fresh free port (another process may grab a port
/// between [`free_port`] and the part binding it).
const PORT_ATTEMPTS: usize = 3;

/// Tag of the nginx image built by [`host_nginx_image`].
pub const HOST_NGINX_IMAGE: &str = "greenlight-test-nginx:host";

/// Where nginx's config directory is mounted inside the [`Nginx::container`] container.
pub const CONTAINER_CONFIG_DIR: &str = "/etc/greenlight-nginx";

/// Port nginx listens on inside the container, for the site.
pub const CONTAINER_PORT: u16 = 8080;

/// Port nginx listens on inside the container, for the verify server.
pub const CONTAINER_VERIFY_PORT: u16 = 8099;

/// The Docker label greenlight puts on the containers it runs, valued with the service.
pub const SERVICE_LABEL: &str = "greenlight.service";

/// Where the static demo binary is built (kept apart from `target/` so that building it
/// from inside `cargo test`, which holds the lock on `target/`, cannot deadlock).
const DEMO_TARGET_DIR: &str = "target/demo-static";
const DEMO_TARGET: &str = "x86_64-unknown-linux-gnu";

// ---------------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------------

/// A TCP port on 127.0.0.1 that was free a moment ago (bind port 0, read, release).
///
/// Ports come from 20000-32767, below Linux's ephemeral range (32768-60999): a
/// port the kernel hands out for bind(0) can be taken by any outgoing connection
/// (a load probe opens thousands) before the test's server binds it.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let span = 12_768u32;
    let start =
        (std::process::id().wrapping_mul(7919) + NEXT.fetch_add(1, Ordering::Relaxed) * 131) % span;
    for i in 0..span {
        let port = (20_000 + (start + i * 37) % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            NEXT.fetch_add(1, Ordering::Relaxed);
            return port;
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("bind 127.0.0.1:0")
}

/// The workspace root (the parent of the testkit crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit lives inside the workspace")
        .to_path_buf()
}

/// A name prefix unique to this test in this process: `<name>-<pid>-<n>-`.
///
/// `name` is lowercased and anything but `[a-z0-9-]` becomes `-`, so the prefix is valid
/// in container, network and nginx upstream names. Name services `<prefix>app` etc. and
/// pass the prefix to [`DockerCleanup`].
pub fn unique_prefix(name: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let clean: String = name
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let clean = clean.trim_matches('-');
    let clean = if clean.is_empty() { "gl" } else { clean };
    format!(
        "{clean}-{}-{}-",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs the docker CLI and returns its stdout (trailing whitespace trimmed); the error
/// names the command and carries its stderr.
pub fn docker(args: &[&str]) -> Result<String> {
    let output = Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("cannot run the docker CLI: is it installed?")?;
    if !output.status.success() {
        bail!(
            "`docker {}` failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout)
        .trim_end()
        .to_string())
}

/// Polls `check` until it returns `Some`, failing after `deadline`.
fn wait_for<T>(
    what: &str,
    deadline: Duration,
    mut check: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let started = Instant::now();
    let mut pause = Duration::from_millis(5);
    loop {
        if let Some(value) = check()? {
            return Ok(value);
        }
        if started.elapsed() > deadline {
            bail!("timed out after {deadline:?} waiting for {what}");
        }
        thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// A response to one of this module's own small requests.
#[derive(Debug)]
struct HttpReply {
    status: u16,
    headers: Vec<(String, String)>,
}

impl HttpReply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One plain-HTTP request on a fresh connection (`Connection: close`); reads the status
/// line and headers. Enough for probing loopback servers without an async client.
fn http_request(
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<HttpReply> {
    let mut stream = TcpStream::connect(host)?;
    stream.set_read_timeout(Some(HTTP_TIMEOUT))?;
    stream.set_write_timeout(Some(HTTP_TIMEOUT))?;
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (name, value) in headers {
        let _ = write!(request, "{name}: {value}\r\n");
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes())?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    while !raw.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&raw);
    let head = text.split("\r\n\r\n").next().unwrap_or("");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .filter(|_| status_line.starts_with("HTTP/"))
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("not an HTTP response: {status_line:?}"),
            )
        })?;
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    Ok(HttpReply { status, headers })
}

/// A temp dir that nginx workers (not root) can traverse; `tempfile` makes them 0700.
fn shared_tempdir(prefix: &str) -> Result<TempDir> {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .context("cannot create a temp dir")?;
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))?;
    Ok(dir)
}

fn read_lossy(path: &Path) -> String {
    fs::read(path)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default()
}

/// Sends `signal` to a process.
fn send_signal(pid: u32, signal: i32) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(pid as libc::pid_t, signal);
    }
}

/// Pids of the live children of `parent` (from /proc/*/stat).
fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            // "pid (comm) state ppid ...": comm may contain spaces, so split after ')'.
            fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    let ppid = stat.rsplit_once(')')?.1.split_whitespace().nth(1)?;
                    ppid.parse::<u32>().ok()
                })
                == Some(parent)
        })
        .collect()
}

/// Stops a child process: `signal`, `grace` to exit, then SIGKILL to it and to its own
/// children (nginx workers outlive a killed master).
///
/// Children stay in the test's process group on purpose: a Ctrl-C of `cargo test`,
/// which runs no destructors, then stops them too.
fn stop_process(child: &mut Child, signal: i32, grace: Duration) {
    if let Ok(None) = child.try_wait() {
        send_signal(child.id(), signal);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(10));
        }
        // Listed while the master still lives: orphans would be reparented.
        let children = children_of(child.id());
        let _ = child.kill();
        for pid in children {
            send_signal(pid, libc::SIGKILL);
        }
    }
    let _ = child.wait();
}

// ---------------------------------------------------------------------------------
// The demo app
// ---------------------------------------------------------------------------------

/// Builds the static `greenlight-demo` binary (once per process) and returns its path.
///
/// Runs `cargo build --release -p greenlight-demo --target x86_64-unknown-linux-gnu`
/// with `-C target-feature=+crt-static` into `<workspace>/target/demo-static`; cargo's
/// lock on that directory makes concurrent test processes safe. Panics if the build
/// fails (nothing else can run without it).
pub fn demo_binary() -> PathBuf {
    static BINARY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BINARY
        .get_or_init(|| build_demo_binary().map_err(|e| format!("{e:#}")))
        .clone()
        .unwrap_or_else(|e| panic!("cannot build the demo binary: {e}"))
}

fn build_demo_binary() -> Result<PathBuf> {
    let root = workspace_root();
    let target_dir = root.join(DEMO_TARGET_DIR);
    let cargo = std::env::var_os("CARGO")
        .or_else(|| option_env!("CARGO").map(Into::into))
        .unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo)
        .args([
            "build",
            "--release",
            "-p",
            "greenlight-demo",
            "--target",
            DEMO_TARGET,
        ])
        .arg("--manifest-path")
        .arg(root.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        // The outer cargo's settings must not leak in: CARGO_ENCODED_RUSTFLAGS would
        // win over RUSTFLAGS, and a jobserver from MAKEFLAGS is not ours to use.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("CARGO_MAKEFLAGS")
        .env_remove("MAKEFLAGS")
        .env_remove("MFLAGS")
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .stdin(Stdio::null())
        .output()
        .context("cannot run cargo")?;
    if !output.status.success() {
        bail!(
            "cargo build of greenlight-demo failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let binary = target_dir
        .join(DEMO_TARGET)
        .join("release")
        .join("greenlight-demo");
    anyhow::ensure!(binary.is_file(), "{} was not built", binary.display());
    Ok(binary)
}

/// Variations of the demo image.
#[derive(Debug, Clone, Default)]
pub struct DemoImageOpts {
    /// Add `HEALTHCHECK --interval=1s --timeout=2s --retries=3 CMD
    /// ["/greenlight-demo","--probe","http://127.0.0.1:8080/healthz"]`.
    pub healthcheck: bool,
    /// `ENV` lines baked into the image, e.g. `DEMO_UNHEALTHY=1` for a never-healthy
    /// image or `DEMO_EXIT_AFTER_MS=500` for one that crashes.
    pub env: Vec<(String, String)>,
}

/// Builds the demo image `tag` reporting `version` (`DEMO_VERSION`), from
/// `demo/Dockerfile` plus the options. Distinct versions give distinct image digests;
/// rebuilding the same inputs is a cache hit.
pub fn build_demo_image(tag: &str, version: &str, opts: DemoImageOpts) -> Result<()> {
    let binary = demo_binary();
    let dockerfile_path = workspace_root().join("demo/Dockerfile");
    let base = fs::read_to_string(&dockerfile_path)
        .with_context(|| format!("cannot read {}", dockerfile_path.display()))?;
    let dockerfile = demo_dockerfile(&base, &opts)?;

    let context = tempfile::Builder::new()
        .prefix("greenlight-demo-image-")
        .tempdir()?;
    fs::copy(&binary, context.path().join("greenlight-demo"))
        .with_context(|| format!("cannot copy {}", binary.display()))?;
    fs::write(context.path().join("Dockerfile"), dockerfile)?;
    let build = |cache: bool| {
        let mut cmd = Command::new("docker");
        cmd.args(["build", "--quiet", "--tag", tag, "--build-arg"])
            .arg(format!("VERSION={version}"));
        if !cache {
            cmd.arg("--no-cache");
        }
        cmd.arg(context.path())
            // The legacy builder: FROM scratch needs no pulls, and there is no buildx.
            .env("DOCKER_BUILDKIT", "0")
            .stdin(Stdio::null())
            .output()
            .context("cannot run docker build")
    };
    let mut output = build(true)?;
    // The legacy builder's cache hands out intermediate images by id; a
    // concurrent test's greenlight pruning its own repository removes the
    // untagged parents of what it removes, which may be the very layers a
    // cache hit just chose ("unable to find image sha256:..."). Build those
    // layers afresh once, then.
    if !output.status.success()
        && String::from_utf8_lossy(&output.stderr).contains("unable to find image")
    {
        output = build(false)?;
    }
    if !output.status.success() {
        bail!(
            "docker build of {tag} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// `demo/Dockerfile` with the options' instructions inserted just before `ARG VERSION`,
/// so images of different versions share every layer but the last.
fn demo_dockerfile(base: &str, opts: &DemoImageOpts) -> Result<String> {
    let mut extra = String::new();
    if opts.healthcheck {
        extra.push_str(
            "HEALTHCHECK --interval=1s --timeout=2s --retries=3 \
             CMD [\"/greenlight-demo\",\"--probe\",\"http://127.0.0.1:8080/healthz\"]\n",
        );
    }
    for (name, value) in &opts.env {
        anyhow::ensure!(
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "bad environment variable name {name:?}"
        );
        let quoted = value.replace('\\', "\\\\").replace('"', "\\\"");
        let _ = writeln!(extra, "ENV {name}=\"{quoted}\"");
    }
    let mut out = String::new();
    let mut inserted = false;
    for line in base.lines() {
        if !inserted && line.trim_start().starts_with("ARG VERSION") {
            out.push_str(&extra);
            inserted = true;
        }
        out.push_str(line);
        out.push('\n');
    }
    anyhow::ensure!(inserted, "demo/Dockerfile has no `ARG VERSION` line");
    Ok(out)
}

// ---------------------------------------------------------------------------------
// Registry
// ---------------------------------------------------------------------------------

/// Where the registry sends its notifications.
#[derive(Debug, Clone)]
pub struct NotifyEndpoint {
    /// E.g. greenlight's `http://127.0.0.1:PORT/hooks/...` endpoint.
    pub url: String,
    /// Sent as `Authorization: Bearer <token>`.
    pub token: String,
}

/// A user the registry accepts with HTTP basic auth.
#[derive(Debug, Clone)]
pub struct BasicAuth {
    pub username: String,
    pub password: String,
}

/// How to start the [`Registry`].
#[derive(Debug, Clone, Default)]
pub struct RegistryOpts {
    /// Adds a `notifications.endpoints` entry (timeout 1s, threshold 5, backoff 1s).
    pub notify: Option<NotifyEndpoint>,
    /// Requires this user for every request (Distribution's `auth.htpasswd`, a
    /// bcrypt htpasswd file). Works over plain HTTP: Distribution does not insist on
    /// TLS, and Docker sends basic auth to 127.0.0.0/8 registries without it.
    pub auth: Option<BasicAuth>,
}

/// A CNCF Distribution registry (Debian's `/usr/bin/docker-registry`) on
/// `127.0.0.1:<free port>`, storing in its own temp dir. Killed on drop, which also
/// removes the local image tags pointing at it.
///
/// Docker treats 127.0.0.0/8 registries as insecure, so plain HTTP works for push and
/// pull without any daemon configuration, with or without [`RegistryOpts::auth`].
pub struct Registry {
    child: Child,
    port: u16,
    dir: TempDir,
    auth: Option<BasicAuth>,
}

/// Path of the registry binary.
pub const REGISTRY_BINARY: &str = "/usr/bin/docker-registry";

impl Registry {
    /// Starts the registry and waits until `GET /v2/` answers.
    pub fn start(opts: RegistryOpts) -> Result<Registry> {
        let dir = tempfile::Builder::new()
            .prefix("greenlight-registry-")
            .tempdir()?;
        if let Some(auth) = &opts.auth {
            fs::write(dir.path().join("htpasswd"), htpasswd_line(auth)?)?;
        }
        let mut last_error = None;
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port();
            match Registry::start_on(&dir, port, &opts) {
                Ok(child) => {
                    let registry = Registry {
                        child,
                        port,
                        dir,
                        auth: opts.auth.clone(),
                    };
                    registry.login()?;
                    return Ok(registry);
                }
                Err(err) => {
                    let in_use = format!("{err:#}").contains("address already in use");
                    last_error = Some(err);
                    if !in_use {
                        break;
                    }
                }
            }
        }
        Err(last_error.expect("at least one attempt"))
    }

    fn start_on(dir: &TempDir, port: u16, opts: &RegistryOpts) -> Result<Child> {
        let config_path = dir.path().join("config.yml");
        let log_path = dir.path().join("registry.log");
        fs::write(&config_path, registry_config(dir.path(), port, opts))?;
        let log = fs::File::create(&log_path)?;
        let mut child = Command::new(REGISTRY_BINARY)
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // REGISTRY_* variables override the config file.
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .spawn()
            .with_context(|| {
                format!("cannot start {REGISTRY_BINARY} (apt-get install docker-registry)")
            })?;
        let host = format!("127.0.0.1:{port}");
        let authorization = opts.auth.as_ref().map(basic_authorization);
        let headers: Vec<(&str, &str)> = authorization
            .iter()
            .map(|value| ("Authorization", value.as_str()))
            .collect();
        let ready = wait_for("the registry to answer GET /v2/", START_DEADLINE, || {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "the registry exited ({status}) on start: {}",
                    read_lossy(&log_path)
                );
            }
            Ok(http_request(&host, "GET", "/v2/", &headers)
                .ok()
                .filter(|reply| reply.status == 200))
        });
        if let Err(err) = ready {
            stop_process(&mut child, libc::SIGKILL, STOP_DEADLINE);
            return Err(err);
        }
        Ok(child)
    }

    /// `127.0.0.1:PORT`, the registry part of image references.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.host())
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The registry's temp dir (config.yml, registry.log, data/).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The registry's log (its stdout and stderr) so far.
    pub fn log(&self) -> String {
        read_lossy(&self.dir.path().join("registry.log"))
    }

    /// The user the registry requires, if it requires one.
    pub fn auth(&self) -> Option<&BasicAuth> {
        self.auth.as_ref()
    }

    /// The docker CLI's config dir for this registry (its own, so a login here never
    /// touches `~/.docker/config.json` or another test's credentials).
    fn docker_config(&self) -> PathBuf {
        self.dir.path().join("docker-config")
    }

    /// `docker login` into [`Registry::docker_config`] when the registry requires a user.
    fn login(&self) -> Result<()> {
        let Some(auth) = &self.auth else {
            return Ok(());
        };
        let mut child = Command::new("docker")
            .env("DOCKER_CONFIG", self.docker_config())
            .args(["login", "--username", &auth.username, "--password-stdin"])
            .arg(self.host())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot run the docker CLI: is it installed?")?;
        child
            .stdin
            .take()
            .expect("stdin is piped")
            .write_all(auth.password.as_bytes())?;
        let output = child.wait_with_output()?;
        if !output.status.success() {
            bail!(
                "`docker login {}` failed ({}): {}\nregistry log:\n{}",
                self.host(),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim(),
                self.log()
            );
        }
        Ok(())
    }

    /// Tags `local_image` as `<host>/<repo>:<tag>`, pushes it, and returns the manifest
    /// digest (`sha256:...`) the registry now serves for `repo:tag`.
    ///
    /// The `<host>/<repo>:<tag>` tag is removed locally right after the push, so that a
    /// deployer really has to pull what it deploys.
    pub fn push(&self, local_image: &str, repo: &str, tag: &str) -> Result<String> {
        let remote = format!("{}/{repo}:{tag}", self.host());
        docker(&["tag", local_image, &remote])?;
        let pushed = if self.auth.is_some() {
            let config = self.docker_config();
            let config = config.to_str().context("temp dir path is not UTF-8")?;
            docker(&["--config", config, "push", &remote])
        } else {
            docker(&["push", &remote])
        };
        let _ = docker(&["rmi", &remote]);
        pushed.with_context(|| format!("registry log:\n{}", self.log()))?;
        self.digest(repo, tag)?
            .ok_or_else(|| anyhow!("{repo}:{tag} is not in the registry after a push"))
    }

    /// The manifest digest the registry serves for `repo:tag` (`None` if unknown), from
    /// the `Docker-Content-Digest` header of a HEAD accepting every manifest type.
    pub fn digest(&self, repo: &str, tag: &str) -> Result<Option<String>> {
        let accept = [
            "application/vnd.docker.distribution.manifest.v2+json",
            "application/vnd.docker.distribution.manifest.list.v2+json",
            "application/vnd.oci.image.index.v1+json",
            "application/vnd.oci.image.manifest.v1+json",
        ]
        .join(", ");
        let authorization = self.auth.as_ref().map(basic_authorization);
        let mut headers = vec![("Accept", accept.as_str())];
        if let Some(value) = &authorization {
            headers.push(("Authorization", value.as_str()));
        }
        let reply = http_request(
            &self.host(),
            "HEAD",
            &format!("/v2/{repo}/manifests/{tag}"),
            &headers,
        )
        .context("HEAD on the registry failed")?;
        match reply.status {
            200 => reply
                .header("docker-content-digest")
                .map(|d| Some(d.to_string()))
                .ok_or_else(|| anyhow!("the registry sent no Docker-Content-Digest")),
            404 => Ok(None),
            status => bail!("HEAD /v2/{repo}/manifests/{tag} answered {status}"),
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        stop_process(&mut self.child, libc::SIGKILL, STOP_DEADLINE);
        // Images pulled from this registry (by the deployer) would pile up otherwise.
        let prefix = format!("{}/", self.host());
        if let Ok(listing) = docker(&[
            "images",
            "--format",
            "{{.Repository}}:{{.Tag}} {{.Repository}}@{{.Digest}}",
        ]) {
            let references: Vec<&str> = listing
                .split_whitespace()
                .filter(|r| r.starts_with(&prefix) && !r.ends_with(":<none>"))
                .filter(|r| !r.ends_with("@<none>"))
                .collect();
            if !references.is_empty() {
                let mut args = vec!["rmi", "--force"];
                args.extend(references);
                let _ = docker(&args);
            }
        }
    }
}

fn registry_config(dir: &Path, port: u16, opts: &RegistryOpts) -> String {
    let mut config = format!(
        r#"version: 0.1
log:
  level: info
  formatter: text
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: {data}
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:{port}
  secret: greenlight-test-{port}
  headers:
    X-Content-Type-Options: [nosniff]
"#,
        data = dir.join("data").display(),
    );
    if let Some(notify) = &opts.notify {
        let _ = write!(
            config,
            r#"notifications:
  endpoints:
    - name: greenlight
      url: {url}
      headers:
        Authorization: [{auth}]
      timeout: 1s
      threshold: 5
      backoff: 1s
"#,
            url = yaml_string(&notify.url),
            auth = yaml_string(&format!("Bearer {}", notify.token)),
        );
    }
    if opts.auth.is_some() {
        let _ = write!(
            config,
            r#"auth:
  htpasswd:
    realm: greenlight-test
    path: {path}
"#,
            path = yaml_string(&dir.join("htpasswd").display().to_string()),
        );
    }
    config
}

/// `user:<bcrypt hash>`, the one htpasswd format Distribution reads. Cost 4 (the
/// lowest): the registry checks it on every request.
fn htpasswd_line(auth: &BasicAuth) -> Result<String> {
    anyhow::ensure!(
        !auth.username.is_empty() && !auth.username.contains([':', '\n']),
        "bad registry username {:?}",
        auth.username
    );
    let hash = bcrypt::hash(&auth.password, 4).context("bcrypt")?;
    Ok(format!("{}:{hash}\n", auth.username))
}

/// `Basic base64(user:password)`.
fn basic_authorization(auth: &BasicAuth) -> String {
    use base64::Engine as _;
    let pair = format!("{}:{}", auth.username, auth.password);
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}

/// A double-quoted YAML scalar (JSON string syntax is valid YAML).
fn yaml_string(text: &str) -> String {
    serde_json::to_string(text).expect("a string serializes")
}

// ---------------------------------------------------------------------------------
// nginx
// ---------------------------------------------------------------------------------

/// Builds the nginx image of the host's nginx (`nginx/build-image.sh`) once per process
/// and returns its tag, [`HOST_NGINX_IMAGE`].
pub fn host_nginx_image() -> Result<String> {
    static IMAGE: OnceLock<Result<String, String>> = OnceLock::new();
    IMAGE
        .get_or_init(|| {
            let script = workspace_root().join("nginx/build-image.sh");
            let output = Command::new("bash")
                .arg(&script)
                .arg(HOST_NGINX_IMAGE)
                .stdin(Stdio::null())
                .output()
                .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
            if !output.status.success() {
                return Err(format!(
                    "{} failed ({}): {}",
                    script.display(),
                    output.status,
                    String::from_utf8_lossy(&output.stderr).trim()
                ));
            }
            Ok(HOST_NGINX_IMAGE.to_string())
        })
        .clone()
        .map_err(|e| anyhow!(e))
}

/// Path of the host's nginx binary.
pub const NGINX_BINARY: &str = "/usr/sbin/nginx";

/// nginx serving a site on `127.0.0.1:<port>` and a verify server on
/// `127.0.0.1:<verify_port>`, either as a host process ([`Nginx::host`]) or as a
/// container ([`Nginx::container`]).
///
/// Its config directory holds `nginx.conf`, an empty `upstreams/` (where greenlight
/// writes `upstream <service> { ... }` files) and an empty `conf.d/`, both included from
/// the `http` block. The site routes `/` to the first service and `/<service>/` to the
/// others through `proxy_pass http://$greenlight_upstream` (a variable, so nginx starts
/// before any upstream file exists and answers 502 until one does). The verify server
/// is the shipped `nginx/greenlight-verify.conf` on this nginx's own port (in a
/// container: on all of the container's addresses, published on 127.0.0.1 only):
/// it proxies to the upstream named by the request's `X-Greenlight-Service`
/// header when that is a service name. Both add `X-Greenlight-Upstream:
/// $upstream_addr` to responses. The site logs each request to `access.json` in
/// the shipped format (`nginx/greenlight-log.conf`).
pub struct Nginx {
    dir: TempDir,
    port: u16,
    verify_port: u16,
    runtime: Runtime,
}

enum Runtime {
    Host {
        child: Child,
    },
    Container {
        name: String,
        /// The network, if this `Nginx` created it (and so removes it).
        created_network: Option<String>,
    },
}

/// Paths and addresses as nginx sees them, for rendering its config.
struct ConfigSite<'a> {
    /// The config directory as nginx sees it, without a trailing slash.
    root: &'a str,
    pid: String,
    listen: String,
    verify_listen: String,
    services: &'a [&'a str],
    /// A verify server of the test's own instead of the shipped one, with
    /// `{LISTEN}` where its address goes (to show what `check` says of it).
    verify: Option<&'a str>,
}

fn nginx_config(site: &ConfigSite) -> String {
    let root = site.root;
    let mut config = format!(
        "# Written by greenlight_testkit::env::Nginx.
daemon off;
master_process on;
worker_processes 2;
user www-data;
pid {pid};
error_log {root}/error.log info;

events {{
    worker_connections 1024;
}}

http {{
    access_log off;
    client_body_temp_path {root}/client_body_temp;
    proxy_temp_path {root}/proxy_temp;
    fastcgi_temp_path {root}/fastcgi_temp;
    uwsgi_temp_path {root}/uwsgi_temp;
    scgi_temp_path {root}/scgi_temp;

    include {root}/upstreams/*.conf;
    include {root}/conf.d/*.conf;

    # WebSockets pass (the design document's site does the same); other
    # requests keep upstream keep-alive (an empty Connection header).
    map $http_upgrade $connection_upgrade {{
        default upgrade;
        '' '';
    }}

    server {{
        # reuseport: after a reload the new workers take connections at once,
        # not only once the master has let the old ones go (100 ms later).
        listen {listen} reuseport;
        keepalive_timeout 65;
        # The shipped format (nginx/greenlight-log.conf, copied into conf.d/).
        access_log {root}/access.json greenlight;
",
        pid = site.pid,
        listen = site.listen,
    );
    for (i, service) in site.services.iter().enumerate() {
        let location = if i == 0 {
            "/".to_string()
        } else {
            format!("/{service}/")
        };
        let _ = write!(
            config,
            "
        location {location} {{
            set $greenlight_upstream {service};
            proxy_pass http://$greenlight_upstream;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_read_timeout 1h;
            add_header X-Greenlight-Upstream $upstream_addr always;
        }}
"
        );
    }
    let _ = write!(
        config,
        "    }}

{}
}}
",
        match site.verify {
            Some(custom) => custom.replace("{LISTEN}", &site.verify_listen),
            None => verify_server(&site.verify_listen),
        },
    );
    config
}

/// The shipped verify server, `nginx/greenlight-verify.conf`, as the README
/// tells users to include it; only its `listen` is this nginx's own.
pub const SHIPPED_VERIFY_CONF: &str = include_str!("../../nginx/greenlight-verify.conf");

/// [`SHIPPED_VERIFY_CONF`] listening on `listen` instead of 127.0.0.1:8099.
pub fn verify_server(listen: &str) -> String {
    let shipped = "listen 127.0.0.1:8099 reuseport;";
    assert!(
        SHIPPED_VERIFY_CONF.contains(shipped),
        "nginx/greenlight-verify.conf no longer says {shipped}"
    );
    SHIPPED_VERIFY_CONF.replace(shipped, &format!("listen {listen} reuseport;"))
}

/// Creates the config directory layout: `upstreams/`, `conf.d/`, `nginx.conf`.
fn write_nginx_dir(dir: &Path, site: &ConfigSite) -> Result<()> {
    fs::create_dir_all(dir.join("upstreams"))?;
    fs::create_dir_all(dir.join("conf.d"))?;
    fs::copy(
        workspace_root().join("nginx/greenlight-log.conf"),
        dir.join("conf.d/greenlight-log.conf"),
    )?;
    fs::write(dir.join("nginx.conf"), nginx_config(site))?;
    Ok(())
}

/// Whether nginx answers HTTP on `127.0.0.1:port` (any status).
fn answers_http(port: u16) -> bool {
    http_request(&format!("127.0.0.1:{port}"), "GET", "/", &[]).is_ok()
}

impl Nginx {
    /// Starts the host's nginx as a child process (`nginx -p DIR -c DIR/nginx.conf -e
    /// DIR/error.log`, `daemon off`) with its config in a new temp dir named
    /// `<dir_prefix>...`; waits until both ports answer.
    pub fn host(dir_prefix: &str, services: &[&str]) -> Result<Nginx> {
        Nginx::host_with(dir_prefix, services, None)
    }

    /// [`Nginx::host`] with `verify` (its address as `{LISTEN}`) as the verify
    /// server instead of the shipped one: an old or broken setup, for tests of
    /// what `greenlight check` says.
    pub fn host_with_verify(dir_prefix: &str, services: &[&str], verify: &str) -> Result<Nginx> {
        Nginx::host_with(dir_prefix, services, Some(verify))
    }

    fn host_with(dir_prefix: &str, services: &[&str], verify: Option<&str>) -> Result<Nginx> {
        anyhow::ensure!(!services.is_empty(), "nginx needs at least one service");
        let dir = shared_tempdir(dir_prefix)?;
        let root = dir
            .path()
            .to_str()
            .context("temp dir path is not UTF-8")?
            .to_string();
        let mut last_error = None;
        for _ in 0..PORT_ATTEMPTS {
            let (port, verify_port) = (free_port(), free_port());
            let site = ConfigSite {
                root: &root,
                pid: format!("{root}/nginx.pid"),
                listen: format!("127.0.0.1:{port}"),
                verify_listen: format!("127.0.0.1:{verify_port}"),
                services,
                verify,
            };
            write_nginx_dir(dir.path(), &site)?;
            match start_host_nginx(dir.path(), port, verify_port) {
                Ok(child) => {
                    return Ok(Nginx {
                        dir,
                        port,
                        verify_port,
                        runtime: Runtime::Host { child },
                    })
                }
                Err(err) => {
                    let in_use = format!("{err:#}").contains("Address already in use");
                    last_error = Some(err);
                    if !in_use {
                        break;
                    }
                }
            }
        }
        Err(last_error.expect("at least one attempt"))
    }

    /// Starts nginx in a container named `<prefix>-nginx` (a trailing `-` of the prefix
    /// is not doubled) from `image` (see [`host_nginx_image`]), attached to `network`
    /// (created if missing, and then removed on drop). The config directory is
    /// bind-mounted whole at [`CONTAINER_CONFIG_DIR`], so files written there on the host
    /// are what nginx reads; nginx listens on 8080 and 8099 inside, published on
    /// `127.0.0.1:<port>` and `127.0.0.1:<verify_port>`. Waits until both ports answer.
    pub fn container(prefix: &str, services: &[&str], network: &str, image: &str) -> Result<Nginx> {
        anyhow::ensure!(!services.is_empty(), "nginx needs at least one service");
        let name = format!("{}-nginx", prefix.trim_end_matches(['-', '_']));
        let dir = shared_tempdir(&format!("{name}-"))?;
        let site = ConfigSite {
            root: CONTAINER_CONFIG_DIR,
            pid: "/run/nginx.pid".to_string(),
            listen: format!("0.0.0.0:{CONTAINER_PORT}"),
            verify_listen: format!("0.0.0.0:{CONTAINER_VERIFY_PORT}"),
            services,
            verify: None,
        };
        write_nginx_dir(dir.path(), &site)?;

        let created_network = if docker(&["network", "inspect", network]).is_ok() {
            None
        } else {
            docker(&["network", "create", network])?;
            Some(network.to_string())
        };
        // From here on, drop removes the container and the network whatever happens.
        let mut nginx = Nginx {
            dir,
            port: 0,
            verify_port: 0,
            runtime: Runtime::Container {
                name: name.clone(),
                created_network,
            },
        };
        let mount = format!(
            "{}:{CONTAINER_CONFIG_DIR}",
            nginx
                .dir
                .path()
                .to_str()
                .context("temp dir path is not UTF-8")?
        );
        // Docker picks the host ports itself: no race with other tests for them.
        docker(&[
            "run",
            "--detach",
            "--name",
            &name,
            "--network",
            network,
            "--publish",
            &format!("127.0.0.1::{CONTAINER_PORT}"),
            "--publish",
            &format!("127.0.0.1::{CONTAINER_VERIFY_PORT}"),
            "--volume",
            &mount,
            image,
            "-p",
            &format!("{CONTAINER_CONFIG_DIR}/"),
            "-c",
            &format!("{CONTAINER_CONFIG_DIR}/nginx.conf"),
            "-e",
            &format!("{CONTAINER_CONFIG_DIR}/error.log"),
        ])?;
        nginx.port = published_port(&name, CONTAINER_PORT)?;
        nginx.verify_port = published_port(&name, CONTAINER_VERIFY_PORT)?;
        let (port, verify_port) = (nginx.port, nginx.verify_port);
        wait_for("the nginx container to answer", START_DEADLINE, || {
            let running = docker(&["inspect", "--format", "{{.State.Running}}", &name])?;
            if running != "true" {
                bail!(
                    "the nginx container {name} stopped: {}\n{}",
                    docker(&["logs", &name]).unwrap_or_default(),
                    nginx.error_log()
                );
            }
            Ok((answers_http(port) && answers_http(verify_port)).then_some(()))
        })?;
        Ok(nginx)
    }

    /// Stops nginx (gracefully: SIGQUIT) and starts it again on the same ports
    /// and files, as an operator's `systemctl restart nginx` or
    /// `docker restart` would. Waits until both ports answer again.
    pub fn restart(&mut self) -> Result<()> {
        match &mut self.runtime {
            Runtime::Host { child } => {
                stop_process(child, libc::SIGQUIT, STOP_DEADLINE);
                *child = start_host_nginx(self.dir.path(), self.port, self.verify_port)?;
            }
            Runtime::Container { name, .. } => {
                let name = name.clone();
                docker(&["restart", &name])?;
                self.port = published_port(&name, CONTAINER_PORT)?;
                self.verify_port = published_port(&name, CONTAINER_VERIFY_PORT)?;
                let (port, verify_port) = (self.port, self.verify_port);
                wait_for("the nginx container to answer", START_DEADLINE, || {
                    Ok((answers_http(port) && answers_http(verify_port)).then_some(()))
                })?;
            }
        }
        Ok(())
    }

    /// Changes the site as the README's canary section tells operators to,
    /// once greenlight has rendered each service's file: nginx's userid
    /// cookie on, and `proxy_pass http://$greenlight_<service>_upstream`, the
    /// group greenlight's split picks per user. Then reloads nginx (host
    /// mode) and waits until the site answers through the new config.
    pub fn use_canary_site(&self) -> Result<()> {
        let path = self.dir.path().join("nginx.conf");
        let text = fs::read_to_string(&path)?;
        let mut out = String::new();
        let mut lines = text.lines().peekable();
        while let Some(line) = lines.next() {
            if let Some(service) = line
                .trim()
                .strip_prefix("set $greenlight_upstream ")
                .and_then(|s| s.strip_suffix(';'))
            {
                let indent = &line[..line.len() - line.trim_start().len()];
                let var = format!("greenlight_{}_upstream", service.replace('-', "_"));
                for directive in [
                    "userid on;",
                    "userid_name greenlight_uid;",
                    "userid_path /;",
                    "userid_expires 365d;",
                    &format!("proxy_pass http://${var};"),
                ] {
                    out.push_str(&format!("{indent}{directive}\n"));
                }
                // The old proxy_pass line goes.
                if lines
                    .peek()
                    .is_some_and(|l| l.trim() == "proxy_pass http://$greenlight_upstream;")
                {
                    lines.next();
                }
                continue;
            }
            out.push_str(line);
            out.push('\n');
        }
        let child = self.write_config("use_canary_site", &text, &out)?;
        send_signal(child.id(), libc::SIGHUP);
        let port = self.port;
        wait_for(
            "the canary site to set its user cookie",
            START_DEADLINE,
            || {
                let answer = http_request(&format!("127.0.0.1:{port}"), "GET", "/", &[])?;
                Ok(answer
                    .header("set-cookie")
                    .is_some_and(|c| c.starts_with("greenlight_uid="))
                    .then_some(()))
            },
        )
    }

    /// Writes `out` (the site's config changed from `text`), tests the (host
    /// mode) nginx's config and returns its master process, for the caller
    /// to signal.
    fn write_config(&self, what: &str, text: &str, out: &str) -> Result<&Child> {
        let path = self.dir.path().join("nginx.conf");
        anyhow::ensure!(
            out != text,
            "no site location to change in {}",
            path.display()
        );
        let Runtime::Host { child } = &self.runtime else {
            bail!("{what}: host mode only");
        };
        fs::write(&path, out)?;
        let test = Command::new(NGINX_BINARY)
            .arg("-t")
            .arg("-p")
            .arg(self.dir.path())
            .arg("-c")
            .arg(self.dir.path().join("nginx.conf"))
            .arg("-e")
            .arg(self.dir.path().join("error.log"))
            .output()?;
        anyhow::ensure!(
            test.status.success(),
            "{what}: nginx -t refused the config: {}",
            String::from_utf8_lossy(&test.stderr)
        );
        Ok(child)
    }

    /// Adds `directive` (e.g. `proxy_connect_timeout 1s;`) to every location
    /// of the site, reloads nginx (host mode) and waits until new workers run
    /// the new config.
    pub fn add_to_site(&self, directive: &str) -> Result<()> {
        let path = self.dir.path().join("nginx.conf");
        let text = fs::read_to_string(&path)?;
        let mut out = String::new();
        for line in text.lines() {
            out.push_str(line);
            out.push('\n');
            if line.trim() == "proxy_read_timeout 1h;" {
                let indent = &line[..line.len() - line.trim_start().len()];
                out.push_str(&format!("{indent}{directive}\n"));
            }
        }
        let child = self.write_config("add_to_site", &text, &out)?;
        let workers = |master: u32| -> Vec<String> {
            fs::read_to_string(format!("/proc/{master}/task/{master}/children"))
                .unwrap_or_default()
                .split_whitespace()
                .map(str::to_string)
                .collect()
        };
        let before = workers(child.id());
        send_signal(child.id(), libc::SIGHUP);
        wait_for("nginx's new workers", START_DEADLINE, || {
            Ok(workers(child.id())
                .iter()
                .any(|w| !before.contains(w))
                .then_some(()))
        })
    }

    /// Port of the site on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Port of the verify server on 127.0.0.1.
    pub fn verify_port(&self) -> u16 {
        self.verify_port
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:<verify_port>`.
    pub fn verify_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.verify_port)
    }

    /// The config directory on the host.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Where greenlight writes upstream files, on the host.
    pub fn upstreams_dir(&self) -> PathBuf {
        self.dir.path().join("upstreams")
    }

    /// `nginx.conf` on the host.
    pub fn conf_path(&self) -> PathBuf {
        self.dir.path().join("nginx.conf")
    }

    /// The container's name, for the container flavour.
    pub fn container_name(&self) -> Option<&str> {
        match &self.runtime {
            Runtime::Host { .. } => None,
            Runtime::Container { name, .. } => Some(name),
        }
    }

    /// `nginx.conf` as nginx sees it (for `nginx -t -c ...` / `nginx -s reload -c ...`):
    /// the host path, or `/etc/greenlight-nginx/nginx.conf` in the container.
    pub fn config_path_in_runtime(&self) -> PathBuf {
        self.prefix_in_runtime().join("nginx.conf")
    }

    /// The config directory (nginx's `-p` prefix) as nginx sees it.
    pub fn prefix_in_runtime(&self) -> PathBuf {
        match &self.runtime {
            Runtime::Host { .. } => self.dir.path().to_path_buf(),
            Runtime::Container { .. } => PathBuf::from(CONTAINER_CONFIG_DIR),
        }
    }

    /// The contents of nginx's error log (level info) so far.
    pub fn error_log(&self) -> String {
        read_lossy(&self.dir.path().join("error.log"))
    }

    /// The site's JSON access log (nginx/greenlight-log.conf's format), as
    /// greenlight on this host reads it.
    pub fn access_log_path(&self) -> PathBuf {
        self.dir.path().join("access.json")
    }
}

fn start_host_nginx(dir: &Path, port: u16, verify_port: u16) -> Result<Child> {
    let stderr_path = dir.join("nginx.stderr");
    let mut child = Command::new(NGINX_BINARY)
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .arg("-e")
        .arg(dir.join("error.log"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&stderr_path)?)
        .spawn()
        .with_context(|| format!("cannot start {NGINX_BINARY} (apt-get install nginx-light)"))?;
    let ready = wait_for("nginx to answer", START_DEADLINE, || {
        if let Some(status) = child.try_wait()? {
            bail!(
                "nginx exited ({status}) on start: {}{}",
                read_lossy(&stderr_path),
                read_lossy(&dir.join("error.log"))
            );
        }
        Ok((answers_http(port) && answers_http(verify_port)).then_some(()))
    });
    if let Err(err) = ready {
        stop_process(&mut child, libc::SIGKILL, STOP_DEADLINE);
        return Err(err);
    }
    Ok(child)
}

/// The host port Docker published `container_port` on (`docker port NAME 8080/tcp`).
fn published_port(name: &str, container_port: u16) -> Result<u16> {
    let mapping = docker(&["port", name, &format!("{container_port}/tcp")])?;
    mapping
        .lines()
        .filter_map(|line| line.trim().rsplit(':').next()?.parse().ok())
        .next()
        .ok_or_else(|| anyhow!("no published port for {container_port} in {mapping:?}"))
}

impl Drop for Nginx {
    fn drop(&mut self) {
        match &mut self.runtime {
            // SIGTERM is nginx's fast shutdown (the master stops its workers).
            Runtime::Host { child } => stop_process(child, libc::SIGTERM, STOP_DEADLINE),
            Runtime::Container {
                name,
                created_network,
            } => {
                let _ = docker(&["rm", "--force", "--volumes", name]);
                if let Some(network) = created_network {
                    // Fails while greenlight's containers are still attached;
                    // DockerCleanup removes it then.
                    let _ = docker(&["network", "rm", network]);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------
// Docker cleanup
// ---------------------------------------------------------------------------------

/// Removes, on drop, every container whose name starts with the prefix or whose
/// `greenlight.service` label value does, and every network whose name starts with it.
///
/// Declare it first in a test so it is dropped last, after the parts using them.
pub struct DockerCleanup {
    prefix: String,
}

impl DockerCleanup {
    /// Also sweeps leftovers of an earlier run with the same prefix.
    pub fn new(prefix: &str) -> DockerCleanup {
        assert!(
            prefix.len() >= 3,
            "a DockerCleanup prefix this short ({prefix:?}) could remove unrelated containers"
        );
        let cleanup = DockerCleanup {
            prefix: prefix.to_string(),
        };
        cleanup.sweep();
        cleanup
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Removes the matching containers and networks now; errors are printed, not raised.
    pub fn sweep(&self) {
        let listing = docker(&[
            "ps",
            "--all",
            "--no-trunc",
            "--format",
            &format!("{{{{.ID}}}}\t{{{{.Names}}}}\t{{{{.Label \"{SERVICE_LABEL}\"}}}}"),
        ]);
        match listing {
            Ok(listing) => {
                let ids: Vec<&str> = listing
                    .lines()
                    .filter_map(|line| {
                        let mut fields = line.split('\t');
                        let id = fields.next()?;
                        let names = fields.next().unwrap_or("");
                        let service = fields.next().unwrap_or("");
                        let named = names
                            .split(',')
                            .any(|n| n.trim_start_matches('/').starts_with(&self.prefix));
                        (named || service.starts_with(&self.prefix)).then_some(id)
                    })
                    .collect();
                if !ids.is_empty() {
                    let mut args = vec!["rm", "--force", "--volumes"];
                    args.extend(&ids);
                    if let Err(err) = docker(&args) {
                        eprintln!("DockerCleanup({}): {err:#}", self.prefix);
                    }
                }
            }
            Err(err) => eprintln!("DockerCleanup({}): {err:#}", self.prefix),
        }
        if let Ok(networks) = docker(&["network", "ls", "--format", "{{.Name}}"]) {
            for network in networks.lines().filter(|n| n.starts_with(&self.prefix)) {
                if let Err(err) = docker(&["network", "rm", network]) {
                    eprintln!("DockerCleanup({}): {err:#}", self.prefix);
                }
            }
        }
    }
}

impl Drop for DockerCleanup {
    fn drop(&mut self) {
        self.sweep();
    }
}

/// A CA and a server certificate for 127.0.0.1 signed by it (openssl), written
/// into `dir`: (CA, server certificate, server key), each PEM.
pub fn certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("run openssl (apt-get install openssl)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=greenlight test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "server.ext",
        "-out",
        "server.pem",
    ]);
    (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stopping_a_process_also_kills_its_children_after_the_deadline() {
        // A parent that ignores SIGTERM while its child sleeps: stands in for an nginx
        // master that does not stop in time.
        let mut parent = Command::new("sh")
            .args(["-c", "trap '' TERM; sleep 60 & wait"])
            .spawn()
            .unwrap();
        let children = wait_for("the child to start", START_DEADLINE, || {
            let children = children_of(parent.id());
            Ok((!children.is_empty()).then_some(children))
        })
        .unwrap();
        stop_process(&mut parent, libc::SIGTERM, Duration::from_millis(200));
        for pid in children {
            wait_for("the child to die", START_DEADLINE, || {
                let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                // Gone, or a zombie waiting for init.
                Ok((stat.is_empty()
                    || stat
                        .rsplit_once(')')
                        .unwrap()
                        .1
                        .trim_start()
                        .starts_with('Z'))
                .then_some(()))
            })
            .unwrap();
        }
    }

    #[test]
    fn prefixes_are_unique_and_name_safe() {
        let a = unique_prefix("Swap Test_1");
        let b = unique_prefix("Swap Test_1");
        assert_ne!(a, b);
        assert!(a.starts_with(&format!("swap-test-1-{}-", std::process::id())));
        assert!(a.ends_with('-'));
        assert!(a
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'));
    }

    #[test]
    fn demo_dockerfile_puts_options_before_the_version() {
        let base = "FROM scratch\nCOPY greenlight-demo /greenlight-demo\nARG VERSION=dev\nENV DEMO_VERSION=$VERSION\n";
        let opts = DemoImageOpts {
            healthcheck: true,
            env: vec![("DEMO_UNHEALTHY".into(), "1".into())],
        };
        let out = demo_dockerfile(base, &opts).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[2].starts_with("HEALTHCHECK --interval=1s"));
        assert_eq!(lines[3], "ENV DEMO_UNHEALTHY=\"1\"");
        assert_eq!(lines[4], "ARG VERSION=dev");
        let bad = DemoImageOpts {
            env: vec![("NOT OK".into(), "1".into())],
            ..Default::default()
        };
        assert!(demo_dockerfile(base, &bad).is_err());
    }

    #[test]
    fn registry_config_has_the_notification_endpoint() {
        let opts = RegistryOpts {
            notify: Some(NotifyEndpoint {
                url: "http://127.0.0.1:9/hooks/registry".into(),
                token: "s3cret".into(),
            }),
            ..Default::default()
        };
        let config = registry_config(Path::new("/tmp/x"), 5000, &opts);
        assert!(config.contains("addr: 127.0.0.1:5000"));
        assert!(config.contains("rootdirectory: /tmp/x/data"));
        assert!(config.contains("url: \"http://127.0.0.1:9/hooks/registry\""));
        assert!(config.contains("Authorization: [\"Bearer s3cret\"]"));
        assert!(
            !registry_config(Path::new("/tmp/x"), 5000, &RegistryOpts::default())
                .contains("notifications")
        );
        assert!(!config.contains("auth:"));
    }

    #[test]
    fn registry_auth_is_a_bcrypt_htpasswd_file() {
        let auth = BasicAuth {
            username: "deploy-bot".into(),
            password: "right horse".into(),
        };
        let opts = RegistryOpts {
            auth: Some(auth.clone()),
            ..Default::default()
        };
        let config = registry_config(Path::new("/tmp/x"), 5000, &opts);
        assert!(config.contains("auth:\n  htpasswd:\n    realm: greenlight-test\n"));
        assert!(config.contains("path: \"/tmp/x/htpasswd\""));
        let line = htpasswd_line(&auth).unwrap();
        let hash = line.trim_end().strip_prefix("deploy-bot:").unwrap();
        assert!(hash.starts_with("$2"), "{hash}");
        assert!(bcrypt::verify("right horse", hash).unwrap());
        assert!(!bcrypt::verify("wrong horse", hash).unwrap());
        assert_eq!(
            basic_authorization(&auth),
            "Basic ZGVwbG95LWJvdDpyaWdodCBob3JzZQ=="
        );
    }

    #[test]
    fn nginx_config_routes_services() {
        let services = ["app", "api"];
        let config = nginx_config(&ConfigSite {
            root: "/etc/greenlight-nginx",
            pid: "/run/nginx.pid".into(),
            listen: "0.0.0.0:8080".into(),
            verify_listen: "0.0.0.0:8099".into(),
            services: &services,
            verify: None,
        });
        assert!(config.contains("include /etc/greenlight-nginx/upstreams/*.conf;"));
        assert!(config.contains("include /etc/greenlight-nginx/conf.d/*.conf;"));
        assert!(config.contains("location / {\n            set $greenlight_upstream app;"));
        assert!(config.contains("location /api/ {\n            set $greenlight_upstream api;"));
        // The shipped verify server, on this nginx's own address.
        assert!(config.contains("proxy_pass http://$greenlight_verify_upstream;"));
        assert!(config.contains("listen 0.0.0.0:8099 reuseport;"));
        assert!(!config.contains("listen 127.0.0.1:8099"));
        assert!(config.contains("pid /run/nginx.pid;"));
    }
}
