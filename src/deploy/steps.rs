//! What each step of a plan does, against the runtime and nginx, and what the
//! way back does. A [`Run`] is one deployment's context: its target, what
//! nginx routed to when it began and routes to now, and the replicas it
//! started and stopped.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Instant;

use futures_util::future::join_all;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::health::{bound_log, GateFailure, HealthGate, LOG_TAIL_LINES};
use super::strategy::{self, Plan, Shape};
use super::Inner;
use crate::config::ServiceConfig;
use crate::display::{self, short_digest};
#[cfg(test)]
use crate::domain::deployment::Colour;
use crate::domain::deployment::{FailureKind, State};
use crate::domain::plan::{Slot, Step, Strategy};
use crate::domain::routing::{Backend, Role, Routing};
use crate::registry::{self, Repository};
use crate::retry::{Policy, SendError};
use crate::runtime::{ErrorKind, Replica, ReplicaSpec, RuntimeError, TaskSpec};
use crate::store::{now_ms, Deployment, Failure, Live};
use crate::traffic::{self, AccessLog, Tally};

/// Pulls of one deployment when the image vanishes right after its pull.
const PULL_TRIES: u32 = 3;
/// Fewest server errors of new replicas that can fail a monitor on their rate.
const ERROR_FLOOR: u64 = 5;
/// The chance of failing a batch whose replicas are no worse than the old
/// ones, over one monitor window.
const FALSE_ALARM: f64 = 0.01;

/// How a step ended when it did not simply succeed.
pub(crate) enum Stop {
    /// Nothing (more) to do: the digest is already live.
    Done(State),
    Fail(Failure),
}

impl From<Failure> for Stop {
    fn from(f: Failure) -> Self {
        Stop::Fail(f)
    }
}

fn fail(kind: FailureKind, error: impl Into<String>) -> Stop {
    Stop::Fail(Failure::new(kind, error))
}

fn runtime_failure(e: RuntimeError) -> Stop {
    fail(FailureKind::Runtime, e.message)
}

fn gate_failure(g: GateFailure, kind: FailureKind) -> Stop {
    Stop::Fail(Failure {
        exit_code: g.exit_code,
        ..Failure::new(kind, g.error)
    })
}

pub(crate) struct Run<'a> {
    pub inner: &'a Inner,
    /// The config the deployment started with.
    pub config: &'a crate::config::Config,
    pub service: &'a ServiceConfig,
    pub deployment: Deployment,
    pub live: Option<Live>,
    pub shape: Shape,
    pub plan: Plan,
    /// What this deployment deploys (the previous version while it rolls back).
    pub digest: String,
    /// How the runtime names it: `repo@digest`, or the image ID of a local image.
    pub image: String,
    pub image_id: Option<String>,
    pub tag: Option<String>,
    pub has_healthcheck: bool,
    /// What nginx routed to when the deployment began.
    pub original: Routing,
    /// What nginx routes to now.
    pub routing: Routing,
    /// Replicas this deployment started and has not removed, by name.
    pub started: BTreeMap<String, Replica>,
    /// Names of replicas this deployment stopped.
    pub stopped: Vec<String>,
    /// Names of the replicas the latest `starting` step started (the batch a
    /// paused rolling update takes back out).
    pub batch: Vec<String>,
    /// Backends taken out of the routing and not stopped yet.
    retired: Vec<Backend>,
    /// Workers alive before a reload, not waited for yet.
    old_workers: Vec<u32>,
    /// The replica whose failure ended a step: its log goes in the report.
    failing: Option<String>,
    /// Traffic through nginx since the deployment began, by backend address.
    traffic: Option<(AccessLog, HashMap<String, Tally>)>,
    /// Putting back the previous version: the live record stays as it is.
    unwinding: bool,
    /// A canary promoted before its last step (by an operator, or by
    /// `canary.inconclusive = "promote"`): the remaining steps are skipped.
    pub canary_promoted: Option<String>,
}

