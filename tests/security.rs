//! Hostile senders and careless setups (issue 12), against a real greenlight
//! process, nginx and registry: each test shows one finding closed. SECURITY.md
//! lists every input tried and its answer.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{Greenlight, Target, World, DOCKERHUB_TOKEN, TOKEN};
use greenlight_testkit::env::{free_port, Nginx};
use serde_json::Value;

const NO_ENV: &[(&str, &str)] = &[];

/// A client whose requests come from `local` (a loopback address other than
/// 127.0.0.1 stands for another machine).
fn client_from(local: &str) -> reqwest::Client {
    greenlight_testkit::http_builder()
        .local_address(local.parse::<std::net::IpAddr>().unwrap())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// A greenlight with no service and no Docker work to do.
fn bare(extra: &str) -> Greenlight {
    bare_with(|c| format!("{c}{extra}"))
}

fn bare_with(edit: impl FnOnce(String) -> String) -> Greenlight {
    let nginx = Nginx::host("glsec", &["unused"]).unwrap();
    let gl = Greenlight::spawn(&edit(common::config_for(&nginx, &[])));
    // nginx is only named in the config; it may go.
    drop(nginx);
    gl
}

/// Finding 6: wrong admin tokens are throttled per client address; the right
/// token from elsewhere is never slowed, and the 401 carries its challenge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_admin_tokens_are_throttled_per_address_and_the_right_one_is_not() {
    let gl = bare("");
    let url = format!("{}/api/services", gl.url());
    let attacker = client_from("127.0.0.1");
    let started = Instant::now();
    let mut statuses = std::collections::BTreeMap::new();
    for i in 0..300 {
        let resp = attacker
            .get(&url)
            .bearer_auth(format!("guess-{i:04}-0123456789abcdef"))
            .send()
            .await
            .unwrap();
        *statuses.entry(resp.status().as_u16()).or_insert(0) += 1;
        if i == 0 {
            assert_eq!(
                resp.headers()
                    .get("www-authenticate")
                    .and_then(|v| v.to_str().ok()),
                Some("Bearer realm=\"greenlight\""),
                "a 401 carries WWW-Authenticate"
            );
        }
    }
    assert_eq!(statuses.get(&401), Some(&10), "{statuses:?}");
    assert_eq!(statuses.get(&429), Some(&290), "{statuses:?}");
    // Even the right token is refused from the throttled address for the window...
    let resp = attacker.get(&url).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(resp.status(), 429);
    assert!(resp.headers().contains_key("retry-after"));
    // ...while the operator elsewhere is answered at once, the scheme in any case.
    let operator = client_from("127.0.0.2");
    let t = Instant::now();
    let resp = operator
        .get(&url)
        .header("Authorization", format!("bEaReR {TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "case-insensitive Bearer");
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    // The status page's login and /metrics share the throttle.
    let resp = attacker
        .post(format!("{}/login", gl.url()))
        .form(&[("token", TOKEN)])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    let resp = attacker
        .get(format!("{}/metrics", gl.url()))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    // The log names the connection's peer, not the address a header claims.
    let _ = operator
        .get(&url)
        .bearer_auth("wrong-token-from-a-liar-0000")
        .header("X-Forwarded-For", "198.51.100.77")
        .send()
        .await
        .unwrap();
    let log = gl.log();
    assert!(
        log.contains("127.0.0.2 (X-Forwarded-For: 198.51.100.77)"),
        "{log}"
    );
    eprintln!("300 wrong tokens answered in {:?}", started.elapsed());
}

/// Finding 7: a slow body before authentication is cut off in time, does not
/// reserve what its Content-Length claims, and cannot take every slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_unauthenticated_bodies_are_cut_off_and_capped() {
    let gl = bare_with(|c| c.replace("[server]\n", "[server]\nbody_timeout = \"2s\"\n"));
    let addr: SocketAddr = format!("127.0.0.1:{}", gl.port).parse().unwrap();
    let vm_before = vm_size(gl.pid());
    let open = |from: &str| {
        let local: std::net::IpAddr = from.parse().unwrap();
        let socket = socket2_connect(local, addr);
        let mut s = socket;
        s.write_all(
            b"POST /hooks/github HTTP/1.1\r\nHost: gl\r\nX-GitHub-Event: package\r\n\
              Content-Type: application/json\r\nContent-Length: 1000000\r\n\r\n{",
        )
        .unwrap();
        s
    };
    // The first 64 from one address are read (slowly); the 65th is refused at once.
    let mut slow: Vec<TcpStream> = (0..64).map(|_| open("127.0.0.1")).collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut one_more = open("127.0.0.1");
    assert_eq!(status_of(&mut one_more, Duration::from_secs(5)), Some(503));
    // Another address still gets a slot, and a signed delivery from it goes through.
    let other = client_from("127.0.0.3");
    let body = br#"{"zen":"hi"}"#.to_vec();
    let resp = other
        .post(format!("{}/hooks/github", gl.url()))
        .header("X-GitHub-Event", "ping")
        .header("X-Hub-Signature-256", "sha256=00")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401, "read and refused, not starved");
    // 64 connections each claiming a megabyte did not reserve 64 MB.
    let grown = vm_size(gl.pid()).saturating_sub(vm_before);
    assert!(
        grown < 4 * 1024 * 1024,
        "virtual memory grew by {grown} bytes"
    );
    // Each slow body is cut off at server.body_timeout (2 s here), not held open.
    let t = Instant::now();
    for s in &mut slow {
        assert_eq!(status_of(s, Duration::from_secs(8)), Some(408));
    }
    assert!(t.elapsed() < Duration::from_secs(6), "{:?}", t.elapsed());
}

