//! The admin API under `/api/`: services, deployments, deploy. JSON in and out;
//! every error is `{"error": "..."}` with a status code that says whose fault it is.

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse, Scope};
use serde::{Deserialize, Serialize};

use super::auth::Admin;
use super::errors::{error, internal};
use super::AppState;
use crate::deploy::canary::Command as CanaryCommand;
use crate::deploy::{Rollback, RollbackError, SubmitError};
use crate::domain::deployment::Colour;
use crate::domain::plan::Strategy;
use crate::notify::Attempt;
use crate::store::{Deployment, Live, Store};

pub fn scope() -> Scope {
    web::scope("/api")
        .route("/services", web::get().to(services))
        .route("/services/{name}", web::get().to(service))
        .route("/services/{name}/deploy", web::post().to(deploy))
        .route("/services/{name}/rollback", web::post().to(rollback))
        .route("/services/{name}/canary", web::get().to(canary_status))
        .route(
            "/services/{name}/canary/promote",
            web::post().to(canary_promote),
        )
        .route(
            "/services/{name}/canary/abort",
            web::post().to(canary_abort),
        )
        .route("/deployments", web::get().to(deployments))
        .route("/deployments/{id}", web::get().to(deployment))
        .route("/deliveries", web::get().to(deliveries))
        .route("/deliveries/{id}", web::get().to(delivery))
        .route("/deliveries/{id}/redeliver", web::post().to(redeliver))
        .route("/config", web::get().to(config))
        .route("/reload", web::post().to(reload))
}

/// The running config's origin: its file, when it was loaded, the digest of
/// its bytes then, and whether the file now differs.
async fn config(_: Admin, state: web::Data<AppState>) -> HttpResponse {
    // One snapshot for every field: a reload meanwhile must not pair one
    // config's digest with another's verdict.
    let loaded = state.deployer.loaded();
    let compared = loaded.clone();
    let differs = web::block(move || compared.file_differs())
        .await
        .ok()
        .flatten();
    HttpResponse::Ok().json(serde_json::json!({
        "path": loaded.path,
        "loaded_at": loaded.loaded_at,
        "file_digest": loaded.file_digest,
        "file_differs": differs,
        "services": loaded.config.services.iter().map(|s| &s.name).collect::<Vec<_>>(),
    }))
}

/// Re-reads the config file: `200` with what changed, or `422` with why it
/// was refused (the running config stays).
async fn reload(_: Admin, state: web::Data<AppState>) -> HttpResponse {
    let deployer = state.deployer.clone();
    match web::block(move || deployer.reload_file()).await {
        Ok(Ok(reloaded)) => {
            tracing::info!(added = ?reloaded.added, removed = ?reloaded.removed, changed = ?reloaded.changed, "config reloaded");
            HttpResponse::Ok().json(reloaded)
        }
        Ok(Err(why)) => {
            tracing::warn!(error = %why, "config reload refused");
            error(StatusCode::UNPROCESSABLE_ENTITY, &why)
        }
        Err(e) => internal(e),
    }
}

/// One replica nginx routes to, as the runtime reports it now.
#[derive(Serialize)]
pub struct ReplicaView {
    pub id: String,
    pub name: String,
    pub address: String,
    pub colour: Colour,
    pub deployment: i64,
    pub digest: String,
    /// The tag of its version, when greenlight knows it.
    pub tag: Option<String>,
    /// When nginx began routing to it.
    pub since: i64,
    /// `false` when it has stopped or is gone.
    pub running: bool,
    /// The runtime's word for its state (`running`, `exited`, `missing`).
    pub status: String,
    /// Docker HEALTHCHECK status, when the image has one.
    pub health: Option<String>,
}

#[derive(Serialize)]
pub struct ServiceView {
    pub name: String,
    pub image: String,
    pub strategy: Strategy,
    /// How many replicas the config asks for.
    pub replicas_wanted: u32,
    pub live: Option<Live>,
    /// Every replica nginx routes to, in routing order.
    pub replicas: Vec<ReplicaView>,
    /// The deployment in progress, if any.
    pub deploying: Option<Deployment>,
    pub last: Option<Deployment>,
}

