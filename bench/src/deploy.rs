//! Suite: deploy under load. An open-model probe through nginx (testkit's probe) across
//! N deploys of the demo app, for greenlight (triggered by a real registry push
//! notification), the classic script, and recreate.

use std::fmt::Write as _;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use greenlight_testkit::env::{
    build_demo_image, docker, free_port, unique_prefix, DemoImageOpts, DockerCleanup, Nginx,
    NGINX_BINARY,
};
use greenlight_testkit::probe::{Probe, ProbeHandle, ProbeOpts, ProbeReport, Sample, ERR_CLOSED};

use crate::gl::{self, config_for, Greenlight, RssSampler, ServiceSpec};
use crate::Opts;

/// One procedure's run.
struct Run {
    procedure: &'static str,
    keepalive: bool,
    report: ProbeReport,
    /// Per deploy: trigger to the probe's first 2xx of the new version, s.
    first_new: Vec<f64>,
    /// Per deploy: trigger to the procedure being done, s.
    deploy_s: Vec<f64>,
    /// Per deploy: trigger time, s since the probe started.
    triggers: Vec<f64>,
    /// greenlight only, per deploy: webhook arrival to the probe's first response of the new
    /// version, the container's start to its first healthy probe, and the step durations, s.
    switch: Vec<Switch>,
    /// greenlight only: peak RSS during the run (sampled max, VmHWM), KiB.
    rss: Option<(u64, u64)>,
    /// nginx reloads during the run, (start, end) in s since the probe started.
    reloads: Vec<(f64, f64)>,
}

impl Run {
    fn failures(&self) -> Failures {
        Failures::of(&self.report, &self.reloads)
    }
}

/// How long after a reload ends a `closed_before_response` on a keep-alive connection is
/// still put down to the reload (the old workers close their idle connections as soon as
/// the master tells them to quit, within the reload's own few ms).
pub const RACE_AFTER_RELOAD_S: f64 = 1.0;

/// A run's failed requests split into nginx 1.22's client keep-alive race at a reload and
/// everything else.
pub struct Failures {
    /// `closed_before_response` on a keep-alive run, sent during a reload or within
    /// [`RACE_AFTER_RELOAD_S`] after it.
    pub keepalive_race: u64,
    /// Every other failed request (non-2xx, or any other transport error).
    pub other: u64,
}

impl Failures {
    pub fn of(report: &ProbeReport, reloads: &[(f64, f64)]) -> Failures {
        let keepalive_race = report
            .samples
            .iter()
            .filter(|x| is_keepalive_race(report.keepalive, x, reloads))
            .count() as u64;
        Failures {
            keepalive_race,
            other: report.failed() - keepalive_race,
        }
    }

    /// "0", or "3 (1 keep-alive race at reload, 2 other)".
    pub fn describe(&self) -> String {
        match (self.keepalive_race, self.other) {
            (0, other) => other.to_string(),
            (race, 0) => format!("{race}, all the keep-alive race at a reload"),
            (race, other) => format!(
                "{} ({race} the keep-alive race at a reload, {other} other)",
                race + other
            ),
        }
    }
}

/// Whether a failed request is nginx 1.22's client keep-alive race: a keep-alive run, the
/// connection closed before any response, sent while a reload's old workers were closing
/// their idle connections.
/// What a failed request got (its status or transport error), marked when it
/// is the keep-alive race at a reload.
pub fn failure_cause(sample: &Sample, keepalive: bool, reloads: &[(f64, f64)]) -> String {
    let what = sample
        .status
        .map(|s| s.to_string())
        .or(sample.error.map(str::to_string))
        .unwrap_or_default();
    if is_keepalive_race(keepalive, sample, reloads) {
        format!("{what} (keep-alive race at reload)")
    } else {
        what
    }
}

pub fn is_keepalive_race(keepalive: bool, sample: &Sample, reloads: &[(f64, f64)]) -> bool {
    keepalive
        && sample.error == Some(ERR_CLOSED)
        && reloads.iter().any(|&(start, end)| {
            sample.scheduled_s >= start - 0.05 && sample.scheduled_s <= end + RACE_AFTER_RELOAD_S
        })
}

