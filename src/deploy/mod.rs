//! Deployments: one queue and one worker per service, so a service never has two
//! deployments in flight, while different services deploy in parallel.

pub mod health;
pub mod intake;
mod pipeline;
pub mod prune;
mod reconcile;

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{mpsc, Notify};

use crate::config::Config;
use crate::docker::Engine;
use crate::notify::Notifier;
use crate::proxy::Nginx;
use crate::registry;
use crate::store::{NewDeployment, Store, StoreError};

pub use crate::domain::{Colour, State};

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("no service named {0:?} in the config")]
    UnknownService(String),
    #[error("{0}")]
    BadRequest(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a deployment asks for and who asked.
#[derive(Debug, Clone)]
pub struct Request {
    pub service: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
    /// `operator`, or the webhook source.
    pub trigger: String,
    pub trigger_detail: Option<serde_json::Value>,
    /// The ledger row that asked for it, for redeliveries by hand.
    pub delivery: Option<i64>,
}

pub(crate) struct Inner {
    pub config: Arc<Config>,
    pub store: Store,
    pub engine: Engine,
    pub nginx: Nginx,
    pub notifier: Notifier,
    pub soaks: Soaks,
}

/// Deployments in their soak, by service, so an operator's rollback can end one
/// early: nginx then switches back in one reload to the colour still running.
#[derive(Default)]
pub(crate) struct Soaks(std::sync::Mutex<HashMap<String, Soak>>);

struct Soak {
    deployment: i64,
    stop: Arc<Notify>,
    rollback: bool,
}

impl Soaks {
    /// The soak of `deployment` begins. The guard wakes it early on a rollback
    /// request and ends it when dropped, even if the soak is cut off.
    pub fn open(&self, service: &str, deployment: i64) -> SoakGuard<'_> {
        let stop = Arc::new(Notify::new());
        self.0.lock().unwrap().insert(
            service.to_string(),
            Soak {
                deployment,
                stop: stop.clone(),
                rollback: false,
            },
        );
        SoakGuard {
            soaks: self,
            service: service.to_string(),
            stop,
        }
    }

    /// Asks the soaking deployment of `service`, if any, to roll back.
    fn rollback(&self, service: &str) -> Option<i64> {
        let mut soaks = self.0.lock().unwrap();
        let soak = soaks.get_mut(service)?;
        soak.rollback = true;
        soak.stop.notify_one();
        Some(soak.deployment)
    }
}

pub(crate) struct SoakGuard<'a> {
    soaks: &'a Soaks,
    service: String,
    pub stop: Arc<Notify>,
}

impl SoakGuard<'_> {
    /// The soak ended; returns whether a rollback was asked for meanwhile.
    pub fn close(self) -> bool {
        self.soaks
            .0
            .lock()
            .unwrap()
            .get(&self.service)
            .is_some_and(|s| s.rollback)
        // (the entry goes with the guard)
    }
}

impl Drop for SoakGuard<'_> {
    fn drop(&mut self) {
        self.soaks.0.lock().unwrap().remove(&self.service);
    }
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
    /// Serialises decisions about incoming pushes (see `intake`).
    intake: Arc<std::sync::Mutex<()>>,
}

impl Deployer {
    /// Reconciles every service with what Docker and nginx say, then starts one
    /// worker per service.
    pub async fn start(config: Arc<Config>, store: Store, engine: Engine) -> Deployer {
        let nginx = Nginx::new(config.nginx.clone(), engine.clone());
        let notifier = Notifier::new(&config, store.clone());
        let inner = Arc::new(Inner {
            config: config.clone(),
            store,
            engine,
            nginx,
            notifier,
            soaks: Soaks::default(),
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
                    pipeline::run(&inner, id).await;
                }
            });
        }
        let deployer = Deployer {
            inner,
            queues: Arc::new(queues),
            intake: Arc::new(std::sync::Mutex::new(())),
        };
        for id in requeue {
            if let Ok(Some(d)) = deployer.inner.store.deployment(id) {
                deployer.enqueue(&d.service, id);
            }
        }
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

    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    pub fn nginx(&self) -> &Nginx {
        &self.inner.nginx
    }

    /// Records a deployment as `received` and queues it; returns its id.
    pub fn submit(&self, req: Request) -> Result<i64, SubmitError> {
        if !self.queues.contains_key(&req.service) {
            return Err(SubmitError::UnknownService(req.service));
        }
        match (&req.tag, &req.digest) {
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
            (Some(t), _) if !valid_tag(t) => {
                return Err(SubmitError::BadRequest(format!(
                    "{t:?} is not a valid tag (letters, digits, '_', '.', '-'; at most 128)"
                )))
            }
            _ => {}
        }
        let id = self.inner.store.create_deployment(&NewDeployment {
            service: req.service.clone(),
            trigger: req.trigger,
            trigger_detail: req.trigger_detail,
            tag: req.tag,
            digest: req.digest,
            pushed_at: None,
            delivery: req.delivery,
        })?;
        self.enqueue(&req.service, id);
        Ok(id)
    }
}

impl Deployer {
    /// Goes back to the previous version of `service`: at once (one reload) when
    /// the last deployment is still soaking and the old colour still runs, else
    /// by deploying the previous digest through the health gate and the switch.
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
            Some(image) => matches!(self.inner.engine.inspect_image(image).await, Ok(Some(_))),
            None => false,
        };
        if !kept {
            return Err(RollbackError::Nothing(format!(
                "the previous image of {service} ({previous}) is no longer on this host; deploy its tag instead"
            )));
        }
        let id = self
            .submit(Request {
                service: service.into(),
                tag: None,
                digest: Some(previous.clone()),
                trigger: "operator".into(),
                trigger_detail: Some(serde_json::json!({
                    "command": "rollback",
                    "from": live.digest,
                    "previous_tag": live.previous_tag,
                })),
                delivery: None,
            })
            .map_err(|e| match e {
                SubmitError::Store(e) => RollbackError::Store(e),
                other => RollbackError::Nothing(other.to_string()),
            })?;
        Ok(Rollback::Deployment(id))
    }
}

/// Docker's tag grammar: `[\w][\w.-]{0,127}`.
pub fn valid_tag(tag: &str) -> bool {
    let mut chars = tag.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric() || c == '_')
        && tag.len() <= 128
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-')
}

#[cfg(test)]
mod tests {
    #[test]
    fn tags_follow_dockers_grammar() {
        assert!(super::valid_tag("v1.2.3-rc_1"));
        assert!(!super::valid_tag("-v1"));
        assert!(!super::valid_tag("a:b"));
        assert!(!super::valid_tag(""));
        assert!(!super::valid_tag(&"a".repeat(129)));
    }

    #[test]
    fn a_rollback_reaches_only_the_deployment_still_soaking() {
        let soaks = super::Soaks::default();
        assert_eq!(soaks.rollback("web"), None, "nothing soaks yet");
        let guard = soaks.open("web", 7);
        assert_eq!(soaks.rollback("api"), None, "another service");
        assert_eq!(soaks.rollback("web"), Some(7));
        assert!(guard.close(), "the soak learns of the request");
        assert_eq!(soaks.rollback("web"), None, "closed");
        // A soak cut off (its future dropped) leaves nothing behind either.
        drop(soaks.open("web", 8));
        assert_eq!(soaks.rollback("web"), None);
        let quiet = soaks.open("web", 9);
        assert!(!quiet.close(), "no request, no rollback");
    }
}
