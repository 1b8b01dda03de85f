//! greenlight benchmarks: prints Markdown tables.
//!
//! ```sh
//! cargo run --release -p greenlight-bench -- [ingest] [footprint] [deploy] [many] [replicas] [canary] [options]
//! ```
//!
//! With no suite named, runs `ingest footprint deploy many replicas canary` in that order. `deploy` also
//! prints the switch overhead. See [`USAGE`] for the options and their defaults.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use greenlight_testkit::env::{free_port, unique_prefix, DockerCleanup, Nginx};

mod canary;
mod deploy;
mod gl;
mod ingest;
mod many;
mod replicas;
mod swarm;

const USAGE: &str = "\
greenlight-bench [SUITE ...] [OPTIONS]

Prints Markdown tables. Suites (default: all six, in this order):
  ingest      webhook ingestion: greenlight vs adnanh/webhook, Rust client and wrk
  footprint   binary size, start-up time, idle RSS
  deploy      deploys under load (greenlight, classic script, recreate) and the switch overhead
  many        K services deployed at once by one greenlight vs one alone
  replicas    a 3-replica service: greenlight blue-green, greenlight rolling, and
              docker-rollout's double-then-stop-old, N deploys each
  canary      one bad version (5% 500s) released as a greenlight canary, greenlight
              blue-green with a soak, and a per-request random split (nginx weight=)
  swarm       a 3-replica service on a one-node Swarm the suite initialises (and
              leaves): greenlight on Swarm vs docker service update start-first
              and stop-first, N updates each (not in the default set)

Options:
  --duration S         ingestion seconds per server and load tool (default 10)
  --concurrency C      ingestion connections (default 50)
  --deploys N          deploys per procedure in `deploy` (default 10)
  --rate R             probe req/s in `deploy` (default 200)
  --keepalive MODE     on, off or both: the probes' client keep-alive in `deploy` and `many`
                       (default on)
  --classic-sleep S    the classic script's fixed sleep, s (default 2)
  --services K         services in `many` (default 10)
  --service-rate R     probe req/s per service in `many` (default 20)
  -h, --help           this text
";

pub struct Opts {
    pub suites: Vec<String>,
    pub duration: u64,
    pub concurrency: usize,
    pub deploys: usize,
    pub rate: u32,
    pub keepalive: Vec<bool>,
    pub classic_sleep: u64,
    pub services: usize,
    pub service_rate: u32,
}

fn parse_args() -> Result<Opts> {
    let mut opts = Opts {
        suites: Vec::new(),
        duration: 10,
        concurrency: 50,
        deploys: 10,
        rate: 200,
        keepalive: vec![true],
        classic_sleep: 2,
        services: 10,
        service_rate: 20,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().with_context(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--duration" => opts.duration = value("--duration")?.parse()?,
            "--concurrency" => opts.concurrency = value("--concurrency")?.parse()?,
            "--deploys" => opts.deploys = value("--deploys")?.parse()?,
            "--rate" => opts.rate = value("--rate")?.parse()?,
            "--classic-sleep" => opts.classic_sleep = value("--classic-sleep")?.parse()?,
            "--services" => opts.services = value("--services")?.parse()?,
            "--service-rate" => opts.service_rate = value("--service-rate")?.parse()?,
            "--keepalive" => {
                opts.keepalive = match value("--keepalive")?.as_str() {
                    "on" => vec![true],
                    "off" => vec![false],
                    "both" => vec![true, false],
                    other => bail!("--keepalive on|off|both, not {other:?}"),
                }
            }
            "ingest" | "footprint" | "deploy" | "many" | "replicas" | "canary" | "swarm" => {
                opts.suites.push(arg)
            }
            "-h" | "--help" => {
                print!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (see --help)"),
        }
    }
    if opts.suites.is_empty() {
        opts.suites = [
            "ingest",
            "footprint",
            "deploy",
            "many",
            "replicas",
            "canary",
        ]
        .map(String::from)
        .to_vec();
    }
    Ok(opts)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let opts = parse_args()?;
    let binary = gl::greenlight_binary()?;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "## greenlight benchmarks\n\nCommand: `cargo run --release -p greenlight-bench -- {}`  \nMachine: {}  \nDate: {}",
        std::env::args().skip(1).collect::<Vec<_>>().join(" "),
        machine(),
        cmd_out("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
    );
    println!("{out}");
    for suite in opts.suites.clone() {
        let mut section = String::new();
        let result = match suite.as_str() {
            "ingest" => ingest::run(&opts, &binary, &mut section).await,
            "footprint" => footprint(&binary, &mut section).await,
            "deploy" => deploy::run(&opts, &binary, &mut section).await,
            "replicas" => replicas::run(&opts, &binary, &mut section).await,
            "canary" => canary::run(&opts, &binary, &mut section).await,
            "many" => many::run(&opts, &binary, &mut section).await,
            "swarm" => swarm::run(&opts, &binary, &mut section).await,
            _ => unreachable!(),
        };
        if let Err(err) = result {
            let _ = writeln!(section, "\n### {suite}: FAILED\n\n```\n{err:#}\n```");
        }
        println!("{section}");
        out.push_str(&section);
    }
    Ok(())
}

fn cmd_out(cmd: &str, args: &[&str]) -> String {
    std::process::Command::new(cmd)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_default();
    let os = std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("PRETTY_NAME=")).map(|l| {
                l.trim_start_matches("PRETTY_NAME=")
                    .trim_matches('"')
                    .to_string()
            })
        })
        .unwrap_or_default();
    format!(
        "{os}, kernel {}, {} CPUs ({cpu}), {} MiB RAM, {}",
        cmd_out("uname", &["-r"]),
        cmd_out("nproc", &[]),
        std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|s| s
                .lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse::<u64>().ok()))
            .unwrap_or(0)
            / 1024,
        cmd_out(
            "docker",
            &["version", "--format", "Docker {{.Server.Version}}"]
        ),
    )
}

