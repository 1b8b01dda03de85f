//! Real-part test harness for greenlight.
//!
//! Layout:
//! - `probe`: open-model constant-rate HTTP load probe (counts failures, latency, versions seen).
//! - `env`: starting real parts for a test: the demo images, a Distribution registry, nginx
//!   (host process or container), each isolated per test and cleaned up on drop.
//! - `fault`: a TCP proxy that passes, refuses (503, reset) or stalls, in front of a real server.
//! - `greenlight`: a real `greenlight serve` process from a given binary, stopped on drop.

pub mod env;
pub mod fault;
pub mod greenlight;
pub mod probe;
