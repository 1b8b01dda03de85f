//! Deployment notifications by email and Slack.
//!
//! The pipeline calls [`Notifier::started`] and [`Notifier::finished`]; both return
//! at once and the sending happens on its own task, so a slow or dead receiver
//! never delays or fails a deploy. What is sent is decided from the stored
//! deployment (its state says which event it is) and the config (which channels
//! want that event). Each attempt is recorded in the `notifications` table and
//! retried with backoff (see [`retry`]).
//!
//! - [`render`]: what a message says (pure).
//! - [`email`], [`slack`]: one attempt through each channel.
//! - [`record`]: the attempts in the store.

pub mod email;
pub mod record;
pub mod render;
pub use crate::retry;
pub mod slack;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lettre::message::Mailbox;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn, Instrument};

pub use crate::config::notify::{Event, NotifyConfig, ServiceNotify};
pub use record::{Attempt, Outcome, Progress};

use crate::config::notify::{self as config, EmailConfig, WebhookUrl};
use render::Message;
use retry::{Policy, SendError};

use crate::store::Store;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChannelKind {
    Email,
    Slack,
}

impl ChannelKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelKind::Email => "email",
            ChannelKind::Slack => "slack",
        }
    }
}

impl fmt::Display for ChannelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// Where one channel's messages go.
#[derive(Debug, Clone)]
pub enum Destination {
    Email {
        config: Arc<EmailConfig>,
        to: Vec<Mailbox>,
    },
    Slack {
        url: WebhookUrl,
    },
}

impl Destination {
    pub fn kind(&self) -> ChannelKind {
        match self {
            Destination::Email { .. } => ChannelKind::Email,
            Destination::Slack { .. } => ChannelKind::Slack,
        }
    }

    /// For logs and reports: recipients and relay, or the webhook's host.
    pub fn describe(&self) -> String {
        match self {
            Destination::Email { config, to } => email::describe(config, to),
            Destination::Slack { url } => url.redacted(),
        }
    }

    fn same_as(&self, other: &Destination) -> bool {
        match (self, other) {
            (Destination::Email { to: a, .. }, Destination::Email { to: b, .. }) => a == b,
            (Destination::Slack { url: a }, Destination::Slack { url: b }) => a == b,
            _ => false,
        }
    }
}

/// A channel with the events it wants.
#[derive(Debug, Clone)]
pub struct Route {
    pub destination: Destination,
    pub on: Vec<Event>,
}

/// The channels of a service: `[notify]`, with what `[service.notify]` overrides.
pub fn routes(notify: &NotifyConfig, service: Option<&ServiceNotify>) -> Vec<Route> {
    let mut out = Vec::new();
    if let Some(email) = &notify.email {
        let own = service.and_then(|s| s.email.as_ref());
        out.push(Route {
            destination: Destination::Email {
                config: Arc::new(email.clone()),
                to: own
                    .and_then(|o| o.to.clone())
                    .unwrap_or_else(|| email.to.clone()),
            },
            on: own
                .and_then(|o| o.on.clone())
                .unwrap_or_else(|| email.on.clone()),
        });
    }
    let own = service.and_then(|s| s.slack.as_ref());
    let url = own
        .and_then(|o| o.webhook_url.clone())
        .or_else(|| notify.slack.as_ref().map(|s| s.webhook_url.clone()));
    if let Some(url) = url {
        out.push(Route {
            destination: Destination::Slack { url },
            on: own
                .and_then(|o| o.on.clone())
                .or_else(|| notify.slack.as_ref().map(|s| s.on.clone()))
                .unwrap_or_else(|| config::DEFAULT_ON.to_vec()),
        });
    }
    out
}

/// Tells operators about deployments. Cheap to clone.
#[derive(Clone)]
pub struct Notifier {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    /// Who hears of what; replaced whole by a config reload.
    channels: std::sync::RwLock<Arc<Channels>>,
    http: reqwest::Client,
    /// A deployment's `started` sends, so that on each channel its outcome
    /// follows its start.
    pending: Mutex<HashMap<i64, JoinHandle<StartedSends>>>,
    /// Deliveries in flight: a second call for the same deployment, channel and
    /// event while one runs is not a second message. (Afterwards the store says so.)
    sending: Mutex<HashSet<(i64, ChannelKind, Event)>>,
    /// Deployments whose outcome is being or was sent by this process: a second
    /// `finished` call must not overtake the first, which waits for `started`.
    finished: Mutex<HashSet<i64>>,
    flood: Flood,
}

