//! Wires the real adapters (SQLite, Docker, nginx) and runs the HTTP server and
//! the deploy workers until SIGINT/SIGTERM.

use std::net::TcpListener;
use std::sync::Arc;

use anyhow::Context;
use tracing::info;

use crate::config::Config;
use crate::deploy::Deployer;
use crate::docker::Engine;
use crate::proxy::Nginx;
use crate::runtime::{Containers, Runtime};
use crate::store::Store;

pub async fn serve(config: Config) -> anyhow::Result<()> {
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
    let runtime = Runtime::Docker(Containers::new(engine));
    let config = Arc::new(config);
    let deployer = Deployer::start(config.clone(), store, runtime, nginx).await;
    spawn_ledger_pruning(deployer.store().clone(), config.server.ledger_retention);
    let server = crate::http::server(listener, deployer, 2)?;
    let handle = server.handle();
    info!(listen = %config.server.listen, services = config.services.len(), "greenlight serving");
    tokio::spawn(async move {
        shutdown_signal().await;
        info!("shutting down");
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

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
