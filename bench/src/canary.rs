//! Suite: the same bad version (v2 answers 500 to 5% of app requests, its
//! health endpoint fine) released three ways behind the same kind of host
//! nginx, under the same load of simulated users (each with its own cookie
//! jar): greenlight's canary (10% then 50% of users, sticky, judged from the
//! access log), greenlight's blue-green with a soak (probes the new colour's
//! health endpoint), and a per-request random split (nginx `weight=`, 10% of
//! requests, no stickiness, no analysis). Failed requests users saw, users who
//! saw both versions, and time from the trigger to the bad version's last
//! user (detected and aborted, or never).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use greenlight_testkit::env::{
    build_demo_image, docker, free_port, unique_prefix, DemoImageOpts, DockerCleanup, Nginx,
};
use greenlight_testkit::probe::{Probe, ProbeOpts, ProbeReport};

use crate::deploy::nginx_reload;
use crate::gl::{self, Greenlight};
use crate::Opts;

/// Simulated users.
const USERS: u32 = 400;
/// How long each procedure is watched from its trigger.
const WATCH: Duration = Duration::from_secs(45);
/// The canary's (and the random split's) share.
const SHARE: u32 = 10;

struct Run {
    procedure: &'static str,
    report: ProbeReport,
    /// Seconds since the probe started: the trigger.
    trigger_s: f64,
    /// What greenlight said, or what the procedure is.
    outcome: String,
    /// Trigger to the bad version's abort (greenlight's record), if it was.
    aborted_after: Option<f64>,
}

pub async fn run(opts: &Opts, binary: &std::path::Path, out: &mut String) -> Result<()> {
    let prefix = unique_prefix("glbench-can");
    let cleanup = DockerCleanup::new(&prefix);
    let repo = format!("{prefix}build");
    let build = || -> Result<()> {
        build_demo_image(&format!("{repo}:v1"), "v1", DemoImageOpts::default())?;
        let bad = DemoImageOpts {
            env: vec![("DEMO_ERROR_PERCENT".into(), "5".into())],
            ..DemoImageOpts::default()
        };
        build_demo_image(&format!("{repo}:v2"), "v2", bad)
    };
    eprintln!("canary: building the demo images ...");
    let mut runs = Vec::new();
    let mut failures = Vec::new();
    for procedure in [
        "greenlight canary",
        "greenlight blue-green, 30 s soak",
        "random split (nginx weight=)",
    ] {
        eprintln!("canary: {procedure} ...");
        let service = format!("{prefix}{}", procedure.len() % 10);
        let result = match build() {
            Err(e) => Err(e),
            Ok(()) if procedure.starts_with("random") => random_split(opts, &service, &repo).await,
            Ok(()) => greenlight(opts, binary, &service, &repo, procedure.contains("canary")).await,
        };
        cleanup.sweep();
        match result {
            Ok(mut run) => {
                run.procedure = procedure;
                eprintln!("  {}", run.report.summary());
                runs.push(run);
            }
            Err(err) => failures.push(format!("{procedure}: {err:#}")),
        }
    }
    for v in ["v1", "v2"] {
        let _ = docker(&["rmi", &format!("{repo}:{v}")]);
    }

    let _ = writeln!(
        out,
        "\n### Canary: the same bad version released three ways\n\n\
         v1 live, then v2, which answers 500 to 5% of app requests (`DEMO_ERROR_PERCENT=5`; its \
         `/healthz` is fine), under the open-model probe at {} req/s (30% POST, no slow requests) \
         sent as {USERS} simulated users, each with its own cookie jar, each procedure watched for \
         {} s from its trigger. greenlight canary: `steps = [{SHARE}, 50]`, `bake = \"20s\"`, \
         `interval = \"1s\"`, `min_requests = 100`, `failed_checks = 2`, the site changed as the \
         README says (userid, `proxy_pass http://$greenlight_<service>_upstream`). blue-green: \
         `soak = \"30s\"` (health probes of the new colour; nothing to compare its errors with \
         once every user is on it). random split: both versions in one nginx upstream with \
         `weight=` ({SHARE}% of requests to v2), no analysis. \"Users who saw both\": users with a \
         2xx from v1 and any answer from v2. \"Bad version's last answer\": seconds from the \
         trigger to the last request v2 answered.\n",
        opts.rate,
        WATCH.as_secs()
    );
    let _ = writeln!(
        out,
        "| procedure | outcome | sent | failed (500 from v2) | users who met v2 | users who saw both | detected and aborted after s | bad version's last answer s |\n\
         |---|---|---:|---:|---:|---:|---:|---:|"
    );
    for r in &runs {
        let (met, both) = users(&r.report);
        let last_v2 = r
            .report
            .samples
            .iter()
            .filter(|s| s.version.as_deref() == Some("v2"))
            .map(|s| s.scheduled_s - r.trigger_s)
            .fold(f64::NAN, f64::max);
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            r.procedure,
            r.outcome,
            r.report.sent,
            r.report.failed(),
            met,
            both,
            r.aborted_after
                .map_or("never".to_string(), |s| format!("{s:.1}")),
            if last_v2.is_nan() {
                "-".to_string()
            } else if last_v2 > WATCH.as_secs_f64() - 2.0 {
                "still serving".to_string()
            } else {
                format!("{last_v2:.1}")
            },
        );
    }
    for f in &failures {
        let _ = writeln!(out, "\nRun FAILED: {f}");
    }
    Ok(())
}

