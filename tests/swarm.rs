//! greenlight on Docker Swarm (`[runtime] kind = "swarm"`), on a Swarm each
//! test initialises on the shared engine (advertised on 127.0.0.1) and leaves
//! again, with a real registry, a host nginx and the load probe through it:
//! each colour is a Swarm service whose tasks publish in host mode, nginx
//! reaches them at 127.0.0.1:<task port>, and the old colour is scaled to 0
//! only after nginx stopped routing to it.
//!
//! These tests run one at a time (nextest test group `swarm`).

mod common;

use std::time::{Duration, Instant};

use common::load::{assert_flips_once, assert_zero_failures, probe, versions};
use common::{NginxKind, Target, World};
use greenlight_testkit::env::{build_demo_image, BasicAuth, DemoImageOpts};
use greenlight_testkit::swarm::{SecondNode, Swarm};
use serde_json::Value;

const NO_ENV: &[(&str, &str)] = &[];
const SWARM_RUNTIME: &str = "\n[runtime]\nkind = \"swarm\"\n";

/// A test's world on a Swarm. The Swarm goes first on drop (its services
/// removed, the Swarm left if the test made it), then the world.
struct OnSwarm {
    swarm: Swarm,
    w: World,
    _images: Images,
}

/// Removes, on drop, the images of these repositories that nothing uses any
/// more: what greenlight pulled (pruning keeps `keep_images` of them) and local
/// builds. Dropped after the world, whose cleanup removes the task containers.
struct Images(Vec<String>);

impl Drop for Images {
    fn drop(&mut self) {
        let listing = greenlight_testkit::env::docker(&[
            "images",
            "--no-trunc",
            "--format",
            "{{.ID}} {{.Repository}}",
        ])
        .unwrap_or_default();
        let mut ids: Vec<&str> = listing
            .lines()
            .filter_map(|l| l.split_once(' '))
            .filter(|(_, repo)| self.0.iter().any(|r| r == repo))
            .map(|(id, _)| id)
            .collect();
        ids.sort();
        ids.dedup();
        for id in ids {
            // Not forced: an image something else uses stays.
            let _ = greenlight_testkit::env::docker(&["rmi", id]);
        }
    }
}

impl OnSwarm {
    fn new(tag: &str, versions: &[(&str, &[(&str, &str)])], replicas: u32) -> OnSwarm {
        OnSwarm::with_rollout(tag, versions, replicas, "")
    }

    /// Like [`OnSwarm::new`], with `[service.rollout]` lines.
    fn with_rollout(
        tag: &str,
        versions: &[(&str, &[(&str, &str)])],
        replicas: u32,
        rollout: &str,
    ) -> OnSwarm {
        let swarm = Swarm::init(&common::prefix(tag)).unwrap();
        let mut w = World::with_config(tag, NginxKind::Host, versions, SWARM_RUNTIME);
        w.configure(&format!("replicas = {replicas}"), rollout);
        let images = Images(vec![w.repo.clone()]);
        OnSwarm {
            swarm,
            w,
            _images: images,
        }
    }

    fn colour(&self, colour: &str) -> String {
        format!("{}-{colour}", self.w.service)
    }

    /// (running, wanted) tasks of a colour's Swarm service.
    fn tasks(&self, colour: &str) -> Option<(u32, u32)> {
        self.swarm.replicas(&self.colour(colour))
    }

    /// Deploys `tag` with greenlight paused at `step` (`name` or
    /// `name:batch`), SIGKILLs it there and
    /// starts it again: (the routed addresses and the green tasks at the
    /// kill, the re-run deployment once done).
    async fn killed_at(
        &mut self,
        tag: &str,
        step: &str,
    ) -> (Vec<String>, Option<(u32, u32)>, Value) {
        self.w.gl.env = vec![("GREENLIGHT_TEST_PAUSE_AT".into(), step.into())];
        self.w.gl.restart();
        let id = self.w.gl.deploy(&self.w.service, Target::Tag(tag)).await;
        match step.split_once(':') {
            Some((name, batch)) => {
                wait_step_of_batch(&self.w, id, name, batch.parse().unwrap()).await
            }
            None => wait_step(&self.w, id, step).await,
        }
        let routed = self.routed();
        let green = self.tasks("green");
        self.w.gl.kill();
        self.w.gl.env.clear();
        self.w.gl.start();
        let d = self.w.gl.get(&format!("/api/deployments/{id}")).await;
        assert_eq!(d["state"], "interrupted", "{d:#}");
        let rerun = self.w.gl.rerun_of(&self.w.service, id).await;
        (routed, green, self.w.gl.wait_done(rerun).await)
    }

    /// The addresses nginx routes the service to, from the rendered file.
    fn routed(&self) -> Vec<String> {
        routed(&self.w)
    }
}

/// The addresses nginx routes `w`'s service to, from the rendered file.
fn routed(w: &World) -> Vec<String> {
    let file = w.upstream_file().unwrap_or_default();
    let mut out: Vec<String> = file
        .lines()
        .filter_map(|l| l.trim().strip_prefix("server "))
        .map(|l| l.split([' ', ';']).next().unwrap().to_string())
        .collect();
    out.sort();
    out.dedup();
    out
}

