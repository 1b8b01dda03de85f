//! The `greenlight` command line. `serve`, `check` and `notify test` work from
//! the config file; `completions` needs nothing; every other command is a
//! client of a running server's admin API.
//!
//! - `client.rs`: the admin API client and its errors
//! - `table.rs`: the tables of `status`, `history`, `deliveries` and `check`
//! - `follow.rs`: following a deployment live (`deploy`, `rollback`, `watch`)
//! - `output.rs`: terminal detection, colour, and the shared formatters

mod client;
mod dist;
mod follow;
mod output;
mod table;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use serde_json::Value;

use crate::config::Config;
use client::{ApiError, ApiPath, Client};
use output::{now_ms, text, Term};

/// The deployment succeeded (or its digest was already live); the command did what it said.
pub const EXIT_OK: i32 = 0;
/// The deployment failed or was rolled back (the previous version keeps serving);
/// `check` or `notify test` found a problem.
pub const EXIT_FAILED: i32 = 1;
/// Bad usage or a bad config.
pub const EXIT_USAGE: i32 = 2;
/// greenlight refused the request (unknown service, nothing to roll back, ...:
/// its error text is printed as-is) or could not be reached.
pub const EXIT_REFUSED: i32 = 3;
/// The deployment did not run to its end: interrupted, stale or superseded; or
/// `watch --timeout` saw no deployment start.
pub const EXIT_NOT_RUN: i32 = 4;

#[derive(Parser, Debug)]
#[command(
    name = "greenlight",
    version,
    about = "Zero-downtime blue/green deploys behind nginx, driven by registry pushes",
    after_help = "Exit codes: 0 success (or already live), 1 the deployment failed or was rolled back, \
                  2 bad usage or config, 3 greenlight refused the request or could not be reached, \
                  4 the deployment was interrupted, stale or superseded."
)]
pub struct Cli {
    /// Config file [default: ./greenlight.toml, else /etc/greenlight/greenlight.toml].
    #[arg(long, global = true, env = "GREENLIGHT_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Admin API of a running greenlight (default: from server.listen in the config).
    #[arg(long, global = true, env = "GREENLIGHT_URL")]
    pub url: Option<String>,
    /// Admin token (default: server.admin_token from the config).
    #[arg(long, global = true, env = "GREENLIGHT_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Machine-readable output: the admin API's JSON, unchanged.
    #[arg(long, global = true)]
    pub json: bool,
    /// When to colour output and `serve`'s log (auto: on a terminal, unless
    /// NO_COLOR is set; CLICOLOR_FORCE forces it).
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "auto",
        value_name = "WHEN"
    )]
    pub color: crate::telemetry::ColorWhen,
    /// Log format of `serve`.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "human",
        env = "GREENLIGHT_LOG_FORMAT"
    )]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Write a commented starter config for this machine (--config, default
    /// ./greenlight.toml) and the nginx snippet to include; never overwrites.
    Init(InitArgs),
    /// Print [[service]] entries for the services of a docker-compose file (a
    /// blue/green pair is one service), and what could not be carried over.
    ImportCompose(ImportComposeArgs),
    /// Run the HTTP server and the deploy workers.
    Serve,
    /// Validate the config and reach Docker and nginx; say what is wrong and how to fix it.
    Check,
    /// What is live for each service.
    Status,
    /// Deploy a tag or digest of a service and follow it to the end.
    Deploy(DeployArgs),
    /// Go back to the service's previous image, and follow it to the end.
    Rollback(RollbackArgs),
    /// A service's running canary: where it stands, or promote or abort it now.
    #[command(subcommand)]
    Canary(CanaryCommand),
    /// Follow a deployment live: a given one, or a service's current or next one.
    Watch(WatchArgs),
    /// Past deployments, newest first.
    History(HistoryArgs),
    /// The webhook delivery ledger, newest first.
    Deliveries(DeliveriesArgs),
    /// Make the running server re-read its config file (as SIGHUP does): services
    /// added, removed or changed take effect; a file with an error is refused.
    Reload,
    /// Run a stored webhook delivery through the same path again.
    Redeliver {
        /// The delivery id (GitHub's GUID, the registry's event id) or ledger row.
        delivery: String,
    },
    /// Notification channels (works from the config; no server needed).
    #[command(subcommand)]
    Notify(NotifyCommand),
    /// Print a shell completion script to stdout (see the README for where it goes).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Exit 0 when the server answers GET /healthz (a container's HEALTHCHECK).
    #[command(hide = true)]
    Healthz,
    /// Write the man page, the shell completions and the package's config into DIR.
    #[command(hide = true)]
    Dist { dir: PathBuf },
}

