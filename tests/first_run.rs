//! A newcomer's first run: `scripts/demo.sh` starts a registry, nginx,
//! greenlight and the demo app on loopback, deploys v1 through the registry's
//! webhook and v2 under a load probe with no failed request; `scripts/demo.sh
//! stop` leaves nothing behind.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use greenlight_testkit::greenlight::{describe, without_greenlight_env};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The script as a newcomer runs it, but with the greenlight this test run
/// built (`cargo build` in the script would find it up to date anyway).
fn demo(args: &[&str]) -> Output {
    without_greenlight_env(&mut Command::new(root().join("scripts/demo.sh")))
        .args(args)
        .current_dir(root())
        .env("GREENLIGHT_BINARY", env!("CARGO_BIN_EXE_greenlight"))
        .output()
        .unwrap()
}

/// Runs `stop` on drop, so a failed assertion leaves nothing running either.
struct Stop;

impl Drop for Stop {
    fn drop(&mut self) {
        let _ = demo(&["stop"]);
    }
}

fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().unwrap();
    assert!(out.status.success(), "docker {args:?}: {}", describe(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn listening(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

#[test]
fn the_demo_deploys_under_load_with_no_failed_request_and_stop_leaves_nothing() {
    let _stop = Stop;
    let out = demo(&[]);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    println!("{stdout}");

    let probe = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("probe:"))
        .unwrap_or_else(|| panic!("no probe line: {stdout}"));
    assert!(probe.contains(", 0 failed;"), "{probe}");
    assert!(probe.contains("versions seen: v1 -> v2"), "{probe}");
    let sent: u64 = probe
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{probe}"));
    assert!(sent >= 50, "the probe ran for at least a second: {probe}");
    for next in [
        "status page",
        "GREENLIGHT_CONFIG=",
        "scripts/demo.sh push",
        "scripts/demo.sh stop",
    ] {
        assert!(stdout.contains(next), "{next:?} not said: {stdout}");
    }

    let out = demo(&["stop"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let labelled = docker(&[
        "ps",
        "-aq",
        "--filter",
        "label=greenlight.service=hello-demo",
    ]);
    assert_eq!(labelled, "", "containers left");
    let networks = docker(&[
        "network",
        "ls",
        "-q",
        "--filter",
        "name=greenlight-demo-net",
    ]);
    assert_eq!(networks, "", "network left");
    let images = docker(&["images", "--format", "{{.Repository}}:{{.Tag}}"]);
    assert!(
        !images
            .lines()
            .any(|i| i.contains("hello-demo") || i.starts_with("greenlight-demo-local")),
        "images left: {images}"
    );
    for port in [18080, 18787, 15000, 18099] {
        assert!(!listening(port), "something still listens on {port}");
    }
    assert!(
        !Path::new(&root().join("target/demo")).exists(),
        "target/demo left"
    );
}
