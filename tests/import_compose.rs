//! `greenlight import-compose` on the design document's own compose file (with
//! its nginx site beside it) and on a file with every option it carries over,
//! checked against the expected TOML; the seed's output loads as greenlight
//! config. `UPDATE_EXPECTED=1` rewrites the expected files after a deliberate change.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/import")
}

fn import(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_greenlight"))
        .arg("import-compose")
        .args(args)
        .output()
        .unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `actual` (with `dir` written as `@DIR@`) against the expected file.
fn assert_expected(actual: &str, dir: &Path, expected: &str) {
    let actual = actual.replace(dir.to_str().unwrap(), "@DIR@");
    let path = fixtures().join(expected);
    if std::env::var_os("UPDATE_EXPECTED").is_some() {
        std::fs::write(&path, &actual).unwrap();
    }
    let want = std::fs::read_to_string(&path).unwrap();
    assert_eq!(actual, want, "differs from {}", path.display());
}

/// The design document's compose file and nginx site, in a directory named
/// `seed` (compose's project name).
fn seed() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("seed");
    std::fs::create_dir(&dir).unwrap();
    // A copy of ../shared/fixtures/seed (the design document's files).
    let from = fixtures().join("seed");
    for file in ["docker-compose.yml", "nginx.conf"] {
        std::fs::copy(from.join(file), dir.join(file)).unwrap();
    }
    (tmp, dir)
}

#[test]
fn the_design_documents_compose_file_becomes_one_blue_green_service() {
    let (_tmp, dir) = seed();
    let out = import(&[dir.join("docker-compose.yml").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_expected(&stdout(&out), &dir, "seed.expected.toml");
    assert!(
        stderr(&out).contains("imported app (from blue + green)"),
        "{}",
        stderr(&out)
    );

    // What it printed is greenlight config: with a [server] and [nginx] it loads.
    let config = format!(
        "[server]\nadmin_token = \"0123456789abcdef0123\"\n\n[nginx]\nmode = \"container\"\n\
         container = \"nginx\"\nupstreams_dir = \"{}\"\n\n{}",
        dir.display(),
        stdout(&out)
    );
    let path = dir.join("greenlight.toml");
    std::fs::write(&path, config).unwrap();
    let loaded = greenlight::config::Config::load(&path).unwrap();
    let app = loaded
        .service("app")
        .expect("the pair as one service `app`");
    assert_eq!(loaded.services.len(), 1);
    assert_eq!(app.image, "registry.example.com/acme/app");
    assert_eq!(app.port, 3000);
    assert_eq!(app.network, "seed_default");
    assert_eq!(app.tags, ["latest"]);
    assert_eq!(app.env_file.as_deref(), Some(dir.join(".env").as_path()));
}

#[test]
fn every_supported_option_is_carried_over_and_the_rest_is_listed() {
    let dir = fixtures().join("every-option");
    let out = import(&[dir.join("docker-compose.yml").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_expected(&stdout(&out), &dir, "every-option.expected.toml");
    // nginx routes to api only: db and worker are left out unless named.
    assert!(
        stderr(&out).contains("not imported (nginx's sites do not route to them): db, worker"),
        "{}",
        stderr(&out)
    );
    assert!(toml::from_str::<toml::Table>(&stdout(&out)).is_ok());
}

#[test]
fn named_services_are_imported_and_bad_input_is_refused_with_the_reason() {
    let dir = fixtures().join("every-option");
    let file = dir.join("docker-compose.yml");
    let file = file.to_str().unwrap();

    let out = import(&[file, "worker", "-p", "prod"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_expected(&stdout(&out), &dir, "worker.expected.toml");

    let out = import(&[file, "nosuch"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out)
            .contains("no compose service \"nosuch\" (the file has: api, db, proxy, worker)"),
        "{}",
        stderr(&out)
    );
    assert!(stdout(&out).is_empty());

    let out = import(&[file, "proxy"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("is nginx"), "{}", stderr(&out));

    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("docker-compose.yml");
    std::fs::write(&bad, "services: [\n").unwrap();
    let out = import(&[bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("not a compose file"),
        "{}",
        stderr(&out)
    );

    let out = import(&[tmp.path().join("missing.yml").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("missing.yml"), "{}", stderr(&out));
}
