//! A canary's analysis, pure: what nginx's access log says about the canary
//! and the stable version over the same window, the verdict of each check,
//! and what a step does next. The deployment's canary step
//! (`deploy/canary.rs`) feeds it requests and acts on its decisions.
//!
//! The rules (`[service.canary]`):
//! - errors are 5xx the app answered; a peer nginx could not reach is counted
//!   apart (not the app's answer), so are 499s (the client gave up), and 4xx
//!   are not errors;
//! - a check fails when the canary's error rate exceeds stable's by more than
//!   `error_margin` and a one-sided Fisher exact test says so with
//!   p < `alpha`, with at least `min_errors` canary errors; or when the
//!   canary's p95 latency exceeds max(`latency_ratio` x stable's p95, stable's
//!   p95 + `latency_slack`), or its p99 exceeds `p99_limit` (each with at
//!   least [`LATENCY_FLOOR`] answers on each side);
//! - a flagrant failure (at least `flagrant_errors` canary errors that are at
//!   least `flagrant_rate` of its requests within `flagrant_window`) aborts at
//!   once; stable failing the same way pauses instead: not the canary's fault;
//! - fewer than `min_requests` canary requests is inconclusive: the bake is
//!   extended up to `max_extension`, then `inconclusive` decides. A step never
//!   passes without evidence.

use std::collections::VecDeque;

use serde::Serialize;

use crate::config::{CanaryConfig, Inconclusive};
use crate::traffic::{self, Outcome, Request, Tally};

/// Fewest answers on each side before latency percentiles are compared.
pub const LATENCY_FLOOR: usize = 20;

/// Upper bounds (ms) of the latency histogram `/metrics` shows per variant.
pub const LATENCY_BUCKETS_MS: [f64; 11] = [
    5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
];

/// A variant's running totals over a whole deployment, for `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Totals {
    /// Requests the app answered, and of those 5xx.
    pub requests: u64,
    pub errors: u64,
    /// Answers per latency bucket (not cumulative; the last is above the
    /// largest bound).
    pub buckets: [u64; LATENCY_BUCKETS_MS.len() + 1],
    pub sum_ms: f64,
}

impl Totals {
    pub fn add(&mut self, r: &Request) {
        if !matches!(r.outcome, Outcome::Answered | Outcome::ServerError) {
            return;
        }
        self.requests += 1;
        self.errors += u64::from(r.outcome == Outcome::ServerError);
        if let Some(ms) = r.response_ms {
            let i = LATENCY_BUCKETS_MS
                .iter()
                .position(|b| ms <= *b)
                .unwrap_or(LATENCY_BUCKETS_MS.len());
            self.buckets[i] += 1;
            self.sum_ms += ms;
        }
    }
}

/// Which group of backends answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Variant {
    Stable,
    Canary,
}

/// What one variant did over a window.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// Requests the app answered (errors included).
    pub requests: u64,
    /// Of those, 5xx.
    pub errors: u64,
    /// Attempts nginx could not connect.
    pub unreachable: u64,
    /// Requests the client gave up on (499).
    pub client_closed: u64,
    /// Response times of the answers, ms.
    pub latencies: Vec<f64>,
}

impl Stats {
    pub fn add(&mut self, r: &Request) {
        match r.outcome {
            Outcome::Answered => self.requests += 1,
            Outcome::ServerError => {
                self.requests += 1;
                self.errors += 1;
            }
            Outcome::Unreachable => self.unreachable += 1,
            Outcome::ClientClosed => self.client_closed += 1,
        }
        if matches!(r.outcome, Outcome::Answered | Outcome::ServerError) {
            if let Some(ms) = r.response_ms {
                self.latencies.push(ms);
            }
        }
    }

    pub fn error_rate(&self) -> f64 {
        self.tally().error_rate()
    }

    fn tally(&self) -> Tally {
        Tally {
            requests: self.requests,
            errors: self.errors,
            unreachable: self.unreachable,
            client_closed: self.client_closed,
        }
    }

    /// The `q` quantile (0-1, nearest rank) of the latencies, ms.
    pub fn percentile(&self, q: f64) -> Option<f64> {
        if self.latencies.is_empty() {
            return None;
        }
        let mut sorted = self.latencies.clone();
        sorted.sort_by(f64::total_cmp);
        let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        Some(sorted[rank - 1])
    }

    pub fn summary(&self) -> Summary {
        Summary {
            requests: self.requests,
            errors: self.errors,
            unreachable: self.unreachable,
            client_closed: self.client_closed,
            error_rate: self.error_rate(),
            p50_ms: self.percentile(0.50),
            p95_ms: self.percentile(0.95),
            p99_ms: self.percentile(0.99),
        }
    }
}

