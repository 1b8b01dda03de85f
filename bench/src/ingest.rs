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
use hmac::{Hmac, KeyInit, Mac};
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

/// A unique GitHub-style delivery GUID, random-looking like GitHub's (UUIDv4):
/// consecutive deliveries land anywhere in greenlight's index of delivery ids,
/// as real ones do, instead of appending to it. Its last 60 bits come from a
/// bijection of `n`, so two ids of one run are all but certainly distinct.
fn guid(nonce: u64, n: u64) -> String {
    let hi = splitmix64(nonce ^ splitmix64(n));
    let lo = splitmix64(n);
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        (hi >> 32) as u32,
        (hi >> 16) as u16,
        hi & 0xfff,
        (lo >> 48) & 0xfff,
        lo & 0xffff_ffff_ffff
    )
}

/// SplitMix64's output function: a bijection on u64 that scatters its input.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// What each request of a load run is.
#[derive(Clone, Copy, PartialEq)]
enum Load {
    /// A plain `GET url`: the load tool's ceiling against a trivial endpoint.
    Get,
    /// A delivery signed with the configured secret.
    Signed,
    /// The same delivery with a forged signature: the server reads and verifies it,
    /// then refuses it (401) without parsing or storing anything.
    Forged,
}

impl Load {
    fn signature(self) -> String {
        match self {
            Load::Forged => format!("sha256={}", "0".repeat(64)),
            Load::Get | Load::Signed => sign(GITHUB_SECRET, PAYLOAD.as_bytes()),
        }
    }
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
    load: Load,
) -> LoadResult {
    let client = greenlight_testkit::http_builder()
        .pool_max_idle_per_host(concurrency)
        .timeout(Duration::from_secs(10))
        .build()
        .expect("http client");
    let signature = load.signature();
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
                let request = if load == Load::Get {
                    client.get(&url)
                } else {
                    client
                        .post(&url)
                        .header("Content-Type", "application/json")
                        .header("X-GitHub-Event", "package")
                        .header("X-GitHub-Delivery", guid(nonce, n))
                        .header("X-Hub-Signature-256", &signature)
                        .body(PAYLOAD)
                };
                let resp = request.send().await;
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
    let resp = greenlight_testkit::http()
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
function init(args)
  math.randomseed(nonce + tid)
end
function request()
  counter = counter + 1
  -- Random-looking like GitHub's GUIDs (see guid() in ingest.rs); unique by
  -- thread and counter.
  local id = string.format("%08x-%04x-4%03x-8%03x-%012x", math.random(0, 2147483647),
    tid, math.random(0, 4095), nonce % 4096, counter)
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
    /// CPU seconds wrk used (its rusage, as a waited-for child).
    cpu_s: f64,
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    requests: u64,
    errors: String,
}

/// CPU seconds of this process's waited-for children so far.
fn children_cpu_s() -> f64 {
    // SAFETY: getrusage fills the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// `wrk -t2 -c<c> -d<s>s --latency` with [`WRK_LUA`] (every delivery id unique), or a
/// plain GET for [`Load::Get`]; under `taskset -c cpus` when given.
fn wrk(
    url: &str,
    concurrency: usize,
    secs: u64,
    nonce: u32,
    load: Load,
    cpus: Option<&str>,
) -> Result<WrkResult> {
    let dir = tempfile::Builder::new().prefix("bench-wrk-").tempdir()?;
    let body = dir.path().join("body.json");
    std::fs::write(&body, PAYLOAD)?;
    let script = dir.path().join("github.lua");
    std::fs::write(&script, WRK_LUA)?;
    let mut command = match cpus {
        Some(cpus) => {
            let mut c = Command::new("taskset");
            c.args(["-c", cpus, "wrk"]);
            c
        }
        None => Command::new("wrk"),
    };
    command.args([
        "-t2",
        &format!("-c{concurrency}"),
        &format!("-d{secs}s"),
        "--latency",
    ]);
    if load != Load::Get {
        command.arg("-s").arg(&script);
    }
    let cpu0 = children_cpu_s();
    let output = command
        .arg(url)
        .env("BENCH_BODY", &body)
        .env("BENCH_SIG", load.signature())
        .env("BENCH_NONCE", (nonce & 0x7fff_ffff).to_string())
        .stdin(Stdio::null())
        .output()
        .context("cannot run wrk (apt-get install wrk)")?;
    let cpu_s = children_cpu_s() - cpu0;
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
        cpu_s,
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

/// Where the servers and the load tools run.
#[derive(Clone, Copy, PartialEq)]
enum Placement {
    /// Wherever the scheduler puts them (the issue's setup).
    Shared,
    /// The server (all its threads and children) on CPU 1, the load tool on CPU 0.
    Pinned,
}

impl Placement {
    fn label(self) -> &'static str {
        match self {
            Placement::Shared => "shared",
            Placement::Pinned => "pinned",
        }
    }
    fn server_cpus(self) -> &'static str {
        match self {
            Placement::Shared => "0-1023",
            Placement::Pinned => "1",
        }
    }
    fn load_cpus(self) -> Option<&'static str> {
        match self {
            Placement::Shared => None,
            Placement::Pinned => Some("0"),
        }
    }
}