/// A TCP connection to `to` from the loopback address `local` (std has no
/// bind-before-connect).
fn socket2_connect(local: std::net::IpAddr, to: SocketAddr) -> TcpStream {
    use std::os::fd::FromRawFd;
    let (std::net::IpAddr::V4(l), SocketAddr::V4(t)) = (local, to) else {
        panic!("IPv4 only")
    };
    let sockaddr = |ip: std::net::Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as u16,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(ip.octets()),
        },
        sin_zero: [0; 8],
    };
    let (from, dest) = (sockaddr(l, 0), sockaddr(*t.ip(), t.port()));
    let len = std::mem::size_of::<libc::sockaddr_in>() as u32;
    // SAFETY: a fresh socket, bound and connected with valid sockaddr_in
    // values of the length given; the fd is owned by the TcpStream from here.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(fd >= 0);
        assert_eq!(
            libc::bind(fd, &from as *const _ as *const libc::sockaddr, len),
            0
        );
        assert_eq!(
            libc::connect(fd, &dest as *const _ as *const libc::sockaddr, len),
            0
        );
        TcpStream::from_raw_fd(fd)
    }
}

/// The status code of the answer on `s`, if one comes within `wait`.
fn status_of(s: &mut TcpStream, wait: Duration) -> Option<u16> {
    s.set_read_timeout(Some(wait)).unwrap();
    let mut buf = [0u8; 64];
    let mut got = Vec::new();
    while got.len() < 12 {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    std::str::from_utf8(got.get(9..12)?).ok()?.parse().ok()
}

fn vm_size(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmSize:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
        .unwrap()
        * 1024
}

/// A tiny HTTP app on loopback that answers 200 `app` to anything: the
/// upstream of a service in the nginx tests.
fn app() -> (u16, std::thread::JoinHandle<()>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = std::thread::spawn(move || {
        for conn in listener.incoming().take(200) {
            let Ok(mut conn) = conn else { continue };
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf);
            let _ = conn
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\napp");
        }
    });
    (port, handle)
}

/// What the verify server answers: (status, X-Greenlight-Upstream).
fn verify(nginx: &Nginx, method: &str, path: &str, service: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", nginx.verify_port())).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: verify\r\nX-Greenlight-Service: {service}\r\nContent-Length: 0\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    let status = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let upstream = text
        .lines()
        .find_map(|l| l.strip_prefix("X-Greenlight-Upstream: "))
        .unwrap_or("")
        .to_string();
    (status, upstream)
}

/// Finding 1: nginx running the shipped nginx/greenlight-verify.conf, included
/// as the README says, proxies to a service by name and to nothing else.
#[test]
fn the_shipped_verify_server_proves_a_service_and_refuses_every_address() {
    let (port, _app) = app();
    let (target, _target_app) = app();
    let mut nginx = Nginx::host("glverify", &["web"]).unwrap();
    std::fs::write(
        nginx.upstreams_dir().join("web.conf"),
        format!("upstream web {{\n    server 127.0.0.1:{port};\n}}\n"),
    )
    .unwrap();
    nginx.restart().unwrap();
    let (status, upstream) = verify(&nginx, "GET", "/healthz", "web");
    assert_eq!(
        (status, upstream.as_str()),
        (200, format!("127.0.0.1:{port}").as_str())
    );
    let hostile = [
        ("an IP literal", "127.0.0.1".to_string()),
        ("a host:port", format!("127.0.0.1:{target}")),
        ("a path", format!("web/../127.0.0.1:{target}/x")),
        ("cloud metadata", "169.254.169.254".to_string()),
        ("a name with a port", format!("localhost:{target}")),
        ("an upper-case name", "WEB".to_string()),
        ("nothing", String::new()),
    ];
    for (what, header) in hostile {
        let (status, upstream) = verify(&nginx, "GET", "/", &header);
        assert_eq!((status, upstream.as_str()), (400, ""), "{what}: {header:?}");
    }
    // Only GET and HEAD reach the service.
    let (status, upstream) = verify(&nginx, "POST", "/", "web");
    assert_eq!((status, upstream.as_str()), (403, ""), "a POST");
    let (status, _) = verify(&nginx, "HEAD", "/", "web");
    assert_eq!(status, 200, "a HEAD");
    // The file listens on loopback only.
    assert!(
        greenlight_testkit::env::SHIPPED_VERIFY_CONF.contains("listen 127.0.0.1:8099 reuseport;")
    );
}

