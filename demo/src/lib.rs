//! greenlight-demo: the tiny HTTP app that greenlight's tests and quickstart deploy.
//!
//! It is built as a static binary into a `FROM scratch` image and behaves like a
//! well-mannered service: it says which version and colour answered, can be told to be
//! unhealthy, slow to become healthy or to crash, and on SIGTERM it stops accepting,
//! finishes the requests in flight and exits 0.
//!
//! Layout:
//! - `config`: the environment variables that change its behaviour.
//! - `http`: request head/body reading and parsing, response writing.
//! - `app`: the routes (`/`, `/healthz`, `/slow`, `/echo`).
//! - `server`: thread-per-connection serving and graceful shutdown.
//! - `ws`: `GET /ws`, a WebSocket that greets with the version and echoes (a
//!   long-lived connection for greenlight's drain).
//! - `probe`: the `--probe URL` mode used as a Docker `HEALTHCHECK` in a shell-less image.

pub mod app;
pub mod config;
pub mod http;
pub mod probe;
pub mod server;
pub mod ws;
