//! Canary releases against a real Docker engine, a real nginx (its userid
//! module and split_clients) and a real registry, with the load probe sending
//! requests as many distinct users, each with its own cookie jar: a good
//! canary walks every step and is promoted; one that fails 5% of requests is
//! aborted at the first step; one that is 200 ms slower is aborted on latency
//! alone; one with almost no traffic pauses and notifies; users stay on one
//! version; and greenlight killed mid-canary resumes it.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::load::assert_zero_failures;
use common::slack::SlackReceiver;
use common::{steps, NginxKind, Target, World};
use greenlight_testkit::probe::{Probe, ProbeHandle, ProbeOpts, ProbeReport};
use serde_json::Value;

const NO_ENV: &[(&str, &str)] = &[];
/// Simulated users: each sends a request every USERS / rate seconds.
const USERS: u32 = 300;

/// `[service.rollout]` lines making the service a canary with short timings.
fn canary_lines(bake: &str) -> String {
    format!(
        "strategy = \"canary\"\n[service.canary]\nsteps = [10, 50]\nbake = \"{bake}\"\n\
         interval = \"1s\"\nmin_requests = 40\nmax_extension = \"6s\"\nfailed_checks = 2\n"
    )
}

/// A world serving v1 through the canary-ready site, and the probe's users
/// seeing v1.
async fn v1_live(
    tag: &str,
    versions: &[(&str, &[(&str, &str)])],
    bake: &str,
    config_extra: &str,
    rate: u32,
) -> (World, ProbeHandle, i64) {
    let mut w = World::with_config(tag, NginxKind::Host, versions, config_extra);
    w.configure("", &canary_lines(bake));
    // The first deployment has nothing to compare with: blue-green.
    let d1 = w.deploy_ok("v1").await;
    assert!(
        !common::recorded_steps(&d1).contains(&"canary".to_string()),
        "{d1:#}"
    );
    // The operator's one change to the site, once greenlight rendered its file.
    w.nginx.use_canary_site().unwrap();
    let start_ms = now_ms();
    let probe = Probe::start(ProbeOpts {
        base_url: w.nginx.url(),
        rate,
        post_ratio: 0.3,
        slow_ratio: 0.0,
        keepalive: false,
        users: USERS,
        ..Default::default()
    });
    assert!(probe.wait_for_version("v1", Duration::from_secs(10)).await);
    (w, probe, start_ms)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// The start (Unix ms) of every step of `d` that reloaded nginx.
fn reloads(d: &Value) -> Vec<i64> {
    d["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["step"] == "canary" || s["step"] == "switching")
        .map(|s| s["started_at"].as_i64().unwrap())
        .collect()
}

/// Each user's versions in the order they sent, leaving out requests sent
/// within a reload's window (old workers still route by the previous render
/// for a moment: DESIGN.md section 1).
fn versions_by_user(
    report: &ProbeReport,
    start_ms: i64,
    reloads: &[i64],
) -> BTreeMap<u32, Vec<String>> {
    let mut out: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    let mut samples: Vec<_> = report.samples.iter().collect();
    samples.sort_by_key(|s| s.index);
    for s in samples {
        let at = start_ms + (s.scheduled_s * 1000.0) as i64;
        if reloads.iter().any(|r| at >= r - 200 && at <= r + 1500) {
            continue;
        }
        if let (Some(user), Some(v), true) = (s.user, &s.version, s.is_2xx()) {
            out.entry(user).or_default().push(v.clone());
        }
    }
    out
}

/// Every user's versions go v1* then v2*: one version per step, and never
/// back from the canary to stable. Returns how many users saw the canary
/// before the promotion's reload, and how many users there were.
fn assert_sticky(by_user: &BTreeMap<u32, Vec<String>>) {
    for (user, versions) in by_user {
        let first_v2 = versions.iter().position(|v| v == "v2");
        if let Some(i) = first_v2 {
            assert!(
                versions[i..].iter().all(|v| v == "v2"),
                "user {user} went back from the canary to stable: {versions:?}"
            );
        }
    }
}

/// The `# greenlight: split ...` line of the service's rendered file.
fn split_line(w: &World) -> Option<String> {
    let text = std::fs::read_to_string(w.nginx.upstreams_dir().join(format!("{}.conf", w.service)))
        .ok()?;
    text.lines()
        .find(|l| l.starts_with("# greenlight: split "))
        .map(str::to_string)
}

/// Deploys v2, which must end rolled back; the deployment and the probe's report.
async fn deploy_v2_until_rolled_back(w: &World, probe: ProbeHandle) -> (Value, ProbeReport) {
    let id = w.gl.deploy(&w.service, Target::Tag("v2")).await;
    let d = w.gl.wait_done(id).await;
    let report = probe.stop().await;
    assert_eq!(d["state"], "rolled_back", "{d:#}\n{}", w.gl.log());
    (d, report)
}

async fn canary_status(w: &World) -> Value {
    w.gl.get(&format!("/api/services/{}/canary", w.service))
        .await["canary"]
        .clone()
}

/// Waits until the service's canary is in `state` (and returns its status).
async fn wait_canary(w: &World, state: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let c = canary_status(w).await;
        if c["state"] == state {
            return c;
        }
        assert!(
            Instant::now() < deadline,
            "canary never {state}: {c:#}\n{}",
            w.gl.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_canary_walks_every_step_is_promoted_and_users_stay_on_one_version() {
    let (w, probe, start_ms) =
        v1_live("cgood", &[("v1", NO_ENV), ("v2", NO_ENV)], "6s", "", 100).await;
    let id = w.gl.deploy(&w.service, Target::Tag("v2")).await;
    // While it bakes, the API and the CLI say where it stands.
    let c = wait_canary(&w, "baking").await;
    assert_eq!(c["deployment"], id, "{c:#}");
    assert_eq!(c["stages"], 2);
    // The override cookie picks a version whatever the split says.
    for (value, version) in [("always", "v2"), ("never", "v1")] {
        for _ in 0..10 {
            let r = greenlight_testkit::http()
                .get(w.nginx.url())
                .header("cookie", format!("greenlight_canary={value}"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.headers()["x-demo-version"], version, "{value}");
        }
    }
    let out = w.gl.cli(&["canary", "status", &w.service]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("step ") && text.contains("% of users"),
        "{text}"
    );
    assert!(text.contains("canary") && text.contains("stable"), "{text}");
    let d = w.gl.wait_done(id).await;
    let report = probe.stop().await;
    assert_eq!(d["state"], "succeeded", "{d:#}\n{}", w.gl.log());
    assert_eq!(d["strategy"], "canary");
    assert_zero_failures(&report, 0);

    // Both steps ran, passed on evidence, then one reload took everyone.
    let canary_steps = steps(&d, "canary");
    assert_eq!(canary_steps.len(), 2, "{d:#}");
    for s in &canary_steps {
        let detail = s["detail"].as_str().unwrap_or_default();
        assert!(detail.contains("passed"), "{detail}");
        assert!(
            detail.contains("both groups proved through nginx"),
            "{detail}"
        );
    }
    assert_eq!(steps(&d, "switching").len(), 1, "{d:#}");
    assert_eq!(w.replica_versions().await, ["v2"]);
    let live = w.gl.get(&format!("/api/services/{}", w.service)).await;
    assert_eq!(live["live"]["tag"], "v2");

    // Stickiness: per user one version per step, never back to stable.
    let by_user = versions_by_user(&report, start_ms, &reloads(&d));
    assert!(
        by_user.len() as u32 >= USERS * 9 / 10,
        "{} users",
        by_user.len()
    );
    assert_sticky(&by_user);
    // Some users (not all) met the canary before its promotion.
    let promote_at = steps(&d, "switching")[0]["started_at"].as_i64().unwrap();
    let early: usize = report
        .samples
        .iter()
        .filter(|s| start_ms + (s.scheduled_s * 1000.0) as i64 + 1500 < promote_at)
        .filter(|s| s.version.as_deref() == Some("v2"))
        .filter_map(|s| s.user)
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    eprintln!("users on the canary before the promotion: {early} of {USERS}");
    assert!(early > 0 && early < USERS as usize * 8 / 10, "{early}");
    // The canary is over.
    assert!(canary_status(&w).await.is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_failing_five_percent_is_aborted_at_the_first_step_within_the_bound() {
    const RATE: u32 = 200;
    let (w, probe, _) = v1_live(
        "c5xx",
        &[("v1", NO_ENV), ("v2", &[("DEMO_ERROR_PERCENT", "5")])],
        // A long bake: the analysis, not the clock, must end the first step.
        "30s",
        "",
        RATE,
    )
    .await;
    let (d, report) = deploy_v2_until_rolled_back(&w, probe).await;
    let error = d["error"].as_str().unwrap();
    assert!(error.contains("canary aborted at step 1 (10%)"), "{error}");
    assert!(error.contains("Fisher exact"), "{error}");
    assert_eq!(d["failure_kind"], "errors", "{d:#}");
    // It never reached the second step; the way back is recorded.
    assert_eq!(steps(&d, "canary").len(), 1, "{d:#}");
    let first = steps(&d, "canary")[0];
    let after: Vec<String> = common::recorded_steps(&d)
        .into_iter()
        .skip_while(|s| s != "canary")
        .skip(1)
        .collect();
    assert_eq!(
        after,
        [
            "switching",
            "verifying",
            "draining",
            "stopping_old",
            "rolled_back"
        ],
        "{d:#}"
    );
    // The bound: weight x rate x error rate x detection time.
    let detect_s = (first["finished_at"].as_i64().unwrap() - first["started_at"].as_i64().unwrap())
        as f64
        / 1000.0;
    let expected = 0.10 * RATE as f64 * 0.05 * detect_s;
    let failed = report.failed();
    eprintln!(
        "5% canary: detected in {detect_s:.1}s; bound 10% x {RATE} req/s x 5% x {detect_s:.1}s = {expected:.1} failed requests expected; observed {failed} of {}",
        report.sent
    );
    assert!(
        failed > 0,
        "the canary's 500s reached users: {}",
        report.summary()
    );
    assert!(
        (failed as f64) <= 2.0 * expected + 5.0,
        "{failed} failed > 2 x {expected:.1} + 5"
    );
    // Every failed request was a canary user's, answered by the canary.
    for s in report.samples.iter().filter(|s| !s.is_2xx()) {
        assert_eq!(s.status, Some(500), "{s:?}");
        assert_eq!(s.version.as_deref(), Some("v2"), "{s:?}");
    }
    assert_eq!(w.replica_versions().await, ["v1"]);
    let names: Vec<String> = w.containers().into_iter().map(|(n, _, _)| n).collect();
    assert_eq!(names.len(), 1, "the canary replica is gone: {names:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_failing_every_request_is_aborted_at_once_as_flagrant() {
    let (w, probe, _) = v1_live(
        "cflag",
        &[("v1", NO_ENV), ("v2", &[("DEMO_ERROR_PERCENT", "100")])],
        "30s",
        "",
        200,
    )
    .await;
    let (d, report) = deploy_v2_until_rolled_back(&w, probe).await;
    let error = d["error"].as_str().unwrap();
    assert!(error.contains("flagrant"), "{error}");
    // The first check decided: about a second of the canary's share.
    let first = steps(&d, "canary")[0];
    let detect_s = (first["finished_at"].as_i64().unwrap() - first["started_at"].as_i64().unwrap())
        as f64
        / 1000.0;
    let failed = report.failed();
    eprintln!(
        "flagrant canary: aborted after {detect_s:.1}s; {failed} failed of {} (bound 10% x 200 req/s x 100% x {detect_s:.1}s = {:.0})",
        report.sent,
        0.1 * 200.0 * detect_s
    );
    assert!(detect_s < 5.0, "{detect_s}");
    assert!(
        (failed as f64) <= 2.0 * 0.1 * 200.0 * detect_s + 10.0,
        "{failed}"
    );
    assert_eq!(w.replica_versions().await, ["v1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_200ms_slower_is_aborted_on_latency_alone() {
    let (w, probe, _) = v1_live(
        "cslow",
        &[("v1", NO_ENV), ("v2", &[("DEMO_EXTRA_LATENCY_MS", "200")])],
        "6s",
        "",
        100,
    )
    .await;
    let (d, report) = deploy_v2_until_rolled_back(&w, probe).await;
    let error = d["error"].as_str().unwrap();
    assert!(error.contains("p95 latency"), "{error}");
    assert!(error.contains("canary 0/"), "no errors: {error}");
    assert_eq!(steps(&d, "canary").len(), 1, "{d:#}");
    // Slow is not failed: no user saw an error.
    assert_zero_failures(&report, 0);
    assert_eq!(w.replica_versions().await, ["v1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_with_almost_no_traffic_pauses_notifies_and_is_not_promoted() {
    let slack = SlackReceiver::start(vec![]).await;
    let notify = format!(
        "\n[notify]\nretry_base = \"100ms\"\n[notify.slack]\nwebhook_url = \"{}\"\non = [\"paused\", \"rolled_back\", \"succeeded\"]\n",
        slack.url()
    );
    // Two requests a second: 0.2 a second for the canary, never 40 in a step.
    let (w, probe, _) = v1_live("cidle", &[("v1", NO_ENV), ("v2", NO_ENV)], "6s", &notify, 2).await;
    let before = slack.received().len();
    let id = w.gl.deploy(&w.service, Target::Tag("v2")).await;
    let c = wait_canary(&w, "paused").await;
    let reason = c["reason"].as_str().unwrap();
    assert!(reason.contains("inconclusive after 12s"), "{reason}");
    assert!(reason.contains("needed"), "{reason}");
    assert_eq!(c["stage"], 1);
    // The pause is told, with the evidence.
    let got = slack.wait_for(before + 1).await;
    let message = got.last().unwrap().body.to_string();
    assert!(message.contains("inconclusive"), "{message}");
    assert!(message.contains("canary requests so far"), "{message}");
    // Not promoted: it holds (two versions serve) until an operator decides.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let d = w.gl.get(&format!("/api/deployments/{id}")).await;
    assert_eq!(d["state"], "running", "{d:#}");
    let live = w.gl.get(&format!("/api/services/{}", w.service)).await;
    assert_eq!(live["live"]["tag"], "v1");
    // The operator aborts: stable takes everyone back.
    let out = w.gl.cli(&["canary", "abort", &w.service]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let d = w.gl.wait_done(id).await;
    let report = probe.stop().await;
    assert_eq!(d["state"], "rolled_back", "{d:#}");
    assert!(d["error"]
        .as_str()
        .unwrap()
        .contains("an operator aborted the canary"));
    assert_zero_failures(&report, 0);
    assert_eq!(w.replica_versions().await, ["v1"]);
    // Nothing left to abort.
    let out = w.gl.cli(&["canary", "abort", &w.service]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("has no canary running"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_canary_resumes_it_at_the_recorded_step_with_zero_failed_requests() {
    let (mut w, probe, _) =
        v1_live("ckill", &[("v1", NO_ENV), ("v2", NO_ENV)], "6s", "", 100).await;
    // Stop at the second step, after the first one's split was applied.
    w.gl.env = vec![("GREENLIGHT_TEST_PAUSE_AT".into(), "canary:2".into())];
    w.gl.restart();
    let id = w.gl.deploy(&w.service, Target::Tag("v2")).await;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let d = w.gl.get(&format!("/api/deployments/{id}")).await;
        if d["step"] == "canary" && steps(&d, "canary").len() == 2 {
            break;
        }
        assert!(
            d["finished_at"].is_null() && Instant::now() < deadline,
            "{d:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let split = split_line(&w).expect("the first step's split is rendered");
    assert!(split.contains("split percent=10 "), "{split}");
    w.gl.kill();
    // nginx keeps the recorded split meanwhile: both versions answer.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..100 {
        let r = greenlight_testkit::http()
            .get(w.nginx.url())
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
        seen.insert(r.headers()["x-demo-version"].to_str().unwrap().to_string());
    }
    assert_eq!(
        seen.len(),
        2,
        "cookieless requests split per request: {seen:?}"
    );
    w.gl.env.clear();
    w.gl.start();
    let d = w.gl.get(&format!("/api/deployments/{id}")).await;
    assert_eq!(d["state"], "interrupted", "{d:#}");
    let rerun = w.gl.rerun_of(&w.service, id).await;
    // The re-run's first step renders the same split: the same salt, the
    // same cohort of users.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = w.gl.get(&format!("/api/deployments/{rerun}")).await;
        let routed = steps(&r, "canary").first().is_some_and(|s| {
            s["detail"]
                .as_str()
                .unwrap_or_default()
                .contains("of users to")
        });
        if routed {
            break;
        }
        assert!(
            r["finished_at"].is_null() && Instant::now() < deadline,
            "{r:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(split_line(&w).as_deref(), Some(split.as_str()));
    let r = w.gl.wait_done(rerun).await;
    let report = probe.stop().await;
    assert_eq!(r["state"], "succeeded", "{r:#}\n{}", w.gl.log());
    assert_eq!(r["strategy"], "canary");
    // It kept the canary replica and resumed at the step the split records
    // (10%), with the same salt (the same cohort of users), then 50%.
    assert!(steps(&r, "starting").is_empty(), "{r:#}");
    let stages: Vec<u64> = steps(&r, "canary")
        .iter()
        .map(|s| s["batch"].as_u64().unwrap())
        .collect();
    assert_eq!(stages, [1, 2], "{r:#}");
    // The resumed step reads the access log from where it began before the
    // crash: what nginx logged by the recorded split meanwhile counts.
    let first = steps(&r, "canary")[0]["detail"]
        .as_str()
        .unwrap_or_default();
    assert!(
        first.contains("resumed: the access log is read from where this step began"),
        "{first}"
    );
    assert!(first.contains("both groups proved"), "{first}");
    assert_zero_failures(&report, 0);
    assert_eq!(w.replica_versions().await, ["v2"]);
}