pub(crate) async fn service_view(
    state: &AppState,
    name: &str,
) -> Result<ServiceView, HttpResponse> {
    let deployer = &state.deployer;
    let config = deployer.config();
    let Some(svc) = config.service(name) else {
        return Err(error(
            StatusCode::NOT_FOUND,
            &format!("no service named {name:?}"),
        ));
    };
    let store = deployer.store();
    let live = store.live(name).map_err(internal)?;
    let recent = store.deployments(Some(name), 20).map_err(internal)?;
    let deploying = recent.iter().find(|d| !d.state.is_terminal()).cloned();
    // What nginx routes to: the rendered file is the truth.
    let routing = deployer
        .nginx()
        .current(name)
        .ok()
        .flatten()
        .or_else(|| live.as_ref().and_then(|l| l.routing.clone()));
    let mut tags: Vec<(String, Option<String>)> = Vec::new();
    if let Some(l) = &live {
        tags.push((l.digest.clone(), l.tag.clone()));
        if let Some(p) = &l.previous_digest {
            tags.push((p.clone(), l.previous_tag.clone()));
        }
    }
    for d in &recent {
        if let Some(digest) = &d.digest {
            tags.push((digest.clone(), d.tag.clone()));
        }
    }
    let mut replicas = Vec::new();
    for b in routing.map(|r| r.backends).unwrap_or_default() {
        let status = if b.id.is_empty() {
            None
        } else {
            deployer.runtime().status(&b.id).await.map_err(internal)?
        };
        replicas.push(ReplicaView {
            tag: tags
                .iter()
                .find(|(d, t)| d == &b.digest && t.is_some())
                .and_then(|(_, t)| t.clone()),
            running: status.as_ref().is_some_and(|s| s.running),
            status: status
                .as_ref()
                .map_or_else(|| "missing".to_string(), |s| s.status.clone()),
            health: status.and_then(|s| s.health),
            id: b.id,
            name: b.name,
            address: b.address,
            colour: b.colour,
            deployment: b.deployment,
            digest: b.digest,
            since: b.since,
        });
    }
    Ok(ServiceView {
        name: svc.name.clone(),
        image: svc.image.clone(),
        strategy: svc.rollout.strategy,
        replicas_wanted: svc.replicas,
        live,
        replicas,
        deploying,
        last: recent.into_iter().next(),
    })
}

async fn services(_: Admin, state: web::Data<AppState>) -> HttpResponse {
    let mut out = Vec::new();
    for svc in &state.deployer.config().services {
        match service_view(&state, &svc.name).await {
            Ok(v) => out.push(v),
            Err(resp) => return resp,
        }
    }
    HttpResponse::Ok().json(out)
}

