use std::net::SocketAddr;
use std::process::ExitCode;
use std::thread;

use greenlight_demo::app::App;
use greenlight_demo::config::Config;
use greenlight_demo::server::Server;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

const USAGE: &str = "usage: greenlight-demo              serve on 0.0.0.0:$PORT (default 8080)
       greenlight-demo --probe URL    exit 0 if GET URL answers 200, else 1
       greenlight-demo --migrate FILE a release command: write $DEMO_VERSION to FILE
                                      (and a line to FILE.log per run)
                                      (DEMO_MIGRATE_FAIL=1: fail instead;
                                      DEMO_MIGRATE_SLEEP_MS: take that long first)";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [] => serve(),
        [flag, url] if flag == "--probe" => match greenlight_demo::probe::probe(url) {
            Ok(200) => ExitCode::SUCCESS,
            Ok(status) => {
                eprintln!("demo probe: {url} answered {status}");
                ExitCode::from(1)
            }
            Err(err) => {
                eprintln!("demo probe: {err}");
                ExitCode::from(1)
            }
        },
        [flag, file] if flag == "--migrate" => migrate(file),
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}

/// A release command's stand-in: "migrates the schema" by writing the
/// version to `file` (a volume the new version checks at start).
fn migrate(file: &str) -> ExitCode {
    let version = std::env::var("DEMO_VERSION").unwrap_or_else(|_| "dev".into());
    let wait = std::env::var("DEMO_MIGRATE_SLEEP_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    println!("demo migrate: migrating {file} to {version}");
    thread::sleep(std::time::Duration::from_millis(wait));
    if matches!(std::env::var("DEMO_MIGRATE_FAIL").as_deref(), Ok("1")) {
        println!("demo migrate: applying 0042_add_column");
        eprintln!("demo migrate: 0042_add_column failed: column \"email\" already exists");
        return ExitCode::from(4);
    }
    // Every run leaves a line in FILE.log, so a test can count them.
    let log = format!("{file}.log");
    let logged = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .and_then(|mut f| std::io::Write::write_all(&mut f, format!("{version}\n").as_bytes()));
    if let Err(err) = logged {
        eprintln!("demo migrate: cannot append to {log}: {err}");
        return ExitCode::from(1);
    }
    match std::fs::write(file, &version) {
        Ok(()) => {
            println!("demo migrate: {file} is at {version}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("demo migrate: cannot write {file}: {err}");
            ExitCode::from(1)
        }
    }
}

fn serve() -> ExitCode {
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(err) => {
            eprintln!("demo: {err}");
            return ExitCode::from(2);
        }
    };
    // DEMO_REQUIRE_FILE: the "schema" a release command must have migrated to
    // this version before it may serve.
    if let Some(file) = &config.require_file {
        match std::fs::read_to_string(file) {
            // A schema at this version or a later one (compared as text): the
            // previous version still runs on its successor's schema.
            Ok(at) if at.trim() >= config.version.as_str() => {}
            Ok(at) => {
                eprintln!(
                    "demo: {file} is at {:?}, before {:?}: run the migration first",
                    at.trim(),
                    config.version
                );
                return ExitCode::from(5);
            }
            Err(err) => {
                eprintln!("demo: cannot read {file} ({err}): run the migration first");
                return ExitCode::from(5);
            }
        }
    }
    // PID 1 in a container ignores SIGTERM unless a handler is installed: install it
    // before announcing that we listen.
    let mut signals = match Signals::new([SIGTERM, SIGINT]) {
        Ok(signals) => signals,
        Err(err) => {
            eprintln!("demo: cannot install signal handlers: {err}");
            return ExitCode::from(1);
        }
    };
    let addr = SocketAddr::from(([0, 0, 0, 0], config.port));
    let server = match Server::bind(addr, App::new(config.clone())) {
        Ok(server) => server,
        Err(err) => {
            eprintln!("demo: cannot listen on {addr}: {err}");
            return ExitCode::from(1);
        }
    };
    let shutdown = server.shutdown_handle();
    thread::spawn(move || {
        let mut received = signals.forever();
        if let Some(signal) = received.next() {
            let (open, busy) = shutdown.connection_counts();
            eprintln!(
                "demo: signal {signal} received: draining {busy} request(s) in flight, closing {} idle connection(s)",
                open - busy
            );
            shutdown.shutdown();
        }
        if received.next().is_some() {
            eprintln!("demo: second signal, exiting without waiting");
            std::process::exit(1);
        }
    });
    if let Some(after) = config.exit_after {
        let code = config.exit_code;
        thread::spawn(move || {
            thread::sleep(after);
            eprintln!(
                "demo: exiting after {} ms as configured (code {code})",
                after.as_millis()
            );
            std::process::exit(code);
        });
    }
    match server.local_addr() {
        Ok(local) => println!(
            "demo {} ({}) listening on {local}",
            config.version, config.colour
        ),
        Err(err) => {
            eprintln!("demo: {err}");
            return ExitCode::from(1);
        }
    }
    server.run();
    eprintln!("demo: drained, exiting");
    ExitCode::SUCCESS
}
