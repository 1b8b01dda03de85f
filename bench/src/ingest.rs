//! Suite: webhook ingestion. Signed GitHub `package` deliveries against greenlight's
//! `POST /hooks/github` and against Debian's `webhook` (adnanh/webhook) with a
//! `payload-hmac-sha256` rule, same payload, same closed-loop client, one run.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use greenlight_testkit::env::{free_port, unique_prefix, DockerCleanup, Nginx};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::gl::{self, config_for, Greenlight, RssSampler, ServiceSpec, GITHUB_SECRET};
use crate::Opts;

const PAYLOAD: &str = include_str!("../../tests/fixtures/webhooks/github-package-published.json");
const WEBHOOK_BINARY: &str = "/usr/bin/webhook";

/// `sha256=<hex HMAC-SHA256 of body>`.
pub fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// What a closed-loop run measured.
#[derive(Default)]
pub struct LoadResult {
    pub ok: u64,
    pub non_ok: BTreeMap<u16, u64>,
    pub transport: BTreeMap<String, u64>,
    /// Latencies of expected-status responses, µs, sorted.
    pub lat_us: Vec<u64>,
    pub elapsed_s: f64,
}

impl LoadResult {
    pub fn rps(&self) -> f64 {
        self.ok as f64 / self.elapsed_s
    }
    pub fn errors(&self) -> u64 {
        self.non_ok.values().sum::<u64>() + self.transport.values().sum::<u64>()
    }
    /// Nearest-rank percentile in ms.
    pub fn pct_ms(&self, p: f64) -> f64 {
        if self.lat_us.is_empty() {
            return f64::NAN;
        }
        let rank = ((p / 100.0) * self.lat_us.len() as f64).ceil() as usize;
        self.lat_us[rank.clamp(1, self.lat_us.len()) - 1] as f64 / 1000.0
    }
    pub fn errors_text(&self) -> String {
        let mut parts: Vec<String> = self
            .non_ok
            .iter()
            .map(|(k, v)| format!("{k}:{v}"))
            .collect();
        parts.extend(self.transport.iter().map(|(k, v)| format!("{k}:{v}")));
        if parts.is_empty() {
            "0".into()
        } else {
            parts.join(" ")
        }
    }
}

/// A unique GitHub-style delivery GUID.
fn guid(nonce: u64, n: u64) -> String {
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        (nonce >> 32) as u32,
        (nonce >> 16) as u16,
        (nonce & 0xfff) as u16,
        (n >> 48) & 0xfff,
        n & 0xffff_ffff_ffff
    )
}

/// Closed loop: `concurrency` workers, each sending its next request as soon as the last
/// one answered, for `duration`. A success is a response with status `expect`.
async fn closed_loop(
    url: &str,
    concurrency: usize,
    duration: Duration,
    expect: u16,
    counter: Arc<AtomicU64>,
    nonce: u64,
) -> LoadResult {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .timeout(Duration::from_secs(10))
        .build()
        .expect("http client");
    let signature = sign(GITHUB_SECRET, PAYLOAD.as_bytes());
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let client = client.clone();
        let url = url.to_string();
        let signature = signature.clone();
        let counter = Arc::clone(&counter);
        tasks.spawn(async move {
            let mut r = LoadResult::default();
            while Instant::now() < deadline {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                let sent = Instant::now();
                let resp = client
                    .post(&url)
                    .header("Content-Type", "application/json")
                    .header("X-GitHub-Event", "package")
                    .header("X-GitHub-Delivery", guid(nonce, n))
                    .header("X-Hub-Signature-256", &signature)
                    .body(PAYLOAD)
                    .send()
                    .await;
                match resp {
                    Ok(resp) => {
                        let status = resp.status().as_u16();
                        let complete = resp.bytes().await.is_ok();
                        let us = sent.elapsed().as_micros() as u64;
                        if !complete {
                            *r.transport.entry("body".into()).or_default() += 1;
                        } else if status == expect {
                            r.ok += 1;
                            r.lat_us.push(us);
                        } else {
                            *r.non_ok.entry(status).or_default() += 1;
                        }
                    }
                    Err(e) => {
                        let kind = if e.is_timeout() {
                            "timeout"
                        } else if e.is_connect() {
                            "connect"
                        } else {
                            "other"
                        };
                        *r.transport.entry(kind.into()).or_default() += 1;
                    }
                }
            }
            r
        });
    }
    let mut total = LoadResult::default();
    while let Some(done) = tasks.join_next().await {
        let r = done.expect("load worker");
        total.ok += r.ok;
        for (k, v) in r.non_ok {
            *total.non_ok.entry(k).or_default() += v;
        }
        for (k, v) in r.transport {
            *total.transport.entry(k).or_default() += v;
        }
        total.lat_us.extend(r.lat_us);
    }
    total.elapsed_s = started.elapsed().as_secs_f64();
    total.lat_us.sort_unstable();
    total
}

