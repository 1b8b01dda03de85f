//! The status page in a real browser: headless Chromium driven through
//! chromedriver (WebDriver), against a real greenlight, Docker, nginx and
//! registry. Log in, read the page, press its buttons, watch a deployment
//! appear and finish, and keep a screenshot of what it looked like.
//!
//! Needs Debian's `chromium` and `chromium-driver` (scripts/test.sh installs them).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, UNIX_EPOCH};

use common::{World, TOKEN};
use fantoccini::{Client, Locator};
use futures_util::FutureExt;
use greenlight_testkit::env::free_port;
use serde_json::{json, Value};

const NO_ENV: &[(&str, &str)] = &[];

/// `name` on PATH or in /usr/bin, or a failure that says how to get it.
fn require(name: &str, package: &str) -> PathBuf {
    let dirs = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&dirs)
        .chain([PathBuf::from("/usr/bin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{name} not found: the browser test needs headless Chromium; \
                 install it with `apt-get install chromium chromium-driver` \
                 (scripts/test.sh does) [missing package: {package}]"
            )
        })
}

/// A chromedriver this test started on a free port; killed on drop.
struct ChromeDriver {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl ChromeDriver {
    fn start(out: &Path) -> ChromeDriver {
        let bin = require("chromedriver", "chromium-driver");
        let port = free_port();
        let log = out.join(format!("chromedriver-{port}.log"));
        let child = Command::new(bin)
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let mut driver = ChromeDriver { child, port, log };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if driver.ready() {
                return driver;
            }
            if let Ok(Some(status)) = driver.child.try_wait() {
                panic!("chromedriver exited with {status}: {}", driver.log());
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver did not become ready: {}",
                driver.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `GET /status` says ready.
    fn ready(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let req = format!(
            "GET /status HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n",
            self.port
        );
        if s.write_all(req.as_bytes()).is_err() {
            return false;
        }
        let mut text = String::new();
        let _ = s.read_to_string(&mut text);
        text.replace(' ', "").contains("\"ready\":true")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("chromedriver log: {}", self.log.display());
        } else {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

/// Where the screenshots go: `<target>/browser/`.
fn out_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    let dir = target.join("browser");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn browser(driver: &ChromeDriver, profile: &Path) -> Client {
    let chromium = require("chromium", "chromium");
    let mut caps = serde_json::Map::new();
    caps.insert("browserName".into(), json!("chrome"));
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chromium,
            "args": [
                "--headless=new",
                "--no-sandbox",
                "--disable-dev-shm-usage",
                "--disable-gpu",
                "--no-first-run",
                "--window-size=1280,1700",
                format!("--user-data-dir={}", profile.display()),
            ],
        }),
    );
    fantoccini::ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url())
        .await
        .unwrap_or_else(|e| panic!("start a Chromium session: {e}\n{}", driver.log()))
}

/// Polls `check` (which reads the page) until it returns Some, or fails with `what`
/// and the last thing seen. The page reloads itself, so a read may fail midway.
async fn until<T, F, Fut>(what: &str, secs: u64, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>, String>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut last = String::new();
    loop {
        match check().await {
            Ok(Some(v)) => return v,
            Ok(None) => {}
            Err(e) => last = e,
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {secs}s ({last})"
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

async fn text_of(c: &Client, css: &str) -> Result<String, String> {
    let el = c
        .find(Locator::Css(css))
        .await
        .map_err(|e| format!("{css}: {e}"))?;
    el.text().await.map_err(|e| format!("{css}: {e}"))
}

/// The deployments listed on the page: (id, state).
async fn listed_deployments(c: &Client) -> Result<Vec<(i64, String)>, String> {
    let v = c
        .execute(
            "return Array.from(document.querySelectorAll('article[data-deployment]'))\
             .map(a => [Number(a.dataset.deployment), a.dataset.state]);",
            vec![],
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok(v.as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|p| {
            (
                p[0].as_i64().unwrap_or(0),
                p[1].as_str().unwrap_or("").into(),
            )
        })
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_logs_in_reads_the_page_and_redelivers_from_the_browser() {
    let out = out_dir();
    let driver = ChromeDriver::start(&out);
    let profile = tempfile::tempdir().unwrap();

    let mut w = World::with_hooks("bw", &[("v1", NO_ENV), ("v2", NO_ENV)], false);
    // v1 goes live through a signed delivery.
    let d1 = w.push("v1");
    let body = w.github_payload("v1", &d1, "2026-01-01T00:00:00Z");
    let (status, answer) = w.github("guid-v1", &body).await;
    assert_eq!(
        (status, answer["outcome"].as_str()),
        (202, Some("queued")),
        "{answer}"
    );
    w.wait_live("v1").await;
    // v2's delivery arrives before its image is in the repository: it fails at pulling.
    let staging = format!("{}/staging", w.prefix);
    let d2 = w.push_as("v2", Some(&staging), "v2");
    let body = w.github_payload("v2", &d2, "2026-01-02T00:00:00Z");
    let (_, answer) = w.github("guid-v2", &body).await;
    assert_eq!(answer["outcome"], "queued", "{answer}");
    let failed =
        w.gl.wait_done(answer["deployments"][0].as_i64().unwrap())
            .await;
    assert_eq!(
        (failed["state"].as_str(), failed["failed_step"].as_str()),
        (Some("failed"), Some("pulling")),
        "{failed:#}"
    );
    assert_eq!(w.push("v2"), d2, "now the image is there");

    let c = browser(&driver, profile.path()).await;
    let result = std::panic::AssertUnwindSafe(drive(&c, &w, &out))
        .catch_unwind()
        .await;
    let _ = c.close().await;
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }

    // The browser's redelivery really deployed v2.
    let live = w.wait_live("v2").await;
    assert_eq!(live["live"]["digest"], d2);
    assert_eq!(w.served().await, (200, "v2".into()));
}

async fn drive(c: &Client, w: &World, out: &Path) {
    let base = w.gl.url();
    let svc = w.service.as_str();

    // Not logged in: the page sends us to the login form.
    c.goto(&format!("{base}/")).await.unwrap();
    assert_eq!(c.current_url().await.unwrap().path(), "/login");
    let token = c.find(Locator::Css("input[name=token]")).await.unwrap();
    token.send_keys("not-the-token").await.unwrap();
    c.find(Locator::Css("button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let error = until("the wrong token's error", 20, || async {
        Ok(text_of(c, "p.error").await.ok().filter(|t| !t.is_empty()))
    })
    .await;
    assert!(error.contains("Wrong token"), "{error}");
    c.find(Locator::Css("input[name=token]"))
        .await
        .unwrap()
        .send_keys(TOKEN)
        .await
        .unwrap();
    c.find(Locator::Css("button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    c.wait()
        .at_most(Duration::from_secs(30))
        .for_element(Locator::Css("#services"))
        .await
        .expect("the status page after login");
    assert_eq!(c.current_url().await.unwrap().path(), "/");
    // The session cookie is out of the page's script's reach.
    let visible = c.execute("return document.cookie;", vec![]).await.unwrap();
    assert_eq!(visible, json!(""), "HttpOnly");

    // The service: live colour, tag, short digest, health.
    let row = format!("tr[data-service=\"{svc}\"]");
    assert_eq!(text_of(c, &format!("{row} td.tag")).await.unwrap(), "v1");
    assert_eq!(
        text_of(c, &format!("{row} td.health")).await.unwrap(),
        "1/1 running"
    );
    let digest = text_of(c, &format!("{row} td.digest")).await.unwrap();
    assert_eq!(digest, &w.digest("v1")["sha256:".len()..][..12]);
    let colour = text_of(c, &format!("{row} td.colour")).await.unwrap();
    assert!(colour == "blue" || colour == "green", "{colour}");
    // Live since the time the API gives, to the second.
    let since = w.gl.get(&format!("/api/services/{svc}")).await["live"]["since"]
        .as_u64()
        .unwrap();
    let since = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(since));
    let shown = c
        .find(Locator::Css(&format!("{row} td.since time")))
        .await
        .unwrap();
    assert_eq!(
        shown.attr("datetime").await.unwrap(),
        Some(since.to_string())
    );
    assert!(!shown.text().await.unwrap().is_empty());

    // The deployments: v1 succeeded; v2 failed at pulling, that step in red, with its error.
    let before = listed_deployments(c).await.unwrap();
    let states: Vec<&str> = before.iter().map(|(_, s)| s.as_str()).collect();
    assert_eq!(states, ["failed", "succeeded"], "{before:?}");
    let failed = format!("article[data-deployment=\"{}\"]", before[0].0);
    let step = c
        .find(Locator::Css(&format!("{failed} ol.timeline li.error")))
        .await
        .unwrap();
    assert!(step.text().await.unwrap().starts_with("pulling"));
    let red = step.css_value("color").await.unwrap();
    let rgb: Vec<u32> = red
        .trim_start_matches("rgba(")
        .trim_start_matches("rgb(")
        .trim_end_matches(')')
        .split(',')
        .filter_map(|p| p.trim().parse().ok())
        .collect();
    assert!(
        rgb.len() >= 3 && rgb[0] > 150 && rgb[1] < 80 && rgb[2] < 80,
        "red: {red}"
    );
    let error = text_of(c, &format!("{failed} p.error")).await.unwrap();
    assert!(error.starts_with("failed at pulling"), "{error}");

    // Rolling back with nothing to roll back to (or before the route exists) is
    // an error the page shows, not a crash.
    c.find(Locator::Css(&format!(
        "button[data-action=rollback][data-service=\"{svc}\"]"
    )))
    .await
    .unwrap()
    .click()
    .await
    .unwrap();
    let message = until("the rollback's error message", 20, || async {
        let m = text_of(c, "#message.err").await?;
        Ok((!m.is_empty()).then_some(m))
    })
    .await;
    assert!(
        message.starts_with(&format!("Roll back {svc} failed: HTTP ")),
        "{message}"
    );
    assert!(
        message.contains("HTTP 404") || message.contains("HTTP 409"),
        "{message}"
    );
    assert!(c.find(Locator::Css("#services")).await.is_ok());

    // Redeliver v2's delivery from the page: a new deployment appears and succeeds.
    c.find(Locator::Css(
        "button[data-action=redeliver][data-delivery=\"guid-v2\"]",
    ))
    .await
    .unwrap()
    .click()
    .await
    .unwrap();
    let newest = before.iter().map(|(id, _)| *id).max().unwrap();
    let appeared = until("a new deployment on the page", 30, || async {
        let list = listed_deployments(c).await?;
        Ok(list.into_iter().find(|(id, _)| *id > newest))
    })
    .await;
    let message = text_of(c, "#message").await.unwrap_or_default();
    assert!(
        message.starts_with("Redeliver guid-v2: queued")
            && message.contains(&format!("#{}", appeared.0)),
        "{message}"
    );
    let id = appeared.0;
    until(
        "the redelivered deployment to succeed on the page",
        120,
        || async {
            let list = listed_deployments(c).await?;
            let state = list.iter().find(|(d, _)| *d == id).map(|(_, s)| s.clone());
            match state.as_deref() {
                Some("succeeded") => Ok(Some(())),
                Some(s @ ("failed" | "rolled_back" | "interrupted")) => {
                    panic!("deployment {id} ended {s}")
                }
                other => Err(format!("deployment {id}: {other:?}")),
            }
        },
    )
    .await;
    until("v2 live on the page", 30, || async {
        let tag = text_of(c, &format!("{row} td.tag")).await?;
        Ok((tag == "v2").then_some(()))
    })
    .await;
    let timeline = text_of(c, &format!("article[data-deployment=\"{id}\"] ol.timeline"))
        .await
        .unwrap();
    for step in [
        "resolving",
        "pulling",
        "health_gate",
        "switching",
        "draining",
        "succeeded",
    ] {
        assert!(timeline.contains(step), "{step} in {timeline}");
    }

    // Keep what it looked like, wide and on a phone.
    let shot = out.join("status-page.png");
    std::fs::write(&shot, c.screenshot().await.unwrap()).unwrap();
    eprintln!("screenshot: {}", shot.display());
    c.set_window_size(390, 844).await.unwrap();
    let widths: Value = c
        .execute(
            "return [document.documentElement.scrollWidth, window.innerWidth];",
            vec![],
        )
        .await
        .unwrap();
    let (page_w, view_w) = (widths[0].as_i64().unwrap(), widths[1].as_i64().unwrap());
    assert!(
        page_w <= view_w,
        "on a phone only the tables scroll sideways, not the page: {page_w} > {view_w}"
    );
    let shot = out.join("status-page-phone.png");
    std::fs::write(&shot, c.screenshot().await.unwrap()).unwrap();
    eprintln!("screenshot: {}", shot.display());
}
