//! One deployment, as a short story: resolve the digest, pull it, start it as the
//! idle colour, wait until it is healthy, switch nginx and prove the switch, let
//! the old workers drain, stop the old colour, prune. Each transition is written
//! to the store before the step runs.

use std::collections::HashSet;
use std::time::Instant;

use tracing::{info, warn, Instrument};

use super::health::{bound_log, HealthGate, LOG_TAIL_LINES};
use super::{prune, Inner};
use crate::config::ServiceConfig;
use crate::display::{self, short_digest};
use crate::docker::{ContainerPlan, LABEL_COLOUR, LABEL_DEPLOYMENT, LABEL_DIGEST, LABEL_SERVICE};
use crate::domain::{Colour, State};
use crate::proxy::{Previous, Upstream};
use crate::registry::{self, Repository};
use crate::retry::{Policy, SendError};
use crate::store::{now_ms, Deployment, Failure, Live};

/// Pulls of one deployment when the image vanishes right after its pull.
const PULL_TRIES: u32 = 3;

/// How a step ended when it did not simply succeed.
enum Stop {
    /// Nothing to do (the digest is already live).
    Done(State),
    /// The step failed.
    Fail(Failure),
    /// Refused: older than what is live.
    Stale(String),
}

impl From<Failure> for Stop {
    fn from(f: Failure) -> Self {
        Stop::Fail(f)
    }
}

fn fail(error: impl Into<String>) -> Stop {
    Stop::Fail(Failure {
        error: error.into(),
        ..Default::default()
    })
}

/// What the steps learn as they go.
struct Run<'a> {
    inner: &'a Inner,
    service: &'a ServiceConfig,
    deployment: Deployment,
    live: Option<Live>,
    image: String,
    digest: String,
    /// The tag deployed, as shown in status and history.
    tag: Option<String>,
    image_id: Option<String>,
    docker_healthcheck: bool,
    colour: Colour,
    container_id: Option<String>,
    address: Option<String>,
    previous: Option<Previous>,
    old_workers: Vec<u32>,
}

pub(crate) async fn run(inner: &Inner, id: i64) {
    let deployment = match inner.store.deployment(id) {
        Ok(Some(d)) => d,
        Ok(None) => return warn!(deployment = id, "queued deployment not found"),
        Err(e) => return warn!(deployment = id, error = %e, "cannot load queued deployment"),
    };
    if deployment.state != State::Received {
        return;
    }
    let span = tracing::info_span!("deploy", service = %deployment.service, deployment = id);
    if run_deployment(inner, deployment).instrument(span).await {
        // Exactly one outcome message per deployment, whatever ended it.
        inner.notifier.finished(id);
    }
}

/// Returns false when the deployment was not claimed (superseded meanwhile).
async fn run_deployment(inner: &Inner, deployment: Deployment) -> bool {
    let id = deployment.id;
    let Some(service) = inner.config.service(&deployment.service) else {
        return false;
    };
    let live = inner.store.live(&service.name).ok().flatten();
    let mut run = Run {
        inner,
        service,
        live,
        image: String::new(),
        digest: String::new(),
        tag: None,
        image_id: None,
        docker_healthcheck: false,
        colour: Colour::Blue,
        container_id: None,
        address: None,
        previous: None,
        old_workers: Vec::new(),
        deployment,
    };
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + service.rollout.deadline;
    info!(
        tag = run.deployment.requested_tag.as_deref().unwrap_or("-"),
        digest = run.deployment.requested_digest.as_deref().unwrap_or("-"),
        trigger = %run.deployment.trigger,
        "Deploying"
    );
    let mut state = State::Received;
    let mut step_started = Instant::now();
    loop {
        let mut next = state.next();
        // A first deployment has nothing to go back to: no soak.
        if next == State::Soaking && (service.rollout.soak.is_zero() || run.live.is_none()) {
            next = next.next();
        }
        let recorded = if state == State::Received {
            // Claimed only if still queued: a newer push may have superseded it.
            match inner.store.claim(id, next) {
                Ok(true) => {
                    inner.notifier.started(id);
                    Ok(())
                }
                Ok(false) => {
                    info!("superseded before it started");
                    return false;
                }
                Err(e) => Err(e),
            }
        } else {
            inner.store.transition(id, next)
        };
        if let Err(e) = recorded {
            warn!(error = %e, "cannot record transition; abandoning the deployment");
            run.abandon(state).await;
            return true;
        }
        info!(
            step_ms = step_started.elapsed().as_millis() as u64,
            "{state} -> {next}"
        );
        step_started = Instant::now();
        state = next;
        if state.is_terminal() {
            info!(
                digest = %run.digest,
                colour = %run.colour,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "Deployed"
            );
            return true;
        }
        pause_if_asked(state).await;
        // Before the switch the deadline cuts a step off and the deployment
        // unwinds. From the switch on, every step is bounded on its own (nginx
        // calls, verify_timeout, the soak, drain_timeout, stop_grace): cutting
        // one in the middle could leave nginx half switched.
        let outcome = if !state.cut_by_deadline() {
            run.step(state).await
        } else {
            match tokio::time::timeout_at(deadline, run.step(state)).await {
                Ok(outcome) => outcome,
                Err(_) => Err(fail(format!(
                    "cut off at {state}: the deployment ran past its deadline of {} (rollout.deadline)",
                    display::span(service.rollout.deadline)
                ))),
            }
        };
        match outcome {
            Ok(()) => {}
            Err(Stop::Done(end)) => {
                let _ = inner.store.transition(id, end);
                info!("{state} -> {end}");
                return true;
            }
            Err(Stop::Stale(why)) => {
                let mut failure = Failure {
                    step: Some(state),
                    error: why,
                    ..Default::default()
                };
                run.unwind(state, &mut failure).await;
                warn!(error = %failure.error, "{state} -> stale");
                let _ = inner.store.finish(id, State::Stale, &failure);
                return true;
            }
            Err(Stop::Fail(mut failure)) => {
                failure.step = Some(state);
                let end = run.unwind(state, &mut failure).await;
                warn!(step = %state, error = %failure.error, "{state} -> {end}");
                if let Err(e) = inner.store.finish(id, end, &failure) {
                    warn!(error = %e, "cannot record the failure");
                }
                return true;
            }
        }
    }
}