/// One greenlight deploy's switch timing, from its recorded steps and the probe.
pub struct Switch {
    version: String,
    /// The `switching` step (render, `nginx -t`, reload), Unix ms.
    pub reload_ms: (f64, f64),
    arrival_to_served: f64,
    start_to_healthy: f64,
    steps: String,
}

impl Switch {
    fn overhead(&self) -> f64 {
        self.arrival_to_served - self.start_to_healthy
    }
}

/// Reads the newest deployment of `service` with its steps and times the switch against
/// `served_ms` (Unix ms of the probe's first response of the new version).
pub async fn switch_timing(
    gl: &Greenlight,
    service: &str,
    version: &str,
    served_ms: f64,
) -> Result<Switch> {
    let client = greenlight_testkit::http();
    let get = |path: String| {
        let req = client
            .get(format!("{}{path}", gl.url()))
            .bearer_auth(gl::TOKEN);
        async move { Ok::<_, anyhow::Error>(req.send().await?.json::<serde_json::Value>().await?) }
    };
    let list = get(format!("/api/deployments?service={service}")).await?;
    let id = list
        .as_array()
        .and_then(|l| l.iter().filter_map(|d| d["id"].as_i64()).max())
        .context("no deployments listed")?;
    let d = get(format!("/api/deployments/{id}")).await?;
    let steps = d["steps"].as_array().context("no steps")?;
    let step = |name: &str| steps.iter().find(|x| x["step"] == name);
    let at = |name: &str, field: &str| -> Result<f64> {
        step(name)
            .and_then(|x| x[field].as_i64())
            .map(|v| v as f64)
            .with_context(|| format!("no {field} of step {name} in {d}"))
    };
    let received = at("received", "started_at")?;
    let reload_ms = (
        at("switching", "started_at")?,
        at("switching", "finished_at")?,
    );
    let start_to_healthy =
        (at("health_gate", "finished_at")? - at("starting", "started_at")?) / 1000.0;
    let steps = steps
        .iter()
        .filter_map(|x| {
            let dur = x["finished_at"].as_i64()? - x["started_at"].as_i64()?;
            Some(format!("{} {}", x["step"].as_str()?, dur))
        })
        .collect::<Vec<_>>()
        .join(", ");
    Ok(Switch {
        version: version.to_string(),
        reload_ms,
        arrival_to_served: (served_ms - received) / 1000.0,
        start_to_healthy,
        steps,
    })
}

pub fn unix_ms(t: std::time::SystemTime) -> f64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

pub fn probe_opts(url: String, rate: u32, keepalive: bool) -> ProbeOpts {
    ProbeOpts {
        base_url: url,
        rate,
        post_ratio: 0.3,
        slow_ratio: 0.2,
        slow_ms: 1000,
        keepalive,
        timeout: Duration::from_secs(10),
        max_duration: Duration::from_secs(600),
        users: 0,
    }
}

/// Starts the probe through `nginx` and waits until it sees `version`.
pub async fn probe_on(
    nginx: &Nginx,
    rate: u32,
    keepalive: bool,
    version: &str,
) -> Result<ProbeHandle> {
    let probe = Probe::start(probe_opts(nginx.url(), rate, keepalive));
    if !probe
        .wait_for_version(version, Duration::from_secs(10))
        .await
    {
        bail!("the probe never saw {version}");
    }
    Ok(probe)
}

/// Waits for the probe to see `version`, and returns trigger → first seen, in s.
async fn first_new(
    probe: &ProbeHandle,
    t0: Instant,
    trigger: Instant,
    version: &str,
) -> Result<f64> {
    if !probe
        .wait_for_version(version, Duration::from_secs(60))
        .await
    {
        bail!("the probe never saw {version}");
    }
    let seen = probe.first_seen()[version];
    Ok(seen - (trigger - t0).as_secs_f64())
}

