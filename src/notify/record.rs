//! The `notifications` table: every attempt to send a deployment's notification,
//! so `greenlight history` can show what operators were told and when.

use std::collections::HashMap;

use rusqlite::params;
use serde::Serialize;

use crate::store::{now_ms, Result, Store};

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Sent,
    /// Failed; another attempt follows.
    Failed,
    /// Failed, and no attempt follows (not retryable, or the last one).
    GaveUp,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Sent => "sent",
            Outcome::Failed => "failed",
            Outcome::GaveUp => "gave_up",
        }
    }
}

/// One recorded attempt. `detail` never holds a secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Attempt {
    pub channel: String,
    pub event: String,
    pub attempt: u32,
    pub at: i64,
    pub outcome: String,
    pub detail: Option<String>,
}

fn attempt_from_row(r: &rusqlite::Row) -> rusqlite::Result<(i64, Attempt)> {
    Ok((
        r.get(0)?,
        Attempt {
            channel: r.get(1)?,
            event: r.get(2)?,
            attempt: r.get(3)?,
            at: r.get(4)?,
            outcome: r.get(5)?,
            detail: r.get(6)?,
        },
    ))
}

impl Store {
    pub fn record_notification(
        &self,
        deployment_id: i64,
        channel: &str,
        event: &str,
        attempt: u32,
        outcome: Outcome,
        detail: Option<&str>,
    ) -> Result<()> {
        self.conn().execute(
            "INSERT INTO notifications (deployment_id, channel, event, attempt, at, outcome, detail) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                deployment_id,
                channel,
                event,
                attempt,
                now_ms(),
                outcome.as_str(),
                detail
            ],
        )?;
        Ok(())
    }

    /// Whether `channel` was already tried for this event of the deployment: a
    /// deployment is reported once per channel, however often it is looked at.
    pub fn notification_tried(
        &self,
        deployment_id: i64,
        channel: &str,
        event: &str,
    ) -> Result<bool> {
        Ok(self.conn().query_row(
            "SELECT EXISTS (SELECT 1 FROM notifications \
             WHERE deployment_id = ?1 AND channel = ?2 AND event = ?3)",
            params![deployment_id, channel, event],
            |r| r.get(0),
        )?)
    }

    /// A deployment's attempts, oldest first.
    pub fn notifications(&self, deployment_id: i64) -> Result<Vec<Attempt>> {
        Ok(self
            .notifications_of(&[deployment_id])?
            .remove(&deployment_id)
            .unwrap_or_default())
    }

    /// The attempts of several deployments, oldest first for each.
    pub fn notifications_of(&self, ids: &[i64]) -> Result<HashMap<i64, Vec<Attempt>>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT deployment_id, channel, event, attempt, at, outcome, detail \
             FROM notifications WHERE deployment_id = ?1 ORDER BY id",
        )?;
        let mut out = HashMap::new();
        for &id in ids {
            let rows: Vec<Attempt> = stmt
                .query_map([id], attempt_from_row)?
                .map(|r| r.map(|(_, a)| a))
                .collect::<rusqlite::Result<_>>()?;
            if !rows.is_empty() {
                out.insert(id, rows);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::NewDeployment;

    #[test]
    fn attempts_are_kept_in_order_per_deployment() {
        let store = Store::in_memory().unwrap();
        let new = NewDeployment {
            service: "web".into(),
            trigger: "operator".into(),
            trigger_detail: None,
            tag: Some("v1".into()),
            digest: None,
            pushed_at: None,
            delivery: None,
        };
        let a = store.create_deployment(&new).unwrap();
        let b = store.create_deployment(&new).unwrap();
        assert!(!store.notification_tried(a, "slack", "succeeded").unwrap());
        store
            .record_notification(
                a,
                "slack",
                "succeeded",
                1,
                Outcome::Failed,
                Some("HTTP 500"),
            )
            .unwrap();
        store
            .record_notification(a, "slack", "succeeded", 2, Outcome::Sent, None)
            .unwrap();
        store
            .record_notification(b, "email", "failed", 1, Outcome::GaveUp, Some("550"))
            .unwrap();
        let got: Vec<_> = store
            .notifications(a)
            .unwrap()
            .into_iter()
            .map(|a| (a.attempt, a.outcome))
            .collect();
        assert_eq!(got, vec![(1, "failed".into()), (2, "sent".into())]);
        assert!(store.notification_tried(a, "slack", "succeeded").unwrap());
        assert!(!store.notification_tried(a, "email", "succeeded").unwrap());
        let all = store.notifications_of(&[a, b, 99]).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[&b][0].detail.as_deref(), Some("550"));
    }
}
