//! The admin check, as an extractor: a handler that takes `Admin` cannot run
//! without either a valid `Authorization: Bearer <admin_token>` or the session
//! cookie of a status-page login. A cookie is sent by the browser on its own, so
//! a cookie-authenticated request that changes state must also come from this
//! site (`Origin`, `Sec-Fetch-Site`) and carry the session's CSRF token in
//! `X-Greenlight-CSRF`.
//!
//! Also who the client is ([`client_addr`]: the connection's peer, or what a
//! trusted proxy says) and the [`Throttle`] on failed admin-token attempts.

use std::collections::HashMap;
use std::future::{ready, Ready};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use actix_web::{dev::Payload, http::StatusCode, web, FromRequest, HttpRequest, HttpResponse};

use super::session::{self, Sessions};
use super::AppState;

pub struct Admin;

/// The `WWW-Authenticate` challenge of the admin API's 401 answers.
pub const CHALLENGE: &str = "Bearer realm=\"greenlight\"";

/// A `401` with its challenge and the reason.
pub fn unauthorized(challenge: &str, message: &str) -> HttpResponse {
    HttpResponse::Unauthorized()
        .insert_header(("WWW-Authenticate", challenge))
        .json(serde_json::json!({ "error": message }))
}

fn refuse(resp: HttpResponse) -> actix_web::Error {
    actix_web::error::InternalError::from_response("refused", resp).into()
}

/// The client of a request: the connection's peer address, unless that peer
/// is one of `[server] trusted_proxies`, in which case the nearest address in
/// `X-Forwarded-For` that is not a trusted proxy. A header any client can set
/// is never believed from anyone else.
pub fn client_addr(req: &HttpRequest, trusted: &[ipnet::IpNet]) -> Option<IpAddr> {
    let peer = req.peer_addr()?.ip();
    if !trusted.iter().any(|n| n.contains(&peer)) {
        return Some(peer);
    }
    let forwarded = req
        .headers()
        .get_all("x-forwarded-for")
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|a| a.trim().parse::<IpAddr>().ok())
        .collect::<Vec<_>>();
    Some(
        forwarded
            .into_iter()
            .rev()
            .find(|a| !trusted.iter().any(|n| n.contains(a)))
            .unwrap_or(peer),
    )
}

/// What the log says of a request's origin: the peer, and a forwarded-for
/// header only as a claim next to it.
pub fn peer_for_log(req: &HttpRequest) -> String {
    let peer = req
        .peer_addr()
        .map_or_else(|| "?".to_string(), |a| a.ip().to_string());
    match req
        .headers()
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
    {
        Some(f) => format!(
            "{peer} (X-Forwarded-For: {})",
            crate::telemetry::escape_controls(f)
        ),
        None => peer,
    }
}

/// Failed admin-token attempts per client address. After [`FREE_FAILURES`]
/// failures within [`WINDOW`], an address is refused (429) until the window
/// ends, its token not even checked. A right token is never slowed (only
/// failures count), and webhooks never pass through here.
#[derive(Default)]
pub struct Throttle {
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

/// Wrong tokens an address may send per window before it is refused.
pub const FREE_FAILURES: u32 = 10;
/// How long an address's failures count.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Most addresses remembered: past it, the oldest windows are forgotten.
const MAX_ADDRESSES: usize = 10_000;

impl Throttle {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, (u32, Instant)>> {
        self.failures.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How long `addr` must wait, when it is refused now.
    pub fn refused(&self, addr: Option<IpAddr>) -> Option<Duration> {
        let addr = addr?;
        let (count, since) = *self.map().get(&addr)?;
        let left = WINDOW.checked_sub(since.elapsed())?;
        (count >= FREE_FAILURES).then_some(left)
    }