/// `taskset -a -cp cpus pid`: every thread of a running process (its later threads
/// and children inherit it). A CPU list past the machine's is cut to what exists.
fn set_affinity(pid: u32, cpus: &str) -> Result<()> {
    let out = Command::new("taskset")
        .args(["-a", "-cp", cpus, &pid.to_string()])
        .output()
        .context("cannot run taskset (util-linux)")?;
    if !out.status.success() {
        bail!(
            "taskset {cpus} {pid}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

const GREENLIGHT: &str = "greenlight";
const WEBHOOK: &str = "webhook (adnanh)";
const CEILING: &str = "greenlight `GET /healthz` (ceiling)";
const REFUSED: &str = "greenlight, forged signature (401: read + verify only)";

/// One measured row of the table.
struct Row {
    placement: Placement,
    tool: &'static str,
    server: &'static str,
    ok: String,
    rps: f64,
    p50: f64,
    p99: f64,
    max: f64,
    errors: String,
    /// ms of CPU per request: the server's, the load tool's.
    server_cpu: Option<f64>,
    load_cpu: f64,
    rss: Option<String>,
}

fn rust_row(
    placement: Placement,
    server: &'static str,
    r: &LoadResult,
    server_cpu: Option<f64>,
    load_cpu_s: f64,
    rss: Option<String>,
) -> Row {
    let n = r.ok.max(1) as f64;
    Row {
        placement,
        tool: "Rust closed loop",
        server,
        ok: r.ok.to_string(),
        rps: r.rps(),
        p50: r.pct_ms(50.0),
        p99: r.pct_ms(99.0),
        max: r.pct_ms(100.0),
        errors: r.errors_text(),
        server_cpu: server_cpu.map(|c| c * 1000.0 / n),
        load_cpu: load_cpu_s * 1000.0 / n,
        rss,
    }
}

fn wrk_row(
    placement: Placement,
    server: &'static str,
    r: &WrkResult,
    server_cpu: Option<f64>,
    rss: Option<String>,
) -> Row {
    let n = r.requests.max(1) as f64;
    Row {
        placement,
        tool: "wrk -t2",
        server,
        ok: format!("{} (all statuses)", r.requests),
        rps: r.rps,
        p50: r.p50_ms,
        p99: r.p99_ms,
        max: r.max_ms,
        errors: r.errors.clone(),
        server_cpu: server_cpu.map(|c| c * 1000.0 / n),
        load_cpu: r.cpu_s * 1000.0 / n,
        rss,
    }
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
            extra: String::new(),
        }],
        "ghcr.io",
    );
    let wh_port = free_port();
    let webhook = Webhook::start(wh_port)?;
    let wh_pid = webhook.child.id();
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
    let me = std::process::id();

    let (wstatus, wbody) = one(&wh_url, "baseline-check").await?;
    eprintln!("webhook answers one delivery: {wstatus} {wbody}");
    if wstatus != 200 {
        bail!("webhook did not accept a signed delivery: {wstatus} {wbody}");
    }

    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let placements: &[Placement] = if cpus >= 2 {
        &[Placement::Shared, Placement::Pinned]
    } else {
        &[Placement::Shared]
    };
    let mut rows: Vec<Row> = Vec::new();
    let mut ledger_note = String::new();
    for &placement in placements {
        set_affinity(wh_pid, placement.server_cpus())?;
        // This process runs the Rust client; wrk is started under taskset.
        set_affinity(me, placement.load_cpus().unwrap_or("0-1023"))?;
        for tool in ["rust", "wrk"] {
            let p = placement.label();
            // Each load tool gets a fresh greenlight (empty ledger), so no run inherits
            // another's database.
            let glp = Greenlight::spawn(binary, free_port(), &config, None)?;
            set_affinity(glp.pid(), placement.server_cpus())?;
            let gl_url = format!("{}/hooks/github", glp.url());
            let healthz = format!("{}/healthz", glp.url());
            let (status, body) = one(&gl_url, &guid(nonce, u64::MAX >> 16)).await?;
            if status != 202 || !body.contains("ignored") {
                bail!("greenlight did not answer 202 ignored: {status} {body}");
            }
            let wrk_nonce = (nonce as u32) ^ rows.len() as u32;
            if tool == "rust" {
                eprintln!("ingest ({p}): Rust client, /healthz, greenlight, webhook ...");
                let _ =
                    closed_loop(&healthz, c, warm, 200, counter.clone(), nonce, Load::Get).await;
                let (cpu0, me0) = (cpu_s(glp.pid()), cpu_s(me));
                let h = closed_loop(&healthz, c, dur, 200, counter.clone(), nonce, Load::Get).await;
                let (h_cpu, h_me) = (cpu_s(glp.pid()) - cpu0, cpu_s(me) - me0);
                rows.push(rust_row(placement, CEILING, &h, Some(h_cpu), h_me, None));

                let _ =
                    closed_loop(&gl_url, c, warm, 202, counter.clone(), nonce, Load::Signed).await;
                let rss_before = gl::rss_kib(glp.pid()).map(|r| r.0).unwrap_or(0);
                let (cpu0, me0) = (cpu_s(glp.pid()), cpu_s(me));
                let sampler = RssSampler::start(glp.pid());
                let g =
                    closed_loop(&gl_url, c, dur, 202, counter.clone(), nonce, Load::Signed).await;
                let (rss_max, hwm) = sampler.stop();
                let (g_cpu, g_me) = (cpu_s(glp.pid()) - cpu0, cpu_s(me) - me0);
                rows.push(rust_row(
                    placement,
                    GREENLIGHT,
                    &g,
                    Some(g_cpu),
                    g_me,
                    Some(format!(
                        "{:.1} (sampled max; VmHWM {:.1}, before {:.1})",
                        gl::mib(rss_max),
                        gl::mib(hwm),
                        gl::mib(rss_before)
                    )),
                ));
                if ledger_note.is_empty() {
                    ledger_note = ledger_check(&glp, g.ok).await?;
                }
                let (cpu0, me0) = (cpu_s(glp.pid()), cpu_s(me));
                let f =
                    closed_loop(&gl_url, c, dur, 401, counter.clone(), nonce, Load::Forged).await;
                let (f_cpu, f_me) = (cpu_s(glp.pid()) - cpu0, cpu_s(me) - me0);
                rows.push(rust_row(placement, REFUSED, &f, Some(f_cpu), f_me, None));
                drop(glp);

                let _ =
                    closed_loop(&wh_url, c, warm, 200, counter.clone(), nonce, Load::Signed).await;
                let (cpu0, me0) = (cpu_s(wh_pid), cpu_s(me));
                let w =
                    closed_loop(&wh_url, c, dur, 200, counter.clone(), nonce, Load::Signed).await;
                let (w_cpu, w_me) = (cpu_s(wh_pid) - cpu0, cpu_s(me) - me0);
                rows.push(rust_row(placement, WEBHOOK, &w, Some(w_cpu), w_me, None));
            } else {
                eprintln!("ingest ({p}): wrk, /healthz, greenlight, webhook ...");
                let load = placement.load_cpus();
                let cpu0 = cpu_s(glp.pid());
                let h = wrk(&healthz, c, opts.duration, wrk_nonce, Load::Get, load)?;
                let h_cpu = cpu_s(glp.pid()) - cpu0;
                rows.push(wrk_row(placement, CEILING, &h, Some(h_cpu), None));

                let _ =
                    closed_loop(&gl_url, c, warm, 202, counter.clone(), nonce, Load::Signed).await;
                let cpu0 = cpu_s(glp.pid());
                let sampler = RssSampler::start(glp.pid());
                let g = wrk(
                    &gl_url,
                    c,
                    opts.duration,
                    wrk_nonce ^ 0x5a5a,
                    Load::Signed,
                    load,
                )?;
                let (rss_max, hwm) = sampler.stop();
                let g_cpu = cpu_s(glp.pid()) - cpu0;
                rows.push(wrk_row(
                    placement,
                    GREENLIGHT,
                    &g,
                    Some(g_cpu),
                    Some(format!(
                        "{:.1} (VmHWM {:.1})",
                        gl::mib(rss_max),
                        gl::mib(hwm)
                    )),
                ));
                let cpu0 = cpu_s(glp.pid());
                let f = wrk(&gl_url, c, opts.duration, wrk_nonce, Load::Forged, load)?;
                let f_cpu = cpu_s(glp.pid()) - cpu0;
                rows.push(wrk_row(placement, REFUSED, &f, Some(f_cpu), None));
                drop(glp);

                let cpu0 = cpu_s(wh_pid);
                let w = wrk(
                    &wh_url,
                    c,
                    opts.duration,
                    wrk_nonce ^ 0xa5a5,
                    Load::Signed,
                    load,
                )?;
                let w_cpu = cpu_s(wh_pid) - cpu0;
                rows.push(wrk_row(placement, WEBHOOK, &w, Some(w_cpu), None));
            }
        }
    }
    set_affinity(me, "0-1023")?;
    drop(webhook);
    report(out, opts, &rows, &ledger_note);
    Ok(())
}

