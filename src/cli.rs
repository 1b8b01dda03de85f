//! The `greenlight` command line. `serve` and `check` work from the config file;
//! every other command is a client of a running server's admin API.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::Value;

use crate::config::Config;

/// Exit code for a bad config or bad usage.
pub const EXIT_USAGE: i32 = 2;
/// Exit code for a failed operation (a deploy that did not succeed, an API error).
pub const EXIT_FAILED: i32 = 1;

#[derive(Parser, Debug)]
#[command(
    name = "greenlight",
    version,
    about = "Zero-downtime blue/green deploys behind nginx, driven by registry pushes"
)]
pub struct Cli {
    /// Config file.
    #[arg(
        long,
        global = true,
        env = "GREENLIGHT_CONFIG",
        default_value = "greenlight.toml"
    )]
    pub config: PathBuf,
    /// Admin API of a running greenlight (default: from server.listen in the config).
    #[arg(long, global = true, env = "GREENLIGHT_URL")]
    pub url: Option<String>,
    /// Admin token (default: server.admin_token from the config).
    #[arg(long, global = true, env = "GREENLIGHT_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Machine-readable output.
    #[arg(long, global = true)]
    pub json: bool,
    /// Log format of `serve`.
    #[arg(long, global = true, value_enum, default_value = "human")]
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
    /// Run the HTTP server and the deploy workers.
    Serve,
    /// Validate the config and reach Docker and nginx; say what is wrong and how to fix it.
    Check,
    /// What is live for each service.
    Status,
    /// Deploy a tag or digest of a service and follow it to the end.
    Deploy(DeployArgs),
    /// Past deployments, newest first.
    History(HistoryArgs),
    /// The webhook delivery ledger, newest first.
    Deliveries(DeliveriesArgs),
    /// Run a stored webhook delivery through the same path again.
    Redeliver {
        /// The delivery id (GitHub's GUID, the registry's event id) or ledger row.
        delivery: String,
    },
    /// Notification channels (works from the config; no server needed).
    #[command(subcommand)]
    Notify(NotifyCommand),
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