/// What `init` would otherwise detect.
#[derive(Args, Debug)]
pub struct InitArgs {
    /// nginx runs on this host with this config file (-c).
    #[arg(long, value_name = "FILE", conflicts_with = "nginx_container")]
    pub nginx_config: Option<PathBuf>,
    /// nginx runs in this container.
    #[arg(long, value_name = "NAME")]
    pub nginx_container: Option<String>,
    /// The directory greenlight renders upstreams into, as greenlight sees it.
    #[arg(long, value_name = "DIR")]
    pub upstreams_dir: Option<PathBuf>,
    /// The URL of nginx's verify server.
    #[arg(long, value_name = "URL")]
    pub verify_url: Option<String>,
}

/// What `import-compose` reads.
#[derive(Args, Debug)]
pub struct ImportComposeArgs {
    /// The compose file.
    #[arg(value_name = "COMPOSE_FILE")]
    pub file: PathBuf,
    /// The compose services to import (default: all but nginx); naming one
    /// colour of a blue/green pair imports the pair.
    #[arg(value_name = "SERVICE")]
    pub services: Vec<String>,
    /// Compose's project name, the prefix of the networks and volumes it made
    /// (default: the file's `name`, else its directory's name).
    #[arg(long, short = 'p', value_name = "NAME")]
    pub project_name: Option<String>,
    /// An nginx site to read for the lines that change (default: the *.conf
    /// files beside the compose file and those mounted into its nginx).
    #[arg(long = "site", value_name = "FILE")]
    pub sites: Vec<PathBuf>,
}

#[derive(Args, Debug)]
pub struct DeliveriesArgs {
    /// Only deliveries about this service.
    #[arg(long)]
    pub service: Option<String>,
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
}