/// Webhook-caused failures of one service notified within [`FLOOD_WINDOW`]
/// before its webhook deployments' messages are held back.
pub const FLOOD_LIMIT: usize = 3;
/// How long a notified webhook-caused failure counts.
pub const FLOOD_WINDOW: Duration = Duration::from_secs(600);

/// Rate limit of what pushes can make greenlight send: a sender that keeps
/// pushing tags that fail (or a replayed delivery) must not mail the team for
/// each. Per service, after [`FLOOD_LIMIT`] failures of webhook-triggered
/// deployments notified within [`FLOOD_WINDOW`], the messages of its
/// webhook-triggered deployments (start and failure) are held back until the
/// window has room again. An operator's deployments and successes are always
/// notified, and every outcome stays in the store, `history` and `/metrics`.
#[derive(Default)]
pub struct Flood(Mutex<HashMap<String, std::collections::VecDeque<std::time::Instant>>>);

impl Flood {
    /// Whether a message about a webhook deployment of `service` is held back
    /// at `now`; `failure`: it reports a failure (counted when let through).
    pub fn held(&self, service: &str, failure: bool, now: std::time::Instant) -> bool {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let recent = map.entry(service.to_string()).or_default();
        while recent
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= FLOOD_WINDOW)
        {
            recent.pop_front();
        }
        if recent.len() >= FLOOD_LIMIT {
            return true;
        }
        if failure {
            recent.push_back(now);
        }
        false
    }
}

/// The channels of the config, per service.
struct Channels {
    /// Per service; `fallback` for a deployment of a service no longer configured.
    routes: HashMap<String, Vec<Route>>,
    fallback: Vec<Route>,
    wants_started: bool,
    policy: Policy,
    timeout: Duration,
}

impl Channels {
    fn of(config: &crate::config::Config) -> Channels {
        let n = &config.notify;
        let per_service: HashMap<_, _> = config
            .services
            .iter()
            .map(|s| (s.name.clone(), routes(n, s.notify.as_ref())))
            .collect();
        let fallback = routes(n, None);
        let wants_started = per_service
            .values()
            .chain([&fallback])
            .flatten()
            .any(|r| r.on.contains(&Event::Started));
        Channels {
            routes: per_service,
            fallback,
            wants_started,
            policy: Policy {
                base: n.retry_base,
                max_attempts: n.max_attempts,
            },
            timeout: n.timeout,
        }
    }
}

/// The `started` delivery of each route (by index) still in flight.
type StartedSends = Vec<(usize, JoinHandle<()>)>;

/// Attempts are cut off by `send_once`, so the client needs no timeout of its own.
fn http_client() -> reqwest::Client {
    crate::tls::builder()
        .user_agent(concat!("greenlight/", env!("CARGO_PKG_VERSION")))
        .build()
        .unwrap_or_default()
}

impl Notifier {
    pub fn new(config: &crate::config::Config, store: Store) -> Notifier {
        Notifier {
            inner: Arc::new(Inner {
                store,
                channels: std::sync::RwLock::new(Arc::new(Channels::of(config))),
                http: http_client(),
                pending: Mutex::new(HashMap::new()),
                sending: Mutex::new(HashSet::new()),
                finished: Mutex::new(HashSet::new()),
                flood: Flood::default(),
            }),
        }
    }

    /// Takes the channels of a reloaded config (messages already on their
    /// way keep the channel they were sent to).
    pub fn reconfigure(&self, config: &crate::config::Config) {
        *self
            .inner
            .channels
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Arc::new(Channels::of(config));
    }

    fn has_channels(&self) -> bool {
        let c = self.inner.channels();
        !c.fallback.is_empty() || c.routes.values().any(|r| !r.is_empty())
    }

