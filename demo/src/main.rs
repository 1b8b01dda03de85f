use std::net::SocketAddr;
use std::process::ExitCode;
use std::thread;

use greenlight_demo::app::App;
use greenlight_demo::config::Config;
use greenlight_demo::server::Server;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

const USAGE: &str = "usage: greenlight-demo            serve on 0.0.0.0:$PORT (default 8080)
       greenlight-demo --probe URL  exit 0 if GET URL answers 200, else 1";

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
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
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
