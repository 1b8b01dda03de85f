//! Property tests of every parser of untrusted bytes in greenlight: each
//! webhook source, the signature and token checks, the config loader, the
//! registry's authentication challenge and image references.
//!
//! A [`Target`] is a generator of hostile inputs (random bytes, mutations of
//! the real payloads in `tests/fixtures/webhooks`, and JSON built from the
//! keys the parsers read, with control characters, path segments, odd
//! Unicode and huge numbers in its strings) and a check that must hold for
//! every input: no panic, no hang (each case is timed), and no accepted
//! forgery. `tests/properties.rs` runs each target a few thousand times in
//! CI; `cargo run --release -p greenlight-fuzz -- --cases 1000000` is the long
//! run (BENCHMARKS.md).

use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};

mod targets;

pub use targets::all;

/// One parser under test.
pub struct Target {
    pub name: &'static str,
    run: fn(&mut TestRunner, &mut Stats) -> Result<(), String>,
}

/// What a run measured.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub cases: u64,
    pub slowest: Duration,
}

impl Stats {
    fn time<T>(&mut self, f: impl FnOnce() -> T) -> T {
        let started = Instant::now();
        let out = f();
        self.slowest = self.slowest.max(started.elapsed());
        self.cases += 1;
        out
    }
}

/// Longest one case may take before it counts as a hang.
pub const HANG: Duration = Duration::from_secs(1);

impl Target {
    /// Runs `cases` cases (seeded: a run is reproducible); a failure is the
    /// smallest input proptest shrinks it to, with what went wrong.
    pub fn run(&self, cases: u32, seed: u64) -> Result<Stats, String> {
        let config = Config {
            cases,
            failure_persistence: None,
            max_shrink_iters: 2_000,
            ..Config::default()
        };
        let mut seed_bytes = [0u8; 32];
        seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
        let mut runner = TestRunner::new_with_rng(
            config,
            TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes),
        );
        let mut stats = Stats::default();
        (self.run)(&mut runner, &mut stats)?;
        if stats.slowest > HANG {
            return Err(format!("a case took {:?} (a hang)", stats.slowest));
        }
        Ok(stats)
    }
}

/// Runs `check` on every input of `strategy`, timing each.
fn drive<S: Strategy>(
    runner: &mut TestRunner,
    stats: &mut Stats,
    strategy: S,
    check: impl Fn(S::Value) -> Result<(), String>,
) -> Result<(), String> {
    let stats = std::cell::RefCell::new(stats);
    runner
        .run(&strategy, |input| {
            stats
                .borrow_mut()
                .time(|| check(input))
                .map_err(TestCaseError::fail)
        })
        .map_err(|e| e.to_string())
}
