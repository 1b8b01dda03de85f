//! Deployment notifications against real receivers on loopback: Debian's aiosmtpd
//! (with `tests/smtp_sink.py`, which writes what it accepts as JSON) for SMTP, and
//! a scripted HTTP receiver standing in for Slack's incoming webhook.
//!
//! The retry rules are shown on the notifier alone (a store and a config, no
//! Docker); what a deployment sends, and that a dead receiver never holds one
//! up, on the whole product (`World`: registry, nginx, Docker, greenlight).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::slack::{reply, Reply, SlackReceiver, SLACK_SECRET, WAIT};
use common::{NginxKind, Target, World};
use greenlight::config::Config;
use greenlight::domain::deployment::{FailureKind, State, Trigger};
use greenlight::domain::plan::{Step, Strategy};
use greenlight::notify::{Attempt, Notifier};
use greenlight::store::{Failure, NewDeployment, Store};
use greenlight_testkit::env::free_port;
use serde_json::{json, Value};
use tokio::net::TcpListener;

const NO_ENV: &[(&str, &str)] = &[];
const SMTP_PASSWORD: &str = "smtp-secret-pass-4821";

// ---------------------------------------------------------------------------
// Receivers

/// Debian's aiosmtpd on a free loopback port, writing each accepted message to a
/// directory. Killed on drop.
struct SmtpSink {
    port: u16,
    dir: tempfile::TempDir,
    child: Child,
}

enum SmtpTls<'a> {
    Plain,
    /// STARTTLS offered and required: (cert, key).
    Starttls(&'a Path, &'a Path),
    /// TLS from the first byte (SMTPS): (cert, key).
    Smtps(&'a Path, &'a Path),
}

impl SmtpSink {
    fn start() -> SmtpSink {
        SmtpSink::start_with(SmtpTls::Plain, 0, "451 4.3.0 try again later")
    }

