//! The webhook endpoints. Each answers within milliseconds: authenticate over the
//! raw bytes, parse, record the delivery in the ledger, decide, answer `202`;
//! the deployment itself runs after the answer.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse, Scope};
use futures_util::StreamExt;
use serde_json::json;

use super::AppState;
use crate::config::Config;
use crate::deploy::intake::{overall, Outcome, Verdict as IntakeVerdict};
use crate::ledger::{Entry, GroupCommit, NewDelivery, Verdict};
use crate::store::{now_ms, StoreError};
use crate::webhook::{self, distribution, dockerhub, github, Item, Parsed, Source, Unreadable};

/// Rejected deliveries by source, for `/metrics`; and the ledger's group commit,
/// which the webhook endpoints share.
#[derive(Default)]
pub struct HookCounters {
    pub github_unauthorized: AtomicU64,
    pub dockerhub_unauthorized: AtomicU64,
    pub registry_unauthorized: AtomicU64,
    ledger: OnceLock<Option<GroupCommit>>,
}

impl HookCounters {
    fn unauthorized(&self, source: Source) -> &AtomicU64 {
        match source {
            Source::Github => &self.github_unauthorized,
            Source::Dockerhub => &self.dockerhub_unauthorized,
            Source::Registry => &self.registry_unauthorized,
        }
    }
}

pub fn scope() -> Scope {
    web::scope("/hooks")
        .route("/github", web::post().to(github_hook))
        .route("/dockerhub/{token}", web::post().to(dockerhub_hook))
        .route("/registry", web::post().to(registry_hook))
}

fn answer(status: StatusCode, body: serde_json::Value) -> HttpResponse {
    HttpResponse::build(status).json(body)
}

fn unauthorized(state: &AppState, source: Source, why: &str) -> HttpResponse {
    state
        .hooks
        .unauthorized(source)
        .fetch_add(1, Ordering::Relaxed);
    tracing::warn!(source = source.as_str(), reason = why, "webhook refused");
    answer(StatusCode::UNAUTHORIZED, json!({ "error": why }))
}

fn unreadable(source: Source, e: &Unreadable) -> HttpResponse {
    tracing::info!(source = source.as_str(), reason = %e, "unreadable webhook");
    answer(StatusCode::BAD_REQUEST, json!({ "error": e.0 }))
}

fn too_large(limit: usize) -> HttpResponse {
    answer(
        StatusCode::PAYLOAD_TOO_LARGE,
        json!({ "error": format!("body over {limit} bytes (server.body_limit)") }),
    )
}

