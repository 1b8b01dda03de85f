//! The blue-green pipeline against a real Docker engine, a real nginx and a real
//! registry, with an open-model probe running through nginx during the deploys.

mod common;

use std::time::Duration;

use common::load::{assert_flips_once, assert_zero_failures, probe, versions};
use common::{NginxKind, Target, World};
use greenlight_testkit::env::DemoImageOpts;

const NO_ENV: &[(&str, &str)] = &[];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_mode_deploys_v1_v2_v3_with_zero_failed_requests() {
    let mut w = World::new(
        "h",
        NginxKind::Host,
        &[("v1", NO_ENV), ("v2", NO_ENV), ("v3", NO_ENV)],
    );

    // From nothing: nginx has no upstream yet.
    assert_eq!(w.served().await.0, 502);
    let d1 = w.deploy_ok("v1").await;
    assert_eq!(d1["colour"], "blue");
    assert_eq!(w.served().await, (200, "v1".into()));

    let probe = probe(&w, true);
    assert!(probe.wait_for_version("v1", Duration::from_secs(10)).await);

    // v2 through the CLI: it shows each step and exits 0 on success.
    let out = w.gl.cli(&["deploy", &w.service, "--tag", "v2"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "cli deploy: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for step in greenlight::domain::plan::STEP_NAMES
        .into_iter()
        .filter(|s| !greenlight::domain::plan::OPTIONAL_STEPS.contains(s))
    {
        assert!(stdout.contains(step), "step {step} not shown:\n{stdout}");
    }
    assert!(stdout.contains("succeeded"), "{stdout}");
    assert!(probe.wait_for_version("v2", Duration::from_secs(10)).await);

    // A restart between deploys keeps status and history.
    w.gl.restart();
    let status = w.gl.get(&format!("/api/services/{}", w.service)).await;
    assert_eq!(status["live"]["tag"], "v2", "{status:#}");
    assert_eq!(status["live"]["colour"], "green");
    assert_eq!(status["replicas"][0]["running"], true, "{status:#}");
    assert_eq!(
        status["replicas"][0]["name"],
        format!("{}-green-1", w.service)
    );
    let history =
        w.gl.get(&format!("/api/deployments?service={}", w.service))
            .await;
    assert_eq!(history.as_array().unwrap().len(), 2, "{history:#}");

    let d3 = w.deploy_ok("v3").await;
    assert_eq!(d3["colour"], "blue");
    assert!(probe.wait_for_version("v3", Duration::from_secs(10)).await);
    let report = probe.stop().await;
    assert_zero_failures(&report, 2);
    assert_flips_once(&report, &["v1", "v2", "v3"]);
    assert_eq!(w.served().await, (200, "v3".into()));

    // One container left: v3 as blue, labelled.
    let containers = w.containers();
    assert_eq!(containers.len(), 1, "{containers:?}");
    let (name, state, labels) = &containers[0];
    assert_eq!(name, &format!("{}-blue-1", w.service));
    assert_eq!(state, "running");
    assert_eq!(labels["greenlight.service"], w.service);
    assert_eq!(labels["greenlight.colour"], "blue");
    assert_eq!(labels["greenlight.digest"], w.digest("v3"));
    assert_eq!(labels["greenlight.deployment"], d3["id"].to_string());

    // keep_images = 2: v3 (live) and v2 (rollback) stay, v1 is pruned.
    assert!(w.image_present("v3") && w.image_present("v2"));
    let pruning = d3["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == "pruning")
        .cloned();
    assert!(!w.image_present("v1"), "v1 should be pruned: {pruning:?}");

    // Every planned step ran, in order, each recorded with its timestamps.
    let mut planned = vec!["received".to_string()];
    planned.extend(common::planned_steps(&d3));
    planned.push("succeeded".into());
    assert_eq!(common::recorded_steps(&d3), planned);
    assert!(
        planned.contains(&"health_gate".to_string()) && planned.contains(&"draining".to_string())
    );
    assert!(d3["steps"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["finished_at"].is_i64()));
    assert_eq!(d3["previous_tag"], "v2");

    // Deploying the live digest is a recorded no-op.
    let again =
        w.gl.deploy_and_wait(&w.service, Target::Digest(w.digest("v3")))
            .await;
    assert_eq!(again["state"], "already_live", "{again:#}");
    assert_eq!(w.containers().len(), 1);

    // The CLI's status and history show the same, in tables and in JSON.
    let out = w.gl.cli(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        text.contains(&w.service) && text.contains("v3") && text.contains("blue"),
        "{text}"
    );
    let out = w.gl.cli(&["history", &w.service, "--json"]);
    assert!(out.status.success());
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let states: Vec<_> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["state"].as_str().unwrap())
        .collect();
    assert_eq!(
        states,
        ["already_live", "succeeded", "succeeded", "succeeded"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_mode_deploys_with_zero_failed_requests() {
    let w = World::new(
        "c",
        NginxKind::Container,
        &[("v1", NO_ENV), ("v2", NO_ENV), ("v3", NO_ENV)],
    );
    w.deploy_ok("v1").await;
    assert_eq!(w.served().await, (200, "v1".into()));
    // Keep-alive off here: every request is a new connection, so nothing may fail.
    let probe = probe(&w, false);
    assert!(probe.wait_for_version("v1", Duration::from_secs(10)).await);
    w.deploy_ok("v2").await;
    assert!(probe.wait_for_version("v2", Duration::from_secs(10)).await);
    w.deploy_ok("v3").await;
    assert!(probe.wait_for_version("v3", Duration::from_secs(10)).await);
    let report = probe.stop().await;
    assert_zero_failures(&report, 2);
    assert_flips_once(&report, &["v1", "v2", "v3"]);
    let containers = w.containers();
    assert_eq!(containers.len(), 1, "{containers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_that_never_becomes_healthy_fails_at_health_gate_and_v1_keeps_serving() {
    let w = World::new(
        "u",
        NginxKind::Host,
        &[
            ("v1", NO_ENV),
            ("sick", &[("DEMO_UNHEALTHY", "1")]),
            // Exits before it is ever healthy.
            (
                "crash",
                &[
                    ("DEMO_START_DELAY_MS", "60000"),
                    ("DEMO_EXIT_AFTER_MS", "500"),
                ],
            ),
        ],
    );
    w.deploy_ok("v1").await;
    let upstream_before = w.upstream_file();
    let probe = probe(&w, true);
    assert!(probe.wait_for_version("v1", Duration::from_secs(10)).await);

    let d = w.gl.deploy_and_wait(&w.service, Target::Tag("sick")).await;
    assert_eq!(d["state"], "failed", "{d:#}");
    assert_eq!(d["failed_step"], "health_gate");
    assert!(
        d["error"].as_str().unwrap().contains("not healthy within"),
        "{d:#}"
    );

    // A container that exits fails fast, with its exit code and log tail.
    let d = w.gl.deploy_and_wait(&w.service, Target::Tag("crash")).await;
    assert_eq!(d["state"], "failed", "{d:#}");
    assert_eq!(d["failed_step"], "health_gate");
    assert_eq!(d["exit_code"], 3, "{d:#}");
    assert!(
        d["log_tail"].as_str().unwrap_or("").contains("exiting"),
        "{d:#}"
    );
    let gate = d["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == "health_gate")
        .unwrap();
    let gate_ms = gate["finished_at"].as_i64().unwrap() - gate["started_at"].as_i64().unwrap();
    assert!(
        gate_ms < 15_000,
        "the gate should fail on exit, not at its deadline ({gate_ms} ms)"
    );

    let report = probe.stop().await;
    assert_zero_failures(&report, 0);
    assert_eq!(versions(&report), vec!["v1"]);
    assert_eq!(
        w.upstream_file(),
        upstream_before,
        "the upstream is untouched"
    );
    let containers = w.containers();
    assert_eq!(
        containers.len(),
        1,
        "the failed colour is removed: {containers:?}"
    );
    assert_eq!(containers[0].0, format!("{}-blue-1", w.service));
    let status = w.gl.get(&format!("/api/services/{}", w.service)).await;
    assert_eq!(status["live"]["tag"], "v1");

    // The CLI exits non-zero and says why, with the container's last words.
    let out = w.gl.cli(&["deploy", &w.service, "--tag", "crash"]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("failed at health_gate"), "{text}");
    assert!(
        text.contains("exit code: 3") && text.contains("| demo: exiting"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_that_fails_nginx_t_fails_at_switching_and_changes_nothing() {
    let w = World::new("n", NginxKind::Host, &[("v1", NO_ENV), ("v2", NO_ENV)]);
    w.deploy_ok("v1").await;
    let upstream_before = w.upstream_file();
    std::fs::write(
        w.nginx.dir().join("conf.d/broken.conf"),
        "this_is_not_a_directive on;\n",
    )
    .unwrap();

    let d = w.gl.deploy_and_wait(&w.service, Target::Tag("v2")).await;
    assert_eq!(d["state"], "failed", "{d:#}");
    assert_eq!(d["failed_step"], "switching");
    let error = d["error"].as_str().unwrap();
    assert!(
        error.contains("nginx -t failed") && error.contains("this_is_not_a_directive"),
        "{error}"
    );

    assert_eq!(w.upstream_file(), upstream_before);
    assert_eq!(w.served().await, (200, "v1".into()));
    let containers = w.containers();
    assert_eq!(containers.len(), 1, "{containers:?}");
    assert_eq!(containers[0].0, format!("{}-blue-1", w.service));
    let status = w.gl.get(&format!("/api/services/{}", w.service)).await;
    assert_eq!(status["live"]["tag"], "v1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_cut_short_by_a_crash_is_cleaned_up_and_recorded_as_interrupted() {
    let hc = |env: &[(&str, &str)]| DemoImageOpts {
        healthcheck: true,
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    };
    let mut w = World::with_images(
        "k",
        NginxKind::Host,
        vec![
            ("v1".into(), hc(&[])),
            ("slow".into(), hc(&[("DEMO_START_DELAY_MS", "60000")])),
        ],
    );
    // An image with a Docker HEALTHCHECK goes live only once Docker says healthy.
    let d1 = w.deploy_ok("v1").await;
    let pulling = d1["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == "pulling")
        .unwrap();
    assert!(
        pulling["detail"].as_str().unwrap().contains("HEALTHCHECK"),
        "{d1:#}"
    );
    let status = greenlight_testkit::env::docker(&[
        "inspect",
        "-f",
        "{{.State.Health.Status}}",
        &format!("{}-blue-1", w.service),
    ])
    .unwrap();
    assert_eq!(status.trim(), "healthy");

    let probe = probe(&w, true);
    assert!(probe.wait_for_version("v1", Duration::from_secs(10)).await);
    let id = w.gl.deploy(&w.service, Target::Tag("slow")).await;
    // Wait until the new colour exists and is being gated, then crash greenlight.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let d = w.gl.get(&format!("/api/deployments/{id}")).await;
        if d["step"] == "health_gate" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never reached health_gate: {d:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(w.containers().len(), 2);
    w.gl.kill();
    w.gl.start();

    let d = w.gl.get(&format!("/api/deployments/{id}")).await;
    assert_eq!(d["state"], "interrupted", "{d:#}");
    assert_eq!(d["failed_step"], "health_gate");
    // It is run again (nobody resends it), and fails the gate again here: the
    // image takes 60 s to become healthy and the gate allows 10 s.
    let rerun = w.gl.rerun_of(&w.service, id).await;
    let r = w.gl.wait_done(rerun).await;
    assert_eq!(r["state"], "failed", "{r:#}");
    assert_eq!(r["failed_step"], "health_gate");
    let containers = w.containers();
    assert_eq!(
        containers.len(),
        1,
        "the half-started colours are removed: {containers:?}"
    );
    assert_eq!(containers[0].0, format!("{}-blue-1", w.service));
    let report = probe.stop().await;
    assert_zero_failures(&report, 0);
    assert_eq!(versions(&report), vec!["v1"]);
    let status = w.gl.get(&format!("/api/services/{}", w.service)).await;
    assert_eq!(status["live"]["tag"], "v1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switch_that_cannot_be_proven_is_rolled_back_without_failed_requests() {
    let mut w = World::new("v", NginxKind::Host, &[("v1", NO_ENV), ("v2", NO_ENV)]);
    w.deploy_ok("v1").await;
    let upstream_before = w.upstream_file();
    // A verify server nobody answers on: the reload can never be proven.
    w.gl.stop();
    let config = std::fs::read_to_string(&w.gl.config_path).unwrap();
    let config = config
        .lines()
        .map(|l| {
            if l.starts_with("verify_url") {
                "verify_url = \"http://127.0.0.1:9\"".to_string()
            } else if l.starts_with("verify_timeout") {
                "verify_timeout = \"2s\"".to_string()
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&w.gl.config_path, config).unwrap();
    w.gl.start();

    let probe = probe(&w, true);
    assert!(probe.wait_for_version("v1", Duration::from_secs(10)).await);
    let d = w.gl.deploy_and_wait(&w.service, Target::Tag("v2")).await;
    assert_eq!(d["state"], "rolled_back", "{d:#}");
    assert_eq!(d["failed_step"], "verifying");
    let error = d["error"].as_str().unwrap();
    assert!(
        error.contains("does not route") && error.contains("switched back"),
        "{error}"
    );
    // Let a few requests land after the switch back.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let report = probe.stop().await;
    // Two reloads: to v2 and back.
    assert_zero_failures(&report, 2);
    assert_eq!(
        report.versions.last().unwrap().0,
        "v1",
        "{}",
        report.summary()
    );

    assert_eq!(
        routed(&w.upstream_file().unwrap()),
        routed(upstream_before.as_deref().unwrap()),
        "the previous replicas are routed again"
    );
    assert_eq!(w.served().await, (200, "v1".into()));
    let containers = w.containers();
    assert_eq!(containers.len(), 1, "{containers:?}");
    assert_eq!(containers[0].0, format!("{}-blue-1", w.service));
    let status = w.gl.get(&format!("/api/services/{}", w.service)).await;
    assert_eq!(status["live"]["tag"], "v1");
}

/// The backends a rendered upstream file routes to (a later render of the same
/// backends differs only in its generation).
fn routed(file: &str) -> Vec<greenlight::domain::routing::Backend> {
    greenlight::proxy::render::parse(file)
        .unwrap_or_else(|| panic!("not a rendered upstream: {file}"))
        .backends
}