/// Test hook for crash tests: `GREENLIGHT_TEST_PAUSE_AT=<step>` makes every
/// deployment stop at that step (after recording it) until the process is
/// killed. Unset in production; read once.
async fn pause_if_asked(state: State) {
    static AT: std::sync::OnceLock<Option<State>> = std::sync::OnceLock::new();
    let at = AT.get_or_init(|| {
        std::env::var("GREENLIGHT_TEST_PAUSE_AT")
            .ok()
            .and_then(|s| s.parse().ok())
    });
    if *at == Some(state) {
        warn!(
            "GREENLIGHT_TEST_PAUSE_AT={state}: pausing this deployment until greenlight is killed"
        );
        std::future::pending::<()>().await;
    }
}

impl Run<'_> {
    async fn step(&mut self, state: State) -> Result<(), Stop> {
        match state {
            State::Resolving => self.resolve().await,
            State::Pulling => self.pull().await,
            State::Starting => self.start().await,
            State::HealthGate => self.health_gate().await,
            State::Switching => self.switch().await,
            State::Verifying => self.verify().await,
            State::Soaking => self.soak().await,
            State::Draining => self.drain().await,
            State::StoppingOld => self.stop_old().await,
            State::Pruning => self.prune().await,
            _ => Ok(()),
        }
    }

    fn note(&self, text: &str) {
        let _ = self.inner.store.note(self.deployment.id, text);
    }

    async fn resolve(&mut self) -> Result<(), Stop> {
        let repo = Repository::parse(&self.service.image);
        let tag = self.deployment.requested_tag.clone();
        if let Some(t) = &tag {
            if self.deployment.trigger != "operator" && !self.service.tag_allowed(t) {
                return Err(fail(format!(
                    "tag {t:?} does not match the service's tags {:?}",
                    self.service.tags
                )));
            }
        }
        self.digest = match (&self.deployment.requested_digest, &tag) {
            (Some(d), _) => d.clone(),
            (None, Some(t)) if !self.service.pull => {
                let local = format!("{}:{t}", self.service.image);
                self.inner
                    .engine
                    .inspect_image(&local)
                    .await
                    .map_err(|e| fail(e.to_string()))?
                    .ok_or_else(|| {
                        fail(format!(
                            "no local image {local} (the service has pull = false: build or load it on this host)"
                        ))
                    })?
                    .id
            }
            (None, Some(t)) => {
                let cfg = self.inner.config.registry_for(&repo.host);
                self.with_retries("resolving the tag", || async {
                    registry::resolve_tag(&repo, t, cfg).await.map_err(|e| {
                        let transient = matches!(e, registry::RegistryError::Unavailable { .. });
                        attempt_error(e.to_string(), transient)
                    })
                })
                .await?
            }
            (None, None) => return Err(fail("neither a tag nor a digest was requested")),
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
        // A rollback names the tag it goes back to, for status and history.
        let shown_tag = tag.clone().or_else(|| {
            self.deployment
                .trigger_detail
                .as_ref()
                .and_then(|d| d.get("previous_tag"))
                .and_then(|t| t.as_str())
                .map(str::to_string)
        });
        self.tag = shown_tag;
        let _ = self.inner.store.set_target(
            self.deployment.id,
            self.tag.as_deref(),
            &self.digest,
            &self.image,
            self.live.as_ref(),
        );
        if let Some(live) = &self.live {
            if live.digest == self.digest && self.live_container_running().await {
                return Err(Stop::Done(State::AlreadyLive));
            }
        }
        Ok(())
    }

    async fn live_container_running(&self) -> bool {
        let Some(id) = self.live.as_ref().and_then(|l| l.container_id.clone()) else {
            return false;
        };
        matches!(self.inner.engine.status(&id).await, Ok(Some(s)) if s.running)
    }

    async fn pull(&mut self) -> Result<(), Stop> {
        let repo = Repository::parse(&self.service.image);
        let creds = registry::credentials(self.inner.config.registry_for(&repo.host));
        let engine = &self.inner.engine;
        let inspect = || async {
            engine
                .inspect_image(&self.image)
                .await
                .map_err(|e| fail(e.to_string()))
        };
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
            let limit = self.inner.config.pull.timeout;
            self.with_retries("pulling", || async {
                match tokio::time::timeout(limit, engine.pull(&self.image, creds.clone())).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => {
                        let text = e.to_string();
                        let transient = pull_error_is_transient(&text);
                        Err(attempt_error(text, transient))
                    }
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
            return Err(fail(format!(
                "{} is not present on this host{}",
                self.image,
                if self.service.pull {
                    " after the pull"
                } else {
                    " (pull = false)"
                }
            )));
        };
        self.refuse_if_older_than_live(info.created.as_deref())
            .await?;
        self.docker_healthcheck = info.has_healthcheck;
        let _ = self.inner.store.set_image_id(self.deployment.id, &info.id);
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
        let cfg = &self.inner.config.pull;
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
                return Err(fail(if n > 1 {
                    format!("{} (gave up after {n} tries)", e.detail)
                } else {
                    e.detail
                }));
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
        if self.deployment.trigger == "operator" || self.deployment.pushed_at.is_some() {
            return Ok(());
        }
        let Some(live_image) = self.live.as_ref().and_then(|l| l.image_id.clone()) else {
            return Ok(());
        };
        let Ok(Some(live)) = self.inner.engine.inspect_image(&live_image).await else {
            return Ok(());
        };
        let parse = |t: Option<&str>| t.and_then(crate::webhook::parse_time);
        match (parse(created), parse(live.created.as_deref())) {
            (Some(new), Some(old)) if new < old => Err(Stop::Stale(format!(
                "the image was created before the live one ({} < {}); deploy it by hand to force it",
                created.unwrap_or_default(),
                live.created.unwrap_or_default()
            ))),
            _ => Ok(()),
        }
    }

    async fn start(&mut self) -> Result<(), Stop> {
        let engine = &self.inner.engine;
        let svc = self.service;
        self.colour = self
            .live
            .as_ref()
            .map(|l| l.colour.other())
            .unwrap_or(Colour::Blue);
        let name = format!("{}-{}", svc.name, self.colour);
        engine
            .ensure_network(&svc.network)
            .await
            .map_err(|e| fail(format!("network {}: {e}", svc.network)))?;
        // A stale container of the idle colour (a failed or interrupted run).
        for c in engine
            .service_containers(&svc.name)
            .await
            .map_err(|e| fail(e.to_string()))?
        {
            let is_live = self.live.as_ref().and_then(|l| l.container_id.as_deref()) == Some(&c.id);
            if c.name == name && !is_live {
                engine
                    .remove(&c.id)
                    .await
                    .map_err(|e| fail(format!("removing stale {name}: {e}")))?;
            }
        }
        let mut env: Vec<String> = Vec::new();
        if let Some(path) = &svc.env_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| fail(format!("env_file {}: {e}", path.display())))?;
            env.extend(parse_env_file(&text));
        }
        env.extend(svc.env.iter().map(|(k, v)| format!("{k}={v}")));
        env.push(format!("GREENLIGHT_SERVICE={}", svc.name));
        env.push(format!("GREENLIGHT_COLOUR={}", self.colour));
        env.push(format!("GREENLIGHT_DEPLOYMENT={}", self.deployment.id));
        let labels = [
            (LABEL_SERVICE, svc.name.clone()),
            (LABEL_COLOUR, self.colour.to_string()),
            (LABEL_DEPLOYMENT, self.deployment.id.to_string()),
            (LABEL_DIGEST, self.digest.clone()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let plan = ContainerPlan {
            name: name.clone(),
            // By ID: a tag or digest reference can be removed under us (someone
            // untags the repository) between the pull and this create.
            image: self.image_id.clone().unwrap_or_else(|| self.image.clone()),
            labels,
            env,
            command: svc.command.clone(),
            binds: svc.volumes.clone(),
            network: svc.network.clone(),
            // No restarts until it has passed the gate: a crash there must leave
            // the container exited, with its real exit code, not restarting.
            restart: "no".into(),
        };
        let id = engine.create(&plan).await.map_err(|e| match &e {
            crate::docker::DockerError::Api(bollard::errors::Error::DockerResponseServerError {
                status_code: 409,
                ..
            }) => fail(format!(
                "a container named {name} exists and was not made by greenlight: rename or remove it ({e})"
            )),
            _ => fail(format!("creating {name}: {e}")),
        })?;
        self.container_id = Some(id.clone());
        let _ = self
            .inner
            .store
            .set_container(self.deployment.id, self.colour, &id, None);
        engine
            .start(&id)
            .await
            .map_err(|e| fail(format!("starting {name}: {e}")))?;
        let status = engine
            .status(&id)
            .await
            .map_err(|e| fail(e.to_string()))?
            .ok_or_else(|| fail(format!("{name} vanished after start")))?;
        let ip = status.ips.get(&svc.network).cloned().ok_or_else(|| {
            fail(format!(
                "{name} has no address on network {} (state: {})",
                svc.network, status.status
            ))
        })?;
        let address = format!("{ip}:{}", svc.port);
        let _ =
            self.inner
                .store
                .set_container(self.deployment.id, self.colour, &id, Some(&address));
        self.note(&format!("{name} at {address}"));
        self.address = Some(address);
        Ok(())
    }

    /// The health checks of the new container (the gate, then the soak).
    fn gate(&self) -> HealthGate<'_> {
        HealthGate {
            engine: &self.inner.engine,
            config: &self.service.health,
            container_id: self.container_id.as_deref().unwrap_or_default(),
            address: self.address.as_deref().unwrap_or_default(),
            docker_healthcheck: self.docker_healthcheck,
        }
    }

    async fn health_gate(&mut self) -> Result<(), Stop> {
        match self.gate().wait().await {
            Ok(probes) => {
                let id = self.container_id.as_deref().unwrap_or_default();
                self.inner
                    .engine
                    .set_restart_policy(id, &self.service.restart)
                    .await
                    .map_err(|e| {
                        fail(format!(
                            "setting the restart policy {:?}: {e}",
                            self.service.restart
                        ))
                    })?;
                self.note(&format!("healthy after {probes} probes"));
                Ok(())
            }
            Err(g) => Err(Stop::Fail(Failure {
                error: g.error,
                exit_code: g.exit_code,
                ..Default::default()
            })),
        }
    }

    fn upstream(&self) -> Upstream {
        Upstream {
            service: self.service.name.clone(),
            colour: self.colour,
            address: self.address.clone().unwrap_or_default(),
            deployment: self.deployment.id,
            digest: self.digest.clone(),
        }
    }

    async fn switch(&mut self) -> Result<(), Stop> {
        let nginx = &self.inner.nginx;
        self.old_workers = nginx.workers().await.map_err(|e| fail(e.to_string()))?;
        let previous = nginx
            .write(&self.upstream())
            .map_err(|e| fail(e.to_string()))?;
        if let Err(e) = nginx.test().await {
            let _ = nginx.restore(&self.service.name, &previous);
            return Err(fail(format!(
                "{e} (the previous upstream file is back in place)"
            )));
        }
        // A failed reload leaves the master on its old config: put the file back.
        if let Err(e) = nginx.reload().await {
            let _ = nginx.restore(&self.service.name, &previous);
            return Err(fail(format!(
                "{e} (the previous upstream file is back in place)"
            )));
        }
        self.previous = Some(previous);
        Ok(())
    }

    async fn verify(&mut self) -> Result<(), Stop> {
        let address = self.address.clone().unwrap_or_default();
        self.inner
            .nginx
            .verify(&self.service.name, &self.service.health.path, &address)
            .await
            .map_err(|e| fail(e.to_string()))?;
        let previous = self.live.clone();
        let live = Live {
            service: self.service.name.clone(),
            colour: self.colour,
            tag: self.tag.clone(),
            digest: self.digest.clone(),
            image: self.image.clone(),
            image_id: self.image_id.clone(),
            container_id: self.container_id.clone(),
            address,
            deployment_id: Some(self.deployment.id),
            since: now_ms(),
            previous_tag: previous.as_ref().and_then(|p| p.tag.clone()),
            previous_digest: previous.as_ref().map(|p| p.digest.clone()),
            previous_image_id: previous.as_ref().and_then(|p| p.image_id.clone()),
            pushed_at: self.deployment.pushed_at,
        };
        self.inner
            .store
            .set_live(&live)
            .map_err(|e| fail(e.to_string()))?;
        self.note(&format!(
            "nginx routes {} to {}",
            self.service.name, live.address
        ));
        Ok(())
    }

    async fn soak(&mut self) -> Result<(), Stop> {
        let soak = self.service.rollout.soak;
        let guard = self
            .inner
            .soaks
            .open(&self.service.name, self.deployment.id);
        let watched = self.gate().soak(soak, &guard.stop).await;
        if guard.close() {
            return Err(fail("an operator asked for a rollback during the soak"));
        }
        match watched {
            Ok(probes) => {
                self.note(&format!(
                    "healthy through the {} soak ({probes} probes)",
                    display::span(soak)
                ));
                Ok(())
            }
            Err(g) => Err(Stop::Fail(Failure {
                error: g.error,
                exit_code: g.exit_code,
                ..Default::default()
            })),
        }
    }

    async fn drain(&mut self) -> Result<(), Stop> {
        if self.old_workers.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        match self.inner.nginx.wait_drained(&self.old_workers).await {
            Ok(0) => self.note(&format!(
                "{} old nginx workers exited after {} ms",
                self.old_workers.len(),
                started.elapsed().as_millis()
            )),
            Ok(left) => {
                warn!(left, "old nginx workers still running after drain_timeout");
                self.note(&format!(
                    "{left} old nginx workers still running after drain_timeout {:?}",
                    self.inner.config.nginx.drain_timeout
                ))
            }
            Err(e) => self.note(&format!("cannot watch nginx workers: {e}")),
        }
        Ok(())
    }

    async fn stop_old(&mut self) -> Result<(), Stop> {
        let engine = &self.inner.engine;
        let containers = match engine.service_containers(&self.service.name).await {
            Ok(c) => c,
            Err(e) => {
                self.note(&format!(
                    "cannot list containers to stop the old colour: {e}; the next start removes it"
                ));
                return Ok(());
            }
        };
        let mut stopped = Vec::new();
        for c in containers {
            if Some(&c.id) == self.container_id.as_ref() {
                continue;
            }
            if let Err(e) = engine.stop(&c.id, self.service.rollout.stop_grace).await {
                warn!(container = %c.name, error = %e, "stopping the old colour");
            }
            if let Err(e) = engine.remove(&c.id).await {
                warn!(container = %c.name, error = %e, "removing the old colour");
            }
            stopped.push(c.name);
        }
        if !stopped.is_empty() {
            self.note(&format!("stopped {}", stopped.join(", ")));
        }
        Ok(())
    }

    async fn prune(&mut self) -> Result<(), Stop> {
        let engine = &self.inner.engine;
        let images = match engine.images().await {
            Ok(i) => i,
            Err(e) => {
                self.note(&format!("cannot list images: {e}"));
                return Ok(());
            }
        };
        // Never the live image, the rollback image, or any image a container of
        // any greenlight service uses.
        let mut protected: HashSet<String> = HashSet::new();
        protected.extend(self.image_id.clone());
        protected.extend(self.live.as_ref().and_then(|l| l.image_id.clone()));
        for svc in &self.inner.config.services {
            if let Ok(Some(l)) = self.inner.store.live(&svc.name) {
                protected.extend(l.image_id);
                protected.extend(l.previous_image_id);
            }
            if let Ok(cs) = engine.service_containers(&svc.name).await {
                protected.extend(cs.into_iter().map(|c| c.image_id));
            }
        }
        let repo = Repository::parse(&self.service.image);
        let doomed = prune::select(&images, &repo, self.service.rollout.keep_images, &protected);
        let mut removed = Vec::new();
        for image in doomed {
            let mut all = true;
            for reference in prune::references(image, &repo) {
                if let Err(e) = engine.remove_image_ref(reference).await {
                    warn!(image = %reference, error = %e, "pruning image");
                    all = false;
                }
            }
            if all {
                removed.push(short_digest(&image.id).to_string());
            }
        }
        self.note(&if removed.is_empty() {
            "nothing to prune".to_string()
        } else {
            format!("removed {}", removed.join(", "))
        });
        Ok(())
    }

    /// Leaves things as they were before this deployment; returns how it ended.
    async fn unwind(&mut self, state: State, failure: &mut Failure) -> State {
        if let Some(id) = self.container_id.clone() {
            let tail = self.inner.engine.log_tail(&id, LOG_TAIL_LINES).await;
            if !tail.trim().is_empty() {
                failure.log_tail = Some(bound_log(&tail));
            }
        }
        let mut end = State::Failed;
        if state.past_switch() {
            if let Some(previous) = self.previous.take() {
                end = State::RolledBack;
                let nginx = &self.inner.nginx;
                // The workers routing to the new colour now; after switching back
                // they still finish their requests to it, so it must outlive them.
                let serving_new = nginx.workers().await.unwrap_or_default();
                let back = match nginx.restore(&self.service.name, &previous) {
                    Ok(()) => nginx.reload().await.map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                if back.is_ok() {
                    if let Ok(left) = nginx.wait_drained(&serving_new).await {
                        if left > 0 {
                            warn!(
                                left,
                                "workers still routing to the new colour after drain_timeout"
                            );
                        }
                    }
                }
                match back {
                    Ok(()) => {
                        if let Some(live) = &self.live {
                            let _ = self.inner.store.set_live(live);
                        } else {
                            let _ = self.inner.store.clear_live(&self.service.name);
                        }
                        failure
                            .error
                            .push_str("; nginx was switched back to the previous upstream");
                    }
                    Err(e) => failure
                        .error
                        .push_str(&format!("; switching nginx back failed too: {e}")),
                }
            }
        }
        if let Some(id) = &self.container_id {
            if let Err(e) = self.inner.engine.remove(id).await {
                warn!(error = %e, "removing the new container");
            }
        }
        end
    }

    /// The store failed: best effort to leave nothing half-done behind.
    async fn abandon(&mut self, state: State) {
        let mut failure = Failure::default();
        if !state.past_switch() {
            self.unwind(state, &mut failure).await;
        }
    }
}

fn attempt_error(detail: String, transient: bool) -> SendError {
    if transient {
        SendError::retry(detail)
    } else {
        SendError::permanent(detail)
    }
}

/// Docker reports pull failures as text. The registry's refusals (unknown
/// manifest or tag, refused credentials, a bad reference) are final; anything
/// else (refused or reset connections, timeouts, 5xx) may pass.
fn pull_error_is_transient(text: &str) -> bool {
    let t = text.to_ascii_lowercase();
    const FINAL: [&str; 8] = [
        "manifest unknown",
        "not found",
        "unauthorized",
        "denied",
        "authentication required",
        "invalid reference",
        "no basic auth credentials",
        "forbidden",
    ];
    !FINAL.iter().any(|f| t.contains(f))
}

/// `KEY=VALUE` lines; blank lines and `#` comments skipped.
fn parse_env_file(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && l.contains('='))
        .map(|l| l.strip_prefix("export ").unwrap_or(l).to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_files_skip_comments_and_blank_lines() {
        let env = parse_env_file("# c\nA=1\n\nexport B=two words\nnonsense\n");
        assert_eq!(env, vec!["A=1", "B=two words"]);
    }

    #[test]
    fn pull_errors_that_the_registry_means_are_final() {
        for text in [
            "pulling x: manifest for 127.0.0.1:5000/demo@sha256:ab not found: manifest unknown: manifest unknown",
            "pulling x: pull access denied for demo, repository does not exist or may require 'docker login'",
            "pulling x: unauthorized: authentication required",
        ] {
            assert!(!pull_error_is_transient(text), "{text}");
        }
        for text in [
            "pulling x: Get \"http://127.0.0.1:5000/v2/\": dial tcp 127.0.0.1:5000: connect: connection refused",
            "pulling x: received unexpected HTTP status: 503 Service Unavailable",
            "pulling x: net/http: TLS handshake timeout",
            "pulling x: unexpected EOF",
        ] {
            assert!(pull_error_is_transient(text), "{text}");
        }
    }
}