/// Reads the whole body, refusing at once past `limit` bytes.
async fn read_body(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<Vec<u8>, HttpResponse> {
    let declared = req
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large(limit));
    }
    let mut body = Vec::with_capacity(declared.unwrap_or(0));
    while let Some(chunk) = payload.next().await {
        let chunk = chunk
            .map_err(|e| answer(StatusCode::BAD_REQUEST, json!({ "error": e.to_string() })))?;
        if body.len() + chunk.len() > limit {
            return Err(too_large(limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn headers_of(req: &HttpRequest) -> Vec<(String, String)> {
    req.headers()
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
        .collect()
}

fn header<'a>(req: &'a HttpRequest, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

async fn github_hook(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    let limit = state.deployer.config().server.body_limit;
    let body = match read_body(&req, payload, limit).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    let secrets = &state.deployer.config().webhooks.github_secrets;
    if let Err(e) = github::verify(secrets, &body, header(&req, "x-hub-signature-256")) {
        return unauthorized(&state, Source::Github, e.0);
    }
    accept(&req, &state, Source::Github, body).await
}

async fn dockerhub_hook(
    req: HttpRequest,
    token: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    let expected = state.deployer.config().webhooks.dockerhub_token.as_deref();
    if !webhook::token_matches(&token, expected) {
        return unauthorized(&state, Source::Dockerhub, "wrong or unset Docker Hub token");
    }
    match read_body(&req, payload, state.deployer.config().server.body_limit).await {
        Ok(body) => accept(&req, &state, Source::Dockerhub, body).await,
        Err(resp) => resp,
    }
}

async fn registry_hook(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    let presented = header(&req, "authorization")
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let expected = state.deployer.config().webhooks.registry_token.as_deref();
    if !webhook::token_matches(presented, expected) {
        return unauthorized(
            &state,
            Source::Registry,
            "missing or wrong Authorization: Bearer token",
        );
    }
    match read_body(&req, payload, state.deployer.config().server.body_limit).await {
        Ok(body) => accept(&req, &state, Source::Registry, body).await,
        Err(resp) => resp,
    }
}

/// An authenticated delivery: parse it, decide, record it, answer.
async fn accept(
    req: &HttpRequest,
    state: &AppState,
    source: Source,
    body: Vec<u8>,
) -> HttpResponse {
    let headers = headers_of(req);
    let (delivery_id, parsed) =
        match parse_delivery(state.deployer.config(), source, &lowercase(&headers), &body) {
            Ok(p) => p,
            Err(e) => return unreadable(source, &e),
        };
    let delivery = NewDelivery::new(source.as_str(), delivery_id, None, &headers, &body);
    let received_at = now_ms();
    let decision = match decide(state, &delivery, parsed) {
        Ok(d) => d,
        Err(e) => return super::errors::internal(e),
    };
    let Some(writer) = writer(state).filter(|_| decision.row.is_none()) else {
        return record(state, source, &delivery, received_at, &decision);
    };
    // Nothing was queued, so nothing is recorded yet: one row with its verdict,
    // committed together with the concurrent requests' rows.
    let delivery_id = delivery.delivery_id.clone();
    let entry = Entry {
        delivery,
        received_at,
        verdict: decision.ledger.clone(),
    };
    match writer.record(entry).await {
        Ok(Ok((_, attempt))) => answer_delivery(source, &delivery_id, attempt, &decision),
        Ok(Err(e)) => super::errors::internal(e),
        Err(gone) => super::errors::internal(gone),
    }
}

/// The ledger's group commit, started with the first delivery; `None` when its
/// thread could not be started (deliveries are then written one at a time).
fn writer(state: &AppState) -> Option<&GroupCommit> {
    state
        .hooks
        .ledger
        .get_or_init(|| match GroupCommit::start(state.deployer.store().clone()) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the ledger writer; writing deliveries one by one");
                None
            }
        })
        .as_ref()
}

fn lowercase(headers: &[(String, String)]) -> HashMap<String, String> {
    headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
        .collect()
}

/// Parses an authenticated delivery (fresh, or stored in the ledger for a
/// redelivery): its delivery id and what it holds.
pub fn parse_delivery(
    config: &Config,
    source: Source,
    headers: &HashMap<String, String>,
    body: &[u8],
) -> Result<(String, Parsed), Unreadable> {
    let get = |k: &str| headers.get(k).map(String::as_str);
    match source {
        Source::Github => {
            let event = get("x-github-event");
            let delivery = get("x-github-delivery");
            let doc = if event == Some("ping") {
                serde_json::Value::Null
            } else {
                github::document(get("content-type"), body)?
            };
            let parsed =
                github::parse(event, delivery, &doc, &config.webhooks.github_registry_host)?;
            let id = delivery
                .map(str::to_string)
                .unwrap_or_else(|| match &parsed {
                    Parsed::Items(items) => items
                        .iter()
                        .find_map(|i| match i {
                            Item::Push(p) => Some(p.delivery_id.clone()),
                            Item::Ignored(_) => None,
                        })
                        .unwrap_or_else(|| webhook::generated_id("gh")),
                    Parsed::Ping => webhook::generated_id("gh"),
                });
            Ok((id, parsed))
        }
        Source::Dockerhub => {
            let parsed = dockerhub::parse(body, &config.webhooks.dockerhub_registry_host)?;
            let id = match &parsed {
                Parsed::Items(items) => items.iter().find_map(|i| match i {
                    Item::Push(p) => Some(p.delivery_id.clone()),
                    Item::Ignored(_) => None,
                }),
                Parsed::Ping => None,
            }
            .unwrap_or_else(|| webhook::generated_id("dockerhub"));
            Ok((id, parsed))
        }
        Source::Registry => {
            if !distribution::content_type_ok(get("content-type")) {
                return Err(Unreadable(format!(
                    "unsupported content type {:?}: expected {}",
                    get("content-type").unwrap_or(""),
                    distribution::CONTENT_TYPES[0]
                )));
            }
            distribution::parse(body)
        }
    }
}

/// What was decided about a delivery, before or after it is recorded.
struct Decision {
    /// The ledger row, when a deployment it caused needed one (as `received`).
    row: Option<(i64, i64)>,
    ledger: Verdict,
    ping: bool,
}

/// Decides what each event of a delivery means. The delivery is recorded first
/// (as `received`) only when one of its events queues a deployment, which
/// refers to its row; otherwise it is recorded afterwards with its verdict.
fn decide(
    state: &AppState,
    delivery: &NewDelivery,
    parsed: Parsed,
) -> Result<Decision, StoreError> {
    let store = state.deployer.store();
    let (items, ping) = match parsed {
        Parsed::Ping => (vec![Item::Ignored("ping".into())], true),
        Parsed::Items(items) => (items, false),
    };
    let mut row: Option<(i64, i64)> = None;
    let mut outcomes = Vec::with_capacity(items.len());
    for item in items {
        let outcome = match item {
            Item::Push(mut event) => {
                // A redelivery keeps the id it was first recorded under.
                event.delivery_id = delivery.delivery_id.clone();
                let mut ledger_row = || match row {
                    Some((r, _)) => Ok(r),
                    None => {
                        let recorded = store.insert_delivery(delivery)?;
                        row = Some(recorded);
                        Ok(recorded.0)
                    }
                };
                state.deployer.offer(&event, &mut ledger_row)?
            }
            Item::Ignored(why) => Outcome::ignored(why),
        };
        outcomes.push(outcome);
    }
    let verdict = overall(&outcomes);
    let detail: Vec<&str> = outcomes
        .iter()
        .map(|o| o.detail.as_str())
        .filter(|d| !d.is_empty())
        .collect();
    let detail = detail.join("; ");
    let mut deployments: Vec<i64> = outcomes
        .iter()
        .filter(|o| matches!(o.verdict, IntakeVerdict::Queued | IntakeVerdict::Duplicate))
        .filter_map(|o| o.deployment)
        .collect();
    deployments.dedup();
    let mut services: Vec<String> = outcomes.iter().filter_map(|o| o.service.clone()).collect();
    services.sort();
    services.dedup();
    Ok(Decision {
        row,
        ledger: Verdict {
            verdict: verdict.as_str().into(),
            detail,
            events: serde_json::to_string(&outcomes).unwrap_or_else(|_| "null".into()),
            services,
            deployments,
        },
        ping,
    })
}

/// Writes a decided delivery on this thread: its verdict onto the row recorded
/// for its deployment, or a new row. The attempt number, or the error answer.
fn record(
    state: &AppState,
    source: Source,
    delivery: &NewDelivery,
    received_at: i64,
    decision: &Decision,
) -> HttpResponse {
    let store = state.deployer.store();
    let recorded = match decision.row {
        Some((row, attempt)) => store
            .complete_delivery(row, &decision.ledger)
            .map(|()| attempt),
        None => store
            .record_delivery(delivery, received_at, &decision.ledger)
            .map(|(_, attempt)| attempt),
    };
    match recorded {
        Ok(attempt) => answer_delivery(source, &delivery.delivery_id, attempt, decision),
        Err(e) => super::errors::internal(e),
    }
}

/// Records the delivery and decides what each of its events means (a
/// redelivery by hand; webhooks go through [`accept`]).
pub fn ingest(
    state: &AppState,
    source: Source,
    delivery_id: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    parsed: Parsed,
    redelivery_of: Option<i64>,
) -> HttpResponse {
    let delivery = NewDelivery::new(source.as_str(), delivery_id, redelivery_of, &headers, &body);
    let received_at = now_ms();
    match decide(state, &delivery, parsed) {
        Ok(decision) => record(state, source, &delivery, received_at, &decision),
        Err(e) => super::errors::internal(e),
    }
}

/// The log line and the answer for a recorded delivery.
fn answer_delivery(source: Source, delivery_id: &str, attempt: i64, d: &Decision) -> HttpResponse {
    let verdict = d.ledger.verdict.as_str();
    tracing::info!(
        source = source.as_str(),
        delivery = %delivery_id,
        attempt,
        verdict,
        detail = %d.ledger.detail,
        "delivery"
    );
    let status = if d.ping {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    answer(
        status,
        json!({
            "delivery": delivery_id,
            "attempt": attempt,
            "outcome": verdict,
            "detail": if d.ping { "pong" } else { d.ledger.detail.as_str() },
            "deployments": d.ledger.deployments,
        }),
    )
}
