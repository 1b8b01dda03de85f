//! Wires the real adapters (SQLite, Docker, nginx) and runs the HTTP server and
//! the deploy workers until SIGINT/SIGTERM.

use std::net::TcpListener;
use std::sync::Arc;

use anyhow::Context;
use tracing::info;

use crate::config::Config;
use crate::deploy::Deployer;
use crate::docker::Engine;
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
    let config = Arc::new(config);
    let deployer = Deployer::start(config.clone(), store, engine).await;
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

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