/// The compose variant is the shipped file but for where it listens.
#[test]
fn the_compose_verify_server_differs_from_the_shipped_one_only_in_its_listen() {
    let root = greenlight_testkit::env::workspace_root();
    let code = |name: &str| -> Vec<String> {
        std::fs::read_to_string(root.join("nginx").join(name))
            .unwrap()
            .lines()
            .filter(|l| !l.trim_start().starts_with('#') && !l.contains("listen "))
            .map(str::to_string)
            .collect()
    };
    assert_eq!(
        code("greenlight-verify.conf"),
        code("greenlight-verify.compose.conf")
    );
}

/// `greenlight check` flags a verify server that proxies to an address it is
/// given (tried on a port of its own, on loopback) and one that answers 500,
/// and passes the shipped one.
#[test]
fn check_flags_an_open_proxy_and_a_failing_verify_server() {
    let old_open_proxy = "server {\n    listen {LISTEN};\n    location / {\n        \
        proxy_pass http://$http_x_greenlight_service;\n        proxy_connect_timeout 2s;\n        \
        add_header X-Greenlight-Upstream $upstream_addr always;\n    }\n}\n";
    let failing = "server {\n    listen {LISTEN};\n    location / { return 500; }\n}\n";
    let finding = |nginx: &Nginx| -> Value {
        let dir = tempfile::tempdir().unwrap();
        let config = common::config_for(nginx, &[])
            .replace("{listen}", &format!("127.0.0.1:{}", free_port()))
            .replace("{state}", &dir.path().join("s.db").display().to_string());
        let path = dir.path().join("g.toml");
        std::fs::write(&path, config).unwrap();
        let out = std::process::Command::new(common::binary())
            .args(["--config", path.to_str().unwrap(), "check", "--json"])
            .output()
            .unwrap();
        let all: Value = serde_json::from_slice(&out.stdout).unwrap();
        all.as_array()
            .unwrap()
            .iter()
            .find(|f| f["what"] == "verify server")
            .cloned()
            .unwrap()
    };
    let shipped = Nginx::host("glcheck", &["web"]).unwrap();
    let f = finding(&shipped);
    assert_eq!(f["ok"], true, "{f}");
    let open = Nginx::host_with_verify("glcheckopen", &["web"], old_open_proxy).unwrap();
    let f = finding(&open);
    assert_eq!(f["ok"], false, "{f}");
    assert!(f["detail"].as_str().unwrap().contains("open proxy"), "{f}");
    let broken = Nginx::host_with_verify("glcheck500", &["web"], failing).unwrap();
    let f = finding(&broken);
    assert_eq!(f["ok"], false, "{f}");
    assert!(f["detail"].as_str().unwrap().contains("500"), "{f}");
}

/// Finding 4: a delivery id is a path segment, never a path: the CLI escapes
/// it and the server refuses an id outside the grammar.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_id_cannot_reach_another_endpoint() {
    let w = World::new(
        "inj",
        common::NginxKind::Host,
        &[("v1", NO_ENV), ("v2", NO_ENV)],
    );
    w.deploy_ok("v1").await;
    w.deploy_ok("v2").await;
    let before =
        w.gl.get(&format!("/api/deployments?service={}", w.service))
            .await;
    let hostile = format!("../services/{}/rollback?from=", w.service);
    let out = w.gl.cli(&["redeliver", &hostile]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("not a delivery id"), "{stderr}");
    let after =
        w.gl.get(&format!("/api/deployments?service={}", w.service))
            .await;
    assert_eq!(before, after, "no rollback was started");
    assert_eq!(w.served().await, (200, "v2".into()));
    // Names too: a service filter outside the grammar is refused.
    let (status, v) =
        w.gl.api(
            reqwest::Method::GET,
            "/api/deliveries?service=a%27%20OR%201",
            None,
        )
        .await;
    assert_eq!(status, 400, "{v}");
}

/// Finding 9: SIGHUP never kills serve, not even halfway through a deployment;
/// SIGTERM stops it gracefully.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_leaves_a_deployment_running_and_sigterm_stops_gracefully() {
    let slow: &[(&str, &str)] = &[("DEMO_START_DELAY_MS", "2000")];
    let mut w = World::new("hup", common::NginxKind::Host, &[("v1", slow)]);
    let id = w.gl.deploy(&w.service, Target::Tag("v1")).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let d = w.gl.get(&format!("/api/deployments/{id}")).await;
        if d["step"] == "health_gate" {
            break;
        }
        assert!(Instant::now() < deadline, "never reached health_gate: {d}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pid = w.gl.pid();
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { libc::kill(pid as i32, libc::SIGHUP) };
    let d = w.gl.wait_done(id).await;
    assert_eq!(d["state"], "succeeded", "{d}");
    // SIGHUP re-reads the (unchanged) config; the deployment carries on.
    assert!(
        w.gl.log().contains("SIGHUP: config reloaded"),
        "{}",
        w.gl.log()
    );
    assert_eq!(w.served().await, (200, "v1".into()));
    let code = w.gl.terminate();
    assert_eq!(code, Some(0), "a graceful stop exits 0");
    assert!(w.gl.log().contains("shutting down"), "{}", w.gl.log());
    let _ = DOCKERHUB_TOKEN;
}
