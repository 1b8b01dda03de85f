//! The webhook endpoints. Each answers within milliseconds: authenticate over the
//! raw bytes, parse, hand the delivery to the ledger's writer (which decides
//! what it means and records it, see `ledger.rs`), answer `202`; the
//! deployment itself runs after the answer.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse, Scope};
use futures_util::StreamExt;
use serde_json::json;

use super::AppState;
use crate::config::Config;
use crate::ledger::{Entry, NewDelivery, Recorded};
use crate::store::now_ms;
use crate::webhook::{self, distribution, dockerhub, github, Item, Parsed, Source, Unreadable};

/// Rejected deliveries by source, for `/metrics`.
#[derive(Default)]
pub struct HookCounters {
    pub github_unauthorized: AtomicU64,
    pub dockerhub_unauthorized: AtomicU64,
    pub registry_unauthorized: AtomicU64,
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

fn unauthorized(state: &AppState, req: &HttpRequest, source: Source, why: &str) -> HttpResponse {
    state
        .hooks
        .unauthorized(source)
        .fetch_add(1, Ordering::Relaxed);
    tracing::warn!(source = source.as_str(), peer = %super::auth::peer_for_log(req), reason = why, "webhook refused");
    let challenge = match source {
        Source::Github => "X-Hub-Signature-256 realm=\"greenlight webhooks\"",
        Source::Dockerhub => "Token realm=\"greenlight webhooks\"",
        Source::Registry => "Bearer realm=\"greenlight webhooks\"",
    };
    super::auth::unauthorized(challenge, why)
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

/// Most bytes reserved for a body before any arrived: the buffer grows with
/// what is received, never with what a `Content-Length` claims.
const INITIAL_BODY_CAPACITY: usize = 16 * 1024;

/// Bodies read before they can be authenticated (GitHub signs the body, so
/// all of it must arrive first), in all and per client address. Past either, a
/// delivery is answered 503 at once instead of holding a connection and its
/// buffer: slow senders cannot exhaust the server, nor one address the rest.
/// The per-address bound stays above what one real sender does at once (the
/// ingestion benchmark sends 50 concurrent deliveries from one address), since
/// GitHub never retries a delivery that was refused.
pub const MAX_UNAUTHENTICATED_READS: usize = 256;
pub const MAX_UNAUTHENTICATED_READS_PER_ADDRESS: usize = 64;

/// The unauthenticated body reads in progress (see [`MAX_UNAUTHENTICATED_READS`]).
#[derive(Default)]
pub struct ReadSlots(Mutex<(usize, HashMap<IpAddr, usize>)>);

/// One unauthenticated read in progress; freed when dropped.
pub struct ReadSlot<'a> {
    slots: &'a ReadSlots,
    addr: Option<IpAddr>,
}

impl ReadSlots {
    fn lock(&self) -> std::sync::MutexGuard<'_, (usize, HashMap<IpAddr, usize>)> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A slot for a read from `addr`, when there is room.
    pub fn take(&self, addr: Option<IpAddr>) -> Option<ReadSlot<'_>> {
        let mut guard = self.lock();
        let (total, by_addr) = &mut *guard;
        if *total >= MAX_UNAUTHENTICATED_READS {
            return None;
        }
        if let Some(a) = addr {
            let n = by_addr.entry(a).or_insert(0);
            if *n >= MAX_UNAUTHENTICATED_READS_PER_ADDRESS {
                return None;
            }
            *n += 1;
        }
        *total += 1;
        Some(ReadSlot { slots: self, addr })
    }
}

impl Drop for ReadSlot<'_> {
    fn drop(&mut self) {
        let mut guard = self.slots.lock();
        let (total, by_addr) = &mut *guard;
        *total -= 1;
        if let Some(a) = self.addr {
            if let Some(n) = by_addr.get_mut(&a) {
                *n -= 1;
                if *n == 0 {
                    by_addr.remove(&a);
                }
            }
        }
    }
}

fn busy() -> HttpResponse {
    HttpResponse::ServiceUnavailable()
        .insert_header(("Retry-After", "1"))
        .json(json!({ "error": "too many deliveries being received at once; try again" }))
}

