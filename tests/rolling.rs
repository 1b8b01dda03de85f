//! Replicas and rolling updates against a real Docker engine, a real nginx and a
//! real registry, with the open-model probe running through nginx: blue-green
//! with N replicas, rolling within max_surge / max_unavailable, a version that
//! never gets healthy or that fails requests once live, and greenlight killed
//! between and during batches.

mod common;

use std::time::{Duration, Instant};

use common::load::{assert_flips_once, assert_zero_failures, probe};
use common::{steps, ContainerCounter, NginxKind, Target, World};
use serde_json::Value;

const NO_ENV: &[(&str, &str)] = &[];

/// The step that failed, and the ones recorded after it (the way back).
fn after_failure(d: &Value) -> Vec<String> {
    let steps = common::recorded_steps(d);
    let failed = d["steps"]
        .as_array()
        .unwrap()
        .iter()
        .position(|s| s["outcome"] == "error")
        .unwrap_or_else(|| panic!("no failed step: {d:#}"));
    steps[failed + 1..].to_vec()
}

/// Every container of the service, by name, and that each runs.
fn running_names(w: &World) -> Vec<String> {
    let mut names: Vec<String> = w
        .containers()
        .into_iter()
        .map(|(name, state, _)| {
            assert_eq!(state, "running", "{name} is {state}");
            name
        })
        .collect();
    names.sort();
    names
}

fn names(w: &World, colour: &str, n: u32) -> Vec<String> {
    (1..=n)
        .map(|k| format!("{}-{colour}-{k}", w.service))
        .collect()
}

/// A world whose service runs `replicas` replicas of v1 with `rollout`
/// settings, and the probe through nginx seeing v1.
async fn v1_live(
    tag: &str,
    versions: &[(&str, &[(&str, &str)])],
    replicas: u32,
    rollout: &str,
    keepalive: bool,
) -> (World, greenlight_testkit::probe::ProbeHandle) {
    let mut w = World::new(tag, NginxKind::Host, versions);
    w.configure(&format!("replicas = {replicas}"), rollout);
    w.deploy_ok("v1").await;
    assert_eq!(w.replica_versions().await, vec!["v1"; replicas as usize]);
    let probe = probe(&w, keepalive);
    assert!(probe.wait_for_version("v1", Duration::from_secs(10)).await);
    (w, probe)
}

const ROLLING_1_0: &str =
    "strategy = \"rolling\"\nmax_surge = 1\nmax_unavailable = 0\nmonitor = \"1s\"";

