//! Suite: a 3-replica service updated N times on a one-node Swarm under the
//! standard load, three ways: greenlight on Swarm (`[runtime] kind = "swarm"`:
//! blue-green of two Swarm services, host-mode ports, nginx switched and
//! drained before the old colour is scaled to 0), and Swarm's own
//! `docker service update` with `--update-order start-first` and with
//! `stop-first` (parallelism 1), nginx finding the tasks through Swarm's DNS
//! (`endpoint_mode dnsrr`, `resolver 127.0.0.11 valid=1s`): the setup Swarm's
//! own update needs, since the routing mesh does not work on this kernel.
//! Failed requests per update and time to done.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use greenlight_testkit::env::{
    build_demo_image, docker, host_nginx_image, unique_prefix, DemoImageOpts, DockerCleanup, Nginx,
};
use greenlight_testkit::swarm::Swarm;

use crate::deploy::{probe_on, Failures};
use crate::replicas::{self, each_way, mean, Peak, Run};
use crate::Opts;

const SWARM_RUNTIME: &str = "\n[runtime]\nkind = \"swarm\"\n";

pub async fn run(opts: &Opts, binary: &std::path::Path, out: &mut String) -> Result<()> {
    let prefix = unique_prefix("glbench-sw");
    let cleanup = DockerCleanup::new(&prefix);
    let swarm = Swarm::init(&prefix)?;
    let versions: Vec<String> = (1..=opts.deploys + 1).map(|i| format!("v{i}")).collect();
    let repo = format!("{prefix}build");
    eprintln!("swarm: building {} demo images ...", versions.len());
    for v in &versions {
        // A HEALTHCHECK: Swarm's own update then waits for health too.
        let opts = DemoImageOpts {
            healthcheck: true,
            env: Vec::new(),
        };
        build_demo_image(&format!("{repo}:{v}"), v, opts)?;
    }
    let procedures = [
        "greenlight on Swarm (blue-green)",
        "docker service update, start-first",
        "docker service update, stop-first",
    ];
    let (runs, failures) = each_way(
        opts,
        "swarm",
        &prefix,
        &procedures,
        async |procedure, service, ka| {
            let result = if procedure.starts_with("greenlight") {
                replicas::greenlight(
                    opts,
                    binary,
                    &service,
                    &repo,
                    &versions,
                    ka,
                    "",
                    SWARM_RUNTIME,
                )
                .await
            } else {
                let order = procedure.rsplit(' ').next().unwrap_or("start-first");
                swarm_update(&swarm, opts, &service, &repo, &versions, ka, order).await
            };
            for s in swarm.services().iter().filter(|s| s.starts_with(&service)) {
                let _ = docker(&["service", "rm", s]);
            }
            cleanup.sweep();
            result
        },
    )
    .await;
    drop(swarm);
    cleanup.sweep();
    for v in &versions {
        let _ = docker(&["rmi", &format!("{repo}:{v}")]);
    }

    let _ = writeln!(
        out,
        "\n### Swarm: a 3-replica service, {n} updates each way\n\n\
         A one-node Swarm (`docker swarm init --advertise-addr 127.0.0.1`), the demo image with a \
         HEALTHCHECK (interval 1 s), 3 replicas, updated {n} times (v1 live, then v2..v{last}) under \
         the open-model probe at {rate} req/s (30% POST, 20% to a 1 s `/slow` endpoint). \
         greenlight: `[runtime] kind = \"swarm\"`, blue-green of `<service>-blue`/`-green` with \
         host-mode ports, nginx on the host. Swarm's own: `docker service update --image <ID> \
         --update-order <order> --update-parallelism 1` of one service with `endpoint_mode dnsrr` \
         on an attachable overlay, nginx (the same Debian 1.22 binary, as a container on that \
         overlay) resolving the service name through Swarm's DNS with `resolver 127.0.0.11 \
         valid=1s` (the routing mesh does not work on this kernel, and a host process cannot \
         reach overlay addresses). Time to done: trigger until greenlight reports the deployment \
         finished / the CLI returns (it waits for the update to converge and its 5 s monitor). \
         Version flips: how often the version answering the probe's fast requests changed \
         (one per update is a clean cut-over; more means old and new answered by turns).\n",
        n = opts.deploys,
        last = opts.deploys + 1,
        rate = opts.rate
    );
    let _ = writeln!(
        out,
        "| procedure | keep-alive | sent | failed | failed per update | keep-alive race at reload | other failures | version flips | time to done s (mean / max) | peak containers | p99 ms |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for r in &runs {
        let f = Failures::of(&r.report, &r.reload_windows);
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {:.1} | {} | {} | {} | {:.2} / {:.2} | {} | {:.1} |",
            r.procedure,
            if r.keepalive { "on" } else { "off" },
            r.report.sent,
            r.report.failed(),
            r.report.failed() as f64 / r.took.len().max(1) as f64,
            if r.keepalive {
                f.keepalive_race.to_string()
            } else {
                "-".into()
            },
            f.other,
            r.report.flips(),
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

fn image_id(image: &str) -> Result<String> {
    Ok(docker(&["image", "inspect", "--format", "{{.Id}}", image])?
        .trim()
        .to_string())
}

/// Swarm's own rolling update behind nginx on the service's overlay.
async fn swarm_update(
    swarm: &Swarm,
    opts: &Opts,
    service: &str,
    repo: &str,
    versions: &[String],
    keepalive: bool,
    order: &str,
) -> Result<Run> {
    let network = format!("{service}-ovl");
    docker(&[
        "network",
        "create",
        "--driver",
        "overlay",
        "--attachable",
        &network,
    ])?;
    let result = async {
        let first = image_id(&format!("{repo}:{}", versions[0]))?;
        docker(&[
            "service",
            "create",
            "--quiet",
            "--name",
            service,
            "--replicas",
            "3",
            "--endpoint-mode",
            "dnsrr",
            "--network",
            &network,
            "--detach",
            "--stop-grace-period",
            "5s",
            "--update-order",
            order,
            "--update-parallelism",
            "1",
            "--no-resolve-image",
            &first,
        ])?;
        anyhow::ensure!(
            swarm.wait_replicas(service, 3, Duration::from_secs(60)),
            "{service} never ran 3 tasks: {:?}",
            swarm.replicas(service)
        );
        // The site proxies to `http://$greenlight_upstream` (= the service's
        // name): with no upstream of that name and a resolver, nginx resolves
        // it through Swarm's DNS (every task, dnsrr) at most 1 s old; the
        // demo listens on 8080.
        let mut nginx = Nginx::container(
            &format!("{service}-"),
            &[service],
            &network,
            &host_nginx_image()?,
        )?;
        std::fs::write(
            nginx.dir().join("conf.d/swarm-resolver.conf"),
            "resolver 127.0.0.11 valid=1s ipv6=off;\n",
        )?;
        let conf = nginx.dir().join("nginx.conf");
        let text = std::fs::read_to_string(&conf)?;
        anyhow::ensure!(text.contains("proxy_pass http://$greenlight_upstream;"));
        std::fs::write(
            &conf,
            text.replace(
                "proxy_pass http://$greenlight_upstream;",
                "proxy_pass http://$greenlight_upstream:8080;",
            ),
        )?;
        nginx.restart()?;
        let probe = probe_on(&nginx, opts.rate, keepalive, &versions[0]).await?;
        let peak = Peak::start(service);
        let mut took = Vec::new();
        for v in &versions[1..] {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let id = image_id(&format!("{repo}:{v}"))?;
            let trigger = Instant::now();
            // The CLI waits for the update to converge (and its monitor).
            let status = std::process::Command::new("timeout")
                .args([
                    "300",
                    "docker",
                    "service",
                    "update",
                    "--quiet",
                    "--no-resolve-image",
                ])
                .args(["--image", &id, service])
                .stdout(std::process::Stdio::null())
                .status()
                .with_context(|| format!("updating to {v}"))?;
            anyhow::ensure!(status.success(), "updating {service} to {v}: {status}");
            took.push(trigger.elapsed().as_secs_f64());
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let report = probe.stop().await;
        Ok(Run {
            procedure: "",
            keepalive,
            report,
            reloads: vec![0; took.len()],
            took,
            reload_windows: Vec::new(),
            peak_containers: peak.stop(),
        })
    }
    .await;
    let _ = docker(&["service", "rm", service]);
    // The overlay goes once the service's tasks and nginx have left it.
    let deadline = Instant::now() + Duration::from_secs(30);
    while docker(&["network", "rm", &network]).is_err() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
    }
    result
}