/// Reads the whole body: refused at once past `limit` bytes, cut off when it
/// has not all arrived within `deadline`.
async fn read_body(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
    deadline: Duration,
) -> Result<Vec<u8>, HttpResponse> {
    let declared = req
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large(limit));
    }
    let read = async move {
        let mut body = Vec::with_capacity(declared.unwrap_or(0).min(INITIAL_BODY_CAPACITY));
        while let Some(chunk) = payload.next().await {
            let chunk = chunk
                .map_err(|e| answer(StatusCode::BAD_REQUEST, json!({ "error": e.to_string() })))?;
            if body.len() + chunk.len() > limit {
                return Err(too_large(limit));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    };
    match tokio::time::timeout(deadline, read).await {
        Ok(result) => result,
        Err(_) => {
            tracing::info!(peer = %super::auth::peer_for_log(req), "webhook body too slow; cut off");
            Err(answer(
                StatusCode::REQUEST_TIMEOUT,
                json!({ "error": format!(
                    "the body did not arrive within {}s (server.body_timeout)",
                    deadline.as_secs_f64()
                ) }),
            ))
        }
    }
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
    let config = state.deployer.config();
    let server = &config.server;
    let client = super::auth::client_addr(&req, &state.trusted_proxies);
    let Some(_slot) = state.unauthenticated.take(client) else {
        tracing::warn!(peer = %super::auth::peer_for_log(&req), "webhook refused: too many unauthenticated bodies being read");
        return busy();
    };
    let body = match read_body(&req, payload, server.body_limit, server.body_timeout).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    let secrets = &config.webhooks.github_secrets;
    if let Err(e) = github::verify(secrets, &body, header(&req, "x-hub-signature-256")) {
        return unauthorized(&state, &req, Source::Github, e.0);
    }
    accept(&req, &state, Source::Github, body).await
}

async fn dockerhub_hook(
    req: HttpRequest,
    token: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    let config = state.deployer.config();
    let expected = config.webhooks.dockerhub_token.as_deref();
    if !webhook::token_matches(&token, expected) {
        return unauthorized(
            &state,
            &req,
            Source::Dockerhub,
            "wrong or unset Docker Hub token",
        );
    }
    let server = &config.server;
    match read_body(&req, payload, server.body_limit, server.body_timeout).await {
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
        .and_then(crate::secret::bearer)
        .unwrap_or("");
    let config = state.deployer.config();
    let expected = config.webhooks.registry_token.as_deref();
    if !webhook::token_matches(presented, expected) {
        return unauthorized(
            &state,
            &req,
            Source::Registry,
            "missing or wrong Authorization: Bearer token",
        );
    }
    let server = &config.server;
    match read_body(&req, payload, server.body_limit, server.body_timeout).await {
        Ok(body) => accept(&req, &state, Source::Registry, body).await,
        Err(resp) => resp,
    }
}

/// An authenticated delivery: parse it, then record it through the ledger's writer.
async fn accept(
    req: &HttpRequest,
    state: &AppState,
    source: Source,
    body: Vec<u8>,
) -> HttpResponse {
    let headers = headers_of(req);
    let (delivery_id, parsed) = match parse_delivery(
        &state.deployer.config(),
        source,
        &lowercase(&headers),
        &body,
    ) {
        Ok(p) => p,
        Err(e) => return unreadable(source, &e),
    };
    ingest(state, source, delivery_id, headers, body, parsed, None).await
}

fn lowercase(headers: &[(String, String)]) -> HashMap<String, String> {
    headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
        .collect()
}

/// Parses an authenticated delivery (fresh, or stored in the ledger for a
/// redelivery): its delivery id and what it holds. A delivery id outside
/// [`webhook::valid_delivery_id`]'s grammar is refused.
pub fn parse_delivery(
    config: &Config,
    source: Source,
    headers: &HashMap<String, String>,
    body: &[u8],
) -> Result<(String, Parsed), Unreadable> {
    let (id, parsed) = parse_source(config, source, headers, body)?;
    if !webhook::valid_delivery_id(&id) {
        return Err(Unreadable(format!(
            "delivery id {:?} is not a delivery id (1-128 of letters, digits, '.', '_', ':', '-')",
            crate::telemetry::escape_controls(&id.chars().take(140).collect::<String>())
        )));
    }
    Ok((id, parsed))
}

fn parse_source(
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
            let parsed = github::parse(
                event,
                delivery,
                get("content-type"),
                body,
                &config.webhooks.github_registry_host,
            )?;
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

/// Records a parsed delivery (a webhook's, or a stored one an operator
/// redelivers) through the ledger's writer, which decides what each of its
/// events means; answers with the verdict.
pub async fn ingest(
    state: &AppState,
    source: Source,
    delivery_id: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    parsed: Parsed,
    redelivery_of: Option<i64>,
) -> HttpResponse {
    let (items, ping) = match parsed {
        Parsed::Ping => (Vec::new(), true),
        Parsed::Items(mut items) => {
            // A redelivery keeps the id it was first recorded under.
            for item in &mut items {
                if let Item::Push(event) = item {
                    event.delivery_id = delivery_id.clone();
                }
            }
            (items, false)
        }
    };
    let entry = Entry {
        delivery: NewDelivery::new(source, delivery_id, redelivery_of, &headers, &body),
        received_at: now_ms(),
        items,
        ping,
    };
    match state.ledger.record(entry).await {
        Ok(Ok(recorded)) => answer_delivery(source, &recorded),
        Ok(Err(e)) => super::errors::internal(e),
        Err(gone) => super::errors::internal(gone),
    }
}

/// The log line and the answer for a recorded delivery.
fn answer_delivery(source: Source, r: &Recorded) -> HttpResponse {
    let a = &r.admitted;
    tracing::info!(
        source = source.as_str(),
        delivery = %r.delivery_id,
        row = r.row,
        attempt = r.attempt,
        verdict = a.verdict.as_str(),
        detail = %a.detail,
        "delivery"
    );
    let status = if a.ping {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    answer(
        status,
        json!({
            "delivery": r.delivery_id,
            "attempt": r.attempt,
            "outcome": a.verdict.as_str(),
            "detail": if a.ping { "pong" } else { a.detail.as_str() },
            "deployments": a.deployments,
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by greenlight-fuzz: the Distribution envelope's first event id
    /// (the delivery id) is the sender's; one with a space (or anything outside
    /// the grammar) is refused here, for every source.
    #[test]
    fn a_delivery_id_outside_the_grammar_is_refused_for_every_source() {
        let config = crate::webhook::tests::config();
        let body = include_str!("../../tests/fixtures/webhooks/distribution-push.json")
            .replace("\"02db6a4f", "\" 02db6a4f");
        let headers: HashMap<String, String> = [(
            "content-type".to_string(),
            distribution::CONTENT_TYPES[0].to_string(),
        )]
        .into();
        let e = parse_delivery(&config, Source::Registry, &headers, body.as_bytes()).unwrap_err();
        assert!(e.0.contains("is not a delivery id"), "{e}");
        let github: HashMap<String, String> = [
            ("x-github-event".to_string(), "ping".to_string()),
            ("x-github-delivery".to_string(), "a/../b".to_string()),
        ]
        .into();
        assert!(parse_delivery(&config, Source::Github, &github, b"{}").is_err());
    }
}