pub async fn run(opts: &Opts, binary: &std::path::Path, out: &mut String) -> Result<()> {
    let prefix = unique_prefix("glbench-dep");
    let cleanup = DockerCleanup::new(&prefix);
    let versions: Vec<String> = (1..=opts.deploys + 1).map(|i| format!("v{i}")).collect();
    let local = |v: &str| format!("{prefix}build:{v}");
    // Built again before each procedure (a cache hit): greenlight's image pruning removes
    // the image, and with it these local tags, once it is no longer among the newest.
    let build = || -> Result<()> {
        for v in &versions {
            build_demo_image(&local(v), v, DemoImageOpts::default())?;
        }
        Ok(())
    };
    eprintln!("deploy: building {} demo images ...", versions.len());
    build()?;
    let mut runs = Vec::new();
    let mut failures = Vec::new();
    for &ka in &opts.keepalive {
        let k = if ka { "k" } else { "n" };
        for procedure in ["greenlight", "classic", "recreate"] {
            eprintln!(
                "deploy: {procedure}, keep-alive {ka}, {} deploys ...",
                opts.deploys
            );
            let service = format!("{prefix}{}{k}", &procedure[..2]);
            let result = build();
            let result = match result.and(Ok(procedure)) {
                Err(err) => Err(err),
                Ok("greenlight") => greenlight(opts, binary, &service, &versions, &local, ka).await,
                Ok("classic") => classic(opts, &service, &versions, &local, ka).await,
                Ok(_) => recreate(opts, &service, &versions, &local, ka).await,
            };
            cleanup.sweep();
            match result {
                Ok(run) => {
                    eprintln!("  {}", run.report.summary());
                    runs.push(run);
                }
                Err(err) => failures.push(format!("{procedure} (keep-alive {ka}): {err:#}")),
            }
        }
    }
    for v in &versions {
        let _ = docker(&["rmi", &local(v)]);
    }
    // Digest-only references left by greenlight's pulls (`<repo>@sha256:...`, no tag).
    if let Ok(listing) = docker(&["images", "--format", "{{.Repository}} {{.ID}}"]) {
        for id in listing
            .lines()
            .filter(|l| l.contains(prefix.as_str()))
            .filter_map(|l| l.split_whitespace().nth(1))
        {
            let _ = docker(&["rmi", "--force", id]);
        }
    }

    let _ = writeln!(
        out,
        "\n### Deploy under load\n\n{} deploys per procedure (v1 live, then v2..v{}), open-model probe \
         through a host nginx at {} req/s (30% POST, 20% to a 1 s `/slow` endpoint), latency from the \
         scheduled send time. Trigger: greenlight, the start of `docker push` of the new tag to the \
         registry, whose notification is the only trigger; classic and recreate, the start of the script. \
         Deploy time: trigger until greenlight's API reports the tag live and nothing deploying / until \
         the script returns. Classic script: `docker run` the idle colour (its own published port), \
         `sleep {}`, `sed -i` the upstream name in nginx.conf, `nginx -s reload`, immediately \
         `docker stop` the old colour. Recreate: `docker stop` + `docker rm` + `docker run` on the same \
         published port (what `docker compose up -d --force-recreate` does).\n",
        opts.deploys,
        opts.deploys + 1,
        opts.rate,
        opts.classic_sleep
    );
    let _ = writeln!(
        out,
        "| procedure | keep-alive | sent | failed | keep-alive race at reload | other failures | non-2xx | transport errors | p50 ms | p99 ms | max ms | rate achieved/target | late sends | flips/deploy | trigger to new version s (mean / max) | deploy time s (mean / max) |\n\
         |---|---|---:|---:|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for r in &runs {
        let rep = &r.report;
        let non2xx = if rep.non_2xx.is_empty() {
            "-".to_string()
        } else {
            rep.non_2xx
                .iter()
                .map(|(k, v)| format!("{k}:{v}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let transport = if rep.transport_errors.is_empty() {
            "-".to_string()
        } else {
            rep.transport_errors
                .iter()
                .map(|(k, v)| format!("{k}:{v}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let f = r.failures();
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1}/{} | {} | {:.2} | {:.2} / {:.2} | {:.2} / {:.2} |",
            r.procedure,
            if r.keepalive { "on" } else { "off" },
            rep.sent,
            rep.failed(),
            if r.keepalive { f.keepalive_race.to_string() } else { "-".to_string() },
            f.other,
            non2xx,
            transport,
            rep.p50_ms,
            rep.p99_ms,
            rep.max_ms,
            rep.achieved_rate,
            rep.target_rate,
            rep.late_sends,
            rep.flips() as f64 / opts.deploys as f64,
            mean(&r.first_new),
            max(&r.first_new),
            mean(&r.deploy_s),
            max(&r.deploy_s),
        );
    }
    let _ = writeln!(
        out,
        "\nProbe detail (testkit `ProbeReport::markdown_row`):\n"
    );
    let _ = writeln!(out, "{}", ProbeReport::markdown_header());
    for r in &runs {
        let label = format!(
            "{} keep-alive {}",
            r.procedure,
            if r.keepalive { "on" } else { "off" }
        );
        let _ = writeln!(out, "{}", r.report.markdown_row(&label));
    }
    let _ = writeln!(
        out,
        "\n### Switch overhead\n\nPer greenlight deploy above: from the webhook's arrival (the `received` \
         step) to the probe's first response of the new version through nginx, minus the time the \
         new container took from start (`starting` step) to healthy (end of `health_gate`). The \
         classic script's baseline is its fixed sleep ({} s here; typically 60 s). Target: under 50 ms.\n\n\
         | keep-alive | version | arrival to served s | start to healthy s | overhead s | target < 50 ms | steps (ms) |\n\
         |---|---|---:|---:|---:|---|---|",
        opts.classic_sleep
    );
    for r in &runs {
        for sw in &r.switch {
            let _ = writeln!(
                out,
                "| {} | {} | {:.2} | {:.2} | {:.2} | {} | {} |",
                if r.keepalive { "on" } else { "off" },
                sw.version,
                sw.arrival_to_served,
                sw.start_to_healthy,
                sw.overhead(),
                if sw.overhead() < 0.05 {
                    "met"
                } else {
                    "**missed**"
                },
                sw.steps
            );
        }
    }
    for r in &runs {
        if let Some((max_rss, hwm)) = r.rss {
            let _ = writeln!(
                out,
                "\ngreenlight RSS during the keep-alive {} run: {:.1} MiB sampled max, VmHWM {:.1} MiB.",
                if r.keepalive { "on" } else { "off" },
                gl::mib(max_rss),
                gl::mib(hwm)
            );
        }
    }
    let _ = writeln!(
        out,
        "\n\"keep-alive race at reload\": a `closed_before_response` transport error on a keep-alive \
         run for a request sent during an nginx reload or up to {RACE_AFTER_RELOAD_S:.0} s after it \
         (greenlight: its `switching` step; classic script: its `nginx -s reload`). nginx 1.22's old \
         workers close their idle client keep-alive connections when a reload tells them to quit, and \
         a request the client sends on one at that instant gets no response. nginx 1.27.4+ has \
         `keepalive_min_timeout` against it; Debian 12's nginx 1.22 has nothing. It is a failed \
         request all the same: it is counted in \"failed\" and in no target's favour. \"other \
         failures\": every other non-2xx or transport error."
    );
    for r in runs.iter().filter(|r| r.procedure == "greenlight") {
        let f = r.failures();
        let _ = writeln!(
            out,
            "\nTarget 0 failed requests for greenlight (keep-alive {}): {}.",
            if r.keepalive { "on" } else { "off" },
            if r.report.failed() == 0 {
                "met".to_string()
            } else if f.other == 0 {
                format!(
                    "**missed** ({} failed of {}, every one nginx 1.22's keep-alive race at a reload; \
                     0 other failures)",
                    r.report.failed(),
                    r.report.sent
                )
            } else {
                format!(
                    "**missed** ({} failed of {}: {})",
                    r.report.failed(),
                    r.report.sent,
                    f.describe()
                )
            }
        );
    }
    for r in &runs {
        let failed: Vec<String> = r
            .report
            .samples
            .iter()
            .filter(|x| !x.is_2xx())
            .take(12)
            .map(|x| {
                let since = r
                    .triggers
                    .iter()
                    .filter(|t| **t <= x.scheduled_s)
                    .map(|t| x.scheduled_s - t)
                    .fold(f64::NAN, f64::min);
                format!(
                    "{:?} sent {:.2}s after trigger: {}",
                    x.kind,
                    since,
                    failure_cause(x, r.keepalive, &r.reloads)
                )
            })
            .collect();
        if !failed.is_empty() {
            let _ = writeln!(
                out,
                "\nFailed requests of {} (keep-alive {}), first {}: {}.",
                r.procedure,
                if r.keepalive { "on" } else { "off" },
                failed.len(),
                failed.join("; ")
            );
        }
    }
    for f in &failures {
        let _ = writeln!(out, "\nRun FAILED: {f}");
    }
    Ok(())
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        f64::NAN
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

fn max(v: &[f64]) -> f64 {
    v.iter().cloned().fold(f64::NAN, f64::max)
}

/// Polls greenlight's API until `tag` is live and nothing is deploying.
pub async fn wait_live(gl: &Greenlight, service: &str, tag: &str) -> Result<()> {
    let client = greenlight_testkit::http();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let s: serde_json::Value = client
            .get(format!("{}/api/services/{service}", gl.url()))
            .bearer_auth(gl::TOKEN)
            .send()
            .await?
            .json()
            .await?;
        if s["live"]["tag"] == tag && s["deploying"].is_null() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{tag} never went live: {s}\n{}", gl.log());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn greenlight(
    opts: &Opts,
    binary: &std::path::Path,
    service: &str,
    versions: &[String],
    local: &dyn Fn(&str) -> String,
    keepalive: bool,
) -> Result<Run> {
    let gl_port = free_port();
    let registry = gl::notifying_registry(gl_port)?;
    let nginx = Nginx::host(&format!("{service}-"), &[service])?;
    let repo_path = format!("{service}/demo");
    let config = config_for(
        &nginx,
        &[ServiceSpec {
            name: service.to_string(),
            image: format!("{}/{repo_path}", registry.host()),
            network: format!("{service}-net"),
            extra: String::new(),
        }],
        "ghcr.io",
    );
    let glp = Greenlight::spawn(binary, gl_port, &config, None)?;
    // `docker tag` + `docker push`, keeping the pushed tag until the registry is dropped:
    // testkit's `Registry::push` removes it right after the push, which races greenlight's
    // pull of the same image on this same Docker engine (the pull then finds nothing).
    let push = |v: &str| -> Result<()> {
        let remote = format!("{}/{repo_path}:{v}", registry.host());
        docker(&["tag", &local(v), &remote])?;
        docker(&["push", &remote])?;
        Ok(())
    };
    push(&versions[0])?;
    wait_live(&glp, service, &versions[0]).await?;

    let t0_wall = unix_ms(std::time::SystemTime::now());
    let t0 = Instant::now();
    let probe = probe_on(&nginx, opts.rate, keepalive, &versions[0]).await?;
    let sampler = RssSampler::start(glp.pid());
    let mut switch = Vec::new();
    let mut reloads = Vec::new();
    let (mut first, mut took, mut triggers) = (Vec::new(), Vec::new(), Vec::new());
    for v in &versions[1..] {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let trigger = Instant::now();
        triggers.push((trigger - t0).as_secs_f64());
        push(v)?;
        wait_live(&glp, service, v).await?;
        took.push(trigger.elapsed().as_secs_f64());
        first.push(first_new(&probe, t0, trigger, v).await?);
        let served_ms = t0_wall + probe.first_seen()[v.as_str()] * 1000.0;
        let sw = switch_timing(&glp, service, v, served_ms).await?;
        reloads.push((
            (sw.reload_ms.0 - t0_wall) / 1000.0,
            (sw.reload_ms.1 - t0_wall) / 1000.0,
        ));
        switch.push(sw);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let report = probe.stop().await;
    let rss = sampler.stop();
    Ok(Run {
        procedure: "greenlight",
        keepalive,
        report,
        first_new: first,
        deploy_s: took,
        triggers,
        switch,
        rss: Some(rss),
        reloads,
    })
}

pub fn nginx_reload(nginx: &Nginx) -> Result<()> {
    let output = Command::new(NGINX_BINARY)
        .arg("-p")
        .arg(nginx.dir())
        .arg("-c")
        .arg(nginx.conf_path())
        .arg("-e")
        .arg(nginx.dir().join("error.log"))
        .args(["-s", "reload"])
        .output()?;
    if !output.status.success() {
        bail!(
            "nginx -s reload failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// Points the site's `set $greenlight_upstream NAME;` at `to` (plain text edit of
/// nginx.conf, as `sed -i` would).
fn set_upstream(nginx: &Nginx, from: &str, to: &str) -> Result<()> {
    let conf = std::fs::read_to_string(nginx.conf_path())?;
    let needle = format!("set $greenlight_upstream {from};");
    anyhow::ensure!(conf.contains(&needle), "nginx.conf has no {needle:?}");
    std::fs::write(
        nginx.conf_path(),
        conf.replace(&needle, &format!("set $greenlight_upstream {to};")),
    )?;
    Ok(())
}

fn run_container(name: &str, port: u16, image: &str) -> Result<()> {
    docker(&[
        "run",
        "--detach",
        "--name",
        name,
        "--publish",
        &format!("127.0.0.1:{port}:8080"),
        image,
    ])?;
    Ok(())
}

fn wait_healthy(port: u16) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !gl::http_ok(port, "/healthz") {
        if Instant::now() > deadline {
            bail!("the container on {port} never became healthy");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

async fn classic(
    opts: &Opts,
    service: &str,
    versions: &[String],
    local: &dyn Fn(&str) -> String,
    keepalive: bool,
) -> Result<Run> {
    let nginx = Nginx::host(&format!("{service}-"), &[service])?;
    let ports = [free_port(), free_port()];
    let colours = ["blue", "green"];
    std::fs::write(
        nginx.upstreams_dir().join("classic.conf"),
        format!(
            "upstream {service}_blue {{\n    server 127.0.0.1:{};\n}}\nupstream {service}_green {{\n    server 127.0.0.1:{};\n}}\n",
            ports[0], ports[1]
        ),
    )?;
    set_upstream(&nginx, service, &format!("{service}_blue"))?;
    run_container(&format!("{service}-blue"), ports[0], &local(&versions[0]))?;
    wait_healthy(ports[0])?;
    nginx_reload(&nginx)?;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let t0 = Instant::now();
    let probe = probe_on(&nginx, opts.rate, keepalive, &versions[0]).await?;
    let (mut first, mut took, mut triggers) = (Vec::new(), Vec::new(), Vec::new());
    let mut live = 0usize;
    let mut reloads = Vec::new();
    for v in &versions[1..] {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let new = 1 - live;
        let trigger = Instant::now();
        triggers.push((trigger - t0).as_secs_f64());
        let new_name = format!("{service}-{}", colours[new]);
        let old_name = format!("{service}-{}", colours[live]);
        let _ = docker(&["rm", "--force", &new_name]);
        run_container(&new_name, ports[new], &local(v))?;
        tokio::time::sleep(Duration::from_secs(opts.classic_sleep)).await;
        set_upstream(
            &nginx,
            &format!("{service}_{}", colours[live]),
            &format!("{service}_{}", colours[new]),
        )?;
        let reload_start = t0.elapsed().as_secs_f64();
        nginx_reload(&nginx)?;
        reloads.push((reload_start, t0.elapsed().as_secs_f64()));
        docker(&["stop", &old_name])?;
        took.push(trigger.elapsed().as_secs_f64());
        live = new;
        first.push(first_new(&probe, t0, trigger, v).await?);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let report = probe.stop().await;
    Ok(Run {
        procedure: "classic script",
        keepalive,
        report,
        first_new: first,
        deploy_s: took,
        triggers,
        switch: Vec::new(),
        rss: None,
        reloads,
    })
}

async fn recreate(
    opts: &Opts,
    service: &str,
    versions: &[String],
    local: &dyn Fn(&str) -> String,
    keepalive: bool,
) -> Result<Run> {
    let nginx = Nginx::host(&format!("{service}-"), &[service])?;
    let port = free_port();
    std::fs::write(
        nginx.upstreams_dir().join("recreate.conf"),
        format!("upstream {service} {{\n    server 127.0.0.1:{port};\n}}\n"),
    )?;
    let name = format!("{service}-app");
    run_container(&name, port, &local(&versions[0]))?;
    wait_healthy(port)?;
    nginx_reload(&nginx).context("reload after writing the upstream")?;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let t0 = Instant::now();
    let probe = probe_on(&nginx, opts.rate, keepalive, &versions[0]).await?;
    let (mut first, mut took, mut triggers) = (Vec::new(), Vec::new(), Vec::new());
    for v in &versions[1..] {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let trigger = Instant::now();
        triggers.push((trigger - t0).as_secs_f64());
        docker(&["stop", &name])?;
        docker(&["rm", &name])?;
        run_container(&name, port, &local(v))?;
        took.push(trigger.elapsed().as_secs_f64());
        first.push(first_new(&probe, t0, trigger, v).await?);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let report = probe.stop().await;
    Ok(Run {
        procedure: "recreate",
        keepalive,
        report,
        first_new: first,
        deploy_s: took,
        triggers,
        switch: Vec::new(),
        rss: None,
        reloads: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use greenlight_testkit::probe::{RequestKind, ERR_CONNECT};

    fn sample(at: f64, status: Option<u16>, error: Option<&'static str>) -> Sample {
        Sample {
            index: 0,
            kind: RequestKind::Get,
            scheduled_s: at,
            dispatch_late_ms: 0.0,
            completed_s: at,
            latency_ms: 1.0,
            status,
            error,
            version: None,
            colour: None,
            user: None,
        }
    }

    fn report(keepalive: bool, samples: Vec<Sample>) -> ProbeReport {
        let mut non_2xx = std::collections::BTreeMap::new();
        let mut transport_errors = std::collections::BTreeMap::new();
        for x in &samples {
            match (x.status, x.error) {
                (Some(s), _) if !(200..300).contains(&s) => *non_2xx.entry(s).or_insert(0) += 1,
                (None, Some(e)) => *transport_errors.entry(e.to_string()).or_insert(0) += 1,
                _ => {}
            }
        }
        ProbeReport {
            sent: samples.len() as u64,
            ok_2xx: samples.iter().filter(|x| x.is_2xx()).count() as u64,
            non_2xx,
            transport_errors,
            p50_ms: 0.0,
            p99_ms: 0.0,
            max_ms: 0.0,
            duration_s: 10.0,
            target_rate: 1,
            achieved_rate: 1.0,
            late_sends: 0,
            max_late_ms: 0.0,
            versions: Vec::new(),
            versions_all: Vec::new(),
            colours: Vec::new(),
            first_seen: Default::default(),
            keepalive,
            samples,
        }
    }

    #[test]
    fn only_closed_connections_at_a_reload_on_keepalive_are_the_race() {
        let reloads = [(5.0, 5.02)];
        let samples = vec![
            sample(1.0, Some(200), None),
            // At the reload and just after it: the race.
            sample(5.01, None, Some(ERR_CLOSED)),
            sample(5.9, None, Some(ERR_CLOSED)),
            // Closed far from any reload, a 502 and a refused connection at the reload: not.
            sample(8.0, None, Some(ERR_CLOSED)),
            sample(5.01, Some(502), None),
            sample(5.01, None, Some(ERR_CONNECT)),
        ];
        let f = Failures::of(&report(true, samples.clone()), &reloads);
        assert_eq!((f.keepalive_race, f.other), (2, 3));
        assert_eq!(
            f.describe(),
            "5 (2 the keep-alive race at a reload, 3 other)"
        );
        // Without keep-alive there is no idle connection to race on.
        let f = Failures::of(&report(false, samples), &reloads);
        assert_eq!((f.keepalive_race, f.other), (0, 5));
        let only_race = report(true, vec![sample(5.0, None, Some(ERR_CLOSED))]);
        assert_eq!(
            Failures::of(&only_race, &reloads).describe(),
            "1, all the keep-alive race at a reload"
        );
    }
}
