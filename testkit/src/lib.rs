//! Real-part test harness for greenlight.
//!
//! Layout:
//! - `probe`: open-model constant-rate HTTP load probe (counts failures, latency, versions seen).
//! - `env`: starting real parts for a test: the demo images, a Distribution registry, nginx
//!   (host process or container), each isolated per test and cleaned up on drop.
//! - `fault`: a TCP proxy that passes, refuses (503, reset) or stalls, in front of a real server.
//! - `greenlight`: a real `greenlight serve` process from a given binary, stopped on drop.
//! - `swarm`: the engine as a Swarm manager for a test, left as it was found.

pub mod env;
pub mod fault;
pub mod greenlight;
pub mod probe;
pub mod swarm;

use std::sync::Once;

/// A client builder for tests and benchmarks (plain HTTP to loopback).
/// greenlight builds reqwest without a TLS provider of its own (its
/// `src/tls.rs` hands each client a configuration), so a client built any
/// other way needs a process default: ring, installed once here.
pub fn http_builder() -> reqwest::ClientBuilder {
    static PROVIDER: Once = Once::new();
    PROVIDER.call_once(|| {
        // Err only when another provider was installed first, which serves as well.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
    reqwest::Client::builder()
}

/// A default client for tests and benchmarks; see [`http_builder`].
pub fn http() -> reqwest::Client {
    http_builder()
        .build()
        .expect("an HTTP client with ring's TLS")
}