fn recorded(d: &Value, name: &str) -> Vec<Value> {
    d["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["step"] == name)
        .cloned()
        .collect()
}

fn names(w: &World, colour: &str, n: u32) -> String {
    (1..=n)
        .map(|k| format!("{}-{colour}-{k}", w.service))
        .collect::<Vec<_>>()
        .join(",")
}

/// Waits until deployment `id` is at `step`.
async fn wait_step(w: &World, id: i64, step: &str) {
    wait_step_in(w, id, &[step]).await
}

/// `greenlight check` with the config at `path`: (exit 0, its output).
fn check(path: &std::path::Path) -> (bool, String) {
    let out = std::process::Command::new(common::binary())
        .args(["--config", path.to_str().unwrap(), "check"])
        .env_remove("CLICOLOR_FORCE")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swarm_is_refused_clearly_where_the_engine_is_no_swarm_manager() {
    // This test group runs alone, so the engine is as the machine has it: not
    // in a Swarm (the Swarm tests leave it so).
    assert_eq!(greenlight_testkit::swarm::state().unwrap(), "inactive");
    let w = World::new("swnone", NginxKind::Host, &[("v1", NO_ENV)]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("greenlight.toml");
    let text = std::fs::read_to_string(&w.gl.config_path).unwrap() + SWARM_RUNTIME;
    std::fs::write(&path, text).unwrap();
    let (ok, out) = check(&path);
    assert!(!ok, "{out}");
    assert!(
        out.contains("[runtime] kind = \"swarm\", but this engine is not in a Swarm"),
        "{out}"
    );
    assert!(out.contains("docker swarm init"), "{out}");
    // The Docker runtime's check says which engine it found, and its Swarm state.
    let (ok, out) = check(&w.gl.config_path);
    assert!(ok, "{out}");
    assert!(out.contains("docker: replicas are containers"), "{out}");
    // serve refuses to start rather than fail at the first deploy.
    let mut w = w;
    w.gl.stop();
    let serve = std::process::Command::new(common::binary())
        .args(["--config", path.to_str().unwrap(), "serve"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&serve.stderr);
    assert!(!serve.status.success(), "{err}");
    assert!(err.contains("needs a Swarm manager"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_versions_and_a_rollback_with_zero_failed_requests() {
    let s = OnSwarm::new("swbg", &[("v1", NO_ENV), ("v2", NO_ENV), ("v3", NO_ENV)], 3);
    let w = &s.w;
    // `greenlight check` names the engine and that it manages the Swarm.
    let (ok, text) = check(&w.gl.config_path);
    assert!(text.contains("swarm: replicas are tasks"), "{text}");
    assert!(text.contains("a Swarm manager"), "{text}");
    assert!(ok, "{text}");

    let d1 = w.deploy_ok("v1").await;
    assert_eq!(
        recorded(&d1, "starting")[0]["replicas"],
        names(w, "blue", 3)
    );
    assert_eq!(s.tasks("blue"), Some((3, 3)));
    assert_eq!(
        s.tasks("green"),
        None,
        "no green service before it is needed"
    );
    let v1_backends = s.routed();
    assert_eq!(v1_backends.len(), 3, "{v1_backends:?}");
    // Host-mode ports on the node's address: never the mesh, never an overlay.
    assert!(
        v1_backends.iter().all(|a| a.starts_with("127.0.0.1:")),
        "{v1_backends:?}"
    );
    assert_eq!(w.replica_versions().await, ["v1", "v1", "v1"]);

    // v1 -> v2 with client keep-alive.
    let load = probe(w, true);
    assert!(load.wait_for_version("v1", Duration::from_secs(10)).await);
    let d2 = w.deploy_ok("v2").await;
    let report = load.stop().await;
    assert_zero_failures(&report, 1);
    assert_flips_once(&report, &["v1", "v2"]);
    assert_eq!(
        recorded(&d2, "starting")[0]["replicas"],
        names(w, "green", 3)
    );
    assert_eq!(recorded(&d2, "switching").len(), 1, "one reload: {d2:#}");
    assert_eq!(
        recorded(&d2, "stopping_old")[0]["replicas"],
        names(w, "blue", 3)
    );
    // The old colour is scaled to 0, not removed: a rollback is a scale-up.
    assert_eq!(s.tasks("blue"), Some((0, 0)));
    assert_eq!(s.tasks("green"), Some((3, 3)));
    assert_eq!(w.replica_versions().await, ["v2", "v2", "v2"]);
    assert!(s.routed().iter().all(|a| !v1_backends.contains(a)));

    // v2 -> v3 without keep-alive: blue again, updated to v3.
    let load = probe(w, false);
    assert!(load.wait_for_version("v2", Duration::from_secs(10)).await);
    let d3 = w.deploy_ok("v3").await;
    let report = load.stop().await;
    assert_zero_failures(&report, 1);
    assert_flips_once(&report, &["v2", "v3"]);
    // Pruning on the manager: v1 goes (keep_images = 2), v2 (the rollback's)
    // and v3 stay.
    let pruned = recorded(&d3, "pruning")[0]["detail"].clone();
    eprintln!("pruning after v3: {pruned}");
    assert!(pruned.as_str().unwrap().starts_with("removed "), "{pruned}");
    let here = |v: &str| {
        greenlight_testkit::env::docker(&[
            "image",
            "inspect",
            &format!("{}@{}", w.repo, w.digests[v]),
        ])
        .is_ok()
    };
    assert!(!here("v1") && here("v2") && here("v3"), "{pruned}");
    assert_eq!(s.tasks("blue"), Some((3, 3)));
    assert_eq!(s.tasks("green"), Some((0, 0)));
    assert_eq!(w.replica_versions().await, ["v3", "v3", "v3"]);

    // Rollback: green scaled up to v2 again, gated, switched.
    let load = probe(w, true);
    assert!(load.wait_for_version("v3", Duration::from_secs(10)).await);
    let (status, v) =
        w.gl.api(
            reqwest::Method::POST,
            &format!("/api/services/{}/rollback", w.service),
            None,
        )
        .await;
    assert_eq!(status, 202, "{v}");
    let d = w.gl.wait_done(v["deployment"].as_i64().unwrap()).await;
    assert_eq!(d["state"], "succeeded", "{d:#}\n{}", w.gl.log());
    let report = load.stop().await;
    assert_zero_failures(&report, 1);
    assert_flips_once(&report, &["v3", "v2"]);
    assert_eq!(s.tasks("green"), Some((3, 3)));
    assert_eq!(s.tasks("blue"), Some((0, 0)));
    assert_eq!(w.replica_versions().await, ["v2", "v2", "v2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unhealthy_version_never_gets_traffic_and_the_live_one_keeps_serving() {
    let s = OnSwarm::new(
        "swunh",
        &[("v1", NO_ENV), ("v2", &[("DEMO_UNHEALTHY", "1")])],
        3,
    );
    let w = &s.w;
    w.deploy_ok("v1").await;
    let before = s.routed();
    let load = probe(w, true);
    assert!(load.wait_for_version("v1", Duration::from_secs(10)).await);
    let d = w.gl.deploy_and_wait(&w.service, Target::Tag("v2")).await;
    let report = load.stop().await;
    assert_eq!(d["state"], "failed", "{d:#}");
    assert!(
        d["error"].as_str().unwrap().contains("not healthy within"),
        "{d:#}"
    );
    assert_eq!(d["failed_step"], "health_gate", "{d:#}");
    assert_zero_failures(&report, 0);
    assert_eq!(versions(&report), ["v1"], "{}", report.summary());
    // nginx never routed to green; green went back to 0, blue never moved.
    assert_eq!(s.routed(), before);
    assert_eq!(s.tasks("green"), Some((0, 0)));
    assert_eq!(s.tasks("blue"), Some((3, 3)));
    assert_eq!(w.replica_versions().await, ["v1", "v1", "v1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn greenlight_killed_mid_deploy_never_scales_down_the_routed_colour() {
    let mut s = OnSwarm::new(
        "swkill",
        &[("v1", NO_ENV), ("v2", NO_ENV), ("v3", NO_ENV)],
        2,
    );
    s.w.deploy_ok("v1").await;
    let load = probe(&s.w, false);
    assert!(load.wait_for_version("v1", Duration::from_secs(10)).await);

    // Killed at the health gate: green runs, nginx routes to blue. On start
    // green (unrouted) is scaled to 0 and the deployment runs again.
    let (_, green_at_kill, r) = s.killed_at("v2", "health_gate").await;
    assert_eq!(green_at_kill, Some((2, 2)));
    assert_eq!(r["state"], "succeeded", "{r:#}\n{}", s.w.gl.log());
    assert_eq!(s.tasks("green"), Some((2, 2)));
    assert_eq!(s.tasks("blue"), Some((0, 0)));

    // Killed while draining: nginx already routes to blue (v3); green (v2)
    // still runs. On start the routed colour stays, the other goes to 0.
    let (routed, _, r) = s.killed_at("v3", "draining").await;
    assert_eq!(r["state"], "already_live", "{r:#}\n{}", s.w.gl.log());
    assert_eq!(s.routed(), routed, "the routed tasks were never replaced");
    assert_eq!(s.tasks("blue"), Some((2, 2)));
    assert!(
        s.swarm
            .wait_replicas(&s.colour("green"), 0, Duration::from_secs(30)),
        "{:?}",
        s.tasks("green")
    );
    let report = load.stop().await;
    // Reloads: the restarts' reconciles and the switches.
    assert_zero_failures(&report, 6);
    assert_flips_once(&report, &["v1", "v2", "v3"]);
    assert_eq!(s.w.replica_versions().await, ["v3", "v3"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_killed_by_hand_is_replaced_and_nginx_follows() {
    let s = OnSwarm::new("swtask", &[("v1", NO_ENV)], 3);
    let w = &s.w;
    w.deploy_ok("v1").await;
    let load = probe(w, false);
    assert!(load.wait_for_version("v1", Duration::from_secs(10)).await);
    wait_until(|| load.sent_so_far() > 200).await;

    // Kill one routed task's container by hand (SIGKILL: its in-flight
    // requests are lost with it; Swarm replaces the task).
    let svc = w.gl.get(&format!("/api/services/{}", w.service)).await;
    let victim = &svc["replicas"][0];
    let (task, address) = (
        victim["id"].as_str().unwrap().to_string(),
        victim["address"].as_str().unwrap().to_string(),
    );
    kill_task(&task);
    let sent_before_kill = load.sent_so_far();
    let killed_at = Instant::now();

    // nginx follows: the dead task leaves the routing, its replacement (a new
    // task, a new port) joins it once healthy.
    let mut followed = None;
    let mut left = None;
    while followed.is_none() {
        let routed = s.routed();
        if !routed.contains(&address) && left.is_none() {
            left = Some(killed_at.elapsed());
        }
        if routed.len() == 3 && !routed.contains(&address) {
            followed = Some(killed_at.elapsed());
        } else {
            assert!(
                killed_at.elapsed() < Duration::from_secs(60),
                "nginx did not follow: {routed:?}\n{}",
                w.gl.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    eprintln!(
        "the dead task left the routing {:?} after the kill; its replacement joined after {:?}",
        left.unwrap(),
        followed.unwrap()
    );
    let after = load.sent_so_far();
    wait_until(|| load.sent_so_far() > after + 300).await;
    let report = load.stop().await;
    eprintln!("probe: {}", report.summary());
    let failed: Vec<_> = report.samples.iter().filter(|s| !s.is_2xx()).collect();
    // Only requests already sent when the task died may fail: those in
    // flight on it. Everything sent after the kill is answered.
    let late: Vec<_> = failed
        .iter()
        .filter(|s| s.index >= sent_before_kill)
        .collect();
    eprintln!(
        "killed task's in-flight requests lost: {} of {} sent; failed after the kill: {}",
        failed.len(),
        report.sent,
        late.len()
    );
    assert!(late.is_empty(), "{late:?}\n{}", report.summary());
    assert!(failed.len() <= 20, "{}", report.summary());
    assert_eq!(w.replica_versions().await, ["v1", "v1", "v1"]);
    assert_eq!(s.tasks("blue"), Some((3, 3)));

    // Recorded in history: resyncs, each with what changed.
    assert_resynced(w, &task).await;
}

/// The service's history holds resyncs, every one succeeded, one naming `task`.
async fn assert_resynced(w: &World, task: &str) {
    let list =
        w.gl.get(&format!("/api/deployments?service={}", w.service))
            .await;
    let resyncs: Vec<&Value> = list
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["trigger_detail"]["command"] == "resync")
        .collect();
    assert!(!resyncs.is_empty(), "{list:#}");
    assert!(
        resyncs.iter().all(|d| d["state"] == "succeeded"),
        "{resyncs:#?}"
    );
    assert!(
        resyncs.iter().any(|d| d["trigger_detail"]["reason"]
            .as_str()
            .unwrap()
            .contains(task)),
        "{resyncs:#?}"
    );
}

/// The host port a task publishes, at `node` (its node's address).
fn task_address(task: &str, node: &str) -> String {
    let ports = greenlight_testkit::env::docker(&[
        "inspect",
        "--format",
        "{{range .Status.PortStatus.Ports}}{{.PublishedPort}} {{end}}",
        task,
    ])
    .unwrap();
    format!("{node}:{}", ports.split_whitespace().next().unwrap())
}

/// SIGKILLs the container of `task` (as an operator's `docker kill` does).
fn kill_task(task: &str) {
    let container = greenlight_testkit::env::docker(&[
        "inspect",
        "--format",
        "{{.Status.ContainerStatus.ContainerID}}",
        task,
    ])
    .unwrap();
    greenlight_testkit::env::docker(&["kill", container.trim()]).unwrap();
}

/// The addresses of the running tasks of Swarm service `service`, all on the
/// node at `node`, sorted.
fn running_addresses(swarm: &Swarm, service: &str, node: &str) -> Vec<String> {
    let mut out: Vec<String> = swarm
        .running_tasks(service)
        .iter()
        .map(|(task, _)| task_address(task, node))
        .collect();
    out.sort();
    out
}

/// The step deployment `id` is at (or `finished`).
async fn step_of(w: &World, id: i64) -> String {
    let d = w.gl.get(&format!("/api/deployments/{id}")).await;
    d["step"].as_str().unwrap_or("finished").to_string()
}

/// Waits until deployment `id` is at one of `steps` (a short step may pass
/// between two looks: the later ones count too).
async fn wait_step_in(w: &World, id: i64, steps: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let d = w.gl.get(&format!("/api/deployments/{id}")).await;
        if d["step"].as_str().is_some_and(|s| steps.contains(&s)) {
            return;
        }
        assert!(
            d["finished_at"].is_null(),
            "deployment {id} ended before {steps:?}: {d:#}"
        );
        assert!(Instant::now() < deadline, "never reached {steps:?}: {d:#}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The failed requests of `report`: how many, and those that were not in
/// flight at one of the kills. A kill is the request numbers sent just before
/// it was ordered and just after it was done; in flight at it means sent
/// before it was done and at most `window` requests before it was ordered
/// (the probe's slowest requests take 1 s: 100 at 100 req/s).
fn failed_beyond_kills(
    report: &greenlight_testkit::probe::ProbeReport,
    kills: &[(u64, u64)],
    window: u64,
) -> (usize, Vec<String>) {
    let failed: Vec<_> = report.samples.iter().filter(|s| !s.is_2xx()).collect();
    eprintln!(
        "kills between requests {kills:?}; failed requests {:?}",
        failed
            .iter()
            .map(|s| (s.index, s.kind, s.status, s.error))
            .collect::<Vec<_>>()
    );
    let late = failed
        .iter()
        .filter(|s| {
            !kills
                .iter()
                .any(|&(from, to)| s.index < to && s.index + window >= from)
        })
        .map(|s| format!("{s:?}"))
        .collect();
    (failed.len(), late)
}

/// [`kill_task`] under `load`: the request numbers sent just before and just
/// after.
fn kill_under(load: &greenlight_testkit::probe::ProbeHandle, task: &str) -> (u64, u64) {
    let before = load.sent_so_far();
    kill_task(task);
    (before, load.sent_so_far())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_killed_by_hand_during_a_deploy_fails_no_request_sent_after_it() {
    let mut s = OnSwarm::new(
        "swtaskd",
        &[("v1", NO_ENV), ("v2", NO_ENV), ("v3", NO_ENV)],
        3,
    );
    // A gate of ~2 s (20 good probes 100 ms apart), so that the kills below
    // land in it.
    s.w.gl
        .edit_config(|c| c.replace("healthy_after = 3", "healthy_after = 20"));
    s.w.gl.restart();
    let w = &s.w;
    w.deploy_ok("v1").await;
    let load = probe(w, false);
    assert!(load.wait_for_version("v1", Duration::from_secs(10)).await);
    wait_until(|| load.sent_so_far() > 100).await;
    let started = Instant::now();

    // 1. An old, routed task (blue, v1) killed while green's tasks are gated:
    // nginx's next try takes another blue task, the switch goes to green,
    // blue (with Swarm's replacement of the killed task) is scaled to 0.
    let (old_task, _) = s.swarm.running_tasks(&s.colour("blue"))[0].clone();
    let old_address = task_address(&old_task, "127.0.0.1");
    assert!(s.routed().contains(&old_address), "{:?}", s.routed());
    let id = w.gl.deploy(&w.service, Target::Tag("v2")).await;
    wait_step_in(w, id, &["health_gate"]).await;
    let kill1 = kill_under(&load, &old_task);
    let at = step_of(w, id).await;
    assert_eq!(at, "health_gate");
    let d = w.gl.wait_done(id).await;
    assert_eq!(d["state"], "succeeded", "{d:#}\n{}", w.gl.log());
    assert_eq!(
        s.routed(),
        running_addresses(&s.swarm, &s.colour("green"), "127.0.0.1")
    );
    assert_eq!(s.routed().len(), 3);
    assert_eq!(s.tasks("blue"), Some((0, 0)));
    eprintln!(
        "1: killed old task {old_task} ({old_address}) at {at}: deployment {}",
        d["state"]
    );

    // 2. A new task (blue, v3) killed during its gate: it is indistinguishable
    // from a version that crashes on start (exit 137 is also the OOM
    // killer's), so the deployment fails there and blue goes back to 0; green
    // (v2), routed throughout, keeps serving.
    let before = s.routed();
    let id = w.gl.deploy(&w.service, Target::Tag("v3")).await;
    wait_step_in(w, id, &["health_gate"]).await;
    let (new_task, _) = s.swarm.running_tasks(&s.colour("blue"))[0].clone();
    let kill2 = kill_under(&load, &new_task);
    let at = step_of(w, id).await;
    assert_eq!(at, "health_gate");
    let d = w.gl.wait_done(id).await;
    assert_eq!(d["state"], "failed", "{d:#}\n{}", w.gl.log());
    assert_eq!(d["failed_step"], "health_gate", "{d:#}");
    assert!(d["error"].as_str().unwrap().contains("exited"), "{d:#}");
    assert_eq!(s.routed(), before);
    assert!(
        s.swarm
            .wait_replicas(&s.colour("blue"), 0, Duration::from_secs(30)),
        "{:?}",
        s.tasks("blue")
    );
    assert_eq!(s.tasks("green"), Some((3, 3)));
    eprintln!("2: killed new task {new_task} at {at}: {}", d["error"]);

    // 3. A new task (blue, v3), routed since the switch, killed while the old
    // workers drain: the deployment owns the routing until it ends, nginx's
    // next try skips the dead endpoint; then the watcher's resync takes it
    // out and adds Swarm's replacement (a new port) once it passes the gate.
    let id = w.gl.deploy(&w.service, Target::Tag("v3")).await;
    wait_step_in(w, id, &["draining", "stopping_old"]).await;
    let routed_at_kill = s.routed();
    let (new_task, _) = s.swarm.running_tasks(&s.colour("blue"))[0].clone();
    let new_address = task_address(&new_task, "127.0.0.1");
    assert!(routed_at_kill.contains(&new_address), "{routed_at_kill:?}");
    let kill3 = kill_under(&load, &new_task);
    let killed_at = Instant::now();
    let at = step_of(w, id).await;
    let d = w.gl.wait_done(id).await;
    assert_eq!(d["state"], "succeeded", "{d:#}\n{}", w.gl.log());
    let mut left = None;
    loop {
        let routed = s.routed();
        if !routed.contains(&new_address) && left.is_none() {
            left = Some(killed_at.elapsed());
        }
        if routed.len() == 3
            && routed == running_addresses(&s.swarm, &s.colour("blue"), "127.0.0.1")
        {
            break;
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(45),
            "nginx did not follow: {routed:?}\n{}",
            w.gl.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let followed = killed_at.elapsed();
    eprintln!(
        "3: killed routed new task {new_task} ({new_address}) at {at}: the deployment {}; \
         the dead endpoint left nginx {:?} after the kill, the replacement joined after {followed:?}",
        d["state"],
        left.unwrap()
    );
    assert_eq!(s.tasks("green"), Some((0, 0)));
    assert_eq!(w.replica_versions().await, ["v3", "v3", "v3"]);
    let after = load.sent_so_far();
    wait_until(|| load.sent_so_far() > after + 100).await;
    let report = load.stop().await;
    eprintln!("probe: {}", report.summary());
    eprintln!("three deploys and three kills took {:?}", started.elapsed());

    // Only requests in flight on a killed task may fail.
    let (failed, late) = failed_beyond_kills(&report, &[kill1, kill2, kill3], 110);
    eprintln!(
        "failed: {failed} of {} sent (in flight on the killed tasks); failed otherwise: {}",
        report.sent,
        late.len()
    );
    assert!(late.is_empty(), "{late:?}\n{}", report.summary());

    // The resync is recorded, with the killed task named.
    assert_resynced(w, &new_task).await;
}

/// Waits (up to a minute) until `cond` holds.
async fn wait_until(cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "condition not met within a minute"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Two nodes: the test's engine is the manager, advertised on a veth
/// address, and a second engine in its own network namespace joins as a
/// worker. Tasks run on both; nginx on the host reaches each at its node's
/// address. Dropped in order: the Swarm and the second node first, the world
/// next (its cleanup removes the task containers), the local builds last.
struct TwoNodes {
    swarm: Swarm,
    node: SecondNode,
    w: World,
    _images: Images,
}

impl TwoNodes {
    /// Both nodes Ready, a world of `versions` with `replicas` tasks a colour.
    /// No registry: the images are local builds (pull = false, so services
    /// name them by ID), loaded into the second engine with the same ID
    /// ([`TwoNodes::pulling`] has both nodes pull from the registry instead).
    fn start(tag: &str, versions: &[(&str, &[(&str, &str)])], replicas: u32) -> TwoNodes {
        let prefix = common::prefix(tag);
        let (swarm, node) = TwoNodes::nodes(tag);
        let mut w = World::with_config(tag, NginxKind::Host, versions, SWARM_RUNTIME);
        for (v, _) in versions {
            let local = format!("{prefix}-build:{v}");
            let opts = DemoImageOpts {
                healthcheck: false,
                env: vec![("GL_TEST_WORLD".into(), prefix.clone())],
            };
            build_demo_image(&local, v, opts).unwrap();
            node.load_image(&local).unwrap();
        }
        let repo = w.repo.clone();
        w.gl.edit_config(|c| {
            c.replace(
                &format!("image = \"{repo}\"\n"),
                &format!("image = \"{prefix}-build\"\npull = false\n"),
            )
        });
        w.configure(&format!("replicas = {replicas}"), "");
        TwoNodes {
            swarm,
            node,
            w,
            _images: Images(vec![format!("{prefix}-build")]),
        }
    }

    /// The manager (advertised on the veth) and the second node, both Ready.
    fn nodes(tag: &str) -> (Swarm, SecondNode) {
        let node = SecondNode::start(tag).unwrap();
        let swarm = Swarm::init_on(&common::prefix(tag), &node.host_addr).unwrap();
        node.join().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while ready_nodes() < 2 {
            assert!(Instant::now() < deadline, "the second node never got Ready");
            std::thread::sleep(Duration::from_millis(100));
        }
        (swarm, node)
    }

    /// Like [`TwoNodes::start`], with the versions pushed to the world's
    /// registry, which requires a user (greenlight's `[[registry]]` entry has
    /// the password): both nodes pull `repo@digest` from it under the one
    /// name `127.0.0.1:<port>`, the second node through a forwarder from its
    /// own loopback.
    fn pulling(tag: &str, versions: &[(&str, &[(&str, &str)])], replicas: u32) -> TwoNodes {
        let (swarm, node) = TwoNodes::nodes(tag);
        let user = BasicAuth {
            username: "swarm-puller".into(),
            password: "staple-battery-horse".into(),
        };
        let password = user.password.clone();
        let mut w = World::with_registry_auth(tag, versions, user, &password, SWARM_RUNTIME);
        node.forward_loopback(w.registry.port()).unwrap();
        w.configure(&format!("replicas = {replicas}"), "");
        let repo = w.repo.clone();
        TwoNodes {
            swarm,
            node,
            w,
            _images: Images(vec![repo]),
        }
    }

    /// Two nodes with v1 deployed as 4 tasks, routed on both nodes.
    async fn v1_on_both(tag: &str) -> TwoNodes {
        let t = TwoNodes::start(tag, &[("v1", NO_ENV)], 4);
        t.w.deploy_ok("v1").await;
        let routed = routed(&t.w);
        assert_eq!(routed.len(), 4, "{routed:?}");
        for at in [&t.node.host_addr, &t.node.addr] {
            assert!(on(&routed, at) >= 1, "{routed:?}");
        }
        t
    }

    /// The second node's name in the Swarm (its hostname), and the IDs of
    /// the blue tasks Swarm wants running there.
    fn blue_on_node2(&self) -> (String, Vec<String>) {
        let node2 = self
            .node
            .docker(&["info", "--format", "{{.Name}}"])
            .unwrap()
            .trim()
            .to_string();
        let tasks = tasks_on(&format!("{}-blue", self.w.service), &node2);
        (node2, tasks)
    }
}

/// How many nodes of the Swarm are Ready.
fn ready_nodes() -> usize {
    greenlight_testkit::env::docker(&["node", "ls", "--format", "{{.Status}}"])
        .unwrap()
        .lines()
        .filter(|s| *s == "Ready")
        .count()
}

/// How many of `addrs` are at `at` (a node's address).
fn on(addrs: &[String], at: &str) -> usize {
    addrs
        .iter()
        .filter(|a| a.starts_with(&format!("{at}:")))
        .count()
}

/// The IDs of the tasks of Swarm service `service` that Swarm wants running
/// on node `node`.
fn tasks_on(service: &str, node: &str) -> Vec<String> {
    greenlight_testkit::env::docker(&[
        "service",
        "ps",
        service,
        "--filter",
        &format!("node={node}"),
        "--filter",
        "desired-state=running",
        "--format",
        "{{.ID}}",
    ])
    .unwrap()
    .lines()
    .map(str::to_string)
    .collect()
}

/// After a node change at `since`: waits until nginx routes to the service's
/// `n` tasks, all running on the manager, and none on the second node.
/// Returns (when the second node left the routing, when the routing was
/// whole again), both after `since`.
async fn wait_all_on_manager(t: &TwoNodes, n: usize, since: Instant) -> (Duration, Duration) {
    let blue = format!("{}-blue", t.w.service);
    let mut left = None;
    loop {
        let r = routed(&t.w);
        if left.is_none() && on(&r, &t.node.addr) == 0 {
            left = Some(since.elapsed());
        }
        if r.len() == n
            && on(&r, &t.node.host_addr) == n
            && r == running_addresses(&t.swarm, &blue, &t.node.host_addr)
        {
            return (left.unwrap(), since.elapsed());
        }
        assert!(
            since.elapsed() < Duration::from_secs(60),
            "nginx did not follow within a minute: {r:?}\n{}",
            t.w.gl.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_node_leaves_nginx_before_its_tasks_stop() {
    let t = TwoNodes::v1_on_both("swdrain").await;
    let w = &t.w;
    let blue = format!("{}-blue", w.service);
    let (node2, moved) = t.blue_on_node2();
    let load = probe(w, false);
    assert!(load.wait_for_version("v1", Duration::from_secs(10)).await);
    wait_until(|| load.sent_so_far() > 100).await;

    // Swarm sets the drained node's tasks to shut down, signals them ~2 s
    // later, and starts replacements on the manager.
    greenlight_testkit::env::docker(&["node", "update", "--availability", "drain", &node2])
        .unwrap();
    let drained = Instant::now();
    let (left, whole) = wait_all_on_manager(&t, 4, drained).await;
    // When the second node's task containers had all stopped.
    let stopped = loop {
        if t.node.docker(&["ps", "-q"]).unwrap().trim().is_empty() {
            break drained.elapsed();
        }
        assert!(drained.elapsed() < Duration::from_secs(60));
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let after = load.sent_so_far();
    wait_until(|| load.sent_so_far() > after + 100).await;
    let report = load.stop().await;
    eprintln!(
        "drain of {node2} ({} of its tasks): nginx stopped routing to it {left:?} after the \
         drain, its containers had all stopped by {stopped:?}, nginx routed to 4 tasks on \
         the manager after {whole:?}",
        moved.len()
    );
    assert_zero_failures(&report, 0);
    assert!(
        left < stopped,
        "nginx routed to the node after its tasks stopped"
    );
    assert_eq!(t.swarm.nodes_of(&blue).len(), 1);
    // Local builds: the API's digests are their image IDs.
    assert_eq!(w.replica_versions().await.len(), 4);
    assert_resynced(w, &moved[0]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_goes_down_never_leaves_nginx_on_dead_endpoints_only() {
    let t = TwoNodes::v1_on_both("swdown").await;
    let w = &t.w;
    let (node2, lost) = t.blue_on_node2();
    // Until Swarm declares the node down (~12 s) its endpoints stay routed;
    // a connect to one then hangs (nothing answers, not even a refusal)
    // until the kernel gives the address up, and nginx waits for it as long
    // as proxy_connect_timeout (60 s by default): requests sent then outlast
    // the probe's 10 s. A short connect timeout on the site makes nginx try
    // the next peer after 1 s (a connect that timed out sent nothing, so
    // every method is retried) and mark the dead one failed.
    w.nginx.add_to_site("proxy_connect_timeout 1s;").unwrap();
    let load = probe(w, false);
    assert!(load.wait_for_version("v1", Duration::from_secs(10)).await);
    wait_until(|| load.sent_so_far() > 100).await;

    // The node drops off the network: nothing reaches it or its tasks.
    let sent_before_cut = load.sent_so_far();
    t.node.cut().unwrap();
    let cut = Instant::now();
    let sent_at_cut = load.sent_so_far();
    let mut down = None;
    let left = loop {
        let r = routed(w);
        // nginx always routes to the manager's live tasks too.
        assert!(on(&r, &t.node.host_addr) >= 1, "{r:?}");
        if down.is_none()
            && greenlight_testkit::env::docker(&[
                "node",
                "inspect",
                "--format",
                "{{.Status.State}}",
                &node2,
            ])
            .unwrap()
            .trim()
                == "down"
        {
            down = Some(cut.elapsed());
        }
        if on(&r, &t.node.addr) == 0 {
            break cut.elapsed();
        }
        assert!(
            cut.elapsed() < Duration::from_secs(60),
            "nginx still routes to the cut-off node: {r:?}\n{}",
            w.gl.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (_, whole) = wait_all_on_manager(&t, 4, cut).await;
    let after = load.sent_so_far();
    wait_until(|| load.sent_so_far() > after + 100).await;
    let report = load.stop().await;
    eprintln!("probe: {}", report.summary());
    let failed: Vec<_> = report.samples.iter().filter(|s| !s.is_2xx()).collect();
    let slow = report
        .samples
        .iter()
        .filter(|s| s.index >= sent_at_cut && s.is_2xx() && s.latency_ms > 2000.0)
        .count();
    eprintln!(
        "node {node2} cut off ({} of 4 tasks): Swarm saw it down after {:?}; nginx stopped \
         routing to it {left:?} after the cut and routed to 4 tasks on the manager after \
         {whole:?}; failed requests: {} of {}; answered but slower than 2 s after the cut: \
         {slow}",
        lost.len(),
        down,
        failed.len(),
        report.sent,
    );
    // Only requests in flight on the node's tasks when it went may be lost
    // with it; every request sent after the cut is answered, late or not.
    let (_, late) = failed_beyond_kills(&report, &[(sent_before_cut, sent_at_cut)], 110);
    assert!(late.is_empty(), "{late:?}\n{}", report.summary());
    assert_eq!(w.replica_versions().await.len(), 4);
    assert_resynced(w, &lost[0]).await;
    t.node.mend().unwrap();
}

/// The digests of the images the second node holds.
fn digests_on(node: &SecondNode) -> Vec<String> {
    node.docker(&["images", "--digests", "--format", "{{.Digest}}"])
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushed_images_are_pulled_on_both_nodes_with_the_registry_credentials() {
    let t = TwoNodes::pulling(
        "swpull",
        &[("v1", NO_ENV), ("v2", NO_ENV), ("v3", NO_ENV)],
        4,
    );
    let w = &t.w;
    assert!(digests_on(&t.node).is_empty());
    let d1 = w.deploy_ok("v1").await;
    assert_eq!(d1["digest"], w.digest("v1"));
    let blue = format!("{}-blue", w.service);
    assert_eq!(t.swarm.nodes_of(&blue).len(), 2);
    let v1_routed = routed(w);
    for at in [&t.node.host_addr, &t.node.addr] {
        assert!(on(&v1_routed, at) >= 1, "{v1_routed:?}");
    }
    // The second node pulled the pinned digest itself.
    assert!(
        digests_on(&t.node).contains(&w.digest("v1").to_string()),
        "{:?}",
        digests_on(&t.node)
    );
    assert_eq!(w.replica_versions().await, ["v1", "v1", "v1", "v1"]);

    let load = probe(w, false);
    assert!(load.wait_for_version("v1", Duration::from_secs(10)).await);
    let before = w.registry.log().len();
    let started = Instant::now();
    let d2 = w.deploy_ok("v2").await;
    let took = started.elapsed();
    let report = load.stop().await;
    assert_zero_failures(&report, 1);
    assert_flips_once(&report, &["v1", "v2"]);
    assert_eq!(d2["digest"], w.digest("v2"));
    let green = format!("{}-green", w.service);
    assert_eq!(t.swarm.nodes_of(&green).len(), 2);
    assert!(on(&routed(w), &t.node.addr) >= 1, "{:?}", routed(w));
    assert!(digests_on(&t.node).contains(&w.digest("v2").to_string()));
    assert_eq!(w.replica_versions().await, ["v2", "v2", "v2", "v2"]);
    // Each engine's GET of the digest was let in with the user's password
    // (the registry lets nothing in without it): greenlight's pull on the
    // manager, the second node's for its tasks.
    let log = w.registry.log()[before..].to_string();
    let pulls = log
        .lines()
        .filter(|l| {
            l.contains("msg=\"authorized request\"")
                && l.contains("http.request.method=GET ")
                && l.contains(&format!("/manifests/{}", w.digest("v2")))
        })
        .count();
    eprintln!(
        "v2 deployed on two nodes from the registry in {took:?}; authorized GETs of its \
         manifest: {pulls}; v1 routed to {v1_routed:?}, v2 to {:?}",
        routed(w)
    );
    assert!(pulls >= 2, "registry log:\n{log}");
    assert!(
        !log.contains("authentication failure"),
        "registry log:\n{log}"
    );

    // v3 as a rolling update (`--strategy rolling`, one task per batch): each
    // later batch scales blue up, and its new task's node pulls v3 with the
    // credentials. A short monitor per batch, by a live reload.
    w.gl.edit_config(|c| {
        c.replacen(
            "keep_images = 2\n",
            "keep_images = 2\nmonitor = \"1s\"\n",
            1,
        )
    });
    let (status, v) = w.gl.api(reqwest::Method::POST, "/api/reload", None).await;
    assert_eq!(status, 200, "{v}");
    let load = probe(w, false);
    assert!(load.wait_for_version("v2", Duration::from_secs(10)).await);
    let (status, v) =
        w.gl.api(
            reqwest::Method::POST,
            &format!("/api/services/{}/deploy", w.service),
            Some(serde_json::json!({"tag": "v3", "strategy": "rolling"})),
        )
        .await;
    assert_eq!(status, 202, "{v}");
    let d3 = w.gl.wait_done(v["deployment"].as_i64().unwrap()).await;
    let report = load.stop().await;
    eprintln!("v2 -> v3 rolling on two nodes: {}", report.summary());
    assert_eq!(d3["state"], "succeeded", "{d3:#}\n{}", w.gl.log());
    assert_eq!(d3["strategy"], "rolling", "{d3:#}");
    assert_eq!(recorded(&d3, "switching").len(), 4, "{}", details(&d3));
    assert_zero_failures(&report, 4);
    assert_eq!(t.swarm.nodes_of(&blue).len(), 2);
    assert!(digests_on(&t.node).contains(&w.digest("v3").to_string()));
    assert_eq!(w.replica_versions().await, ["v3", "v3", "v3", "v3"]);
    assert!(!w.registry.log().contains("authentication failure"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_on_two_nodes_are_reached_on_both_and_deploys_lose_nothing() {
    let t = TwoNodes::start("sw2n", &[("v1", NO_ENV), ("v2", NO_ENV)], 4);
    let w = &t.w;
    w.deploy_ok("v1").await;
    let blue = format!("{}-blue", w.service);
    assert_eq!(
        t.swarm.nodes_of(&blue).len(),
        2,
        "{:?}",
        t.swarm.nodes_of(&blue)
    );
    let v1_routed = routed(w);
    assert_eq!(v1_routed.len(), 4, "{v1_routed:?}");
    for at in [&t.node.host_addr, &t.node.addr] {
        assert!(on(&v1_routed, at) >= 1, "{v1_routed:?}");
    }

    let load = probe(w, false);
    assert!(load.wait_for_version("v1", Duration::from_secs(10)).await);
    w.deploy_ok("v2").await;
    let report = load.stop().await;
    assert_zero_failures(&report, 1);
    assert_flips_once(&report, &["v1", "v2"]);
    let green = format!("{}-green", w.service);
    assert_eq!(t.swarm.nodes_of(&green).len(), 2);
    let v2_routed = routed(w);
    assert!(on(&v2_routed, &t.node.addr) >= 1, "{v2_routed:?}");
    eprintln!("v1 routed to {v1_routed:?}, v2 to {v2_routed:?}");
    // Local builds: the API's digests are their image IDs; all four run.
    assert_eq!(w.replica_versions().await.len(), 4);
    assert_eq!(w.served().await, (200, "v2".to_string()));
}

/// The detail of every recorded step of `d`, one per line.
fn details(d: &Value) -> String {
    d["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            format!(
                "{}: {}",
                s["step"],
                s["detail"].as_str().unwrap_or_default()
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A rolling update on Swarm: tasks of the new colour join nginx one batch at
/// a time (the colour's service scaled up, the tasks already routed left as
/// they are), the old colour's tasks leave nginx batch by batch and stop
/// together once the last has left (Swarm would choose which task a
/// scale-down stops). A batch that fails its gate switches nginx back to the
/// old tasks, all still running, in one reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_on_swarm_moves_traffic_batch_by_batch_and_a_bad_batch_switches_back() {
    let s = OnSwarm::with_rollout(
        "swroll",
        &[
            ("v1", NO_ENV),
            ("v2", NO_ENV),
            ("v3", &[("DEMO_UNHEALTHY_REPLICAS", "2")]),
        ],
        3,
        "strategy = \"rolling\"\nmax_surge = 1\nmax_unavailable = 0\nmonitor = \"1s\"",
    );
    let w = &s.w;
    // `check` says what a rolling update on Swarm needs.
    let (ok, text) = check(&w.gl.config_path);
    assert!(
        text.contains(&format!(
            "needs room for twice the replicas: {} (6 tasks)",
            w.service
        )),
        "{text}"
    );
    assert!(ok, "{text}");
    // Nothing live: blue's tasks start one batch at a time too.
    let d1 = w.deploy_ok("v1").await;
    assert_eq!(recorded(&d1, "starting").len(), 3, "{}", details(&d1));
    assert_eq!(s.tasks("blue"), Some((3, 3)));
    let v1_routed = s.routed();
    assert_eq!(v1_routed.len(), 3, "{v1_routed:?}");

    let load = probe(w, false);
    assert!(load.wait_for_version("v1", Duration::from_secs(10)).await);
    let id = w.gl.deploy(&w.service, Target::Tag("v2")).await;
    // Mid-update: green runs part of the tasks, blue still runs all three
    // (one of them already out of nginx), nginx routes three.
    wait_step_of_batch(w, id, "monitoring", 2).await;
    assert_eq!(s.tasks("green"), Some((2, 2)));
    assert_eq!(s.tasks("blue"), Some((3, 3)));
    let mid = s.routed();
    assert_eq!(mid.len(), 3, "{mid:?}");
    assert_eq!(
        mid.iter().filter(|a| v1_routed.contains(a)).count(),
        1,
        "{mid:?} vs {v1_routed:?}"
    );
    let d2 = w.gl.wait_done(id).await;
    assert_eq!(d2["state"], "succeeded", "{d2:#}\n{}", w.gl.log());
    let report = load.stop().await;
    eprintln!("v1 -> v2 rolling: {}", report.summary());
    assert_zero_failures(&report, 1);
    let seen = versions(&report);
    assert!(seen.contains(&"v1") && seen.contains(&"v2"), "{seen:?}");
    // One reload per batch; each batch started one green task.
    assert_eq!(recorded(&d2, "switching").len(), 3, "{}", details(&d2));
    let started: Vec<String> = recorded(&d2, "starting")
        .iter()
        .map(|s| s["replicas"].as_str().unwrap().to_string())
        .collect();
    let green: Vec<String> = (1..=3)
        .map(|k| format!("{}-green-{k}", w.service))
        .collect();
    assert_eq!(started, green);
    let text = details(&d2);
    assert!(
        text.contains("left nginx and stops with the last"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "stopped {}",
            names(w, "blue", 3).replace(',', ", ")
        )),
        "{text}"
    );
    assert_eq!(s.tasks("green"), Some((3, 3)));
    assert_eq!(s.tasks("blue"), Some((0, 0)));
    assert_eq!(w.replica_versions().await, ["v2", "v2", "v2"]);
    let v2_routed = s.routed();

    // v3: its second task never gets healthy. The first batch moved one task;
    // the failing second batch switches nginx back to all three green tasks.
    let load = probe(w, true);
    assert!(load.wait_for_version("v2", Duration::from_secs(10)).await);
    let d3 = w.gl.deploy_and_wait(&w.service, Target::Tag("v3")).await;
    let report = load.stop().await;
    eprintln!("v2 -> v3 rolling, batch 2 unhealthy: {}", report.summary());
    assert_eq!(d3["state"], "rolled_back", "{d3:#}\n{}", w.gl.log());
    assert_eq!(d3["failed_step"], "health_gate", "{d3:#}");
    assert_zero_failures(&report, 1);
    assert_eq!(s.routed(), v2_routed);
    assert_eq!(s.tasks("blue"), Some((0, 0)));
    assert_eq!(s.tasks("green"), Some((3, 3)));
    assert_eq!(w.replica_versions().await, ["v2", "v2", "v2"]);
}

/// Waits until deployment `id` is at `step` of batch `batch`.
async fn wait_step_of_batch(w: &World, id: i64, step: &str, batch: u64) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let d = w.gl.get(&format!("/api/deployments/{id}")).await;
        let last = d["steps"].as_array().and_then(|s| s.last()).cloned();
        if d["step"] == step && last.is_some_and(|s| s["batch"].as_u64() == Some(batch)) {
            return;
        }
        assert!(
            d["finished_at"].is_null(),
            "ended before {step} {batch}: {d:#}"
        );
        assert!(
            Instant::now() < deadline,
            "never reached {step} {batch}: {d:#}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A canary on Swarm: the new colour's tasks get a sticky share of users
/// through nginx's split, then everyone; one that fails every request is
/// aborted at once and its colour scaled back to 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_on_swarm_is_promoted_when_good_and_aborted_when_failing() {
    let s = OnSwarm::with_rollout(
        "swcan",
        &[
            ("v1", NO_ENV),
            ("v2", NO_ENV),
            ("v3", &[("DEMO_ERROR_PERCENT", "100")]),
        ],
        2,
        "strategy = \"canary\"\n[service.canary]\nsteps = [10, 50]\nbake = \"4s\"\n\
         interval = \"1s\"\nmin_requests = 20\nmax_extension = \"6s\"\nfailed_checks = 2\n",
    );
    let w = &s.w;
    w.deploy_ok("v1").await;
    w.nginx.use_canary_site().unwrap();
    let users = || {
        greenlight_testkit::probe::Probe::start(greenlight_testkit::probe::ProbeOpts {
            base_url: w.nginx.url(),
            rate: 100,
            post_ratio: 0.3,
            keepalive: false,
            users: 200,
            ..Default::default()
        })
    };
    let load = users();
    assert!(load.wait_for_version("v1", Duration::from_secs(10)).await);
    let d2 = w.deploy_ok("v2").await;
    let report = load.stop().await;
    eprintln!("canary v1 -> v2: {}", report.summary());
    assert_zero_failures(&report, 1);
    let stages: Vec<u64> = recorded(&d2, "canary")
        .iter()
        .map(|s| s["batch"].as_u64().unwrap())
        .collect();
    assert_eq!(stages, [1, 2], "{}", details(&d2));
    assert_eq!(s.tasks("green"), Some((2, 2)));
    assert_eq!(s.tasks("blue"), Some((0, 0)));
    assert_eq!(w.replica_versions().await, ["v2", "v2"]);
    let v2_routed = s.routed();

    // Every request to v3 fails: aborted at its first share, nginx back on
    // green alone, blue scaled to 0 again.
    let load = users();
    assert!(load.wait_for_version("v2", Duration::from_secs(10)).await);
    let d3 = w.gl.deploy_and_wait(&w.service, Target::Tag("v3")).await;
    let report = load.stop().await;
    let failed = report.samples.iter().filter(|s| !s.is_2xx()).count();
    eprintln!(
        "canary v2 -> v3 (every request 500): {failed} failed of {}; {}",
        report.sent,
        report.summary()
    );
    assert_eq!(d3["state"], "rolled_back", "{d3:#}\n{}", w.gl.log());
    assert!(d3["error"].as_str().unwrap().contains("flagrant"), "{d3:#}");
    let first = &recorded(&d3, "canary")[0];
    let routed_s = (first["finished_at"].as_i64().unwrap() - first["started_at"].as_i64().unwrap())
        as f64
        / 1000.0;
    // Only the canary's share of users met v3: 10% of 100 req/s while it
    // was routed; nobody else saw an error.
    let bound = 2.0 * 0.1 * 100.0 * routed_s + 10.0;
    eprintln!("aborted after {routed_s:.1}s; bound {bound:.0}");
    assert!(
        failed > 0 && (failed as f64) <= bound,
        "{failed} failed: {}",
        report.summary()
    );
    assert_eq!(s.routed(), v2_routed);
    assert_eq!(s.tasks("blue"), Some((0, 0)));
    assert_eq!(s.tasks("green"), Some((2, 2)));
    assert_eq!(w.replica_versions().await, ["v2", "v2"]);
}

/// greenlight SIGKILLed in the middle of a rolling update on Swarm, while it
/// drains the second batch: nginx routes to two green tasks and one blue, and
/// blue runs all three. On start the unrouted blue tasks are left to stop with
/// their colour (a scale-down would let Swarm pick the routed one), the re-run
/// adds the third green task to the colour and then scales blue to 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_update_killed_mid_batch_resumes_and_never_stops_a_routed_task() {
    let mut s = OnSwarm::with_rollout(
        "swrkill",
        &[("v1", NO_ENV), ("v2", NO_ENV)],
        3,
        "strategy = \"rolling\"\nmax_surge = 1\nmax_unavailable = 0\nmonitor = \"1s\"",
    );
    s.w.deploy_ok("v1").await;
    let load = probe(&s.w, false);
    assert!(load.wait_for_version("v1", Duration::from_secs(10)).await);
    let (routed, green_at_kill, r) = s.killed_at("v2", "draining:2").await;
    eprintln!("at the kill: routed {routed:?}, green {green_at_kill:?}");
    assert_eq!(routed.len(), 3, "{routed:?}");
    assert_eq!(green_at_kill, Some((2, 2)));
    assert_eq!(r["state"], "succeeded", "{r:#}\n{}", s.w.gl.log());
    // The re-run replaced only what was left: one batch, one green task.
    let started = recorded(&r, "starting");
    assert_eq!(started.len(), 1, "{}", details(&r));
    assert_eq!(
        started[0]["replicas"],
        format!("{}-green-3", s.w.service),
        "{}",
        details(&r)
    );
    let report = load.stop().await;
    eprintln!("rolling killed mid-batch: {}", report.summary());
    // Reloads: the batches, the restart's reconcile and the re-run's batch.
    assert_zero_failures(&report, 5);
    assert_eq!(s.tasks("green"), Some((3, 3)));
    assert_eq!(s.tasks("blue"), Some((0, 0)));
    assert_eq!(s.w.replica_versions().await, ["v2", "v2", "v2"]);
}

/// Swarm secrets made by a test, removed on drop (after the services that
/// use them: declare it before the [`OnSwarm`]).
struct Secrets(Vec<String>);

impl Secrets {
    /// `docker secret create name` with `value`.
    fn create(&mut self, name: &str, value: &str) {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), value).unwrap();
        greenlight_testkit::env::docker(&["secret", "create", name, file.path().to_str().unwrap()])
            .unwrap();
        self.0.push(name.to_string());
    }
}

impl Drop for Secrets {
    fn drop(&mut self) {
        for name in &self.0 {
            // Gone already when the test's Swarm was left.
            let _ = greenlight_testkit::env::docker(&["secret", "rm", name]);
        }
    }
}

/// `secrets` on Swarm: each is a file in every task (a name under
/// /run/secrets/, or a path with its own mode); `check` and a deploy name a
/// missing secret with the command that makes it, and nothing starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swarm_secrets_reach_every_task_and_a_missing_one_is_named() {
    let mut secrets = Secrets(Vec::new());
    let mut s = OnSwarm::new(
        "swsec",
        &[
            ("v1", NO_ENV),
            // v2 starts only when the file holds "v2" or later.
            ("v2", &[("DEMO_REQUIRE_FILE", "/etc/app/version")]),
        ],
        2,
    );
    let prefix = common::prefix("swsec");
    let (token, version) = (format!("{prefix}-token"), format!("{prefix}-version"));
    s.w.gl.edit_config(|c| {
        c.replacen(
            "port = 8080\n",
            &format!(
                "port = 8080\nsecrets = [\"{token}\", {{ source = \"{version}\", target = \"/etc/app/version\", mode = 0o400 }}]\n"
            ),
            1,
        )
    });
    s.w.gl.restart();
    let w = &s.w;

    // Missing: `check` says so, and a deploy fails before any task starts.
    let (ok, text) = check(&w.gl.config_path);
    assert!(!ok, "{text}");
    assert!(
        text.contains(&format!("docker secret create {token} -")),
        "{text}"
    );
    let d = w.gl.deploy_and_wait(&w.service, Target::Tag("v1")).await;
    assert_eq!(d["state"], "failed", "{d:#}");
    assert_eq!(d["failed_step"], "starting", "{d:#}");
    assert!(
        d["error"]
            .as_str()
            .unwrap()
            .contains(&format!("the Swarm secret {token:?} does not exist")),
        "{d:#}"
    );
    assert_eq!(s.tasks("blue"), None, "no service was made");

    secrets.create(&token, "s3cret");
    secrets.create(&version, "v2");
    let (ok, text) = check(&w.gl.config_path);
    assert!(ok, "{text}");
    assert!(text.contains("Swarm secrets found"), "{text}");
    w.deploy_ok("v1").await;
    let load = probe(w, false);
    assert!(load.wait_for_version("v1", Duration::from_secs(10)).await);
    // v2 runs only if its task reads "v2" from the secret's file.
    w.deploy_ok("v2").await;
    let report = load.stop().await;
    assert_zero_failures(&report, 1);
    assert_eq!(w.replica_versions().await, ["v2", "v2"]);
    let spec = greenlight_testkit::env::docker(&[
        "service",
        "inspect",
        &s.colour("green"),
        "--format",
        "{{json .Spec.TaskTemplate.ContainerSpec.Secrets}}",
    ])
    .unwrap();
    let mounted: Value = serde_json::from_str(spec.trim()).unwrap();
    let files: Vec<(String, String, u64)> = mounted
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["SecretName"].as_str().unwrap().to_string(),
                m["File"]["Name"].as_str().unwrap().to_string(),
                m["File"]["Mode"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        files,
        [
            (token.clone(), token.clone(), 0o444),
            (version.clone(), "/etc/app/version".to_string(), 0o400)
        ]
    );
    drop(s);
}

/// The release command on Swarm is a job (`<service>-release`, one task,
/// never restarted) with the service's mounts, run once before the new
/// tasks; a failing one ends the deployment at `releasing` with its output,
/// before any task of the new version starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_on_swarm_runs_once_as_a_job_before_the_new_tasks() {
    const MIGRATES: &[(&str, &str)] = &[
        ("DEMO_REQUIRE_FILE", "/data/schema"),
        ("DEMO_MIGRATE_SLEEP_MS", "1500"),
    ];
    let data = tempfile::tempdir().unwrap();
    let mut s = OnSwarm::with_rollout(
        "swrel",
        &[
            ("v1", MIGRATES),
            ("v2", MIGRATES),
            ("v3", &[("DEMO_MIGRATE_FAIL", "1")]),
        ],
        2,
        "\n[service.release]\ncommand = [\"--migrate\", \"/data/schema\"]\ntimeout = \"60s\"\n",
    );
    let volume = format!("volumes = [\"{}:/data\"]\n", data.path().display());
    s.w.gl
        .edit_config(|c| c.replacen("port = 8080\n", &format!("port = 8080\n{volume}"), 1));
    s.w.gl.restart();
    let w = &s.w;
    let job = format!("{}-release", w.service);
    let schema = data.path().join("schema");

    // While it runs, the release is a Swarm job.
    let id = w.gl.deploy(&w.service, Target::Tag("v1")).await;
    wait_step(w, id, "releasing").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mode = loop {
        let mode = greenlight_testkit::env::docker(&[
            "service",
            "inspect",
            &job,
            "--format",
            "{{json .Spec.Mode}}",
        ]);
        if let Ok(mode) = mode {
            break mode;
        }
        assert!(Instant::now() < deadline, "no Swarm job {job}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(mode.contains("ReplicatedJob"), "{mode}");
    let d1 = w.gl.wait_done(id).await;
    assert_eq!(d1["state"], "succeeded", "{d1:#}\n{}", w.gl.log());
    let released = recorded(&d1, "releasing")[0]["detail"].to_string();
    assert!(released.contains("exited 0"), "{released}");
    assert!(
        released.contains("demo migrate: /data/schema is at v1"),
        "{released}"
    );
    assert_eq!(std::fs::read_to_string(&schema).unwrap(), "v1");
    // Gone once done.
    assert!(greenlight_testkit::env::docker(&["service", "inspect", &job]).is_err());

    // v2: migrated first, then its tasks start (they refuse an old schema).
    let load = probe(w, false);
    assert!(load.wait_for_version("v1", Duration::from_secs(10)).await);
    w.deploy_ok("v2").await;
    let report = load.stop().await;
    assert_zero_failures(&report, 1);
    assert_eq!(std::fs::read_to_string(&schema).unwrap(), "v2");

    // v3's migration fails: the deployment ends at `releasing` with its
    // output; no task of v3 started, v2 keeps serving.
    let routed = s.routed();
    let d3 = w.gl.deploy_and_wait(&w.service, Target::Tag("v3")).await;
    assert_eq!(d3["state"], "failed", "{d3:#}");
    assert_eq!(d3["failed_step"], "releasing", "{d3:#}");
    assert!(d3["error"].as_str().unwrap().contains("exited 4"), "{d3:#}");
    assert!(
        d3["log_tail"]
            .as_str()
            .unwrap_or_default()
            .contains("column \"email\" already exists"),
        "{d3:#}"
    );
    assert!(recorded(&d3, "starting").is_empty(), "{}", details(&d3));
    assert_eq!(s.routed(), routed);
    assert_eq!(s.tasks("blue"), Some((0, 0)));
    assert_eq!(s.tasks("green"), Some((2, 2)));
    assert_eq!(w.replica_versions().await, ["v2", "v2"]);
    assert!(greenlight_testkit::env::docker(&["service", "inspect", &job]).is_err());
}
