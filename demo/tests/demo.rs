//! The demo binary, run for real on a free port.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, ChildStderr, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(10);

/// A running `greenlight-demo`, killed on drop.
struct Demo {
    child: Child,
    port: u16,
    stderr: Option<ChildStderr>,
}

impl Demo {
    fn start(env: &[(&str, &str)]) -> Demo {
        let mut child = Command::new(env!("CARGO_BIN_EXE_greenlight-demo"))
            .env("PORT", "0")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start greenlight-demo");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        // "demo <version> (<colour>) listening on 0.0.0.0:<port>"
        assert!(line.starts_with("demo "), "unexpected first line {line:?}");
        let port = line
            .trim()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no port in {line:?}"));
        let stderr = child.stderr.take();
        Demo {
            child,
            port,
            stderr,
        }
    }

    fn signal(&self, signal: i32) {
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
        assert_eq!(rc, 0, "kill failed");
    }

    fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "demo did not exit within {within:?}"
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    fn stderr(&mut self) -> String {
        let mut text = String::new();
        if let Some(mut stderr) = self.stderr.take() {
            stderr.read_to_string(&mut text).unwrap();
        }
        text
    }

    /// Waits until a connection thread is sleeping inside `/slow` (Linux /proc).
    fn wait_for_slow_request_in_flight(&self) {
        let deadline = Instant::now() + DEADLINE;
        let tasks = format!("/proc/{}/task", self.child.id());
        loop {
            let sleeping = std::fs::read_dir(&tasks).unwrap().flatten().any(|task| {
                let read = |name: &str| {
                    std::fs::read_to_string(task.path().join(name)).unwrap_or_default()
                };
                read("comm").starts_with("conn-") && read("wchan").contains("nanosleep")
            });
            if sleeping {
                return;
            }
            assert!(Instant::now() < deadline, "/slow never started sleeping");
            thread::sleep(Duration::from_millis(5));
        }
    }

    fn connect(&self) -> TcpStream {
        let stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        stream
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one response framed by Content-Length.
fn read_reply<R: BufRead>(reader: &mut R) -> Reply {
    let mut status_line = String::new();
    reader.read_line(&mut status_line).unwrap();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':').unwrap();
        headers.push((name.to_string(), value.trim().to_string()));
    }
    let mut reply = Reply {
        status,
        headers,
        body: String::new(),
    };
    let length: usize = reply
        .header("content-length")
        .expect("every response has a Content-Length")
        .parse()
        .unwrap();
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    reply.body = String::from_utf8(body).unwrap();
    reply
}

/// Sends raw bytes on a new connection and reads one response.
fn exchange(demo: &Demo, raw: &str) -> Reply {
    let mut stream = demo.connect();
    stream.write_all(raw.as_bytes()).unwrap();
    read_reply(&mut BufReader::new(stream))
}

fn get(demo: &Demo, path: &str) -> Reply {
    exchange(
        demo,
        &format!("GET {path} HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n"),
    )
}

#[test]
fn routes_answer_with_version_and_colour_headers() {
    let demo = Demo::start(&[("DEMO_VERSION", "v7"), ("GREENLIGHT_COLOUR", "green")]);

    let root = get(&demo, "/");
    assert_eq!(root.status, 200);
    assert_eq!(root.header("content-type"), Some("application/json"));
    assert_eq!(root.header("x-demo-version"), Some("v7"));
    assert_eq!(root.header("x-demo-colour"), Some("green"));
    assert_eq!(
        root.body,
        format!(
            "{{\"version\":\"v7\",\"colour\":\"green\",\"pid\":{}}}",
            demo.child.id()
        )
    );

    let health = get(&demo, "/healthz");
    assert_eq!((health.status, health.body.as_str()), (200, "ok"));

    let slow = get(&demo, "/slow?ms=20");
    assert_eq!(slow.status, 200);
    assert!(slow.body.contains("\"slept_ms\":20"), "{}", slow.body);

    let missing = get(&demo, "/nowhere");
    assert_eq!(missing.status, 404);
    assert_eq!(missing.header("x-demo-version"), Some("v7"));

    let malformed = exchange(&demo, "NONSENSE\r\n\r\n");
    assert_eq!(malformed.status, 400);
    assert_eq!(malformed.header("x-demo-colour"), Some("green"));
}

#[test]
fn keep_alive_serves_posts_and_gets_on_one_connection() {
    let demo = Demo::start(&[]);
    let stream = demo.connect();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);

    let body = "x".repeat(100_000);
    write!(
        writer,
        "POST /echo HTTP/1.1\r\nHost: demo\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let echo = read_reply(&mut reader);
    assert_eq!(echo.status, 200);
    assert!(
        echo.body.contains("\"body_length\":100000"),
        "{}",
        echo.body
    );
    assert_eq!(echo.header("connection"), Some("keep-alive"));

    // The whole body was consumed: the next request on the connection parses cleanly.
    write!(
        writer,
        "POST / HTTP/1.1\r\nHost: demo\r\nContent-Length: 3\r\n\r\nabc"
    )
    .unwrap();
    let post = read_reply(&mut reader);
    assert!(post.body.contains("\"body_length\":3"), "{}", post.body);
    assert_eq!(post.header("x-demo-version"), Some("dev"));
    assert_eq!(post.header("x-demo-colour"), Some("none"));

    write!(writer, "GET / HTTP/1.1\r\nHost: demo\r\n\r\n").unwrap();
    assert_eq!(read_reply(&mut reader).status, 200);
}

