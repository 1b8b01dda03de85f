//! Suite: many services. K services (default 10) behind one nginx, managed by one
//! greenlight, each with its own open-model probe through nginx. One service is deployed
//! alone, then all K at once (each by a real registry push, pushed concurrently), then the
//! one service alone again; the time of the K concurrent deploys is compared with the time
//! of the lone deploys measured in the same run, on the same machine, under the same probes.

use std::fmt::Write as _;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use greenlight_testkit::env::{
    build_demo_image, docker, free_port, unique_prefix, DemoImageOpts, DockerCleanup, Nginx,
};
use greenlight_testkit::probe::{Probe, ProbeHandle, ProbeReport};

use crate::deploy::{nginx_reload, probe_opts, unix_ms, wait_live, Failures};
use crate::gl::{self, config_for, Greenlight, RssSampler, ServiceSpec};
use crate::Opts;

/// Target: K concurrent deploys take under this many times one lone deploy.
const TARGET_RATIO: f64 = 2.0;

/// How long every deploy phase may take before the suite gives up.
const PHASE_DEADLINE: Duration = Duration::from_secs(180);

/// One deploy phase (one service alone, or all at once): per deployed service, the
/// trigger to the probe's first 2xx of the new version, and the trigger to greenlight
/// recording the deployment `succeeded`, in s.
struct Phase {
    label: String,
    /// (service index, serving s, done s)
    per_service: Vec<(usize, f64, f64)>,
    /// Per step, in pipeline order: (step, mean ms, max ms) over the phase's deployments.
    steps: Vec<(String, f64, f64)>,
}

impl Phase {
    fn serving(&self) -> f64 {
        self.per_service
            .iter()
            .map(|p| p.1)
            .fold(f64::NAN, f64::max)
    }

    fn done(&self) -> f64 {
        self.per_service
            .iter()
            .map(|p| p.2)
            .fold(f64::NAN, f64::max)
    }
}

/// One keep-alive mode's run.
struct ManyRun {
    keepalive: bool,
    services: Vec<String>,
    reports: Vec<ProbeReport>,
    /// Per service: every nginx reload of the run (any service's `switching` step), in s
    /// since that service's probe started.
    reloads: Vec<Vec<(f64, f64)>>,
    solo_before: Phase,
    all: Phase,
    solo_after: Phase,
    /// greenlight's RSS during the run (sampled max, VmHWM), KiB.
    rss: (u64, u64),
}

impl ManyRun {
    fn solo_serving(&self) -> f64 {
        (self.solo_before.serving() + self.solo_after.serving()) / 2.0
    }

    fn solo_done(&self) -> f64 {
        (self.solo_before.done() + self.solo_after.done()) / 2.0
    }
}

