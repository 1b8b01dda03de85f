//! The HTTP surface (actix-web): health, the admin API behind a bearer token or a
//! status-page session, the webhooks, and the status page.

mod api;
pub(crate) mod auth;
mod errors;
pub mod hooks;
mod metrics;
mod page;
mod session;

use std::net::TcpListener;

use actix_web::{web, App, HttpResponse, HttpServer};

use crate::deploy::Deployer;

pub struct AppState {
    pub deployer: Deployer,
    pub admin_token: String,
    pub hooks: hooks::HookCounters,
    /// The one writer of the delivery ledger (and of the deployments webhooks create).
    pub ledger: crate::ledger::GroupCommit,
    /// Failed admin-token attempts per client address.
    pub throttle: auth::Throttle,
    /// `[server] trusted_proxies`.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Bodies being read before they can be authenticated.
    pub unauthenticated: hooks::ReadSlots,
}

/// Builds the server on an already bound listener (tests bind port 0).
pub fn server(
    listener: TcpListener,
    deployer: Deployer,
    workers: usize,
) -> std::io::Result<actix_web::dev::Server> {
    let body_limit = deployer.config().server.body_limit;
    let queues = deployer.clone();
    let ledger = crate::ledger::GroupCommit::start(
        deployer.store().clone(),
        deployer.live_config(),
        Box::new(move |recorded| queues.admitted(&recorded.admitted)),
    )?;
    let state = web::Data::new(AppState {
        admin_token: deployer.config().server.admin_token.clone(),
        trusted_proxies: deployer.config().server.trusted_proxies.clone(),
        deployer,
        hooks: hooks::HookCounters::default(),
        ledger,
        throttle: auth::Throttle::default(),
        unauthenticated: hooks::ReadSlots::default(),
    });
    let metrics = web::Data::new(crate::metrics::Metrics::default());
    let sessions = web::Data::new(session::Sessions::default());
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .app_data(sessions.clone())
            .app_data(web::PayloadConfig::new(body_limit))
            .app_data(
                web::JsonConfig::default()
                    .limit(body_limit)
                    .error_handler(|err, _| {
                        let resp = errors::error(
                            actix_web::http::StatusCode::BAD_REQUEST,
                            &err.to_string(),
                        );
                        actix_web::error::InternalError::from_response(err, resp).into()
                    }),
            )
            .route("/healthz", web::get().to(healthz))
            .service(metrics::resource(metrics.clone()))
            .service(api::scope())
            .service(hooks::scope())
            .configure(page::routes)
            .default_service(web::to(|| async {
                errors::error(actix_web::http::StatusCode::NOT_FOUND, "no such route")
            }))
    })
    .workers(workers)
    .disable_signals()
    .listen(listener)?
    .run();
    Ok(server)
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}