/// The ledger really holds the deliveries: the latest read back through the admin
/// API, and the size of the database.
async fn ledger_check(glp: &Greenlight, delivered: u64) -> Result<String> {
    let api = |path: String| async move {
        greenlight_testkit::http()
            .get(format!("{}/api/{path}", glp.url()))
            .bearer_auth(gl::TOKEN)
            .send()
            .await?
            .json::<serde_json::Value>()
            .await
    };
    let ledger = api("deliveries?limit=3".into()).await?;
    let ignored = ledger
        .as_array()
        .map(|list| {
            list.iter()
                .filter(|d| d.to_string().contains("ignored"))
                .count()
        })
        .unwrap_or(0);
    // The newest delivery's body, read back through the API, is the payload sent.
    let newest = ledger
        .as_array()
        .and_then(|list| list.first())
        .and_then(|d| d["delivery_id"].as_str())
        .unwrap_or_default()
        .to_string();
    let one = api(format!("deliveries/{newest}")).await?;
    let body_intact = one["body"].as_str() == Some(PAYLOAD);
    let dir = glp.dir.path();
    let bytes: u64 = ["state.db", "state.db-wal"]
        .iter()
        .filter_map(|f| std::fs::metadata(dir.join(f)).ok())
        .map(|m| m.len())
        .sum();
    Ok(format!(
        "Ledger check: the latest deliveries read back `ignored` ({ignored} of 3); the newest \
         one's body read back {}. greenlight's state.db (with its WAL) after the first \
         Rust-client run: {:.0} MiB for {delivered} deliveries ({:.1} KiB each; each 11.3 KiB \
         body is kept, LZ4-compressed).",
        if body_intact {
            "byte for byte"
        } else {
            "**different from the payload sent**"
        },
        bytes as f64 / 1048576.0,
        bytes as f64 / 1024.0 / delivered.max(1) as f64,
    ))
}