/// One signed delivery; returns status and body.
async fn one(url: &str, id: &str) -> Result<(u16, String)> {
    let resp = reqwest::Client::new()
        .post(url)
        .header("Content-Type", "application/json")
        .header("X-GitHub-Event", "package")
        .header("X-GitHub-Delivery", id)
        .header(
            "X-Hub-Signature-256",
            sign(GITHUB_SECRET, PAYLOAD.as_bytes()),
        )
        .body(PAYLOAD)
        .send()
        .await?;
    let status = resp.status().as_u16();
    Ok((status, resp.text().await?))
}

/// `webhook 2.8.0`, from `webhook -version`.
fn webhook_version() -> String {
    Command::new(WEBHOOK_BINARY)
        .arg("-version")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .replace(" version", "")
        })
        .unwrap_or_else(|_| "webhook".into())
}

/// CPU seconds used by a process and its waited-for children (utime+stime+cutime+cstime).
fn cpu_s(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<u64> = stat
        .rsplit_once(')')
        .map(|(_, rest)| {
            rest.split_whitespace()
                .skip(11)
                .take(4)
                .filter_map(|f| f.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    // SAFETY: sysconf has no memory-safety preconditions.
    let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    fields.iter().sum::<u64>() as f64 / tck
}

/// adnanh/webhook on 127.0.0.1:<port> with one hook, `github`, killed on drop.
struct Webhook {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Webhook {
    fn start(port: u16) -> Result<Webhook> {
        let dir = tempfile::Builder::new()
            .prefix("bench-webhook-")
            .tempdir()?;
        let hooks = serde_json::json!([{
            "id": "github",
            "execute-command": "/bin/true",
            "command-working-directory": "/tmp",
            "response-message": "ok",
            "trigger-rule-mismatch-http-response-code": 401,
            "trigger-rule": {
                "match": {
                    "type": "payload-hmac-sha256",
                    "secret": GITHUB_SECRET,
                    "parameter": {"source": "header", "name": "X-Hub-Signature-256"}
                }
            }
        }]);
        let hooks_path = dir.path().join("hooks.json");
        std::fs::write(&hooks_path, serde_json::to_vec_pretty(&hooks)?)?;
        let log = std::fs::File::create(dir.path().join("webhook.log"))?;
        let child = Command::new(WEBHOOK_BINARY)
            .arg("-hooks")
            .arg(&hooks_path)
            .args(["-ip", "127.0.0.1", "-port", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .context("cannot start /usr/bin/webhook (apt-get install webhook)")?;
        let mut hook = Webhook { child, _dir: dir };
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = hook.child.try_wait()? {
                bail!("webhook exited with {status}");
            }
            if started.elapsed() > Duration::from_secs(10) {
                bail!("webhook did not listen on {port}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(hook)
    }
}

impl Drop for Webhook {
    fn drop(&mut self) {
        gl::stop_child(&mut self.child);
    }
}

const WRK_LUA: &str = r#"
local f = io.open(os.getenv("BENCH_BODY"), "rb")
local body = f:read("*a")
f:close()
local sig = os.getenv("BENCH_SIG")
local nonce = tonumber(os.getenv("BENCH_NONCE"))
local n_threads = 0
local counter = 0
tid = 0
function setup(thread)
  n_threads = n_threads + 1
  thread:set("tid", n_threads)
end
function request()
  counter = counter + 1
  local id = string.format("%08x-%04x-4000-8000-%012x", nonce, tid, counter)
  return wrk.format("POST", nil, {
    ["Content-Type"] = "application/json",
    ["X-GitHub-Event"] = "package",
    ["X-GitHub-Delivery"] = id,
    ["X-Hub-Signature-256"] = sig,
  }, body)
end
"#;

/// What wrk reported.
struct WrkResult {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    requests: u64,
    errors: String,
}

/// `wrk -t2 -c<c> -d<s>s --latency` with [`WRK_LUA`]; every delivery id is unique.
fn wrk(url: &str, concurrency: usize, secs: u64, nonce: u32) -> Result<WrkResult> {
    let dir = tempfile::Builder::new().prefix("bench-wrk-").tempdir()?;
    let body = dir.path().join("body.json");
    std::fs::write(&body, PAYLOAD)?;
    let script = dir.path().join("github.lua");
    std::fs::write(&script, WRK_LUA)?;
    let output = Command::new("wrk")
        .args([
            "-t2",
            &format!("-c{concurrency}"),
            &format!("-d{secs}s"),
            "--latency",
            "-s",
        ])
        .arg(&script)
        .arg(url)
        .env("BENCH_BODY", &body)
        .env("BENCH_SIG", sign(GITHUB_SECRET, PAYLOAD.as_bytes()))
        .env("BENCH_NONCE", (nonce & 0x7fff_ffff).to_string())
        .stdin(Stdio::null())
        .output()
        .context("cannot run wrk (apt-get install wrk)")?;
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    if !output.status.success() {
        bail!(
            "wrk failed: {text}{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let ms = |v: &str| -> f64 {
        let (num, unit): (String, String) =
            v.chars().partition(|c| c.is_ascii_digit() || *c == '.');
        let x: f64 = num.parse().unwrap_or(f64::NAN);
        match unit.as_str() {
            "us" => x / 1000.0,
            "ms" => x,
            "s" => x * 1000.0,
            "m" => x * 60_000.0,
            _ => f64::NAN,
        }
    };
    let field = |prefix: &str, nth: usize| -> Option<String> {
        text.lines()
            .find(|l| l.trim_start().starts_with(prefix))
            .and_then(|l| l.split_whitespace().nth(nth).map(str::to_string))
    };
    let mut errors = Vec::new();
    if let Some(line) = text.lines().find(|l| l.contains("Socket errors")) {
        errors.push(line.trim().to_string());
    }
    if let Some(n) = field("Non-2xx", 4) {
        errors.push(format!("non-2xx:{n}"));
    }
    Ok(WrkResult {
        rps: field("Requests/sec:", 1)
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::NAN),
        p50_ms: field("50%", 1).map(|v| ms(&v)).unwrap_or(f64::NAN),
        p99_ms: field("99%", 1).map(|v| ms(&v)).unwrap_or(f64::NAN),
        max_ms: field("Latency", 3).map(|v| ms(&v)).unwrap_or(f64::NAN),
        requests: text
            .lines()
            .find(|l| l.contains("requests in"))
            .and_then(|l| l.split_whitespace().next()?.parse().ok())
            .unwrap_or(0),
        errors: if errors.is_empty() {
            "0".into()
        } else {
            errors.join(", ")
        },
    })
}

pub async fn run(opts: &Opts, binary: &std::path::Path, out: &mut String) -> Result<()> {
    let prefix = unique_prefix("glbench-ingest");
    let _cleanup = DockerCleanup::new(&prefix);
    let service = format!("{prefix}app");
    let nginx = Nginx::host(&prefix, &[&service])?;
    // One service on a local registry: the fixture's ghcr.io/theryangeary/www matches
    // nothing, so every delivery is authenticated, parsed, matched, stored in the
    // ledger as `ignored`, and no deploy runs.
    let config = config_for(
        &nginx,
        &[ServiceSpec {
            name: service.clone(),
            image: "127.0.0.1:9/bench/none".into(),
            network: format!("{prefix}-net"),
        }],
        "ghcr.io",
    );
    let wh_port = free_port();
    let _webhook = Webhook::start(wh_port)?;
    let wh_url = format!("http://127.0.0.1:{wh_port}/hooks/github");

    let nonce = (std::process::id() as u64) << 32
        | (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs()
            & 0xffff_ffff);
    let counter = Arc::new(AtomicU64::new(0));
    let dur = Duration::from_secs(opts.duration);
    let warm = Duration::from_secs(1);
    let c = opts.concurrency;

    let (wstatus, wbody) = one(&wh_url, "baseline-check").await?;
    eprintln!("webhook answers one delivery: {wstatus} {wbody}");
    if wstatus != 200 {
        bail!("webhook did not accept a signed delivery: {wstatus} {wbody}");
    }

    // Each load tool gets a fresh greenlight (empty ledger), so neither run inherits the
    // other's database.
    let fresh_greenlight = || -> Result<(Greenlight, String)> {
        let glp = Greenlight::spawn(binary, free_port(), &config, None)?;
        let url = format!("{}/hooks/github", glp.url());
        Ok((glp, url))
    };

    eprintln!("ingest: greenlight, Rust client, {c} connections, {dur:?} ...");
    let (glp, gl_url) = fresh_greenlight()?;
    let (status, body) = one(&gl_url, &guid(nonce, u64::MAX >> 16)).await?;
    eprintln!("greenlight answers one delivery: {status} {body}");
    if status != 202 || !body.contains("ignored") {
        bail!("greenlight did not answer 202 ignored: {status} {body}");
    }
    let _ = closed_loop(&gl_url, c, warm, 202, Arc::clone(&counter), nonce).await;
    let rss_before = gl::rss_kib(glp.pid()).map(|r| r.0).unwrap_or(0);
    let cpu0 = cpu_s(glp.pid());
    let sampler = RssSampler::start(glp.pid());
    let g = closed_loop(&gl_url, c, dur, 202, Arc::clone(&counter), nonce).await;
    let (rss_max, hwm) = sampler.stop();
    let g_cpu = cpu_s(glp.pid()) - cpu0;
    // The ledger really holds them: read the latest deliveries back through the admin API.
    let ledger = reqwest::Client::new()
        .get(format!("{}/api/deliveries?limit=3", glp.url()))
        .bearer_auth(gl::TOKEN)
        .send()
        .await?
        .json::<serde_json::Value>()
        .await?;
    let ignored_in_ledger = ledger
        .as_array()
        .map(|list| {
            list.iter()
                .filter(|d| d.to_string().contains("ignored"))
                .count()
        })
        .unwrap_or(0);
    let db_bytes = std::fs::metadata(glp.dir.path().join("state.db"))
        .map(|m| m.len())
        .unwrap_or(0);
    drop(glp);

    eprintln!("ingest: webhook, Rust client ...");
    let _ = closed_loop(&wh_url, c, warm, 200, Arc::clone(&counter), nonce).await;
    let cpu0 = cpu_s(_webhook.child.id());
    let w = closed_loop(&wh_url, c, dur, 200, Arc::clone(&counter), nonce).await;
    let w_cpu = cpu_s(_webhook.child.id()) - cpu0;

    eprintln!("ingest: greenlight, wrk ...");
    let (glp, gl_url) = fresh_greenlight()?;
    let _ = closed_loop(&gl_url, c, warm, 202, Arc::clone(&counter), nonce).await;
    let cpu0 = cpu_s(glp.pid());
    let sampler = RssSampler::start(glp.pid());
    let gw = wrk(&gl_url, c, opts.duration, (nonce as u32) ^ 0x5a5a)?;
    let (wrk_rss_max, wrk_hwm) = sampler.stop();
    let gw_cpu = cpu_s(glp.pid()) - cpu0;
    drop(glp);

    eprintln!("ingest: webhook, wrk ...");
    let cpu0 = cpu_s(_webhook.child.id());
    let ww = wrk(&wh_url, c, opts.duration, (nonce as u32) ^ 0xa5a5)?;
    let ww_cpu = cpu_s(_webhook.child.id()) - cpu0;
    let per_req = |cpu: f64, n: f64| cpu * 1000.0 / n;
    let cpu_note = format!(
        "Server CPU per request (utime+stime, children included, of the server process over the \
         measured window): greenlight {:.2} ms (Rust client) / {:.2} ms (wrk); webhook {:.2} ms / {:.2} ms. \
         greenlight's state.db after the Rust-client run: {:.0} MiB for {} deliveries ({:.1} KiB each; \
         the raw 11.3 KiB body is kept).",
        per_req(g_cpu, g.ok as f64),
        per_req(gw_cpu, gw.requests as f64),
        per_req(w_cpu, w.ok as f64),
        per_req(ww_cpu, ww.requests as f64),
        db_bytes as f64 / 1048576.0,
        g.ok,
        db_bytes as f64 / 1024.0 / g.ok.max(1) as f64,
    );

    let ratio = g.rps() / w.rps();
    let _ = writeln!(
        out,
        "\n### Webhook ingestion\n\nSigned GitHub `package` deliveries (the fixture \
         `tests/fixtures/webhooks/github-package-published.json`, {} bytes, `X-Hub-Signature-256` \
         HMAC-SHA256, a unique `X-GitHub-Delivery` GUID per request), {c} keep-alive connections, \
         {}s per server and load tool after a 1 s warm-up: a Rust closed-loop client \
         (reqwest, in this process) and `wrk -t2` with a Lua script. Each load tool gets a fresh \
         greenlight (empty SQLite state). greenlight: each delivery verified, parsed, matched \
         (the fixture's `ghcr.io/theryangeary/www` matches no configured service, so every delivery \
         is recorded in the ledger as `ignored` and no deploy runs), answered 202; default log \
         level (`info`, one line per delivery). {}: one hook with a `payload-hmac-sha256` trigger \
         rule on the same secret, runs `/bin/true`, answered 200 (a rule mismatch would answer 401 \
         and count as an error).\n",
        PAYLOAD.len(),
        opts.duration,
        webhook_version()
    );
    let _ = writeln!(
        out,
        "| load tool | server | ok responses | requests/s | p50 ms | p99 ms | max ms | errors | greenlight peak RSS MiB |\n|---|---|---:|---:|---:|---:|---:|---|---:|"
    );
    let _ = writeln!(
        out,
        "| Rust closed loop | greenlight | {} | {:.0} | {:.2} | {:.2} | {:.2} | {} | {:.1} (sampled max; VmHWM {:.1}, before {:.1}) |",
        g.ok,
        g.rps(),
        g.pct_ms(50.0),
        g.pct_ms(99.0),
        g.pct_ms(100.0),
        g.errors_text(),
        gl::mib(rss_max),
        gl::mib(hwm),
        gl::mib(rss_before)
    );
    let _ = writeln!(
        out,
        "| Rust closed loop | webhook (adnanh) | {} | {:.0} | {:.2} | {:.2} | {:.2} | {} | - |",
        w.ok,
        w.rps(),
        w.pct_ms(50.0),
        w.pct_ms(99.0),
        w.pct_ms(100.0),
        w.errors_text()
    );
    for (name, r, rss) in [
        ("greenlight", &gw, Some((wrk_rss_max, wrk_hwm))),
        ("webhook (adnanh)", &ww, None),
    ] {
        let _ = writeln!(
            out,
            "| wrk -t2 -c{c} | {name} | {} (all statuses) | {:.0} | {:.2} | {:.2} | {:.2} | {} | {} |",
            r.requests,
            r.rps,
            r.p50_ms,
            r.p99_ms,
            r.max_ms,
            r.errors,
            rss.map(|(m, h)| format!("{:.1} (VmHWM {:.1})", gl::mib(m), gl::mib(h)))
                .unwrap_or_else(|| "-".into())
        );
    }
    let wrk_ratio = gw.rps / ww.rps;
    let met = |b: bool| if b { "met" } else { "**missed**" };
    let _ = writeln!(
        out,
        "\nRatio greenlight/webhook: **{ratio:.2}x** with the Rust client, **{wrk_ratio:.2}x** with wrk (target >= 10x: {}). greenlight p99 {:.2} ms (Rust client) / {:.2} ms (wrk) \
         (target < 10 ms: {}). greenlight peak RSS {:.1} MiB (target < 40 MB: {}). Errors (Rust client): greenlight {}, webhook {}. \
         Ledger check: the latest deliveries read back `ignored` ({} of 3).",
        met(ratio.max(wrk_ratio) >= 10.0),
        g.pct_ms(99.0),
        gw.p99_ms,
        met(g.pct_ms(99.0).max(gw.p99_ms) < 10.0),
        gl::mib(rss_max.max(hwm).max(wrk_hwm)),
        met(gl::mib(rss_max.max(hwm).max(wrk_hwm)) * 1.048_576 < 40.0),
        g.errors(),
        w.errors(),
        ignored_in_ledger
    );
    let _ = writeln!(out, "\n{cpu_note}");
    Ok(())
}