    /// A deployment started (after it was queued). Returns at once.
    pub fn started(&self, deployment_id: i64) {
        if !self.inner.channels().wants_started || self.inner.flooded(deployment_id, false) {
            return;
        }
        let inner = self.inner.clone();
        if let Some(task) = spawn(async move { inner.start(deployment_id) }) {
            self.inner.pending().insert(deployment_id, task);
        }
    }

    /// A running canary paused (too little traffic to judge, or stable
    /// failing too): said now, with the evidence in `why`, though the
    /// deployment waits for an operator and has not ended. Returns at once.
    pub fn canary_paused(&self, deployment_id: i64, why: &str) {
        if !self.has_channels() {
            return;
        }
        let inner = self.inner.clone();
        let why = why.to_string();
        spawn(async move {
            let Some(mut d) = inner.load(deployment_id) else {
                return;
            };
            d.state = crate::domain::deployment::State::Paused;
            d.error = Some(why);
            let message = render::message(&d, Event::Paused);
            for (_, route) in inner.routes_for(&d.service, Event::Paused) {
                inner
                    .deliver(deployment_id, Event::Paused, &route.destination, &message)
                    .await;
            }
        });
    }

    /// A deployment reached a terminal state. Returns at once.
    pub fn finished(&self, deployment_id: i64) {
        if !self.has_channels() {
            return;
        }
        if !self.inner.finished().insert(deployment_id) {
            return;
        }
        if self.inner.flooded(deployment_id, true) {
            return;
        }
        // What is owed is on record before anything is tried: a crash from here
        // on is finished by the next start (`resume`).
        self.inner.owe(deployment_id);
        let started = self.inner.pending().remove(&deployment_id);
        let inner = self.inner.clone();
        spawn(async move {
            let started = match started {
                Some(task) => task.await.unwrap_or_default(),
                None => Vec::new(),
            };
            inner.finish(deployment_id, started).await;
        });
    }
}

impl Notifier {
    /// Sends the outcome messages an earlier run owed but did not finish (it
    /// crashed or stopped between retries), continuing their attempt count.
    pub fn resume(&self) {
        let pending = match self.inner.store.outbox_pending() {
            Ok(p) => p,
            Err(e) => return warn!(error = %e, "cannot read the notification outbox"),
        };
        for (id, channel, event) in pending {
            let Some(d) = self.inner.load(id) else {
                let _ = self.inner.store.outbox_done(id, &channel, &event);
                continue;
            };
            let Some(ev) = Event::outcome_of(d.state).filter(|e| e.as_str() == event) else {
                let _ = self.inner.store.outbox_done(id, &channel, &event);
                continue;
            };
            let route = self
                .inner
                .routes_for(&d.service, ev)
                .into_iter()
                .find(|(_, r)| r.destination.kind().as_str() == channel);
            let Some((_, route)) = route else {
                info!(service = %d.service, deployment = id, channel, %event, "owed message dropped: the channel no longer wants it");
                let _ = self.inner.store.outbox_done(id, &channel, &event);
                continue;
            };
            self.inner.finished().insert(id);
            let inner = self.inner.clone();
            info!(service = %d.service, deployment = id, channel, %event, "resuming an owed notification");
            spawn(async move {
                let message = render::message(&d, ev);
                inner.deliver(id, ev, &route.destination, &message).await;
            });
        }
    }
}

/// Spawns on the current tokio runtime; outside one there is nobody to send.
fn spawn<F>(task: F) -> Option<JoinHandle<F::Output>>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => Some(rt.spawn(task)),
        Err(_) => {
            warn!("notification not sent: no async runtime");
            None
        }
    }
}

