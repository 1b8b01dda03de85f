//! Browser sessions for the status page: a random opaque id in an `HttpOnly`,
//! `SameSite=Strict` cookie, kept in memory (by its SHA-256, never the id itself)
//! with an expiry and a CSRF token of its own. A restart logs everyone out.
//!
//! Also the checks a cookie-authenticated request that changes state must pass:
//! same-origin (`Origin`, `Sec-Fetch-Site`) and the session's CSRF token in a
//! header, compared in constant time.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use actix_web::cookie::{Cookie, SameSite};
use actix_web::http::{header, Method};
use actix_web::{web, HttpRequest};
use sha2::{Digest, Sha256};

/// The session cookie's name.
pub const COOKIE: &str = "greenlight_session";
/// The header a cookie-authenticated request that changes state carries its CSRF token in.
pub const CSRF_HEADER: &str = "X-Greenlight-CSRF";
/// How long a session lasts after login.
pub const TTL: Duration = Duration::from_secs(12 * 3600);
/// At most this many live sessions; logging in past it ends the oldest.
const MAX_SESSIONS: usize = 256;

/// What the server knows of one logged-in browser.
#[derive(Clone)]
pub struct Session {
    pub csrf: String,
}

struct Entry {
    session: Session,
    expires: Instant,
}

#[derive(Default)]
pub struct Sessions {
    by_hash: Mutex<HashMap<[u8; 32], Entry>>,
}

use crate::secret::random_token;

fn key(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Entry>> {
        self.by_hash.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a session; returns its id (for the cookie only) and the session.
    pub fn create(&self) -> (String, Session) {
        let id = random_token();
        let session = Session {
            csrf: random_token(),
        };
        let now = Instant::now();
        let mut map = self.lock();
        map.retain(|_, e| e.expires > now);
        while map.len() >= MAX_SESSIONS {
            let Some(oldest) = map.iter().min_by_key(|(_, e)| e.expires).map(|(k, _)| *k) else {
                break;
            };
            map.remove(&oldest);
        }
        map.insert(
            key(&id),
            Entry {
                session: session.clone(),
                expires: now + TTL,
            },
        );
        (id, session)
    }

    /// The live session with this id, if any.
    pub fn get(&self, id: &str) -> Option<Session> {
        let k = key(id);
        let mut map = self.lock();
        match map.get(&k) {
            Some(e) if e.expires > Instant::now() => Some(e.session.clone()),
            Some(_) => {
                map.remove(&k);
                None
            }
            None => None,
        }
    }

    pub fn remove(&self, id: &str) {
        self.lock().remove(&key(id));
    }

    /// The session the request's cookie names, with the cookie's id.
    pub fn of_request(&self, req: &HttpRequest) -> Option<(String, Session)> {
        let id = req.cookie(COOKIE)?.value().to_string();
        let session = self.get(&id)?;
        Some((id, session))
    }
}

/// This server's scheme and host as the client addressed them: plain HTTP and
/// the `Host` header, or what a trusted proxy (`[server] trusted_proxies`)
/// says in `Forwarded` / `X-Forwarded-Proto` / `X-Forwarded-Host`. A
/// forwarded header from anyone else is ignored: any client can set one.
fn origin(req: &HttpRequest) -> (String, String) {
    let trusted = req
        .app_data::<web::Data<super::AppState>>()
        .is_some_and(|s| {
            req.peer_addr()
                .is_some_and(|p| s.trusted_proxies.iter().any(|n| n.contains(&p.ip())))
        });
    if trusted {
        let info = req.connection_info();
        return (info.scheme().to_string(), info.host().to_string());
    }
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("")
        .to_string();
    ("http".to_string(), host)
}

/// The session cookie: `HttpOnly`, `SameSite=Strict`, `Path=/`, `Secure` over
/// HTTPS (as a trusted proxy says: greenlight itself serves plain HTTP).
pub fn cookie(req: &HttpRequest, id: String) -> Cookie<'static> {
    Cookie::build(COOKIE, id)
        .http_only(true)
        .same_site(SameSite::Strict)
        .path("/")
        .secure(origin(req).0 == "https")
        .max_age(actix_web::cookie::time::Duration::seconds(
            TTL.as_secs() as i64
        ))
        .finish()
}

/// A cookie that tells the browser to forget the session.
pub fn removal(req: &HttpRequest) -> Cookie<'static> {
    let mut c = cookie(req, String::new());
    c.make_removal();
    c
}

