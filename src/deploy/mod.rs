//! Deployments: one queue and one worker per service, so a service never has two
//! deployments in flight, while different services deploy in parallel.
//!
//! - [`strategy`]: a deployment as a plan of steps (blue-green, rolling), pure.
//! - [`driver`]: walks a plan, records each step, unwinds on failure.
//! - [`steps`]: what each step does, against the runtime and nginx.
//! - [`health`]: the health gate, the soak and the monitor of new replicas.
//! - [`hooks`]: an operator's host commands at points of a deployment, bounded in time.
//! - [`intake`]: what a webhook push means (ignored, stale, duplicate, queued).
//! - [`reconcile`]: on start, make the store agree with nginx and the runtime.
//! - [`soaks`]: the soaks an operator's rollback can end early.
//! - [`canary`]: a canary step driven (split, bake, decide) and the running
//!   canaries' status and operator commands.
//! - `watch`: change underneath (Swarm moving tasks): nginx follows, recorded.

pub mod canary;
mod driver;
pub mod health;
pub mod hooks;
pub mod intake;
mod reconcile;
pub mod soaks;
mod steps;
pub mod strategy;
mod watch;

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::config::live::{Live, Loaded};
use crate::config::Config;
use crate::domain::deployment::Trigger;
use crate::domain::plan::Strategy;
use crate::notify::Notifier;
use crate::proxy::Nginx;
use crate::registry;
use crate::runtime::Runtime;
use crate::store::{NewDeployment, Store, StoreError};

pub use crate::domain::deployment::{Colour, State};

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("no service named {0:?} in the config")]
    UnknownService(String),
    #[error("{0}")]
    BadRequest(String),
    /// Not now (no canary running, or it is ending already).
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub(crate) struct Inner {
    /// The running config; a deployment takes a snapshot when it starts.
    pub config: Live,
    pub store: Store,
    pub runtime: Runtime,
    pub nginx: Nginx,
    pub notifier: Notifier,
    pub soaks: soaks::Soaks,
    pub canaries: canary::Canaries,
    /// One reload at a time.
    pub reloading: std::sync::Mutex<()>,
}

/// How a rollback request was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rollback {
    /// The deployment still soaking switches back to the colour still running.
    Instant(i64),
    /// A new deployment of the previous digest, through the health gate.
    Deployment(i64),
}

#[derive(Debug, thiserror::Error)]
pub enum RollbackError {
    #[error("no service named {0:?} in the config")]
    UnknownService(String),
    /// Nothing to go back to, with the reason.
    #[error("{0}")]
    Nothing(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Clone)]
pub struct Deployer {
    inner: Arc<Inner>,
    queues: Arc<std::sync::Mutex<HashMap<String, mpsc::UnboundedSender<i64>>>>,
}

/// What a reload changed.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Reloaded {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
    /// Unix milliseconds.
    pub loaded_at: i64,
    pub file_digest: String,
}

/// Sections a running greenlight cannot take over without a restart: the
/// address it listens on, its state file, the admin token the server holds,
/// the Docker engine and nginx it drives.
fn needs_restart(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut out = Vec::new();
    let (a, b) = (&old.server, &new.server);
    if a.listen != b.listen
        || a.state != b.state
        || a.admin_token != b.admin_token
        || a.body_limit != b.body_limit
        || a.trusted_proxies != b.trusted_proxies
    {
        out.push("[server]");
    }
    if format!("{:?}", old.docker) != format!("{:?}", new.docker) {
        out.push("[docker]");
    }
    if format!("{:?}", old.nginx) != format!("{:?}", new.nginx) {
        out.push("[nginx]");
    }
    // The engine's runtime is made once, at start.
    if format!("{:?}", old.runtime) != format!("{:?}", new.runtime) {
        out.push("[runtime]");
    }
    out
}

/// A worker: runs `service`'s deployments one at a time, in order.
fn spawn_worker(inner: &Arc<Inner>) -> mpsc::UnboundedSender<i64> {
    let (tx, mut rx) = mpsc::unbounded_channel::<i64>();
    let inner = inner.clone();
    tokio::spawn(async move {
        while let Some(id) = rx.recv().await {
            driver::run(&inner, id).await;
        }
    });
    tx
}