impl Inner {
    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<i64, JoinHandle<StartedSends>>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn finished(&self) -> std::sync::MutexGuard<'_, HashSet<i64>> {
        self.finished.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a message about deployment `id` is held back because webhook
    /// pushes of its service keep failing (see [`Flood`]). `outcome`: its end,
    /// else its start.
    fn flooded(&self, id: i64, outcome: bool) -> bool {
        let Some(d) = self.load(id) else { return false };
        if d.trigger.is_operator() {
            return false;
        }
        let failed = outcome
            && matches!(
                Event::outcome_of(d.state),
                Some(Event::Failed | Event::Stale | Event::RolledBack)
            );
        let held = self
            .flood
            .held(&d.service, failed, std::time::Instant::now());
        if held {
            info!(
                service = %d.service,
                deployment = id,
                "notification held back: webhook pushes of this service failed {} times within {}s",
                FLOOD_LIMIT,
                FLOOD_WINDOW.as_secs()
            );
        }
        held
    }

    /// Records the outcome messages a finished deployment is owed.
    fn owe(&self, id: i64) {
        let Some(d) = self.load(id) else { return };
        let Some(event) = Event::outcome_of(d.state) else {
            return;
        };
        for (_, route) in self.routes_for(&d.service, event) {
            let channel = route.destination.kind().as_str();
            if let Err(e) = self.store.outbox_add(id, channel, event.as_str()) {
                warn!(deployment = id, error = %e, "cannot record the owed notification");
            }
        }
    }

    fn load(&self, id: i64) -> Option<crate::store::Deployment> {
        match self.store.deployment(id) {
            Ok(Some(d)) => Some(d),
            Ok(None) => {
                warn!(deployment = id, "nothing to notify: no such deployment");
                None
            }
            Err(e) => {
                warn!(deployment = id, error = %e, "cannot load the deployment to notify");
                None
            }
        }
    }

