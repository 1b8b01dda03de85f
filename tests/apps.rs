//! Real apps: a release command (a migration) before the new version starts,
//! lifecycle hooks on the host, and container options, against a real Docker
//! engine, a real nginx and a real registry, with the load probe running
//! through nginx during the deploys.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::load::{assert_flips_once, assert_zero_failures, probe, versions};
use common::slack::SlackReceiver;
use common::{NginxKind, Target, World};
use serde_json::Value;

const NO_ENV: &[(&str, &str)] = &[];
const REQUIRES_MIGRATION: &[(&str, &str)] = &[("DEMO_REQUIRE_FILE", "/data/schema")];

/// The step of `d` named `name` (the first one).
fn step<'a>(d: &'a Value, name: &str) -> &'a Value {
    d["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == name)
        .unwrap_or_else(|| panic!("no {name} step: {d:#}"))
}

fn detail(d: &Value, name: &str) -> String {
    step(d, name)["detail"].as_str().unwrap_or("").to_string()
}

/// Waits until deployment `id` is at `step`.
async fn wait_step(w: &World, id: i64, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let d = w.gl.get(&format!("/api/deployments/{id}")).await;
        if d["step"] == name {
            return;
        }
        assert!(d["finished_at"].is_null(), "ended before {name}: {d:#}");
        assert!(Instant::now() < deadline, "never reached {name}: {d:#}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Waits until a Slack message whose payload contains every needle arrived.
async fn slack_says(slack: &SlackReceiver, needles: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let bodies: Vec<String> = slack
            .received()
            .iter()
            .map(|r| r.body.to_string())
            .collect();
        if let Some(b) = bodies
            .iter()
            .find(|b| needles.iter().all(|n| b.contains(n)))
        {
            return b.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no Slack message with {needles:?}: {bodies:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn release_section(timeout: &str) -> String {
    format!("\n[service.release]\ncommand = [\"--migrate\", \"/data/schema\"]\ntimeout = \"{timeout}\"\n")
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Containers whose name starts with `prefix`, running or not.
fn named(prefix: &str) -> Vec<String> {
    greenlight_testkit::env::docker(&[
        "ps",
        "--all",
        "--filter",
        &format!("name=^{prefix}"),
        "--format",
        "{{.Names}}",
    ])
    .unwrap()
    .lines()
    .map(str::to_string)
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_migrates_before_the_new_version_starts_and_a_rerun_does_not_repeat_it() {
    let data = tempfile::tempdir().unwrap();
    let mut w = World::new(
        "relok",
        NginxKind::Host,
        &[
            ("v1", NO_ENV),
            ("v2", REQUIRES_MIGRATION),
            ("v3", REQUIRES_MIGRATION),
        ],
    );
    w.configure(
        &format!("volumes = [\"{}:/data\"]", data.path().display()),
        &release_section("60s"),
    );
    let schema = data.path().join("schema");
    let runs = data.path().join("schema.log");

    let d1 = w.deploy_ok("v1").await;
    assert!(
        detail(&d1, "releasing").contains("exited 0"),
        "{}",
        detail(&d1, "releasing")
    );
    assert_eq!(std::fs::read_to_string(&schema).unwrap(), "v1");
    let probe = probe(&w, true);
    assert!(probe.wait_for_version("v1", Duration::from_secs(10)).await);

    // v2 starts only once its schema is there: the release ran first, with
    // the service's volume, in the new image.
    let d2 = w.deploy_ok("v2").await;
    let order = common::recorded_steps(&d2);
    let at = |s: &str| order.iter().position(|x| x == s).unwrap();
    assert!(at("pulling") < at("releasing") && at("releasing") < at("starting"));
    assert!(
        detail(&d2, "releasing").contains("demo migrate: /data/schema is at v2"),
        "{d2:#}"
    );
    assert_eq!(lines(&runs), ["v1", "v2"]);
    // The release container is gone.
    assert_eq!(
        named(&format!("{}-release", w.service)),
        Vec::<String>::new()
    );
    // history --steps shows the output.
    let out = w.gl.cli(&["history", &w.service, "--steps"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("demo migrate: /data/schema is at v2"),
        "{text}"
    );

    // v3's deployment is killed after its release finished, before any v3
    // replica started; the re-run does not migrate again.
    w.gl.env = vec![("GREENLIGHT_TEST_PAUSE_AT".into(), "starting".into())];
    w.gl.restart();
    let id = w.gl.deploy(&w.service, Target::Tag("v3")).await;
    wait_step(&w, id, "starting").await;
    assert_eq!(lines(&runs), ["v1", "v2", "v3"]);
    w.gl.kill();
    w.gl.env.clear();
    w.gl.start();
    let rerun = w.gl.rerun_of(&w.service, id).await;
    let r = w.gl.wait_done(rerun).await;
    assert_eq!(r["state"], "succeeded", "{r:#}\n{}", w.gl.log());
    assert!(
        detail(&r, "releasing").contains(&format!("finished in deployment {id}")),
        "{r:#}"
    );
    assert_eq!(lines(&runs), ["v1", "v2", "v3"], "the release ran again");
    assert_eq!(w.served().await, (200, "v3".into()));

    // A rollback does not run the previous version's migration (v2 runs on
    // v3's schema).
    let out = w.gl.cli(&["rollback", &w.service]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let back =
        w.gl.get(&format!("/api/deployments?service={}", w.service))
            .await;
    let back = w.gl.wait_done(back[0]["id"].as_i64().unwrap()).await;
    assert_eq!(back["state"], "succeeded", "{back:#}");
    assert!(
        detail(&back, "releasing").contains("a rollback does not run the release command"),
        "{back:#}"
    );
    assert_eq!(lines(&runs), ["v1", "v2", "v3"]);
    assert_eq!(std::fs::read_to_string(&schema).unwrap(), "v3");
    assert_eq!(w.served().await, (200, "v2".into()));

    let report = probe.stop().await;
    // Three switches, and the reload reconciling nginx at each of two starts.
    assert_zero_failures(&report, 5);
    // v2 again after the rollback.
    assert_eq!(versions(&report), ["v1", "v2", "v3", "v2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_release_leaves_the_old_version_serving_and_says_why() {
    let slack = SlackReceiver::start(Vec::new()).await;
    let data = tempfile::tempdir().unwrap();
    let mut w = World::with_config(
        "relbad",
        NginxKind::Host,
        &[
            ("v1", NO_ENV),
            ("v2", &[("DEMO_MIGRATE_FAIL", "1")]),
            ("v3", &[("DEMO_MIGRATE_SLEEP_MS", "60000")]),
        ],
        &format!("\n[notify.slack]\nwebhook_url = \"{}\"\n", slack.url()),
    );
    w.configure(
        &format!("volumes = [\"{}:/data\"]", data.path().display()),
        &release_section("3s"),
    );
    w.deploy_ok("v1").await;
    let probe = probe(&w, true);
    assert!(probe.wait_for_version("v1", Duration::from_secs(10)).await);

    // A migration that fails: at `releasing`, with its exit code and output,
    // and no v2 replica ever started.
    let d = w.gl.deploy_and_wait(&w.service, Target::Tag("v2")).await;
    assert_eq!(d["state"], "failed", "{d:#}");
    assert_eq!(d["failed_step"], "releasing", "{d:#}");
    assert_eq!(d["failure_kind"], "release", "{d:#}");
    assert_eq!(d["exit_code"], 4, "{d:#}");
    let tail = d["log_tail"].as_str().unwrap_or("");
    assert!(tail.contains("column \"email\" already exists"), "{d:#}");
    assert!(!common::recorded_steps(&d).contains(&"starting".to_string()));
    assert_eq!(w.served().await, (200, "v1".into()));
    let out = w.gl.cli(&["history", &w.service, "--steps"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("already exists"), "{text}");
    slack_says(&slack, &["releasing", "already exists", "release command"]).await;

    // One that hangs: killed at release.timeout, the release container gone.
    let started = Instant::now();
    let d = w.gl.deploy_and_wait(&w.service, Target::Tag("v3")).await;
    assert_eq!(d["state"], "failed", "{d:#}");
    assert_eq!(d["failed_step"], "releasing", "{d:#}");
    let error = d["error"].as_str().unwrap();
    assert!(error.contains("ran past release.timeout 3s"), "{error}");
    assert!(started.elapsed() < Duration::from_secs(30));
    assert_eq!(
        named(&format!("{}-release", w.service)),
        Vec::<String>::new()
    );
    assert_eq!(w.served().await, (200, "v1".into()));

    let report = probe.stop().await;
    assert_zero_failures(&report, 0);
    assert_eq!(versions(&report), ["v1"]);
    let containers = w.containers();
    assert_eq!(containers.len(), 1, "{containers:?}");
}

/// `KEY=VALUE` lines a hook wrote (its `GREENLIGHT_*` environment), as pairs.
fn hook_env(path: &Path) -> std::collections::BTreeMap<String, String> {
    lines(path)
        .into_iter()
        .filter_map(|l| l.split_once('=').map(|(k, v)| (k.into(), v.into())))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_get_the_deployments_facts_and_a_failing_smoke_test_leaves_nginx_alone() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let mut w = World::new(
        "hooks",
        NginxKind::Host,
        &[("v1", NO_ENV), ("v2", NO_ENV), ("v3", NO_ENV)],
    );
    let save =
        |name: &str| format!("env | grep ^GREENLIGHT_ | sort > {d}/{name}.$GREENLIGHT_DEPLOYMENT");
    let hooks = format!(
        "\n[service.hooks]\n\
         pre_switch = ['sh', '-c', '{}; for a in $GREENLIGHT_ADDRESSES; do curl -fsS http://$a/ >> {d}/smoke.$GREENLIGHT_DEPLOYMENT || exit 9; done; if [ -e {d}/fail-pre-switch ]; then echo smoke test failed: /checkout answered 500; exit 7; fi']\n\
         post_deploy = ['sh', '-c', '{}; if [ -e {d}/fail-post-deploy ]; then echo CDN purge refused: 403 >&2; exit 3; fi']\n\
         on_failure = ['sh', '-c', '{}']\n\
         timeout = \"20s\"\n",
        save("pre_switch"),
        save("post_deploy"),
        save("on_failure"),
    );
    w.configure("", &hooks);
    let file = |name: &str, id: &Value| dir.path().join(format!("{name}.{id}"));

    let d1 = w.deploy_ok("v1").await;
    let pre = hook_env(&file("pre_switch", &d1["id"]));
    assert_eq!(pre["GREENLIGHT_HOOK"], "pre_switch");
    assert_eq!(pre["GREENLIGHT_SERVICE"], w.service);
    assert_eq!(pre["GREENLIGHT_DIGEST"], w.digest("v1"));
    assert_eq!(pre["GREENLIGHT_REPLICAS"], format!("{}-blue-1", w.service));
    // The smoke test reached the new replica on the address it was given.
    let smoke = std::fs::read_to_string(file("smoke", &d1["id"])).unwrap();
    assert!(smoke.contains("\"v1\""), "{smoke}");
    assert!(detail(&d1, "pre_switch").contains("exited 0"), "{d1:#}");
    let order = common::recorded_steps(&d1);
    let at = |s: &str| order.iter().position(|x| x == s).unwrap();
    assert!(at("health_gate") < at("pre_switch") && at("pre_switch") < at("switching"));
    assert!(at("pruning") < at("post_deploy") && at("post_deploy") < at("succeeded"));
    let probe = probe(&w, true);
    assert!(probe.wait_for_version("v1", Duration::from_secs(10)).await);

    let d2 = w.deploy_ok("v2").await;
    let post = hook_env(&file("post_deploy", &d2["id"]));
    assert_eq!(post["GREENLIGHT_HOOK"], "post_deploy");
    assert_eq!(post["GREENLIGHT_DEPLOYMENT"], d2["id"].to_string());
    assert_eq!(post["GREENLIGHT_TAG"], "v2");
    assert_eq!(post["GREENLIGHT_DIGEST"], w.digest("v2"));
    assert_eq!(post["GREENLIGHT_PREVIOUS_DIGEST"], w.digest("v1"));
    assert!(post["GREENLIGHT_IMAGE"].ends_with(w.digest("v2")));

    // A smoke test that fails: before nginx changes, the old version serving.
    let before = w.upstream_file();
    std::fs::write(dir.path().join("fail-pre-switch"), "").unwrap();
    let d3 = w.gl.deploy_and_wait(&w.service, Target::Tag("v3")).await;
    assert_eq!(d3["state"], "failed", "{d3:#}");
    assert_eq!(d3["failed_step"], "pre_switch", "{d3:#}");
    assert_eq!(d3["failure_kind"], "hook", "{d3:#}");
    assert_eq!(d3["exit_code"], 7, "{d3:#}");
    assert!(
        d3["log_tail"]
            .as_str()
            .unwrap_or("")
            .contains("smoke test failed"),
        "{d3:#}"
    );
    assert!(!common::recorded_steps(&d3).contains(&"switching".to_string()));
    assert_eq!(w.upstream_file(), before, "nginx was changed");
    assert_eq!(w.served().await, (200, "v2".into()));
    let failed = hook_env(&file("on_failure", &d3["id"]));
    assert_eq!(failed["GREENLIGHT_OUTCOME"], "failed");
    assert_eq!(failed["GREENLIGHT_FAILED_STEP"], "pre_switch");
    assert_eq!(failed["GREENLIGHT_FAILURE_KIND"], "hook");
    assert!(
        failed["GREENLIGHT_ERROR"].contains("exited 7"),
        "{failed:?}"
    );
    assert_eq!(step(&d3, "on_failure")["outcome"], "ok", "{d3:#}");
    assert_eq!(step(&d3, "pre_switch")["outcome"], "error", "{d3:#}");
    assert_eq!(w.containers().len(), 1, "{:?}", w.containers());

    // A post_deploy hook that fails is noted; the deployment stands.
    std::fs::remove_file(dir.path().join("fail-pre-switch")).unwrap();
    std::fs::write(dir.path().join("fail-post-deploy"), "").unwrap();
    let d4 = w.gl.deploy_and_wait(&w.service, Target::Tag("v3")).await;
    assert_eq!(d4["state"], "succeeded", "{d4:#}");
    let post = step(&d4, "post_deploy");
    assert_eq!(post["outcome"], "error", "{d4:#}");
    let text = post["detail"].as_str().unwrap();
    assert!(
        text.contains("exited 3")
            && text.contains("CDN purge refused")
            && text.contains("never undoes"),
        "{text}"
    );
    assert!(!file("on_failure", &d4["id"]).exists());
    assert_eq!(w.served().await, (200, "v3".into()));

    let report = probe.stop().await;
    assert_zero_failures(&report, 2);
    assert_flips_once(&report, &["v1", "v2", "v3"]);
}

/// `docker inspect` of a container, as JSON.
fn inspect(name: &str) -> Value {
    let out = greenlight_testkit::env::docker(&["inspect", name]).unwrap();
    let list: Value = serde_json::from_str(&out).unwrap();
    list[0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_options_reach_docker_and_the_service_deploys_under_load_with_them() {
    use greenlight_testkit::env::DemoImageOpts;
    let images = ["v1", "v2", "v3"]
        .iter()
        .map(|v| {
            (
                v.to_string(),
                DemoImageOpts {
                    healthcheck: true,
                    env: Vec::new(),
                },
            )
        })
        .collect();
    let mut w = World::with_images("opts", NginxKind::Host, images);
    let db = format!("{}-db", w.prefix);
    w.configure(
        &format!(
            "networks = [\"{db}\"]\n\
             labels = {{ \"com.example.team\" = \"web\" }}\n\
             memory = \"64m\"\n\
             memory_reservation = \"32m\"\n\
             cpus = 1.5\n\
             user = \"1000:1000\"\n\
             read_only = true\n\
             tmpfs = [\"/tmp\", \"/run:size=16m\"]\n\
             cap_drop = [\"ALL\"]\n\
             extra_hosts = [\"db.internal:10.0.0.5\"]\n\
             stop_signal = \"SIGINT\"\n\
             init = true\n\
             shm_size = \"16m\"\n\
             ulimits = {{ nofile = {{ soft = 1024, hard = 2048 }}, nproc = 512 }}\n\
             security_opt = [\"no-new-privileges:true\"]\n"
        ),
        "\n[service.logging]\ndriver = \"json-file\"\noptions = { max-size = \"1m\", max-file = \"2\" }\n\
         \n[service.healthcheck]\ndisable = true\n",
    );
    w.deploy_ok("v1").await;
    let probe = probe(&w, true);
    assert!(probe.wait_for_version("v1", Duration::from_secs(10)).await);
    w.deploy_ok("v2").await;

    let c = inspect(&format!("{}-green-1", w.service));
    let host = &c["HostConfig"];
    let config = &c["Config"];
    assert_eq!(host["Memory"], 64 << 20, "{host:#}");
    assert_eq!(host["MemoryReservation"], 32 << 20);
    assert_eq!(host["NanoCpus"], 1_500_000_000);
    assert_eq!(config["User"], "1000:1000");
    assert_eq!(host["ReadonlyRootfs"], true);
    assert_eq!(host["Tmpfs"]["/tmp"], "");
    assert_eq!(host["Tmpfs"]["/run"], "size=16m");
    assert_eq!(host["CapDrop"], serde_json::json!(["ALL"]));
    assert_eq!(
        host["ExtraHosts"],
        serde_json::json!(["db.internal:10.0.0.5"])
    );
    assert_eq!(config["StopSignal"], "SIGINT");
    assert_eq!(host["Init"], true);
    assert_eq!(host["ShmSize"], 16 << 20);
    let ulimits = host["Ulimits"].as_array().unwrap();
    assert!(ulimits.contains(&serde_json::json!({"Name": "nofile", "Soft": 1024, "Hard": 2048})));
    assert!(ulimits.contains(&serde_json::json!({"Name": "nproc", "Soft": 512, "Hard": 512})));
    assert_eq!(
        host["SecurityOpt"],
        serde_json::json!(["no-new-privileges:true"])
    );
    assert_eq!(host["LogConfig"]["Type"], "json-file");
    assert_eq!(host["LogConfig"]["Config"]["max-size"], "1m");
    assert_eq!(config["Labels"]["com.example.team"], "web");
    assert_eq!(config["Labels"]["greenlight.service"], w.service);
    assert_eq!(config["Healthcheck"]["Test"], serde_json::json!(["NONE"]));
    // On both networks: nginx's and the database's.
    let networks = c["NetworkSettings"]["Networks"].as_object().unwrap();
    for n in [format!("{}-net", w.prefix), db.clone()] {
        let ip = networks.get(&n).map(|e| e["IPAddress"].clone());
        assert!(
            ip.as_ref()
                .and_then(Value::as_str)
                .is_some_and(|ip| !ip.is_empty()),
            "not on {n}: {networks:?}"
        );
    }

    // The image's HEALTHCHECK replaced: the gate waits for Docker's verdict on ours.
    w.gl.edit_config(|c| {
        c.replace(
            "[service.healthcheck]\ndisable = true\n",
            "[service.healthcheck]\ntest = [\"CMD\", \"/greenlight-demo\", \"--probe\", \"http://127.0.0.1:8080/healthz?hc=ours\"]\ninterval = \"500ms\"\nretries = 2\n",
        )
    });
    w.gl.restart();
    w.deploy_ok("v3").await;
    let c = inspect(&format!("{}-blue-1", w.service));
    assert_eq!(
        c["Config"]["Healthcheck"]["Test"],
        serde_json::json!([
            "CMD",
            "/greenlight-demo",
            "--probe",
            "http://127.0.0.1:8080/healthz?hc=ours"
        ])
    );
    assert_eq!(c["Config"]["Healthcheck"]["Interval"], 500_000_000);
    assert_eq!(c["Config"]["Healthcheck"]["Retries"], 2);
    assert_eq!(
        c["State"]["Health"]["Status"], "healthy",
        "{:#}",
        c["State"]
    );

    let report = probe.stop().await;
    // Two switches, and the reload reconciling nginx at the restart.
    assert_zero_failures(&report, 3);
    assert_flips_once(&report, &["v1", "v2", "v3"]);
}

/// How a WebSocket client's connection ended.
#[derive(Debug, PartialEq)]
enum Ended {
    /// The test closed it.
    Closed,
    /// The server side went away (the old replica stopped).
    Cut,
}

/// A WebSocket client through nginx on its own thread: connects to `/ws`,
/// sends back what it was greeted with (`hello <version>`), then holds the
/// connection until told to close it or the server ends it.
struct WsClient {
    greeting: String,
    close: std::sync::mpsc::Sender<()>,
    ended: std::thread::JoinHandle<Ended>,
}

impl WsClient {
    fn open(port: u16) -> WsClient {
        let (greeted_tx, greeted) = std::sync::mpsc::channel();
        let (close, close_rx) = std::sync::mpsc::channel::<()>();
        let ended = std::thread::spawn(move || {
            use tungstenite::Message;
            let stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            let (mut ws, response) =
                tungstenite::client::client(format!("ws://127.0.0.1:{port}/ws"), stream).unwrap();
            assert_eq!(response.status(), 101);
            let hello = ws.read().unwrap().into_text().unwrap().to_string();
            ws.send(Message::text("ping")).unwrap();
            let echo = ws.read().unwrap().into_text().unwrap().to_string();
            greeted_tx.send(format!("{hello}; {echo}")).unwrap();
            ws.get_ref()
                .set_read_timeout(Some(Duration::from_millis(50)))
                .unwrap();
            loop {
                if close_rx.try_recv().is_ok() {
                    let _ = ws.close(None);
                    while ws.read().is_ok() {}
                    return Ended::Closed;
                }
                match ws.read() {
                    Ok(Message::Close(_)) => return Ended::Cut,
                    Ok(_) => {}
                    Err(tungstenite::Error::Io(e))
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    Err(_) => return Ended::Cut,
                }
            }
        });
        let greeting = greeted
            .recv_timeout(Duration::from_secs(10))
            .expect("no WebSocket greeting");
        WsClient {
            greeting,
            close,
            ended,
        }
    }

    /// Waits (bounded) for the connection's end.
    fn ended(self) -> Ended {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.ended.is_finished() {
            assert!(Instant::now() < deadline, "the WebSocket never ended");
            std::thread::sleep(Duration::from_millis(20));
        }
        self.ended.join().unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_open_across_a_deploy_are_counted_and_cut_after_long_lived_timeout() {
    let slack = SlackReceiver::start(Vec::new()).await;
    let mut w = World::with_config(
        "wscut",
        NginxKind::Host,
        &[("v1", NO_ENV), ("v2", NO_ENV)],
        &format!("\n[notify.slack]\nwebhook_url = \"{}\"\n", slack.url()),
    );
    // Old nginx workers relaying WebSockets outlive drain_timeout: keep it short.
    w.gl.edit_config(|c| c.replace("drain_timeout = \"20s\"", "drain_timeout = \"2s\""));
    w.configure("", "long_lived_timeout = \"3s\"");
    w.deploy_ok("v1").await;
    let probe = probe(&w, true);
    assert!(probe.wait_for_version("v1", Duration::from_secs(10)).await);

    let clients: Vec<WsClient> = (0..3).map(|_| WsClient::open(w.nginx.port())).collect();
    for c in &clients {
        assert_eq!(c.greeting, "hello v1; v1: ping");
    }
    let id = w.gl.deploy(&w.service, Target::Tag("v2")).await;
    wait_step(&w, id, "draining").await;
    // One closes during the drain; two stay open past long_lived_timeout.
    let mut clients = clients.into_iter();
    let first = clients.next().unwrap();
    first.close.send(()).unwrap();
    assert_eq!(first.ended(), Ended::Closed);
    let d = w.gl.wait_done(id).await;
    assert_eq!(d["state"], "succeeded", "{d:#}");
    assert_eq!(d["connections_cut"], 2, "{d:#}");
    let stopping = detail(&d, "stopping_old");
    assert!(
        stopping.contains("2 connections still open to the old replicas")
            && stopping.contains(
                "2 long-lived connections still open after rollout.long_lived_timeout 3s"
            ),
        "{stopping}"
    );
    for c in clients {
        assert_eq!(c.ended(), Ended::Cut);
    }
    // A new one reaches the new version.
    let fresh = WsClient::open(w.nginx.port());
    assert_eq!(fresh.greeting, "hello v2; v2: ping");
    fresh.close.send(()).unwrap();
    assert_eq!(fresh.ended(), Ended::Closed);

    slack_says(&slack, &["2 long-lived connections", "cut"]).await;
    let metrics = greenlight_testkit::http()
        .get(format!("{}/metrics", w.gl.url()))
        .bearer_auth(common::TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let line = format!(
        "greenlight_connections_cut_total{{service=\"{}\"}} 2",
        w.service
    );
    assert!(metrics.contains(&line), "{metrics}");

    let report = probe.stop().await;
    assert_zero_failures(&report, 1);
    assert_flips_once(&report, &["v1", "v2"]);
}
