//! Suite: a 3-replica service deployed N times under load, three ways behind the
//! same host nginx: greenlight blue-green, greenlight rolling, and what
//! docker-rollout does (scale to double, wait for health, then stop every old
//! replica at once). Failed requests, reloads per deploy, time to done, and the
//! most containers running at once.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use greenlight_testkit::env::{
    build_demo_image, docker, free_port, unique_prefix, DemoImageOpts, DockerCleanup, Nginx,
};
use greenlight_testkit::probe::ProbeReport;

use crate::deploy::{nginx_reload, probe_on, Failures};
use crate::gl::{self, Greenlight};
use crate::Opts;

/// Replicas of the service.
const REPLICAS: usize = 3;

pub struct Run {
    pub procedure: &'static str,
    pub keepalive: bool,
    pub report: ProbeReport,
    /// Per deploy: trigger to done, s.
    pub took: Vec<f64>,
    /// Per deploy: nginx reloads.
    pub reloads: Vec<usize>,
    /// nginx reloads, (start, end) in s since the probe started.
    pub reload_windows: Vec<(f64, f64)>,
    pub peak_containers: usize,
}

/// Counts the containers whose name starts with `prefix` (but nginx's), every 100 ms.
pub struct Peak {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<usize>,
}

impl Peak {
    pub fn start(prefix: &str) -> Peak {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let filter = format!("name=^{prefix}");
        let thread = std::thread::spawn(move || {
            let mut most = 0;
            while !flag.load(Ordering::Relaxed) {
                // An nginx container of the run is not one of its replicas.
                if let Ok(out) = docker(&["ps", "--format", "{{.Names}}", "--filter", &filter]) {
                    let replicas = out
                        .lines()
                        .filter(|l| !l.trim().is_empty() && !l.ends_with("-nginx"))
                        .count();
                    most = most.max(replicas);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            most
        });
        Peak { stop, thread }
    }

    pub fn stop(self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or(0)
    }
}

pub async fn run(opts: &Opts, binary: &std::path::Path, out: &mut String) -> Result<()> {
    let prefix = unique_prefix("glbench-rep");
    let cleanup = DockerCleanup::new(&prefix);
    let versions: Vec<String> = (1..=opts.deploys + 1).map(|i| format!("v{i}")).collect();
    let repo = format!("{prefix}build");
    let build = || -> Result<()> {
        for v in &versions {
            build_demo_image(&format!("{repo}:{v}"), v, DemoImageOpts::default())?;
        }
        Ok(())
    };
    eprintln!("replicas: building {} demo images ...", versions.len());
    let procedures = [
        "greenlight blue-green",
        "greenlight rolling",
        "double, then stop old",
    ];
    let (runs, failures) = each_way(opts, "replicas", &prefix, &procedures, async |procedure, service, ka| {
        let result = match build() {
            Err(e) => Err(e),
            Ok(()) if procedure.starts_with("greenlight") => {
                let rollout = if procedure.ends_with("rolling") {
                    "strategy = \"rolling\"\nmax_surge = 1\nmax_unavailable = 0\nmonitor = \"1s\"\n"
                } else {
                    ""
                };
                greenlight(opts, binary, &service, &repo, &versions, ka, rollout, "").await
            }
            Ok(()) => double_then_stop(opts, &service, &repo, &versions, ka).await,
        };
        cleanup.sweep();
        result
    })
    .await;
    for v in &versions {
        let _ = docker(&["rmi", &format!("{repo}:{v}")]);
    }

    let _ = writeln!(
        out,
        "\n### Replicas: {REPLICAS} replicas, {} deploys each way\n\n\
         The same demo service with {REPLICAS} replicas behind one host nginx, deployed {} times \
         (v1 live, then v2..v{}) under the open-model probe at {} req/s (30% POST, 20% to a 1 s \
         `/slow` endpoint). greenlight deploys local images (`pull = false`) through its admin API; \
         rolling uses `max_surge = 1`, `max_unavailable = 0`, `monitor = \"1s\"`. \"double, then stop \
         old\" is what docker-rollout does: start {REPLICAS} new replicas beside the old ones, wait \
         until each is healthy, then `docker stop` every old replica at once; behind this static \
         nginx it also rewrites the upstream to the new replicas and reloads just before the stop \
         (without that, nginx would keep sending to the stopped ones). Time to done: trigger until greenlight reports the deployment finished / \
         the script returns. Peak containers: the most of the service's containers running at once \
         (sampled every 100 ms).\n",
        opts.deploys,
        opts.deploys,
        opts.deploys + 1,
        opts.rate
    );
    let _ = writeln!(
        out,
        "| procedure | keep-alive | sent | failed | keep-alive race at reload | other failures | reloads per deploy | time to done s (mean / max) | peak containers | p99 ms |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for r in &runs {
        let f = Failures::of(&r.report, &r.reload_windows);
        let reloads = r.reloads.iter().sum::<usize>() as f64 / r.reloads.len().max(1) as f64;
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {:.1} | {:.2} / {:.2} | {} | {:.1} |",
            r.procedure,
            if r.keepalive { "on" } else { "off" },
            r.report.sent,
            r.report.failed(),
            if r.keepalive {
                f.keepalive_race.to_string()
            } else {
                "-".into()
            },
            f.other,
            reloads,
            mean(&r.took),
            r.took.iter().cloned().fold(0.0, f64::max),
            r.peak_containers,
            r.report.p99_ms,
        );
    }
    for f in &failures {
        let _ = writeln!(out, "\nRun FAILED: {f}");
    }
    Ok(())
}

/// Runs each procedure once per keep-alive mode (`run_one` gets the
/// procedure, a service name of its own and the mode): the runs, and what
/// failed, each with its procedure.
pub async fn each_way(
    opts: &Opts,
    suite: &str,
    prefix: &str,
    procedures: &[&'static str],
    mut run_one: impl AsyncFnMut(&'static str, String, bool) -> Result<Run>,
) -> (Vec<Run>, Vec<String>) {
    let mut runs = Vec::new();
    let mut failures = Vec::new();
    for &ka in &opts.keepalive {
        let k = if ka { "k" } else { "n" };
        for &procedure in procedures {
            eprintln!(
                "{suite}: {procedure}, keep-alive {ka}, {} deploys ...",
                opts.deploys
            );
            let service = format!("{prefix}{}{k}", procedure.len() % 7);
            match run_one(procedure, service, ka).await {
                Ok(mut run) => {
                    run.procedure = procedure;
                    eprintln!("  {}", run.report.summary());
                    runs.push(run);
                }
                Err(err) => failures.push(format!("{procedure} (keep-alive {ka}): {err:#}")),
            }
        }
    }
    (runs, failures)
}

pub fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

/// greenlight deploys `versions` (local builds) of a 3-replica
/// service behind a host nginx: `rollout` lines go into its
/// `[service.rollout]`, `extra` (top-level tables) at the end of the config.
#[allow(clippy::too_many_arguments)]
pub async fn greenlight(
    opts: &Opts,
    binary: &std::path::Path,
    service: &str,
    repo: &str,
    versions: &[String],
    keepalive: bool,
    rollout: &str,
    extra: &str,
) -> Result<Run> {
    let nginx = Nginx::host(&format!("{service}-"), &[service])?;
    let config = gl::local_service_config(
        &nginx,
        service,
        repo,
        &format!("replicas = {REPLICAS}\n"),
        rollout,
    ) + extra;
    let glp = Greenlight::spawn(binary, free_port(), &config, None)?;
    let client = greenlight_testkit::http();
    let deploy = |tag: String| {
        let client = client.clone();
        let glp = &glp;
        async move { gl::deploy_tag(&client, glp, service, &tag).await }
    };
    let wait = |id: i64| {
        let client = client.clone();
        let url = format!("{}/api/deployments/{id}", glp.url());
        async move {
            let deadline = Instant::now() + Duration::from_secs(300);
            loop {
                let d: serde_json::Value = client
                    .get(&url)
                    .bearer_auth(gl::TOKEN)
                    .send()
                    .await?
                    .json()
                    .await?;
                if !d["finished_at"].is_null() {
                    if d["state"] != "succeeded" {
                        bail!("deployment {id} ended {}: {}", d["state"], d["error"]);
                    }
                    return Ok::<_, anyhow::Error>(d);
                }
                if Instant::now() > deadline {
                    bail!("deployment {id} did not finish");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    wait(deploy(versions[0].clone()).await?).await?;

    let t0_wall = crate::deploy::unix_ms(std::time::SystemTime::now());
    let probe = probe_on(&nginx, opts.rate, keepalive, &versions[0]).await?;
    let peak = Peak::start(service);
    let (mut took, mut reloads, mut windows) = (Vec::new(), Vec::new(), Vec::new());
    for v in &versions[1..] {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let trigger = Instant::now();
        let d = wait(deploy(v.clone()).await?).await?;
        took.push(trigger.elapsed().as_secs_f64());
        let switches: Vec<&serde_json::Value> = d["steps"]
            .as_array()
            .context("no steps")?
            .iter()
            .filter(|s| s["step"] == "switching")
            .collect();
        reloads.push(switches.len());
        for s in switches {
            let at = |f: &str| (s[f].as_i64().unwrap_or(0) as f64 - t0_wall) / 1000.0;
            windows.push((at("started_at"), at("finished_at")));
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let report = probe.stop().await;
    Ok(Run {
        procedure: "",
        keepalive,
        report,
        took,
        reloads,
        reload_windows: windows,
        peak_containers: peak.stop(),
    })
}

/// docker-rollout's way behind a static nginx: double, wait, switch, stop all
/// old at once (no wait for the nginx workers still serving through them).
async fn double_then_stop(
    opts: &Opts,
    service: &str,
    repo: &str,
    versions: &[String],
    keepalive: bool,
) -> Result<Run> {
    let nginx = Nginx::host(&format!("{service}-"), &[service])?;
    let start = |tag: &str, generation: usize| -> Result<Vec<(String, u16)>> {
        let mut started = Vec::new();
        for k in 1..=REPLICAS {
            let name = format!("{service}-{generation}-{k}");
            let port = free_port();
            docker(&[
                "run",
                "--detach",
                "--name",
                &name,
                "--publish",
                &format!("127.0.0.1:{port}:8080"),
                &format!("{repo}:{tag}"),
            ])?;
            started.push((name, port));
        }
        for (_, port) in &started {
            let deadline = Instant::now() + Duration::from_secs(30);
            while !gl::http_ok(*port, "/healthz") {
                if Instant::now() > deadline {
                    bail!("a replica on {port} never became healthy");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(started)
    };
    let route = |replicas: &[(String, u16)]| -> Result<()> {
        let servers: String = replicas
            .iter()
            .map(|(_, port)| format!("    server 127.0.0.1:{port};\n"))
            .collect();
        std::fs::write(
            nginx.upstreams_dir().join(format!("{service}.conf")),
            format!("upstream {service} {{\n{servers}}}\n"),
        )?;
        nginx_reload(&nginx)
    };
    let mut live = start(&versions[0], 0)?;
    route(&live)?;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let t0 = Instant::now();
    let probe = probe_on(&nginx, opts.rate, keepalive, &versions[0]).await?;
    let peak = Peak::start(service);
    let (mut took, mut reloads, mut windows) = (Vec::new(), Vec::new(), Vec::new());
    for (i, v) in versions[1..].iter().enumerate() {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let trigger = Instant::now();
        let new = start(v, i + 1)?;
        let reload_start = t0.elapsed().as_secs_f64();
        route(&new)?;
        windows.push((reload_start, t0.elapsed().as_secs_f64()));
        // `docker stop` all at once (SIGTERM; the demo finishes what it serves,
        // then exits), without waiting for nginx's old workers.
        let old: Vec<&str> = live.iter().map(|(n, _)| n.as_str()).collect();
        let mut stop = vec!["stop"];
        stop.extend(old.iter().copied());
        docker(&stop)?;
        let mut rm = vec!["rm"];
        rm.extend(old);
        docker(&rm)?;
        took.push(trigger.elapsed().as_secs_f64());
        reloads.push(1);
        live = new;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let report = probe.stop().await;
    Ok(Run {
        procedure: "",
        keepalive,
        report,
        took,
        reloads,
        reload_windows: windows,
        peak_containers: peak.stop(),
    })
}
