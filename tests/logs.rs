//! The log as an operator reads it: JSON lines under `--log-format json`, each
//! line of a deployment carrying its service and deployment id, each step
//! transition with its duration, and no secret anywhere.

mod common;

use common::{NginxKind, Target, World, TOKEN};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_the_service_and_deployment_on_every_deployment_line() {
    let mut w = World::new(
        "logs",
        NginxKind::Host,
        &[("v1", &[]), ("bad", &[("DEMO_UNHEALTHY", "1")])],
    );
    w.gl.env = vec![("GREENLIGHT_LOG_FORMAT".into(), "json".into())];
    w.gl.restart();
    let ok = w.deploy_ok("v1").await["id"].as_i64().unwrap();
    let failed = w.gl.deploy_and_wait(&w.service, Target::Tag("bad")).await;
    assert_eq!(failed["state"], "failed");
    let failed = failed["id"].as_i64().unwrap();

    let log = w.gl.log();
    // The log file also holds the human lines of the first start.
    let lines: Vec<Value> = log
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(!lines.is_empty(), "no JSON lines:\n{log}");
    let deploy_lines: Vec<&Value> = lines
        .iter()
        .filter(|l| l["target"] == "greenlight::deploy::driver")
        .collect();
    assert!(deploy_lines.len() >= 12, "{log}");
    for l in &deploy_lines {
        assert_eq!(l["span"]["service"], w.service.as_str(), "{l}");
        let id = l["span"]["deployment"]
            .as_i64()
            .unwrap_or_else(|| panic!("{l}"));
        assert!(id == ok || id == failed, "{l}");
    }
    // Transitions read `from -> to`, with how long the step took.
    let transitions: Vec<(String, i64)> = deploy_lines
        .iter()
        .filter_map(|l| {
            let m = l["fields"]["message"].as_str()?;
            m.contains(" -> ")
                .then(|| (m.to_string(), l["span"]["deployment"].as_i64().unwrap()))
        })
        .collect();
    for expected in [
        ("health_gate -> switching".to_string(), ok),
        ("pruning -> succeeded".to_string(), ok),
        ("health_gate -> failed".to_string(), failed),
    ] {
        assert!(
            transitions.contains(&expected),
            "{expected:?} in {transitions:?}"
        );
    }
    assert!(
        deploy_lines.iter().any(|l| l["fields"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("starting -> "))
            && l["fields"]["step_ms"].is_u64()),
        "durations on transitions"
    );
    assert!(!log.contains(TOKEN), "the admin token was logged");
}