/// Waits until deployment `id` is at `step` (of `batch`, when given).
async fn wait_step(w: &World, id: i64, step: &str, batch: Option<u64>) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let d = w.gl.get(&format!("/api/deployments/{id}")).await;
        let at_batch = d["steps"]
            .as_array()
            .and_then(|s| s.last())
            .map(|s| s["batch"].as_u64());
        if d["step"] == step && batch.is_none_or(|b| at_batch == Some(Some(b))) {
            return d;
        }
        assert!(
            d["finished_at"].is_null(),
            "deployment {id} ended before {step}: {d:#}"
        );
        assert!(Instant::now() < deadline, "never reached {step}: {d:#}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blue_green_with_three_replicas_gates_each_and_switches_all_at_once() {
    let mut w = World::new("bg3", NginxKind::Host, &[("v1", NO_ENV), ("v2", NO_ENV)]);
    w.configure("replicas = 3", "");
    let d1 = w.deploy_ok("v1").await;
    assert_eq!(running_names(&w), names(&w, "blue", 3), "{d1:#}");
    let probe = probe(&w, true);
    assert!(probe.wait_for_version("v1", Duration::from_secs(10)).await);

    let counter = ContainerCounter::start(&w.service);
    let d2 = w.deploy_ok("v2").await;
    let peak = counter.stop();
    let report = probe.stop().await;
    assert_zero_failures(&report, 1);
    assert_flips_once(&report, &["v1", "v2"]);

    // Three new replicas started and gated together, one reload for all.
    let started = steps(&d2, "starting");
    assert_eq!(started.len(), 1, "{d2:#}");
    assert_eq!(
        started[0]["replicas"],
        names(&w, "green", 3).join(","),
        "{d2:#}"
    );
    assert_eq!(steps(&d2, "switching").len(), 1, "one reload: {d2:#}");
    assert_eq!(
        steps(&d2, "stopping_old")[0]["replicas"],
        names(&w, "blue", 3).join(",")
    );
    // Capacity never dropped below three: the old ones ran until the switch.
    assert!((3..=6).contains(&peak), "peak {peak}");
    assert_eq!(running_names(&w), names(&w, "green", 3));
    assert_eq!(w.replica_versions().await, ["v2", "v2", "v2"]);

    // `greenlight status` lists every replica with its version and address.
    let out = w.gl.cli(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("3/3 running"), "{text}");
    for name in names(&w, "green", 3) {
        let line = text
            .lines()
            .find(|l| l.contains(&name))
            .unwrap_or_else(|| panic!("{name} not listed:\n{text}"));
        assert!(line.contains("v2") && line.contains(":8080"), "{line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_three_replicas_one_at_a_time_takes_three_reloads_and_loses_nothing() {
    let (w, probe) = v1_live(
        "roll3",
        &[("v1", NO_ENV), ("v2", NO_ENV)],
        3,
        ROLLING_1_0,
        false,
    )
    .await;
    assert_eq!(running_names(&w), names(&w, "blue", 3));

    let counter = ContainerCounter::start(&w.service);
    let d2 = w.deploy_ok("v2").await;
    let peak = counter.stop();
    let report = probe.stop().await;
    assert_zero_failures(&report, 3);

    assert_eq!(
        steps(&d2, "switching").len(),
        3,
        "one reload a replica: {d2:#}"
    );
    let batches: Vec<u64> = steps(&d2, "monitoring")
        .iter()
        .map(|s| s["batch"].as_u64().unwrap())
        .collect();
    assert_eq!(batches, [1, 2, 3], "{d2:#}");
    assert!(peak <= 4, "max_surge 1: at most 4 containers, saw {peak}");
    assert_eq!(running_names(&w), names(&w, "green", 3));
    assert_eq!(w.replica_versions().await, ["v2", "v2", "v2"]);
    // Both versions served side by side while it rolled, then only v2.
    assert_eq!(
        report.versions.last().unwrap().0,
        "v2",
        "{}",
        report.summary()
    );
    assert!(report.flips() >= 1, "{}", report.summary());
    // The live version changed once, at the end.
    let live = w.gl.get(&format!("/api/services/{}", w.service)).await;
    assert_eq!(live["live"]["tag"], "v2");
    assert_eq!(live["live"]["previous_tag"], "v1");
    // `history --steps` shows each batch with the replicas it acted on.
    let out = w.gl.cli(&["history", &w.service, "--steps"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("rolling, 3 replicas"), "{text}");
    for b in 1..=3 {
        assert!(text.contains(&format!("  batch {b}\n")), "{text}");
        let started = format!("[{}-green-{b}]", w.service);
        assert!(text.contains(&started), "{started} in\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_five_replicas_with_surge_two_and_one_unavailable_takes_three_reloads() {
    let (w, probe) = v1_live(
        "roll5",
        &[("v1", NO_ENV), ("v2", NO_ENV)],
        5,
        "strategy = \"rolling\"\nmax_surge = 2\nmax_unavailable = 1\nmonitor = \"1s\"",
        true,
    )
    .await;
    assert_eq!(running_names(&w), names(&w, "blue", 5));

    let counter = ContainerCounter::start(&w.service);
    let d2 = w.deploy_ok("v2").await;
    let peak = counter.stop();
    let report = probe.stop().await;
    let reloads = steps(&d2, "switching").len() as u64;
    assert_zero_failures(&report, reloads);

    // Batches of three: one early removal, then two batches.
    assert_eq!(reloads, 3, "{d2:#}");
    assert!(peak <= 7, "max_surge 2: at most 7 containers, saw {peak}");
    assert_eq!(running_names(&w), names(&w, "green", 5));
    assert_eq!(w.replica_versions().await, ["v2"; 5]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_replica_that_never_gets_healthy_stops_the_rollout_and_v1_serves_everywhere() {
    let (w, probe) = v1_live(
        "rollsick",
        &[("v1", NO_ENV), ("v2", &[("DEMO_UNHEALTHY_REPLICAS", "2")])],
        3,
        ROLLING_1_0,
        true,
    )
    .await;

    let d = w.gl.deploy_and_wait(&w.service, Target::Tag("v2")).await;
    let report = probe.stop().await;
    let reloads = steps(&d, "switching").len() as u64;
    assert_zero_failures(&report, reloads);

    assert_eq!(d["state"], "rolled_back", "{d:#}");
    assert_eq!(d["failed_step"], "health_gate");
    assert_eq!(d["failure_kind"], "unhealthy");
    let error = d["error"].as_str().unwrap();
    assert!(
        error.contains("-green-2 not healthy")
            && error.contains("put back on the previous version"),
        "{error}"
    );
    // The way back is recorded: the replaced replica is put back on v1.
    let back = after_failure(&d);
    assert!(
        back.starts_with(&[
            "starting".to_string(),
            "health_gate".into(),
            "switching".into()
        ]),
        "{back:?}"
    );
    assert_eq!(w.replica_versions().await, ["v1", "v1", "v1"]);
    assert_eq!(running_names(&w).len(), 3, "nothing left behind");
    let live = w.gl.get(&format!("/api/services/{}", w.service)).await;
    assert_eq!(live["live"]["tag"], "v1", "{live:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_that_fails_requests_once_live_is_caught_by_the_monitor_and_rolled_back() {
    let (w, probe) = v1_live(
        "rollerr",
        &[("v1", NO_ENV), ("v2", &[("DEMO_ERROR_PERCENT", "20")])],
        3,
        "strategy = \"rolling\"\nmax_surge = 1\nmonitor = \"20s\"",
        false,
    )
    .await;

    let started = Instant::now();
    let d = w.gl.deploy_and_wait(&w.service, Target::Tag("v2")).await;
    let took = started.elapsed();
    let report = probe.stop().await;

    assert_eq!(d["state"], "rolled_back", "{d:#}");
    assert_eq!(d["failed_step"], "monitoring");
    assert_eq!(d["failure_kind"], "errors");
    let error = d["error"].as_str().unwrap();
    assert!(error.contains("Fisher exact"), "{error}");
    // Caught well before the 20 s monitor ran out.
    let monitor = steps(&d, "monitoring")[0];
    let caught_after =
        monitor["finished_at"].as_i64().unwrap() - monitor["started_at"].as_i64().unwrap();
    eprintln!("caught after {caught_after} ms of monitoring; the deployment took {took:?}");
    assert!(caught_after < 10_000, "{d:#}");
    assert_eq!(w.replica_versions().await, ["v1", "v1", "v1"]);

    // The only failed requests are v2's own 500s while one replica ran it.
    let own: u64 = report
        .samples
        .iter()
        .filter(|s| s.status == Some(500) && s.version.as_deref() == Some("v2"))
        .count() as u64;
    let failed = report.sent - report.ok_2xx;
    eprintln!(
        "v2's own 500s: {own} of {} requests; other failures: {}; {}",
        report.sent,
        failed - own,
        report.summary()
    );
    assert!(own > 0, "v2 answered no 500 at all: {}", report.summary());
    assert_eq!(failed, own, "{}", report.summary());
    assert!(report.transport_errors.is_empty(), "{}", report.summary());
}

/// greenlight is SIGKILLed while a rolling update of v2 is at `step` of batch
/// 2; after the restart the update finishes: three v2 replicas, nothing left
/// behind, no failed request.
async fn killed_during_a_rolling_update(tag: &str, step: &str) {
    let (mut w, probe) = v1_live(
        tag,
        &[("v1", NO_ENV), ("v2", NO_ENV)],
        3,
        ROLLING_1_0,
        false,
    )
    .await;

    w.gl.env = vec![("GREENLIGHT_TEST_PAUSE_AT".into(), format!("{step}:2"))];
    w.gl.restart();
    let id = w.gl.deploy(&w.service, Target::Tag("v2")).await;
    wait_step(&w, id, step, Some(2)).await;
    // One replica is v2 already; batch 2 is under way.
    assert_eq!(
        w.replica_versions()
            .await
            .iter()
            .filter(|v| *v == "v2")
            .count(),
        1
    );
    w.gl.kill();
    w.gl.env.clear();
    w.gl.start();

    let d = w.gl.get(&format!("/api/deployments/{id}")).await;
    assert_eq!(d["state"], "interrupted", "{d:#}");
    assert_eq!(d["failed_step"], step, "{d:#}");
    let rerun = w.gl.rerun_of(&w.service, id).await;
    let r = w.gl.wait_done(rerun).await;
    assert_eq!(r["state"], "succeeded", "{r:#}\n{}", w.gl.log());
    // The re-run kept the replica already replaced: two batches, not three.
    assert_eq!(steps(&r, "starting").len(), 2, "{r:#}");
    let report = probe.stop().await;
    assert_zero_failures(&report, 0);
    assert_eq!(w.replica_versions().await, ["v2", "v2", "v2"]);
    assert_eq!(
        running_names(&w),
        names(&w, "green", 3),
        "nothing left behind"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_between_batches_resumes_the_rolling_update() {
    killed_during_a_rolling_update("killroll1", "starting").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_a_batch_removes_its_unrouted_replica_and_resumes() {
    killed_during_a_rolling_update("killroll2", "health_gate").await;
}

/// Scaling is a config change picked up by the next deploy: with the same
/// version, a rolling service adds (or stops) only the difference, under load,
/// and the version a rollback returns to stays the one before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_replica_count_is_applied_by_the_next_deploy_of_the_same_version() {
    let (mut w, probe) = v1_live(
        "rollscale",
        &[("v1", NO_ENV), ("v2", NO_ENV)],
        2,
        ROLLING_1_0,
        false,
    )
    .await;
    let v2 = w.gl.deploy_and_wait(&w.service, Target::Tag("v2")).await;
    assert_eq!(v2["state"], "succeeded", "{v2:#}");
    let green = names(&w, "green", 2);

    w.gl.edit_config(|c| c.replacen("replicas = 2\n", "replicas = 3\n", 1));
    w.gl.restart();
    let up = w.gl.deploy_and_wait(&w.service, Target::Tag("v2")).await;
    assert_eq!(up["state"], "succeeded", "{up:#}");
    assert_eq!(steps(&up, "starting").len(), 1, "one replica added: {up:#}");
    assert!(steps(&up, "stopping_old").is_empty(), "{up:#}");
    let mut three = green.clone();
    three.push(format!("{}-green-3", w.service));
    assert_eq!(running_names(&w), three, "the two serving replicas kept");
    assert_eq!(w.replica_versions().await, ["v2"; 3]);
    // A scale is no new version: a rollback still goes back to v1.
    let live = w.gl.get(&format!("/api/services/{}", w.service)).await;
    assert_eq!(live["live"]["previous_tag"], "v1", "{live:#}");

    w.gl.edit_config(|c| c.replacen("replicas = 3\n", "replicas = 1\n", 1));
    w.gl.restart();
    let down = w.gl.deploy_and_wait(&w.service, Target::Tag("v2")).await;
    assert_eq!(down["state"], "succeeded", "{down:#}");
    assert!(
        steps(&down, "starting").is_empty(),
        "nothing started: {down:#}"
    );
    assert_eq!(running_names(&w).len(), 1, "{down:#}");
    assert_eq!(w.replica_versions().await, ["v2"]);

    // The same count again is already live: nothing to do.
    let again = w.gl.deploy_and_wait(&w.service, Target::Tag("v2")).await;
    assert_eq!(again["state"], "already_live", "{again:#}");

    let report = probe.stop().await;
    let reloads = (steps(&up, "switching").len() + steps(&down, "switching").len()) as u64;
    assert_zero_failures(&report, reloads);
}

/// A routed replica that died is not "done": deploying the live version again
/// replaces it (and only it), under load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_replica_is_replaced_by_a_deploy_of_the_live_version() {
    let (w, probe) = v1_live("rolldead", &[("v1", NO_ENV)], 2, ROLLING_1_0, false).await;
    let dead = format!("{}-blue-2", w.service);
    greenlight_testkit::env::docker(&["rm", "-f", &dead]).unwrap();

    let d = w.gl.deploy_and_wait(&w.service, Target::Tag("v1")).await;
    assert_eq!(d["state"], "succeeded", "{d:#}");
    assert_eq!(steps(&d, "starting").len(), 1, "one replacement: {d:#}");
    let names = running_names(&w);
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(
        names.contains(&format!("{}-blue-1", w.service)),
        "{names:?}"
    );
    assert!(!names.contains(&dead), "{names:?}");
    assert_eq!(w.replica_versions().await, ["v1", "v1"]);
    let report = probe.stop().await;
    // Requests nginx sent to the removed replica before the deploy are the
    // fault's, not the deploy's: count only transport errors and 5xx other
    // than nginx's 502 for a peer that is gone.
    assert!(report.transport_errors.is_empty(), "{}", report.summary());
    assert!(
        report.non_2xx.keys().all(|c| *c == 502),
        "{}",
        report.summary()
    );
}

/// `failure_action = "pause"`: a batch that fails after nginx routed to it
/// (its replica turns unhealthy while watched) is taken back out and the
/// previous version put in its place; what earlier batches replaced keeps
/// serving the new version, `replicas` serve throughout, and the deployment
/// is `paused`, with no failed request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_takes_the_failing_batch_out_and_keeps_the_earlier_ones() {
    let (w, probe) = v1_live(
        "rollpause",
        &[
            ("v1", NO_ENV),
            (
                "v2",
                &[
                    ("DEMO_UNHEALTHY_REPLICAS", "2"),
                    ("DEMO_UNHEALTHY_AFTER_MS", "2500"),
                ],
            ),
        ],
        3,
        "strategy = \"rolling\"\nmax_surge = 1\nmax_unavailable = 0\nmonitor = \"6s\"\nfailure_action = \"pause\"",
        false,
    )
    .await;

    let d = w.gl.deploy_and_wait(&w.service, Target::Tag("v2")).await;
    let report = probe.stop().await;
    assert_eq!(d["state"], "paused", "{d:#}");
    assert_eq!(d["failed_step"], "monitoring", "{d:#}");
    let error = d["error"].as_str().unwrap();
    assert!(error.contains("-green-2"), "{error}");
    assert!(error.contains("1 replicas run"), "{error}");
    let mut versions = w.replica_versions().await;
    versions.sort();
    assert_eq!(versions, ["v1", "v1", "v2"], "{d:#}");
    let names = running_names(&w);
    assert_eq!(names.len(), 3, "nothing left behind: {names:?}");
    assert!(
        names.contains(&format!("{}-green-1", w.service)),
        "{names:?}"
    );
    assert!(
        !names.contains(&format!("{}-green-2", w.service)),
        "{names:?}"
    );
    let reloads = steps(&d, "switching").len() as u64;
    assert_zero_failures(&report, reloads);
}
