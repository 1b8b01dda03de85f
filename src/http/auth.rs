//! The admin check, as an extractor: a handler that takes `Admin` cannot run
//! without either a valid `Authorization: Bearer <admin_token>` or the session
//! cookie of a status-page login. A cookie is sent by the browser on its own, so
//! a cookie-authenticated request that changes state must also come from this
//! site (`Origin`, `Sec-Fetch-Site`) and carry the session's CSRF token in
//! `X-Greenlight-CSRF`.

use std::future::{ready, Ready};

use actix_web::{dev::Payload, http::StatusCode, web, FromRequest, HttpRequest};
use subtle::ConstantTimeEq;

use super::session::{self, Sessions};
use super::AppState;

pub struct Admin;

fn refuse(status: StatusCode, message: &str) -> actix_web::Error {
    let resp = super::errors::error(status, message);
    actix_web::error::InternalError::from_response("refused", resp).into()
}

fn check(req: &HttpRequest) -> Result<Admin, actix_web::Error> {
    let Some(state) = req.app_data::<web::Data<AppState>>() else {
        return Err(actix_web::error::ErrorInternalServerError("no state"));
    };
    // A bearer token, when one is presented, decides on its own.
    if let Some(auth) = req.headers().get("Authorization") {
        let presented = auth
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        let ok: bool = presented
            .as_bytes()
            .ct_eq(state.admin_token.as_bytes())
            .into();
        if ok {
            return Ok(Admin);
        }
        tracing::warn!(path = %req.path(), "admin API request without a valid token");
        return Err(refuse(
            StatusCode::UNAUTHORIZED,
            "missing or wrong admin token (Authorization: Bearer <server.admin_token>)",
        ));
    }
    let session = req
        .app_data::<web::Data<Sessions>>()
        .and_then(|s| s.of_request(req));
    let Some((_, session)) = session else {
        tracing::warn!(path = %req.path(), "admin API request without a token or a session");
        return Err(refuse(
            StatusCode::UNAUTHORIZED,
            "missing or wrong admin token (Authorization: Bearer <server.admin_token>), \
             or log in at /login",
        ));
    };
    if session::is_unsafe(req.method()) {
        if let Some(why) = session::cross_site(req) {
            tracing::warn!(path = %req.path(), %why, "cross-site request refused");
            return Err(refuse(
                StatusCode::FORBIDDEN,
                &format!("cross-site request refused ({why})"),
            ));
        }
        if !session::csrf_header_ok(req, &session) {
            tracing::warn!(path = %req.path(), "session request without a valid CSRF token");
            return Err(refuse(
                StatusCode::FORBIDDEN,
                &format!(
                    "missing or wrong CSRF token ({}); reload the status page",
                    session::CSRF_HEADER
                ),
            ));
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
