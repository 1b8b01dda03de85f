//! The integration-test harness: a real greenlight process in front of a real
//! Docker engine, a real nginx and a real registry, one isolated world per test.
#![allow(dead_code)]

pub mod load;
pub mod slack;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use greenlight_testkit::env::{
    build_demo_image, free_port, BasicAuth, DemoImageOpts, DockerCleanup, Nginx, NotifyEndpoint,
    Registry, RegistryOpts,
};
use greenlight_testkit::greenlight::http_ok;
pub use greenlight_testkit::greenlight::ServiceSpec;
use serde_json::{json, Value};

pub const TOKEN: &str = "test-admin-token-0123456789";
pub const GITHUB_SECRET: &str = "github-test-secret";
pub const REGISTRY_TOKEN: &str = "registry-test-token";
pub const DOCKERHUB_TOKEN: &str = "dockerhub-test-token-0123456789";

/// The greenlight binary the tests run: this build's, or `GREENLIGHT_TEST_BIN`
/// (to show which tests another build, e.g. an older release, fails).
pub fn binary() -> PathBuf {
    std::env::var_os("GREENLIGHT_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_greenlight")))
}

/// A short unique prefix for this test's names (services, containers, networks).
pub fn prefix(tag: &str) -> String {
    format!("gl{}{tag}", std::process::id() % 100_000)
}

/// A running `greenlight serve`, restartable, killed on drop.
pub struct Greenlight {
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub port: u16,
    /// Extra environment of the process (e.g. `GREENLIGHT_TEST_PAUSE_AT`), from
    /// the next `start` on.
    pub env: Vec<(String, String)>,
    child: Option<Child>,
    http: reqwest::Client,
}

impl Greenlight {
    /// Writes `config` (with `{listen}` and `{state}` filled in) and starts serving.
    pub fn spawn(config: &str) -> Greenlight {
        Greenlight::spawn_on(free_port(), config)
    }

