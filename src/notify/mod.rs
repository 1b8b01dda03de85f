//! Deployment notifications (email, Slack). Placeholder seam: the pipeline calls
//! `Notifier::started` and `Notifier::finished`; sending is never on the deploy path.

use serde::Deserialize;

use crate::store::Store;

/// `[notify]`: the channels, each optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyConfig {}

/// `[service.notify]`: a service's own channels.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceNotify {}

#[derive(Clone)]
pub struct Notifier {
    #[allow(dead_code)]
    store: Store,
}

impl Notifier {
    pub fn new(_config: &crate::config::Config, store: Store) -> Notifier {
        Notifier { store }
    }

    /// A deployment started (after it was queued). Returns at once.
    pub fn started(&self, _deployment_id: i64) {}

    /// A deployment reached a terminal state. Returns at once.
    pub fn finished(&self, _deployment_id: i64) {}
}
