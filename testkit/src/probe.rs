//! Open-model, constant-rate HTTP load probe.
//!
//! The probe proves "zero failed requests" while a service behind nginx is switched between
//! versions. It is an *open* model: request `i` is scheduled at `start + i / rate` and is sent at
//! that time whether or not earlier requests have finished (one task per request). Latency is
//! measured from the **scheduled** time, so a stalled scheduler or server cannot hide behind
//! coordinated omission.
//!
//! The probe runs on its own OS thread with its own two-worker tokio runtime, so a test that
//! blocks its own runtime (docker CLI calls, `std::thread::sleep`, ...) cannot make the probe
//! fall behind, and [`Probe::start`] works from sync and async code alike.
//!
//! Request mix (deterministic by request index, low-discrepancy so every prefix of the run has
//! the configured proportions):
//! - `slow_ratio` of all requests: `/slow?ms=<slow_ms>`, as POST with a JSON body for a
//!   `post_ratio` share of them, as GET otherwise;
//! - `post_ratio` of all requests: `POST /echo` with a small JSON body;
//! - the rest: `GET /`.
//!
//! ```no_run
//! # async fn demo() {
//! use greenlight_testkit::probe::{Probe, ProbeOpts};
//! use std::time::Duration;
//!
//! let probe = Probe::start(ProbeOpts { base_url: "http://127.0.0.1:8080".into(), ..Default::default() });
//! assert!(probe.wait_for_version("v1", Duration::from_secs(10)).await);
//! // ... switch the service to v2 ...
//! assert!(probe.wait_for_version("v2", Duration::from_secs(60)).await);
//! let report = probe.stop().await;
//! println!("{}", report.summary());
//! assert_eq!(report.failed(), 0);
//! assert_eq!(report.flips(), 1);
//! # }
//! ```

use std::collections::BTreeMap;
use std::error::Error as _;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue, CONNECTION, CONTENT_TYPE};
use reqwest::{Client, Method, Url};
use serde::Serialize;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// A send that leaves the scheduler more than this after its scheduled time counts as late.
pub const LATE_THRESHOLD: Duration = Duration::from_millis(50);

/// After scheduling stops, in-flight requests get `timeout + STOP_GRACE` to finish; whatever is
/// still running then is abandoned and counted as a `"timeout"` transport error.
pub const STOP_GRACE: Duration = Duration::from_secs(1);

/// Transport error kind: the TCP connection could not be established.
pub const ERR_CONNECT: &str = "connect";
/// Transport error kind: no complete response within [`ProbeOpts::timeout`].
pub const ERR_TIMEOUT: &str = "timeout";
/// Transport error kind: the connection was closed (or reset) before a complete response
/// arrived, e.g. the keep-alive race where the server closes an idle connection just as the
/// client reuses it ("connection closed before message completed", incomplete message,
/// connection reset, broken pipe).
pub const ERR_CLOSED: &str = "closed_before_response";
/// Transport error kind: anything else.
pub const ERR_OTHER: &str = "other";

/// Response header carrying the version of the service that answered.
pub const VERSION_HEADER: &str = "x-demo-version";
/// Response header carrying the colour (blue/green slot) that answered.
pub const COLOUR_HEADER: &str = "x-demo-colour";

/// Version label used for 2xx responses without an `X-Demo-Version` header.
pub const UNKNOWN_VERSION: &str = "unknown";

/// Probe configuration. See the field docs for defaults.
#[derive(Debug, Clone)]
pub struct ProbeOpts {
    /// Base URL, e.g. `http://127.0.0.1:8080` (a trailing `/` is ignored).
    pub base_url: String,
    /// Requests per second (default 100; 0 is treated as 1).
    pub rate: u32,
    /// Share of requests that are `POST /echo` with a small JSON body (default 0.3).
    pub post_ratio: f64,
    /// Share of requests that are `/slow?ms=<slow_ms>` (default 0.1).
    pub slow_ratio: f64,
    /// Server-side delay asked of slow requests, in ms (default 1000).
    pub slow_ms: u64,
    /// `true` (default): one shared HTTP/1.1 connection pool. `false`: no idle connections are
    /// kept and every request carries `Connection: close`.
    pub keepalive: bool,
    /// Per-request timeout, connect to end of body (default 10 s).
    pub timeout: Duration,
    /// Hard stop for scheduling, even if [`ProbeHandle::stop`] is never called (default 600 s).
    pub max_duration: Duration,
    /// 0 (default): one anonymous client that keeps no cookies. N > 0: N
    /// simulated users taking turns (request `i` is user `i % N`'s), each with
    /// its own cookie jar: the cookies a response sets are sent with that
    /// user's later requests, as a browser would.
    pub users: u32,
}

impl Default for ProbeOpts {
    fn default() -> Self {
        ProbeOpts {
            base_url: "http://127.0.0.1:8080".to_string(),
            rate: 100,
            post_ratio: 0.3,
            slow_ratio: 0.1,
            slow_ms: 1000,
            keepalive: true,
            timeout: Duration::from_secs(10),
            max_duration: Duration::from_secs(600),
            users: 0,
        }
    }
}

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestKind {
    /// `GET /`
    Get,
    /// `POST /echo` with a JSON body.
    Post,
    /// `GET /slow?ms=<slow_ms>`
    SlowGet,
    /// `POST /slow?ms=<slow_ms>` with a JSON body.
    SlowPost,
}

