//! Deployments: one queue and one worker per service, so a service never has two
//! deployments in flight, while different services deploy in parallel.
//!
//! - [`strategy`]: a deployment as a plan of steps (blue-green, rolling), pure.
//! - [`driver`]: walks a plan, records each step, unwinds on failure.
//! - [`steps`]: what each step does, against the runtime and nginx.
//! - [`health`]: the health gate, the soak and the monitor of new replicas.
//! - [`intake`]: what a webhook push means (ignored, stale, duplicate, queued).
//! - [`reconcile`]: on start, make the store agree with nginx and the runtime.
//! - [`soaks`]: the soaks an operator's rollback can end early.
//! - `watch`: change underneath (Swarm moving tasks): nginx follows, recorded.

mod driver;
pub mod health;
pub mod intake;
mod reconcile;
pub mod soaks;
mod steps;
pub mod strategy;
mod watch;

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::config::Config;
use crate::domain::deployment::Trigger;
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
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub(crate) struct Inner {
    pub config: Arc<Config>,
    pub store: Store,
    pub runtime: Runtime,
    pub nginx: Nginx,
    pub notifier: Notifier,
    pub soaks: soaks::Soaks,
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
    queues: Arc<HashMap<String, mpsc::UnboundedSender<i64>>>,
}

impl Deployer {
    /// Reconciles every service with what the runtime and nginx say, then
    /// starts one worker per service.
    pub async fn start(
        config: Arc<Config>,
        store: Store,
        runtime: Runtime,
        nginx: Nginx,
    ) -> Deployer {
        let notifier = Notifier::new(&config, store.clone());
        let inner = Arc::new(Inner {
            config: config.clone(),
            store,
            runtime,
            nginx,
            notifier,
            soaks: soaks::Soaks::default(),
        });
        // Outcome messages a crash or stop left owed go out first.
        inner.notifier.resume();
        let requeue = reconcile::run(&inner).await;
        let mut queues = HashMap::new();
        for service in &config.services {
            let (tx, mut rx) = mpsc::unbounded_channel::<i64>();
            queues.insert(service.name.clone(), tx);
            let inner = inner.clone();
            tokio::spawn(async move {
                while let Some(id) = rx.recv().await {
                    driver::run(&inner, id).await;
                }
            });
        }
        let deployer = Deployer {
            inner,
            queues: Arc::new(queues),
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
        if let Some(q) = self.queues.get(service) {
            let _ = q.send(id);
        }
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    pub fn shared_config(&self) -> Arc<Config> {
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
    ) -> Result<i64, SubmitError> {
        if !self.queues.contains_key(service) {
            return Err(SubmitError::UnknownService(service.into()));
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
            ..NewDeployment::operator(service, "deploy")
        })?;
        self.enqueue(service, id);
        Ok(id)
    }

    /// Goes back to the previous version of `service`: at once (one reload) when
    /// the last deployment is still soaking and the old colour still runs, else
    /// by deploying the previous digest with the service's strategy.
    pub async fn rollback(&self, service: &str) -> Result<Rollback, RollbackError> {
        if self.inner.config.service(service).is_none() {
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