/// A variant's figures, as people and the API see them.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Summary {
    pub requests: u64,
    pub errors: u64,
    pub unreachable: u64,
    pub client_closed: u64,
    pub error_rate: f64,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

impl Summary {
    /// `12/400 5xx (3.0%), p50 4 ms, p95 9 ms, p99 12 ms`
    pub fn text(&self) -> String {
        let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0} ms"));
        let mut out = format!(
            "{}/{} 5xx ({:.1}%), p50 {}, p95 {}, p99 {}",
            self.errors,
            self.requests,
            100.0 * self.error_rate,
            ms(self.p50_ms),
            ms(self.p95_ms),
            ms(self.p99_ms)
        );
        if self.unreachable > 0 {
            out.push_str(&format!(", {} unreachable", self.unreachable));
        }
        if self.client_closed > 0 {
            out.push_str(&format!(", {} gave up (499)", self.client_closed));
        }
        out
    }
}

/// The verdict of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Enough evidence, and no rule failed.
    Pass,
    /// A rule failed (errors or latency).
    Fail,
    /// So bad that waiting for more checks would only hurt more users.
    Flagrant,
    /// Stable fails too: not the canary's fault.
    StableFailing,
    /// Too few canary requests to say.
    Inconclusive,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Fail => "fail",
            Verdict::Flagrant => "flagrant",
            Verdict::StableFailing => "stable_failing",
            Verdict::Inconclusive => "inconclusive",
        }
    }
}

/// One check: both variants over the step so far, and what it found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Check {
    /// Unix ms.
    pub at_ms: i64,
    pub stage: u32,
    pub percent: u32,
    pub verdict: Verdict,
    /// Why, in words (each rule that failed, or why nothing could be said).
    pub reasons: Vec<String>,
    /// The one-sided Fisher exact p-value of the error counts, when tested.
    pub p_value: Option<f64>,
    pub canary: Summary,
    pub stable: Summary,
}

impl Check {
    /// One line with the evidence, for notes and notifications.
    pub fn text(&self) -> String {
        format!(
            "step {} ({}%): {}{}; canary {}; stable {}{}",
            self.stage,
            self.percent,
            self.verdict.as_str(),
            if self.reasons.is_empty() {
                String::new()
            } else {
                format!(" ({})", self.reasons.join("; "))
            },
            self.canary.text(),
            self.stable.text(),
            self.p_value
                .map(|p| format!("; one-sided Fisher exact p = {p:.2e}"))
                .unwrap_or_default()
        )
    }
}

/// The requests of one canary step, by variant, and the recent ones for the
/// flagrant rule.
#[derive(Debug, Default)]
pub struct Window {
    pub canary: Stats,
    pub stable: Stats,
    /// (Unix ms, variant, a 5xx?) of answered requests within the flagrant window.
    recent: VecDeque<(i64, Variant, bool)>,
}

impl Window {
    pub fn add(&mut self, variant: Variant, r: &Request) {
        match variant {
            Variant::Canary => self.canary.add(r),
            Variant::Stable => self.stable.add(r),
        }
        if matches!(r.outcome, Outcome::Answered | Outcome::ServerError) {
            self.recent
                .push_back((r.at_ms, variant, r.outcome == Outcome::ServerError));
        }
    }

    /// (requests, errors) of `variant` within `window_ms` before `now_ms`.
    fn recent(&mut self, variant: Variant, now_ms: i64, window_ms: i64) -> (u64, u64) {
        while self
            .recent
            .front()
            .is_some_and(|(at, _, _)| *at < now_ms - window_ms)
        {
            self.recent.pop_front();
        }
        self.recent
            .iter()
            .filter(|(_, v, _)| *v == variant)
            .fold((0, 0), |(n, e), (_, _, err)| (n + 1, e + u64::from(*err)))
    }