/// Suite: binary size, start-up time to a ready `/healthz`, idle RSS.
async fn footprint(binary: &std::path::Path, out: &mut String) -> Result<()> {
    let prefix = unique_prefix("glbench-foot");
    let _cleanup = DockerCleanup::new(&prefix);
    let service = format!("{prefix}app");
    let nginx = Nginx::host(&prefix, &[&service])?;
    let config = gl::config_for(
        &nginx,
        &[gl::ServiceSpec {
            name: service,
            image: "127.0.0.1:9/bench/none".into(),
            network: format!("{prefix}-net"),
            extra: String::new(),
        }],
        "ghcr.io",
    );
    let size = std::fs::metadata(binary)?.len();
    let mut starts = Vec::new();
    let mut idle = Vec::new();
    for _ in 0..3 {
        let g = gl::Greenlight::spawn(binary, free_port(), &config, None)?;
        starts.push(g.ready_after);
        tokio::time::sleep(Duration::from_secs(2)).await;
        idle.push(gl::rss_kib(g.pid()).context("no /proc status")?);
    }
    starts.sort();
    let _ = writeln!(
        out,
        "\n### Footprint\n\nRelease binary (`target/release/greenlight`, stripped), three fresh starts (new \
         SQLite state each) with one configured service and a host nginx; idle RSS read 2 s after `/healthz` \
         first answered 200.\n\n| metric | value | target |\n|---|---:|---|"
    );
    let _ = writeln!(
        out,
        "| binary size | {:.1} MiB | - |",
        size as f64 / 1048576.0
    );
    let _ = writeln!(
        out,
        "| spawn to ready `/healthz` (min / median / max of 3) | {:.0} / {:.0} / {:.0} ms | - |",
        starts[0].as_secs_f64() * 1000.0,
        starts[1].as_secs_f64() * 1000.0,
        starts[2].as_secs_f64() * 1000.0
    );
    let max_idle = idle.iter().map(|r| r.0).max().unwrap_or(0);
    let _ = writeln!(
        out,
        "| idle RSS (VmRSS, max of 3) | {:.1} MiB | < 20 MB: {} |",
        gl::mib(max_idle),
        if (max_idle * 1024) < 20_000_000 {
            "met"
        } else {
            "**missed**"
        }
    );
    let _ = writeln!(
        out,
        "| peak RSS during start-up (VmHWM, max of 3) | {:.1} MiB | - |",
        gl::mib(idle.iter().map(|r| r.1).max().unwrap_or(0))
    );
    Ok(())
}
