//! A canary step, driven: route the step's share of users to the new
//! replicas (one reload, both groups proven through nginx), then every
//! `interval` read the access log, judge canary against stable over the step
//! so far (`crate::canary`), and pass, abort, promote or pause as it decides;
//! meanwhile the canary replicas are probed and watched in Docker (unhealthy
//! or restarting aborts at once). An operator can promote or abort at any
//! time (`greenlight canary promote|abort`); a paused canary waits for one.
//!
//! [`Canaries`] holds each running canary's status (for the API, the page
//! and `/metrics`) and the operator's commands.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Instant;

use futures_util::future::join_all;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::steps::{Run, Stop};
use crate::canary::{self, Check, Decision, Summary, Totals, Variant, Window};
use crate::display;
use crate::domain::deployment::FailureKind;
use crate::domain::routing::{Backend, Role, Split};
use crate::runtime::Replica;
use crate::store::{now_ms, Failure};
use crate::traffic::AccessLog;

/// What an operator asks of a running canary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Command {
    /// Skip the remaining steps: switch everyone to the new version now.
    Promote,
    /// Take the canary out now.
    Abort,
}

/// Where a canary stands, for the API, the page and `/metrics`.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub service: String,
    pub deployment: i64,
    pub digest: String,
    /// The step (from 1) and how many there are.
    pub stage: u32,
    pub stages: u32,
    /// The canary's share of users now, percent.
    pub percent: u32,
    /// `baking`, `extended` (waiting for enough traffic), `paused` (waiting
    /// for an operator), `promoting` or `aborting`.
    pub state: &'static str,
    /// Why it is paused, promoting or aborting.
    pub reason: Option<String>,
    /// Unix ms: the step began; its bake ends; its extension ends.
    pub step_started_ms: i64,
    pub bake_ends_ms: i64,
    pub extension_ends_ms: i64,
    /// The step so far, per variant.
    pub canary: Summary,
    pub stable: Summary,
    /// Every check of the deployment so far, oldest first.
    pub checks: Vec<Check>,
    /// Each variant over the whole deployment so far (for `/metrics`).
    pub canary_totals: Totals,
    pub stable_totals: Totals,
}

struct Entry {
    status: Status,
    commands: watch::Sender<Option<Command>>,
}

/// The running canaries, by service.
#[derive(Default)]
pub struct Canaries(Mutex<HashMap<String, Entry>>);

impl Canaries {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn status(&self, service: &str) -> Option<Status> {
        self.map().get(service).map(|e| e.status.clone())
    }

    pub fn all(&self) -> Vec<Status> {
        let mut out: Vec<Status> = self.map().values().map(|e| e.status.clone()).collect();
        out.sort_by(|a, b| a.service.cmp(&b.service));
        out
    }

    /// Hands `command` to the service's canary; returns its deployment, or
    /// why it cannot be taken.
    pub fn command(&self, service: &str, command: Command) -> Result<i64, String> {
        let map = self.map();
        let Some(entry) = map.get(service) else {
            return Err(format!("{service} has no canary running"));
        };
        if matches!(entry.status.state, "promoting" | "aborting") {
            return Err(format!(
                "the canary of {service} is already {} ({})",
                entry.status.state,
                entry.status.reason.as_deref().unwrap_or("-")
            ));
        }
        entry.commands.send_replace(Some(command));
        Ok(entry.status.deployment)
    }

    /// A step begins: its status, and the receiver of commands (one that
    /// came between steps is kept).
    fn open(&self, status: Status) -> watch::Receiver<Option<Command>> {
        let mut map = self.map();
        match map.get_mut(&status.service) {
            Some(e) if e.status.deployment == status.deployment => {
                let old = std::mem::replace(&mut e.status, status);
                e.status.checks = old.checks;
                e.status.canary_totals = old.canary_totals;
                e.status.stable_totals = old.stable_totals;
                e.commands.subscribe()
            }
            _ => {
                let (tx, rx) = watch::channel(None);
                map.insert(
                    status.service.clone(),
                    Entry {
                        status,
                        commands: tx,
                    },
                );
                rx
            }
        }
    }

    fn update(&self, service: &str, f: impl FnOnce(&mut Status)) {
        if let Some(e) = self.map().get_mut(service) {
            f(&mut e.status);
        }
    }