    /// Refuses the first `refuse_first` messages with `reply`.
    fn start_with(tls: SmtpTls, refuse_first: u32, reply: &str) -> SmtpSink {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("aiosmtpd.log")).unwrap();
        let mut cmd = std::process::Command::new("/usr/bin/python3");
        cmd.env("PYTHONPATH", concat!(env!("CARGO_MANIFEST_DIR"), "/tests"))
            .args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}")]);
        match tls {
            SmtpTls::Plain => {}
            SmtpTls::Starttls(cert, key) => {
                cmd.arg("--tlscert").arg(cert).arg("--tlskey").arg(key);
            }
            SmtpTls::Smtps(cert, key) => {
                cmd.arg("--smtpscert").arg(cert).arg("--smtpskey").arg(key);
            }
        }
        let child = cmd
            .args(["-c", "smtp_sink.Sink"])
            .arg(dir.path().join("out"))
            .arg(refuse_first.to_string())
            .arg(reply)
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("run /usr/bin/python3 -m aiosmtpd (apt-get install python3-aiosmtpd)");
        let mut sink = SmtpSink { port, dir, child };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = sink.child.try_wait() {
                panic!("aiosmtpd exited with {status}:\n{}", sink.log());
            }
            assert!(
                Instant::now() < deadline,
                "aiosmtpd did not listen:\n{}",
                sink.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        sink
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("aiosmtpd.log")).unwrap_or_default()
    }

    fn files(&self, ext: &str) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.dir.path().join("out"))
            .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        files.retain(|p| p.extension().is_some_and(|e| e == ext));
        files.sort();
        files
    }

    /// The accepted messages, oldest first.
    fn messages(&self) -> Vec<Value> {
        self.files("json")
            .iter()
            .map(|p| serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap())
            .collect()
    }

    fn refused(&self) -> usize {
        self.files("refused").len()
    }

    async fn wait_for(&self, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + WAIT;
        loop {
            let got = self.messages();
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {n} emails arrived:\n{}",
                got.len(),
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How the Slack stand-in answers one request.
/// Accepts connections and never answers: a receiver that hangs.
struct BlackHole {
    port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl BlackHole {
    async fn start() -> BlackHole {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((conn, _)) = listener.accept().await {
                held.push(conn);
            }
        });
        BlackHole { port, task }
    }
}

impl Drop for BlackHole {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---------------------------------------------------------------------------
// The notifier alone: a config, a store, deployments written as the pipeline does.

fn config(service_extra: &str, notify: &str) -> Config {
    let text = format!(
        r#"
[server]
admin_token = "0123456789abcdef0123"

[nginx]
mode = "host"
upstreams_dir = "/tmp/greenlight-notify-test"
config = "/tmp/greenlight-notify-test/nginx.conf"

[[service]]
name = "web"
image = "registry.example/acme/web"
port = 8080
{service_extra}

[[service]]
name = "api"
image = "registry.example/acme/api"
port = 8080

{notify}
"#
    );
    Config::parse(Path::new("test.toml"), &text, |_| None).unwrap()
}

fn email_section(port: u16, extra: &str) -> String {
    format!(
        r#"
[notify.email]
server = "127.0.0.1"
port = {port}
security = "none"
from = "greenlight <greenlight@example.com>"
to = ["ops@example.com", "dev@example.com"]
{extra}
"#
    )
}

fn slack_section(url: &str, extra: &str) -> String {
    format!("\n[notify.slack]\nwebhook_url = \"{url}\"\n{extra}\n")
}

const FAST_RETRY: &str = "[notify]\nretry_base = \"100ms\"\nmax_attempts = 5\ntimeout = \"5s\"\n";

/// A deployment of `service` recorded the way the pipeline records one, ending in `end`.
fn deployment(store: &Store, service: &str, end: State) -> i64 {
    deployment_by(store, service, end, "operator")
}

/// The same, asked for by `trigger` (`operator`, or a webhook source).
fn deployment_by(store: &Store, service: &str, end: State, trigger: &str) -> i64 {
    let id = store
        .create_deployment(&NewDeployment {
            trigger: trigger.parse().expect("a trigger"),
            tag: Some("v2".into()),
            ..NewDeployment::operator(service, "deploy")
        })
        .unwrap();
    store
        .claim(
            id,
            Strategy::BlueGreen,
            1,
            &[Step::Resolving, Step::Pulling],
        )
        .unwrap();
    store.begin_step(id, &Step::Resolving, service).unwrap();
    store
        .set_target(
            id,
            Some("v2"),
            &format!("sha256:{}", "2".repeat(64)),
            "registry.example/acme/web@sha256:2",
            None,
        )
        .unwrap();
    store.begin_step(id, &Step::Pulling, service).unwrap();
    let failure = Failure {
        step: Some("pulling".into()),
        ..Failure::new(FailureKind::RegistryRefused, "manifest unknown")
    };
    store
        .finish(id, end, (end == State::Failed).then_some(&failure))
        .unwrap();
    id
}

/// Waits until the attempts recorded for `id` satisfy `done`.
async fn attempts_until(store: &Store, id: i64, done: impl Fn(&[Attempt]) -> bool) -> Vec<Attempt> {
    let deadline = Instant::now() + WAIT;
    loop {
        let got = store.notifications(id).unwrap();
        if done(&got) {
            return got;
        }
        assert!(Instant::now() < deadline, "attempts so far: {got:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn ended(channel: &'static str) -> impl Fn(&[Attempt]) -> bool {
    move |a| {
        a.iter()
            .any(|a| a.channel == channel && (a.outcome == "sent" || a.outcome == "gave_up"))
    }
}

fn outcomes(attempts: &[Attempt], channel: &str) -> Vec<String> {
    attempts
        .iter()
        .filter(|a| a.channel == channel)
        .map(|a| a.outcome.clone())
        .collect()
}

fn assert_no_secret(text: &str) {
    assert!(
        !text.contains("slack-secret-path") && !text.contains("T0SECRET"),
        "the Slack URL leaked: {text}"
    );
    assert!(
        !text.contains(SMTP_PASSWORD),
        "the SMTP password leaked: {text}"
    );
}

/// Finding 9: a sender whose pushes keep failing cannot message the team for
/// each: past 3 webhook-caused failures of a service in 10 minutes they are
/// held back; an operator's deployment and another service still notify.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_failures_do_not_flood_the_channels() {
    let slack = SlackReceiver::start(vec![]).await;
    let store = Store::in_memory().unwrap();
    let cfg = config(
        "",
        &format!("{FAST_RETRY}{}", slack_section(&slack.url(), "")),
    );
    let notifier = Notifier::new(&cfg, store.clone());
    let pushed: Vec<i64> = (0..8)
        .map(|_| deployment_by(&store, "web", State::Failed, "dockerhub"))
        .collect();
    for id in &pushed {
        notifier.finished(*id);
    }
    let operator = deployment(&store, "web", State::Failed);
    notifier.finished(operator);
    let other = deployment_by(&store, "api", State::Failed, "registry");
    notifier.finished(other);
    attempts_until(&store, operator, ended("slack")).await;
    attempts_until(&store, other, ended("slack")).await;
    for id in &pushed[..3] {
        attempts_until(&store, *id, ended("slack")).await;
    }
    let got = slack.wait_for(5).await;
    assert_eq!(
        got.len(),
        5,
        "3 webhook failures of web, the operator's, api's: {got:#?}"
    );
    for id in &pushed[3..] {
        assert!(
            store.notifications(*id).unwrap().is_empty(),
            "deployment {id} was notified"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_answering_500_then_200_delivers_exactly_one_message() {
    let slack = SlackReceiver::start(vec![reply(500, "oops")]).await;
    let store = Store::in_memory().unwrap();
    let cfg = config(
        "",
        &format!("{FAST_RETRY}{}", slack_section(&slack.url(), "")),
    );
    let notifier = Notifier::new(&cfg, store.clone());
    let id = deployment(&store, "web", State::Succeeded);

    notifier.finished(id);
    let attempts = attempts_until(&store, id, ended("slack")).await;

    assert_eq!(outcomes(&attempts, "slack"), vec!["failed", "sent"]);
    assert!(
        attempts[0]
            .detail
            .as_deref()
            .unwrap()
            .contains("HTTP 500: oops; retrying in"),
        "{attempts:#?}"
    );
    let got = slack.received();
    assert_eq!(got.len(), 2, "one refused, one delivered");
    assert_eq!(slack.delivered().len(), 1);
    assert_eq!(got[0].body, got[1].body, "the retry sends the same message");
    assert_eq!(got[1].path, format!("/services/{SLACK_SECRET}"));
    assert_no_secret(&format!("{attempts:?}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_429_with_retry_after_is_honoured() {
    let slack = SlackReceiver::start(vec![Reply {
        status: 429,
        headers: vec![("Retry-After", "1")],
        body: "rate_limited",
    }])
    .await;
    let store = Store::in_memory().unwrap();
    // The backoff alone would come back after at most 100ms.
    let cfg = config(
        "",
        &format!("{FAST_RETRY}{}", slack_section(&slack.url(), "")),
    );
    let notifier = Notifier::new(&cfg, store.clone());
    let id = deployment(&store, "web", State::Succeeded);

    notifier.finished(id);
    let attempts = attempts_until(&store, id, ended("slack")).await;

    assert_eq!(outcomes(&attempts, "slack"), vec!["failed", "sent"]);
    assert!(
        attempts[0]
            .detail
            .as_deref()
            .unwrap()
            .contains("HTTP 429: rate_limited; retrying in 1.0s"),
        "{attempts:#?}"
    );
    let got = slack.received();
    assert_eq!(got.len(), 2);
    let gap = got[1].at - got[0].at;
    assert!(
        gap >= Duration::from_secs(1),
        "came back after {gap:?}, before Retry-After"
    );
    assert!(gap < Duration::from_secs(5), "came back after {gap:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_400_is_not_retried() {
    let slack = SlackReceiver::start(vec![reply(400, "invalid_payload")]).await;
    let store = Store::in_memory().unwrap();
    let cfg = config(
        "",
        &format!("{FAST_RETRY}{}", slack_section(&slack.url(), "")),
    );
    let notifier = Notifier::new(&cfg, store.clone());
    let id = deployment(&store, "web", State::Failed);

    notifier.finished(id);
    let attempts = attempts_until(&store, id, ended("slack")).await;

    assert_eq!(outcomes(&attempts, "slack"), vec!["gave_up"]);
    let detail = attempts[0].detail.as_deref().unwrap();
    assert!(
        detail.contains("HTTP 400: invalid_payload; not retried"),
        "{detail}"
    );
    assert_eq!(slack.received().len(), 1);
    assert_no_secret(detail);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_451_is_retried_and_550_is_not() {
    let busy = SmtpSink::start_with(SmtpTls::Plain, 1, "451 4.3.0 try again later");
    let store = Store::in_memory().unwrap();
    let cfg = config("", &format!("{FAST_RETRY}{}", email_section(busy.port, "")));
    let notifier = Notifier::new(&cfg, store.clone());
    let id = deployment(&store, "web", State::Succeeded);
    notifier.finished(id);
    let attempts = attempts_until(&store, id, ended("email")).await;
    assert_eq!(outcomes(&attempts, "email"), vec!["failed", "sent"]);
    assert!(
        attempts[0].detail.as_deref().unwrap().contains("451"),
        "{attempts:#?}"
    );
    assert_eq!(busy.refused(), 1);
    assert_eq!(busy.messages().len(), 1);

    let refusing = SmtpSink::start_with(SmtpTls::Plain, 99, "550 5.7.1 not from you");
    let store = Store::in_memory().unwrap();
    let cfg = config(
        "",
        &format!("{FAST_RETRY}{}", email_section(refusing.port, "")),
    );
    let notifier = Notifier::new(&cfg, store.clone());
    let id = deployment(&store, "web", State::Succeeded);
    notifier.finished(id);
    let attempts = attempts_until(&store, id, ended("email")).await;
    assert_eq!(outcomes(&attempts, "email"), vec!["gave_up"]);
    let detail = attempts[0].detail.as_deref().unwrap();
    assert!(
        detail.contains("550") && detail.contains("not retried"),
        "{detail}"
    );
    assert_eq!(refusing.refused(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_goes_over_starttls_and_tls_to_a_relay_with_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = greenlight_testkit::env::certificates(dir.path());
    for (mode, tls) in [
        ("starttls", SmtpTls::Starttls(&cert, &key)),
        ("tls", SmtpTls::Smtps(&cert, &key)),
    ] {
        let sink = SmtpSink::start_with(tls, 0, "");
        let email = email_section(sink.port, &format!("ca_file = \"{}\"", ca.display()))
            .replace("security = \"none\"", &format!("security = \"{mode}\""));
        let store = Store::in_memory().unwrap();
        let cfg = config("", &format!("{FAST_RETRY}{email}"));
        let notifier = Notifier::new(&cfg, store.clone());
        let id = deployment(&store, "web", State::Succeeded);
        notifier.finished(id);
        let attempts = attempts_until(&store, id, ended("email")).await;
        assert_eq!(
            outcomes(&attempts, "email"),
            vec!["sent"],
            "{mode}: {attempts:#?}"
        );
        let mail = sink.wait_for(1).await;
        if mode == "starttls" {
            assert_eq!(mail[0]["tls"], true, "STARTTLS was used");
        }

        // Without the private CA the relay's certificate is not trusted.
        let email = email_section(sink.port, "")
            .replace("security = \"none\"", &format!("security = \"{mode}\""));
        let store = Store::in_memory().unwrap();
        let cfg = config(
            "",
            &format!("[notify]\nmax_attempts = 1\ntimeout = \"5s\"\n{email}"),
        );
        let notifier = Notifier::new(&cfg, store.clone());
        let id = deployment(&store, "web", State::Succeeded);
        notifier.finished(id);
        let attempts = attempts_until(&store, id, ended("email")).await;
        assert_eq!(outcomes(&attempts, "email"), vec!["gave_up"], "{mode}");
        let detail = attempts[0].detail.as_deref().unwrap().to_lowercase();
        assert!(detail.contains("certificate"), "{mode}: {detail}");
        assert_eq!(sink.messages().len(), 1, "{mode}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_started_message_comes_before_the_outcome_and_each_is_sent_once() {
    let slack = SlackReceiver::start(vec![]).await;
    let smtp = SmtpSink::start();
    let store = Store::in_memory().unwrap();
    let notify = format!(
        "{FAST_RETRY}{}{}",
        email_section(smtp.port, ""),
        slack_section(
            &slack.url(),
            "on = [\"started\", \"succeeded\", \"failed\", \"rolled_back\"]"
        )
    );
    let notifier = Notifier::new(&config("", &notify), store.clone());
    let id = store
        .create_deployment(&NewDeployment {
            trigger: Trigger::Github,
            trigger_detail: Some(
                json!({"source": "github", "delivery_id": "d-42", "pusher": "alice"}),
            ),
            tag: Some("v2".into()),
            ..NewDeployment::operator("web", "deploy")
        })
        .unwrap();
    notifier.started(id);
    store
        .claim(id, Strategy::BlueGreen, 1, &[Step::Resolving])
        .unwrap();
    store.begin_step(id, &Step::Resolving, "web").unwrap();
    store.finish(id, State::Succeeded, None).unwrap();
    // Called twice (a bug elsewhere, a restart): still one message per channel.
    notifier.finished(id);
    notifier.finished(id);

    let got = slack.wait_for(2).await;
    assert!(
        got[0].body["text"]
            .as_str()
            .unwrap()
            .contains("deploying v2"),
        "{:#}",
        got[0].body
    );
    assert_eq!(got[1].body["text"], "web: v2 is live");
    assert!(
        got[1]
            .body
            .to_string()
            .contains("github push, delivery d-42, pushed by alice"),
        "{:#}",
        got[1].body
    );
    let mail = smtp.wait_for(1).await;
    assert_eq!(mail[0]["subject"], "[greenlight] web: v2 is live");
    let attempts = attempts_until(&store, id, |a| {
        a.iter().filter(|a| a.outcome == "sent").count() == 3
    })
    .await;
    let sent: Vec<_> = attempts
        .iter()
        .map(|a| (a.channel.as_str(), a.event.as_str(), a.outcome.as_str()))
        .collect();
    assert!(sent.contains(&("slack", "started", "sent")), "{sent:?}");
    assert!(sent.contains(&("slack", "succeeded", "sent")), "{sent:?}");
    assert!(sent.contains(&("email", "succeeded", "sent")), "{sent:?}");
    assert_eq!(sent.len(), 3, "{sent:?}");

    // Later calls find the outcome recorded and send nothing more.
    notifier.finished(id);
    let again = deployment(&store, "web", State::Failed);
    notifier.finished(again);
    smtp.wait_for(2).await;
    assert_eq!(slack.wait_for(3).await.len(), 3);
    assert_eq!(smtp.messages().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn superseded_and_already_live_send_nothing_unless_configured() {
    let slack = SlackReceiver::start(vec![]).await;
    let smtp = SmtpSink::start();
    let store = Store::in_memory().unwrap();
    // Email wants the quiet events; Slack keeps the default.
    let notify = format!(
        "{FAST_RETRY}{}{}",
        email_section(smtp.port, "on = [\"superseded\", \"already_live\"]"),
        slack_section(&slack.url(), "")
    );
    let notifier = Notifier::new(&config("", &notify), store.clone());
    let superseded = deployment(&store, "web", State::Superseded);
    let live = deployment(&store, "web", State::AlreadyLive);
    notifier.finished(superseded);
    notifier.finished(live);

    // Both were routed (the emails arrived) and Slack was not among the routes.
    let mail = smtp.wait_for(2).await;
    let subjects: Vec<_> = mail
        .iter()
        .map(|m| m["subject"].as_str().unwrap())
        .collect();
    assert!(
        subjects.contains(&"[greenlight] web: v2 superseded by a newer request"),
        "{subjects:?}"
    );
    assert!(
        subjects.contains(&"[greenlight] web: v2 is already live; nothing to do"),
        "{subjects:?}"
    );
    for id in [superseded, live] {
        let attempts = attempts_until(&store, id, ended("email")).await;
        assert_eq!(outcomes(&attempts, "slack"), Vec::<String>::new());
    }
    assert!(slack.received().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_can_send_elsewhere_and_silence_a_channel() {
    let slack = SlackReceiver::start(vec![]).await;
    let smtp = SmtpSink::start();
    let store = Store::in_memory().unwrap();
    let service =
        "[service.notify]\nemail = { to = [\"web-team@example.com\"] }\nslack = { on = [] }\n";
    let notify = format!(
        "{FAST_RETRY}{}{}",
        email_section(smtp.port, ""),
        slack_section(&slack.url(), "")
    );
    let notifier = Notifier::new(&config(service, &notify), store.clone());
    let web = deployment(&store, "web", State::Failed);
    notifier.finished(web);
    let api = deployment(&store, "api", State::Failed);
    notifier.finished(api);

    let mail = smtp.wait_for(2).await;
    let to_of = |subject_has: &str| {
        mail.iter()
            .find(|m| m["subject"].as_str().unwrap().contains(subject_has))
            .map(|m| m["rcpt_tos"].clone())
            .unwrap()
    };
    assert_eq!(to_of("web:"), json!(["web-team@example.com"]));
    assert_eq!(to_of("api:"), json!(["ops@example.com", "dev@example.com"]));
    let got = slack.wait_for(1).await;
    attempts_until(&store, web, ended("email")).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].body["text"], "api: v2 failed at pulling");
}

// ---------------------------------------------------------------------------
// The whole product: real deployments through registry, Docker and nginx.

/// `[notify]` for a World; `login`: with a username and password at the relay.
fn notify_config(smtp_port: u16, slack_url: &str, extra: &str, login: bool) -> String {
    let login = if login {
        format!("username = \"greenlight\"\npassword = \"{SMTP_PASSWORD}\"\n")
    } else {
        String::new()
    };
    format!(
        r#"
[notify]
retry_base = "100ms"
max_attempts = 2
{extra}

[notify.email]
server = "127.0.0.1"
port = {smtp_port}
security = "none"
{login}from = "greenlight <greenlight@example.com>"
to = ["ops@example.com", "dev@example.com"]

[notify.slack]
webhook_url = "{slack_url}"
"#
    )
}

/// The notification attempts the admin API shows for a deployment.
async fn api_attempts(w: &World, id: i64, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + WAIT;
    loop {
        let d = w.gl.get(&format!("/api/deployments/{id}")).await;
        let attempts = d["notifications"].as_array().cloned().unwrap_or_default();
        if done(&attempts) {
            return attempts;
        }
        assert!(
            Instant::now() < deadline,
            "notifications of {id}: {attempts:#?}\n{}",
            w.gl.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn all_ended(channels: usize) -> impl Fn(&[Value]) -> bool {
    move |a| {
        a.iter()
            .filter(|a| a["outcome"] == "sent" || a["outcome"] == "gave_up")
            .count()
            >= channels
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_succeeded_and_a_failed_deployment_each_send_one_email_and_one_slack_message() {
    let smtp = SmtpSink::start();
    let slack = SlackReceiver::start(vec![]).await;
    let w = World::with_config(
        "ns",
        NginxKind::Host,
        &[
            ("v1", NO_ENV),
            // Exits before it is ever healthy: fails at health_gate with a log tail.
            (
                "crash",
                &[
                    ("DEMO_START_DELAY_MS", "60000"),
                    ("DEMO_EXIT_AFTER_MS", "500"),
                ],
            ),
        ],
        &notify_config(smtp.port, &slack.url(), "", false),
    );
    let ok = w.deploy_ok("v1").await;
    let ok_id = ok["id"].as_i64().unwrap();
    let failed = w.gl.deploy_and_wait(&w.service, Target::Tag("crash")).await;
    assert_eq!(failed["state"], "failed", "{failed:#}");
    let failed_id = failed["id"].as_i64().unwrap();
    let error = failed["error"].as_str().unwrap().to_string();

    let ok_attempts = api_attempts(&w, ok_id, all_ended(2)).await;
    let failed_attempts = api_attempts(&w, failed_id, all_ended(2)).await;
    for (attempts, event) in [(&ok_attempts, "succeeded"), (&failed_attempts, "failed")] {
        let mut seen: Vec<_> = attempts
            .iter()
            .map(|a| {
                (
                    a["channel"].as_str().unwrap(),
                    a["event"].as_str().unwrap(),
                    a["attempt"].as_i64().unwrap(),
                    a["outcome"].as_str().unwrap(),
                )
            })
            .collect();
        seen.sort();
        assert_eq!(
            seen,
            vec![("email", event, 1, "sent"), ("slack", event, 1, "sent")]
        );
    }

    // Exactly one email per deployment, to the configured recipients.
    let mail = smtp.wait_for(2).await;
    assert_eq!(mail.len(), 2, "{mail:#?}");
    let svc = &w.service;
    for m in &mail {
        assert_eq!(m["rcpt_tos"], json!(["ops@example.com", "dev@example.com"]));
        assert_eq!(m["mail_from"], "greenlight@example.com");
        assert_eq!(m["content_type"], "multipart/alternative");
        assert!(m["html"].as_str().unwrap().contains("<html>"));
    }
    let success = mail
        .iter()
        .find(|m| m["subject"].as_str().unwrap().contains("is live"))
        .expect("the success email");
    assert_eq!(
        success["subject"],
        format!("[greenlight] {svc}: v1 is live")
    );
    let text = success["text"].as_str().unwrap();
    assert!(
        text.contains(&format!("Deployment: #{ok_id} succeeded")),
        "{text}"
    );
    assert!(text.contains("(nothing live) -> v1 ("), "{text}");
    assert!(
        text.contains("Trigger:    operator: greenlight deploy"),
        "{text}"
    );
    for step in [
        "pulling",
        "health_gate",
        "switching",
        "verifying",
        "pruning",
    ] {
        assert!(text.contains(&format!("  {step} ")), "{step}: {text}");
    }

    let failure = mail
        .iter()
        .find(|m| m["subject"].as_str().unwrap().contains("failed"))
        .expect("the failure email");
    assert_eq!(
        failure["subject"],
        format!("[greenlight] {svc}: crash failed at health_gate")
    );
    let text = failure["text"].as_str().unwrap();
    assert!(text.contains("Failed step: health_gate"), "{text}");
    assert!(text.contains(&format!("Error:       {error}")), "{text}");
    assert!(text.contains("Exit code:   3"), "{text}");
    assert!(text.contains("  | demo: exiting"), "{text}");
    assert!(text.contains("v1 ("), "names what stays live: {text}");
    let html = failure["html"].as_str().unwrap();
    assert!(
        html.contains("demo: exiting") && html.contains("health_gate"),
        "{html}"
    );

    // Exactly one Slack message per deployment, coloured by outcome.
    let got = slack.wait_for(2).await;
    assert_eq!(got.len(), 2);
    let ok_msg = &got
        .iter()
        .find(|r| r.body["text"] == format!("{svc}: v1 is live"))
        .expect("the success message")
        .body;
    assert_eq!(ok_msg["blocks"][0]["type"], "section");
    assert_eq!(ok_msg["attachments"][0]["color"], "#2eb67d");
    let fail_msg = &got
        .iter()
        .find(|r| r.body["text"] == format!("{svc}: crash failed at health_gate"))
        .expect("the failure message")
        .body;
    assert_eq!(fail_msg["attachments"][0]["color"], "#e01e5a");
    let blocks = fail_msg["attachments"][0]["blocks"].to_string();
    assert!(blocks.contains("*Failed at* `health_gate`"), "{blocks}");
    assert!(blocks.contains("demo: exiting"), "{blocks}");

    // `greenlight history` shows what operators were told.
    let out = w.gl.cli(&["history", "--steps"]);
    assert_eq!(out.status.code(), Some(0));
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains("email sent, slack sent"), "{shown}");
    assert!(
        shown.contains("notify email  failed      #1 sent"),
        "{shown}"
    );
    assert!(
        shown.contains("notify slack  succeeded   #1 sent"),
        "{shown}"
    );
    assert_no_secret(&shown);
    assert_no_secret(&w.gl.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_smtp_and_slack_down_a_deployment_succeeds_on_time_and_history_shows_the_failed_attempts(
) {
    // SMTP: nothing listens. Slack: accepts and never answers, for `timeout`.
    let smtp_port = free_port();
    let hole = BlackHole::start().await;
    let slack_url = format!("http://127.0.0.1:{}/services/{SLACK_SECRET}", hole.port);
    let notify = notify_config(smtp_port, &slack_url, "timeout = \"10s\"", true).replace(
        "[notify.slack]",
        "on = [\"started\", \"succeeded\", \"failed\", \"rolled_back\"]\n\n[notify.slack]",
    ) + "on = [\"started\", \"succeeded\", \"failed\", \"rolled_back\"]\n";
    let w = World::with_config("nd", NginxKind::Host, &[("v1", NO_ENV)], &notify);

    let d = w.deploy_ok("v1").await;
    let id = d["id"].as_i64().unwrap();
    let finished_at = d["finished_at"].as_i64().unwrap();

    // Started and outcome, twice each (max_attempts = 2), per channel.
    let attempts = api_attempts(&w, id, |a| {
        a.iter().filter(|a| a["outcome"] == "gave_up").count() == 4
    })
    .await;
    let first_slack = attempts
        .iter()
        .filter(|a| a["channel"] == "slack")
        .map(|a| a["at"].as_i64().unwrap())
        .min()
        .unwrap();
    assert!(
        finished_at < first_slack,
        "the deployment finished while the first Slack attempt still hung \
         (finished {finished_at}, first attempt ended {first_slack})"
    );
    let took = finished_at - d["created_at"].as_i64().unwrap();
    assert!(took < 10_000, "deployment took {took} ms");
    let mut seen: Vec<_> = attempts
        .iter()
        .map(|a| {
            (
                a["channel"].as_str().unwrap(),
                a["event"].as_str().unwrap(),
                a["attempt"].as_i64().unwrap(),
                a["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        vec![
            ("email", "started", 1, "failed"),
            ("email", "started", 2, "gave_up"),
            ("email", "succeeded", 1, "failed"),
            ("email", "succeeded", 2, "gave_up"),
            ("slack", "started", 1, "failed"),
            ("slack", "started", 2, "gave_up"),
            ("slack", "succeeded", 1, "failed"),
            ("slack", "succeeded", 2, "gave_up"),
        ]
    );
    let detail = |channel: &str| {
        attempts
            .iter()
            .find(|a| a["channel"] == channel)
            .and_then(|a| a["detail"].as_str())
            .unwrap()
            .to_string()
    };
    assert!(
        detail("email").contains(&format!("smtp 127.0.0.1:{smtp_port}")),
        "{}",
        detail("email")
    );
    assert!(
        detail("slack").contains("no answer within 10.0s"),
        "{}",
        detail("slack")
    );

    let out = w.gl.cli(&["history"]);
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains("email gave_up(4), slack gave_up(4)"),
        "{shown}"
    );
    let out = w.gl.cli(&["history", "--steps"]);
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains("notify slack  succeeded   #2 gave_up"),
        "{shown}"
    );
    assert_no_secret(&shown);
    assert_no_secret(
        &w.gl
            .get(&format!("/api/deployments/{id}"))
            .await
            .to_string(),
    );
    assert_no_secret(&w.gl.log());
}

// ---------------------------------------------------------------------------
// `greenlight notify test`: needs only the config.

fn write_config(dir: &Path, notify: &str) -> PathBuf {
    let path = dir.join("greenlight.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nadmin_token = \"0123456789abcdef0123\"\n\n[nginx]\nmode = \"host\"\n\
             upstreams_dir = \"/tmp\"\nconfig = \"/tmp/nginx.conf\"\n\n\
             [[service]]\nname = \"web\"\nimage = \"registry.example/acme/web\"\nport = 8080\n\n{notify}"
        ),
    )
    .unwrap();
    path
}

async fn notify_test(config: &Path, args: &[&str]) -> (i32, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_greenlight"))
        .arg("--config")
        .arg(config)
        .args(["notify", "test"])
        .args(args)
        .output()
        .await
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_test_sends_through_each_channel_and_says_what_happened() {
    let smtp = SmtpSink::start();
    let slack = SlackReceiver::start(vec![]).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            "{}{}",
            email_section(smtp.port, ""),
            slack_section(&slack.url(), "")
        ),
    );

    let (code, text) = notify_test(&config, &[]).await;
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains(&format!(
            "ok   email  ops@example.com, dev@example.com via 127.0.0.1:{}",
            smtp.port
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "ok   slack  http://127.0.0.1:{}/<redacted>",
            slack.port
        )),
        "{text}"
    );
    assert_no_secret(&text);
    let mail = smtp.wait_for(1).await;
    assert_eq!(mail[0]["subject"], "[greenlight] test message");
    assert_eq!(
        mail[0]["rcpt_tos"],
        json!(["ops@example.com", "dev@example.com"])
    );
    let got = slack.wait_for(1).await;
    assert!(got[0].body["text"]
        .as_str()
        .unwrap()
        .contains("test message"));

    let (code, text) = notify_test(&config, &["--channel", "slack"]).await;
    assert_eq!(code, 0, "{text}");
    assert!(!text.contains("email"), "{text}");
    assert_eq!(slack.wait_for(2).await.len(), 2);
    assert_eq!(smtp.messages().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_test_names_a_failing_channel_without_its_secret_and_exits_1() {
    let smtp = SmtpSink::start();
    let slack = SlackReceiver::start(vec![reply(404, "no_service")]).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            "{}{}",
            email_section(smtp.port, ""),
            slack_section(&slack.url(), "")
        ),
    );
    let (code, text) = notify_test(&config, &[]).await;
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("ok   email"), "{text}");
    assert!(text.contains("FAIL slack"), "{text}");
    assert!(text.contains("HTTP 404: no_service"), "{text}");
    assert_no_secret(&text);

    let (code, text) = notify_test(&config, &["--channel", "email", "--json"]).await;
    assert_eq!(code, 0, "{text}");
    let report: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(report[0]["channel"], "email");
    assert_eq!(report[0]["ok"], true);
    assert_eq!(report.as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_owed_when_greenlight_is_killed_is_sent_after_the_restart() {
    // Slack fails once; the retry is due in 30 to 60 s, long after the crash.
    let slack = SlackReceiver::start(vec![reply(500, "oops")]).await;
    let notify = format!(
        "[notify]\nretry_base = \"60s\"\nmax_attempts = 5\ntimeout = \"5s\"\n{}",
        slack_section(&slack.url(), "")
    );
    let mut w = World::with_config("owed", NginxKind::Host, &[("v1", NO_ENV)], &notify);
    let id = w.deploy_ok("v1").await["id"].as_i64().unwrap();
    api_attempts(&w, id, |a| a.iter().any(|a| a["outcome"] == "failed")).await;

    w.gl.kill();
    let restarted = Instant::now();
    w.gl.start();
    let attempts = api_attempts(&w, id, all_ended(1)).await;
    let took = restarted.elapsed();
    let seen: Vec<_> = attempts
        .iter()
        .map(|a| {
            (
                a["event"].as_str().unwrap(),
                a["attempt"].as_i64().unwrap(),
                a["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![("succeeded", 1, "failed"), ("succeeded", 2, "sent")],
        "the series goes on where the crash cut it"
    );
    assert!(
        took < Duration::from_secs(25),
        "sent on start, not when the lost retry was due: {took:?}"
    );
    let delivered = slack.delivered();
    assert_eq!(delivered.len(), 1, "{delivered:#?}");
    // Another restart owes nothing (the outbox is read before the server
    // answers): no second message.
    w.gl.restart();
    let again = w.gl.deploy_and_wait(&w.service, Target::Tag("v1")).await;
    assert_eq!(again["state"], "already_live");
    assert_eq!(slack.delivered().len(), 1);
}