    /// Judges the step so far at `now_ms`.
    pub fn check(&mut self, cfg: &CanaryConfig, now_ms: i64, stage: u32, percent: u32) -> Check {
        let window_ms = cfg.flagrant_window.as_millis() as i64;
        let flagrant = |(n, e): (u64, u64)| {
            e >= cfg.flagrant_errors && e as f64 >= cfg.flagrant_rate * n as f64
        };
        let canary_recent = self.recent(Variant::Canary, now_ms, window_ms);
        let stable_recent = self.recent(Variant::Stable, now_ms, window_ms);
        let (c, s) = (&self.canary, &self.stable);
        let mut reasons = Vec::new();
        let mut p_value = None;
        let stable_failing = flagrant(stable_recent)
            || (s.errors >= cfg.flagrant_errors && s.error_rate() >= cfg.flagrant_rate);
        let verdict = if stable_failing {
            reasons.push(format!(
                "stable fails too: {} of its {} requests answered 5xx ({:.1}%); not the canary's fault",
                s.errors,
                s.requests,
                100.0 * s.error_rate()
            ));
            Verdict::StableFailing
        } else if flagrant(canary_recent) {
            reasons.push(format!(
                "flagrant: {} of the canary's {} requests in the last {} answered 5xx",
                canary_recent.1,
                canary_recent.0,
                crate::display::span(cfg.flagrant_window)
            ));
            Verdict::Flagrant
        } else {
            if c.errors >= cfg.min_errors && c.error_rate() > s.error_rate() + cfg.error_margin {
                let alpha = cfg.alpha;
                if let Some(p) = traffic::clearly_worse(&c.tally(), &s.tally(), cfg.min_errors, 1.0)
                {
                    p_value = Some(p);
                    if p < alpha {
                        reasons.push(format!(
                            "error rate {:.1}% against stable's {:.1}% (margin {:.1} points; one-sided Fisher exact p = {p:.2e} < {alpha})",
                            100.0 * c.error_rate(),
                            100.0 * s.error_rate(),
                            100.0 * cfg.error_margin
                        ));
                    }
                }
            }
            if c.latencies.len() >= LATENCY_FLOOR && s.latencies.len() >= LATENCY_FLOOR {
                let (cp95, sp95) = (c.percentile(0.95), s.percentile(0.95));
                if let (Some(cp95), Some(sp95)) = (cp95, sp95) {
                    let limit = (cfg.latency_ratio * sp95)
                        .max(sp95 + cfg.latency_slack.as_secs_f64() * 1000.0);
                    if cp95 > limit {
                        reasons.push(format!(
                            "p95 latency {cp95:.0} ms above max({}x stable's {sp95:.0} ms, stable + {} ms) = {limit:.0} ms",
                            cfg.latency_ratio,
                            cfg.latency_slack.as_millis()
                        ));
                    }
                }
            }
            if c.latencies.len() >= LATENCY_FLOOR {
                let limit = cfg.p99_limit.as_secs_f64() * 1000.0;
                if let Some(p99) = c.percentile(0.99).filter(|p| *p > limit) {
                    reasons.push(format!(
                        "p99 latency {p99:.0} ms above the limit of {limit:.0} ms"
                    ));
                }
            }
            if !reasons.is_empty() {
                Verdict::Fail
            } else if c.requests < cfg.min_requests {
                reasons.push(format!(
                    "{} canary requests so far, {} needed",
                    c.requests, cfg.min_requests
                ));
                Verdict::Inconclusive
            } else {
                Verdict::Pass
            }
        };
        Check {
            at_ms: now_ms,
            stage,
            percent,
            verdict,
            reasons,
            p_value,
            canary: c.summary(),
            stable: s.summary(),
        }
    }
}

/// What a canary step does after a check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Keep baking (`extended`: past `bake`, waiting for evidence).
    Continue { extended: bool },
    /// The step passed: on to the next (or to promotion).
    Pass,
    /// Take the canary out, with the reason.
    Abort(String),
    /// Hold the split and wait for an operator, with the reason.
    Pause(String),
    /// Promote without the evidence (`inconclusive = "promote"`), with the reason.
    Promote(String),
}

/// The state of one step across its checks.
#[derive(Debug, Default)]
pub struct Step {
    /// Failed checks in a row.
    pub failed_in_a_row: u32,
}