    /// The deployment ended.
    pub fn close(&self, service: &str, deployment: i64) {
        let mut map = self.map();
        if map
            .get(service)
            .is_some_and(|e| e.status.deployment == deployment)
        {
            map.remove(service);
        }
    }
}

/// How a step's bake ended.
enum Baked {
    Passed,
    Promote(String),
    Abort(FailureKind, String),
}

impl Run<'_> {
    /// Canary step `stage`: `percent`% of users to the new replicas, then bake.
    pub(super) async fn canary(&mut self, stage: u32, percent: u32) -> Result<(), Stop> {
        if let Some(why) = &self.canary_promoted {
            self.note(&format!("skipped: {why}"));
            return Ok(());
        }
        let Some(path) = self.inner.config.get().nginx.access_log.clone() else {
            return Err(Stop::Fail(Failure::new(
                FailureKind::Invalid,
                "a canary is judged from nginx's access log: set [nginx] access_log",
            )));
        };
        let cfg = &self.service.canary;
        // The new replicas: those routed already (an earlier step, or the run
        // this one resumes) and those this deployment started.
        let mut canary: Vec<Backend> = self
            .routing
            .backends
            .iter()
            .filter(|b| b.digest == self.digest)
            .map(|b| Backend {
                role: Role::New,
                ..b.clone()
            })
            .collect();
        let started: Vec<Replica> = self
            .started
            .values()
            .filter(|r| self.routing.backend(&r.name).is_none())
            .cloned()
            .collect();
        for r in &started {
            canary.push(self.new_backend(r));
        }
        let stable: Vec<Backend> = self
            .routing
            .backends
            .iter()
            .filter(|b| b.digest != self.digest)
            .map(|b| Backend {
                role: Role::Stable,
                ..b.clone()
            })
            .collect();
        if canary.is_empty() || stable.is_empty() {
            return Err(Stop::Fail(Failure::new(
                FailureKind::Invalid,
                format!(
                    "a canary needs both versions routed: {} new and {} stable replicas",
                    canary.len(),
                    stable.len()
                ),
            )));
        }
        // The same cohort across the steps (and a resumed run): a new salt
        // only for a new canary.
        let ours = self.routing.split.clone().filter(|_| {
            self.routing
                .backends
                .iter()
                .any(|b| b.digest == self.digest)
        });
        let salt = match &ours {
            Some(s) => s.salt.clone(),
            None => format!(
                "d{}{}",
                self.deployment.id,
                &crate::secret::random_token()[..8]
            ),
        };
        // What nginx logs from here on was routed by this step's split, or by
        // the previous one's until the reload: both count for the same groups.
        // A run resuming this very step reads from where the step began: what
        // nginx logged by the recorded split while greenlight was down counts.
        let resumed = ours.filter(|s| s.percent == percent).and_then(|s| s.log);
        let opened = match resumed {
            Some((inode, offset)) => AccessLog::resume(&path, inode, offset),
            None => AccessLog::from_end(&path),
        };
        let mut log = match opened {
            Ok(log) => log,
            Err(e) => {
                return Err(Stop::Fail(Failure::new(
                    FailureKind::Proxy,
                    format!("cannot read nginx.access_log {}: {e}", path.display()),
                )))
            }
        };
        if resumed.is_some_and(|r| r == log.position()) {
            self.note("resumed: the access log is read from where this step began");
        }
        let split = Split {
            percent,
            salt,
            override_cookie: cfg.override_cookie.clone(),
            allow_cookie: cfg.allow_cookie.clone(),
            allow_header: cfg.allow_header.clone(),
            log: Some(log.position()),
        };
        let mut backends = stable.clone();
        backends.extend(canary.iter().cloned());
        self.route_split(backends, split).await?;
        let all: Vec<usize> = (0..self.routing.backends.len()).collect();
        let took = self
            .inner
            .nginx
            .verify(&self.routing, &all, &self.service.health.path)
            .await
            .map_err(|e| Stop::Fail(Failure::new(FailureKind::Proxy, e.to_string())))?;
        self.note(&format!(
            "{percent}% of users to {} (render {}); both groups proved through nginx in {}",
            canary
                .iter()
                .map(|b| b.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            self.routing.generation,
            display::duration(took.as_millis() as i64)
        ));
        let baked = self.bake(stage, percent, &mut log, &canary, &stable).await;
        match baked {
            Baked::Passed => Ok(()),
            Baked::Promote(why) => {
                self.note(&format!("promoting: {why}"));
                self.canary_promoted = Some(why);
                Ok(())
            }
            Baked::Abort(kind, why) => Err(Stop::Fail(Failure::new(kind, why))),
        }
    }

    /// Watches one step until it passes, or is aborted, promoted or paused
    /// (then waits for an operator).
    async fn bake(
        &self,
        stage: u32,
        percent: u32,
        log: &mut AccessLog,
        canary: &[Backend],
        stable: &[Backend],
    ) -> Baked {
        let cfg = &self.service.canary;
        let service = &self.service.name;
        let canaries = &self.inner.canaries;
        let started = Instant::now();
        let start_ms = now_ms();
        let bake_ms = cfg.bake.as_millis() as i64;
        let limit = cfg.bake + cfg.max_extension;
        let mut commands = canaries.open(Status {
            service: service.clone(),
            deployment: self.deployment.id,
            digest: self.digest.clone(),
            stage,
            stages: cfg.steps.len() as u32,
            percent,
            state: "baking",
            reason: None,
            step_started_ms: start_ms,
            bake_ends_ms: start_ms + bake_ms,
            extension_ends_ms: start_ms + limit.as_millis() as i64,
            canary: Summary::default(),
            stable: Summary::default(),
            checks: Vec::new(),
            canary_totals: Totals::default(),
            stable_totals: Totals::default(),
        });
        // A new replica that got an address an old one had cannot be told
        // apart in the log: neither side counts it.
        let canary_addrs: HashSet<&str> = canary.iter().map(|b| b.address.as_str()).collect();
        let stable_addrs: HashSet<&str> = stable.iter().map(|b| b.address.as_str()).collect();
        let variant = |addr: &str| match (canary_addrs.contains(addr), stable_addrs.contains(addr))
        {
            (true, false) => Some(Variant::Canary),
            (false, true) => Some(Variant::Stable),
            _ => None,
        };
        // The canary replicas' own health, all the while.
        let replicas: Vec<Replica> = match self.inner.runtime.replicas(self.service).await {
            Ok(all) => all
                .into_iter()
                .filter(|r| canary.iter().any(|b| b.id == r.id))
                .collect(),
            Err(e) => {
                warn!(error = %e, "cannot list the canary replicas to watch them");
                Vec::new()
            }
        };
        let stop = CancellationToken::new();
        let health = async {
            let this = self;
            let stop = &stop;
            let outcomes = join_all(replicas.iter().map(|r| async move {
                // Longer than any bake: the analysis ends the watch.
                let watched = this.health(r).soak("canary", limit * 100, stop).await;
                if watched.is_err() {
                    stop.cancel();
                }
                (r.name.clone(), watched)
            }))
            .await;
            for (name, outcome) in outcomes {
                if let Err(g) = outcome {
                    return Some(format!("canary replica {name}: {}", g.error));
                }
            }
            None
        };
        let analysis = async {
            let mut window = Window::default();
            let mut judge = canary::Step::default();
            let mut extended_noted = false;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(cfg.interval) => {}
                    _ = commands.changed() => {}
                    _ = stop.cancelled() => return Baked::Passed, // the health watch decides
                }
                if let Some(b) = self.operator(&mut commands) {
                    return b;
                }
                match log.requests() {
                    Ok(requests) => {
                        canaries.update(service, |s| {
                            for r in &requests {
                                match variant(&r.peer) {
                                    Some(Variant::Canary) => s.canary_totals.add(r),
                                    Some(Variant::Stable) => s.stable_totals.add(r),
                                    None => {}
                                }
                            }
                        });
                        for r in &requests {
                            for peer in &r.unreachable {
                                if let Some(v) = variant(peer) {
                                    let mut miss = r.clone();
                                    miss.outcome = crate::traffic::Outcome::Unreachable;
                                    miss.response_ms = None;
                                    window.add(v, &miss);
                                }
                            }
                            if let Some(v) = variant(&r.peer) {
                                window.add(v, r);
                            }
                        }
                    }
                    Err(e) => warn!(error = %e, "reading nginx.access_log"),
                }
                let check = window.check(cfg, now_ms(), stage, percent);
                let elapsed = started.elapsed().as_millis() as u64;
                let decision = judge.decide(cfg, &check, elapsed);
                info!(
                    verdict = check.verdict.as_str(),
                    "canary check: {}",
                    check.text()
                );
                if check.verdict != canary::Verdict::Inconclusive
                    || matches!(
                        decision,
                        Decision::Pause(_) | Decision::Abort(_) | Decision::Promote(_)
                    )
                {
                    self.note(&check.text());
                }
                canaries.update(service, |s| {
                    s.canary = check.canary.clone();
                    s.stable = check.stable.clone();
                    s.checks.push(check.clone());
                    if matches!(decision, Decision::Continue { extended: true }) {
                        s.state = "extended";
                    }
                });
                match decision {
                    Decision::Continue { extended } => {
                        if extended && !extended_noted {
                            extended_noted = true;
                            self.note(&format!(
                                "bake extended (up to {} more): {}",
                                display::span(cfg.max_extension),
                                check.reasons.join("; ")
                            ));
                        }
                    }
                    Decision::Pass => {
                        self.note(&format!("step {stage} passed: {}", check.text()));
                        return Baked::Passed;
                    }
                    Decision::Abort(why) => {
                        let kind = if check.reasons.iter().any(|r| r.contains("latency"))
                            && check.canary.errors == 0
                        {
                            FailureKind::Unhealthy
                        } else {
                            FailureKind::Errors
                        };
                        let why = format!(
                            "canary aborted at step {stage} ({percent}%): {why}; {}",
                            evidence(&check)
                        );
                        canaries.update(service, |s| {
                            s.state = "aborting";
                            s.reason = Some(why.clone());
                        });
                        return Baked::Abort(kind, why);
                    }
                    Decision::Promote(why) => {
                        let why = format!(
                            "promoted without evidence (canary.inconclusive = \"promote\"): {why}"
                        );
                        canaries.update(service, |s| {
                            s.state = "promoting";
                            s.reason = Some(why.clone());
                        });
                        return Baked::Promote(why);
                    }
                    Decision::Pause(why) => {
                        let why = format!(
                            "canary paused at step {stage} ({percent}%): {why}; {}; the split stays as it is until `greenlight canary promote|abort {service}`",
                            evidence(&check)
                        );
                        warn!("{why}");
                        self.note(&why);
                        canaries.update(service, |s| {
                            s.state = "paused";
                            s.reason = Some(why.clone());
                        });
                        self.inner.notifier.canary_paused(self.deployment.id, &why);
                        loop {
                            if commands.changed().await.is_err() {
                                return Baked::Abort(
                                    FailureKind::Operator,
                                    "the canary's control was lost".into(),
                                );
                            }
                            if let Some(b) = self.operator(&mut commands) {
                                return b;
                            }
                        }
                    }
                }
            }
        };
        let (unhealthy, baked) = tokio::join!(health, async {
            let baked = analysis.await;
            stop.cancel();
            baked
        });
        match unhealthy {
            Some(why) => {
                let why = format!("canary aborted at step {stage} ({percent}%): {why}");
                canaries.update(service, |s| {
                    s.state = "aborting";
                    s.reason = Some(why.clone());
                });
                Baked::Abort(FailureKind::Unhealthy, why)
            }
            None => baked,
        }
    }

    /// What an operator's command, if one came, makes of the step.
    fn operator(&self, commands: &mut watch::Receiver<Option<Command>>) -> Option<Baked> {
        let command = (*commands.borrow_and_update())?;
        let service = &self.service.name;
        let (state, baked) = match command {
            Command::Promote => (
                "promoting",
                Baked::Promote("an operator promoted the canary".into()),
            ),
            Command::Abort => (
                "aborting",
                Baked::Abort(
                    FailureKind::Operator,
                    "an operator aborted the canary".into(),
                ),
            ),
        };
        self.inner.canaries.update(service, |s| {
            s.state = state;
            s.reason = Some(match &baked {
                Baked::Promote(w) | Baked::Abort(_, w) => w.clone(),
                Baked::Passed => String::new(),
            });
        });
        Some(baked)
    }
}

/// The figures behind a decision, for the failure text and notifications.
fn evidence(check: &Check) -> String {
    format!(
        "canary {}; stable {}{}",
        check.canary.text(),
        check.stable.text(),
        check
            .p_value
            .map(|p| format!("; one-sided Fisher exact p = {p:.2e}"))
            .unwrap_or_default()
    )
}