    /// Counts a wrong token from `addr`.
    pub fn failed(&self, addr: Option<IpAddr>) {
        let Some(addr) = addr else { return };
        let now = Instant::now();
        let mut map = self.map();
        if map.len() >= MAX_ADDRESSES && !map.contains_key(&addr) {
            map.retain(|_, (_, since)| since.elapsed() < WINDOW);
            while map.len() >= MAX_ADDRESSES {
                let Some(oldest) = map.iter().min_by_key(|(_, (_, s))| *s).map(|(a, _)| *a) else {
                    break;
                };
                map.remove(&oldest);
            }
        }
        let entry = map.entry(addr).or_insert((0, now));
        if entry.1.elapsed() >= WINDOW {
            *entry = (0, now);
        }
        entry.0 += 1;
    }
}

/// The `429` of a throttled address.
pub fn too_many(wait: Duration) -> HttpResponse {
    HttpResponse::TooManyRequests()
        .insert_header(("Retry-After", wait.as_secs().max(1).to_string()))
        .json(serde_json::json!({
            "error": format!(
                "too many wrong admin tokens from this address; try again in {}s",
                wait.as_secs().max(1)
            )
        }))
}

fn check(req: &HttpRequest) -> Result<Admin, actix_web::Error> {
    let Some(state) = req.app_data::<web::Data<AppState>>() else {
        return Err(actix_web::error::ErrorInternalServerError("no state"));
    };
    // A bearer token, when one is presented, decides on its own.
    if let Some(auth) = req.headers().get("Authorization") {
        let client = client_addr(req, &state.trusted_proxies);
        if let Some(wait) = state.throttle.refused(client) {
            return Err(refuse(too_many(wait)));
        }
        let presented = auth
            .to_str()
            .ok()
            .and_then(crate::secret::bearer)
            .unwrap_or("");
        if crate::secret::matches(presented.as_bytes(), state.admin_token.as_bytes()) {
            return Ok(Admin);
        }
        state.throttle.failed(client);
        tracing::warn!(path = %req.path(), peer = %peer_for_log(req), "admin API request without a valid token");
        return Err(refuse(unauthorized(
            CHALLENGE,
            "missing or wrong admin token (Authorization: Bearer <server.admin_token>)",
        )));
    }
    let session = req
        .app_data::<web::Data<Sessions>>()
        .and_then(|s| s.of_request(req));
    let Some((_, session)) = session else {
        tracing::warn!(path = %req.path(), peer = %peer_for_log(req), "admin API request without a token or a session");
        return Err(refuse(unauthorized(
            CHALLENGE,
            "missing or wrong admin token (Authorization: Bearer <server.admin_token>), \
             or log in at /login",
        )));
    };
    if session::is_unsafe(req.method()) {
        if let Some(why) = session::cross_site(req) {
            tracing::warn!(path = %req.path(), %why, "cross-site request refused");
            return Err(refuse(super::errors::error(
                StatusCode::FORBIDDEN,
                &format!("cross-site request refused ({why})"),
            )));
        }
        if !session::csrf_header_ok(req, &session) {
            tracing::warn!(path = %req.path(), "session request without a valid CSRF token");
            return Err(refuse(super::errors::error(
                StatusCode::FORBIDDEN,
                &format!(
                    "missing or wrong CSRF token ({}); reload the status page",
                    session::CSRF_HEADER
                ),
            )));
        }
    }
    Ok(Admin)
}

impl FromRequest for Admin {
    type Error = actix_web::Error;
    type Future = Ready<Result<Admin, actix_web::Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(check(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    #[test]
    fn an_address_is_refused_after_its_free_failures_and_others_are_not() {
        let t = Throttle::default();
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        for _ in 0..FREE_FAILURES - 1 {
            t.failed(Some(a));
        }
        assert_eq!(t.refused(Some(a)), None);
        t.failed(Some(a));
        let wait = t.refused(Some(a)).expect("refused");
        assert!(wait <= WINDOW && wait > WINDOW - Duration::from_secs(5));
        assert_eq!(t.refused(Some(b)), None, "another address");
        assert_eq!(t.refused(None), None);
    }

    #[test]
    fn forwarded_addresses_are_believed_only_from_trusted_proxies() {
        let req = |peer: &str| {
            TestRequest::get()
                .peer_addr(peer.parse().unwrap())
                .insert_header(("X-Forwarded-For", "203.0.113.9, 10.0.0.7"))
                .to_http_request()
        };
        let none: Vec<ipnet::IpNet> = vec![];
        assert_eq!(
            client_addr(&req("192.0.2.1:5000"), &none),
            Some("192.0.2.1".parse().unwrap())
        );
        let proxies: Vec<ipnet::IpNet> = vec![
            "192.0.2.0/24".parse().unwrap(),
            "10.0.0.7/32".parse().unwrap(),
        ];
        assert_eq!(
            client_addr(&req("192.0.2.1:5000"), &proxies),
            Some("203.0.113.9".parse().unwrap()),
            "the nearest address that is not a proxy"
        );
        assert_eq!(
            client_addr(&req("198.51.100.1:5000"), &proxies),
            Some("198.51.100.1".parse().unwrap()),
            "a peer that is not a proxy is the client"
        );
    }
}