impl RequestKind {
    /// The deterministic kind of request number `index` for the given ratios.
    ///
    /// Uses two Weyl (golden-ratio / silver-ratio) sequences, so the proportions hold closely
    /// for every prefix of the run, not just on average.
    pub fn for_index(index: u64, post_ratio: f64, slow_ratio: f64) -> RequestKind {
        const PHI_FRAC: f64 = 0.618_033_988_749_894_8; // 1/phi
        const SQRT2_FRAC: f64 = 0.414_213_562_373_095_1; // sqrt(2) - 1
        let i = index as f64;
        let u = (0.5 + i * PHI_FRAC).fract();
        let v = (0.5 + i * SQRT2_FRAC).fract();
        let slow = slow_ratio.clamp(0.0, 1.0);
        let post = post_ratio.clamp(0.0, 1.0);
        if u < slow {
            if v < post {
                RequestKind::SlowPost
            } else {
                RequestKind::SlowGet
            }
        } else if u < slow + post {
            RequestKind::Post
        } else {
            RequestKind::Get
        }
    }

    /// `true` for `/slow` requests.
    pub fn is_slow(self) -> bool {
        matches!(self, RequestKind::SlowGet | RequestKind::SlowPost)
    }

    fn method(self) -> Method {
        match self {
            RequestKind::Get | RequestKind::SlowGet => Method::GET,
            RequestKind::Post | RequestKind::SlowPost => Method::POST,
        }
    }
}

/// The outcome of one request.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Request number (0-based); request `i` is scheduled at `i / rate` seconds.
    pub index: u64,
    /// What was requested.
    pub kind: RequestKind,
    /// Scheduled send time, seconds since probe start.
    pub scheduled_s: f64,
    /// How late the scheduler dispatched it, ms after the scheduled time.
    pub dispatch_late_ms: f64,
    /// When the response body was complete (or the request failed), seconds since probe start.
    pub completed_s: f64,
    /// `completed - scheduled`, in ms.
    pub latency_ms: f64,
    /// HTTP status, if a complete response arrived.
    pub status: Option<u16>,
    /// Transport error kind (one of the `ERR_*` constants) if no complete response arrived.
    pub error: Option<&'static str>,
    /// `X-Demo-Version` of the response.
    pub version: Option<String>,
    /// `X-Demo-Colour` of the response.
    pub colour: Option<String>,
    /// The simulated user who sent it (with [`ProbeOpts::users`]).
    pub user: Option<u32>,
}

impl Sample {
    /// A complete response with a 2xx status.
    pub fn is_2xx(&self) -> bool {
        matches!(self.status, Some(s) if (200..300).contains(&s))
    }
}

/// The result of a probe run.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeReport {
    /// Requests dispatched.
    pub sent: u64,
    /// Complete responses with a 2xx status.
    pub ok_2xx: u64,
    /// Complete responses with any other status, by status.
    pub non_2xx: BTreeMap<u16, u64>,
    /// Requests without a complete response, by kind (`connect`, `timeout`,
    /// `closed_before_response`, `other`).
    pub transport_errors: BTreeMap<String, u64>,
    /// Median latency from scheduled send time of requests that got a complete response, ms.
    pub p50_ms: f64,
    /// 99th percentile (nearest rank) of the same, ms.
    pub p99_ms: f64,
    /// Maximum of the same, ms.
    pub max_ms: f64,
    /// Length of the scheduling window, seconds.
    pub duration_s: f64,
    /// Configured rate, req/s.
    pub target_rate: u32,
    /// `sent / duration_s`.
    pub achieved_rate: f64,
    /// Sends dispatched more than [`LATE_THRESHOLD`] after their scheduled time.
    pub late_sends: u64,
    /// Largest dispatch delay of the scheduler, ms.
    pub max_late_ms: f64,
    /// Versions of 2xx responses to fast (non-`/slow`) requests, in scheduled order,
    /// run-length encoded.
    pub versions: Vec<(String, u64)>,
    /// Versions of all 2xx responses, in scheduled order, run-length encoded.
    pub versions_all: Vec<(String, u64)>,
    /// Colours of 2xx responses to fast requests, in scheduled order, run-length encoded.
    pub colours: Vec<(String, u64)>,
    /// Time of the first 2xx response of each version, seconds since probe start.
    pub first_seen: BTreeMap<String, f64>,
    /// Whether the run used keep-alive connections.
    pub keepalive: bool,
    /// Every request, in scheduled order (not serialized).
    #[serde(skip)]
    pub samples: Vec<Sample>,
}

impl ProbeReport {
    /// Version changes seen by fast requests (`versions.len() - 1`, 0 when empty).
    pub fn flips(&self) -> usize {
        self.versions.len().saturating_sub(1)
    }

    /// Failed requests: non-2xx responses plus transport errors.
    pub fn failed(&self) -> u64 {
        self.non_2xx.values().sum::<u64>() + self.transport_errors.values().sum::<u64>()
    }