/// (users who got any answer from v2, users who also got a 2xx from v1 after
/// they met v2 or before).
fn users(report: &ProbeReport) -> (usize, usize) {
    let mut seen: BTreeMap<u32, BTreeSet<&str>> = BTreeMap::new();
    for s in &report.samples {
        if let (Some(u), Some(v)) = (s.user, s.version.as_deref()) {
            if v == "v2" || s.is_2xx() {
                seen.entry(u).or_default().insert(v);
            }
        }
    }
    let met = seen.values().filter(|v| v.contains("v2")).count();
    let both = seen.values().filter(|v| v.len() == 2).count();
    (met, both)
}

fn probe(nginx: &Nginx, rate: u32) -> greenlight_testkit::probe::ProbeHandle {
    Probe::start(ProbeOpts {
        base_url: nginx.url(),
        rate,
        post_ratio: 0.3,
        slow_ratio: 0.0,
        keepalive: false,
        users: USERS,
        ..ProbeOpts::default()
    })
}

async fn greenlight(
    opts: &Opts,
    binary: &std::path::Path,
    service: &str,
    repo: &str,
    canary: bool,
) -> Result<Run> {
    let nginx = Nginx::host(&format!("{service}-"), &[service])?;
    let rollout = if canary {
        format!(
            "strategy = \"canary\"\n[service.canary]\nsteps = [{SHARE}, 50]\nbake = \"20s\"\n\
             interval = \"1s\"\nmin_requests = 100\nfailed_checks = 2\n"
        )
    } else {
        "soak = \"30s\"\n".to_string()
    };
    let config = gl::local_service_config(&nginx, service, repo, "", &rollout);
    let glp = Greenlight::spawn(binary, free_port(), &config, None)?;
    let client = greenlight_testkit::http();
    let deploy = |tag: &'static str| gl::deploy_tag(&client, &glp, service, tag);
    let get = |id: i64| {
        let req = client
            .get(format!("{}/api/deployments/{id}", glp.url()))
            .bearer_auth(gl::TOKEN);
        async move { Ok::<serde_json::Value, anyhow::Error>(req.send().await?.json().await?) }
    };
    let id = deploy("v1").await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while get(id).await?["state"] != "succeeded" {
        if Instant::now() > deadline {
            bail!("v1 never went live: {}", get(id).await?);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if canary {
        nginx.use_canary_site()?;
    }
    let t0 = Instant::now();
    let t0_wall = crate::deploy::unix_ms(std::time::SystemTime::now());
    let probe = probe(&nginx, opts.rate);
    if !probe.wait_for_version("v1", Duration::from_secs(10)).await {
        bail!("the probe never saw v1");
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let trigger_s = t0.elapsed().as_secs_f64();
    let id = deploy("v2").await?;
    tokio::time::sleep(WATCH).await;
    let report = probe.stop().await;
    let d = get(id).await?;
    // The abort: the way back's switch, recorded after the failed step.
    let steps = d["steps"].as_array().cloned().unwrap_or_default();
    let failed = steps.iter().position(|s| s["outcome"] == "error");
    let aborted_after = failed.and_then(|i| {
        let back = steps[i + 1..].iter().find(|s| s["step"] == "switching")?;
        Some((back["finished_at"].as_i64()? as f64 - t0_wall) / 1000.0 - trigger_s)
    });
    Ok(Run {
        procedure: "",
        report,
        trigger_s,
        outcome: format!(
            "{}{}",
            d["state"].as_str().unwrap_or("?"),
            d["failed_step"]
                .as_str()
                .map(|s| format!(" at {s}"))
                .unwrap_or_default()
        ),
        aborted_after,
    })
}

/// Both versions in one upstream, v2 with a tenth of the weight: per request,
/// no stickiness, nothing watching.
async fn random_split(opts: &Opts, service: &str, repo: &str) -> Result<Run> {
    let nginx = Nginx::host(&format!("{service}-"), &[service])?;
    let start = |tag: &str| -> Result<u16> {
        let port = free_port();
        docker(&[
            "run",
            "--detach",
            "--name",
            &format!("{service}-{tag}"),
            "--publish",
            &format!("127.0.0.1:{port}:8080"),
            &format!("{repo}:{tag}"),
        ])?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !gl::http_ok(port, "/healthz") {
            if Instant::now() > deadline {
                bail!("{tag} never became healthy");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(port)
    };
    let route = |servers: &str| -> Result<()> {
        std::fs::write(
            nginx.upstreams_dir().join(format!("{service}.conf")),
            format!("upstream {service} {{\n{servers}}}\n"),
        )?;
        nginx_reload(&nginx)
    };
    let v1 = start("v1")?;
    route(&format!("    server 127.0.0.1:{v1};\n"))?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t0 = Instant::now();
    let probe = probe(&nginx, opts.rate);
    if !probe.wait_for_version("v1", Duration::from_secs(10)).await {
        bail!("the probe never saw v1");
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let trigger_s = t0.elapsed().as_secs_f64();
    let v2 = start("v2")?;
    route(&format!(
        "    server 127.0.0.1:{v1} weight={};\n    server 127.0.0.1:{v2} weight={SHARE};\n",
        100 - SHARE
    ))?;
    tokio::time::sleep(WATCH).await;
    let report = probe.stop().await;
    Ok(Run {
        procedure: "",
        report,
        trigger_s,
        outcome: "no decision".into(),
        aborted_after: None,
    })
}