    /// The routes of a deployment's service that want `event`, with their index.
    fn channels(&self) -> Arc<Channels> {
        self.channels
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn routes_for(&self, service: &str, event: Event) -> Vec<(usize, Route)> {
        let c = self.channels();
        c.routes
            .get(service)
            .unwrap_or(&c.fallback)
            .iter()
            .enumerate()
            .filter(|(_, r)| r.on.contains(&event))
            .map(|(i, r)| (i, r.clone()))
            .collect()
    }

    /// Starts the `started` deliveries, one task per channel.
    fn start(self: Arc<Self>, id: i64) -> StartedSends {
        let Some(d) = self.load(id) else {
            return Vec::new();
        };
        let message = Arc::new(render::message(&d, Event::Started));
        self.routes_for(&d.service, Event::Started)
            .into_iter()
            .filter_map(|(i, route)| {
                let (inner, message) = (self.clone(), message.clone());
                spawn(async move {
                    inner
                        .deliver(id, Event::Started, &route.destination, &message)
                        .await
                })
                .map(|task| (i, task))
            })
            .collect()
    }

    /// Sends the outcome through each channel that wants it, after that
    /// channel's `started` message.
    async fn finish(&self, id: i64, mut started: StartedSends) {
        let Some(d) = self.load(id) else { return };
        let Some(event) = Event::outcome_of(d.state) else {
            // Abandoned on a store error: its state is not an outcome, so saying
            // anything would risk saying something untrue.
            return warn!(deployment = id, state = %d.state, "deployment ended without an outcome; not notifying");
        };
        let routes = self.routes_for(&d.service, event);
        if routes.is_empty() {
            return debug!(deployment = id, %event, "no channel wants this event");
        }
        let message = render::message(&d, event);
        let sends = routes.into_iter().map(|(i, route)| {
            let before = started
                .iter()
                .position(|(j, _)| *j == i)
                .map(|p| started.swap_remove(p).1);
            let message = &message;
            async move {
                if let Some(task) = before {
                    let _ = task.await;
                }
                self.deliver(id, event, &route.destination, message).await
            }
        });
        futures_util::future::join_all(sends.collect::<Vec<_>>()).await;
    }

    fn sending(&self) -> std::sync::MutexGuard<'_, HashSet<(i64, ChannelKind, Event)>> {
        self.sending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Delivers `message` through `to` once per deployment and event, retrying.
    async fn deliver(&self, id: i64, event: Event, to: &Destination, message: &Message) {
        let key = (id, to.kind(), event);
        if !self.sending().insert(key) {
            return debug!(deployment = id, channel = %to.kind(), %event, "already being notified");
        }
        let span = tracing::info_span!("notify", service = %message.service, deployment = id);
        self.attempts(id, event, to, message).instrument(span).await;
        self.sending().remove(&key);
    }

    async fn attempts(&self, id: i64, event: Event, to: &Destination, message: &Message) {
        let channel = to.kind().as_str();
        let mut attempt = match self
            .store
            .notification_progress(id, channel, event.as_str())
        {
            Ok(Progress::Done) => {
                let _ = self.store.outbox_done(id, channel, event.as_str());
                return debug!(deployment = id, channel, %event, "already notified");
            }
            Ok(Progress::Retrying { last }) => last + 1,
            Ok(Progress::NotTried) => 1,
            Err(e) => {
                warn!(deployment = id, error = %e, "cannot read notification history");
                1
            }
        };
        let dest = to.describe();
        info!(deployment = id, channel, %event, to = %dest, attempt, "Notifying");
        loop {
            let channels = self.channels();
            let result = send_once(&self.http, to, message, channels.timeout).await;
            let (outcome, detail, wait) = match result {
                Ok(()) => (Outcome::Sent, None, None),
                Err(e) => {
                    let wait = channels
                        .policy
                        .next_delay(attempt, &e, rand::random::<f64>());
                    let detail = match wait {
                        Some(w) => format!(
                            "{}; retrying in {}",
                            e.detail,
                            crate::display::duration(w.as_millis() as i64)
                        ),
                        None if !e.retryable => format!("{}; not retried", e.detail),
                        None => format!(
                            "{}; gave up after {attempt} attempt{}",
                            e.detail,
                            if attempt == 1 { "" } else { "s" }
                        ),
                    };
                    let outcome = if wait.is_some() {
                        Outcome::Failed
                    } else {
                        Outcome::GaveUp
                    };
                    (outcome, Some(detail), wait)
                }
            };
            if let Err(e) = self.store.record_notification(
                id,
                channel,
                event.as_str(),
                attempt,
                outcome,
                detail.as_deref(),
            ) {
                warn!(deployment = id, error = %e, "cannot record the notification attempt");
            }
            if wait.is_none() {
                // Sent, or given up on: nothing more is owed.
                if let Err(e) = self.store.outbox_done(id, channel, event.as_str()) {
                    warn!(deployment = id, error = %e, "cannot clear the owed notification");
                }
            }
            match (outcome, wait) {
                (Outcome::Sent, _) => {
                    return info!(deployment = id, channel, %event, to = %dest, attempt, "Notified")
                }
                (_, Some(wait)) => {
                    warn!(deployment = id, channel, %event, attempt, error = detail.as_deref().unwrap_or(""), "notification failed");
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                (_, None) => {
                    return warn!(deployment = id, channel, %event, attempt, error = detail.as_deref().unwrap_or(""), "notification given up")
                }
            }
        }
    }
}

/// One attempt, cut off at `timeout` whatever the channel is doing.
async fn send_once(
    http: &reqwest::Client,
    to: &Destination,
    message: &Message,
    timeout: Duration,
) -> Result<(), SendError> {
    let attempt = async {
        match to {
            Destination::Email { config, to } => email::send(config, to, message, timeout).await,
            Destination::Slack { url } => slack::send(http, url, &message.slack).await,
        }
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or_else(|_| {
            Err(SendError::retry(format!(
                "no answer within {}",
                crate::display::duration(timeout.as_millis() as i64)
            )))
        })
}

/// What `greenlight notify test` found for one destination.
#[derive(Debug, Clone)]
pub struct TestResult {
    pub channel: ChannelKind,
    /// `[notify]`, or the service whose own channel this is.
    pub scope: String,
    pub destination: String,
    pub result: Result<(), String>,
}

/// Sends one test message, one attempt each, through every configured
/// destination (`only`: of one kind): `[notify]`'s and each service's own.
pub async fn send_test(
    config: &crate::config::Config,
    only: Option<ChannelKind>,
) -> Vec<TestResult> {
    let mut targets: Vec<(String, Destination)> = Vec::new();
    for r in routes(&config.notify, None) {
        targets.push(("[notify]".into(), r.destination));
    }
    for s in &config.services {
        let Some(own) = &s.notify else { continue };
        for r in routes(&config.notify, Some(own)) {
            if !targets.iter().any(|(_, d)| d.same_as(&r.destination)) {
                targets.push((format!("service {}", s.name), r.destination));
            }
        }
    }
    let services: Vec<String> = config.services.iter().map(|s| s.name.clone()).collect();
    // The EHLO name lettre would use: this host's name.
    let host = lettre::transport::smtp::extension::ClientId::default().to_string();
    let message = render::test_message(&services, &host);
    let http = http_client();
    let sends = targets
        .into_iter()
        .filter(|(_, d)| only.is_none_or(|k| d.kind() == k))
        .map(|(scope, d)| {
            let (http, message) = (&http, &message);
            async move {
                let result = send_once(http, &d, message, config.notify.timeout)
                    .await
                    .map_err(|e| e.detail);
                TestResult {
                    channel: d.kind(),
                    scope,
                    destination: d.describe(),
                    result,
                }
            }
        });
    futures_util::future::join_all(sends).await
}

#[cfg(test)]
mod flood_tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn webhook_failures_past_the_limit_are_held_back_until_the_window_has_room() {
        let flood = Flood::default();
        let t0 = Instant::now();
        for _ in 0..FLOOD_LIMIT {
            assert!(!flood.held("web", true, t0));
        }
        assert!(flood.held("web", true, t0), "the next failure");
        assert!(flood.held("web", false, t0), "and the next start");
        assert!(!flood.held("api", true, t0), "another service");
        assert!(
            !flood.held("web", true, t0 + FLOOD_WINDOW),
            "the window moved on"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::notify::{ServiceEmail, ServiceSlack};

    fn notify() -> NotifyConfig {
        let text = r#"
            [email]
            server = "smtp.example.com"
            from = "greenlight <gl@example.com>"
            to = ["ops@example.com"]
            [slack]
            webhook_url = "https://hooks.slack.com/services/T/B/x"
            on = ["failed"]
        "#;
        toml::from_str(text).unwrap()
    }

    #[test]
    fn a_service_inherits_the_channels_it_does_not_override() {
        let r = routes(&notify(), None);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].on, config::DEFAULT_ON.to_vec());
        assert_eq!(r[1].on, vec![Event::Failed]);
        let own = ServiceNotify {
            email: Some(ServiceEmail {
                to: Some(vec!["web@example.com".parse().unwrap()]),
                on: None,
            }),
            slack: Some(ServiceSlack {
                webhook_url: None,
                on: Some(vec![]),
            }),
        };
        let r = routes(&notify(), Some(&own));
        match &r[0].destination {
            Destination::Email { to, .. } => assert_eq!(to[0].email.to_string(), "web@example.com"),
            other => panic!("{other:?}"),
        }
        assert_eq!(r[0].on, config::DEFAULT_ON.to_vec());
        assert!(r[1].on.is_empty(), "on = [] silences slack for the service");
    }

    #[test]
    fn a_service_may_bring_its_own_slack_channel() {
        let own = ServiceNotify {
            email: None,
            slack: Some(ServiceSlack {
                webhook_url: Some(
                    WebhookUrl::parse("https://hooks.slack.com/services/T/B/own").unwrap(),
                ),
                on: None,
            }),
        };
        let mut n = notify();
        n.slack = None;
        let r = routes(&n, Some(&own));
        assert_eq!(r.len(), 2);
        assert_eq!(r[1].on, config::DEFAULT_ON.to_vec());
        assert!(!r[1]
            .destination
            .same_as(&routes(&notify(), None)[1].destination));
    }

    #[test]
    fn notifying_outside_a_runtime_does_not_panic() {
        let store = Store::in_memory().unwrap();
        let mut config: crate::config::Config = toml::from_str(
            r#"
            [server]
            admin_token = "0123456789abcdef"
            [nginx]
            mode = "host"
            upstreams_dir = "/tmp"
            config = "/tmp/nginx.conf"
            "#,
        )
        .unwrap();
        config.notify = notify();
        let n = Notifier::new(&config, store);
        n.started(1);
        n.finished(1);
    }
}