#[derive(Args, Debug)]
pub struct DeployArgs {
    pub service: String,
    /// Tag to resolve at the registry.
    #[arg(long, conflicts_with = "digest", required_unless_present = "digest")]
    pub tag: Option<String>,
    /// Exact digest (sha256:...).
    #[arg(long)]
    pub digest: Option<String>,
    /// Return once the deployment is queued.
    #[arg(long)]
    pub no_wait: bool,
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

fn load_config(cli: &Cli) -> Result<Config, i32> {
    Config::load(&cli.config).map_err(|e| {
        eprintln!("greenlight: {e}");
        EXIT_USAGE
    })
}

async fn run(cli: Cli) -> i32 {
    match &cli.command {
        Command::Serve => {
            let config = match load_config(&cli) {
                Ok(c) => c,
                Err(code) => return code,
            };
            init_logging(cli.log_format);
            match crate::app::serve(config).await {
                Ok(()) => 0,
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
                println!(
                    "{}",
                    serde_json::to_string_pretty(&findings).unwrap_or_default()
                );
            } else {
                for f in &findings {
                    println!(
                        "{:4} {:16} {}",
                        if f.ok { "ok" } else { "FAIL" },
                        f.what,
                        f.detail
                    );
                    if let Some(fix) = &f.fix {
                        println!("{:4} {:16} fix: {fix}", "", "");
                    }
                }
            }
            if findings.iter().all(|f| f.ok) {
                0
            } else {
                EXIT_FAILED
            }
        }
        Command::Notify(NotifyCommand::Test { channel }) => {
            let config = match load_config(&cli) {
                Ok(c) => c,
                Err(code) => return code,
            };
            notify_test(&config, *channel, cli.json).await
        }
        _ => match Client::new(&cli) {
            Ok(client) => client.run(&cli).await,
            Err(e) => {
                eprintln!("greenlight: {e}");
                EXIT_USAGE
            }
        },
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

struct Client {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Client {
    fn new(cli: &Cli) -> Result<Client, String> {
        // The config is only a source of defaults for a client.
        let config = Config::load(&cli.config).ok();
        let base = cli
            .url
            .clone()
            .or_else(|| {
                config
                    .as_ref()
                    .map(|c| format!("http://{}", c.server.listen))
            })
            .unwrap_or_else(|| "http://127.0.0.1:8787".into());
        let token = cli
            .token
            .clone()
            .or_else(|| config.as_ref().map(|c| c.server.admin_token.clone()))
            .ok_or_else(|| {
                format!(
                    "no admin token: pass --token or GREENLIGHT_TOKEN (or a readable --config; {} could not be loaded)",
                    cli.config.display()
                )
            })?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Client {
            base: base.trim_end_matches('/').to_string(),
            token,
            http,
        })
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, String> {
        let mut req = self
            .http
            .request(method, format!("{}{}", self.base, path))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.map_err(|e| {
            format!(
                "cannot reach greenlight at {}: {e} (is `greenlight serve` running? set --url)",
                self.base
            )
        })?;
        let status = resp.status();
        let value: Value = resp.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            Ok(value)
        } else {
            let msg = value
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("no details")
                .to_string();
            Err(format!("{status}: {msg}"))
        }
    }

    async fn run(&self, cli: &Cli) -> i32 {
        let result = match &cli.command {
            Command::Status => self.status(cli.json).await,
            Command::Deploy(args) => self.deploy(args, cli.json).await,
            Command::History(args) => self.history(args, cli.json).await,
            Command::Deliveries(args) => self.deliveries(args, cli.json).await,
            Command::Redeliver { delivery } => self.redeliver(delivery, cli.json).await,
            Command::Serve | Command::Check | Command::Notify(_) => {
                unreachable!("handled without a client")
            }
        };
        match result {
            Ok(code) => code,
            Err(e) => {
                eprintln!("greenlight: {e}");
                EXIT_FAILED
            }
        }
    }

    async fn status(&self, json: bool) -> Result<i32, String> {
        let services = self
            .call(reqwest::Method::GET, "/api/services", None)
            .await?;
        if json {
            println!("{}", pretty(&services));
            return Ok(0);
        }
        let mut rows = vec![vec![
            "SERVICE".to_string(),
            "COLOUR".into(),
            "TAG".into(),
            "DIGEST".into(),
            "CONTAINER".into(),
            "LIVE SINCE".into(),
            "LAST DEPLOYMENT".into(),
        ]];
        for s in services.as_array().into_iter().flatten() {
            let live = &s["live"];
            let container = match &s["container"] {
                Value::Null if live.is_null() => "-".to_string(),
                Value::Null => "MISSING".to_string(),
                c => c["status"].as_str().unwrap_or("?").to_string(),
            };
            let last = &s["last"];
            rows.push(vec![
                text(&s["name"]),
                text(&live["colour"]),
                text(&live["tag"]),
                short_digest(&live["digest"]),
                container,
                live["since"]
                    .as_i64()
                    .map(format_time)
                    .unwrap_or_else(|| "-".into()),
                if last.is_null() {
                    "-".into()
                } else {
                    format!("#{} {}", last["id"], text(&last["state"]))
                },
            ]);
        }
        print_table(&rows);
        Ok(0)
    }

    async fn deploy(&self, args: &DeployArgs, json: bool) -> Result<i32, String> {
        let body = serde_json::json!({"tag": args.tag, "digest": args.digest});
        let path = format!("/api/services/{}/deploy", args.service);
        let accepted = self.call(reqwest::Method::POST, &path, Some(body)).await?;
        let id = accepted["deployment"]
            .as_i64()
            .ok_or("the server's answer carried no deployment id")?;
        if args.no_wait {
            if json {
                println!("{}", pretty(&accepted));
            } else {
                println!("deployment {id} queued");
            }
            return Ok(0);
        }
        if !json {
            println!(
                "deployment {id}: {} {}",
                args.service,
                args.tag.as_deref().or(args.digest.as_deref()).unwrap_or("")
            );
        }
        let mut shown = 0usize;
        loop {
            let d = self
                .call(
                    reqwest::Method::GET,
                    &format!("/api/deployments/{id}"),
                    None,
                )
                .await?;
            let steps = d["steps"].as_array().cloned().unwrap_or_default();
            let created = d["created_at"].as_i64().unwrap_or(0);
            // A step is shown once it has finished, with its duration and what it found.
            while shown < steps.len() && !steps[shown]["finished_at"].is_null() {
                let s = &steps[shown];
                if !json && s["step"] != d["state"] {
                    let took = s["finished_at"].as_i64().unwrap_or(0)
                        - s["started_at"].as_i64().unwrap_or(0);
                    let at = s["started_at"].as_i64().unwrap_or(0) - created;
                    println!(
                        "  {:>7}  {:<13} {:>7}  {}{}",
                        format!("+{:.1}s", at as f64 / 1000.0),
                        text(&s["step"]),
                        format!("{:.2}s", took as f64 / 1000.0),
                        if s["outcome"] == "error" {
                            "FAILED: "
                        } else {
                            ""
                        },
                        s["detail"].as_str().unwrap_or("")
                    );
                }
                shown += 1;
            }
            let state = text(&d["state"]);
            if !d["finished_at"].is_null() {
                if json {
                    println!("{}", pretty(&d));
                } else {
                    print_outcome(&d);
                }
                return Ok(if state == "succeeded" || state == "already_live" {
                    0
                } else {
                    EXIT_FAILED
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn deliveries(&self, args: &DeliveriesArgs, json: bool) -> Result<i32, String> {
        let mut path = format!("/api/deliveries?limit={}", args.limit);
        if let Some(s) = &args.service {
            path.push_str(&format!("&service={s}"));
        }
        let list = self.call(reqwest::Method::GET, &path, None).await?;
        if json {
            println!("{}", pretty(&list));
            return Ok(0);
        }
        let mut rows = vec![vec![
            "DELIVERY".to_string(),
            "SOURCE".into(),
            "ATTEMPT".into(),
            "RECEIVED".into(),
            "SERVICES".into(),
            "VERDICT".into(),
            "DEPLOYMENTS".into(),
            "DETAIL".into(),
        ]];
        for d in list.as_array().into_iter().flatten() {
            let join = |v: &Value| {
                v.as_array()
                    .map(|a| a.iter().map(text).collect::<Vec<_>>().join(","))
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| "-".into())
            };
            rows.push(vec![
                text(&d["delivery_id"]),
                text(&d["source"]),
                text(&d["attempt"]),
                d["received_at"]
                    .as_i64()
                    .map(format_time)
                    .unwrap_or_default(),
                join(&d["services"]),
                text(&d["verdict"]),
                join(&d["deployments"]),
                d["detail"].as_str().unwrap_or("").to_string(),
            ]);
        }
        print_table(&rows);
        Ok(0)
    }

    async fn redeliver(&self, delivery: &str, json: bool) -> Result<i32, String> {
        let path = format!("/api/deliveries/{delivery}/redeliver");
        let v = self.call(reqwest::Method::POST, &path, None).await?;
        if json {
            println!("{}", pretty(&v));
        } else {
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
                println!("  deployment {id}: follow it with `greenlight history --steps`");
            }
        }
        Ok(0)
    }

    async fn history(&self, args: &HistoryArgs, json: bool) -> Result<i32, String> {
        let mut path = format!("/api/deployments?limit={}", args.limit);
        if let Some(s) = &args.service {
            path.push_str(&format!("&service={s}"));
        }
        let list = self.call(reqwest::Method::GET, &path, None).await?;
        let mut items = list.as_array().cloned().unwrap_or_default();
        if args.steps || json {
            for item in items.iter_mut() {
                if let Some(id) = item["id"].as_i64() {
                    *item = self
                        .call(
                            reqwest::Method::GET,
                            &format!("/api/deployments/{id}"),
                            None,
                        )
                        .await?;
                }
            }
        }
        if json {
            println!("{}", pretty(&Value::Array(items)));
            return Ok(0);
        }
        let mut rows = vec![vec![
            "ID".to_string(),
            "SERVICE".into(),
            "STATE".into(),
            "TAG".into(),
            "DIGEST".into(),
            "COLOUR".into(),
            "TRIGGER".into(),
            "STARTED".into(),
            "TOOK".into(),
            "NOTIFIED".into(),
            "ERROR".into(),
        ]];
        for d in &items {
            let took = match (d["created_at"].as_i64(), d["finished_at"].as_i64()) {
                (Some(a), Some(b)) => format!("{:.1}s", (b - a) as f64 / 1000.0),
                _ => "-".into(),
            };
            let error = match d["failed_step"].as_str() {
                Some(step) => format!("at {step}: {}", text(&d["error"])),
                None => d["error"].as_str().unwrap_or("").to_string(),
            };
            rows.push(vec![
                text(&d["id"]),
                text(&d["service"]),
                text(&d["state"]),
                text(&d["tag"]),
                short_digest(&d["digest"]),
                text(&d["colour"]),
                text(&d["trigger"]),
                d["created_at"]
                    .as_i64()
                    .map(format_time)
                    .unwrap_or_default(),
                took,
                notified(&d["notifications"]),
                error,
            ]);
        }
        print_table(&rows);
        if args.steps {
            for d in &items {
                println!(
                    "\n#{} {} {}",
                    d["id"],
                    text(&d["service"]),
                    text(&d["state"])
                );
                for s in d["steps"].as_array().into_iter().flatten() {
                    let took = match (s["started_at"].as_i64(), s["finished_at"].as_i64()) {
                        (Some(a), Some(b)) => format!("{:.2}s", (b - a) as f64 / 1000.0),
                        _ => "...".into(),
                    };
                    println!(
                        "  {:<13} {:>7}  {}",
                        text(&s["step"]),
                        took,
                        s["detail"].as_str().unwrap_or("")
                    );
                }
                for n in d["notifications"].as_array().into_iter().flatten() {
                    println!(
                        "  notify {:<6} {:<11} #{} {:<8} {}  {}",
                        text(&n["channel"]),
                        text(&n["event"]),
                        text(&n["attempt"]),
                        text(&n["outcome"]),
                        n["at"].as_i64().map(format_time).unwrap_or_default(),
                        n["detail"].as_str().unwrap_or("")
                    );
                }
            }
        }
        Ok(0)
    }
}

/// Per channel, how its latest attempt ended: "email sent, slack gave_up(5)".
fn notified(attempts: &Value) -> String {
    let mut last: Vec<(String, String, u64)> = Vec::new();
    for a in attempts.as_array().into_iter().flatten() {
        let channel = text(&a["channel"]);
        let outcome = match a["outcome"].as_str() {
            Some("failed") => "retrying".to_string(),
            _ => text(&a["outcome"]),
        };
        match last.iter_mut().find(|(c, _, _)| *c == channel) {
            Some(entry) => {
                entry.1 = outcome;
                entry.2 += 1;
            }
            None => last.push((channel, outcome, 1)),
        }
    }
    if last.is_empty() {
        return "-".into();
    }
    last.sort();
    last.iter()
        .map(|(c, o, n)| {
            if *n > 1 {
                format!("{c} {o}({n})")
            } else {
                format!("{c} {o}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `greenlight notify test`: one attempt through each configured channel.
async fn notify_test(config: &Config, channel: Option<NotifyChannel>, json: bool) -> i32 {
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
        println!("{}", pretty(&Value::Array(list)));
    } else if results.is_empty() {
        println!(
            "no {}notification channel configured (see [notify] in greenlight.example.toml)",
            only.map(|k| format!("{k} ")).unwrap_or_default()
        );
    } else {
        for r in &results {
            match &r.result {
                Ok(()) => println!("ok   {:<6} {} ({})", r.channel, r.destination, r.scope),
                Err(e) => println!("FAIL {:<6} {} ({}): {e}", r.channel, r.destination, r.scope),
            }
        }
    }
    if results.is_empty() {
        EXIT_USAGE
    } else if results.iter().all(|r| r.result.is_ok()) {
        0
    } else {
        EXIT_FAILED
    }
}

fn print_outcome(d: &Value) {
    let state = text(&d["state"]);
    let took = d["finished_at"].as_i64().unwrap_or(0) - d["created_at"].as_i64().unwrap_or(0);
    match state.as_str() {
        "succeeded" => println!(
            "deployment {} succeeded in {:.1}s: {} {} ({}) is live on {}",
            d["id"],
            took as f64 / 1000.0,
            text(&d["service"]),
            text(&d["tag"]),
            short_digest(&d["digest"]),
            text(&d["colour"])
        ),
        "already_live" => println!(
            "deployment {}: {} is already live; nothing to do",
            d["id"],
            short_digest(&d["digest"])
        ),
        _ => {
            println!(
                "deployment {} {} at {}: {}",
                d["id"],
                state,
                text(&d["failed_step"]),
                text(&d["error"])
            );
            if let Some(code) = d["exit_code"].as_i64() {
                println!("  container exit code: {code}");
            }
            if let Some(tail) = d["log_tail"].as_str() {
                println!("  last lines of the new container's log:");
                for line in tail.lines() {
                    println!("    | {line}");
                }
            }
        }
    }
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn short_digest(v: &Value) -> String {
    match v.as_str() {
        Some(d) => d.trim_start_matches("sha256:").chars().take(12).collect(),
        None => "-".into(),
    }
}

fn format_time(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Prints rows as left-aligned columns.
pub fn print_table(rows: &[Vec<String>]) {
    print!("{}", format_table(rows));
}

pub fn format_table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(i, cell)| format!("{cell:<w$}", w = widths[i]))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns() {
        let rows = vec![
            vec!["A".to_string(), "BB".into()],
            vec!["long".to_string(), "x".into()],
        ];
        assert_eq!(format_table(&rows), "A     BB\nlong  x\n");
    }

    #[test]
    fn notifications_are_summed_up_per_channel_by_their_latest_attempt() {
        let attempts = serde_json::json!([
            {"channel": "slack", "outcome": "failed"},
            {"channel": "email", "outcome": "sent"},
            {"channel": "slack", "outcome": "sent"},
        ]);
        assert_eq!(notified(&attempts), "email sent, slack sent(2)");
        let retrying = serde_json::json!([{"channel": "slack", "outcome": "failed"}]);
        assert_eq!(notified(&retrying), "slack retrying");
        assert_eq!(notified(&Value::Null), "-");
    }
}