pub async fn run(opts: &Opts, binary: &std::path::Path, out: &mut String) -> Result<()> {
    anyhow::ensure!(opts.services >= 2, "--services must be at least 2");
    let prefix = unique_prefix("glbench-many");
    let cleanup = DockerCleanup::new(&prefix);
    let mut runs = Vec::new();
    let mut failures = Vec::new();
    let mut local_images = Vec::new();
    for &ka in &opts.keepalive {
        eprintln!(
            "many: {} services, keep-alive {ka}, building images ...",
            opts.services
        );
        let k = if ka { "k" } else { "n" };
        let services: Vec<String> = (0..opts.services)
            .map(|i| format!("{prefix}{k}s{i}"))
            .collect();
        let result = one_run(opts, binary, &prefix, &services, ka, &mut local_images).await;
        cleanup.sweep();
        match result {
            Ok(run) => runs.push(run),
            Err(err) => failures.push(format!("keep-alive {ka}: {err:#}")),
        }
    }
    for image in &local_images {
        let _ = docker(&["rmi", image]);
    }

    let _ = writeln!(
        out,
        "\n### Many services\n\n{k} services (the demo app, a distinct image per service) behind one \
         host nginx, managed by one greenlight, each service on its own nginx `server` port with its \
         own open-model probe through nginx at {rate} req/s (30% POST, 20% to a 1 s `/slow` endpoint, \
         latency from the scheduled send time), all {k} probes running through the whole run. \
         Each deploy is triggered by a `docker push` to the registry, whose notification is the only \
         trigger. In order: service 0 alone (v1 -> v2), all {k} at once (every push started \
         together, service 0 v2 -> v3, the others v1 -> v3), service 0 alone again (v3 -> v4). \
         \"serving\": trigger to the service's probe's first 2xx of the new version; for all {k}, \
         the last service's. \"done\": trigger to greenlight recording the deployment `succeeded` \
         (after draining the old nginx workers and stopping the old colour). The lone time is the \
         mean of the two lone deploys. Target: {k} concurrent deploys in under {TARGET_RATIO:.0}x \
         the time of one, judged on \"serving\" (the issue's \"all serving their new version\").",
        k = opts.services,
        rate = opts.service_rate,
    );
    for r in &runs {
        let ka = if r.keepalive { "on" } else { "off" };
        let ratio_serving = r.all.serving() / r.solo_serving();
        let ratio_done = r.all.done() / r.solo_done();
        let verdict = |ratio: f64| {
            if ratio < TARGET_RATIO {
                "met"
            } else {
                "**missed**"
            }
        };
        let _ = writeln!(
            out,
            "\n#### Keep-alive {ka}\n\n| phase | services deployed | serving s (last) | done s (last) | greenlight's steps, ms (mean / max over the phase's deployments) |\n|---|---:|---:|---:|---|"
        );
        for phase in [&r.solo_before, &r.all, &r.solo_after] {
            let _ = writeln!(
                out,
                "| {} | {} | {:.2} | {:.2} | {} |",
                phase.label,
                phase.per_service.len(),
                phase.serving(),
                phase.done(),
                phase
                    .steps
                    .iter()
                    .filter(|(n, _, _)| n != "succeeded")
                    .map(|(n, mean, max)| format!("{n} {mean:.0} / {max:.0}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        let _ = writeln!(
            out,
            "| **ratio** all {k} / one (mean of the two lone deploys) | | **{:.2}x** (target < {TARGET_RATIO:.0}x: {}) | {:.2}x ({}) | |",
            ratio_serving,
            verdict(ratio_serving),
            ratio_done,
            verdict(ratio_done),
            k = r.services.len(),
        );
        let _ = writeln!(
            out,
            "\n| service | sent | failed | keep-alive race at reload | other failures | non-2xx | transport errors | p50 ms | p99 ms | max ms | rate achieved/target | late sends | versions | serving s (all at once) | done s (all at once) |\n\
             |---|---:|---:|---:|---:|---|---|---:|---:|---:|---:|---:|---|---:|---:|"
        );
        let mut total_sent = 0;
        let mut total_failed = 0;
        let mut total_other = 0;
        for (i, (name, rep)) in r.services.iter().zip(&r.reports).enumerate() {
            let f = Failures::of(rep, &r.reloads[i]);
            total_sent += rep.sent;
            total_failed += rep.failed();
            total_other += f.other;
            let (serving, done) = r
                .all
                .per_service
                .iter()
                .find(|p| p.0 == i)
                .map(|p| (p.1, p.2))
                .unwrap_or((f64::NAN, f64::NAN));
            let _ = writeln!(
                out,
                "| {i} (`{name}`) | {} | {} | {} | {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1}/{} | {} | {} | {:.2} | {:.2} |",
                rep.sent,
                rep.failed(),
                if r.keepalive { f.keepalive_race.to_string() } else { "-".into() },
                f.other,
                counts(rep.non_2xx.iter()),
                counts(rep.transport_errors.iter()),
                rep.p50_ms,
                rep.p99_ms,
                rep.max_ms,
                rep.achieved_rate,
                rep.target_rate,
                rep.late_sends,
                rep.versions
                    .iter()
                    .map(|(v, n)| format!("{v}x{n}"))
                    .collect::<Vec<_>>()
                    .join("->"),
                serving,
                done,
            );
        }
        let _ = writeln!(
            out,
            "\nKeep-alive {ka}: {total_sent} requests over {} services, {total_failed} failed \
             ({total_other} other than the keep-alive race). Target 0 failed requests on every \
             service: {}. Target {} concurrent deploys in under {TARGET_RATIO:.0}x one: {} \
             ({:.2}s for all {} serving vs {:.2}s for one; lone deploys {:.2}s before and {:.2}s \
             after). greenlight RSS during the run: {:.1} MiB sampled max, VmHWM {:.1} MiB.",
            r.services.len(),
            if total_failed == 0 {
                "met".to_string()
            } else {
                format!(
                    "**missed** ({} on {} of {} services)",
                    total_failed,
                    r.reports.iter().filter(|x| x.failed() > 0).count(),
                    r.services.len()
                )
            },
            r.services.len(),
            verdict(ratio_serving),
            r.all.serving(),
            r.services.len(),
            r.solo_serving(),
            r.solo_before.serving(),
            r.solo_after.serving(),
            gl::mib(r.rss.0),
            gl::mib(r.rss.1),
        );
        for (i, rep) in r.reports.iter().enumerate() {
            let failed: Vec<String> = rep
                .samples
                .iter()
                .filter(|x| !x.is_2xx())
                .take(6)
                .map(|x| {
                    format!(
                        "{:?} at {:.2}s: {}",
                        x.kind,
                        x.scheduled_s,
                        crate::deploy::failure_cause(x, r.keepalive, &r.reloads[i])
                    )
                })
                .collect();
            if !failed.is_empty() {
                let _ = writeln!(
                    out,
                    "\nFailed requests of service {i} (keep-alive {ka}; s since its probe started), first {}: {}.",
                    failed.len(),
                    failed.join("; ")
                );
            }
        }
    }
    for f in &failures {
        let _ = writeln!(out, "\nRun FAILED: {f}");
    }
    Ok(())
}

fn counts<K: std::fmt::Display, V: std::fmt::Display>(it: impl Iterator<Item = (K, V)>) -> String {
    let text = it
        .map(|(k, v)| format!("{k}:{v}"))
        .collect::<Vec<_>>()
        .join(" ");
    if text.is_empty() {
        "-".into()
    } else {
        text
    }
}

/// The versions each service goes through: service 0 all four, the others v1 and v3.
fn versions_of(index: usize) -> &'static [&'static str] {
    if index == 0 {
        &["v1", "v2", "v3", "v4"]
    } else {
        &["v1", "v3"]
    }
}

async fn one_run(
    opts: &Opts,
    binary: &std::path::Path,
    prefix: &str,
    services: &[String],
    keepalive: bool,
    local_images: &mut Vec<String>,
) -> Result<ManyRun> {
    for (i, service) in services.iter().enumerate() {
        for v in versions_of(i) {
            // A distinct image per service, as ten apps would have.
            let opts = DemoImageOpts {
                healthcheck: false,
                env: vec![("GL_BENCH_SERVICE".into(), service.clone())],
            };
            build_demo_image(&local_image(service, v), v, opts)?;
            local_images.push(local_image(service, v));
        }
    }

    let gl_port = free_port();
    let registry = gl::notifying_registry(gl_port)?;
    let names: Vec<&str> = services.iter().map(String::as_str).collect();
    let nginx = Nginx::host(&format!("{prefix}nginx-"), &names)?;
    let ports = listen_per_service(&nginx, services)?;
    let network = format!("{prefix}{}-net", if keepalive { "k" } else { "n" });
    let specs: Vec<ServiceSpec> = services
        .iter()
        .map(|s| ServiceSpec {
            name: s.clone(),
            image: format!("{}/{s}/demo", registry.host()),
            network: network.clone(),
            extra: String::new(),
        })
        .collect();
    // Created beforehand, as an operator would for apps sharing a network: greenlight
    // creates a missing network itself, but K first deploys doing that at once on Docker
    // 20.10 made K networks of the same name (check_duplicate is not atomic), and every
    // container start then failed with "network ... is ambiguous".
    docker(&["network", "create", &network])?;
    let config = config_for(&nginx, &specs, "ghcr.io");
    let glp = Greenlight::spawn(binary, gl_port, &config, None)?;
    let world = World {
        host: registry.host(),
        services,
        glp: &glp,
        client: greenlight_testkit::http(),
    };

    eprintln!("many: v1 of {} services ...", services.len());
    for push in world.start_pushes(&(0..services.len()).map(|i| (i, "v1")).collect::<Vec<_>>()) {
        push.await??;
    }
    for s in services {
        wait_live(&glp, s, "v1").await?;
    }

    let mut probes: Vec<(Instant, f64, ProbeHandle)> = Vec::new();
    for port in &ports {
        let (started, started_wall) = (Instant::now(), unix_ms(SystemTime::now()));
        let probe = Probe::start(probe_opts(
            format!("http://127.0.0.1:{port}"),
            opts.service_rate,
            keepalive,
        ));
        probes.push((started, started_wall, probe));
    }
    for (i, (_, _, probe)) in probes.iter().enumerate() {
        if !probe.wait_for_version("v1", Duration::from_secs(10)).await {
            bail!("the probe of service {i} never saw v1");
        }
    }
    let sampler = RssSampler::start(glp.pid());
    eprintln!("many: service 0 alone ...");
    let solo_before = world
        .phase("service 0 alone, before".into(), &[(0, "v2")], &probes)
        .await?;
    eprintln!("many: all {} at once ...", services.len());
    let all = world
        .phase(
            format!("all {} at once", services.len()),
            &(0..services.len()).map(|i| (i, "v3")).collect::<Vec<_>>(),
            &probes,
        )
        .await?;
    eprintln!("many: service 0 alone again ...");
    let solo_after = world
        .phase("service 0 alone, after".into(), &[(0, "v4")], &probes)
        .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut reports = Vec::new();
    let mut starts_wall = Vec::new();
    for (_, wall, probe) in probes {
        starts_wall.push(wall);
        reports.push(probe.stop().await);
    }
    let rss = sampler.stop();
    let windows = world.reload_windows().await?;
    let reloads = starts_wall
        .iter()
        .map(|wall| {
            windows
                .iter()
                .map(|(a, b)| ((a - wall) / 1000.0, (b - wall) / 1000.0))
                .collect()
        })
        .collect();
    for (i, rep) in reports.iter().enumerate() {
        eprintln!("  service {i}: {}", rep.summary());
    }
    Ok(ManyRun {
        keepalive,
        services: services.to_vec(),
        reports,
        reloads,
        solo_before,
        all,
        solo_after,
        rss,
    })
}

fn local_image(service: &str, version: &str) -> String {
    format!("{service}-build:{version}")
}

/// What a deploy phase needs: the registry, the services, greenlight.
struct World<'a> {
    host: String,
    services: &'a [String],
    glp: &'a Greenlight,
    client: reqwest::Client,
}

impl World<'_> {
    /// Starts `docker tag` + `docker push` of each (service, version) on its own blocking
    /// thread, all at once. The pushed tag stays until the registry is dropped (see
    /// deploy.rs: removing it races greenlight's pull on the same engine).
    fn start_pushes(&self, targets: &[(usize, &str)]) -> Vec<tokio::task::JoinHandle<Result<()>>> {
        targets
            .iter()
            .map(|&(i, v)| {
                let service = &self.services[i];
                let from = local_image(service, v);
                let to = format!("{}/{service}/demo:{v}", self.host);
                tokio::task::spawn_blocking(move || -> Result<()> {
                    docker(&["tag", &from, &to])?;
                    docker(&["push", &to])?;
                    Ok(())
                })
            })
            .collect()
    }

    async fn api(&self, path: &str) -> Result<serde_json::Value> {
        let resp = self
            .client
            .get(format!("{}{path}", self.glp.url()))
            .bearer_auth(gl::TOKEN)
            .send()
            .await?;
        anyhow::ensure!(resp.status().is_success(), "GET {path}: {}", resp.status());
        Ok(resp.json().await?)
    }

    /// After a 2 s quiet gap, pushes every target at once and waits until greenlight has
    /// recorded each deployment `succeeded` and each probe has seen its new version.
    async fn phase(
        &self,
        label: String,
        targets: &[(usize, &str)],
        probes: &[(Instant, f64, ProbeHandle)],
    ) -> Result<Phase> {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let trigger = Instant::now();
        let trigger_wall = unix_ms(SystemTime::now());
        let pushes = self.start_pushes(targets);
        let mut done: Vec<Option<f64>> = vec![None; targets.len()];
        let mut ids = Vec::new();
        while done.iter().any(Option::is_none) {
            if trigger.elapsed() > PHASE_DEADLINE {
                bail!(
                    "{label}: not every deployment succeeded within {PHASE_DEADLINE:?}\n{}",
                    self.glp.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            let list = self.api("/api/deployments?limit=500").await?;
            let list = list.as_array().context("deployments are not a list")?;
            for (slot, &(i, v)) in done.iter_mut().zip(targets) {
                if slot.is_some() {
                    continue;
                }
                let Some(d) = list.iter().find(|d| {
                    d["service"] == self.services[i].as_str()
                        && (d["tag"] == v || d["requested_tag"] == v)
                        && d["finished_at"].is_i64()
                }) else {
                    continue;
                };
                if d["state"] != "succeeded" {
                    bail!("{label}: the deployment of {v} to service {i} ended {d}");
                }
                ids.extend(d["id"].as_i64());
                let finished = d["finished_at"].as_i64().unwrap_or_default() as f64;
                *slot = Some((finished - trigger_wall) / 1000.0);
            }
        }
        for push in pushes {
            push.await??;
        }
        let mut per_service = Vec::new();
        for (&(i, v), done) in targets.iter().zip(done) {
            let (started, _, probe) = &probes[i];
            if !probe.wait_for_version(v, Duration::from_secs(60)).await {
                bail!("{label}: the probe of service {i} never saw {v}");
            }
            let seen = probe.first_seen()[v];
            let serving = seen - trigger.duration_since(*started).as_secs_f64();
            per_service.push((i, serving, done.unwrap_or(f64::NAN)));
        }
        let mut steps: Vec<(String, Vec<f64>)> = Vec::new();
        for id in ids {
            let d = self.api(&format!("/api/deployments/{id}")).await?;
            for x in d["steps"].as_array().context("no steps")? {
                let (Some(name), Some(a), Some(b)) = (
                    x["step"].as_str(),
                    x["started_at"].as_i64(),
                    x["finished_at"].as_i64(),
                ) else {
                    continue;
                };
                match steps.iter_mut().find(|(n, _)| n == name) {
                    Some((_, v)) => v.push((b - a) as f64),
                    None => steps.push((name.to_string(), vec![(b - a) as f64])),
                }
            }
        }
        let steps = steps
            .into_iter()
            .map(|(n, v)| {
                let mean = v.iter().sum::<f64>() / v.len() as f64;
                (n, mean, v.iter().cloned().fold(f64::NAN, f64::max))
            })
            .collect();
        Ok(Phase {
            label,
            per_service,
            steps,
        })
    }

    /// Every `switching` step (its nginx reload) of every deployment, (start, end) in Unix ms.
    async fn reload_windows(&self) -> Result<Vec<(f64, f64)>> {
        let list = self.api("/api/deployments?limit=500").await?;
        let mut windows = Vec::new();
        for id in list
            .as_array()
            .context("deployments are not a list")?
            .iter()
            .filter_map(|d| d["id"].as_i64())
        {
            let d = self.api(&format!("/api/deployments/{id}")).await?;
            let steps = d["steps"].as_array().context("no steps")?;
            for step in steps.iter().filter(|x| x["step"] == "switching") {
                if let (Some(a), Some(b)) =
                    (step["started_at"].as_i64(), step["finished_at"].as_i64())
                {
                    windows.push((a as f64, b as f64));
                }
            }
        }
        Ok(windows)
    }
}

/// Adds an nginx `server` per service on its own port (the site's `/<service>/` locations
/// would pass the prefix on to the demo, which serves `/`), reloads nginx, and waits until
/// every port accepts connections. Returns the ports, in the order of `services`.
fn listen_per_service(nginx: &Nginx, services: &[String]) -> Result<Vec<u16>> {
    let ports: Vec<u16> = services.iter().map(|_| free_port()).collect();
    let mut conf = String::from("# Written by greenlight-bench (many services).\n");
    for (service, port) in services.iter().zip(&ports) {
        let _ = write!(
            conf,
            "server {{
    listen 127.0.0.1:{port};
    keepalive_timeout 65;
    location / {{
        set $greenlight_upstream {service};
        proxy_pass http://$greenlight_upstream;
        proxy_http_version 1.1;
        proxy_set_header Connection \"\";
        add_header X-Greenlight-Upstream $upstream_addr always;
    }}
}}
"
        );
    }
    std::fs::write(nginx.dir().join("conf.d/bench-many.conf"), conf)?;
    nginx_reload(nginx).context("reload with a server per service")?;
    let deadline = Instant::now() + Duration::from_secs(20);
    for port in &ports {
        while std::net::TcpStream::connect(("127.0.0.1", *port)).is_err() {
            if Instant::now() > deadline {
                bail!(
                    "nginx does not listen on {port} after the reload:\n{}",
                    nginx.error_log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(ports)
}