impl<'a> Run<'a> {
    pub fn new(
        inner: &'a Inner,
        config: &'a crate::config::Config,
        service: &'a ServiceConfig,
        deployment: Deployment,
        current: Routing,
        shape: Shape,
        plan: Plan,
    ) -> Run<'a> {
        let live = inner.store.live(&service.name).ok().flatten();
        let traffic = config.nginx.access_log.as_deref().and_then(|path| {
            match AccessLog::from_end(path) {
                Ok(log) => Some((log, HashMap::new())),
                Err(e) => {
                    warn!(path = %path.display(), error = %e, "cannot read nginx.access_log; errors through nginx are not watched");
                    None
                }
            }
        });
        let run = Run {
            inner,
            config,
            service,
            tag: deployment.tag.clone(),
            deployment,
            live,
            shape,
            plan,
            digest: String::new(),
            image: String::new(),
            image_id: None,
            has_healthcheck: false,
            original: current.clone(),
            routing: current,
            started: BTreeMap::new(),
            stopped: Vec::new(),
            batch: Vec::new(),
            retired: Vec::new(),
            old_workers: Vec::new(),
            failing: None,
            traffic,
            unwinding: false,
            canary_promoted: None,
        };
        run.record(inner.store.set_colour(run.deployment.id, run.plan.colour));
        run
    }

    /// A store write that must not stop the deployment: its failure is logged.
    pub fn record<T>(&self, result: crate::store::Result<T>) {
        if let Err(e) = result {
            warn!(error = %e, "cannot record in the state database");
        }
    }

    pub(super) fn note(&self, text: &str) {
        self.record(self.inner.store.note(self.deployment.id, text));
    }

    pub async fn step(&mut self, step: &Step) -> Result<(), Stop> {
        self.failing = None;
        match step {
            Step::Resolving => self.resolve().await,
            Step::Pulling => self.pull().await,
            Step::Starting { slots, .. } => self.start(slots).await,
            Step::HealthGate { slots, .. } => self.gate(slots).await,
            Step::Switching { add, remove, .. } => self.switch(add, remove).await,
            Step::Verifying { slots, .. } => self.verify(slots).await,
            Step::Soaking => self.soak().await,
            Step::Draining { .. } => self.drain().await,
            Step::StoppingOld { replicas, .. } => self.stop_old(replicas).await,
            Step::Monitoring { slots, .. } => self.monitor(slots).await,
            Step::Pruning => self.prune().await,
            Step::Canary { stage, percent } => self.canary(*stage, *percent).await,
            Step::Releasing => self.release().await,
            Step::PreSwitch { slots, .. } => self.pre_switch(slots).await,
            // Run by the driver after the outcome, not as plan steps.
            Step::PostDeploy | Step::OnFailure => Ok(()),
        }
    }

    /// Runs the release command once, in a one-off container of the new
    /// image, before any replica of it starts. A re-run of an interrupted
    /// deployment whose release of this digest finished does not run it again.
    async fn release(&mut self) -> Result<(), Stop> {
        let Some(release) = &self.service.release else {
            return Ok(());
        };
        let id = self.deployment.id;
        let rollback = self
            .deployment
            .trigger_detail
            .as_ref()
            .is_some_and(|d| d["command"] == "rollback");
        if rollback {
            // The previous version's migration ran when it was deployed; run
            // again against a newer schema, many tools refuse, and a rollback
            // must not fail on that.
            self.note("a rollback does not run the release command");
            return Ok(());
        }
        if let Ok(Some(earlier)) = self.inner.store.release_done(id, &self.digest) {
            self.note(&format!(
                "the release already finished in deployment {earlier}, which this one re-runs: not run again"
            ));
            return Ok(());
        }
        let image = self.image_id.clone().unwrap_or_else(|| self.image.clone());
        let spec = TaskSpec::release(
            self.service,
            &release.command,
            id,
            &self.digest,
            &image,
            &self.image,
        )
        .map_err(|e| fail(FailureKind::Invalid, e))?;
        let repo = Repository::parse(&self.service.image);
        let creds = registry::credentials(self.config.registry_for(&repo.host));
        let started = Instant::now();
        let out = self
            .inner
            .runtime
            .run_task(&spec, release.timeout, creds)
            .await
            .map_err(|e| match e.kind {
                // A Swarm secret that does not exist, or a name in the way.
                ErrorKind::Refused | ErrorKind::Conflict => fail(FailureKind::Invalid, e.message),
                _ => runtime_failure(e),
            })?;
        let tail = bound_log(&out.output);
        let took = display::duration(started.elapsed().as_millis() as i64);
        let shown = if tail.trim().is_empty() {
            String::new()
        } else {
            format!("; output: {}", tail.trim())
        };
        match out.exit_code {
            Some(0) => {
                self.note(&format!(
                    "release command {:?} exited 0 after {took}{shown}",
                    release.command
                ));
                // Closed at once: a crash from here on does not run it again.
                self.record(self.inner.store.end_step(id, true));
                Ok(())
            }
            code => {
                if !shown.is_empty() {
                    self.note(shown.trim_start_matches("; "));
                }
                Err(Stop::Fail(Failure {
                exit_code: code,
                log_tail: (!tail.trim().is_empty()).then_some(tail),
                ..Failure::new(
                    FailureKind::Release,
                    match code {
                        Some(code) => format!(
                            "the release command {:?} exited {code} after {took}; no new replica was started",
                            release.command
                        ),
                        None => format!(
                            "the release command {:?} ran past release.timeout {} and was killed; no new replica was started",
                            release.command,
                            display::span(release.timeout)
                        ),
                    },
                )
            }))
            }
        }
    }

    /// The deployment's facts, as every hook gets them.
    pub fn hook_env(&self, hook: &str) -> Vec<(String, String)> {
        let d = &self.deployment;
        let env = vec![
            ("GREENLIGHT_HOOK", hook.to_string()),
            ("GREENLIGHT_SERVICE", self.service.name.clone()),
            ("GREENLIGHT_DEPLOYMENT", d.id.to_string()),
            ("GREENLIGHT_DIGEST", self.digest.clone()),
            ("GREENLIGHT_IMAGE", self.image.clone()),
            ("GREENLIGHT_TAG", self.tag.clone().unwrap_or_default()),
            ("GREENLIGHT_TRIGGER", d.trigger.to_string()),
            (
                "GREENLIGHT_PREVIOUS_DIGEST",
                self.live
                    .as_ref()
                    .map(|l| l.digest.clone())
                    .unwrap_or_default(),
            ),
        ];
        env.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    }

    /// Runs hook `name` and records how it ended in the open step; `Err` when
    /// it could not run, exited non-zero or ran past its timeout.
    pub async fn run_hook(
        &self,
        name: &str,
        argv: &[String],
        env: Vec<(String, String)>,
    ) -> Result<(), (String, Option<i64>, Option<String>)> {
        let timeout = self.service.hooks.timeout;
        match super::hooks::run(argv, &env, timeout).await {
            Ok(run) => {
                let line = run.describe(name, argv, timeout);
                self.note(&line);
                if run.ok() {
                    Ok(())
                } else {
                    let output = run.output.trim().to_string();
                    Err((
                        line,
                        run.exit_code.map(i64::from),
                        (!output.is_empty()).then_some(output),
                    ))
                }
            }
            Err(e) => {
                let line = format!("{name} hook {argv:?} could not run: {e}");
                self.note(&line);
                Err((line, None, None))
            }
        }
    }

    /// The `pre_switch` hook, given the new replicas' addresses: a failure
    /// fails the deployment before nginx changes.
    async fn pre_switch(&mut self, slots: &[Slot]) -> Result<(), Stop> {
        let Some(argv) = self.service.hooks.pre_switch.clone() else {
            return Ok(());
        };
        let replicas = self.replicas_of(slots);
        let mut env = self.hook_env("pre_switch");
        env.push((
            "GREENLIGHT_ADDRESSES".into(),
            replicas
                .iter()
                .filter_map(|r| r.address.clone())
                .collect::<Vec<_>>()
                .join(" "),
        ));
        env.push((
            "GREENLIGHT_REPLICAS".into(),
            replicas
                .iter()
                .map(|r| r.name.clone())
                .collect::<Vec<_>>()
                .join(" "),
        ));
        self.run_hook("pre_switch", &argv, env)
            .await
            .map_err(|(error, exit_code, log_tail)| {
                Stop::Fail(Failure {
                    exit_code,
                    log_tail,
                    ..Failure::new(FailureKind::Hook, format!("{error}; nginx was not changed"))
                })
            })
    }

    async fn resolve(&mut self) -> Result<(), Stop> {
        let repo = Repository::parse(&self.service.image);
        let tag = self.deployment.requested_tag.clone();
        if let Some(t) = &tag {
            if !self.deployment.trigger.is_operator() && !self.service.tag_allowed(t) {
                return Err(fail(
                    FailureKind::Invalid,
                    format!(
                        "tag {t:?} does not match the service's tags {:?}",
                        self.service.tags
                    ),
                ));
            }
        }
        self.digest = match (&self.deployment.requested_digest, &tag) {
            (Some(d), _) => d.clone(),
            (None, Some(t)) if !self.service.pull => {
                let local = format!("{}:{t}", self.service.image);
                self.inner
                    .runtime
                    .image(&local)
                    .await
                    .map_err(runtime_failure)?
                    .ok_or_else(|| {
                        fail(
                            FailureKind::Invalid,
                            format!(
                                "no local image {local} (the service has pull = false: build or load it on this host)"
                            ),
                        )
                    })?
                    .id
            }
            (None, Some(t)) => {
                let cfg = self.config.registry_for(&repo.host);
                self.with_retries("resolving the tag", || async {
                    registry::resolve_tag(&repo, t, cfg).await.map_err(|e| {
                        let transient = matches!(e, registry::RegistryError::Unavailable { .. });
                        attempt_error(e.to_string(), transient)
                    })
                })
                .await?
            }
            (None, None) => {
                return Err(fail(
                    FailureKind::Invalid,
                    "neither a tag nor a digest was requested",
                ))
            }
        };
        // A local image is addressed by its ID, a pulled one by repository@digest.
        self.image = if self.service.pull {
            format!("{}@{}", self.service.image, self.digest)
        } else {
            self.digest.clone()
        };
        self.note(&format!(
            "{} -> {}",
            tag.as_deref().unwrap_or("digest"),
            self.digest
        ));
        self.record(self.inner.store.set_target(
            self.deployment.id,
            self.tag.as_deref(),
            &self.digest,
            &self.image,
            self.live.as_ref(),
        ));
        // Now that the digest is known, routed replicas already running it
        // count as done (a re-run after an interruption keeps what it
        // replaced); one that is not running counts as one to replace. Only
        // those of the target digest are asked about: a new version's deploy
        // asks the engine nothing.
        let mut view = self.routing.clone();
        let mut all_run = true;
        for b in view.backends.iter_mut().filter(|b| b.digest == self.digest) {
            if !matches!(self.inner.runtime.status(&b.id).await, Ok(Some(s)) if s.running) {
                b.digest.clear();
                all_run = false;
            }
        }
        if all_run && self.already_live() {
            return Err(Stop::Done(State::AlreadyLive));
        }
        self.plan = strategy::plan(
            &self.service.name,
            &view,
            Some(&self.digest),
            self.shape.clone(),
        );
        self.record(
            self.inner
                .store
                .set_plan(self.deployment.id, &self.plan.steps),
        );
        self.record(
            self.inner
                .store
                .set_colour(self.deployment.id, self.plan.colour),
        );
        Ok(())
    }

    /// Whether the service already runs the target everywhere (given that
    /// every routed replica of it runs): it is the live digest, every routed
    /// replica is of it, and there are as many as wanted.
    fn already_live(&self) -> bool {
        let routed = &self.routing.backends;
        self.live.as_ref().is_some_and(|l| l.digest == self.digest)
            && routed.len() == self.shape.replicas as usize
            && routed.iter().all(|b| b.digest == self.digest)
    }

    async fn pull(&mut self) -> Result<(), Stop> {
        let repo = Repository::parse(&self.service.image);
        let creds = registry::credentials(self.config.registry_for(&repo.host));
        let runtime = &self.inner.runtime;
        let inspect = || async { runtime.image(&self.image).await.map_err(runtime_failure) };
        // A digest names its content: an image already here needs no pull (a
        // rollback then works while the registry is down).
        let mut found = inspect().await?;
        if found.is_some() && self.service.pull {
            self.note("the image is already on this host; no pull needed");
        }
        // Someone untagging the repository on this host can remove the digest
        // reference between the pull and the inspect: pull again, a bounded
        // number of times.
        let mut tries = 0;
        while found.is_none() && self.service.pull && tries < PULL_TRIES {
            tries += 1;
            let limit = self.config.pull.timeout;
            self.with_retries("pulling", || async {
                match tokio::time::timeout(limit, runtime.pull(&self.image, creds.clone())).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(attempt_error(e.message, e.kind == ErrorKind::Transient)),
                    Err(_) => Err(attempt_error(
                        format!(
                            "the pull of {} stalled: no end within {} (pull.timeout)",
                            self.image,
                            display::span(limit)
                        ),
                        true,
                    )),
                }
            })
            .await?;
            found = inspect().await?;
        }
        let Some(info) = found else {
            return Err(fail(
                FailureKind::Invalid,
                format!(
                    "{} is not present on this host{}",
                    self.image,
                    if self.service.pull {
                        " after the pull"
                    } else {
                        " (pull = false)"
                    }
                ),
            ));
        };
        self.refuse_if_older_than_live(info.created.as_deref())
            .await?;
        self.has_healthcheck = self.healthcheck_applies(info.has_healthcheck);
        self.record(self.inner.store.set_image_id(self.deployment.id, &info.id));
        self.note(&format!(
            "image {}{}",
            short_digest(&info.id),
            if info.has_healthcheck {
                " (has a Docker HEALTHCHECK)"
            } else {
                ""
            }
        ));
        self.image_id = Some(info.id);
        Ok(())
    }

    /// Runs `attempt` until it succeeds, fails for good, or `[pull] attempts`
    /// run out, waiting with backoff in between; each retry is noted.
    async fn with_retries<T, F, Fut>(&self, what: &str, mut attempt: F) -> Result<T, Stop>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, SendError>>,
    {
        let cfg = &self.config.pull;
        let policy = Policy {
            base: cfg.backoff,
            max_attempts: cfg.attempts,
        };
        let mut n = 0;
        loop {
            n += 1;
            let e = match attempt().await {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            let Some(wait) = policy.next_delay(n, &e, rand::random::<f64>()) else {
                let kind = if e.retryable {
                    FailureKind::RegistryUnavailable
                } else {
                    FailureKind::RegistryRefused
                };
                return Err(fail(
                    kind,
                    if n > 1 {
                        format!("{} (gave up after {n} tries)", e.detail)
                    } else {
                        e.detail
                    },
                ));
            };
            warn!(try_ = n, error = %e.detail, "{what} failed; trying again in {wait:?}");
            self.note(&format!(
                "{what}: try {n} of {} failed ({}); next in {} ms",
                cfg.attempts,
                e.detail,
                wait.as_millis()
            ));
            tokio::time::sleep(wait).await;
        }
    }

    /// The out-of-order guard for pushes whose push time is unknown: an image
    /// created before the live one never replaces it unless an operator asks.
    async fn refuse_if_older_than_live(&self, created: Option<&str>) -> Result<(), Stop> {
        if self.deployment.trigger.is_operator() || self.deployment.pushed_at.is_some() {
            return Ok(());
        }
        let Some(live_image) = self.live.as_ref().and_then(|l| l.image_id.clone()) else {
            return Ok(());
        };
        let Ok(Some(live)) = self.inner.runtime.image(&live_image).await else {
            return Ok(());
        };
        let parse = |t: Option<&str>| t.and_then(crate::webhook::parse_time);
        match (parse(created), parse(live.created.as_deref())) {
            (Some(new), Some(old)) if new < old => Err(fail(
                FailureKind::Stale,
                format!(
                    "the image was created before the live one ({} < {}); deploy it by hand to force it",
                    created.unwrap_or_default(),
                    live.created.unwrap_or_default()
                ),
            )),
            _ => Ok(()),
        }
    }

    /// Starts a replica in each slot, all at once.
    async fn start(&mut self, slots: &[Slot]) -> Result<(), Stop> {
        let image = self.image_id.clone().unwrap_or_else(|| self.image.clone());
        let mut specs = Vec::new();
        for slot in slots {
            let spec = ReplicaSpec::new(
                self.service,
                *slot,
                self.deployment.id,
                &self.digest,
                &image,
                &self.image,
            )
            .map_err(|e| fail(FailureKind::Invalid, e))?;
            specs.push(spec);
        }
        let runtime = &self.inner.runtime;
        self.batch = specs.iter().map(|s| s.name.clone()).collect();
        // Swarm's nodes pull for themselves: they need the credentials.
        let repo = Repository::parse(&self.service.image);
        let creds = registry::credentials(self.config.registry_for(&repo.host));
        let results = runtime.start_all(&specs, creds).await;
        let mut first_error = None;
        let mut notes = Vec::new();
        for result in results {
            match result {
                Ok(replica) => {
                    notes.push(format!(
                        "{} at {}",
                        replica.name,
                        replica.address.as_deref().unwrap_or("-")
                    ));
                    self.started.insert(replica.name.clone(), replica);
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        if !notes.is_empty() {
            self.note(&notes.join(", "));
        }
        match first_error {
            None => Ok(()),
            // Something in the way, or a Swarm secret that does not exist.
            Some(e) if matches!(e.kind, ErrorKind::Conflict | ErrorKind::Refused) => {
                Err(fail(FailureKind::Invalid, e.message))
            }
            Some(e) => Err(runtime_failure(e)),
        }
    }

    /// Whether replicas of an image run a Docker HEALTHCHECK the gate waits
    /// for: the image's, unless `[service.healthcheck]` replaces or disables it.
    fn healthcheck_applies(&self, image_has: bool) -> bool {
        match &self.service.healthcheck {
            Some(h) if h.disabled() => false,
            Some(h) if h.test.is_some() => true,
            _ => image_has,
        }
    }

    /// The health checks of a started replica.
    pub(super) fn health<'r>(&'r self, replica: &'r Replica) -> HealthGate<'r> {
        HealthGate {
            runtime: &self.inner.runtime,
            config: &self.service.health,
            name: &replica.name,
            replica_id: &replica.id,
            address: replica.address.as_deref().unwrap_or_default(),
            docker_healthcheck: self.has_healthcheck,
        }
    }

    fn replicas_of(&self, slots: &[Slot]) -> Vec<Replica> {
        slots
            .iter()
            .filter_map(|s| self.started.get(&s.name(&self.service.name)).cloned())
            .collect()
    }

    /// Gates every replica at once; each that passes gets the service's
    /// restart policy.
    async fn gate(&mut self, slots: &[Slot]) -> Result<(), Stop> {
        let replicas = self.replicas_of(slots);
        let this = &*self;
        let outcomes = join_all(
            replicas
                .iter()
                .map(|r| async move { (r, this.health(r).wait().await) }),
        )
        .await;
        let mut notes = Vec::new();
        for (replica, outcome) in outcomes {
            match outcome {
                Ok(probes) => {
                    self.inner
                        .runtime
                        .promote(&replica.id, self.service.restart)
                        .await
                        .map_err(runtime_failure)?;
                    notes.push(format!("{} healthy after {probes} probes", replica.name));
                }
                Err(g) => {
                    if !notes.is_empty() {
                        self.note(&notes.join(", "));
                    }
                    self.failing = Some(replica.id.clone());
                    return Err(gate_failure(g, FailureKind::Unhealthy));
                }
            }
        }
        self.note(&notes.join(", "));
        Ok(())
    }

    fn backend(&self, replica: &Replica, colour: crate::domain::deployment::Colour) -> Backend {
        Backend {
            id: replica.id.clone(),
            name: replica.name.clone(),
            address: replica.address.clone().unwrap_or_default(),
            colour: replica.colour.unwrap_or(colour),
            deployment: self.deployment.id,
            digest: self.digest.clone(),
            role: Role::New,
            weight: 1,
            since: now_ms(),
        }
    }

    /// The backend a replica this deployment started becomes.
    pub(super) fn new_backend(&self, replica: &Replica) -> Backend {
        self.backend(replica, self.plan.colour)
    }

    /// Applies a new routing: nginx tests and reloads it, or stays as it was.
    async fn route(&mut self, backends: Vec<Backend>) -> Result<(), Stop> {
        self.route_split(backends, None).await
    }

    /// [`Run::route`] with a canary split (`None`: one group).
    pub(super) async fn route_split(
        &mut self,
        backends: Vec<Backend>,
        split: impl Into<Option<crate::domain::routing::Split>>,
    ) -> Result<(), Stop> {
        let mut next = self.routing.next(backends);
        next.split = split.into();
        let removed: Vec<Backend> = self
            .routing
            .backends
            .iter()
            .filter(|b| next.backend(&b.name).is_none())
            .cloned()
            .collect();
        let workers = self
            .inner
            .nginx
            .apply(&next)
            .await
            .map_err(|e| fail(FailureKind::Proxy, e.to_string()))?;
        self.old_workers.extend(workers);
        self.retired.extend(removed);
        self.routing = next;
        self.record(self.inner.store.set_routing(&self.routing));
        Ok(())
    }

    /// Notes what nginx routes to after a reload.
    fn note_routes(&self) {
        self.note(&format!(
            "nginx routes {} to {} (render {})",
            self.service.name,
            self.routing
                .backends
                .iter()
                .map(|b| b.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            self.routing.generation
        ));
    }

    async fn switch(&mut self, add: &[Slot], remove: &[String]) -> Result<(), Stop> {
        let mut backends: Vec<Backend> = self
            .routing
            .backends
            .iter()
            .filter(|b| !remove.contains(&b.name))
            .map(|b| Backend {
                role: Role::Stable,
                ..b.clone()
            })
            .collect();
        for replica in self.replicas_of(add) {
            backends.push(self.backend(&replica, self.plan.colour));
        }
        self.route(backends).await?;
        self.note_routes();
        Ok(())
    }

    async fn verify(&mut self, slots: &[Slot]) -> Result<(), Stop> {
        let names: Vec<String> = slots.iter().map(|s| s.name(&self.service.name)).collect();
        let (took, proved) = self.prove(|b| names.contains(&b.name)).await?;
        self.note(&format!(
            "proved through nginx in {}: {}",
            display::duration(took.as_millis() as i64),
            if proved == 0 {
                "the render took".to_string()
            } else {
                format!("{} answer", names.join(", "))
            }
        ));
        let everywhere = self.routing.backends.len() == self.shape.replicas as usize
            && self
                .routing
                .backends
                .iter()
                .all(|b| b.digest == self.digest);
        if everywhere && !self.unwinding {
            self.went_live()?;
        }
        Ok(())
    }

    /// Proves through nginx that the current render took and that each
    /// backend `chosen` picks answers; returns how long it took and how many
    /// backends were proved.
    async fn prove(
        &self,
        chosen: impl Fn(&Backend) -> bool,
    ) -> Result<(std::time::Duration, usize), Stop> {
        let prove: Vec<usize> = self
            .routing
            .backends
            .iter()
            .enumerate()
            .filter(|(_, b)| chosen(b))
            .map(|(i, _)| i)
            .collect();
        let took = self
            .inner
            .nginx
            .verify(&self.routing, &prove, &self.service.health.path)
            .await
            .map_err(|e| fail(FailureKind::Proxy, e.to_string()))?;
        Ok((took, prove.len()))
    }

    /// Every replica runs the target: it is the live version.
    fn went_live(&mut self) -> Result<(), Stop> {
        // A redeploy of the live digest (a scale, a repair) keeps the version
        // a rollback goes back to: it is still the one before this digest.
        let same = self.live.as_ref().is_some_and(|l| l.digest == self.digest);
        let previous = self.live.clone();
        let (previous_tag, previous_digest, previous_image_id) = match (&previous, same) {
            (Some(p), true) => (
                p.previous_tag.clone(),
                p.previous_digest.clone(),
                p.previous_image_id.clone(),
            ),
            (Some(p), false) => (p.tag.clone(), Some(p.digest.clone()), p.image_id.clone()),
            (None, _) => (None, None, None),
        };
        let live = Live {
            service: self.service.name.clone(),
            colour: self.routing.colour(),
            tag: self.tag.clone(),
            digest: self.digest.clone(),
            image: self.image.clone(),
            image_id: self.image_id.clone(),
            deployment_id: Some(self.deployment.id),
            since: now_ms(),
            previous_tag,
            previous_digest,
            previous_image_id,
            pushed_at: self
                .deployment
                .pushed_at
                .or(previous.as_ref().filter(|_| same).and_then(|p| p.pushed_at)),
            routing: Some(self.routing.clone()),
        };
        self.inner
            .store
            .set_live(&live)
            .map_err(|e| fail(FailureKind::Store, e.to_string()))
    }

    async fn soak(&mut self) -> Result<(), Stop> {
        let soak = self.service.rollout.soak;
        let guard = self
            .inner
            .soaks
            .open(&self.service.name, self.deployment.id);
        let replicas: Vec<Replica> = self.started.values().cloned().collect();
        let watched = self.watch(&replicas, "soak", soak, &guard.stop).await;
        if guard.close() {
            return Err(fail(
                FailureKind::Operator,
                "an operator asked for a rollback during the soak",
            ));
        }
        let probes = watched?;
        self.note(&format!(
            "healthy through the {} soak ({probes} probes)",
            display::span(soak)
        ));
        Ok(())
    }

    /// Watches `replicas` for `duration` (all at once): each must keep running
    /// and answering its probes, and, when the access log is read, they must
    /// not answer errors through nginx clearly more often than the old replicas.
    async fn watch(
        &mut self,
        replicas: &[Replica],
        phase: &str,
        duration: std::time::Duration,
        stop: &CancellationToken,
    ) -> Result<u32, Stop> {
        let mut traffic = self.traffic.take();
        let sides = Sides {
            old: self
                .original
                .backends
                .iter()
                .map(|b| b.address.clone())
                .collect(),
            new: self
                .started
                .values()
                .filter_map(|r| r.address.clone())
                .collect(),
        };
        let interval = self.service.health.interval;
        // The first failure ends the whole watch (and so does an operator's stop).
        let done = stop.child_token();
        let this = &*self;
        let done_ref = &done;
        let gates = join_all(replicas.iter().map(|r| async move {
            let outcome = this.health(r).soak(phase, duration, done_ref).await;
            if outcome.is_err() {
                done_ref.cancel();
            }
            (r, outcome)
        }));
        let errors = async {
            let outcome = watch_errors(traffic.as_mut(), &sides, interval, duration, &done).await;
            if outcome.is_err() {
                done.cancel();
            }
            outcome
        };
        let (gates, errors) = tokio::join!(gates, errors);
        self.traffic = traffic;
        let mut probes = 0;
        for (replica, outcome) in gates {
            match outcome {
                Ok(n) => probes += n,
                Err(g) => {
                    self.failing = Some(replica.id.clone());
                    return Err(gate_failure(g, FailureKind::Unhealthy));
                }
            }
        }
        errors?;
        Ok(probes)
    }

    async fn monitor(&mut self, slots: &[Slot]) -> Result<(), Stop> {
        let duration = self.service.rollout.monitor;
        let replicas = self.replicas_of(slots);
        let never = CancellationToken::new();
        let probes = self.watch(&replicas, "monitor", duration, &never).await?;
        self.note(&format!(
            "{} healthy through the {} monitor ({probes} probes{})",
            replicas
                .iter()
                .map(|r| r.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            display::span(duration),
            if self.traffic.is_some() {
                ", errors through nginx no worse than the old replicas'"
            } else {
                "; nginx.access_log is not set, so errors through nginx were not compared"
            }
        ));
        Ok(())
    }

    async fn drain(&mut self) -> Result<(), Stop> {
        let old = std::mem::take(&mut self.old_workers);
        if old.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        match self.inner.nginx.wait_drained(&old).await {
            Ok(0) => self.note(&format!(
                "{} old nginx workers exited after {} ms",
                old.len(),
                started.elapsed().as_millis()
            )),
            Ok(left) => {
                warn!(left, "old nginx workers still running after drain_timeout");
                self.note(&format!(
                    "{left} old nginx workers still running after drain_timeout {}",
                    display::span(self.config.nginx.drain_timeout)
                ))
            }
            Err(e) => self.note(&format!("cannot watch nginx workers: {e}")),
        }
        Ok(())
    }

    /// Stops the replicas nginx no longer routes to. The plan names the old
    /// replicas; any other replica of the service that nginx does not route
    /// to (left by an earlier failure) goes too.
    async fn stop_old(&mut self, names: &[String]) -> Result<(), Stop> {
        let runtime = &self.inner.runtime;
        let replicas = match runtime.replicas(self.service).await {
            Ok(r) => r,
            Err(e) => {
                self.note(&format!(
                    "cannot list replicas to stop the old ones: {e}; the next start removes them"
                ));
                return Ok(());
            }
        };
        let doomed: Vec<&Replica> = replicas
            .iter()
            .filter(|r| self.routing.backend(&r.name).is_none())
            .filter(|r| names.contains(&r.name) || !self.started.contains_key(&r.name))
            .collect();
        if let Some(cut) = self.long_lived(&doomed).await {
            self.record(
                self.inner
                    .store
                    .add_connections_cut(self.deployment.id, cut as i64),
            );
            if cut > 0 {
                warn!(cut, "stopping the old replicas cuts long-lived connections");
                self.note(&format!(
                    "{cut} long-lived connection{} still open after rollout.long_lived_timeout {}: cut by the stop",
                    if cut == 1 { "" } else { "s" },
                    display::span(self.service.rollout.long_lived_timeout)
                ));
            }
        }
        let grace = self.service.rollout.stop_grace;
        // A stop that fails (the engine busy or timing out) is tried again
        // before it is reported.
        let mut pending: Vec<Replica> = doomed.into_iter().cloned().collect();
        let mut outcomes: Vec<(String, Option<String>)> = Vec::new();
        let mut deferred: Vec<String> = Vec::new();
        for attempt in 1..=STOP_TRIES {
            let results = runtime.stop_all(&pending, grace).await;
            let mut again = Vec::new();
            for (r, result) in pending.into_iter().zip(results) {
                match result {
                    Ok(()) => outcomes.push((r.name.clone(), None)),
                    Err(e) if e.kind == ErrorKind::Deferred => {
                        if deferred.is_empty() {
                            self.note(&format!("{e}"));
                        }
                        deferred.push(r.name.clone());
                    }
                    Err(e) if attempt == STOP_TRIES => {
                        warn!(replica = %r.name, error = %e, "stopping an old replica");
                        outcomes.push((r.name.clone(), Some(e.to_string())));
                    }
                    Err(_) => again.push(r),
                }
            }
            pending = again;
            if pending.is_empty() {
                break;
            }
        }
        let (stopped, failed): (Vec<_>, Vec<_>) =
            outcomes.into_iter().partition(|(_, e)| e.is_none());
        let stopped: Vec<String> = stopped.into_iter().map(|(name, _)| name).collect();
        self.retired.retain(|b| !stopped.contains(&b.name));
        if !stopped.is_empty() {
            self.note(&format!("stopped {}", stopped.join(", ")));
        }
        // Out of nginx and drained: they serve nothing until they stop.
        if !deferred.is_empty() {
            self.note(&format!(
                "{} left nginx and stop{} with the last of {} colour's tasks",
                deferred.join(", "),
                if deferred.len() == 1 { "s" } else { "" },
                if deferred.len() == 1 { "its" } else { "their" }
            ));
        }
        // Unrouted, so they serve nothing; recorded, not hidden. The next
        // start removes what is left of them.
        for (name, error) in &failed {
            self.note(&format!(
                "could not stop {name} ({}); it runs unrouted until the next start removes it",
                error.as_deref().unwrap_or("?")
            ));
        }
        self.stopped.extend(stopped);
        Ok(())
    }

    /// Connections still open to replicas about to stop, after the drain: the
    /// old nginx workers relaying WebSockets or server-sent events to them.
    /// Waits up to `rollout.long_lived_timeout` for them to close; returns
    /// how many were still open then (`None`: they cannot be counted here).
    async fn long_lived(&self, doomed: &[&Replica]) -> Option<usize> {
        if doomed.is_empty() {
            return None;
        }
        let runtime = &self.inner.runtime;
        let port = self.service.port;
        let count = || async {
            let mut total = None;
            for r in doomed {
                if let Some(n) = runtime.open_connections(&r.id, port).await {
                    *total.get_or_insert(0) += n;
                }
            }
            total
        };
        let first = count().await?;
        if first == 0 {
            return Some(0);
        }
        let timeout = self.service.rollout.long_lived_timeout;
        self.note(&format!(
            "{first} connection{} still open to the old replicas after the drain (WebSockets, \
             server-sent events): waiting up to rollout.long_lived_timeout {} for them to close",
            if first == 1 { "" } else { "s" },
            display::span(timeout)
        ));
        let started = Instant::now();
        let mut open = first;
        while open > 0 && started.elapsed() < timeout {
            tokio::time::sleep(LONG_LIVED_POLL.min(timeout - started.elapsed())).await;
            open = count().await.unwrap_or(0);
        }
        if open == 0 {
            self.note(&format!(
                "they closed within {}",
                display::duration(started.elapsed().as_millis() as i64)
            ));
        }
        Some(open)
    }

    async fn prune(&mut self) -> Result<(), Stop> {
        // Never the live image, the rollback image, or any image a replica of
        // any greenlight service uses.
        let mut protected: HashSet<String> = HashSet::new();
        protected.extend(self.image_id.clone());
        protected.extend(self.live.as_ref().and_then(|l| l.image_id.clone()));
        for svc in &self.config.services {
            if let Ok(Some(l)) = self.inner.store.live(&svc.name) {
                protected.extend(l.image_id);
                protected.extend(l.previous_image_id);
            }
            if let Ok(replicas) = self.inner.runtime.replicas(svc).await {
                protected.extend(replicas.into_iter().map(|r| r.image_id));
            }
        }
        // Only images this service's deployments ran: an operator's own
        // builds (pull = false), deployed or not yet, are not greenlight's.
        let deployed = match self.inner.store.deployed_image_ids(&self.service.name) {
            Ok(ids) => ids,
            Err(e) => {
                self.note(&format!("cannot prune: {e}"));
                return Ok(());
            }
        };
        let repo = Repository::parse(&self.service.image);
        match self
            .inner
            .runtime
            .prune(
                &repo,
                self.service.rollout.keep_images,
                &protected,
                &deployed,
            )
            .await
        {
            Ok(removed) if removed.is_empty() => self.note("nothing to prune"),
            Ok(removed) => self.note(&format!("removed {}", removed.join(", "))),
            Err(e) => self.note(&format!("cannot prune: {e}")),
        }
        Ok(())
    }

    // ---------------------------------------------------------------- change underneath

    /// Makes nginx follow what the engine changed underneath (Swarm replaced a
    /// task or moved it to another node): routed tasks that no longer run
    /// leave the routing, and running tasks of the routed colour that it lacks
    /// join it once each passes the health gate; one reload, each new backend
    /// proved through nginx, the old workers drained. Every step is recorded.
    pub async fn resync(&mut self) -> Result<(), Stop> {
        let replicas = self
            .inner
            .runtime
            .replicas(self.service)
            .await
            .map_err(runtime_failure)?;
        let Some(drift) = drift(&self.routing, &replicas) else {
            self.note("nginx already routes to every running task of the live colour");
            return Err(Stop::Done(State::AlreadyLive));
        };
        if let Some(live) = &self.live {
            self.digest = live.digest.clone();
        }
        self.note(&drift.describe());
        let slots = |rs: &[Replica]| -> Vec<Slot> {
            rs.iter()
                .filter_map(|r| {
                    Some(Slot {
                        colour: r.colour?,
                        index: r.slot?,
                    })
                })
                .collect()
        };
        let mut joining = Vec::new();
        let mut gate_error = None;
        if !drift.new.is_empty() {
            self.begin(&Step::HealthGate {
                batch: 0,
                slots: slots(&drift.new),
            });
            let this = &*self;
            let outcomes = join_all(
                drift
                    .new
                    .iter()
                    .map(|r| async move { (r, this.health(r).wait().await) }),
            )
            .await;
            for (r, outcome) in outcomes {
                match outcome {
                    Ok(probes) => {
                        self.note(&format!("{} healthy after {probes} probes", r.name));
                        joining.push(r.clone());
                    }
                    Err(g) => {
                        self.note(&format!("{} stays out: {}", r.name, g.error));
                        gate_error.get_or_insert(g);
                    }
                }
            }
        }
        let mut backends: Vec<Backend> = self
            .routing
            .backends
            .iter()
            .filter(|b| !drift.gone.contains(&b.id))
            .cloned()
            .collect();
        for r in &joining {
            backends.push(Backend {
                deployment: r.deployment.unwrap_or(self.deployment.id),
                digest: r.digest.clone().unwrap_or_else(|| self.digest.clone()),
                role: Role::Stable,
                ..self.backend(r, r.colour.unwrap_or(self.plan.colour))
            });
        }
        if backends.is_empty() {
            return Err(fail(
                FailureKind::Runtime,
                "no task of the routed colour runs: nginx keeps routing as it did (a dead \
                 endpoint is no worse than none)",
            ));
        }
        if backends == self.routing.backends {
            return Err(match gate_error {
                Some(g) => gate_failure(g, FailureKind::Unhealthy),
                None => Stop::Done(State::AlreadyLive),
            });
        }
        let gone_names: Vec<String> = self
            .routing
            .backends
            .iter()
            .filter(|b| drift.gone.contains(&b.id))
            .map(|b| b.name.clone())
            .collect();
        let added = slots(&joining);
        self.begin(&Step::Switching {
            batch: 0,
            add: added.clone(),
            remove: gone_names,
        });
        self.route(backends).await?;
        self.note_routes();
        if let Some(live) = &self.live {
            self.record(self.inner.store.set_live(&Live {
                routing: Some(self.routing.clone()),
                ..live.clone()
            }));
        }
        self.begin(&Step::Verifying {
            batch: 0,
            slots: added.clone(),
        });
        let (took, _) = self.prove(|b| joining.iter().any(|r| r.id == b.id)).await?;
        self.note(&format!(
            "proved through nginx in {}",
            display::duration(took.as_millis() as i64)
        ));
        self.begin(&Step::Draining { batch: 0 });
        self.drain().await?;
        match gate_error {
            Some(g) => Err(gate_failure(g, FailureKind::Unhealthy)),
            None => Ok(()),
        }
    }

    // ---------------------------------------------------------------- the way back

    /// Adds the log tail of the replica that failed (or the last one started).
    pub async fn add_log_tail(&self, failure: &mut Failure) {
        // A release or a hook brought its own output.
        if failure.log_tail.is_some() {
            return;
        }
        let id = self
            .failing
            .clone()
            .or_else(|| self.started.values().last().map(|r| r.id.clone()));
        if let Some(id) = id {
            let tail = self.inner.runtime.log_tail(&id, LOG_TAIL_LINES).await;
            if !tail.trim().is_empty() {
                failure.log_tail = Some(bound_log(&tail));
            }
        }
    }

    /// Removes every replica this deployment started that nginx does not
    /// route to.
    pub async fn remove_unrouted(&mut self) {
        let mut doomed: Vec<Replica> = self
            .started
            .values()
            .filter(|r| self.routing.backend(&r.name).is_none())
            .cloned()
            .collect();
        // A step cut off midway (by rollout.deadline) may have created
        // replicas it never got to record: the engine's labels name them.
        match self.inner.runtime.replicas(self.service).await {
            Ok(all) => {
                let unrecorded: Vec<Replica> = all
                    .into_iter()
                    .filter(|r| {
                        r.deployment == Some(self.deployment.id)
                            && self.routing.backend(&r.name).is_none()
                            && !doomed.iter().any(|d| d.id == r.id)
                    })
                    .collect();
                doomed.extend(unrecorded);
            }
            Err(e) => warn!(error = %e, "listing the service's replicas to remove new ones"),
        }
        let results = self.inner.runtime.remove_all(&doomed).await;
        for (r, result) in doomed.iter().zip(results) {
            if let Err(e) = result {
                warn!(replica = %r.name, error = %e, "removing a new replica");
            }
            self.started.remove(&r.name);
        }
    }

    /// Before any switch: everything started goes.
    pub async fn remove_started(&mut self) {
        self.remove_unrouted().await;
    }

    /// One reload back to the replicas routed before the deployment (they
    /// still run), then the new ones go once the workers routing to them have
    /// drained.
    pub async fn switch_back(&mut self) -> Result<(), String> {
        // A canary this run resumed was routed before it began: the way back
        // is its stable group alone.
        let back: Vec<Backend> = self
            .original
            .backends
            .iter()
            .filter(|b| self.original.split.is_none() || b.role == Role::Stable)
            .cloned()
            .collect();
        let names: Vec<String> = back.iter().map(|b| b.name.clone()).collect();
        self.begin(&Step::Switching {
            batch: 0,
            add: Vec::new(),
            remove: self
                .routing
                .backends
                .iter()
                .filter(|b| !names.contains(&b.name))
                .map(|b| b.name.clone())
                .collect(),
        });
        if back.is_empty() {
            // Nothing was live before: nothing to route to.
            self.route(back).await.map_err(stop_text)?;
        } else {
            self.route(back).await.map_err(stop_text)?;
            self.begin(&Step::Verifying {
                batch: 0,
                slots: Vec::new(),
            });
            // The reload back passed `nginx -t` and took; a verify server that
            // cannot prove it (the reason the deployment failed, often) does
            // not make it less done.
            match self
                .inner
                .nginx
                .verify(&self.routing, &[], &self.service.health.path)
                .await
            {
                Ok(took) => self.note(&format!(
                    "the previous replicas answer through nginx ({})",
                    display::duration(took.as_millis() as i64)
                )),
                Err(e) => self.note(&format!("the switch back could not be proven: {e}")),
            }
        }
        if let Some(live) = &self.live {
            self.record(self.inner.store.set_live(&Live {
                routing: Some(self.routing.clone()),
                ..live.clone()
            }));
        } else {
            self.record(self.inner.store.clear_live(&self.service.name));
        }
        // The workers routing to the new replicas finish their requests to them
        // first, so those must outlive them.
        self.begin(&Step::Draining { batch: 0 });
        self.drain().await.map_err(stop_text)?;
        self.begin(&Step::StoppingOld {
            batch: 0,
            replicas: self.started.keys().cloned().collect(),
        });
        self.remove_unrouted().await;
        // ... and the canary replicas the resumed run started go too.
        let resumed: Vec<&str> = self
            .original
            .backends
            .iter()
            .filter(|b| self.routing.backend(&b.name).is_none())
            .map(|b| b.id.as_str())
            .collect();
        if !resumed.is_empty() {
            let doomed: Vec<Replica> = match self.inner.runtime.replicas(self.service).await {
                Ok(all) => all
                    .into_iter()
                    .filter(|r| resumed.contains(&r.id.as_str()))
                    .collect(),
                Err(e) => {
                    warn!(error = %e, "listing the canary replicas to remove; the next start removes them");
                    Vec::new()
                }
            };
            let results = self.inner.runtime.remove_all(&doomed).await;
            for (r, result) in doomed.iter().zip(results) {
                if let Err(e) = result {
                    warn!(replica = %r.name, error = %e, "removing a canary replica");
                }
            }
        }
        Ok(())
    }

    /// Rolls the replicas already replaced back to the previous version, with
    /// the service's rolling settings, recording each step. Returns how many
    /// replicas were put back.
    pub async fn roll_back(&mut self) -> Result<usize, String> {
        self.roll_back_only(None).await
    }

    /// Puts the previous version back on the replicas of the failing batch
    /// only; the ones earlier batches replaced keep serving the new version
    /// (`failure_action = "pause"`). Returns how many were replaced.
    pub async fn roll_back_batch(&mut self) -> Result<usize, String> {
        let batch = self.batch.clone();
        self.roll_back_only(Some(&batch)).await
    }

    async fn roll_back_only(&mut self, scope: Option<&[String]>) -> Result<usize, String> {
        let Some(live) = self.live.clone() else {
            return Err("there is no previous version to go back to".into());
        };
        let Some(image_id) = live.image_id.clone() else {
            return Err("the previous version's image is not on record".into());
        };
        let Ok(Some(info)) = self.inner.runtime.image(&image_id).await else {
            return Err(format!(
                "the previous image ({}) is no longer on this host",
                short_digest(&image_id)
            ));
        };
        self.remove_unrouted().await;
        self.unwinding = true;
        // The previous image's own health check gates its replicas, not the
        // failed version's.
        self.has_healthcheck = self.healthcheck_applies(info.has_healthcheck);
        self.digest = live.digest.clone();
        self.image = live.image.clone();
        self.image_id = Some(image_id);
        self.tag = live.tag.clone();
        // Out of scope, a replica counts as done: the plan leaves it be.
        let mut view = self.routing.clone();
        if let Some(scope) = scope {
            for b in &mut view.backends {
                if !scope.contains(&b.name) {
                    b.digest = live.digest.clone();
                }
            }
        }
        // The way back is never a canary: the previous version was live.
        let shape = Shape {
            strategy: match self.shape.strategy {
                Strategy::Canary => Strategy::BlueGreen,
                s => s,
            },
            ..self.shape.clone()
        };
        let plan = strategy::plan(&self.service.name, &view, Some(&live.digest), shape);
        self.plan.colour = plan.colour;
        let steps: Vec<Step> = plan
            .steps
            .into_iter()
            .filter(|s| {
                !matches!(
                    s,
                    Step::Resolving
                        | Step::Pulling
                        | Step::Releasing
                        | Step::PreSwitch { .. }
                        | Step::Pruning
                        | Step::Monitoring { .. }
                )
            })
            .collect();
        let replaced = steps
            .iter()
            .map(|s| match s {
                Step::Starting { slots, .. } => slots.len(),
                _ => 0,
            })
            .sum();
        for step in &steps {
            self.begin(step);
            if let Err(stop) = self.step(step).await {
                // What the way back started and never routed goes too.
                self.remove_unrouted().await;
                return Err(stop_text(stop));
            }
        }
        self.record(self.inner.store.set_live(&Live {
            routing: Some(self.routing.clone()),
            ..live
        }));
        Ok(replaced)
    }

    fn begin(&self, step: &Step) {
        self.record(
            self.inner
                .store
                .begin_step(self.deployment.id, step, &self.service.name),
        );
    }

    /// The store failed: best effort to leave nothing half done behind.
    pub async fn abandon(&mut self) {
        if self.routing.backends == self.original.backends {
            self.remove_started().await;
        }
    }
}

/// How often connections still open to old replicas are counted.
const LONG_LIVED_POLL: std::time::Duration = std::time::Duration::from_millis(250);

/// What changed underneath the routing: routed replicas (by ID) that no
/// longer run, and running replicas of the routed colour it lacks.
#[derive(Debug, Clone)]
pub(crate) struct Drift {
    pub gone: Vec<String>,
    pub new: Vec<Replica>,
}

impl Drift {
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if !self.gone.is_empty() {
            parts.push(format!(
                "{} routed task(s) no longer run ({})",
                self.gone.len(),
                self.gone.join(", ")
            ));
        }
        if !self.new.is_empty() {
            parts.push(format!(
                "{} running task(s) not routed ({})",
                self.new.len(),
                self.new
                    .iter()
                    .map(|r| format!("{} at {}", r.name, r.address.as_deref().unwrap_or("-")))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        format!("changed underneath: {}", parts.join("; "))
    }
}

/// How `replicas` (as the engine lists them now) differ from what `routing`
/// sends traffic to, among the routed colour's; `None` when they agree or
/// nothing is routed. Pure.
pub(crate) fn drift(routing: &Routing, replicas: &[Replica]) -> Option<Drift> {
    let colour = routing.colour()?;
    let live: Vec<&Replica> = replicas
        .iter()
        .filter(|r| r.running && r.colour == Some(colour) && r.address.is_some())
        .collect();
    let gone: Vec<String> = routing
        .backends
        .iter()
        .filter(|b| !live.iter().any(|r| r.id == b.id))
        .map(|b| b.id.clone())
        .collect();
    let new: Vec<Replica> = live
        .iter()
        .filter(|r| !routing.backends.iter().any(|b| b.id == r.id))
        .map(|r| (*r).clone())
        .collect();
    (!gone.is_empty() || !new.is_empty()).then_some(Drift { gone, new })
}

/// Tries of one stop before it is reported as failed.
const STOP_TRIES: usize = 3;

fn stop_text(stop: Stop) -> String {
    match stop {
        Stop::Fail(f) => f.error,
        Stop::Done(state) => format!("ended as {state}"),
    }
}

fn attempt_error(detail: String, transient: bool) -> SendError {
    if transient {
        SendError::retry(detail)
    } else {
        SendError::permanent(detail)
    }
}

/// The backends a deployment compares: the ones it started, and the ones
/// routed before it began.
struct Sides {
    new: HashSet<String>,
    old: HashSet<String>,
}

/// Reads the access log every `interval` for `duration`, and fails when the
/// new replicas answer server errors clearly more often than the old ones (a
/// one-sided Fisher exact test over the deployment so far).
async fn watch_errors(
    traffic: Option<&mut (AccessLog, HashMap<String, Tally>)>,
    sides: &Sides,
    interval: std::time::Duration,
    duration: std::time::Duration,
    stop: &CancellationToken,
) -> Result<(), Stop> {
    let Some((log, seen)) = traffic else {
        return Ok(());
    };
    let end = Instant::now() + duration;
    // The test runs at every look over the data so far: the 1% error rate
    // of a false alarm is shared among the looks of the window (Bonferroni).
    let looks = (duration.as_millis() / interval.as_millis().max(1)) as f64 + 1.0;
    let alpha = FALSE_ALARM / looks;
    // A new replica that got an address an old one had (Docker reuses them)
    // cannot be told apart from it in the log: neither side counts it.
    let shared: HashSet<&String> = sides.new.intersection(&sides.old).collect();
    loop {
        match log.read() {
            Ok(more) => {
                for (addr, t) in more {
                    seen.entry(addr).or_default().add(&t);
                }
            }
            Err(e) => warn!(error = %e, "reading nginx.access_log"),
        }
        let (mut new, mut old) = (Tally::default(), Tally::default());
        for (addr, t) in seen.iter().filter(|(a, _)| !shared.contains(a)) {
            if sides.new.contains(addr) {
                new.add(t);
            } else if sides.old.contains(addr) {
                old.add(t);
            }
        }
        if let Some(p) = traffic::clearly_worse(&new, &old, ERROR_FLOOR, alpha) {
            return Err(fail(
                FailureKind::Errors,
                format!(
                    "the new replicas answered {} of {} requests through nginx with a 5xx ({:.1}%), the old ones {} of {} ({:.1}%): one-sided Fisher exact p = {p:.1e} < {alpha:.1e} (1% over {looks} looks)",
                    new.errors,
                    new.requests,
                    100.0 * new.error_rate(),
                    old.errors,
                    old.requests,
                    100.0 * old.error_rate()
                ),
            ));
        }
        let now = Instant::now();
        if now >= end {
            return Ok(());
        }
        tokio::select! {
            _ = tokio::time::sleep(interval.min(end - now)) => {}
            _ = stop.cancelled() => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(id: &str, colour: Colour, slot: u32, running: bool) -> Replica {
        Replica {
            id: id.into(),
            name: format!("web-{colour}-{slot}"),
            colour: Some(colour),
            slot: Some(slot),
            deployment: Some(1),
            digest: Some("sha256:a".into()),
            image_id: "sha256:i".into(),
            running,
            state: if running { "running" } else { "shutdown" }.into(),
            address: Some(format!("127.0.0.1:{}", 30000 + slot)),
        }
    }

    #[test]
    fn drift_is_the_routed_colour_s_dead_and_unrouted_tasks() {
        let mut b1 = Backend::example("web-blue-1", 1, Colour::Blue, "sha256:a");
        b1.id = "t1".into();
        let mut b2 = Backend::example("web-blue-2", 2, Colour::Blue, "sha256:a");
        b2.id = "t2".into();
        let routing = Routing::empty("web").next(vec![b1, b2]);
        // Everything as routed; the other colour's tasks never count.
        let same = [
            task("t1", Colour::Blue, 1, true),
            task("t2", Colour::Blue, 2, true),
            task("g1", Colour::Green, 1, true),
        ];
        assert!(drift(&routing, &same).is_none());
        // Task 2 replaced by Swarm: the old one gone, the new one unrouted.
        let replaced = [
            task("t1", Colour::Blue, 1, true),
            task("t2", Colour::Blue, 2, false),
            task("t3", Colour::Blue, 2, true),
        ];
        let d = drift(&routing, &replaced).unwrap();
        assert_eq!(d.gone, ["t2"]);
        assert_eq!(d.new.len(), 1);
        assert_eq!(d.new[0].id, "t3");
        assert!(d.describe().contains("web-blue-2 at 127.0.0.1:30002"));
        // Not yet replaced: only the dead one leaves.
        let d = drift(&routing, &replaced[..2]).unwrap();
        assert_eq!(d.gone, ["t2"]);
        assert!(d.new.is_empty());
        // Nothing routed: nothing to follow.
        assert!(drift(&Routing::empty("web"), &same).is_none());
    }
}