fn report(out: &mut String, opts: &Opts, rows: &[Row], ledger_note: &str) {
    let c = opts.concurrency;
    let _ = writeln!(
        out,
        "\n### Webhook ingestion\n\nSigned GitHub `package` deliveries (the fixture \
         `tests/fixtures/webhooks/github-package-published.json`, {} bytes, `X-Hub-Signature-256` \
         HMAC-SHA256, a unique `X-GitHub-Delivery` GUID per request), {c} keep-alive connections, \
         {}s per server and load tool after a 1 s warm-up: a Rust closed-loop client \
         (reqwest, in this process) and `wrk -t2` with a Lua script. Each load tool gets a fresh \
         greenlight (empty SQLite state). greenlight: each delivery verified, parsed, matched \
         (the fixture's `ghcr.io/theryangeary/www` matches no configured service, so every delivery \
         is recorded in the ledger as `ignored` and no deploy runs), answered 202 after its ledger \
         row is committed; default log level (`info`, one line per delivery). {}: one hook with a \
         `payload-hmac-sha256` trigger rule on the same secret, runs `/bin/true`, answered 200 (a \
         rule mismatch would answer 401 and count as an error). The ceiling rows are the same load \
         tool sending `GET /healthz` to greenlight: no server does less per request, so no ratio \
         can beat ceiling / webhook. The forged-signature rows send the same deliveries with a \
         wrong signature: greenlight reads each body and verifies it, answers 401 and stores \
         nothing, so they bound what any server that also parses and durably records a delivery \
         can do on this machine. Placement `shared`: the scheduler places everything on the \
         machine's CPUs (the issue's setup); `pinned`: the server (all threads and children) on \
         CPU 1, the load tool on CPU 0 (`taskset`). CPU ms per request: utime+stime over the \
         measured window (the server's includes its children, e.g. webhook's `/bin/true`; the Rust \
         client's is this process's).\n",
        PAYLOAD.len(),
        opts.duration,
        webhook_version()
    );
    let _ = writeln!(
        out,
        "| placement | load tool | server | ok responses | requests/s | p50 ms | p99 ms | max ms | errors | server CPU ms/req | load tool CPU ms/req | greenlight peak RSS MiB |\n|---|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|"
    );
    for r in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {} | {} | {:.3} | {} |",
            r.placement.label(),
            r.tool,
            r.server,
            r.ok,
            r.rps,
            r.p50,
            r.p99,
            r.max,
            r.errors,
            r.server_cpu.map_or("-".into(), |v| format!("{v:.3}")),
            r.load_cpu,
            r.rss.as_deref().unwrap_or("-"),
        );
    }
    let find = |p: Placement, tool: &str, server: &str| {
        rows.iter()
            .find(|r| r.placement == p && r.tool == tool && r.server == server)
    };
    let met = |b: bool| if b { "met" } else { "**missed**" };
    let _ = writeln!(out);
    for p in [Placement::Shared, Placement::Pinned] {
        let mut parts = Vec::new();
        let mut best_ratio: f64 = 0.0;
        let mut worst_p99: f64 = 0.0;
        for tool in ["Rust closed loop", "wrk -t2"] {
            let (Some(g), Some(w), Some(h), Some(f)) = (
                find(p, tool, GREENLIGHT),
                find(p, tool, WEBHOOK),
                find(p, tool, CEILING),
                find(p, tool, REFUSED),
            ) else {
                continue;
            };
            let ratio = g.rps / w.rps;
            best_ratio = best_ratio.max(ratio);
            worst_p99 = worst_p99.max(g.p99);
            let cpu_ratio = match (w.server_cpu, g.server_cpu) {
                (Some(wc), Some(gc)) if gc > 0.0 => format!("{:.1}x", wc / gc),
                _ => "-".into(),
            };
            parts.push(format!(
                "{tool}: **{ratio:.2}x** webhook's requests/s (greenlight p99 {:.2} ms); the load \
                 tool's ceiling is {:.0} req/s = {:.1}x webhook; reading and verifying alone \
                 (forged signature) {:.0} req/s = {:.1}x webhook; webhook spends {cpu_ratio} the \
                 server CPU per request greenlight does",
                g.p99,
                h.rps,
                h.rps / w.rps,
                f.rps,
                f.rps / w.rps
            ));
        }
        if parts.is_empty() {
            continue;
        }
        let _ = writeln!(
            out,
            "Placement {}: {}. Target >= 10x: {}; p99 < 10 ms: {}.\n",
            p.label(),
            parts.join("; "),
            met(best_ratio >= 10.0),
            met(worst_p99 < 10.0)
        );
    }
    let peak_rss = rows
        .iter()
        .filter_map(|r| r.rss.as_deref())
        .filter_map(|t| {
            t.split(|c: char| !(c.is_ascii_digit() || c == '.'))
                .filter_map(|x| x.parse::<f64>().ok())
                .reduce(f64::max)
        })
        .fold(0.0, f64::max);
    let _ = writeln!(
        out,
        "greenlight peak RSS {peak_rss:.1} MiB (target < 40 MB: {}). {ledger_note}",
        met(peak_rss * 1.048_576 < 40.0)
    );
}
