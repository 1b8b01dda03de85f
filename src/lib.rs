//! greenlight: push an image tag, and it goes live behind nginx with zero failed
//! requests, or it does not go live and you are told exactly why.
//!
//! # Layout
//!
//! Plain data first, then the parts that act on the world, then the ways in;
//! each module uses only those listed before it (no import cycles):
//!
//! - [`domain`]: the domain's data, depending on nothing else: a deployment's
//!   state and trigger, colours, the plan of steps, the routing, replicas,
//!   image references and the grammars names are held to.
//! - [`display`]: how digests, durations, instants and errors read to people.
//! - [`secret`]: making random tokens; comparing presented secrets (digests, constant time).
//! - [`retry`]: backoff with jitter (pure), for registries and notifications.
//! - [`tls`]: outgoing HTTP clients and the roots their TLS trusts.
//! - [`config`]: `greenlight.toml` -> validated, typed configuration.
//! - [`store`]: SQLite state: deployments with their steps and plan, what is live.
//! - [`registry`]: resolving a tag to a digest at the registry.
//! - [`webhook`]: pure: signature checks and one parser per source -> `PushEvent`.
//! - [`docker`]: the Docker Engine API (bollard): the calls the runtime and
//!   nginx control share.
//! - [`runtime`]: replicas in the deployment's terms; a closed enum of engines.
//! - [`proxy`]: nginx: render a routing, test, reload, verify, drain.
//! - [`traffic`]: what nginx's access log says about each backend.
//! - [`canary`]: a canary's analysis, pure: checks, verdicts, decisions.
//! - [`notify`]: deployment notifications by email and Slack, off the deploy path.
//! - [`deploy`]: per-service queues, strategies as plans, the driver that walks them.
//! - [`ledger`]: the delivery ledger and its one writer (intake runs there).
//! - [`telemetry`]: logging, with untrusted fields escaped and colour only on a terminal.
//! - [`metrics`]: Prometheus text derived from the store at scrape time.
//! - [`http`]: the actix-web server: hooks, admin API, status page, `/metrics`.
//! - [`check`]: `greenlight check`: every prerequisite, with how to fix it.
//! - [`init`]: `greenlight init`: a starter config and nginx snippet for this machine.
//! - [`import`]: `greenlight import-compose`: compose services -> `[[service]]` entries.
//! - [`app`]: wires the real parts together and runs them.
//! - [`cli`]: the `greenlight` command line; client commands call the admin API.

pub mod app;
pub mod canary;
pub mod check;
pub mod cli;
pub mod config;
pub mod deploy;
pub mod display;
pub mod docker;
pub mod domain;
pub mod http;
pub mod import;
pub mod init;
pub mod ledger;
pub mod metrics;
pub mod notify;
pub mod proxy;
pub mod registry;
pub mod retry;
pub mod runtime;
pub mod secret;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod traffic;
pub mod webhook;
