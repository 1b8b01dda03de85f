//! The admin token check, as an extractor: a handler that takes `Admin` cannot run
//! without a valid `Authorization: Bearer <admin_token>`.

use std::future::{ready, Ready};

use actix_web::{dev::Payload, http::StatusCode, web, FromRequest, HttpRequest};
use subtle::ConstantTimeEq;

use super::AppState;

pub struct Admin;

impl FromRequest for Admin {
    type Error = actix_web::Error;
    type Future = Ready<Result<Admin, actix_web::Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let Some(state) = req.app_data::<web::Data<AppState>>() else {
            return ready(Err(actix_web::error::ErrorInternalServerError("no state")));
        };
        let presented = req
            .headers()
            .get("Authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        let ok: bool = presented
            .as_bytes()
            .ct_eq(state.admin_token.as_bytes())
            .into();
        if ok {
            ready(Ok(Admin))
        } else {
            tracing::warn!(path = %req.path(), "admin API request without a valid token");
            let resp = super::api::error(
                StatusCode::UNAUTHORIZED,
                "missing or wrong admin token (Authorization: Bearer <server.admin_token>)",
            );
            ready(Err(actix_web::error::InternalError::from_response(
                "unauthorized",
                resp,
            )
            .into()))
        }
    }
}
