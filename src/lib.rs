//! greenlight: push an image tag, and it goes live behind nginx with zero failed
//! requests, or it does not go live and you are told exactly why.
//!
//! # Layout
//!
//! - [`config`]: `greenlight.toml` -> validated, typed configuration.
//! - [`store`]: SQLite state: deployments with their steps, what is live.
//! - [`docker`]: the container runtime through the Docker Engine API (bollard).
//! - [`registry`]: image references; resolving a tag to a digest at the registry.
//! - [`proxy`]: nginx: render upstream files, test, reload, verify, drain.
//! - [`deploy`]: the per-service queues and the deployment state machine.
//! - [`notify`]: deployment notifications by email and Slack, off the deploy path.
//! - [`http`]: the actix-web server: health and the admin API.
//! - [`metrics`]: `GET /metrics`, Prometheus text derived from the store at scrape time.
//! - [`app`]: wires the real parts together and runs them.
//! - [`cli`]: the `greenlight` command line; client commands call the admin API.

pub mod app;
pub mod check;
pub mod cli;
pub mod config;
pub mod deploy;
pub mod display;
pub mod docker;
pub mod domain;
pub mod http;
pub mod ledger;
pub mod metrics;
pub mod notify;
pub mod proxy;
pub mod registry;
pub mod retry;
pub mod store;
pub mod webhook;