/// Whether the method changes state (everything but GET, HEAD, OPTIONS, TRACE).
pub fn is_unsafe(method: &Method) -> bool {
    !matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

/// Why a request is taken to come from another site, if it is: its `Origin`
/// is not this server's, or the browser says `Sec-Fetch-Site` is not
/// same-origin. A request without either header (an old browser, a script)
/// passes this check and must still carry the CSRF token.
pub fn cross_site(req: &HttpRequest) -> Option<String> {
    let headers = req.headers();
    if let Some(site) = headers.get("sec-fetch-site") {
        let site = site.to_str().unwrap_or("");
        if !matches!(site, "same-origin" | "none") {
            return Some(format!("Sec-Fetch-Site: {site}"));
        }
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        let (scheme, host) = self::origin(req);
        let ours = [
            format!("{scheme}://{host}"),
            // Behind a TLS-terminating proxy that does not say so.
            format!("https://{host}"),
        ];
        if !ours.iter().any(|o| o.eq_ignore_ascii_case(origin)) {
            return Some(format!("Origin {origin:?} is not {:?}", ours[0]));
        }
    }
    None
}

/// Whether `presented` is the session's CSRF token (constant time).
pub fn csrf_matches(session: &Session, presented: &str) -> bool {
    crate::secret::matches(presented.as_bytes(), session.csrf.as_bytes())
}

/// Whether the request's CSRF header carries the session's token.
pub fn csrf_header_ok(req: &HttpRequest, session: &Session) -> bool {
    let presented = req
        .headers()
        .get(CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    csrf_matches(session, presented)
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    #[test]
    fn sessions_are_random_found_by_id_and_removable() {
        let s = Sessions::default();
        let (a, sa) = s.create();
        let (b, _) = s.create();
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
        assert_eq!(s.get(&a).unwrap().csrf, sa.csrf);
        assert!(s.get("not-a-session").is_none());
        s.remove(&a);
        assert!(s.get(&a).is_none());
        assert!(s.get(&b).is_some());
    }

    #[test]
    fn the_oldest_session_goes_when_there_are_too_many() {
        let s = Sessions::default();
        let (first, _) = s.create();
        let rest: Vec<_> = (1..MAX_SESSIONS).map(|_| s.create().0).collect();
        assert!(s.get(&first).is_some());
        s.create();
        assert!(s.get(&first).is_none());
        assert!(rest.iter().all(|id| s.get(id).is_some()));
    }

    #[test]
    fn csrf_tokens_compare_whole() {
        let session = Session {
            csrf: "abc123".into(),
        };
        assert!(csrf_matches(&session, "abc123"));
        assert!(!csrf_matches(&session, "abc12"));
        assert!(!csrf_matches(&session, ""));
        assert!(!csrf_matches(
            &Session {
                csrf: String::new()
            },
            ""
        ));
    }

    #[test]
    fn cross_site_requests_are_recognised() {
        let req = |headers: &[(&str, &str)]| {
            let mut r = TestRequest::post().insert_header(("Host", "gl.example:8080"));
            for h in headers {
                r = r.insert_header(*h);
            }
            r.to_http_request()
        };
        assert!(cross_site(&req(&[])).is_none());
        assert!(cross_site(&req(&[("Origin", "http://gl.example:8080")])).is_none());
        assert!(cross_site(&req(&[("Origin", "https://gl.example:8080")])).is_none());
        assert!(cross_site(&req(&[("Sec-Fetch-Site", "same-origin")])).is_none());
        assert!(cross_site(&req(&[("Origin", "http://evil.example")])).is_some());
        assert!(cross_site(&req(&[("Origin", "http://gl.example:8081")])).is_some());
        assert!(cross_site(&req(&[("Origin", "null")])).is_some());
        assert!(cross_site(&req(&[("Sec-Fetch-Site", "cross-site")])).is_some());
        assert!(cross_site(&req(&[("Sec-Fetch-Site", "same-site")])).is_some());
        // Forwarded headers are a claim any client can make: not believed
        // without [server] trusted_proxies.
        assert!(cross_site(&req(&[
            ("X-Forwarded-Host", "evil.example"),
            ("Origin", "http://evil.example")
        ]))
        .is_some());
    }

    #[test]
    fn the_cookie_is_secure_only_when_https_is_known() {
        let forged = TestRequest::post()
            .insert_header(("Host", "gl.example"))
            .insert_header(("X-Forwarded-Proto", "https"))
            .to_http_request();
        assert_eq!(cookie(&forged, "id".into()).secure(), Some(false));
    }
}
