//! Wires the real adapters (SQLite, Docker, nginx) and runs the HTTP server and
//! the deploy workers until SIGINT/SIGTERM (a graceful stop); SIGHUP reloads
//! the config file, never fatal.

use std::net::TcpListener;

use anyhow::Context;
use tracing::info;

use crate::config::live::{Live, Loaded};
use crate::deploy::Deployer;
use crate::docker::Engine;
use crate::proxy::Nginx;
use crate::runtime::Runtime;
use crate::store::Store;

pub async fn serve(loaded: Loaded) -> anyhow::Result<()> {
    let config = loaded.config.clone();
    // First: from here on no signal can kill greenlight halfway through a step.
    let mut signals = Signals::install().context("installing signal handlers")?;
    let listener = TcpListener::bind(&config.server.listen).with_context(|| {
        format!(
            "cannot listen on {} (server.listen): is another greenlight running?",
            config.server.listen
        )
    })?;
    let store = Store::open(&config.server.state)
        .with_context(|| format!("opening {}", config.server.state.display()))?;
    let engine = Engine::connect(&config.docker).await?;
    let nginx = Nginx::new(config.nginx.clone(), engine.clone());
    let runtime = Runtime::new(&config.runtime, engine);
    // Swarm needs a manager: say so at once rather than at the first deploy.
    let engine_is = runtime.describe().await?;
    info!(runtime = config.runtime.kind.as_str(), engine = %engine_is, "runtime");
    let deployer = Deployer::start(Live::new(loaded), store, runtime, nginx).await;
    spawn_ledger_pruning(deployer.store().clone(), config.server.ledger_retention);
    let server = crate::http::server(listener, deployer.clone(), 2)?;
    let handle = server.handle();
    info!(listen = %config.server.listen, services = config.services.len(), "greenlight serving");
    let reloader = deployer.clone();
    tokio::spawn(async move {
        let signal = signals
            .stop(|| {
                let deployer = reloader.clone();
                // The file is read off the runtime's threads.
                tokio::task::spawn_blocking(move || match deployer.reload_file() {
                    Ok(r) => info!(added = ?r.added, removed = ?r.removed, changed = ?r.changed, "SIGHUP: config reloaded"),
                    Err(why) => tracing::warn!(error = %why, "SIGHUP: config reload refused"),
                });
            })
            .await;
        info!(
            signal,
            "shutting down: no new requests; those in flight finish (a deployment in \
             progress is finished or undone on the next start)"
        );
        handle.stop(true).await;
    });
    server.await?;
    Ok(())
}

/// Drops delivery bodies older than `retention`, at start and then hourly.
fn spawn_ledger_pruning(store: Store, retention: std::time::Duration) {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(3600));
        loop {
            every.tick().await;
            let before = crate::store::now_ms() - retention.as_millis() as i64;
            let store = store.clone();
            match tokio::task::spawn_blocking(move || store.prune_bodies(before)).await {
                Ok(Ok(0)) => {}
                Ok(Ok(n)) => info!(
                    deliveries = n,
                    "dropped delivery bodies older than server.ledger_retention"
                ),
                Ok(Err(e)) => tracing::warn!(error = %e, "pruning the delivery ledger"),
                Err(e) => tracing::warn!(error = %e, "pruning the delivery ledger"),
            }
        }
    });
}

/// The signals `serve` handles. SIGHUP (`systemctl reload`, `kill -HUP`)
/// re-reads the config file, as `greenlight reload` does; it would end the
/// process by default, in the middle of a deployment. SIGINT and SIGTERM stop
/// it gracefully.
struct Signals {
    hangup: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            hangup: signal(SignalKind::hangup())?,
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    /// Waits for SIGINT or SIGTERM (its name), calling `hangup` at every
    /// SIGHUP meanwhile.
    async fn stop(&mut self, hangup: impl Fn()) -> &'static str {
        loop {
            tokio::select! {
                _ = self.hangup.recv() => hangup(),
                _ = self.interrupt.recv() => return "SIGINT",
                _ = self.terminate.recv() => return "SIGTERM",
            }
        }
    }
}