    /// One human-readable line with all the figures.
    pub fn summary(&self) -> String {
        let first_seen = if self.first_seen.is_empty() {
            "-".to_string()
        } else {
            self.first_seen
                .iter()
                .map(|(v, t)| format!("{v}@{t:.2}s"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        format!(
            "sent={} ok={} failed={} non_2xx=[{}] transport=[{}] p50={:.1}ms p99={:.1}ms max={:.1}ms \
             rate={:.1}/{} req/s over {:.2}s late={} (max {:.1}ms) keepalive={} versions={} flips={} \
             versions_all={} colours={} first_seen={}",
            self.sent,
            self.ok_2xx,
            self.failed(),
            fmt_counts(self.non_2xx.iter()),
            fmt_counts(self.transport_errors.iter()),
            self.p50_ms,
            self.p99_ms,
            self.max_ms,
            self.achieved_rate,
            self.target_rate,
            self.duration_s,
            self.late_sends,
            self.max_late_ms,
            self.keepalive,
            fmt_rle(&self.versions),
            self.flips(),
            fmt_rle(&self.versions_all),
            fmt_rle(&self.colours),
            first_seen,
        )
    }

    /// Header (two lines, no trailing newline) matching [`ProbeReport::markdown_row`].
    pub fn markdown_header() -> String {
        "| run | sent | ok | failed | non-2xx | transport errors | p50 ms | p99 ms | max ms | rate (achieved/target) | late | versions | flips |\n\
         |---|---:|---:|---:|---|---|---:|---:|---:|---:|---:|---|---:|"
            .to_string()
    }

    /// One markdown table row for benchmark tables (see [`ProbeReport::markdown_header`]).
    pub fn markdown_row(&self, label: &str) -> String {
        format!(
            "| {} | {} | {} | {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1}/{} | {} | {} | {} |",
            label.replace('|', "\\|"),
            self.sent,
            self.ok_2xx,
            self.failed(),
            or_dash(fmt_counts(self.non_2xx.iter())),
            or_dash(fmt_counts(self.transport_errors.iter())),
            self.p50_ms,
            self.p99_ms,
            self.max_ms,
            self.achieved_rate,
            self.target_rate,
            self.late_sends,
            or_dash(fmt_rle(&self.versions)),
            self.flips(),
        )
    }
}

fn or_dash(s: String) -> String {
    if s.is_empty() {
        "-".to_string()
    } else {
        s
    }
}

fn fmt_counts<K: std::fmt::Display, V: std::fmt::Display>(
    it: impl Iterator<Item = (K, V)>,
) -> String {
    it.map(|(k, v)| format!("{k}:{v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn fmt_rle(rle: &[(String, u64)]) -> String {
    rle.iter()
        .map(|(v, n)| format!("{v}x{n}"))
        .collect::<Vec<_>>()
        .join("->")
}

/// Entry point; see the module docs.
pub struct Probe;

impl Probe {
    /// Starts the probe on its own thread and runtime; the first request is scheduled at once.
    ///
    /// # Panics
    ///
    /// If `opts.base_url` is not an absolute http(s) URL, or the HTTP client or runtime cannot
    /// be built.
    pub fn start(opts: ProbeOpts) -> ProbeHandle {
        let targets = Targets::new(&opts);
        let client = build_client(&opts);
        let (first_seen_tx, _) = watch::channel(BTreeMap::new());
        let shared = Arc::new(Shared {
            sent: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            samples: Mutex::new(Vec::new()),
            first_seen: first_seen_tx,
        });
        let (stop_tx, stop_rx) = watch::channel(false);
        let (report_tx, report_rx) = oneshot::channel();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("greenlight-probe-worker")
            .enable_all()
            .build()
            .expect("probe: build tokio runtime");
        let thread_shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("greenlight-probe".to_string())
            .spawn(move || {
                let report = runtime.block_on(run(opts, targets, client, thread_shared, stop_rx));
                let _ = report_tx.send(report);
            })
            .expect("probe: spawn thread");
        ProbeHandle {
            shared,
            stop_tx: Some(stop_tx),
            report_rx: Some(report_rx),
        }
    }
}

/// A running probe. Dropping it without [`ProbeHandle::stop`] stops scheduling too.
pub struct ProbeHandle {
    shared: Arc<Shared>,
    stop_tx: Option<watch::Sender<bool>>,
    report_rx: Option<oneshot::Receiver<ProbeReport>>,
}

impl ProbeHandle {
    /// Stops scheduling, waits for in-flight requests (at most `timeout + STOP_GRACE`) and
    /// returns the report. If `max_duration` already ended scheduling, just collects the report.
    pub async fn stop(mut self) -> ProbeReport {
        if let Some(tx) = self.stop_tx.take() {
            let _ = tx.send(true);
        }
        self.report_rx
            .take()
            .expect("report receiver present until stop")
            .await
            .expect("probe thread died before reporting")
    }

    /// Requests dispatched so far.
    pub fn sent_so_far(&self) -> u64 {
        self.shared.sent.load(Ordering::Relaxed)
    }

    /// Completed requests that failed so far (non-2xx or transport error).
    pub fn failed_so_far(&self) -> u64 {
        self.shared.failed.load(Ordering::Relaxed)
    }

    /// Time of the first 2xx response of each version so far, seconds since probe start.
    pub fn first_seen(&self) -> BTreeMap<String, f64> {
        self.shared.first_seen.borrow().clone()
    }

    /// Waits until a 2xx response carrying `X-Demo-Version: <version>` has been seen (at any
    /// time since start) or `deadline` has passed; returns whether it was seen.
    pub async fn wait_for_version(&self, version: &str, deadline: Duration) -> bool {
        let mut rx = self.shared.first_seen.subscribe();
        let seen = tokio::time::timeout(deadline, rx.wait_for(|seen| seen.contains_key(version)))
            .await
            .is_ok_and(|r| r.is_ok());
        seen
    }
}

impl Drop for ProbeHandle {
    fn drop(&mut self) {
        if let Some(tx) = self.stop_tx.take() {
            let _ = tx.send(true);
        }
    }
}

struct Shared {
    sent: AtomicU64,
    failed: AtomicU64,
    samples: Mutex<Vec<Sample>>,
    first_seen: watch::Sender<BTreeMap<String, f64>>,
}

impl Shared {
    fn note_version(&self, version: &str, at_s: f64) {
        if self.first_seen.borrow().contains_key(version) {
            return;
        }
        self.first_seen.send_if_modified(|seen| {
            if seen.contains_key(version) {
                false
            } else {
                seen.insert(version.to_string(), at_s);
                true
            }
        });
    }
}

/// Pre-parsed request URLs.
#[derive(Clone)]
struct Targets {
    root: Url,
    echo: Url,
    slow: Url,
}

impl Targets {
    fn new(opts: &ProbeOpts) -> Targets {
        let base = opts.base_url.trim_end_matches('/');
        let parse = |s: String| {
            let url = Url::parse(&s).unwrap_or_else(|e| panic!("probe: bad base_url {s:?}: {e}"));
            assert!(
                matches!(url.scheme(), "http" | "https"),
                "probe: base_url must be http(s): {s:?}"
            );
            url
        };
        Targets {
            root: parse(format!("{base}/")),
            echo: parse(format!("{base}/echo")),
            slow: parse(format!("{base}/slow?ms={}", opts.slow_ms)),
        }
    }

    fn url(&self, kind: RequestKind) -> Url {
        match kind {
            RequestKind::Get => self.root.clone(),
            RequestKind::Post => self.echo.clone(),
            RequestKind::SlowGet | RequestKind::SlowPost => self.slow.clone(),
        }
    }
}

fn build_client(opts: &ProbeOpts) -> Client {
    let mut builder = crate::http_builder()
        .http1_only()
        .no_proxy()
        .tcp_nodelay(true)
        .timeout(opts.timeout)
        .connect_timeout(opts.timeout)
        // Below nginx's default keepalive_timeout (75 s), so the client itself never reuses a
        // connection the server is about to drop for idleness.
        .pool_idle_timeout(Duration::from_secs(30));
    if !opts.keepalive {
        let mut headers = HeaderMap::new();
        headers.insert(CONNECTION, HeaderValue::from_static("close"));
        builder = builder.pool_max_idle_per_host(0).default_headers(headers);
    }
    builder.build().expect("probe: build HTTP client")
}

/// Scheduled time of request `index` relative to start.
fn offset_of(index: u64, rate: u32) -> Duration {
    let nanos = u128::from(index) * 1_000_000_000 / u128::from(rate.max(1));
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

async fn run(
    opts: ProbeOpts,
    targets: Targets,
    client: Client,
    shared: Arc<Shared>,
    mut stop_rx: watch::Receiver<bool>,
) -> ProbeReport {
    let start = Instant::now();
    let hard_stop = start + opts.max_duration;
    let mut tasks = JoinSet::new();
    let mut index: u64 = 0;
    let mut late_sends: u64 = 0;
    let mut max_late = Duration::ZERO;
    let jars: Arc<Mutex<Vec<Jar>>> = Arc::new(Mutex::new(
        (0..opts.users).map(|_| Jar::default()).collect(),
    ));

    loop {
        if *stop_rx.borrow_and_update() {
            break;
        }
        let scheduled = start + offset_of(index, opts.rate);
        tokio::select! {
            biased;
            // Err means the handle was dropped: stop as well.
            _ = stop_rx.changed() => break,
            _ = tokio::time::sleep_until(scheduled.min(hard_stop)) => {}
        }
        if scheduled >= hard_stop {
            break;
        }
        let late = Instant::now().saturating_duration_since(scheduled);
        if late > LATE_THRESHOLD {
            late_sends += 1;
        }
        max_late = max_late.max(late);

        let kind = RequestKind::for_index(index, opts.post_ratio, opts.slow_ratio);
        let (client, url, task_shared) = (client.clone(), targets.url(kind), Arc::clone(&shared));
        let user = (opts.users > 0).then(|| (index % u64::from(opts.users)) as u32);
        let jars = Arc::clone(&jars);
        tasks.spawn(async move {
            let cookies = user.and_then(|u| {
                jars.lock().unwrap_or_else(|e| e.into_inner())[u as usize].cookie_header()
            });
            let result = send_one(&client, kind, url, index, cookies).await;
            let done = Instant::now();
            let completed_s = done.duration_since(start).as_secs_f64();
            let mut sample = Sample {
                index,
                kind,
                scheduled_s: scheduled.duration_since(start).as_secs_f64(),
                dispatch_late_ms: ms(late),
                completed_s,
                latency_ms: ms(done.saturating_duration_since(scheduled)),
                status: None,
                error: None,
                version: None,
                colour: None,
                user: None,
            };
            sample.user = user;
            match result {
                Ok((status, version, colour, set)) => {
                    if let Some(u) = user {
                        jars.lock().unwrap_or_else(|e| e.into_inner())[u as usize].store(&set);
                    }
                    sample.status = Some(status);
                    sample.version = version;
                    sample.colour = colour;
                    if sample.is_2xx() {
                        if let Some(v) = &sample.version {
                            task_shared.note_version(v, completed_s);
                        }
                    } else {
                        task_shared.failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Err(kind) => {
                    sample.error = Some(kind);
                    task_shared.failed.fetch_add(1, Ordering::Relaxed);
                }
            }
            task_shared
                .samples
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(sample);
        });
        index += 1;
        shared.sent.store(index, Ordering::Relaxed);
        while tasks.try_join_next().is_some() {}
    }
    let end = Instant::now().min(hard_stop);

    // Drain in-flight requests; reqwest's timeout should end each of them well before this.
    let drain = async { while tasks.join_next().await.is_some() {} };
    let _ = tokio::time::timeout(opts.timeout + STOP_GRACE, drain).await;
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}

    let samples = std::mem::take(&mut *shared.samples.lock().unwrap_or_else(|e| e.into_inner()));
    let first_seen = shared.first_seen.borrow().clone();
    build_report(
        samples,
        index,
        Tally {
            duration: end.saturating_duration_since(start),
            target_rate: opts.rate,
            late_sends,
            max_late,
            keepalive: opts.keepalive,
            first_seen,
        },
    )
}

/// One simulated user's cookies: `name=value` by name.
#[derive(Default)]
struct Jar(BTreeMap<String, String>);

impl Jar {
    fn cookie_header(&self) -> Option<String> {
        (!self.0.is_empty()).then(|| self.0.values().cloned().collect::<Vec<_>>().join("; "))
    }

    /// Keeps each `Set-Cookie`'s `name=value` (attributes are not needed here).
    fn store(&mut self, set: &[String]) {
        for header in set {
            let pair = header.split(';').next().unwrap_or_default().trim();
            if let Some((name, _)) = pair.split_once('=') {
                self.0.insert(name.to_string(), pair.to_string());
            }
        }
    }
}

/// What one request got back: status, version, colour and the cookies set.
type Answer = (u16, Option<String>, Option<String>, Vec<String>);

/// Sends one request and reads the whole body, or says the error kind.
async fn send_one(
    client: &Client,
    kind: RequestKind,
    url: Url,
    index: u64,
    cookies: Option<String>,
) -> Result<Answer, &'static str> {
    let mut req = client.request(kind.method(), url);
    if let Some(c) = cookies {
        req = req.header(reqwest::header::COOKIE, c);
    }
    if kind.method() == Method::POST {
        req = req
            .header(CONTENT_TYPE, "application/json")
            .body(format!(r#"{{"probe":"greenlight","seq":{index}}}"#));
    }
    let resp = req.send().await.map_err(|e| classify(&e))?;
    let status = resp.status().as_u16();
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    };
    let (version, colour) = (header(VERSION_HEADER), header(COLOUR_HEADER));
    let set: Vec<String> = resp
        .headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect();
    resp.bytes().await.map_err(|e| classify(&e))?;
    Ok((status, version, colour, set))
}

/// Maps a reqwest error to one of the `ERR_*` kinds.
fn classify(err: &reqwest::Error) -> &'static str {
    if err.is_connect() {
        return ERR_CONNECT;
    }
    if err.is_timeout() {
        return ERR_TIMEOUT;
    }
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        if let Some(h) = e.downcast_ref::<hyper::Error>() {
            if h.is_incomplete_message() || h.is_canceled() || h.is_closed() {
                return ERR_CLOSED;
            }
        }
        if let Some(io) = e.downcast_ref::<io::Error>() {
            if matches!(
                io.kind(),
                io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::UnexpectedEof
            ) {
                return ERR_CLOSED;
            }
        }
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    let text = text.to_ascii_lowercase();
    if [
        "connection closed before message completed",
        "incomplete message",
        "connection reset",
        "broken pipe",
        "unexpected eof",
    ]
    .iter()
    .any(|needle| text.contains(needle))
    {
        ERR_CLOSED
    } else {
        ERR_OTHER
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Run-wide figures that are not per-request samples.
struct Tally {
    duration: Duration,
    target_rate: u32,
    late_sends: u64,
    max_late: Duration,
    keepalive: bool,
    first_seen: BTreeMap<String, f64>,
}

/// Aggregates samples into a report. Requests dispatched but without a sample (abandoned after
/// the drain bound) count as `"timeout"` transport errors.
fn build_report(mut samples: Vec<Sample>, sent: u64, tally: Tally) -> ProbeReport {
    samples.sort_by_key(|s| s.index);
    let mut ok_2xx = 0;
    let mut non_2xx = BTreeMap::new();
    let mut transport_errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut latencies = Vec::with_capacity(samples.len());
    let mut versions = Rle::default();
    let mut versions_all = Rle::default();
    let mut colours = Rle::default();
    for s in &samples {
        match (s.status, s.error) {
            (Some(_), _) => {
                latencies.push(s.latency_ms);
                if s.is_2xx() {
                    ok_2xx += 1;
                    let version = s.version.as_deref().unwrap_or(UNKNOWN_VERSION);
                    versions_all.push(version);
                    if !s.kind.is_slow() {
                        versions.push(version);
                        colours.push(s.colour.as_deref().unwrap_or(UNKNOWN_VERSION));
                    }
                } else if let Some(code) = s.status {
                    *non_2xx.entry(code).or_insert(0) += 1;
                }
            }
            (None, kind) => {
                *transport_errors
                    .entry(kind.unwrap_or(ERR_OTHER).to_string())
                    .or_insert(0) += 1;
            }
        }
    }
    let abandoned = sent.saturating_sub(samples.len() as u64);
    if abandoned > 0 {
        *transport_errors.entry(ERR_TIMEOUT.to_string()).or_insert(0) += abandoned;
    }
    latencies.sort_by(f64::total_cmp);
    let duration_s = tally.duration.as_secs_f64();
    ProbeReport {
        sent,
        ok_2xx,
        non_2xx,
        transport_errors,
        p50_ms: percentile(&latencies, 0.50),
        p99_ms: percentile(&latencies, 0.99),
        max_ms: latencies.last().copied().unwrap_or(0.0),
        duration_s,
        target_rate: tally.target_rate,
        achieved_rate: if duration_s > 0.0 {
            sent as f64 / duration_s
        } else {
            0.0
        },
        late_sends: tally.late_sends,
        max_late_ms: ms(tally.max_late),
        versions: versions.0,
        versions_all: versions_all.0,
        colours: colours.0,
        first_seen: tally.first_seen,
        keepalive: tally.keepalive,
        samples,
    }
}

/// Nearest-rank percentile of sorted values (0 when empty).
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[derive(Default)]
struct Rle(Vec<(String, u64)>);

impl Rle {
    fn push(&mut self, value: &str) {
        match self.0.last_mut() {
            Some((last, n)) if last == value => *n += 1,
            _ => self.0.push((value.to_string(), 1)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use std::sync::atomic::AtomicBool;
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    use tokio::net::{TcpListener, TcpStream};

    /// How the test server treats a request.
    #[derive(Clone, Copy, PartialEq)]
    enum Mode {
        /// Answer (502 for every `fail_every`-th request when set).
        Normal,
        /// Read the request, then close the connection without answering.
        Hangup,
        /// Read the request, then never answer.
        Silent,
    }

    /// A tiny HTTP/1.1 server on 127.0.0.1 with keep-alive and a switchable version.
    struct TestServer {
        addr: SocketAddr,
        state: Arc<ServerState>,
        task: tokio::task::JoinHandle<()>,
    }

    struct ServerState {
        mode: Mode,
        fail_every: u64,
        v2: AtomicBool,
        requests: AtomicU64,
        connections: AtomicU64,
        failed: AtomicU64,
    }

    impl TestServer {
        async fn start(mode: Mode, fail_every: u64) -> TestServer {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let state = Arc::new(ServerState {
                mode,
                fail_every,
                v2: AtomicBool::new(false),
                requests: AtomicU64::new(0),
                connections: AtomicU64::new(0),
                failed: AtomicU64::new(0),
            });
            let st = Arc::clone(&state);
            let task = tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    st.connections.fetch_add(1, Ordering::Relaxed);
                    let st = Arc::clone(&st);
                    tokio::spawn(async move {
                        let _ = serve(stream, st).await;
                    });
                }
            });
            TestServer { addr, state, task }
        }

        fn url(&self) -> String {
            format!("http://{}", self.addr)
        }

        fn switch_to_v2(&self) {
            self.state.v2.store(true, Ordering::SeqCst);
        }
    }

    impl Drop for TestServer {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    async fn serve(stream: TcpStream, st: Arc<ServerState>) -> io::Result<()> {
        let mut reader = BufReader::new(stream);
        loop {
            let mut request_line = String::new();
            if reader.read_line(&mut request_line).await? == 0 {
                return Ok(());
            }
            let mut content_length = 0usize;
            let mut close = false;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).await? == 0 {
                    return Ok(());
                }
                let line = line.trim_end();
                if line.is_empty() {
                    break;
                }
                let (name, value) = line.split_once(':').unwrap_or((line, ""));
                let (name, value) = (name.to_ascii_lowercase(), value.trim());
                if name == "content-length" {
                    content_length = value.parse().unwrap_or(0);
                } else if name == "connection" && value.eq_ignore_ascii_case("close") {
                    close = true;
                }
            }
            let mut body = vec![0; content_length];
            reader.read_exact(&mut body).await?;
            let n = st.requests.fetch_add(1, Ordering::SeqCst) + 1;
            match st.mode {
                Mode::Hangup => return Ok(()),
                Mode::Silent => {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    return Ok(());
                }
                Mode::Normal => {}
            }
            let path = request_line.split_whitespace().nth(1).unwrap_or("/");
            if let Some(ms) = path
                .strip_prefix("/slow?ms=")
                .and_then(|v| v.parse::<u64>().ok())
            {
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            let fail = st.fail_every > 0 && n.is_multiple_of(st.fail_every);
            if fail {
                st.failed.fetch_add(1, Ordering::SeqCst);
            }
            let (version, colour) = if st.v2.load(Ordering::SeqCst) {
                ("v2", "green")
            } else {
                ("v1", "blue")
            };
            let (status, payload) = if fail {
                ("502 Bad Gateway", "bad gateway".to_string())
            } else {
                ("200 OK", format!("hello from {version}"))
            };
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
                 X-Demo-Version: {version}\r\nX-Demo-Colour: {colour}\r\n{}\r\n{payload}",
                payload.len(),
                if close { "Connection: close\r\n" } else { "" },
            );
            reader.get_mut().write_all(response.as_bytes()).await?;
            if close {
                return Ok(());
            }
        }
    }

    /// Polls until the probe has dispatched `n` requests or `deadline` passes.
    async fn wait_sent(probe: &ProbeHandle, n: u64, deadline: Duration) -> bool {
        let until = Instant::now() + deadline;
        while Instant::now() < until {
            if probe.sent_so_far() >= n {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        false
    }

    fn opts(base_url: String) -> ProbeOpts {
        ProbeOpts {
            base_url,
            rate: 200,
            slow_ms: 150,
            timeout: Duration::from_secs(2),
            max_duration: Duration::from_secs(30),
            ..ProbeOpts::default()
        }
    }

    fn sample(index: u64, kind: RequestKind, version: &str) -> Sample {
        Sample {
            index,
            kind,
            scheduled_s: index as f64 / 100.0,
            dispatch_late_ms: 0.0,
            completed_s: index as f64 / 100.0 + 0.01,
            latency_ms: (index + 1) as f64,
            status: Some(200),
            error: None,
            version: Some(version.to_string()),
            colour: Some(if version == "v1" { "blue" } else { "green" }.to_string()),
            user: None,
        }
    }

    fn tally() -> Tally {
        Tally {
            duration: Duration::from_secs(1),
            target_rate: 100,
            late_sends: 0,
            max_late: Duration::ZERO,
            keepalive: true,
            first_seen: BTreeMap::new(),
        }
    }

    #[test]
    fn mix_is_deterministic_and_matches_ratios() {
        let kinds: Vec<_> = (0..1000)
            .map(|i| RequestKind::for_index(i, 0.3, 0.1))
            .collect();
        let again: Vec<_> = (0..1000)
            .map(|i| RequestKind::for_index(i, 0.3, 0.1))
            .collect();
        assert_eq!(kinds, again);
        let count = |f: &dyn Fn(RequestKind) -> bool| kinds.iter().filter(|k| f(**k)).count();
        let slow = count(&|k| k.is_slow());
        let post = count(&|k| k == RequestKind::Post);
        let slow_post = count(&|k| k == RequestKind::SlowPost);
        assert!((95..=105).contains(&slow), "slow={slow}");
        assert!((290..=310).contains(&post), "post={post}");
        assert!((20..=40).contains(&slow_post), "slow_post={slow_post}");
        // Every short prefix is mixed too.
        let first_20 = &kinds[..20];
        assert!(first_20.iter().any(|k| k.is_slow()));
        assert!(first_20.contains(&RequestKind::Post));
        assert!(first_20.contains(&RequestKind::Get));
        // Ratios of 0 and 1 are exact.
        assert!((0..500).all(|i| RequestKind::for_index(i, 0.0, 0.0) == RequestKind::Get));
        assert!((0..500).all(|i| RequestKind::for_index(i, 0.0, 1.0) == RequestKind::SlowGet));
    }

    #[test]
    fn schedule_is_exact() {
        assert_eq!(offset_of(0, 200), Duration::ZERO);
        assert_eq!(offset_of(1, 200), Duration::from_millis(5));
        assert_eq!(offset_of(1000, 200), Duration::from_secs(5));
        assert_eq!(offset_of(3, 3), Duration::from_secs(1));
        assert_eq!(offset_of(2, 0), Duration::from_secs(2));
    }

    #[test]
    fn report_orders_by_schedule_and_ignores_slow_for_flips() {
        use RequestKind::*;
        // Scrambled completion order; a slow request scheduled before the switch answers v1
        // after fast v2 answers.
        let mut samples = vec![
            sample(3, Get, "v2"),
            sample(0, Get, "v1"),
            sample(2, SlowGet, "v1"),
            sample(1, Post, "v1"),
            sample(4, Post, "v2"),
            sample(5, SlowPost, "v1"),
            sample(6, Get, "v2"),
        ];
        samples.push(Sample {
            status: Some(502),
            version: None,
            colour: None,
            ..sample(7, Get, "v2")
        });
        samples.push(Sample {
            status: None,
            error: Some(ERR_CLOSED),
            version: None,
            colour: None,
            ..sample(8, Get, "v2")
        });
        let report = build_report(samples, 10, tally());
        assert_eq!(report.sent, 10);
        assert_eq!(report.ok_2xx, 7);
        assert_eq!(report.non_2xx, BTreeMap::from([(502, 1)]));
        // #8 closed, #9 never completed (abandoned).
        assert_eq!(
            report.transport_errors,
            BTreeMap::from([(ERR_CLOSED.to_string(), 1), (ERR_TIMEOUT.to_string(), 1)])
        );
        assert_eq!(report.failed(), 3);
        let rle = |v: &[(&str, u64)]| -> Vec<(String, u64)> {
            v.iter().map(|(s, n)| (s.to_string(), *n)).collect()
        };
        assert_eq!(report.versions, rle(&[("v1", 2), ("v2", 3)]));
        assert_eq!(
            report.versions_all,
            rle(&[("v1", 3), ("v2", 2), ("v1", 1), ("v2", 1)])
        );
        assert_eq!(report.colours, rle(&[("blue", 2), ("green", 3)]));
        assert_eq!(report.flips(), 1);
        // Latencies 1..=8 ms for the 8 samples with a status.
        assert_eq!(report.p50_ms, 4.0);
        assert_eq!(report.p99_ms, 8.0);
        assert_eq!(report.max_ms, 8.0);
        assert_eq!(report.achieved_rate, 10.0);
        let sorted: Vec<u64> = report.samples.iter().map(|s| s.index).collect();
        assert_eq!(sorted, (0..9).collect::<Vec<_>>());

        let summary = report.summary();
        for needle in [
            "sent=10",
            "ok=7",
            "failed=3",
            "502:1",
            "closed_before_response:1",
            "versions=v1x2->v2x3",
            "flips=1",
        ] {
            assert!(summary.contains(needle), "{needle} not in {summary}");
        }
        let row = report.markdown_row("a|b");
        assert!(row.starts_with("| a\\|b | 10 | 7 | 3 |"), "{row}");
        assert_eq!(
            row.matches('|').count() - 1,
            ProbeReport::markdown_header()
                .lines()
                .next()
                .unwrap()
                .matches('|')
                .count()
        );
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["versions"], serde_json::json!([["v1", 2], ["v2", 3]]));
        assert!(json.get("samples").is_none());

        let empty = build_report(Vec::new(), 0, tally());
        assert_eq!((empty.flips(), empty.failed(), empty.p99_ms), (0, 0, 0.0));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn version_switch_gives_one_flip_and_zero_failures() {
        let server = TestServer::start(Mode::Normal, 0).await;
        let probe = Probe::start(opts(server.url()));
        assert!(probe.wait_for_version("v1", Duration::from_secs(5)).await);
        assert!(!probe.wait_for_version("v2", Duration::from_millis(1)).await);
        assert!(wait_sent(&probe, 150, Duration::from_secs(5)).await);
        server.switch_to_v2();
        assert!(probe.wait_for_version("v2", Duration::from_secs(5)).await);
        let at = probe.sent_so_far();
        assert!(wait_sent(&probe, at + 150, Duration::from_secs(5)).await);
        let report = probe.stop().await;
        println!("{}", report.summary());

        assert_eq!(report.failed(), 0, "{}", report.summary());
        assert_eq!(report.ok_2xx, report.sent);
        assert_eq!(report.sent, server.state.requests.load(Ordering::SeqCst));
        assert_eq!(report.flips(), 1, "{}", report.summary());
        assert_eq!(report.versions[0].0, "v1");
        assert_eq!(report.versions[1].0, "v2");
        assert_eq!(report.colours.len(), 2);
        let (v1, v2) = (report.first_seen["v1"], report.first_seen["v2"]);
        assert!(v1 < v2, "{:?}", report.first_seen);
        assert!(report.p99_ms < 1000.0);
        // Slow requests are in the mix and take at least slow_ms from their scheduled time.
        let slow: Vec<_> = report.samples.iter().filter(|s| s.kind.is_slow()).collect();
        assert!(!slow.is_empty());
        assert!(slow.iter().all(|s| s.latency_ms >= 150.0));
        assert!(report
            .samples
            .iter()
            .any(|s| s.kind == RequestKind::Post && s.status == Some(200)));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sustains_200_rps_open_model() {
        let server = TestServer::start(Mode::Normal, 0).await;
        // Half the requests take 400 ms: a closed-loop client would fall far behind.
        let probe = Probe::start(ProbeOpts {
            slow_ratio: 0.5,
            slow_ms: 400,
            ..opts(server.url())
        });
        assert!(wait_sent(&probe, 400, Duration::from_secs(5)).await);
        let report = probe.stop().await;
        println!("{}", report.summary());

        assert_eq!(report.failed(), 0, "{}", report.summary());
        assert!(report.duration_s >= 1.9, "{}", report.summary());
        assert!(
            (report.achieved_rate - 200.0).abs() < 200.0 * 0.03,
            "{}",
            report.summary()
        );
        assert_eq!(report.late_sends, 0, "{}", report.summary());
        // Requests went out on schedule, not after earlier responses.
        for s in &report.samples {
            assert!((s.scheduled_s - s.index as f64 / 200.0).abs() < 1e-6);
        }
        let slow_p50 = {
            let mut l: Vec<f64> = report
                .samples
                .iter()
                .filter(|s| s.kind.is_slow())
                .map(|s| s.latency_ms)
                .collect();
            l.sort_by(f64::total_cmp);
            percentile(&l, 0.5)
        };
        assert!(slow_p50 >= 400.0, "slow p50 {slow_p50}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn non_2xx_are_counted_by_status() {
        let server = TestServer::start(Mode::Normal, 7).await;
        let probe = Probe::start(ProbeOpts {
            slow_ratio: 0.0,
            ..opts(server.url())
        });
        assert!(wait_sent(&probe, 100, Duration::from_secs(5)).await);
        let report = probe.stop().await;
        println!("{}", report.summary());

        let bad = server.state.failed.load(Ordering::SeqCst);
        assert!(bad > 0);
        assert_eq!(report.non_2xx, BTreeMap::from([(502, bad)]));
        assert!(report.transport_errors.is_empty(), "{}", report.summary());
        assert_eq!(report.ok_2xx + bad, report.sent);
        assert_eq!(report.failed(), bad);
        // 502s carry no version in the sequence, and they do not break the run of v1.
        assert_eq!(report.versions, vec![("v1".to_string(), report.ok_2xx)]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn closed_port_counts_connect_errors() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let probe = Probe::start(ProbeOpts {
            rate: 100,
            ..opts(format!("http://127.0.0.1:{port}"))
        });
        assert!(wait_sent(&probe, 20, Duration::from_secs(5)).await);
        assert!(
            !probe
                .wait_for_version("v1", Duration::from_millis(50))
                .await
        );
        let report = probe.stop().await;
        println!("{}", report.summary());

        assert_eq!(report.ok_2xx, 0);
        assert_eq!(
            report.transport_errors,
            BTreeMap::from([(ERR_CONNECT.to_string(), report.sent)])
        );
        assert_eq!(report.failed(), report.sent);
        assert!(report.versions.is_empty());
        assert_eq!(report.flips(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hangup_counts_closed_before_response() {
        let server = TestServer::start(Mode::Hangup, 0).await;
        let probe = Probe::start(ProbeOpts {
            rate: 100,
            ..opts(server.url())
        });
        assert!(wait_sent(&probe, 30, Duration::from_secs(5)).await);
        let report = probe.stop().await;
        println!("{}", report.summary());

        assert_eq!(
            report.transport_errors,
            BTreeMap::from([(ERR_CLOSED.to_string(), report.sent)]),
            "{}",
            report.summary()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stop_is_bounded_by_timeout_and_counts_timeouts() {
        let server = TestServer::start(Mode::Silent, 0).await;
        let timeout = Duration::from_millis(300);
        let probe = Probe::start(ProbeOpts {
            rate: 100,
            timeout,
            ..opts(server.url())
        });
        assert!(wait_sent(&probe, 20, Duration::from_secs(5)).await);
        let stopping = Instant::now();
        let report = probe.stop().await;
        println!("{}", report.summary());

        assert!(
            stopping.elapsed() < timeout + STOP_GRACE,
            "stop took too long"
        );
        assert_eq!(
            report.transport_errors,
            BTreeMap::from([(ERR_TIMEOUT.to_string(), report.sent)])
        );
        assert_eq!(report.p99_ms, 0.0, "no responses, no latencies");
        assert!(report
            .samples
            .iter()
            .all(|s| s.latency_ms >= 300.0 && s.latency_ms < 1000.0));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn keepalive_reuses_connections_and_close_does_not() {
        for keepalive in [true, false] {
            let server = TestServer::start(Mode::Normal, 0).await;
            let probe = Probe::start(ProbeOpts {
                slow_ratio: 0.0,
                keepalive,
                ..opts(server.url())
            });
            assert!(wait_sent(&probe, 100, Duration::from_secs(5)).await);
            let report = probe.stop().await;
            println!("{}", report.summary());
            assert_eq!(report.failed(), 0, "{}", report.summary());
            assert!(report.keepalive == keepalive);
            let conns = server.state.connections.load(Ordering::SeqCst);
            if keepalive {
                assert!(conns * 4 < report.sent, "{conns} connections");
            } else {
                assert_eq!(conns, report.sent);
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn max_duration_is_a_hard_stop() {
        let server = TestServer::start(Mode::Normal, 0).await;
        let probe = Probe::start(ProbeOpts {
            rate: 100,
            slow_ratio: 0.0,
            max_duration: Duration::from_millis(300),
            ..opts(server.url())
        });
        // Scheduling must end on its own: sent_so_far stops at 30 (t = 0 .. 0.29 s).
        assert!(wait_sent(&probe, 30, Duration::from_secs(5)).await);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(probe.sent_so_far(), 30);
        let report = probe.stop().await;
        assert_eq!(report.sent, 30);
        assert_eq!(report.failed(), 0);
        assert!(
            (report.duration_s - 0.3).abs() < 0.02,
            "{}",
            report.summary()
        );
    }

    #[test]
    fn works_without_a_caller_runtime_and_stops_on_drop() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let probe = Probe::start(ProbeOpts {
            rate: 50,
            ..opts(format!("http://127.0.0.1:{port}"))
        });
        let until = std::time::Instant::now() + Duration::from_secs(5);
        while probe.sent_so_far() < 5 && std::time::Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(probe.sent_so_far() >= 5);
        let shared = Arc::clone(&probe.shared);
        drop(probe);
        let until = std::time::Instant::now() + Duration::from_secs(5);
        let mut last = shared.sent.load(Ordering::Relaxed);
        loop {
            std::thread::sleep(Duration::from_millis(100));
            let now = shared.sent.load(Ordering::Relaxed);
            if now == last {
                break;
            }
            assert!(
                std::time::Instant::now() < until,
                "still sending after drop"
            );
            last = now;
        }
    }
}
