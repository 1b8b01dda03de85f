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

/// `entries` after a [server] and [nginx], read as greenlight reads its config.
fn load(dir: &Path, entries: &str) -> greenlight::config::Config {
    let config = format!(
        "[server]\nadmin_token = \"0123456789abcdef0123\"\n\n[nginx]\nmode = \"container\"\n\
         container = \"nginx\"\nupstreams_dir = \"{}\"\n\n{entries}",
        dir.display(),
    );
    // The compose file's ${REGION} and shell-valued SECRET_KEY come from
    // greenlight's environment, as the import's comments say.
    let env = |var: &str| match var {
        "REGION" => Some("eu".to_string()),
        "SECRET_KEY" => Some("s3cret".to_string()),
        _ => None,
    };
    greenlight::config::Config::parse(&dir.join("greenlight.toml"), &config, env)
        .unwrap_or_else(|e| panic!("{e}"))
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
    let loaded = load(&dir, &stdout(&out));
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
    // Every option it printed is one greenlight reads, with the value meant.
    let loaded = load(&dir, &stdout(&out));
    let api = loaded.service("api").expect("api");
    assert_eq!(api.port, 8080, "the port nginx's site uses");
    assert_eq!(api.network, "shop_front");
    assert_eq!(api.networks, ["back"]);
    assert_eq!(api.replicas, 3);
    assert_eq!(api.memory, Some(512 << 20));
    assert_eq!(api.memory_reservation, Some(256 << 20));
    assert_eq!(api.cpus, Some(1.5));
    assert_eq!(api.shm_size, Some(64 << 20));
    assert!(api.read_only);
    assert_eq!(api.cap_drop, ["ALL"]);
    assert_eq!(
        api.extra_hosts,
        ["db.internal:10.0.0.5", "cache.internal:10.0.0.6"]
    );
    assert_eq!(api.rollout.stop_grace, std::time::Duration::from_secs(90));
    assert_eq!(
        api.command.as_deref(),
        Some(&["/app", "serve", "--port", "8080"].map(String::from)[..])
    );
    assert!(api.logging.is_some() && api.healthcheck.is_some());
    assert_eq!(api.env.get("REGION").map(String::as_str), Some("eu"));
    assert_eq!(api.env.get("PRICE").map(String::as_str), Some("5$"));
}

#[test]
fn named_services_are_imported_and_bad_input_is_refused_with_the_reason() {
    let dir = fixtures().join("every-option");
    let file = dir.join("docker-compose.yml");
    let file = file.to_str().unwrap();

    let out = import(&[file, "worker", "-p", "prod"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_expected(&stdout(&out), &dir, "worker.expected.toml");
    // Given the port it could not find, it loads.
    let with_port = stdout(&out).replace("network = \"back\"", "network = \"back\"\nport = 8080");
    let loaded = load(&dir, &with_port);
    let worker = loaded.service("worker").expect("worker");
    assert_eq!(worker.memory, Some(1 << 30));
    assert_eq!(worker.cpus, Some(0.5));

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
