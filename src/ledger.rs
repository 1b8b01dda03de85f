//! The delivery ledger: every authenticated webhook delivery with its raw body,
//! its non-secret headers and what became of it, so any delivery can be looked
//! at and redelivered.

use rusqlite::{params, OptionalExtension, Row};
use serde::Serialize;

use crate::store::{now_ms, Result, Store};

/// Headers never stored: they carry secrets.
const SECRET_HEADERS: [&str; 4] = [
    "authorization",
    "cookie",
    "x-hub-signature",
    "x-hub-signature-256",
];

pub fn storable_header(name: &str) -> bool {
    !SECRET_HEADERS.contains(&name.to_ascii_lowercase().as_str())
}

#[derive(Debug, Clone)]
pub struct NewDelivery {
    pub source: String,
    pub delivery_id: String,
    pub redelivery_of: Option<i64>,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Delivery {
    /// Ledger row.
    pub row: i64,
    pub source: String,
    pub delivery_id: String,
    pub attempt: i64,
    pub redelivery_of: Option<i64>,
    pub received_at: i64,
    pub verdict: String,
    pub detail: Option<String>,
    pub services: Vec<String>,
    pub deployments: Vec<i64>,
    pub events: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub headers: Option<serde_json::Value>,
    /// The raw body (lossy UTF-8), only when one delivery is asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    #[serde(skip)]
    pub raw_body: Vec<u8>,
}

const COLUMNS: &str = "id, source, delivery_id, attempt, redelivery_of, received_at, verdict, detail, services, events, headers, body";

fn from_row(row: &Row, with_body: bool) -> rusqlite::Result<Delivery> {
    let services: Option<String> = row.get(8)?;
    let events: Option<String> = row.get(9)?;
    let headers: String = row.get(10)?;
    let body: Vec<u8> = row.get(11)?;
    Ok(Delivery {
        row: row.get(0)?,
        source: row.get(1)?,
        delivery_id: row.get(2)?,
        attempt: row.get(3)?,
        redelivery_of: row.get(4)?,
        received_at: row.get(5)?,
        verdict: row.get(6)?,
        detail: row.get(7)?,
        services: services
            .map(|s| {
                s.split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default(),
        deployments: Vec::new(),
        events: events.and_then(|e| serde_json::from_str(&e).ok()),
        headers: with_body.then(|| serde_json::from_str(&headers).unwrap_or_default()),
        body: with_body.then(|| String::from_utf8_lossy(&body).into_owned()),
        raw_body: if with_body { body } else { Vec::new() },
    })
}

impl Store {
    /// Records a delivery as `received`; its attempt number counts earlier
    /// deliveries with the same id (GitHub redelivers with the same GUID).
    pub fn insert_delivery(&self, d: &NewDelivery) -> Result<(i64, i64)> {
        let conn = self.conn();
        let attempt: i64 = conn.query_row(
            "SELECT COUNT(*) + 1 FROM deliveries WHERE delivery_id = ?1",
            [&d.delivery_id],
            |r| r.get(0),
        )?;
        let headers = serde_json::Value::Object(
            d.headers
                .iter()
                .filter(|(k, _)| storable_header(k))
                .map(|(k, v)| (k.to_ascii_lowercase(), serde_json::Value::String(v.clone())))
                .collect(),
        );
        conn.execute(
            "INSERT INTO deliveries (source, delivery_id, attempt, redelivery_of, received_at, headers, body, verdict) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'received')",
            params![d.source, d.delivery_id, attempt, d.redelivery_of, now_ms(), headers.to_string(), d.body],
        )?;
        Ok((conn.last_insert_rowid(), attempt))
    }

    pub fn set_delivery_verdict(
        &self,
        row: i64,
        verdict: &str,
        detail: &str,
        events: &serde_json::Value,
        services: &[String],
        deployments: &[i64],
    ) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "UPDATE deliveries SET verdict = ?2, detail = ?3, events = ?4, services = ?5 WHERE id = ?1",
            params![row, verdict, detail, events.to_string(), services.join(",")],
        )?;
        for d in deployments {
            tx.execute(
                "INSERT OR IGNORE INTO delivery_deployments (delivery, deployment_id) VALUES (?1, ?2)",
                params![row, d],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    fn attach_deployments(&self, deliveries: &mut [Delivery]) -> Result<()> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare("SELECT deployment_id FROM delivery_deployments WHERE delivery = ?1 ORDER BY deployment_id")?;
        for d in deliveries.iter_mut() {
            d.deployments = stmt
                .query_map([d.row], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
        }
        Ok(())
    }

    /// Newest first, without bodies.
    pub fn deliveries(&self, service: Option<&str>, limit: usize) -> Result<Vec<Delivery>> {
        let mut list: Vec<Delivery> = {
            let conn = self.conn();
            let mut stmt = conn.prepare(&format!(
                "SELECT {COLUMNS} FROM deliveries \
                 WHERE (?1 IS NULL OR ',' || services || ',' LIKE '%,' || ?1 || ',%') \
                 ORDER BY id DESC LIMIT ?2"
            ))?;
            let rows = stmt
                .query_map(params![service, limit as i64], |r| from_row(r, false))?
                .collect::<rusqlite::Result<_>>()?;
            rows
        };
        self.attach_deployments(&mut list)?;
        Ok(list)
    }

    /// The newest attempt of a delivery id (or a ledger row number), with its body.
    pub fn delivery(&self, id: &str) -> Result<Option<Delivery>> {
        let found = {
            let conn = self.conn();
            let by_id = conn
                .query_row(
                    &format!("SELECT {COLUMNS} FROM deliveries WHERE delivery_id = ?1 ORDER BY id DESC LIMIT 1"),
                    [id],
                    |r| from_row(r, true),
                )
                .optional()?;
            match (by_id, id.parse::<i64>()) {
                (Some(d), _) => Some(d),
                (None, Ok(row)) => conn
                    .query_row(
                        &format!("SELECT {COLUMNS} FROM deliveries WHERE id = ?1"),
                        [row],
                        |r| from_row(r, true),
                    )
                    .optional()?,
                (None, Err(_)) => None,
            }
        };
        let Some(d) = found else { return Ok(None) };
        let mut one = [d];
        self.attach_deployments(&mut one)?;
        let [d] = one;
        Ok(Some(d))
    }

    /// Records that `deployment` was caused by ledger row `delivery`.
    pub fn link_delivery(&self, delivery: i64, deployment: i64) -> Result<()> {
        self.conn().execute(
            "INSERT OR IGNORE INTO delivery_deployments (delivery, deployment_id) VALUES (?1, ?2)",
            params![delivery, deployment],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new(id: &str) -> NewDelivery {
        NewDelivery {
            source: "github".into(),
            delivery_id: id.into(),
            redelivery_of: None,
            headers: vec![
                ("X-GitHub-Delivery".into(), id.into()),
                ("X-Hub-Signature-256".into(), "sha256=secretish".into()),
                ("Authorization".into(), "Bearer nope".into()),
            ],
            body: b"{\"a\":1}".to_vec(),
        }
    }

    #[test]
    fn deliveries_keep_their_body_but_not_their_secrets() {
        let store = Store::in_memory().unwrap();
        let (row, attempt) = store.insert_delivery(&new("guid")).unwrap();
        assert_eq!(attempt, 1);
        store
            .set_delivery_verdict(
                row,
                "ignored",
                "why",
                &serde_json::json!([]),
                &["web".into()],
                &[],
            )
            .unwrap();
        let d = store.delivery("guid").unwrap().unwrap();
        assert_eq!(d.body.as_deref(), Some("{\"a\":1}"));
        let headers = d.headers.unwrap();
        assert_eq!(headers["x-github-delivery"], "guid");
        assert!(headers.get("x-hub-signature-256").is_none());
        assert!(headers.get("authorization").is_none());
        assert_eq!(store.delivery(&row.to_string()).unwrap().unwrap().row, row);
    }

    #[test]
    fn the_same_delivery_id_counts_attempts_and_lists_filter_by_service() {
        let store = Store::in_memory().unwrap();
        let (a, _) = store.insert_delivery(&new("guid")).unwrap();
        let (b, attempt) = store.insert_delivery(&new("guid")).unwrap();
        assert_eq!(attempt, 2);
        let (c, _) = store.insert_delivery(&new("other")).unwrap();
        for (row, svc) in [(a, "web"), (b, "web"), (c, "api")] {
            store
                .set_delivery_verdict(
                    row,
                    "queued",
                    "",
                    &serde_json::json!([]),
                    &[svc.to_string()],
                    &[],
                )
                .unwrap();
        }
        assert_eq!(store.delivery("guid").unwrap().unwrap().row, b);
        let web: Vec<_> = store
            .deliveries(Some("web"), 10)
            .unwrap()
            .iter()
            .map(|d| d.row)
            .collect();
        assert_eq!(web, vec![b, a]);
        assert_eq!(store.deliveries(None, 10).unwrap().len(), 3);
        assert_eq!(store.deliveries(Some("we"), 10).unwrap().len(), 0);
    }
}
