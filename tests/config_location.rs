//! Where greenlight finds its config when none is named, and where a relative
//! `state` path lands: next to the config file, wherever greenlight is started.

use std::path::Path;
use std::process::{Command, Output};

/// A config whose Docker socket does not exist, so `check` finishes at once;
/// its state path is relative.
const CONFIG: &str = r#"
[server]
admin_token = "0123456789abcdef0123"
state = "state.db"

[docker]
socket = "unix:///nonexistent/docker.sock"

[nginx]
mode = "host"
upstreams_dir = "/tmp"
config = "/etc/nginx/nginx.conf"
"#;

/// `greenlight --json check` in `cwd`, with `GREENLIGHT_CONFIG` as given.
fn check(cwd: &Path, args: &[&str], config_env: Option<&str>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_greenlight"));
    command
        .current_dir(cwd)
        .args(args)
        .args(["--json", "check"]);
    match config_env {
        Some(path) => command.env("GREENLIGHT_CONFIG", path),
        None => command.env_remove("GREENLIGHT_CONFIG"),
    };
    command.output().unwrap()
}

/// The detail of `check`'s "state" finding: the state file it opened.
fn state_path(out: &Output) -> String {
    let findings: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "check printed no JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let state = findings
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["what"] == "state")
        .expect("a state finding");
    assert_eq!(state["ok"], true, "{state}");
    state["detail"].as_str().unwrap().to_string()
}

#[test]
fn with_no_config_anywhere_the_error_names_every_place_looked() {
    if Path::new("/etc/greenlight/greenlight.toml").exists() {
        eprintln!("skipped: this machine has /etc/greenlight/greenlight.toml");
        return;
    }
    let empty = tempfile::tempdir().unwrap();
    let out = check(empty.path(), &[], None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    for place in [
        "./greenlight.toml",
        "/etc/greenlight/greenlight.toml",
        "--config",
        "GREENLIGHT_CONFIG",
        "greenlight init",
    ] {
        assert!(stderr.contains(place), "{place:?} not in: {stderr}");
    }
}

#[test]
fn greenlight_toml_in_the_working_directory_is_found() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("greenlight.toml"), CONFIG).unwrap();
    let out = check(dir.path(), &[], None);
    assert_eq!(state_path(&out), "./state.db");
    assert!(dir.path().join("state.db").is_file());
}

#[test]
fn a_relative_state_path_is_taken_from_the_config_files_directory() {
    let dir = tempfile::tempdir().unwrap();
    let etc = dir.path().join("etc");
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::fs::write(etc.join("greenlight.toml"), CONFIG).unwrap();

    // Named by --config, relative to the working directory.
    let out = check(&elsewhere, &["--config", "../etc/greenlight.toml"], None);
    assert_eq!(state_path(&out), "../etc/state.db");
    assert!(etc.join("state.db").is_file());
    assert!(!elsewhere.join("state.db").exists());

    // Named by GREENLIGHT_CONFIG, absolute.
    let named = etc.join("greenlight.toml");
    let out = check(&elsewhere, &[], Some(named.to_str().unwrap()));
    assert_eq!(state_path(&out), etc.join("state.db").display().to_string());
    assert!(!elsewhere.join("state.db").exists());
}

#[test]
fn a_named_config_that_is_missing_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    // Even with a greenlight.toml at hand: the named file is the one wanted.
    std::fs::write(dir.path().join("greenlight.toml"), CONFIG).unwrap();
    let out = check(dir.path(), &[], Some("/nonexistent/gl.toml"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("/nonexistent/gl.toml"), "{stderr}");
}