    /// Like `spawn`, on a port chosen beforehand (a registry must know where to notify).
    pub fn spawn_on(port: u16, config: &str) -> Greenlight {
        let dir = tempfile::tempdir().unwrap();
        let config = config
            .replace("{listen}", &format!("127.0.0.1:{port}"))
            .replace(
                "{state}",
                &dir.path().join("state.db").display().to_string(),
            );
        let config_path = dir.path().join("greenlight.toml");
        std::fs::write(&config_path, config).unwrap();
        let mut gl = Greenlight {
            dir,
            config_path,
            port,
            env: Vec::new(),
            child: None,
            http: greenlight_testkit::http(),
        };
        gl.start();
        gl
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("greenlight.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let child = Command::new(binary())
            .args(["--config", self.config_path.to_str().unwrap(), "serve"])
            .env("RUST_LOG", "greenlight=debug,info")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if http_ok(self.port, "/healthz") {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("greenlight exited with {status} at start:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "greenlight did not become ready:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM and wait for the process to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGTERM; waits (at most 30 s) and returns the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    /// SIGKILL: no shutdown code runs, as in a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Rewrites the config file (takes effect at the next start).
    pub fn edit_config(&self, edit: impl FnOnce(&str) -> String) {
        let text = std::fs::read_to_string(&self.config_path).unwrap();
        let edited = edit(&text);
        assert_ne!(edited, text, "the config edit changed nothing");
        std::fs::write(&self.config_path, edited).unwrap();
    }

    pub fn restart(&mut self) {
        self.stop();
        self.start();
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub async fn api(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.url()))
            .bearer_auth(TOKEN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str) -> Value {
        let (status, v) = self.api(reqwest::Method::GET, path, None).await;
        assert_eq!(status, 200, "GET {path}: {v}");
        v
    }

    /// Queues a deploy through the admin API; returns the deployment id.
    pub async fn deploy(&self, service: &str, what: Target<'_>) -> i64 {
        let body = match what {
            Target::Tag(t) => json!({ "tag": t }),
            Target::Digest(d) => json!({ "digest": d }),
        };
        let (status, v) = self
            .api(
                reqwest::Method::POST,
                &format!("/api/services/{service}/deploy"),
                Some(body),
            )
            .await;
        assert_eq!(status, 202, "deploy: {v}");
        v["deployment"].as_i64().unwrap()
    }

    /// Waits for a deployment to reach a terminal state.
    pub async fn wait_done(&self, id: i64) -> Value {
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let d = self.get(&format!("/api/deployments/{id}")).await;
            if !d["finished_at"].is_null() {
                return d;
            }
            assert!(
                Instant::now() < deadline,
                "deployment {id} did not finish: {d}\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The deployment that re-runs `id` after an interrupted start (waits for it
    /// to be recorded: reconcile does that before the server answers).
    pub async fn rerun_of(&self, service: &str, id: i64) -> i64 {
        let list = self
            .get(&format!("/api/deployments?service={service}"))
            .await;
        list.as_array()
            .unwrap()
            .iter()
            .find(|d| d["trigger_detail"]["resumes"] == id)
            .unwrap_or_else(|| panic!("no re-run of {id}: {list:#}"))["id"]
            .as_i64()
            .unwrap()
    }

    pub async fn deploy_and_wait(&self, service: &str, what: Target<'_>) -> Value {
        let id = self.deploy(service, what).await;
        self.wait_done(id).await
    }

    /// Runs the CLI against this server.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(binary())
            .args([
                "--url",
                &self.url(),
                "--token",
                TOKEN,
                "--config",
                "/nonexistent.toml",
            ])
            .args(args)
            // Plain output must be the CLI's own doing, not a forced colour.
            .env_remove("CLICOLOR_FORCE")
            .output()
            .unwrap()
    }
}

impl Drop for Greenlight {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- greenlight log ---\n{}", self.log());
        }
    }
}

#[derive(Clone, Copy)]
pub enum Target<'a> {
    Tag(&'a str),
    Digest(&'a str),
}

/// A greenlight config for `nginx` (host or container mode) and `services`,
/// with this harness's admin token.
pub fn config_for(nginx: &Nginx, services: &[ServiceSpec]) -> String {
    greenlight_testkit::greenlight::config_for(nginx, TOKEN, services)
}

/// One test's world: registry with the demo versions pushed, nginx, greenlight.
pub struct World {
    pub prefix: String,
    pub service: String,
    pub repo: String,
    pub digests: HashMap<String, String>,
    pub registry: Registry,
    pub nginx: Nginx,
    pub gl: Greenlight,
    _cleanup: DockerCleanup,
}

pub enum NginxKind {
    Host,
    Container,
}

impl World {
    /// `versions`: (tag, baked env) of each demo image to build and push.
    pub fn new(tag: &str, kind: NginxKind, versions: &[(&str, &[(&str, &str)])]) -> World {
        World::with_config(tag, kind, versions, "")
    }

    /// Like `new`, with `extra` appended to greenlight's config (top-level tables
    /// such as `[notify]`).
    pub fn with_config(
        tag: &str,
        kind: NginxKind,
        versions: &[(&str, &[(&str, &str)])],
        extra: &str,
    ) -> World {
        let images = versions
            .iter()
            .map(|(v, env)| {
                let opts = DemoImageOpts {
                    healthcheck: false,
                    env: env
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                };
                (v.to_string(), opts)
            })
            .collect();
        World::with_images_and_config(tag, kind, images, extra)
    }

    /// Like `new`, with full control over each image (e.g. a Docker HEALTHCHECK).
    pub fn with_images(
        tag: &str,
        kind: NginxKind,
        versions: Vec<(String, DemoImageOpts)>,
    ) -> World {
        World::with_images_and_config(tag, kind, versions, "")
    }

    /// Like `with_images`, with `extra` appended to greenlight's config.
    pub fn with_images_and_config(
        tag: &str,
        kind: NginxKind,
        versions: Vec<(String, DemoImageOpts)>,
        extra: &str,
    ) -> World {
        World::build(tag, kind, versions, extra, None, None)
    }

    /// A world whose registry requires `user` (htpasswd basic auth; the images are
    /// pushed with `user`'s credentials), and whose greenlight config names it in
    /// a `[[registry]]` entry with `user.username` and `password` (the right one
    /// or not). `extra` is appended to greenlight's config.
    pub fn with_registry_auth(
        tag: &str,
        versions: &[(&str, &[(&str, &str)])],
        user: BasicAuth,
        password: &str,
        extra: &str,
    ) -> World {
        let images = versions
            .iter()
            .map(|(v, env)| {
                let env = env
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect();
                let opts = DemoImageOpts {
                    healthcheck: false,
                    env,
                };
                (v.to_string(), opts)
            })
            .collect();
        let given = BasicAuth {
            username: user.username.clone(),
            password: password.to_string(),
        };
        World::build(
            tag,
            NginxKind::Host,
            images,
            extra,
            None,
            Some((user, given)),
        )
    }

    /// A world whose webhooks are configured (secrets below; GitHub- and Docker
    /// Hub-shaped deliveries refer to the test registry) and whose registry
    /// notifies greenlight. Images are built but NOT pushed: `push` does that,
    /// and the registry's notification is what deploys them.
    pub fn with_hooks(
        tag: &str,
        versions: &[(&str, &[(&str, &str)])],
        registry_notifies: bool,
    ) -> World {
        World::with_hooks_and_config(tag, versions, registry_notifies, "")
    }

    /// Like `with_hooks`, with `extra` appended to greenlight's config.
    pub fn with_hooks_and_config(
        tag: &str,
        versions: &[(&str, &[(&str, &str)])],
        registry_notifies: bool,
        extra: &str,
    ) -> World {
        let images = versions
            .iter()
            .map(|(v, env)| {
                let env = env
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect();
                (
                    v.to_string(),
                    DemoImageOpts {
                        healthcheck: false,
                        env,
                    },
                )
            })
            .collect();
        World::build(
            tag,
            NginxKind::Host,
            images,
            extra,
            Some(registry_notifies),
            None,
        )
    }

    fn build(
        tag: &str,
        kind: NginxKind,
        versions: Vec<(String, DemoImageOpts)>,
        extra: &str,
        hooks: Option<bool>,
        // The user the registry requires, and the credentials greenlight is given.
        auth: Option<(BasicAuth, BasicAuth)>,
    ) -> World {
        let prefix = prefix(tag);
        let cleanup = DockerCleanup::new(&prefix);
        let service = format!("{prefix}app");
        let network = format!("{prefix}-net");
        let gl_port = free_port();
        let notify = (hooks == Some(true)).then(|| NotifyEndpoint {
            url: format!("http://127.0.0.1:{gl_port}/hooks/registry"),
            token: REGISTRY_TOKEN.into(),
        });
        let (registry_auth, registry_entry) = auth.unzip();
        let registry = Registry::start(RegistryOpts {
            notify,
            auth: registry_auth,
        })
        .unwrap();
        let repo_path = format!("{prefix}/demo");
        let mut digests = HashMap::new();
        for (version, opts) in &versions {
            let local = format!("{prefix}-build:{version}");
            // Unique content per test: two tests building an identical image share
            // its ID, and one's cleanup can delete it under the other's build.
            let mut opts = opts.clone();
            opts.env.push(("GL_TEST_WORLD".into(), prefix.clone()));
            build_demo_image(&local, version, opts).unwrap();
            if hooks.is_some() {
                continue;
            }
            let digest = registry.push(&local, &repo_path, version).unwrap();
            // Only the registry copy should exist: greenlight must pull it.
            let _ = greenlight_testkit::env::docker(&["rmi", &local]);
            let _ = greenlight_testkit::env::docker(&[
                "rmi",
                &format!("{}/{repo_path}:{version}", registry.host()),
            ]);
            digests.insert(version.clone(), digest);
        }
        let nginx = match kind {
            NginxKind::Host => Nginx::host(&prefix, &[&service]).unwrap(),
            NginxKind::Container => {
                let image = greenlight_testkit::env::host_nginx_image().unwrap();
                Nginx::container(&prefix, &[&service], &network, &image).unwrap()
            }
        };
        let repo = format!("{}/{repo_path}", registry.host());
        let mut config = config_for(
            &nginx,
            &[ServiceSpec {
                name: service.clone(),
                image: repo.clone(),
                network,
                extra: String::new(),
            }],
        );
        config.push_str(extra);
        if let Some(entry) = registry_entry {
            config.push_str(&format!(
                "\n[[registry]]\nhost = \"{}\"\nusername = \"{}\"\npassword = \"{}\"\n",
                registry.host(),
                entry.username,
                entry.password
            ));
        }
        if hooks.is_some() {
            config.push_str(&format!(
                "\n[webhooks]\ngithub_secrets = [\"retired-secret-0123456789\", \"{GITHUB_SECRET}\"]\n\
                 registry_token = \"{REGISTRY_TOKEN}\"\ndockerhub_token = \"{DOCKERHUB_TOKEN}\"\n\
                 github_registry_host = \"{host}\"\ndockerhub_registry_host = \"{host}\"\n",
                host = registry.host()
            ));
        }
        let gl = Greenlight::spawn_on(gl_port, &config);
        World {
            prefix,
            service,
            repo,
            digests,
            registry,
            nginx,
            gl,
            _cleanup: cleanup,
        }
    }

    pub fn digest(&self, version: &str) -> &str {
        &self.digests[version]
    }

    /// Adds `service_lines` to the service's `[[service]]` table and
    /// `rollout_lines` to its `[service.rollout]`, then restarts greenlight.
    pub fn configure(&mut self, service_lines: &str, rollout_lines: &str) {
        self.gl.edit_config(|c| {
            c.replacen(
                "port = 8080\n",
                &format!("port = 8080\n{service_lines}\n"),
                1,
            )
            .replacen(
                "keep_images = 2\n",
                &format!("keep_images = 2\n{rollout_lines}\n"),
                1,
            )
        });
        self.gl.restart();
    }

    /// The versions of the replicas the API says nginx routes to, in order,
    /// each running.
    pub async fn replica_versions(&self) -> Vec<String> {
        let s = self
            .gl
            .get(&format!("/api/services/{}", self.service))
            .await;
        s["replicas"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                assert_eq!(r["running"], true, "{s:#}");
                let digest = r["digest"].as_str().unwrap();
                self.digests
                    .iter()
                    .find(|(_, d)| d.as_str() == digest)
                    .map(|(v, _)| v.clone())
                    .unwrap_or_else(|| digest.to_string())
            })
            .collect()
    }

    /// Pushes built image `version` to `repo_path` (default: the service's
    /// repository) under `tag`; returns the manifest digest.
    pub fn push_as(&mut self, version: &str, repo_path: Option<&str>, tag: &str) -> String {
        let local = format!("{}-build:{version}", self.prefix);
        let default_path = format!("{}/demo", self.prefix);
        let path = repo_path.unwrap_or(&default_path);
        let digest = self.registry.push(&local, path, tag).unwrap();
        if repo_path.is_none() {
            self.digests.insert(tag.to_string(), digest.clone());
        }
        digest
    }

    pub fn push(&mut self, version: &str) -> String {
        self.push_as(version, None, version)
    }

    /// Waits until greenlight says `tag` is live.
    pub async fn wait_live(&self, tag: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let s = self
                .gl
                .get(&format!("/api/services/{}", self.service))
                .await;
            if s["live"]["tag"] == tag && s["deploying"].is_null() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "{tag} never went live: {s:#}\n{}",
                self.gl.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Posts a signed GitHub-shaped delivery; returns (status, answer).
    pub async fn github(&self, guid: &str, body: &str) -> (u16, Value) {
        let resp = greenlight_testkit::http()
            .post(format!("{}/hooks/github", self.gl.url()))
            .header("X-GitHub-Event", "package")
            .header("X-GitHub-Delivery", guid)
            .header(
                "X-Hub-Signature-256",
                greenlight::webhook::github::sign(GITHUB_SECRET, body.as_bytes()),
            )
            .header("Content-Type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// A GitHub `package` event for this world's repository.
    pub fn github_payload(&self, tag: &str, digest: &str, pushed_at: &str) -> String {
        let mut doc: Value = serde_json::from_str(include_str!(
            "../fixtures/webhooks/github-package-published.json"
        ))
        .unwrap();
        let p = &mut doc["package"];
        p["namespace"] = self.prefix.clone().into();
        p["name"] = "demo".into();
        let v = &mut p["package_version"];
        v["name"] = digest.into();
        v["updated_at"] = pushed_at.into();
        v["container_metadata"]["tag"]["name"] = tag.into();
        v["container_metadata"]["tag"]["digest"] = digest.into();
        v["container_metadata"]["manifest"]["digest"] = digest.into();
        doc.to_string()
    }

    /// Deploys `tag` and asserts it succeeded.
    pub async fn deploy_ok(&self, tag: &str) -> Value {
        let d = self
            .gl
            .deploy_and_wait(&self.service, Target::Tag(tag))
            .await;
        assert_eq!(
            d["state"],
            "succeeded",
            "deploy {tag}: {d:#}\n{}",
            self.gl.log()
        );
        d
    }

    /// What nginx's public site answers now: (status, X-Demo-Version).
    pub async fn served(&self) -> (u16, String) {
        let resp = greenlight_testkit::http()
            .get(self.nginx.url())
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .unwrap();
        let v = resp
            .headers()
            .get("x-demo-version")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        (resp.status().as_u16(), v)
    }

    /// greenlight's containers for the service: (name, state, labels).
    pub fn containers(&self) -> Vec<(String, String, HashMap<String, String>)> {
        let out = greenlight_testkit::env::docker(&[
            "ps",
            "-a",
            "--filter",
            &format!("label=greenlight.service={}", self.service),
            "--format",
            "{{.Names}}\t{{.State}}\t{{json .Labels}}",
        ])
        .unwrap();
        out.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let mut parts = l.splitn(3, '\t');
                let name = parts.next().unwrap().to_string();
                let state = parts.next().unwrap().to_string();
                let labels = parse_labels(parts.next().unwrap_or(""));
                (name, state, labels)
            })
            .collect()
    }

    pub fn image_present(&self, version: &str) -> bool {
        greenlight_testkit::env::docker(&[
            "image",
            "inspect",
            &format!("{}@{}", self.repo, self.digest(version)),
        ])
        .is_ok()
    }

    pub fn upstream_file(&self) -> Option<String> {
        std::fs::read_to_string(
            self.nginx
                .upstreams_dir()
                .join(format!("{}.conf", self.service)),
        )
        .ok()
    }
}

/// `docker ps --format '{{json .Labels}}'` prints "k=v,k=v" as a JSON string.
fn parse_labels(raw: &str) -> HashMap<String, String> {
    let text: String = serde_json::from_str(raw).unwrap_or_else(|_| raw.to_string());
    text.split(',')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The names of the steps a deployment's strategy planned, as the API shows
/// its plan: what its recorded steps must follow.
pub fn planned_steps(d: &Value) -> Vec<String> {
    d["plan"]
        .as_array()
        .unwrap_or_else(|| panic!("no plan: {d:#}"))
        .iter()
        .map(|s| s["step"].as_str().unwrap().to_string())
        .collect()
}

/// The names of the steps a deployment recorded, in order.
/// The recorded steps of deployment `d` named `name`.
pub fn steps<'a>(d: &'a Value, name: &str) -> Vec<&'a Value> {
    d["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["step"] == name)
        .collect()
}

pub fn recorded_steps(d: &Value) -> Vec<String> {
    d["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step"].as_str().unwrap().to_string())
        .collect()
}

/// Counts a service's containers every 100 ms until stopped; reports the most
/// seen at once.
pub struct ContainerCounter {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<usize>,
}

impl ContainerCounter {
    pub fn start(service: &str) -> ContainerCounter {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let label = format!("label=greenlight.service={service}");
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut most = 0;
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(out) = greenlight_testkit::env::docker(&["ps", "-q", "--filter", &label])
                {
                    most = most.max(out.lines().filter(|l| !l.trim().is_empty()).count());
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            most
        });
        ContainerCounter { stop, thread }
    }

    /// The most containers running at once.
    pub fn stop(self) -> usize {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}
