//! The Debian package, installed in a clean Debian built from Debian's own
//! packages (scripts/debian-image.sh: debootstrap, cached under target/debian/):
//! its unit passes `systemd-analyze verify`, it makes its user (in the docker
//! group), token and conffile, and there `greenlight --version`, `greenlight
//! init` and `greenlight check` work as an operator would run them.

use std::path::PathBuf;
use std::process::{Command, Output};

use greenlight_testkit::env::{docker, unique_prefix, workspace_root, DockerCleanup};
use greenlight_testkit::greenlight::describe;

fn script(name: &str, envs: &[(&str, &str)]) -> String {
    let out = Command::new(workspace_root().join("scripts").join(name))
        .envs(envs.iter().copied())
        .output()
        .unwrap();
    assert!(out.status.success(), "scripts/{name}: {}", describe(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `sh -c command` in the container, as root.
fn exec(container: &str, command: &str) -> Output {
    Command::new("docker")
        .args(["exec", container, "sh", "-c", command])
        .output()
        .unwrap()
}

fn exec_ok(container: &str, command: &str) -> String {
    let out = exec(container, command);
    assert!(out.status.success(), "{command}: {}", describe(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn the_debian_package_installs_and_init_then_check_pass() {
    let out_dir = tempfile::tempdir().unwrap();
    // The binary this test run built, packed as scripts/build-deb.sh packs a
    // release build (and gzip: xz is slow on an unoptimised binary).
    let deb = PathBuf::from(script(
        "build-deb.sh",
        &[
            ("GREENLIGHT_BINARY", env!("CARGO_BIN_EXE_greenlight")),
            ("DEB_OUT", out_dir.path().to_str().unwrap()),
            ("DEB_COMPRESS", "gzip"),
        ],
    ));
    let deb_name = deb.file_name().unwrap().to_str().unwrap().to_string();
    let image = script("debian-image.sh", &[]);

    let prefix = unique_prefix("gl-pkg");
    let _cleanup = DockerCleanup::new(&prefix);
    let name = format!("{prefix}debian");
    docker(&[
        "run",
        "--detach",
        "--name",
        &name,
        "--volume",
        &format!("{}:/debs:ro", out_dir.path().display()),
        // greenlight check reaches the host's Docker engine, as on a real host.
        "--volume",
        "/var/run/docker.sock:/var/run/docker.sock",
        &image,
        "sleep",
        "infinity",
    ])
    .unwrap();

    // As on a machine with docker.io: the docker group exists.
    exec_ok(&name, "groupadd --system docker");
    exec_ok(&name, &format!("dpkg -i /debs/{deb_name}"));

    let version = exec_ok(&name, "greenlight --version");
    assert_eq!(version, format!("greenlight {}", env!("CARGO_PKG_VERSION")));
    let verify = exec(
        &name,
        "systemd-analyze verify --man=no /lib/systemd/system/greenlight.service",
    );
    assert!(verify.status.success(), "{}", describe(&verify));
    assert!(
        !String::from_utf8_lossy(&verify.stderr).contains("greenlight.service"),
        "the unit draws no complaint: {}",
        describe(&verify)
    );
    let groups = exec_ok(&name, "id -nG greenlight");
    assert!(groups.split_whitespace().any(|g| g == "docker"), "{groups}");
    assert_eq!(
        exec_ok(&name, "stat -c '%a %U %G' /etc/greenlight/greenlight.env /etc/greenlight/greenlight.toml /var/lib/greenlight"),
        "640 root greenlight\n640 root greenlight\n750 greenlight greenlight"
    );
    let conffiles = exec_ok(&name, "dpkg-query -W -f='${Conffiles}' greenlight");
    assert!(
        conffiles.contains("/etc/greenlight/greenlight.toml"),
        "{conffiles}"
    );
    exec_ok(
        &name,
        "test -s /usr/share/man/man1/greenlight.1.gz \
         && test -s /usr/share/bash-completion/completions/greenlight \
         && test -s /usr/share/zsh/vendor-completions/_greenlight \
         && test -s /usr/share/fish/vendor_completions.d/greenlight.fish \
         && test -s /usr/share/greenlight/nginx/greenlight.conf \
         && test -s /usr/share/greenlight/nginx/greenlight-verify.conf",
    );

    // An operator's first minutes: init, include its snippet, start nginx, check.
    let init = exec_ok(&name, "mkdir /root/gl && cd /root/gl && greenlight init");
    assert!(init.contains("found /usr/sbin/nginx"), "{init}");
    exec_ok(
        &name,
        "cp /root/gl/greenlight-nginx.conf /etc/nginx/conf.d/ && nginx",
    );
    let check = exec(&name, "cd /root/gl && greenlight check");
    assert!(
        check.status.success(),
        "check after init: {}",
        describe(&check)
    );
    // The shipped conffile too, with the token the unit would read, found
    // where greenlight looks when no --config is given.
    let shipped = exec(
        &name,
        "set -a && . /etc/greenlight/greenlight.env && cd / && greenlight --json check",
    );
    assert!(
        shipped.status.success(),
        "check of the shipped config: {}",
        describe(&shipped)
    );
    let findings = String::from_utf8_lossy(&shipped.stdout);
    assert!(
        findings.contains("/var/lib/greenlight/state.db"),
        "{findings}"
    );
}