#[test]
fn sigterm_finishes_the_slow_request_in_flight_then_exits_zero() {
    let mut demo = Demo::start(&[("DEMO_VERSION", "v1")]);

    // An idle keep-alive connection must not keep the process alive.
    let idle = demo.connect();
    let mut idle_reader = BufReader::new(idle.try_clone().unwrap());
    (&idle)
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: demo\r\n\r\n")
        .unwrap();
    assert_eq!(read_reply(&mut idle_reader).status, 200);

    let mut slow = demo.connect();
    slow.write_all(b"GET /slow?ms=1500 HTTP/1.1\r\nHost: demo\r\n\r\n")
        .unwrap();
    demo.wait_for_slow_request_in_flight();
    let signalled = Instant::now();
    demo.signal(libc::SIGTERM);

    // New connections are refused at once while the slow request is still running.
    let deadline = Instant::now() + Duration::from_secs(1);
    while TcpStream::connect(("127.0.0.1", demo.port)).is_ok() {
        assert!(Instant::now() < deadline, "still accepting after SIGTERM");
        thread::sleep(Duration::from_millis(5));
    }

    let reply = read_reply(&mut BufReader::new(&mut slow));
    assert_eq!(reply.status, 200);
    assert!(reply.body.contains("\"slept_ms\":1500"), "{}", reply.body);
    assert_eq!(reply.header("connection"), Some("close"));

    let status = demo.wait_exit(Duration::from_secs(3));
    assert_eq!(status.code(), Some(0), "exit status {status}");
    assert!(
        signalled.elapsed() < Duration::from_secs(3),
        "exit took {:?}",
        signalled.elapsed()
    );
    // The idle connection was closed, not left hanging.
    let mut rest = Vec::new();
    assert_eq!(idle_reader.read_to_end(&mut rest).unwrap_or(0), 0);
    let stderr = demo.stderr();
    // The idle connection may still count as busy for an instant after its reply was
    // read, so only the slow request is certain to be counted.
    assert!(stderr.contains("signal 15 received: draining"), "{stderr}");
    assert!(!stderr.contains("draining 0 request(s)"), "{stderr}");
    assert!(stderr.contains("drained, exiting"), "{stderr}");
}

#[test]
fn sigterm_with_only_idle_connections_exits_at_once() {
    let mut demo = Demo::start(&[]);
    let idle = demo.connect();
    (&idle)
        .write_all(b"GET / HTTP/1.1\r\nHost: demo\r\n\r\n")
        .unwrap();
    read_reply(&mut BufReader::new(idle.try_clone().unwrap()));
    let _never_sent_anything = demo.connect();

    demo.signal(libc::SIGTERM);
    let status = demo.wait_exit(Duration::from_secs(1));
    assert_eq!(status.code(), Some(0));
}

#[test]
fn health_follows_start_delay_and_unhealthy() {
    let demo = Demo::start(&[("DEMO_START_DELAY_MS", "400")]);
    let started = Instant::now();
    assert_eq!(get(&demo, "/healthz").status, 503);
    assert_eq!(get(&demo, "/").status, 200);
    let deadline = started + DEADLINE;
    while get(&demo, "/healthz").status != 200 {
        assert!(Instant::now() < deadline, "never became healthy");
        thread::sleep(Duration::from_millis(20));
    }

    let sick = Demo::start(&[("DEMO_UNHEALTHY", "1")]);
    assert_eq!(get(&sick, "/healthz").status, 503);
    assert_eq!(get(&sick, "/").status, 200);
}

#[test]
fn exit_after_ms_exits_with_code_three_or_the_configured_one() {
    let mut demo = Demo::start(&[("DEMO_EXIT_AFTER_MS", "100")]);
    assert_eq!(demo.wait_exit(DEADLINE).code(), Some(3));
    assert!(demo.stderr().contains("exiting after 100 ms as configured"));

    let mut demo = Demo::start(&[("DEMO_EXIT_AFTER_MS", "50"), ("DEMO_EXIT_CODE", "0")]);
    assert_eq!(demo.wait_exit(DEADLINE).code(), Some(0));
}

#[test]
fn probe_mode_exits_zero_only_on_200() {
    let healthy = Demo::start(&[]);
    let sick = Demo::start(&[("DEMO_UNHEALTHY", "1")]);
    let probe = |port: u16| {
        Command::new(env!("CARGO_BIN_EXE_greenlight-demo"))
            .args(["--probe", &format!("http://127.0.0.1:{port}/healthz")])
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .code()
    };
    assert_eq!(probe(healthy.port), Some(0));
    assert_eq!(probe(sick.port), Some(1));
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    assert_eq!(probe(closed), Some(1));
}