impl Deployer {
    /// Reconciles every service with what the runtime and nginx say, then
    /// starts one worker per service.
    pub async fn start(live: Live, store: Store, runtime: Runtime, nginx: Nginx) -> Deployer {
        let config = live.get();
        let notifier = Notifier::new(&config, store.clone());
        let inner = Arc::new(Inner {
            config: live,
            store,
            runtime,
            nginx,
            notifier,
            soaks: soaks::Soaks::default(),
            canaries: canary::Canaries::default(),
            reloading: std::sync::Mutex::new(()),
        });
        // Outcome messages a crash or stop left owed go out first.
        inner.notifier.resume();
        let requeue = reconcile::run(&inner).await;
        let mut queues = HashMap::new();
        for service in &config.services {
            queues.insert(service.name.clone(), spawn_worker(&inner));
        }
        let deployer = Deployer {
            inner,
            queues: Arc::new(std::sync::Mutex::new(queues)),
        };
        for id in requeue {
            if let Ok(Some(d)) = deployer.inner.store.deployment(id) {
                deployer.enqueue(&d.service, id);
            }
        }
        watch::spawn(deployer.clone());
        deployer
    }

    /// Hands a recorded deployment to its service's worker. A closed queue means
    /// shutdown: the deployment stays `received` for the next start to pick up.
    pub(crate) fn enqueue(&self, service: &str, id: i64) {
        if let Some(q) = self.queues().get(service) {
            let _ = q.send(id);
        }
    }

    fn queues(&self) -> std::sync::MutexGuard<'_, HashMap<String, mpsc::UnboundedSender<i64>>> {
        self.queues.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a new config (already read and validated): services added get a
    /// worker, removed ones lose theirs once their queue is done, changed ones
    /// deploy with it from their next deployment on (one in progress finishes
    /// with the config it started with). Refused, changing nothing, when a
    /// section that needs a restart changed.
    pub fn reload(&self, loaded: Loaded) -> Result<Reloaded, String> {
        let old = self.inner.config.get();
        let new = loaded.config.clone();
        let restart = needs_restart(&old, &new);
        if !restart.is_empty() {
            return Err(format!(
                "{} changed, which a running greenlight cannot take over: restart it to apply \
                 the file (nothing was reloaded; the running config stays)",
                restart.join(", ")
            ));
        }
        let name = |s: &crate::config::ServiceConfig| s.name.clone();
        let mut out = Reloaded {
            added: new
                .services
                .iter()
                .filter(|s| old.service(&s.name).is_none())
                .map(name)
                .collect(),
            removed: old
                .services
                .iter()
                .filter(|s| new.service(&s.name).is_none())
                .map(name)
                .collect(),
            changed: new
                .services
                .iter()
                .filter(|s| {
                    old.service(&s.name)
                        .is_some_and(|o| format!("{o:?}") != format!("{s:?}") || o.env.0 != s.env.0)
                })
                .map(name)
                .collect(),
            loaded_at: loaded.loaded_at,
            file_digest: loaded.file_digest.clone(),
        };
        out.changed.sort();
        self.inner.notifier.reconfigure(&new);
        self.inner.config.set(loaded);
        let mut queues = self.queues();
        for s in &out.added {
            queues.insert(s.clone(), spawn_worker(&self.inner));
        }
        for s in &out.removed {
            // Its worker ends after what is already queued (which finds no
            // service and is left as received).
            queues.remove(s);
        }
        Ok(out)
    }

    /// Reads the config file again and takes it (see [`Deployer::reload`]);
    /// a file that does not read or validate is refused with its error.
    pub fn reload_file(&self) -> Result<Reloaded, String> {
        let _one_at_a_time = self
            .inner
            .reloading
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let path = self.inner.config.loaded().path.clone();
        if path.as_os_str().is_empty() {
            return Err("this greenlight was not started from a config file".into());
        }
        let loaded = Loaded::read(&path)
            .map_err(|e| format!("{e} (nothing was reloaded; the running config stays)"))?;
        self.reload(loaded)
    }