impl Step {
    /// The decision after `check`, `elapsed_ms` into the step.
    pub fn decide(&mut self, cfg: &CanaryConfig, check: &Check, elapsed_ms: u64) -> Decision {
        let bake = cfg.bake.as_millis() as u64;
        let limit = bake + cfg.max_extension.as_millis() as u64;
        let why = || check.reasons.join("; ");
        if check.verdict == Verdict::Fail {
            self.failed_in_a_row += 1;
        } else {
            self.failed_in_a_row = 0;
        }
        match check.verdict {
            Verdict::Flagrant => Decision::Abort(why()),
            Verdict::StableFailing => Decision::Pause(why()),
            Verdict::Fail if self.failed_in_a_row >= cfg.failed_checks => Decision::Abort(format!(
                "{} checks in a row failed: {}",
                self.failed_in_a_row,
                why()
            )),
            Verdict::Fail if elapsed_ms >= limit => Decision::Abort(format!(
                "still failing when the extended bake ended: {}",
                why()
            )),
            Verdict::Pass if elapsed_ms >= bake => Decision::Pass,
            Verdict::Inconclusive if elapsed_ms >= limit => {
                let reason = format!(
                    "inconclusive after {} (bake and its extension): {}",
                    crate::display::span(std::time::Duration::from_secs(elapsed_ms / 1000)),
                    why()
                );
                match cfg.inconclusive {
                    Inconclusive::Pause => Decision::Pause(reason),
                    Inconclusive::Promote => Decision::Promote(reason),
                    Inconclusive::Abort => Decision::Abort(reason),
                }
            }
            _ => Decision::Continue {
                extended: elapsed_ms >= bake,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn cfg() -> CanaryConfig {
        CanaryConfig {
            bake: Duration::from_secs(10),
            max_extension: Duration::from_secs(10),
            interval: Duration::from_secs(1),
            min_requests: 100,
            ..CanaryConfig::default()
        }
    }

    fn req(at_ms: i64, outcome: Outcome, ms: f64) -> Request {
        Request {
            at_ms,
            peer: "10.0.0.1:80".into(),
            unreachable: Vec::new(),
            outcome,
            response_ms: Some(ms),
        }
    }

    /// A window with `n` requests per variant, every `every`-th canary one a
    /// 5xx (0: none), the canary's latency `canary_ms`, stable's 10 ms.
    fn window(n: usize, every: usize, canary_ms: f64, stable_errors_every: usize) -> Window {
        let mut w = Window::default();
        for i in 0..n {
            let at = i as i64 * 100;
            let bad = every > 0 && i % every == 0;
            let outcome = if bad {
                Outcome::ServerError
            } else {
                Outcome::Answered
            };
            w.add(Variant::Canary, &req(at, outcome, canary_ms));
            let bad = stable_errors_every > 0 && i % stable_errors_every == 0;
            let outcome = if bad {
                Outcome::ServerError
            } else {
                Outcome::Answered
            };
            for _ in 0..10 {
                w.add(Variant::Stable, &req(at, outcome, 10.0));
            }
        }
        w
    }

    #[test]
    fn totals_count_answers_and_bucket_their_latency() {
        let mut t = Totals::default();
        t.add(&req(0, Outcome::Answered, 3.0));
        t.add(&req(0, Outcome::ServerError, 30.0));
        t.add(&req(0, Outcome::ClientClosed, 30.0));
        t.add(&req(0, Outcome::Answered, 20_000.0));
        assert_eq!((t.requests, t.errors), (3, 1));
        assert_eq!(t.buckets[0], 1);
        assert_eq!(t.buckets[3], 1);
        assert_eq!(t.buckets[LATENCY_BUCKETS_MS.len()], 1);
        assert_eq!(t.sum_ms, 20_033.0);
    }

    #[test]
    fn a_canary_as_good_as_stable_passes_once_it_has_enough_requests() {
        let c = cfg();
        let check = window(50, 0, 11.0, 0).check(&c, 5_000, 1, 5);
        assert_eq!(check.verdict, Verdict::Inconclusive, "{check:?}");
        let check = window(200, 0, 11.0, 0).check(&c, 20_000, 1, 5);
        assert_eq!(check.verdict, Verdict::Pass, "{}", check.text());
        assert_eq!(check.canary.requests, 200);
        assert_eq!(check.stable.requests, 2000);
        assert_eq!(check.canary.p95_ms, Some(11.0));
    }

    #[test]
    fn five_percent_errors_fail_on_the_fisher_test_and_stable_errors_excuse_them() {
        let c = cfg();
        // 10 of 200 against 0 of 2000 (spread: not flagrant in one minute).
        let mut w = window(200, 20, 10.0, 0);
        let check = w.check(&c, 1_000_000, 1, 5);
        assert_eq!(check.verdict, Verdict::Fail, "{}", check.text());
        assert!(check.p_value.unwrap() < 0.01);
        assert!(check.text().contains("Fisher"), "{}", check.text());
        // The same rate on stable: no test failure.
        let mut w = window(200, 20, 10.0, 20);
        let check = w.check(&c, 1_000_000, 1, 5);
        assert_eq!(check.verdict, Verdict::Pass, "{}", check.text());
        // A rate within the margin is not a failure however significant.
        let c2 = CanaryConfig {
            error_margin: 0.10,
            ..cfg()
        };
        let check = window(200, 20, 10.0, 0).check(&c2, 1_000_000, 1, 5);
        assert_eq!(check.verdict, Verdict::Pass, "{}", check.text());
    }

    #[test]
    fn many_errors_within_the_window_are_flagrant_and_stable_failing_pauses() {
        let c = cfg();
        // Every 5th canary request in the last 20 s: 20%.
        let mut w = window(200, 5, 10.0, 0);
        let check = w.check(&c, 20_000, 1, 5);
        assert_eq!(check.verdict, Verdict::Flagrant, "{}", check.text());
        let mut w = window(200, 5, 10.0, 5);
        let check = w.check(&c, 20_000, 1, 5);
        assert_eq!(check.verdict, Verdict::StableFailing, "{}", check.text());
        assert!(check.reasons[0].contains("not the canary's fault"));
    }

    #[test]
    fn latency_fails_on_p95_relative_to_stable_and_on_p99_absolute() {
        let c = cfg();
        // +200 ms: far above max(1.2 x 10, 10 + 25).
        let check = window(200, 0, 210.0, 0).check(&c, 20_000, 1, 5);
        assert_eq!(check.verdict, Verdict::Fail, "{}", check.text());
        assert!(check.reasons[0].contains("p95"), "{}", check.text());
        // +20 ms: within stable + 25 ms.
        let check = window(200, 0, 30.0, 0).check(&c, 20_000, 1, 5);
        assert_eq!(check.verdict, Verdict::Pass, "{}", check.text());
        // Slow, but stable is as slow: p99 over the absolute limit still fails.
        let c2 = CanaryConfig {
            p99_limit: Duration::from_millis(100),
            ..cfg()
        };
        let check = window(200, 0, 150.0, 0).check(&c2, 20_000, 1, 5);
        assert!(check.reasons.iter().any(|r| r.contains("p99")), "{check:?}");
        // Too few answers to compare percentiles: nothing said on latency.
        let check = window(10, 0, 500.0, 0).check(&c, 20_000, 1, 5);
        assert_eq!(check.verdict, Verdict::Inconclusive, "{}", check.text());
    }

    fn check(verdict: Verdict) -> Check {
        Check {
            at_ms: 0,
            stage: 1,
            percent: 5,
            verdict,
            reasons: vec!["why".into()],
            p_value: None,
            canary: Summary::default(),
            stable: Summary::default(),
        }
    }

    #[test]
    fn a_step_aborts_after_consecutive_failures_and_never_passes_without_evidence() {
        let c = cfg();
        let mut s = Step::default();
        assert_eq!(
            s.decide(&c, &check(Verdict::Fail), 1_000),
            Decision::Continue { extended: false }
        );
        // A pass in between starts the count again.
        assert_eq!(
            s.decide(&c, &check(Verdict::Pass), 2_000),
            Decision::Continue { extended: false }
        );
        s.decide(&c, &check(Verdict::Fail), 3_000);
        s.decide(&c, &check(Verdict::Fail), 4_000);
        assert!(matches!(
            s.decide(&c, &check(Verdict::Fail), 5_000),
            Decision::Abort(r) if r.starts_with("3 checks in a row failed")
        ));
        let mut s = Step::default();
        assert!(matches!(
            s.decide(&c, &check(Verdict::Flagrant), 100),
            Decision::Abort(_)
        ));
        assert!(matches!(
            s.decide(&c, &check(Verdict::StableFailing), 100),
            Decision::Pause(_)
        ));
        assert_eq!(s.decide(&c, &check(Verdict::Pass), 10_000), Decision::Pass);
        // Inconclusive: extended past the bake, then the configured action.
        assert_eq!(
            s.decide(&c, &check(Verdict::Inconclusive), 12_000),
            Decision::Continue { extended: true }
        );
        assert!(matches!(
            s.decide(&c, &check(Verdict::Inconclusive), 20_000),
            Decision::Pause(r) if r.starts_with("inconclusive after 20s")
        ));
        for (action, abort) in [(Inconclusive::Abort, true), (Inconclusive::Promote, false)] {
            let c = CanaryConfig {
                inconclusive: action,
                ..cfg()
            };
            let d = Step::default().decide(&c, &check(Verdict::Inconclusive), 20_000);
            assert_eq!(matches!(d, Decision::Abort(_)), abort, "{d:?}");
            assert_eq!(matches!(d, Decision::Promote(_)), !abort, "{d:?}");
        }
    }
}
