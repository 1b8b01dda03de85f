//! `GET /metrics`: the admin token, then the text `crate::metrics` renders from
//! the store and the webhook endpoints' refusal counters.

use std::sync::atomic::Ordering;

use actix_web::{web, HttpResponse, Resource};

use super::auth::Admin;
use super::AppState;
use crate::metrics::Metrics;

/// The `/metrics` route; `metrics` is shared by all of the server's workers.
pub fn resource(metrics: web::Data<Metrics>) -> Resource {
    web::resource("/metrics")
        .app_data(metrics)
        .route(web::get().to(scrape))
}

async fn scrape(_: Admin, state: web::Data<AppState>, metrics: web::Data<Metrics>) -> HttpResponse {
    let store = state.deployer.store().clone();
    let services: Vec<String> = state
        .deployer
        .config()
        .services
        .iter()
        .map(|s| s.name.clone())
        .collect();
    let hooks = &state.hooks;
    let auth_failures = [
        ("github", &hooks.github_unauthorized),
        ("dockerhub", &hooks.dockerhub_unauthorized),
        ("registry", &hooks.registry_unauthorized),
    ]
    .into_iter()
    .map(|(s, n)| (s.to_string(), n.load(Ordering::Relaxed)))
    .collect();
    let canaries = state.deployer.canaries();
    let started = std::time::Instant::now();
    let text = web::block(move || metrics.render(&store, &services, auth_failures, canaries)).await;
    match text {
        Ok(Ok(text)) => {
            tracing::debug!(
                took_ms = started.elapsed().as_millis() as u64,
                "metrics scrape"
            );
            HttpResponse::Ok()
                .content_type(prometheus_client::encoding::prometheus_text::CONTENT_TYPE)
                .body(text)
        }
        Ok(Err(e)) => super::errors::internal(format!("metrics scrape failed: {e}")),
        Err(e) => super::errors::internal(format!("metrics scrape failed: {e}")),
    }
}
