//! `GET /metrics` of a real greenlight (real Docker, nginx and registry), read with
//! a Prometheus text-format parser: the families are there with their types, and
//! the counters move as deployments, deliveries and refusals happen.

mod common;

use std::time::{Duration, Instant};

use common::{NginxKind, Target, World, GITHUB_SECRET, TOKEN};
use greenlight_testkit::env::free_port;
use prometheus_parse::{Sample, Scrape, Value};
use serde_json::Value as Json;

const NO_ENV: &[(&str, &str)] = &[];
const SLACK_PATH: &str = "T0METRICS/B0METRICS/metrics-slack-secret-4471";

/// One parsed scrape, and its text.
struct Metrics {
    scrape: Scrape,
    text: String,
}

impl Metrics {
    /// The samples of `name` with (at least) these labels.
    fn samples(&self, name: &str, labels: &[(&str, &str)]) -> Vec<&Sample> {
        self.scrape
            .samples
            .iter()
            .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .collect()
    }

    /// The one sample of `name` with (at least) these labels.
    fn sample(&self, name: &str, labels: &[(&str, &str)]) -> Option<&Sample> {
        let found = self.samples(name, labels);
        assert!(
            found.len() <= 1,
            "{name}{labels:?} matches {} samples:\n{}",
            found.len(),
            self.text
        );
        found.into_iter().next()
    }

    /// A counter's value; 0 when the series is not there yet.
    fn counter(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        match self.sample(name, labels).map(|s| &s.value) {
            None => 0.0,
            Some(Value::Counter(v)) => *v,
            Some(other) => panic!("{name} is not a counter: {other:?}"),
        }
    }

    fn gauge(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        match self.sample(name, labels).map(|s| &s.value) {
            Some(Value::Gauge(v)) => *v,
            other => panic!("{name}{labels:?} is not a gauge: {other:?}\n{}", self.text),
        }
    }

    /// How many observations a histogram series holds (0 when absent), after
    /// checking that its buckets are cumulative and end in `+Inf` = `_count`.
    fn histogram_count(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let Some(sample) = self.sample(name, labels) else {
            return 0.0;
        };
        let Value::Histogram(buckets) = &sample.value else {
            panic!("{name} is not a histogram: {:?}", sample.value);
        };
        assert!(
            buckets
                .windows(2)
                .all(|w| w[0].less_than < w[1].less_than && w[0].count <= w[1].count),
            "{name}{labels:?} buckets are not cumulative: {buckets:?}"
        );
        let last = buckets.last().expect("a histogram has buckets");
        assert!(last.less_than.is_infinite(), "{buckets:?}");
        assert_eq!(buckets[0].less_than, 0.01, "the first bucket is 10 ms");
        assert!(
            buckets.iter().any(|b| b.less_than == 600.0),
            "a bucket at 10 min: {buckets:?}"
        );
        let count = self.sample(&format!("{name}_count"), labels).unwrap();
        let Value::Untyped(count) = count.value else {
            panic!("{:?}", count.value)
        };
        assert_eq!(
            last.count, count,
            "+Inf bucket and _count of {name}{labels:?}"
        );
        count
    }

    /// Whether the family is declared (HELP), even when it has no series yet.
    fn declared(&self, name: &str) -> bool {
        self.scrape.docs.contains_key(name)
    }
}

async fn scrape(w: &World) -> Metrics {
    let resp = greenlight_testkit::http()
        .get(format!("{}/metrics", w.gl.url()))
        .bearer_auth(TOKEN)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let content_type = resp.headers()["content-type"].to_str().unwrap().to_string();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let text = resp.text().await.unwrap();
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
    assert!(!scrape.samples.is_empty(), "{text}");
    Metrics { scrape, text }
}

