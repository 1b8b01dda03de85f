//! `greenlight init` on a machine with nginx on the host and on one with nginx in
//! a container: it finds nginx and its paths, writes a config `check` passes,
//! and never overwrites anything.

use std::path::Path;
use std::process::{Command, Output};

use greenlight_testkit::env::{host_nginx_image, unique_prefix, DockerCleanup, Nginx};
use greenlight_testkit::greenlight::{describe, without_greenlight_env};

fn greenlight(cwd: &Path, args: &[&str]) -> Output {
    without_greenlight_env(&mut Command::new(env!("CARGO_BIN_EXE_greenlight")))
        .current_dir(cwd)
        .args(args)
        .output()
        .unwrap()
}

/// Runs `init` with `args` in a new directory, then `check` there with no
/// `--config` (init's file is where greenlight looks); returns the directory
/// and the config written.
fn init_then_check(args: &[&str]) -> (tempfile::TempDir, toml::Table) {
    let dir = tempfile::tempdir().unwrap();
    let mut init = vec!["init"];
    init.extend(args);
    let out = greenlight(dir.path(), &init);
    assert_eq!(out.status.code(), Some(0), "init: {}", describe(&out));
    let config_path = dir.path().join("greenlight.toml");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&config_path)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the config holds the admin token");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("nginx:") && stdout.contains("verify server:"),
        "{stdout}"
    );
    assert!(
        !stdout.contains(&token_of(&config_path)),
        "the token is never printed"
    );

    let out = greenlight(dir.path(), &["check"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "check after init: {}",
        describe(&out)
    );

    // Again: refused, exit non-zero, nothing changed.
    let before = std::fs::read(&config_path).unwrap();
    let out = greenlight(dir.path(), &init);
    assert_ne!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already exists"),
        "{}",
        describe(&out)
    );
    assert_eq!(std::fs::read(&config_path).unwrap(), before);

    let config = std::fs::read_to_string(&config_path)
        .unwrap()
        .parse()
        .unwrap();
    (dir, config)
}

fn token_of(path: &Path) -> String {
    let table: toml::Table = std::fs::read_to_string(path).unwrap().parse().unwrap();
    table["server"]["admin_token"].as_str().unwrap().to_string()
}

#[test]
fn init_on_a_host_with_nginx_writes_a_config_that_check_passes() {
    let nginx = Nginx::host("gl-init-", &["web"]).unwrap();
    let conf = nginx.conf_path();
    let (_dir, config) = init_then_check(&["--nginx-config", conf.to_str().unwrap()]);
    let n = &config["nginx"];
    assert_eq!(n["mode"].as_str(), Some("host"));
    // Read from nginx -T: the upstreams it includes and its verify server.
    assert_eq!(
        n["upstreams_dir"].as_str(),
        nginx.upstreams_dir().to_str(),
        "{config}"
    );
    assert_eq!(n["verify_url"].as_str(), Some(nginx.verify_url().as_str()));
}

#[test]
fn init_with_nginx_in_a_container_writes_a_config_that_check_passes() {
    let prefix = unique_prefix("gl-init-ct");
    let _cleanup = DockerCleanup::new(&prefix);
    let network = format!("{prefix}net");
    let image = host_nginx_image().unwrap();
    let nginx = Nginx::container(&prefix, &["web"], &network, &image).unwrap();
    let name = nginx.container_name().unwrap().to_string();
    let (_dir, config) = init_then_check(&["--nginx-container", &name]);
    let n = &config["nginx"];
    assert_eq!(n["mode"].as_str(), Some("container"));
    assert_eq!(n["container"].as_str(), Some(name.as_str()));
    // The bind-mounted directory nginx includes, as this host sees it, and the
    // verify server through the port the container publishes.
    assert_eq!(
        n["upstreams_dir"].as_str(),
        nginx.upstreams_dir().to_str(),
        "{config}"
    );
    assert_eq!(n["verify_url"].as_str(), Some(nginx.verify_url().as_str()));
}