    /// The running config and where it came from.
    pub fn loaded(&self) -> Arc<Loaded> {
        self.inner.config.loaded()
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The config as it is now (a snapshot: a reload does not change it).
    pub fn config(&self) -> Arc<Config> {
        self.inner.config.get()
    }

    pub fn live_config(&self) -> Live {
        self.inner.config.clone()
    }

    /// A webhook delivery was recorded (ledger.rs, after its commit): its new
    /// deployments go to their queues, and the queued ones it superseded are
    /// over (their outcome is notified).
    pub fn admitted(&self, admitted: &intake::Admitted) {
        for id in &admitted.superseded {
            self.inner.notifier.finished(*id);
        }
        for (service, id) in &admitted.queued {
            self.enqueue(service, *id);
        }
    }

    pub fn runtime(&self) -> &Runtime {
        &self.inner.runtime
    }

    pub fn nginx(&self) -> &Nginx {
        &self.inner.nginx
    }

    /// Records an operator's deployment of `tag` or `digest` as `received`
    /// and queues it; returns its id.
    pub fn submit(
        &self,
        service: &str,
        tag: Option<String>,
        digest: Option<String>,
        strategy: Option<Strategy>,
    ) -> Result<i64, SubmitError> {
        if !self.queues().contains_key(service) {
            return Err(SubmitError::UnknownService(service.into()));
        }
        if strategy == Some(Strategy::Canary) && self.inner.config.get().nginx.access_log.is_none()
        {
            return Err(SubmitError::BadRequest(
                "a canary is judged from nginx's access log: set [nginx] access_log in the config first".into(),
            ));
        }
        match (&tag, &digest) {
            (None, None) => {
                return Err(SubmitError::BadRequest(
                    "give a tag or a digest to deploy".into(),
                ))
            }
            (Some(_), Some(_)) => {
                return Err(SubmitError::BadRequest(
                    "give a tag or a digest, not both".into(),
                ))
            }
            (_, Some(d)) if !registry::is_digest(d) => {
                return Err(SubmitError::BadRequest(format!(
                    "{d:?} is not a digest like sha256:<64 hex digits>"
                )))
            }
            (Some(t), _) if !registry::valid_tag(t) => {
                return Err(SubmitError::BadRequest(format!(
                    "{t:?} is not a valid tag (letters, digits, '_', '.', '-'; at most 128)"
                )))
            }
            _ => {}
        }
        let id = self.inner.store.create_deployment(&NewDeployment {
            tag,
            digest,
            strategy,
            ..NewDeployment::operator(service, "deploy")
        })?;
        self.enqueue(service, id);
        Ok(id)
    }

    /// The service's running canary, if it has one.
    pub fn canary(&self, service: &str) -> Option<canary::Status> {
        self.inner.canaries.status(service)
    }

    /// Every running canary.
    pub fn canaries(&self) -> Vec<canary::Status> {
        self.inner.canaries.all()
    }

    /// Promotes or aborts the service's running canary; returns its deployment.
    pub fn canary_command(
        &self,
        service: &str,
        command: canary::Command,
    ) -> Result<i64, SubmitError> {
        if !self.queues().contains_key(service) {
            return Err(SubmitError::UnknownService(service.into()));
        }
        self.inner
            .canaries
            .command(service, command)
            .map_err(SubmitError::Conflict)
    }

    /// Goes back to the previous version of `service`: at once (one reload) when
    /// the last deployment is still soaking and the old colour still runs, else
    /// by deploying the previous digest with the service's strategy.
    pub async fn rollback(&self, service: &str) -> Result<Rollback, RollbackError> {
        if self.inner.config.get().service(service).is_none() {
            return Err(RollbackError::UnknownService(service.into()));
        }
        if let Some(id) = self.inner.soaks.rollback(service) {
            return Ok(Rollback::Instant(id));
        }
        let Some(live) = self.inner.store.live(service)? else {
            return Err(RollbackError::Nothing(format!(
                "nothing of {service} is live, so there is nothing to roll back from"
            )));
        };
        let Some(previous) = live.previous_digest.clone() else {
            return Err(RollbackError::Nothing(format!(
                "{service} has no previous version on record (only {} was deployed)",
                live.digest
            )));
        };
        let kept = match &live.previous_image_id {
            Some(image) => matches!(self.inner.runtime.image(image).await, Ok(Some(_))),
            None => false,
        };
        if !kept {
            return Err(RollbackError::Nothing(format!(
                "the previous image of {service} ({previous}) is no longer on this host; deploy its tag instead"
            )));
        }
        let id = self.inner.store.create_deployment(&NewDeployment {
            digest: Some(previous),
            shown_tag: live.previous_tag.clone(),
            trigger_detail: Some(serde_json::json!({
                "command": "rollback",
                "from": live.digest,
            })),
            ..NewDeployment::operator(service, "rollback")
        })?;
        self.enqueue(service, id);
        Ok(Rollback::Deployment(id))
    }
}

impl From<crate::webhook::Source> for Trigger {
    fn from(source: crate::webhook::Source) -> Trigger {
        match source {
            crate::webhook::Source::Github => Trigger::Github,
            crate::webhook::Source::Dockerhub => Trigger::Dockerhub,
            crate::webhook::Source::Registry => Trigger::Registry,
        }
    }
}
