//! The admin API under `/api/`: services, deployments, deploy. JSON in and out;
//! every error is `{"error": "..."}` with a status code that says whose fault it is.

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse, Scope};
use serde::{Deserialize, Serialize};

use super::auth::Admin;
use super::AppState;
use crate::deploy::{Request, SubmitError};
use crate::store::{Deployment, Live};

pub fn scope() -> Scope {
    web::scope("/api")
        .route("/services", web::get().to(services))
        .route("/services/{name}", web::get().to(service))
        .route("/services/{name}/deploy", web::post().to(deploy))
        .route("/deployments", web::get().to(deployments))
        .route("/deployments/{id}", web::get().to(deployment))
}

pub fn error(status: StatusCode, message: &str) -> HttpResponse {
    HttpResponse::build(status).json(serde_json::json!({ "error": message }))
}

fn internal(e: impl std::fmt::Display) -> HttpResponse {
    // Logged in full; the client learns only that it was our fault.
    tracing::error!(error = %e, "admin API internal error");
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal error (see greenlight's log)",
    )
}

#[derive(Serialize)]
pub struct ContainerView {
    pub id: String,
    pub running: bool,
    pub status: String,
}

#[derive(Serialize)]
pub struct ServiceView {
    pub name: String,
    pub image: String,
    pub live: Option<Live>,
    /// The live container as Docker reports it; `null` when it is gone.
    pub container: Option<ContainerView>,
    /// The deployment in progress, if any.
    pub deploying: Option<Deployment>,
    pub last: Option<Deployment>,
}

async fn service_view(state: &AppState, name: &str) -> Result<ServiceView, HttpResponse> {
    let deployer = &state.deployer;
    let Some(svc) = deployer.config().service(name) else {
        return Err(error(
            StatusCode::NOT_FOUND,
            &format!("no service named {name:?}"),
        ));
    };
    let store = deployer.store();
    let live = store.live(name).map_err(internal)?;
    let container = match live.as_ref().and_then(|l| l.container_id.clone()) {
        Some(id) => match deployer.engine().status(&id).await {
            Ok(Some(s)) => Some(ContainerView {
                id: s.id,
                running: s.running,
                status: s.status,
            }),
            Ok(None) => None,
            Err(e) => return Err(internal(e)),
        },
        None => None,
    };
    let recent = store.deployments(Some(name), 20).map_err(internal)?;
    let deploying = recent.iter().find(|d| !d.state.is_terminal()).cloned();
    Ok(ServiceView {
        name: svc.name.clone(),
        image: svc.image.clone(),
        live,
        container,
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
}

async fn deploy(
    _: Admin,
    state: web::Data<AppState>,
    name: web::Path<String>,
    body: web::Json<DeployBody>,
) -> HttpResponse {
    let body = body.into_inner();
    let req = Request {
        service: name.into_inner(),
        tag: body.tag,
        digest: body.digest,
        trigger: "operator".into(),
        trigger_detail: Some(serde_json::json!({"command": "deploy"})),
    };
    match state.deployer.submit(req) {
        Ok(id) => HttpResponse::Accepted().json(serde_json::json!({
            "deployment": id,
            "url": format!("/api/deployments/{id}"),
        })),
        Err(SubmitError::UnknownService(s)) => {
            error(StatusCode::NOT_FOUND, &format!("no service named {s:?}"))
        }
        Err(SubmitError::BadRequest(m)) => error(StatusCode::BAD_REQUEST, &m),
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
        Ok(list) => HttpResponse::Ok().json(list),
        Err(e) => internal(e),
    }
}

async fn deployment(_: Admin, state: web::Data<AppState>, id: web::Path<i64>) -> HttpResponse {
    match state.deployer.store().deployment(*id) {
        Ok(Some(d)) => HttpResponse::Ok().json(d),
        Ok(None) => error(StatusCode::NOT_FOUND, &format!("no deployment {id}")),
        Err(e) => internal(e),
    }
}