#[derive(Subcommand, Debug)]
pub enum NotifyCommand {
    /// Send a test message through each configured channel and say what happened.
    Test {
        /// Only this channel.
        #[arg(long, value_enum)]
        channel: Option<NotifyChannel>,
    },
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum NotifyChannel {
    Email,
    Slack,
}

/// Whether a command that queues a deployment waits for its end.
#[derive(Args, Debug)]
pub struct FollowArgs {
    /// Follow the deployment step by step until it ends (the default).
    #[arg(long, conflicts_with = "no_wait")]
    pub follow: bool,
    /// Return once the deployment is queued.
    #[arg(long)]
    pub no_wait: bool,
}

#[derive(Args, Debug)]
pub struct DeployArgs {
    /// The service, as named in the config.
    pub service: String,
    /// Tag to resolve at the registry.
    #[arg(long, conflicts_with = "digest", required_unless_present = "digest")]
    pub tag: Option<String>,
    /// Exact digest (sha256:...).
    #[arg(long)]
    pub digest: Option<String>,
    /// This deployment's strategy instead of the service's `rollout.strategy`.
    #[arg(long, value_parser = ["blue-green", "rolling", "canary"])]
    pub strategy: Option<String>,
    #[command(flatten)]
    pub wait: FollowArgs,
}

#[derive(Subcommand, Debug)]
pub enum CanaryCommand {
    /// The current step, its share of users and time left, each variant's
    /// figures and every check's verdict.
    Status {
        /// The service, as named in the config.
        service: String,
    },
    /// Skip the remaining steps: switch everyone to the new version now.
    Promote {
        /// The service, as named in the config.
        service: String,
    },
    /// Take the canary out now: its users go back to the stable version.
    Abort {
        /// The service, as named in the config.
        service: String,
    },
}

#[derive(Args, Debug)]
pub struct RollbackArgs {
    /// The service, as named in the config.
    pub service: String,
    #[command(flatten)]
    pub wait: FollowArgs,
}

#[derive(Args, Debug)]
pub struct WatchArgs {
    /// The deployment to follow.
    #[arg(required_unless_present = "service", conflicts_with = "service")]
    pub deployment: Option<i64>,
    /// Follow this service's deployment in progress, or wait for its next one.
    #[arg(long)]
    pub service: Option<String>,
    /// With --service: give up when no deployment starts within this long (e.g. 5m).
    #[arg(long, conflicts_with = "deployment", value_parser = humantime::parse_duration)]
    pub timeout: Option<Duration>,
}

#[derive(Args, Debug)]
pub struct HistoryArgs {
    pub service: Option<String>,
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
    /// Show every step of each deployment.
    #[arg(long)]
    pub steps: bool,
}

pub fn main(cli: Cli) -> i32 {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("building the tokio runtime");
    runtime.block_on(run(cli))
}

impl Cli {
    /// The config file: the one named, else the first found where greenlight looks.
    pub fn config_path(&self) -> Result<PathBuf, crate::config::locate::NotFound> {
        crate::config::locate::locate(self.config.as_deref(), |p| p.exists())
    }
}

fn load_config(cli: &Cli) -> Result<crate::config::live::Loaded, i32> {
    let loaded = match cli.config_path() {
        Ok(path) => crate::config::live::Loaded::read(&path).map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    loaded.map_err(|e| {
        eprintln!("greenlight: {e}");
        EXIT_USAGE
    })
}

async fn run(cli: Cli) -> i32 {
    if !matches!(cli.command, Command::Serve) {
        // A client command piped into `head` ends quietly when the pipe closes,
        // as other Unix tools do, instead of panicking on the failed write.
        // SAFETY: restores the default disposition of one signal, before any
        // thread of ours could rely on it being ignored.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let term = Term::detect(cli.color);
    match &cli.command {
        Command::Serve => {
            let config = match load_config(&cli) {
                Ok(c) => c,
                Err(code) => return code,
            };
            crate::telemetry::init(
                match cli.log_format {
                    LogFormat::Human => crate::telemetry::Format::Human,
                    LogFormat::Json => crate::telemetry::Format::Json,
                },
                cli.color,
            );
            match crate::app::serve(config).await {
                Ok(()) => EXIT_OK,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("greenlight: {e:#}");
                    EXIT_FAILED
                }
            }
        }
        Command::Check => {
            let config = match load_config(&cli) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let findings = crate::check::run(&config).await;
            if cli.json {
                println!("{}", pretty(&findings));
            } else {
                print!("{}", table::check(&findings, term));
            }
            if findings.iter().all(|f| f.ok) {
                EXIT_OK
            } else {
                EXIT_FAILED
            }
        }
        Command::Notify(NotifyCommand::Test { channel }) => {
            let config = match load_config(&cli) {
                Ok(c) => c,
                Err(code) => return code,
            };
            notify_test(&config.config, *channel, cli.json, term).await
        }
        Command::Init(args) => init(&cli, args).await,
        Command::ImportCompose(args) => import_compose(args),
        Command::Healthz => healthz(&cli).await,
        Command::Dist { dir } => match dist::write(dir) {
            Ok(()) => EXIT_OK,
            Err(e) => {
                eprintln!("greenlight: writing into {}: {e}", dir.display());
                EXIT_FAILED
            }
        },
        Command::Completions { shell } => {
            // --json has nothing to say about a shell script: it is ignored.
            clap_complete::generate(
                *shell,
                &mut Cli::command(),
                "greenlight",
                &mut std::io::stdout(),
            );
            EXIT_OK
        }
        _ => match Client::new(&cli) {
            Ok(client) => client_command(&client, &cli, term).await,
            Err(e) => {
                eprintln!("greenlight: {e}");
                EXIT_USAGE
            }
        },
    }
}

/// A command that talks to the admin API. An error the server answered with is
/// printed as-is on stderr (and its JSON on stdout under `--json`).
async fn client_command(client: &Client, cli: &Cli, term: Term) -> i32 {
    let json = cli.json;
    let result = match &cli.command {
        Command::Status => status(client, json, term).await,
        Command::Deploy(args) => deploy(client, args, json, term).await,
        Command::Rollback(args) => rollback(client, args, json, term).await,
        Command::Canary(command) => canary(client, command, json).await,
        Command::Watch(args) => watch(client, args, json, term).await,
        Command::History(args) => history(client, args, json, term).await,
        Command::Deliveries(args) => deliveries(client, args, json, term).await,
        Command::Redeliver { delivery } => redeliver(client, delivery, json).await,
        Command::Reload => reload(client, json).await,
        Command::Serve
        | Command::Check
        | Command::Init(_)
        | Command::ImportCompose(_)
        | Command::Healthz
        | Command::Dist { .. }
        | Command::Notify(_)
        | Command::Completions { .. } => {
            unreachable!("handled without a client")
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            if let (true, ApiError::Refused { body, .. }) = (json, &e) {
                if !body.is_null() {
                    println!("{}", pretty(body));
                }
            }
            eprintln!("greenlight: {e}");
            EXIT_REFUSED
        }
    }
}

async fn status(client: &Client, json: bool, term: Term) -> Result<i32, ApiError> {
    let services = client.get(&ApiPath::api(&["services"])).await?;
    if json {
        println!("{}", pretty(&services));
    } else {
        print!("{}", table::status(&services, now_ms(), term));
        let replicas = table::replicas(&services, now_ms(), term);
        if !replicas.is_empty() {
            println!();
            print!("{replicas}");
        }
    }
    Ok(EXIT_OK)
}

/// Queues a deployment (`deploy`, `rollback`) and follows it unless `--no-wait`.
async fn queued(
    client: &Client,
    accepted: Value,
    wait: &FollowArgs,
    json: bool,
    term: Term,
) -> Result<i32, ApiError> {
    let Some(id) = accepted["deployment"].as_i64() else {
        eprintln!("greenlight: the server's answer carried no deployment id: {accepted}");
        return Ok(EXIT_REFUSED);
    };
    if wait.no_wait {
        if json {
            println!("{}", pretty(&accepted));
        } else {
            println!("deployment {id} queued; follow it with `greenlight watch {id}`");
        }
        return Ok(EXIT_OK);
    }
    follow::deployment(client, id, term, json).await
}

async fn deploy(
    client: &Client,
    args: &DeployArgs,
    json: bool,
    term: Term,
) -> Result<i32, ApiError> {
    let body = serde_json::json!({
        "tag": args.tag,
        "digest": args.digest,
        "strategy": args.strategy,
    });
    let accepted = client
        .post(
            &ApiPath::api(&["services", &args.service, "deploy"]),
            Some(body),
        )
        .await?;
    queued(client, accepted, &args.wait, json, term).await
}

async fn canary(client: &Client, command: &CanaryCommand, json: bool) -> Result<i32, ApiError> {
    let (service, action) = match command {
        CanaryCommand::Status { service } => (service, None),
        CanaryCommand::Promote { service } => (service, Some("promote")),
        CanaryCommand::Abort { service } => (service, Some("abort")),
    };
    let answer = match action {
        None => {
            client
                .get(&ApiPath::api(&["services", service, "canary"]))
                .await?
        }
        Some(action) => {
            client
                .post(
                    &ApiPath::api(&["services", service, "canary", action]),
                    Some(serde_json::json!({})),
                )
                .await?
        }
    };
    if json {
        println!("{}", pretty(&answer));
    } else if let Some(action) = action {
        println!(
            "asked the canary of {service} (deployment {}) to {action}; follow it with `greenlight watch {}`",
            answer["deployment"], answer["deployment"]
        );
    } else {
        print!("{}", table::canary(&answer["canary"], now_ms()));
    }
    Ok(EXIT_OK)
}

async fn rollback(
    client: &Client,
    args: &RollbackArgs,
    json: bool,
    term: Term,
) -> Result<i32, ApiError> {
    // 202 {deployment, url} like deploy; 409 when there is nothing to roll back.
    let accepted = client
        .post(
            &ApiPath::api(&["services", &args.service, "rollback"]),
            Some(serde_json::json!({})),
        )
        .await?;
    queued(client, accepted, &args.wait, json, term).await
}

async fn watch(client: &Client, args: &WatchArgs, json: bool, term: Term) -> Result<i32, ApiError> {
    match (&args.deployment, &args.service) {
        (Some(id), _) => follow::deployment(client, *id, term, json).await,
        (None, Some(service)) => follow::service(client, service, args.timeout, term, json).await,
        (None, None) => unreachable!("clap requires a deployment or --service"),
    }
}

async fn deliveries(
    client: &Client,
    args: &DeliveriesArgs,
    json: bool,
    term: Term,
) -> Result<i32, ApiError> {
    let mut path = ApiPath::api(&["deliveries"]).query("limit", args.limit);
    if let Some(s) = &args.service {
        path = path.query("service", s);
    }
    let list = client.get(&path).await?;
    if json {
        println!("{}", pretty(&list));
    } else {
        print!("{}", table::deliveries(&list, now_ms(), term));
    }
    Ok(EXIT_OK)
}

async fn reload(client: &Client, json: bool) -> Result<i32, ApiError> {
    let v = client.post(&ApiPath::api(&["reload"]), None).await?;
    if json {
        println!("{}", pretty(&v));
        return Ok(EXIT_OK);
    }
    let list = |key: &str| {
        let names: Vec<String> = v[key].as_array().into_iter().flatten().map(text).collect();
        if names.is_empty() {
            "none".to_string()
        } else {
            names.join(", ")
        }
    };
    println!(
        "config reloaded: services added {}; removed {}; changed {}",
        list("added"),
        list("removed"),
        list("changed")
    );
    println!("(a deployment in progress finishes with the config it started with)");
    Ok(EXIT_OK)
}

async fn redeliver(client: &Client, delivery: &str, json: bool) -> Result<i32, ApiError> {
    let v = client
        .post(&ApiPath::api(&["deliveries", delivery, "redeliver"]), None)
        .await?;
    if json {
        println!("{}", pretty(&v));
        return Ok(EXIT_OK);
    }
    println!(
        "delivery {} attempt {}: {}{}",
        text(&v["delivery"]),
        text(&v["attempt"]),
        text(&v["outcome"]),
        v["detail"]
            .as_str()
            .filter(|d| !d.is_empty())
            .map(|d| format!(" ({d})"))
            .unwrap_or_default()
    );
    for id in v["deployments"].as_array().into_iter().flatten() {
        println!("  deployment {id}: follow it with `greenlight watch {id}`");
    }
    Ok(EXIT_OK)
}

async fn history(
    client: &Client,
    args: &HistoryArgs,
    json: bool,
    term: Term,
) -> Result<i32, ApiError> {
    let mut path = ApiPath::api(&["deployments"]).query("limit", args.limit);
    if let Some(s) = &args.service {
        path = path.query("service", s);
    }
    let list = client.get(&path).await?;
    let mut items = list.as_array().cloned().unwrap_or_default();
    // The list leaves steps out; --steps and --json show each deployment whole.
    if args.steps || json {
        for item in items.iter_mut() {
            if let Some(id) = item["id"].as_i64() {
                *item = client
                    .get(&ApiPath::api(&["deployments", &id.to_string()]))
                    .await?;
            }
        }
    }
    if json {
        println!("{}", pretty(&Value::Array(items)));
        return Ok(EXIT_OK);
    }
    print!("{}", table::history(&items, now_ms(), term));
    if args.steps {
        for d in &items {
            print_timeline(d);
        }
    }
    Ok(EXIT_OK)
}

/// `history --steps`: one deployment's steps and notification attempts, in full.
fn print_timeline(d: &Value) {
    let shape = match (d["strategy"].as_str(), d["replicas"].as_u64()) {
        (Some(strategy), Some(n)) => {
            format!(", {strategy}, {n} replica{}", if n == 1 { "" } else { "s" })
        }
        _ => String::new(),
    };
    println!(
        "\n#{} {} {} (started {}{shape})",
        d["id"],
        text(&d["service"]),
        text(&d["state"]),
        d["created_at"]
            .as_i64()
            .map(output::timestamp)
            .unwrap_or_default()
    );
    let mut batch = None;
    for s in d["steps"].as_array().into_iter().flatten() {
        // A rolling update's batches, each under its own heading.
        if s["batch"].as_u64() != batch {
            batch = s["batch"].as_u64();
            if let Some(b) = batch {
                println!("  batch {b}");
            }
        }
        let took = match (s["started_at"].as_i64(), s["finished_at"].as_i64()) {
            (Some(a), Some(b)) => output::duration(b - a),
            _ => "...".into(),
        };
        let indent = if batch.is_some() { "  " } else { "" };
        println!(
            "  {indent}{:<13} {:>7}  {}{}",
            text(&s["step"]),
            took,
            s["replicas"]
                .as_str()
                .map(|r| format!("[{r}] "))
                .unwrap_or_default(),
            // A release's or a hook's output spans lines: under the step.
            s["detail"]
                .as_str()
                .unwrap_or("")
                .replace('\n', &format!("\n  {indent}{:23}", ""))
        );
    }
    for n in d["notifications"].as_array().into_iter().flatten() {
        println!(
            "  notify {:<6} {:<11} #{} {:<8} {}  {}",
            text(&n["channel"]),
            text(&n["event"]),
            text(&n["attempt"]),
            text(&n["outcome"]),
            n["at"].as_i64().map(output::timestamp).unwrap_or_default(),
            n["detail"].as_str().unwrap_or("")
        );
    }
}

/// `greenlight healthz`: GET /healthz of `--url`, else of `server.listen` in
/// the config (a wildcard address asked on loopback).
async fn healthz(cli: &Cli) -> i32 {
    let base = cli.url.clone().or_else(|| {
        let config = Config::load(&cli.config_path().ok()?).ok()?;
        let listen = config.server.listen.replace("0.0.0.0", "127.0.0.1");
        Some(format!("http://{}", listen.replace("[::]", "[::1]")))
    });
    let Some(base) = base else {
        eprintln!("greenlight: no --url and no readable config to find the server");
        return EXIT_USAGE;
    };
    let answer = crate::tls::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .expect("static reqwest client config")
        .get(format!("{}/healthz", base.trim_end_matches('/')))
        .send()
        .await;
    match answer {
        Ok(r) if r.status().is_success() => EXIT_OK,
        Ok(r) => {
            eprintln!("greenlight: {base}/healthz answered {}", r.status());
            EXIT_FAILED
        }
        Err(e) => {
            eprintln!(
                "greenlight: {base}/healthz: {}",
                crate::display::error_chain(&e)
            );
            EXIT_FAILED
        }
    }
}

/// `greenlight import-compose`: the entries on stdout, a summary on stderr.
fn import_compose(args: &ImportComposeArgs) -> i32 {
    let text = match read_bounded(&args.file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("greenlight: {}: {e}", args.file.display());
            return EXIT_USAGE;
        }
    };
    let dir = std::path::absolute(&args.file)
        .ok()
        .and_then(|p| p.parent().map(std::path::Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("."));
    let site_paths = if args.sites.is_empty() {
        crate::import::site_candidates(&text, &dir)
    } else {
        args.sites.clone()
    };
    let mut sites = Vec::new();
    for path in site_paths {
        match read_bounded(&path) {
            Ok(site) => sites.push((path, site)),
            // Named by the operator: say so. Found by looking: skip quietly.
            Err(e) if !args.sites.is_empty() => {
                eprintln!("greenlight: {}: {e}", path.display());
                return EXIT_USAGE;
            }
            Err(_) => {}
        }
    }
    let source = crate::import::Source {
        text: &text,
        dir: &dir,
        project: args.project_name.as_deref(),
        sites,
    };
    match crate::import::import(&source, &args.services) {
        Ok(done) => {
            print!("{}", done.toml);
            for s in &done.services {
                eprintln!(
                    "imported {} (from {}): {} compose setting{} not carried over, listed above it",
                    s.name,
                    s.from.join(" + "),
                    s.notes.len(),
                    if s.notes.len() == 1 { "" } else { "s" }
                );
            }
            if !done.skipped.is_empty() {
                let why = if done.routed_only {
                    "nginx's sites do not route to them"
                } else {
                    "not named"
                };
                eprintln!(
                    "not imported ({why}): {} (name them to import them)",
                    done.skipped.join(", ")
                );
            }
            if !done.nginx.is_empty() {
                eprintln!(
                    "nginx: {} change{} listed at the end",
                    done.nginx.len(),
                    if done.nginx.len() == 1 { "" } else { "s" }
                );
            }
            EXIT_OK
        }
        Err(e) => {
            eprintln!("greenlight: {}: {e}", args.file.display());
            EXIT_USAGE
        }
    }
}

/// A text file of at most 1 MiB (compose files and nginx sites are small).
fn read_bounded(path: &std::path::Path) -> std::io::Result<String> {
    use std::io::Read;
    const LIMIT: u64 = 1 << 20;
    let mut text = String::new();
    std::fs::File::open(path)?
        .take(LIMIT + 1)
        .read_to_string(&mut text)?;
    if text.len() as u64 > LIMIT {
        return Err(std::io::Error::other("larger than 1 MiB"));
    }
    Ok(text)
}

/// `greenlight init`: detect, write both files or neither, say what was chosen.
async fn init(cli: &Cli, args: &InitArgs) -> i32 {
    let options = crate::init::Options {
        output: cli
            .config
            .clone()
            .unwrap_or_else(|| PathBuf::from("greenlight.toml")),
        nginx_config: args.nginx_config.clone(),
        nginx_container: args.nginx_container.clone(),
        upstreams_dir: args.upstreams_dir.clone(),
        verify_url: args.verify_url.clone(),
    };
    if options.output.symlink_metadata().is_ok() {
        eprintln!(
            "greenlight: {}",
            crate::init::InitError::Exists(options.output)
        );
        return EXIT_FAILED;
    }
    let written = match crate::init::detect(&options).await {
        Ok(choices) => crate::init::write(&options, &choices).map(|w| (choices, w)),
        Err(e) => Err(e),
    };
    let (choices, written) = match written {
        Ok(done) => done,
        Err(e) => {
            eprintln!("greenlight: {e}");
            return EXIT_FAILED;
        }
    };
    let shown = |p: &std::path::Path| {
        std::fs::canonicalize(p)
            .unwrap_or_else(|_| p.to_path_buf())
            .display()
            .to_string()
    };
    println!(
        "wrote {} (mode 0600: it holds the generated admin token)",
        shown(&written.config)
    );
    for note in &choices.notes {
        println!("  {note}");
    }
    if written.created_upstreams_dir {
        println!("  created {}", choices.upstreams_dir.display());
    }
    match &written.snippet {
        Some(snippet) => {
            println!(
                "wrote {}: include it in nginx's http block:",
                shown(snippet)
            );
            match &choices.nginx {
                crate::init::NginxChoice::Host { .. } => {
                    println!("    include {};", shown(snippet))
                }
                crate::init::NginxChoice::Container { name, .. } => println!(
                    "    (mount it into container {name}, include it from there, \
                     and mount {} at {})",
                    choices.upstreams_dir.display(),
                    choices.upstreams_in_nginx.display()
                ),
            }
            println!(
                "  then reload nginx (nginx -t && nginx -s reload) and run `greenlight check`"
            );
        }
        None => println!("nginx already includes what greenlight needs; next: `greenlight check`"),
    }
    println!(
        "add your services ([[service]] at the end of {}), then `greenlight serve`",
        written.config.display()
    );
    EXIT_OK
}

/// `greenlight notify test`: one attempt through each configured channel.
async fn notify_test(
    config: &Config,
    channel: Option<NotifyChannel>,
    json: bool,
    term: Term,
) -> i32 {
    use crate::notify::ChannelKind;
    let only = channel.map(|c| match c {
        NotifyChannel::Email => ChannelKind::Email,
        NotifyChannel::Slack => ChannelKind::Slack,
    });
    let results = crate::notify::send_test(config, only).await;
    if json {
        let list: Vec<Value> = results
            .iter()
            .map(|r| {
                serde_json::json!({
                    "channel": r.channel.as_str(),
                    "scope": r.scope,
                    "destination": r.destination,
                    "ok": r.result.is_ok(),
                    "error": r.result.as_ref().err(),
                })
            })
            .collect();
        println!("{}", pretty(&list));
    } else if results.is_empty() {
        println!(
            "no {}notification channel configured (see [notify] in greenlight.example.toml)",
            only.map(|k| format!("{k} ")).unwrap_or_default()
        );
    } else {
        for r in &results {
            match &r.result {
                Ok(()) => println!(
                    "{}   {:<6} {} ({})",
                    term.paint("ok", output::Tone::Good),
                    r.channel,
                    r.destination,
                    r.scope
                ),
                Err(e) => println!(
                    "{} {:<6} {} ({}): {e}",
                    term.paint("FAIL", output::Tone::Bad),
                    r.channel,
                    r.destination,
                    r.scope
                ),
            }
        }
    }
    if results.is_empty() {
        EXIT_USAGE
    } else if results.iter().all(|r| r.result.is_ok()) {
        EXIT_OK
    } else {
        EXIT_FAILED
    }
}

fn pretty(v: &impl serde::Serialize) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn deploy_and_rollback_follow_unless_told_not_to_wait() {
        let cli = Cli::parse_from(["greenlight", "deploy", "web", "--tag", "v2"]);
        let Command::Deploy(args) = cli.command else {
            panic!("deploy")
        };
        assert!(!args.wait.no_wait);
        let cli = Cli::parse_from(["greenlight", "rollback", "web", "--no-wait", "--json"]);
        let Command::Rollback(args) = cli.command else {
            panic!("rollback")
        };
        assert!(args.wait.no_wait && cli.json);
        assert!(
            Cli::try_parse_from(["greenlight", "rollback", "web", "--follow", "--no-wait"])
                .is_err()
        );
    }

    #[test]
    fn watch_takes_a_deployment_or_a_service_but_not_both() {
        assert!(Cli::try_parse_from(["greenlight", "watch", "12"]).is_ok());
        assert!(Cli::try_parse_from([
            "greenlight",
            "watch",
            "--service",
            "web",
            "--timeout",
            "5m"
        ])
        .is_ok());
        assert!(Cli::try_parse_from(["greenlight", "watch"]).is_err());
        assert!(Cli::try_parse_from(["greenlight", "watch", "12", "--service", "web"]).is_err());
        assert!(Cli::try_parse_from(["greenlight", "watch", "12", "--timeout", "5m"]).is_err());
    }
}
