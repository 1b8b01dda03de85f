//! The error policy of every endpoint: a JSON `{"error": ...}` with a status
//! code that says whose fault it is; our own faults are logged in full and
//! answered with a 500 that leaks nothing.

use actix_web::http::StatusCode;
use actix_web::HttpResponse;

pub fn error(status: StatusCode, message: &str) -> HttpResponse {
    HttpResponse::build(status).json(serde_json::json!({ "error": message }))
}

pub fn internal(e: impl std::fmt::Display) -> HttpResponse {
    // Logged in full; the client learns only that it was our fault.
    tracing::error!(error = %e, "admin API internal error");
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal error (see greenlight's log)",
    )
}