/// Scrapes until `done` holds, or fails after a deadline.
async fn scrape_until(w: &World, what: &str, done: impl Fn(&Metrics) -> bool) -> Metrics {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let m = scrape(w).await;
        if done(&m) {
            return m;
        }
        assert!(
            Instant::now() < deadline,
            "{what} never showed in /metrics:\n{}\n{}",
            m.text,
            w.gl.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The pipeline steps a deployment went through, as the admin API reports them
/// (the end state is not a step).
fn steps_of(d: &Json) -> Vec<String> {
    let ends = [
        "succeeded",
        "failed",
        "rolled_back",
        "superseded",
        "already_live",
        "interrupted",
        "stale",
    ];
    d["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step"].as_str().unwrap().to_string())
        .filter(|s| !ends.contains(&s.as_str()))
        .collect()
}

/// Each step of `d` has one more observation in `after` than in `before`.
fn assert_steps_counted(before: &Metrics, after: &Metrics, service: &str, d: &Json) {
    let steps = steps_of(d);
    assert!(steps.len() >= 3, "{d:#}");
    for step in &steps {
        let labels = [("service", service), ("step", step.as_str())];
        let name = "greenlight_step_duration_seconds";
        assert_eq!(
            after.histogram_count(name, &labels) - before.histogram_count(name, &labels),
            1.0,
            "step {step}:\n{}",
            after.text
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_deployments_deliveries_and_refusals() {
    // Slack notifications go to a port nobody listens on: each is one failed
    // attempt (max_attempts = 1), recorded like any other.
    let slack = format!("http://127.0.0.1:{}/{SLACK_PATH}", free_port());
    let extra = format!(
        "\n[webhooks]\ngithub_secrets = [\"{GITHUB_SECRET}\"]\n\n\
         [notify]\nmax_attempts = 1\ntimeout = \"2s\"\n\n\
         [notify.slack]\nwebhook_url = \"{slack}\"\n"
    );
    let mut w = World::with_config(
        "m",
        NginxKind::Host,
        &[
            ("v1", NO_ENV),
            ("v2", NO_ENV),
            ("sick", &[("DEMO_UNHEALTHY", "1")]),
        ],
        &extra,
    );
    let svc = w.service.clone();
    let svc = svc.as_str();
    let http = greenlight_testkit::http();
    let url = format!("{}/metrics", w.gl.url());

    // The admin token is required.
    let resp = http.get(&url).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    let resp = http.get(&url).bearer_auth("wrong").send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 401);

    // Every family is declared from the start, with its type.
    let m0 = scrape(&w).await;
    for family in [
        "greenlight_up",
        "greenlight_build_info",
        "greenlight_deployments_total",
        "greenlight_step_duration_seconds",
        "greenlight_deliveries_total",
        "greenlight_webhook_auth_failures_total",
        "greenlight_queue_depth",
        "greenlight_notification_attempts_total",
        "greenlight_live_info",
    ] {
        assert!(m0.declared(family), "{family} missing:\n{}", m0.text);
    }
    assert_eq!(m0.gauge("greenlight_up", &[]), 1.0);
    assert_eq!(m0.gauge("greenlight_queue_depth", &[("service", svc)]), 0.0);
    let succeeded = [("service", svc), ("outcome", "succeeded")];
    let failed = [("service", svc), ("outcome", "failed")];
    // Known series start at 0, so a first event is an increase.
    assert_eq!(
        m0.sample("greenlight_deployments_total", &failed)
            .map(|s| s.value.clone()),
        Some(Value::Counter(0.0))
    );
    assert_eq!(m0.samples("greenlight_live_info", &[]).len(), 0);

    // A successful deployment.
    let d1 = w.deploy_ok("v1").await;
    let m1 = scrape(&w).await;
    assert_eq!(
        m1.counter("greenlight_deployments_total", &succeeded)
            - m0.counter("greenlight_deployments_total", &succeeded),
        1.0
    );
    assert_eq!(m1.counter("greenlight_deployments_total", &failed), 0.0);
    assert_steps_counted(&m0, &m1, svc, &d1);
    let live = |m: &Metrics| -> Vec<(String, String, String)> {
        m.samples("greenlight_live_info", &[("service", svc)])
            .into_iter()
            .map(|s| {
                assert_eq!(s.value, Value::Gauge(1.0));
                let l = |k| s.labels.get(k).unwrap_or("").to_string();
                (l("colour"), l("digest"), l("tag"))
            })
            .collect()
    };
    assert_eq!(
        live(&m1),
        vec![("blue".into(), w.digest("v1").to_string(), "v1".into())]
    );

    // Its notification was attempted (and failed: nothing listens).
    let gave_up = [("channel", "slack"), ("outcome", "gave_up")];
    scrape_until(&w, "the Slack attempt", |m| {
        m.counter("greenlight_notification_attempts_total", &gave_up) >= 1.0
    })
    .await;

    // The next one: the live info follows the new digest, one series per service.
    let d2 = w.deploy_ok("v2").await;
    let m2 = scrape(&w).await;
    assert_eq!(
        m2.counter("greenlight_deployments_total", &succeeded)
            - m1.counter("greenlight_deployments_total", &succeeded),
        1.0
    );
    assert_steps_counted(&m1, &m2, svc, &d2);
    assert_eq!(
        live(&m2),
        vec![("green".into(), w.digest("v2").to_string(), "v2".into())]
    );

    // A deployment that fails its health gate.
    let d3 = w.gl.deploy_and_wait(svc, Target::Tag("sick")).await;
    assert_eq!(d3["state"], "failed", "{d3:#}");
    let m3 = scrape(&w).await;
    assert_eq!(m3.counter("greenlight_deployments_total", &failed), 1.0);
    assert_eq!(
        m3.counter("greenlight_deployments_total", &succeeded),
        m2.counter("greenlight_deployments_total", &succeeded)
    );
    assert_steps_counted(&m2, &m3, svc, &d3);
    assert_eq!(live(&m3), live(&m2), "a failed deploy changes nothing live");

    // A delivery with a bad signature is refused and counted, not stored.
    let github_refused = [("source", "github")];
    let ignored = [("source", "github"), ("verdict", "ignored")];
    let body = w.github_payload("v9", w.digest("v2"), "2030-01-01T00:00:00Z");
    let resp = http
        .post(format!("{}/hooks/github", w.gl.url()))
        .header("X-GitHub-Event", "package")
        .header("X-GitHub-Delivery", "metrics-bad-signature")
        .header(
            "X-Hub-Signature-256",
            greenlight::webhook::github::sign("not-the-secret", body.as_bytes()),
        )
        .header("Content-Type", "application/json")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    let m4 = scrape(&w).await;
    assert_eq!(
        m4.counter("greenlight_webhook_auth_failures_total", &github_refused)
            - m3.counter("greenlight_webhook_auth_failures_total", &github_refused),
        1.0
    );
    for other in ["dockerhub", "registry"] {
        assert_eq!(
            m4.counter(
                "greenlight_webhook_auth_failures_total",
                &[("source", other)]
            ),
            0.0
        );
    }
    assert_eq!(m4.counter("greenlight_deliveries_total", &ignored), 0.0);

    // A signed one for a repository no service deploys: stored, `ignored`, and
    // counted without its free-text reason.
    let (status, answer) = w.github("metrics-unknown-repo", &body).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["outcome"], "ignored", "{answer}");
    let m5 = scrape(&w).await;
    assert_eq!(m5.counter("greenlight_deliveries_total", &ignored), 1.0);
    for s in m5.samples("greenlight_deliveries_total", &[]) {
        let verdict = s.labels.get("verdict").unwrap();
        assert!(
            ["queued", "ignored", "duplicate", "stale", "already_live"].contains(&verdict),
            "{verdict}"
        );
    }
    assert_eq!(m5.gauge("greenlight_queue_depth", &[("service", svc)]), 0.0);

    // No secret in any label.
    for secret in [TOKEN, GITHUB_SECRET, SLACK_PATH, "metrics-slack-secret"] {
        assert!(!m5.text.contains(secret), "{secret} in /metrics");
    }

    // After a restart, what the store knows is counted again from it; the
    // refusals were only in memory.
    w.gl.restart();
    let m6 = scrape(&w).await;
    for outcome in [&succeeded, &failed] {
        assert_eq!(
            m6.counter("greenlight_deployments_total", outcome),
            m5.counter("greenlight_deployments_total", outcome)
        );
    }
    assert_eq!(m6.counter("greenlight_deliveries_total", &ignored), 1.0);
    assert_eq!(
        m6.histogram_count(
            "greenlight_step_duration_seconds",
            &[("service", svc), ("step", "health_gate")]
        ),
        m5.histogram_count(
            "greenlight_step_duration_seconds",
            &[("service", svc), ("step", "health_gate")]
        )
    );
    assert_eq!(live(&m6), live(&m5));
    assert_eq!(
        m6.counter("greenlight_webhook_auth_failures_total", &github_refused),
        0.0
    );
}