async fn service(_: Admin, state: web::Data<AppState>, name: web::Path<String>) -> HttpResponse {
    match service_view(&state, &name).await {
        Ok(v) => HttpResponse::Ok().json(v),
        Err(resp) => resp,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployBody {
    pub tag: Option<String>,
    pub digest: Option<String>,
    /// This deployment's strategy, instead of the service's.
    pub strategy: Option<String>,
}

async fn deploy(
    _: Admin,
    state: web::Data<AppState>,
    name: web::Path<String>,
    body: web::Json<DeployBody>,
) -> HttpResponse {
    let body = body.into_inner();
    let strategy = match body.strategy.as_deref().map(str::parse::<Strategy>) {
        None => None,
        Some(Ok(s)) => Some(s),
        Some(Err(e)) => return error(StatusCode::BAD_REQUEST, &e),
    };
    match state
        .deployer
        .submit(&name, body.tag, body.digest, strategy)
    {
        Ok(id) => HttpResponse::Accepted().json(serde_json::json!({
            "deployment": id,
            "url": format!("/api/deployments/{id}"),
        })),
        Err(e) => submit_error(e),
    }
}

fn submit_error(e: SubmitError) -> HttpResponse {
    match e {
        SubmitError::UnknownService(s) => {
            error(StatusCode::NOT_FOUND, &format!("no service named {s:?}"))
        }
        SubmitError::BadRequest(m) => error(StatusCode::BAD_REQUEST, &m),
        SubmitError::Conflict(m) => error(StatusCode::CONFLICT, &m),
        e => internal(e),
    }
}

/// The service's running canary: `{"canary": status}`, `null` when none runs.
async fn canary_status(
    _: Admin,
    state: web::Data<AppState>,
    name: web::Path<String>,
) -> HttpResponse {
    if state.deployer.config().service(&name).is_none() {
        return error(StatusCode::NOT_FOUND, &format!("no service named {name:?}"));
    }
    HttpResponse::Ok().json(serde_json::json!({ "canary": state.deployer.canary(&name) }))
}

async fn canary_promote(
    _: Admin,
    state: web::Data<AppState>,
    name: web::Path<String>,
) -> HttpResponse {
    canary_command(&state, &name, CanaryCommand::Promote)
}

async fn canary_abort(
    _: Admin,
    state: web::Data<AppState>,
    name: web::Path<String>,
) -> HttpResponse {
    canary_command(&state, &name, CanaryCommand::Abort)
}

fn canary_command(state: &AppState, name: &str, command: CanaryCommand) -> HttpResponse {
    match state.deployer.canary_command(name, command) {
        Ok(id) => HttpResponse::Accepted().json(serde_json::json!({
            "deployment": id,
            "url": format!("/api/deployments/{id}"),
            "command": command,
        })),
        Err(e) => submit_error(e),
    }
}

async fn rollback(_: Admin, state: web::Data<AppState>, name: web::Path<String>) -> HttpResponse {
    match state.deployer.rollback(&name).await {
        Ok(how) => {
            let (id, instant) = match how {
                Rollback::Instant(id) => (id, true),
                Rollback::Deployment(id) => (id, false),
            };
            HttpResponse::Accepted().json(serde_json::json!({
                "deployment": id,
                "url": format!("/api/deployments/{id}"),
                "instant": instant,
            }))
        }
        Err(RollbackError::UnknownService(s)) => {
            error(StatusCode::NOT_FOUND, &format!("no service named {s:?}"))
        }
        Err(RollbackError::Nothing(why)) => error(StatusCode::CONFLICT, &why),
        Err(e) => internal(e),
    }
}

#[derive(Deserialize)]
pub struct ListQuery {
    pub service: Option<String>,
    pub limit: Option<usize>,
}

async fn deployments(
    _: Admin,
    state: web::Data<AppState>,
    q: web::Query<ListQuery>,
) -> HttpResponse {
    if let Some(s) = &q.service {
        if state.deployer.config().service(s).is_none() {
            return error(StatusCode::NOT_FOUND, &format!("no service named {s:?}"));
        }
    }
    let limit = q.limit.unwrap_or(20).clamp(1, 500);
    match state
        .deployer
        .store()
        .deployments(q.service.as_deref(), limit)
    {
        Ok(list) => match with_notifications(state.deployer.store(), list) {
            Ok(views) => HttpResponse::Ok().json(views),
            Err(e) => internal(e),
        },
        Err(e) => internal(e),
    }
}

/// A deployment with every attempt to notify about it.
#[derive(Serialize)]
pub struct DeploymentView {
    #[serde(flatten)]
    pub deployment: Deployment,
    pub notifications: Vec<Attempt>,
}

fn with_notifications(
    store: &Store,
    list: Vec<Deployment>,
) -> crate::store::Result<Vec<DeploymentView>> {
    let ids: Vec<i64> = list.iter().map(|d| d.id).collect();
    let mut attempts = store.notifications_of(&ids)?;
    Ok(list
        .into_iter()
        .map(|d| DeploymentView {
            notifications: attempts.remove(&d.id).unwrap_or_default(),
            deployment: d,
        })
        .collect())
}

async fn deployment(_: Admin, state: web::Data<AppState>, id: web::Path<i64>) -> HttpResponse {
    let store = state.deployer.store();
    match store.deployment(*id) {
        Ok(Some(d)) => match with_notifications(store, vec![d]) {
            Ok(mut views) => HttpResponse::Ok().json(views.remove(0)),
            Err(e) => internal(e),
        },
        Ok(None) => error(StatusCode::NOT_FOUND, &format!("no deployment {id}")),
        Err(e) => internal(e),
    }
}

async fn deliveries(
    _: Admin,
    state: web::Data<AppState>,
    q: web::Query<ListQuery>,
) -> HttpResponse {
    if let Some(s) = q
        .service
        .as_deref()
        .filter(|s| !crate::config::valid_name(s))
    {
        return error(
            StatusCode::BAD_REQUEST,
            &format!("{s:?} is not a service name"),
        );
    }
    let limit = q.limit.unwrap_or(20).clamp(1, 500);
    match state
        .deployer
        .store()
        .deliveries(q.service.as_deref(), limit)
    {
        Ok(list) => HttpResponse::Ok().json(list),
        Err(e) => internal(e),
    }
}

/// A delivery id (or ledger row) as the API takes it: anything else is refused
/// before it is looked up or logged.
fn refuse_delivery_id(id: &str) -> Option<HttpResponse> {
    if crate::webhook::valid_delivery_id(id) {
        None
    } else {
        Some(error(
            StatusCode::BAD_REQUEST,
            &format!(
                "{:?} is not a delivery id or ledger row",
                crate::telemetry::escape_controls(&id.chars().take(140).collect::<String>())
            ),
        ))
    }
}

async fn delivery(_: Admin, state: web::Data<AppState>, id: web::Path<String>) -> HttpResponse {
    if let Some(refused) = refuse_delivery_id(&id) {
        return refused;
    }
    let id = id.as_str();
    match state.deployer.store().delivery(id) {
        Ok(Some(d)) => HttpResponse::Ok().json(d),
        Ok(None) => error(StatusCode::NOT_FOUND, &format!("no delivery {id:?}")),
        Err(e) => internal(e),
    }
}

/// Runs a stored delivery through the same path again, as a new attempt linked
/// to the original.
async fn redeliver(_: Admin, state: web::Data<AppState>, id: web::Path<String>) -> HttpResponse {
    if let Some(refused) = refuse_delivery_id(&id) {
        return refused;
    }
    let id = id.as_str();
    let d = match state.deployer.store().delivery(id) {
        Ok(Some(d)) => d,
        Ok(None) => return error(StatusCode::NOT_FOUND, &format!("no delivery {id:?}")),
        Err(e) => return internal(e),
    };
    let Ok(source) = d.source.parse() else {
        return error(
            StatusCode::CONFLICT,
            &format!("delivery {id:?} has unknown source {:?}", d.source),
        );
    };
    if let Some(why) = &d.body_error {
        tracing::error!(delivery = %id, error = %why, "cannot redeliver");
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("delivery {id:?} cannot be redelivered: {why}"),
        );
    }
    if d.raw_body.is_empty() {
        return error(
            StatusCode::GONE,
            &format!(
                "delivery {id:?} is older than server.ledger_retention: its body is no longer kept; \
                 deploy its tag or digest instead"
            ),
        );
    }
    let headers: Vec<(String, String)> = d
        .headers
        .as_ref()
        .and_then(|h| h.as_object())
        .map(|h| {
            h.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default();
    let lower = headers.iter().cloned().collect();
    let parsed =
        match super::hooks::parse_delivery(&state.deployer.config(), source, &lower, &d.raw_body) {
            Ok((_, parsed)) => parsed,
            Err(e) => {
                return error(
                    StatusCode::CONFLICT,
                    &format!("the stored delivery cannot be read: {e}"),
                )
            }
        };
    let original = d.redelivery_of.unwrap_or(d.row);
    super::hooks::ingest(
        &state,
        source,
        d.delivery_id,
        headers,
        d.raw_body,
        parsed,
        Some(original),
    )
    .await
}
