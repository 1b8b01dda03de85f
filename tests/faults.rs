//! Fault paths against real Docker, nginx and a registry, with the load probe
//! running through nginx the whole time: every failure leaves the service
//! serving and the deployment record saying what happened. FAULTS.md lists each
//! fault with the test that shows it.

mod common;

use std::time::{Duration, Instant};

use common::load::{assert_flips_once, assert_zero_failures, probe, versions};
use common::slack::SlackReceiver;
use common::{NginxKind, Target, World};
use greenlight_testkit::env::BasicAuth;
use greenlight_testkit::fault::{FaultProxy, Mode, SocketProxy};
use serde_json::Value;

const NO_ENV: &[(&str, &str)] = &[];

/// Adds `lines` to the service's `[service.rollout]` table.
fn rollout(config: &str, lines: &str) -> String {
    config.replace("keep_images = 2\n", &format!("keep_images = 2\n{lines}\n"))
}

/// The config lines that send every outcome to `slack`.
fn slack_section(slack: &SlackReceiver) -> String {
    format!("\n[notify.slack]\nwebhook_url = \"{}\"\n", slack.url())
}

/// Waits until a Slack message whose text contains `needle` arrived; returns it.
async fn slack_says(slack: &SlackReceiver, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let texts: Vec<String> = slack
            .received()
            .iter()
            .filter_map(|r| r.body["text"].as_str().map(str::to_string))
            .collect();
        if let Some(t) = texts.iter().find(|t| t.contains(needle)) {
            return t.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no Slack message saying {needle:?}: {texts:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Deploys v1 and starts the probe once v1 answers through nginx.
async fn v1_under_load(w: &World, keepalive: bool) -> greenlight_testkit::probe::ProbeHandle {
    w.deploy_ok("v1").await;
    let probe = probe(w, keepalive);
    assert!(probe.wait_for_version("v1", Duration::from_secs(10)).await);
    probe
}

/// Waits until deployment `id` is at `step` (or has ended in that state).
async fn wait_state(w: &World, id: i64, step: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let d = w.gl.get(&format!("/api/deployments/{id}")).await;
        if d["step"] == step || d["state"] == step {
            return d;
        }
        assert!(
            d["finished_at"].is_null(),
            "deployment {id} ended {} before reaching {step}: {d:#}\n{}",
            d["state"],
            w.gl.log()
        );
        assert!(Instant::now() < deadline, "never reached {step}: {d:#}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn step<'a>(d: &'a Value, name: &str) -> Option<&'a Value> {
    d["steps"].as_array()?.iter().find(|s| s["step"] == name)
}

async fn rollback(w: &World) -> (u16, Value) {
    w.gl.api(
        reqwest::Method::POST,
        &format!("/api/services/{}/rollback", w.service),
        None,
    )
    .await
}

/// v1 served, then v2, and v1 again at the end (a switch back); requests sent
/// within nginx's reload window may still see the colour before each reload.
fn assert_went_and_came_back(report: &greenlight_testkit::probe::ProbeReport) {
    let seen = versions(report);
    assert_eq!(seen.first(), Some(&"v1"), "{}", report.summary());
    assert!(seen.contains(&"v2"), "{}", report.summary());
    assert_eq!(seen.last(), Some(&"v1"), "{}", report.summary());
}

fn container_names(w: &World) -> Vec<String> {
    let mut names: Vec<String> = w.containers().into_iter().map(|c| c.0).collect();
    names.sort();
    names
}

/// The only container left is the live colour's, and it runs.
/// `greenlight check` with the world's config: whether it passed, and what it printed.
fn check(w: &World) -> (bool, String) {
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_greenlight"))
        .args(["--config", w.gl.config_path.to_str().unwrap(), "check"])
        .output()
        .unwrap();
    let out =
        String::from_utf8_lossy(&run.stdout).to_string() + &String::from_utf8_lossy(&run.stderr);
    (run.status.success(), out)
}

fn assert_only_live_container(w: &World, colour: &str) {
    let containers = w.containers();
    assert_eq!(
        containers
            .iter()
            .map(|c| (c.0.clone(), c.1.clone()))
            .collect::<Vec<_>>(),
        vec![(format!("{}-{colour}-1", w.service), "running".to_string())],
        "containers left behind"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_colour_that_turns_unhealthy_during_the_soak_is_switched_back_without_failed_requests() {
    let mut w = World::new(
        "soak",
        NginxKind::Host,
        &[
            ("v1", NO_ENV),
            // Healthy through the gate, then /healthz answers 503 (it keeps serving).
            ("v2", &[("DEMO_UNHEALTHY_AFTER_MS", "2500")]),
        ],
    );
    let slack = SlackReceiver::start(Vec::new()).await;
    w.gl.edit_config(|c| rollout(c, "soak = \"6s\"") + &slack_section(&slack));
    w.gl.restart();
    let probe = v1_under_load(&w, false).await;

    let d = w.gl.deploy_and_wait(&w.service, Target::Tag("v2")).await;
    assert_eq!(d["state"], "rolled_back", "{d:#}");
    assert_eq!(d["failed_step"], "soaking");
    let error = d["error"].as_str().unwrap();
    assert!(error.contains("during the soak"), "{error}");
    assert!(error.contains("HTTP 503"), "{error}");
    assert!(error.contains("switched back"), "{error}");
    // The new colour served during the soak, then the old one again.
    let report = probe.stop().await;
    assert_zero_failures(&report, 2);
    assert_went_and_came_back(&report);
    assert_eq!(w.served().await, (200, "v1".into()));
    assert_only_live_container(&w, "blue");
    let s = w.gl.get(&format!("/api/services/{}", w.service)).await;
    assert_eq!(s["live"]["tag"], "v1", "{s:#}");
    assert!(w.upstream_file().unwrap().contains("blue"));
    let told = slack_says(&slack, "rolled back at soaking").await;
    assert!(told.contains("v1 serves again"), "{told}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_colour_that_exits_during_the_soak_is_switched_back() {
    let mut w = World::new(
        "soakx",
        NginxKind::Host,
        &[
            ("v1", NO_ENV),
            (
                "v2",
                &[("DEMO_EXIT_AFTER_MS", "2500"), ("DEMO_EXIT_CODE", "9")],
            ),
        ],
    );
    w.gl.edit_config(|c| rollout(c, "soak = \"6s\""));
    w.gl.restart();
    let probe = v1_under_load(&w, false).await;

    let d = w.gl.deploy_and_wait(&w.service, Target::Tag("v2")).await;
    assert_eq!(d["state"], "rolled_back", "{d:#}");
    assert_eq!(d["failed_step"], "soaking");
    assert_eq!(d["exit_code"], 9, "{d:#}");
    // A crash drops what the crashed process was serving (about 10 one-second
    // requests in flight at 100 req/s) and what nginx sends it until the switch
    // back (the soak checks every 100 ms): stated, not hidden, and bounded.
    let report = probe.stop().await;
    eprintln!("probe across a crash during the soak: {}", report.summary());
    let failed = report.sent - report.ok_2xx;
    assert!(
        failed <= 60,
        "more failures than the crash window explains: {}",
        report.summary()
    );
    assert!(
        report.non_2xx.keys().all(|code| *code == 502),
        "{}",
        report.summary()
    );
    assert_eq!(w.served().await, (200, "v1".into()));
    assert_only_live_container(&w, "blue");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_rollback_during_the_soak_is_one_reload_back() {
    let mut w = World::new("rbsoak", NginxKind::Host, &[("v1", NO_ENV), ("v2", NO_ENV)]);
    let slack = SlackReceiver::start(Vec::new()).await;
    w.gl.edit_config(|c| rollout(c, "soak = \"60s\"") + &slack_section(&slack));
    w.gl.restart();
    let probe = v1_under_load(&w, true).await;
    let id = w.gl.deploy(&w.service, Target::Tag("v2")).await;
    wait_state(&w, id, "soaking").await;
    assert!(probe.wait_for_version("v2", Duration::from_secs(10)).await);

    let asked = Instant::now();
    let (status, answer) = rollback(&w).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["instant"], true, "{answer}");
    assert_eq!(answer["deployment"], id);
    let d = w.gl.wait_done(id).await;
    let took = asked.elapsed();
    assert_eq!(d["state"], "rolled_back", "{d:#}");
    assert!(
        d["error"]
            .as_str()
            .unwrap()
            .contains("operator asked for a rollback"),
        "{d:#}"
    );
    eprintln!("rollback during the soak took {took:?}");
    // Switching back is one reload; a new deployment would take a health gate.
    assert!(
        step(&d, "health_gate").is_some() && step(&d, "soaking").is_some(),
        "{d:#}"
    );
    let report = probe.stop().await;
    assert_zero_failures(&report, 2);
    assert_went_and_came_back(&report);
    assert_only_live_container(&w, "blue");
    slack_says(&slack, "rolled back at soaking").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_deploys_the_previous_digest_and_is_refused_without_one() {
    let w = World::new("rb", NginxKind::Host, &[("v1", NO_ENV), ("v2", NO_ENV)]);
    let (status, answer) = rollback(&w).await;
    assert_eq!(status, 409, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("nothing"),
        "{answer}"
    );
    w.deploy_ok("v1").await;
    let (status, answer) = rollback(&w).await;
    assert_eq!(status, 409, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("no previous version"),
        "{answer}"
    );
    w.deploy_ok("v2").await;

    let probe = probe(&w, false);
    assert!(probe.wait_for_version("v2", Duration::from_secs(10)).await);
    let (status, answer) = rollback(&w).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["instant"], false);
    let d = w.gl.wait_done(answer["deployment"].as_i64().unwrap()).await;
    assert_eq!(d["state"], "succeeded", "{d:#}");
    assert_eq!(d["digest"], w.digest("v1"));
    assert_eq!(d["tag"], "v1", "a rollback shows the tag it went back to");
    assert_eq!(d["trigger_detail"]["command"], "rollback");
    assert!(
        step(&d, "pulling").unwrap()["detail"]
            .as_str()
            .unwrap()
            .contains("already on this host"),
        "the kept image is used, no registry needed: {d:#}"
    );
    let report = probe.stop().await;
    assert_zero_failures(&report, 1);
    assert_flips_once(&report, &["v2", "v1"]);
    assert_eq!(w.served().await, (200, "v1".into()));

    // The previous image (v2) pruned by hand: nothing to roll back to.
    greenlight_testkit::env::docker(&["rmi", &format!("{}@{}", w.repo, w.digest("v2"))]).unwrap();
    let (status, answer) = rollback(&w).await;
    assert_eq!(status, 409, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("no longer on this host"),
        "{answer}"
    );
    let (status, answer) =
        w.gl.api(reqwest::Method::POST, "/api/services/nope/rollback", None)
            .await;
    assert_eq!(status, 404, "{answer}");
}

/// A world whose service pulls through a fault proxy in front of its registry.
async fn behind_proxy(tag: &str, rollout_lines: &str, pull: &str) -> (World, FaultProxy) {
    let mut w = World::new(tag, NginxKind::Host, &[("v1", NO_ENV), ("v2", NO_ENV)]);
    let target = w.registry.host().parse().unwrap();
    let proxy = FaultProxy::start(target, Mode::Pass).unwrap();
    let (direct, proxied) = (w.registry.host(), proxy.host());
    w.gl.edit_config(|c| {
        let c = rollout(c, rollout_lines);
        let c = c.replace(
            &format!("image = \"{direct}/"),
            &format!("image = \"{proxied}/"),
        );
        format!("{c}\n[pull]\n{pull}\n")
    });
    w.gl.restart();
    w.repo = w.repo.replace(&direct, &proxied);
    (w, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_that_is_down_is_retried_until_it_answers() {
    let (w, proxy) = behind_proxy(
        "down",
        "",
        "attempts = 8\nbackoff = \"300ms\"\ntimeout = \"30s\"",
    )
    .await;
    let probe = v1_under_load(&w, false).await;

    proxy.set_mode(Mode::Unavailable);
    let before = proxy.accepted();
    let id = w.gl.deploy(&w.service, Target::Tag("v2")).await;
    // The registry is asked again and again while it answers 503...
    let deadline = Instant::now() + Duration::from_secs(30);
    while proxy.accepted() < before + 3 {
        assert!(Instant::now() < deadline, "no retries reached the registry");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // ...and the deployment goes through once it is back.
    proxy.set_mode(Mode::Pass);
    let d = w.gl.wait_done(id).await;
    assert_eq!(d["state"], "succeeded", "{d:#}");
    let resolving = step(&d, "resolving").unwrap()["detail"].as_str().unwrap();
    assert!(resolving.contains("try 1 of 8 failed"), "{resolving}");
    assert!(resolving.contains("503"), "{resolving}");
    let report = probe.stop().await;
    assert_zero_failures(&report, 1);
    assert_flips_once(&report, &["v1", "v2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_tag_fails_at_once_with_the_registrys_words() {
    let (w, _proxy) = behind_proxy(
        "miss",
        "",
        "attempts = 8\nbackoff = \"2s\"\ntimeout = \"30s\"",
    )
    .await;
    w.deploy_ok("v1").await;
    let started = Instant::now();
    let d = w.gl.deploy_and_wait(&w.service, Target::Tag("nope")).await;
    let took = started.elapsed();
    assert_eq!(d["state"], "failed", "{d:#}");
    assert_eq!(d["failed_step"], "resolving");
    let error = d["error"].as_str().unwrap();
    assert!(error.contains("manifest unknown"), "{error}");
    assert!(!error.contains("tries"), "not retried: {error}");
    // One backoff (2 s) would already show: a refusal is final at once.
    assert!(took < Duration::from_secs(2), "took {took:?}");
    // A digest the registry does not have: the pull's own words, no retries.
    let missing = format!("sha256:{}", "0".repeat(64));
    let d =
        w.gl.deploy_and_wait(&w.service, Target::Digest(&missing))
            .await;
    assert_eq!(d["state"], "failed", "{d:#}");
    assert_eq!(d["failed_step"], "pulling");
    let error = d["error"].as_str().unwrap();
    assert!(
        error.contains("not found") || error.contains("unknown"),
        "{error}"
    );
    assert!(!error.contains("tries"), "{error}");
    assert_eq!(w.served().await, (200, "v1".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_pull_is_cut_off_and_the_deadline_bounds_the_whole_deployment() {
    let (mut w, proxy) = behind_proxy(
        "stall",
        "",
        "attempts = 2\nbackoff = \"200ms\"\ntimeout = \"2s\"",
    )
    .await;
    let probe = v1_under_load(&w, false).await;

    // pull.timeout cuts each stalled attempt.
    proxy.set_mode(Mode::Stall);
    let started = Instant::now();
    let d =
        w.gl.deploy_and_wait(&w.service, Target::Digest(w.digest("v2")))
            .await;
    let took = started.elapsed();
    assert_eq!(d["state"], "failed", "{d:#}");
    assert_eq!(d["failed_step"], "pulling");
    let error = d["error"].as_str().unwrap();
    assert!(error.contains("stalled"), "{error}");
    assert!(error.contains("gave up after 2 tries"), "{error}");
    assert!(took < Duration::from_secs(20), "took {took:?}");
    // The API kept answering meanwhile (wait_done polled it), and v1 serves.
    assert_eq!(w.served().await, (200, "v1".into()));

    // rollout.deadline cuts the deployment even when each step has time left.
    w.gl.edit_config(|c| {
        c.replace("timeout = \"2s\"", "timeout = \"10m\"")
            .replace("keep_images = 2\n", "keep_images = 2\ndeadline = \"12s\"\n")
    });
    w.gl.restart();
    let started = Instant::now();
    let d =
        w.gl.deploy_and_wait(&w.service, Target::Digest(w.digest("v2")))
            .await;
    let took = started.elapsed();
    assert_eq!(d["state"], "failed", "{d:#}");
    assert_eq!(d["failed_step"], "pulling");
    let error = d["error"].as_str().unwrap();
    assert!(
        error.contains("cut off at pulling") && error.contains("rollout.deadline"),
        "{error}"
    );
    assert!(took < Duration::from_secs(30), "took {took:?}");
    proxy.set_mode(Mode::Pass);
    let report = probe.stop().await;
    assert_zero_failures(&report, 0);
    assert_eq!(versions(&report), vec!["v1"]);
    // The engine is not left stuck: the same digest deploys once the registry answers.
    let d =
        w.gl.deploy_and_wait(&w.service, Target::Digest(w.digest("v2")))
            .await;
    assert_eq!(d["state"], "succeeded", "{d:#}");
    assert_only_live_container(&w, "green");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_docker_engine_that_stops_answering_fails_the_deployment_and_frees_the_worker() {
    let mut w = World::new("dock", NginxKind::Host, &[("v1", NO_ENV), ("v2", NO_ENV)]);
    let engine = SocketProxy::start("/var/run/docker.sock").unwrap();
    w.gl.edit_config(|c| {
        c.replace(
            "[nginx]",
            &format!(
                "[docker]\nsocket = \"{}\"\ntimeout = \"3s\"\n\n[nginx]",
                engine.url()
            ),
        )
        // A stop waits out its grace in one Docker call, within the timeout.
        .replace("stop_grace = \"5s\"", "stop_grace = \"1s\"")
    });
    w.gl.restart();
    let probe = v1_under_load(&w, false).await;

    engine.freeze(true);
    let started = Instant::now();
    let d = w.gl.deploy_and_wait(&w.service, Target::Tag("v2")).await;
    let took = started.elapsed();
    engine.freeze(false);
    assert_eq!(d["state"], "failed", "{d:#}");
    let error = d["error"].as_str().unwrap();
    assert!(
        error.contains("did not answer within [docker] timeout"),
        "{error}"
    );
    assert!(took < Duration::from_secs(30), "took {took:?}");
    // The worker is free: the next deployment of the service runs at once.
    w.deploy_ok("v2").await;
    let report = probe.stop().await;
    assert_zero_failures(&report, 1);
    assert_flips_once(&report, &["v1", "v2"]);
}

/// greenlight is SIGKILLed while a deployment of v2 is at `at`; after the
/// restart exactly one colour serves v2, nothing is left behind, the probe saw
/// no failed request, and the record says what happened.
async fn killed_at(at: &str) {
    killed_at_in(at, NginxKind::Host).await
}

async fn killed_at_in(at: &str, kind: NginxKind) {
    let mode = match kind {
        NginxKind::Host => "h",
        NginxKind::Container => "c",
    };
    let tag = format!("kill{mode}{}", &at[..3]);
    let mut w = World::new(&tag, kind, &[("v1", NO_ENV), ("v2", NO_ENV)]);
    let probe = v1_under_load(&w, false).await;

    let slack = SlackReceiver::start(Vec::new()).await;
    w.gl.edit_config(|c| {
        // The soak runs only when configured.
        let c = if at == "soaking" {
            rollout(c, "soak = \"30s\"")
        } else {
            c.to_string()
        };
        format!("{c}{}", slack_section(&slack))
    });
    w.gl.env = vec![("GREENLIGHT_TEST_PAUSE_AT".into(), at.into())];
    w.gl.restart();
    let id = w.gl.deploy(&w.service, Target::Tag("v2")).await;
    wait_state(&w, id, at).await;
    w.gl.kill();
    w.gl.env.clear();
    w.gl.start();

    let d = w.gl.get(&format!("/api/deployments/{id}")).await;
    assert_eq!(d["state"], "interrupted", "{d:#}");
    assert_eq!(d["failed_step"], at, "{d:#}");
    // The interrupted deployment is run again (nobody would resend the request).
    let rerun = w.gl.rerun_of(&w.service, id).await;
    let r = w.gl.wait_done(rerun).await;
    let went_live = matches!(at, "verifying" | "soaking" | "draining" | "stopping_old");
    let expected = if went_live {
        "already_live"
    } else {
        "succeeded"
    };
    assert_eq!(r["state"], expected, "{r:#}\n{}", w.gl.log());
    assert_eq!(w.served().await, (200, "v2".into()));
    assert_only_live_container(&w, "green");
    let strays: Vec<_> = std::fs::read_dir(w.nginx.upstreams_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| !n.ends_with(".conf") && !n.ends_with(".conf.previous"))
        .collect();
    assert!(strays.is_empty(), "stray files: {strays:?}");
    let report = probe.stop().await;
    assert_zero_failures(&report, 2);
    assert_flips_once(&report, &["v1", "v2"]);
    // The operator hears of the interruption, and of how the re-run ended.
    slack_says(&slack, &format!("was interrupted at {at}")).await;
    if !went_live {
        slack_says(&slack, "v2 is live").await;
    }
    eprintln!("killed at {at}: containers {:?}", container_names(&w));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_pulling_ends_with_one_colour_serving() {
    killed_at("pulling").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_starting_ends_with_one_colour_serving() {
    killed_at("starting").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_health_gate_ends_with_one_colour_serving() {
    killed_at("health_gate").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_switching_ends_with_one_colour_serving() {
    killed_at("switching").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_verifying_ends_with_one_colour_serving() {
    killed_at("verifying").await;
}

/// Container mode: nginx's workers are found through Docker, not /proc.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_verifying_with_nginx_in_a_container_ends_with_one_colour_serving() {
    killed_at_in("verifying", NginxKind::Container).await;
}

/// Killed mid-soak, the verified new colour stays (the soak is not resumed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_soaking_ends_with_one_colour_serving() {
    killed_at("soaking").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_draining_ends_with_one_colour_serving() {
    killed_at("draining").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_stopping_old_ends_with_one_colour_serving() {
    killed_at("stopping_old").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_nginx_serves_the_live_colour_from_the_rendered_files() {
    let mut w = World::new("ngx", NginxKind::Host, &[("v1", NO_ENV), ("v2", NO_ENV)]);
    w.deploy_ok("v1").await;
    w.deploy_ok("v2").await;
    let across = probe(&w, false);
    assert!(across.wait_for_version("v2", Duration::from_secs(10)).await);
    w.nginx.restart().unwrap();
    assert!(across.wait_for_version("v2", Duration::from_secs(10)).await);
    let report = across.stop().await;
    // While nginx is down its port refuses connections: stated, not hidden.
    eprintln!("probe across an nginx restart: {}", report.summary());
    assert!(report.non_2xx.is_empty(), "{}", report.summary());
    assert_eq!(versions(&report), vec!["v2"]);
    assert_eq!(w.served().await, (200, "v2".into()));
    // And greenlight still deploys through the restarted nginx.
    let after = probe(&w, false);
    assert!(after.wait_for_version("v2", Duration::from_secs(10)).await);
    w.deploy_ok("v1").await;
    let report = after.stop().await;
    assert_zero_failures(&report, 1);
    assert_flips_once(&report, &["v2", "v1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_container_removed_by_hand_is_reported_and_the_next_deploy_recovers() {
    let w = World::new("gone", NginxKind::Host, &[("v1", NO_ENV)]);
    w.deploy_ok("v1").await;
    greenlight_testkit::env::docker(&["rm", "-f", &format!("{}-blue-1", w.service)]).unwrap();

    let s = w.gl.get(&format!("/api/services/{}", w.service)).await;
    assert_eq!(s["replicas"][0]["running"], false, "{s:#}");
    assert_eq!(s["replicas"][0]["status"], "missing", "{s:#}");
    assert_eq!(s["live"]["tag"], "v1");
    let (passed, out) = check(&w);
    assert!(!passed, "{out}");
    assert!(out.contains("is gone"), "{out}");
    assert!(
        out.contains(&format!("greenlight deploy {} --digest", w.service)),
        "{out}"
    );

    // The same tag again is not "already live": it starts a new colour.
    let d = w.deploy_ok("v1").await;
    assert_eq!(d["colour"], "green", "{d:#}");
    assert_eq!(w.served().await, (200, "v1".into()));
    assert_only_live_container(&w, "green");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_networks_of_one_name_are_repaired_before_the_container_joins() {
    let w = World::new("dupnet", NginxKind::Host, &[("v1", NO_ENV)]);
    let network = format!("{}-net", w.prefix);
    // Two networks of one name, as concurrent creates leave them (the CLI
    // refuses a duplicate; the API does not when asked not to check).
    let docker = bollard::Docker::connect_with_local_defaults().unwrap();
    for _ in 0..2 {
        docker
            // No CheckDuplicate in the request: the engine then does not check.
            .create_network(bollard::models::NetworkCreateRequest {
                name: network.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let count = || {
        greenlight_testkit::env::docker(&[
            "network",
            "ls",
            "-q",
            "--filter",
            &format!("name=^{network}$"),
        ])
        .unwrap()
        .lines()
        .count()
    };
    assert_eq!(count(), 2, "the engine kept both");
    w.deploy_ok("v1").await;
    assert_eq!(count(), 1);
    assert_eq!(w.served().await, (200, "v1".into()));
}

const REGISTRY_USER: &str = "deploy-bot";
const REGISTRY_PASSWORD: &str = "right-horse-battery";

/// A world whose registry requires `deploy-bot` (htpasswd basic auth, plain HTTP
/// on 127.0.0.1), with greenlight's `[[registry]]` entry giving `password`, and
/// `[pull]` retrying 8 times, 2 s apart: a retry would show in the time taken.
fn behind_auth(tag: &str, password: &str) -> World {
    let user = BasicAuth {
        username: REGISTRY_USER.into(),
        password: REGISTRY_PASSWORD.into(),
    };
    World::with_registry_auth(
        tag,
        &[("v1", NO_ENV), ("v2", NO_ENV)],
        user,
        password,
        "\n[pull]\nattempts = 8\nbackoff = \"2s\"\ntimeout = \"30s\"\n",
    )
}

/// Deploys `what`, asserts it failed at `failed_step` without a retry and well
/// under one backoff; returns the error.
async fn refused_at_once(w: &World, what: Target<'_>, failed_step: &str) -> String {
    let started = Instant::now();
    let d = w.gl.deploy_and_wait(&w.service, what).await;
    let took = started.elapsed();
    assert_eq!(d["state"], "failed", "{d:#}");
    assert_eq!(d["failed_step"], failed_step, "{d:#}");
    let error = d["error"].as_str().unwrap().to_string();
    assert!(!error.contains("tries"), "not retried: {error}");
    let detail = step(&d, failed_step).unwrap()["detail"].to_string();
    assert!(!detail.contains("try 1 of"), "not retried: {detail}");
    // One backoff (2 s) would already show: a refusal is final at once.
    assert!(took < Duration::from_secs(2), "took {took:?}: {d:#}");
    eprintln!("failed at {failed_step} in {took:?}: {error}");
    error
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_registry_credentials_fail_at_once_and_the_live_version_keeps_serving() {
    let mut w = behind_auth("deny", REGISTRY_PASSWORD);
    w.deploy_ok("v1").await;
    w.gl.edit_config(|c| {
        c.replace(
            &format!("password = \"{REGISTRY_PASSWORD}\""),
            "password = \"wrong-horse\"",
        )
    });
    w.gl.restart();
    let probe = probe(&w, false);
    assert!(probe.wait_for_version("v1", Duration::from_secs(10)).await);

    // A tag: greenlight's own resolve is refused by the registry.
    let error = refused_at_once(&w, Target::Tag("v2"), "resolving").await;
    assert!(error.contains("unauthorized"), "{error}");
    assert!(error.contains("authentication required"), "{error}");
    assert!(error.contains("[[registry]] credentials"), "{error}");
    // A digest (as a webhook names it): Docker's pull is refused, in its words.
    let error = refused_at_once(&w, Target::Digest(w.digest("v2")), "pulling").await;
    assert!(
        error.contains("unauthorized: authentication required"),
        "{error}"
    );
    // Both refusals were the registry checking the wrong password.
    let log = w.registry.log();
    let refused =
        format!("error authenticating user \\\"{REGISTRY_USER}\\\": authentication failure");
    assert!(log.matches(&refused).count() >= 2, "registry log:\n{log}");

    // v1 keeps serving after the refusals: 2 s more of load before the verdict.
    let sent = probe.sent_so_far();
    let deadline = Instant::now() + Duration::from_secs(20);
    while probe.sent_so_far() < sent + 200 {
        assert!(Instant::now() < deadline, "the probe stopped sending");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let report = probe.stop().await;
    assert_zero_failures(&report, 0);
    assert_eq!(versions(&report), vec!["v1"], "{}", report.summary());
    assert_eq!(w.served().await, (200, "v1".into()));
    assert_eq!(container_names(&w).len(), 1, "{:?}", container_names(&w));
    assert!(!w.image_present("v2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_right_registry_credentials_deploy_from_a_registry_that_requires_them() {
    let w = behind_auth("allow", REGISTRY_PASSWORD);
    let probe = v1_under_load(&w, false).await;
    let before = w.registry.log().len();
    let d = w.deploy_ok("v2").await;
    assert_eq!(d["digest"], w.digest("v2"));
    let report = probe.stop().await;
    assert_zero_failures(&report, 1);
    assert_flips_once(&report, &["v1", "v2"]);
    // During the deploy, greenlight's resolve (HEAD of the tag) and Docker's pull
    // (GET of the digest) were both let in with the user's password.
    let log = w.registry.log()[before..].to_string();
    let authorized = |method: &str, manifest: &str| {
        log.lines().any(|l| {
            l.contains("msg=\"authorized request\"")
                && l.contains(&format!("http.request.method={method} "))
                && l.contains(&format!("/manifests/{manifest}"))
        })
    };
    assert!(authorized("HEAD", "v2"), "registry log:\n{log}");
    assert!(authorized("GET", w.digest("v2")), "registry log:\n{log}");
    assert!(
        !log.contains("authentication failure"),
        "registry log:\n{log}"
    );
}

/// An upstream file greenlight cannot read back (edited by hand) is never
/// taken for "nothing routed": on start greenlight removes nothing nginx
/// routes to, a deploy is refused with the reason, `check` says so, and once
/// the file is put back deploys work again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_file_edited_by_hand_stops_deploys_and_removes_nothing() {
    let mut w = World::new("edited", NginxKind::Host, &[("v1", NO_ENV), ("v2", NO_ENV)]);
    w.deploy_ok("v1").await;
    let path = w.nginx.upstreams_dir().join(format!("{}.conf", w.service));
    let rendered = std::fs::read_to_string(&path).unwrap();
    // Still valid nginx (a comment), no longer greenlight's.
    std::fs::write(&path, format!("# greenlight: edited by hand\n{rendered}")).unwrap();
    w.gl.restart();
    let probe = probe(&w, false);
    assert!(probe.wait_for_version("v1", Duration::from_secs(10)).await);
    assert_only_live_container(&w, "blue");

    let d = w.gl.deploy_and_wait(&w.service, Target::Tag("v2")).await;
    assert_eq!(d["state"], "failed", "{d:#}");
    assert_eq!(d["failure_kind"], "proxy", "{d:#}");
    let error = d["error"].as_str().unwrap();
    assert!(
        error.contains("not an upstream file greenlight rendered"),
        "{error}"
    );
    assert_only_live_container(&w, "blue");
    let (passed, out) = check(&w);
    assert!(!passed, "{out}");
    assert!(
        out.contains("not an upstream file greenlight rendered"),
        "{out}"
    );

    std::fs::write(&path, rendered).unwrap();
    w.deploy_ok("v2").await;
    let report = probe.stop().await;
    assert_zero_failures(&report, 1);
    assert_eq!(w.served().await, (200, "v2".into()));
}
