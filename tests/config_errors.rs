//! A bad config gives one clear line naming the key, and exit code 2, for every
//! command that reads it.

use std::process::Command;

const GOOD: &str = r#"
[server]
admin_token = "0123456789abcdef0123"

[nginx]
mode = "host"
upstreams_dir = "/tmp"
config = "/etc/nginx/nginx.conf"
drain_timeout = "30s"

[[service]]
name = "web"
image = "127.0.0.1:5000/web"
port = 8080
"#;

fn check(config: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("greenlight.toml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_greenlight"))
        .args(["--config", path.to_str().unwrap(), "check"])
        .env_remove("GL_TEST_UNSET")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_one_line_naming(config: &str, needles: &[&str]) {
    let (code, stderr) = check(config);
    assert_eq!(code, Some(2), "exit code; stderr: {stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    for n in needles {
        assert!(stderr.contains(n), "{n:?} not in: {stderr}");
    }
}

#[test]
fn a_missing_required_key_is_named() {
    assert_one_line_naming(
        &GOOD.replace("port = 8080", ""),
        &["service[0]", "missing field `port`"],
    );
    assert_one_line_naming(
        &GOOD.replace("admin_token = \"0123456789abcdef0123\"", ""),
        &["server", "missing field `admin_token`"],
    );
}

#[test]
fn an_unknown_key_is_named() {
    assert_one_line_naming(
        &GOOD.replace("port = 8080", "port = 8080\nprot = 8081"),
        &["service[0].prot", "unknown field `prot`"],
    );
}

#[test]
fn a_bad_duration_is_named() {
    assert_one_line_naming(
        &GOOD.replace("\"30s\"", "\"thirty seconds\""),
        &["nginx.drain_timeout", "bad duration"],
    );
}

#[test]
fn an_unset_variable_is_named() {
    assert_one_line_naming(
        &GOOD.replace("\"0123456789abcdef0123\"", "\"${GL_TEST_UNSET}\""),
        &["${GL_TEST_UNSET} is not set", "line 3"],
    );
}

#[test]
fn a_missing_config_file_says_where_it_looked() {
    let out = Command::new(env!("CARGO_BIN_EXE_greenlight"))
        .args(["--config", "/nonexistent/greenlight.toml", "serve"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/greenlight.toml"));
}

#[test]
fn a_bad_container_option_release_or_hook_is_named() {
    let with = |lines: &str| GOOD.replace("port = 8080", &format!("port = 8080\n{lines}"));
    for (lines, needles) in [
        (
            "memory = \"12 parsecs\"",
            &["service[0].memory", "not a size"][..],
        ),
        ("memory = \"1m\"", &["service[0].memory", "smallest limit"]),
        (
            "memory = \"64m\"\nmemory_reservation = \"128m\"",
            &["service[0].memory_reservation", "above memory"],
        ),
        ("cpus = 0", &["service[0].cpus"]),
        ("user = \"root user\"", &["service[0].user"]),
        ("tmpfs = [\"tmp\"]", &["service[0].tmpfs", "absolute"]),
        ("cap_drop = [\"net admin\"]", &["service[0].cap_drop"]),
        (
            "extra_hosts = [\"db.internal\"]",
            &["service[0].extra_hosts", "host:address"],
        ),
        (
            "stop_signal = \"SIGWHATEVER!\"",
            &["service[0].stop_signal"],
        ),
        (
            "ulimits = { nofiles = 10 }",
            &["service[0].ulimits", "nofiles"],
        ),
        (
            "ulimits = { nofile = { soft = 20, hard = 10 } }",
            &["service[0].ulimits", "soft 20 is above hard 10"],
        ),
        (
            "labels = { \"greenlight.colour\" = \"x\" }",
            &["service[0].labels", "greenlight's own"],
        ),
        (
            "networks = [\"greenlight\"]",
            &["service[0].networks", "already"],
        ),
        (
            "[service.healthcheck]\ntest = [\"/app\", \"health\"]",
            &["service[0].healthcheck.test", "CMD"],
        ),
        (
            "[service.release]\ncommand = []",
            &["service[0].release.command"],
        ),
        (
            "[service.hooks]\npre_switch = []",
            &["service[0].hooks.pre_switch"],
        ),
        (
            "[service.hooks]\npre_switch = \"smoke --quick\"",
            &["hooks.pre_switch", "sequence"],
        ),
        (
            "[service.release]\ncommand = [\"x\"]\ntimeout = \"0s\"",
            &["service[0].release.timeout"],
        ),
    ] {
        assert_one_line_naming(&with(lines), needles);
    }
}
