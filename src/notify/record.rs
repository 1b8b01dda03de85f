//! The `notifications` table: every attempt to send a deployment's notification,
//! so `greenlight history` can show what operators were told and when.

use std::collections::HashMap;

use rusqlite::{params, OptionalExtension};
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

/// Where one channel's delivery of one event stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    NotTried,
    /// The last attempt failed and another was due.
    Retrying {
        last: u32,
    },
    /// Sent, or given up on.
    Done,
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

    /// Where the delivery of this event of the deployment through `channel`
    /// stands: a deployment is reported once per channel, however often it is
    /// looked at, and a series of retries cut by a restart goes on where it was.
    pub fn notification_progress(
        &self,
        deployment_id: i64,
        channel: &str,
        event: &str,
    ) -> Result<Progress> {
        let last: Option<(u32, String)> = self
            .conn()
            .query_row(
                "SELECT attempt, outcome FROM notifications \
                 WHERE deployment_id = ?1 AND channel = ?2 AND event = ?3 \
                 ORDER BY attempt DESC LIMIT 1",
                params![deployment_id, channel, event],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        Ok(match last {
            None => Progress::NotTried,
            Some((attempt, outcome)) if outcome == Outcome::Failed.as_str() => {
                Progress::Retrying { last: attempt }
            }
            Some(_) => Progress::Done,
        })
    }

    /// Records that an outcome message is owed (idempotent).
    pub fn outbox_add(&self, deployment_id: i64, channel: &str, event: &str) -> Result<()> {
        self.conn().execute(
            "INSERT OR IGNORE INTO notify_outbox (deployment_id, channel, event, created_at) \
             VALUES (?1, ?2, ?3, ?4)",
            params![deployment_id, channel, event, now_ms()],
        )?;
        Ok(())
    }

    /// The message was sent, or given up on: nothing more is owed.
    pub fn outbox_done(&self, deployment_id: i64, channel: &str, event: &str) -> Result<()> {
        self.conn().execute(
            "UPDATE notify_outbox SET done_at = ?4 \
             WHERE deployment_id = ?1 AND channel = ?2 AND event = ?3 AND done_at IS NULL",
            params![deployment_id, channel, event, now_ms()],
        )?;
        Ok(())
    }

    /// Messages still owed: (deployment, channel, event), oldest first.
    pub fn outbox_pending(&self) -> Result<Vec<(i64, String, String)>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT deployment_id, channel, event FROM notify_outbox \
             WHERE done_at IS NULL ORDER BY created_at, deployment_id",
        )?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
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
            tag: Some("v1".into()),
            ..NewDeployment::operator("web", "deploy")
        };
        let a = store.create_deployment(&new).unwrap();
        let b = store.create_deployment(&new).unwrap();
        assert_eq!(
            store
                .notification_progress(a, "slack", "succeeded")
                .unwrap(),
            Progress::NotTried
        );
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
        assert_eq!(
            store
                .notification_progress(a, "slack", "succeeded")
                .unwrap(),
            Progress::Retrying { last: 1 }
        );
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
        assert_eq!(
            store
                .notification_progress(a, "slack", "succeeded")
                .unwrap(),
            Progress::Done
        );
        assert_eq!(
            store
                .notification_progress(a, "email", "succeeded")
                .unwrap(),
            Progress::NotTried
        );
        let all = store.notifications_of(&[a, b, 99]).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[&b][0].detail.as_deref(), Some("550"));
    }

    #[test]
    fn the_outbox_keeps_what_is_owed_until_done() {
        let store = Store::in_memory().unwrap();
        let id = store
            .create_deployment(&NewDeployment {
                tag: Some("v1".into()),
                ..NewDeployment::operator("web", "deploy")
            })
            .unwrap();
        store.outbox_add(id, "slack", "failed").unwrap();
        store.outbox_add(id, "slack", "failed").unwrap();
        store.outbox_add(id, "email", "failed").unwrap();
        assert_eq!(store.outbox_pending().unwrap().len(), 2);
        store.outbox_done(id, "slack", "failed").unwrap();
        assert_eq!(
            store.outbox_pending().unwrap(),
            vec![(id, "email".to_string(), "failed".to_string())]
        );
    }
}
