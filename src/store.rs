//! Persistent state in one SQLite file (rusqlite, bundled): deployments with
//! their steps, and what is live per service.
//!
//! Every call is short; the connection sits behind a mutex and calls run on the
//! caller's thread. Times are Unix milliseconds.

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::Serialize;

use crate::domain::state::{Colour, State};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("state database: cannot create directory for {path}: {source}")]
    Dir {
        path: String,
        source: std::io::Error,
    },
    #[error("state database: deployment {0} not found")]
    NotFound(i64),
    #[error(
        "state database: written by a newer greenlight (schema {found}; this one knows up to \
         {SCHEMA_VERSION}): run that version, or start from a copy of an older state file"
    )]
    NewerSchema { found: i64 },
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// WAL pages (4 KiB) after which a commit checkpoints (see `Store::init`).
const WAL_AUTOCHECKPOINT: i64 = 128;

/// 2: `deliveries.body_codec` (bodies are kept LZ4-compressed).
const SCHEMA_VERSION: i64 = 2;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS deployments (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    service          TEXT NOT NULL,
    state            TEXT NOT NULL,
    trigger          TEXT NOT NULL,
    trigger_detail   TEXT,
    requested_tag    TEXT,
    requested_digest TEXT,
    tag              TEXT,
    digest           TEXT,
    image            TEXT,
    image_id         TEXT,
    colour           TEXT,
    container_id     TEXT,
    address          TEXT,
    previous_colour  TEXT,
    previous_tag     TEXT,
    previous_digest  TEXT,
    previous_address TEXT,
    failed_step      TEXT,
    error            TEXT,
    exit_code        INTEGER,
    log_tail         TEXT,
    pushed_at        INTEGER,
    delivery         INTEGER,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    finished_at      INTEGER
);
CREATE INDEX IF NOT EXISTS deployments_service ON deployments(service, id);
CREATE INDEX IF NOT EXISTS deployments_state ON deployments(state);

CREATE TABLE IF NOT EXISTS steps (
    deployment_id INTEGER NOT NULL REFERENCES deployments(id),
    seq           INTEGER NOT NULL,
    step          TEXT NOT NULL,
    started_at    INTEGER NOT NULL,
    finished_at   INTEGER,
    outcome       TEXT,
    detail        TEXT,
    PRIMARY KEY (deployment_id, seq)
);

CREATE TABLE IF NOT EXISTS live (
    service          TEXT PRIMARY KEY,
    colour           TEXT NOT NULL,
    tag              TEXT,
    digest           TEXT NOT NULL,
    image            TEXT NOT NULL,
    image_id         TEXT,
    container_id     TEXT,
    address          TEXT NOT NULL,
    deployment_id    INTEGER,
    since            INTEGER NOT NULL,
    previous_tag     TEXT,
    previous_digest  TEXT,
    previous_image_id TEXT,
    pushed_at        INTEGER
);

-- Every authenticated webhook delivery, with its raw body, so it can be redelivered.
CREATE TABLE IF NOT EXISTS deliveries (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    source        TEXT NOT NULL,
    delivery_id   TEXT NOT NULL,
    attempt       INTEGER NOT NULL DEFAULT 1,
    redelivery_of INTEGER REFERENCES deliveries(id),
    received_at   INTEGER NOT NULL,
    headers       TEXT NOT NULL,
    body          BLOB NOT NULL,
    -- 'lz4' (ledger.rs PackedBody), or NULL: stored as received.
    body_codec    TEXT,
    verdict       TEXT NOT NULL,
    detail        TEXT,
    events        TEXT,
    services      TEXT
);
CREATE INDEX IF NOT EXISTS deliveries_delivery_id ON deliveries(delivery_id);

CREATE TABLE IF NOT EXISTS delivery_deployments (
    delivery      INTEGER NOT NULL REFERENCES deliveries(id),
    deployment_id INTEGER NOT NULL REFERENCES deployments(id),
    PRIMARY KEY (delivery, deployment_id)
);

-- Each attempt to send a deployment's outcome through a notification channel.
CREATE TABLE IF NOT EXISTS notifications (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    deployment_id INTEGER NOT NULL REFERENCES deployments(id),
    channel       TEXT NOT NULL,
    event         TEXT NOT NULL,
    attempt       INTEGER NOT NULL,
    at            INTEGER NOT NULL,
    outcome       TEXT NOT NULL,
    detail        TEXT
);
CREATE INDEX IF NOT EXISTS notifications_deployment ON notifications(deployment_id);

-- Outcome messages owed: written when a deployment ends, before any attempt, and
-- marked done once sent or given up, so a restart finishes what a crash cut.
CREATE TABLE IF NOT EXISTS notify_outbox (
    deployment_id INTEGER NOT NULL REFERENCES deployments(id),
    channel       TEXT NOT NULL,
    event         TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    done_at       INTEGER,
    PRIMARY KEY (deployment_id, channel, event)
);
"#;

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[derive(Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
}

/// What triggered a deployment and what it asks for.
#[derive(Debug, Clone)]
pub struct NewDeployment {
    pub service: String,
    pub trigger: String,
    pub trigger_detail: Option<serde_json::Value>,
    pub tag: Option<String>,
    pub digest: Option<String>,
    /// When the image was pushed (webhooks), for the out-of-order guard.
    pub pushed_at: Option<i64>,
    /// The ledger row of the delivery that asked for it.
    pub delivery: Option<i64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub step: String,
    pub started_at: i64,
    pub finished_at: Option<i64>,
    pub outcome: Option<String>,
    pub detail: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Deployment {
    pub id: i64,
    pub service: String,
    pub state: State,
    pub trigger: String,
    pub trigger_detail: Option<serde_json::Value>,
    pub requested_tag: Option<String>,
    pub requested_digest: Option<String>,
    pub tag: Option<String>,
    pub digest: Option<String>,
    pub image: Option<String>,
    pub image_id: Option<String>,
    pub colour: Option<Colour>,
    pub container_id: Option<String>,
    pub address: Option<String>,
    pub previous_colour: Option<Colour>,
    pub previous_tag: Option<String>,
    pub previous_digest: Option<String>,
    pub previous_address: Option<String>,
    pub failed_step: Option<String>,
    pub error: Option<String>,
    pub exit_code: Option<i64>,
    pub log_tail: Option<String>,
    pub pushed_at: Option<i64>,
    pub delivery: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
    pub finished_at: Option<i64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<Step>,
}

/// What nginx routes to for a service.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Live {
    pub service: String,
    pub colour: Colour,
    pub tag: Option<String>,
    pub digest: String,
    pub image: String,
    pub image_id: Option<String>,
    pub container_id: Option<String>,
    pub address: String,
    pub deployment_id: Option<i64>,
    pub since: i64,
    pub previous_tag: Option<String>,
    pub previous_digest: Option<String>,
    pub previous_image_id: Option<String>,
    pub pushed_at: Option<i64>,
}

/// How a deployment ended, when it did not succeed.
#[derive(Debug, Clone, Default)]
pub struct Failure {
    pub step: Option<State>,
    pub error: String,
    pub exit_code: Option<i64>,
    pub log_tail: Option<String>,
}

const DEPLOYMENT_COLUMNS: &str =
    "id, service, state, trigger, trigger_detail, requested_tag, requested_digest, \
     tag, digest, image, image_id, colour, container_id, address, previous_colour, previous_tag, \
     previous_digest, previous_address, failed_step, error, exit_code, log_tail, pushed_at, \
     delivery, created_at, updated_at, finished_at";

fn parse_col<T: std::str::FromStr>(row: &Row, i: usize) -> rusqlite::Result<Option<T>> {
    let text: Option<String> = row.get(i)?;
    Ok(text.and_then(|t| t.parse().ok()))
}

fn deployment_from_row(row: &Row) -> rusqlite::Result<Deployment> {
    let state: String = row.get(2)?;
    let detail: Option<String> = row.get(4)?;
    Ok(Deployment {
        id: row.get(0)?,
        service: row.get(1)?,
        state: state.parse().unwrap_or(State::Failed),
        trigger: row.get(3)?,
        trigger_detail: detail.and_then(|d| serde_json::from_str(&d).ok()),
        requested_tag: row.get(5)?,
        requested_digest: row.get(6)?,
        tag: row.get(7)?,
        digest: row.get(8)?,
        image: row.get(9)?,
        image_id: row.get(10)?,
        colour: parse_col(row, 11)?,
        container_id: row.get(12)?,
        address: row.get(13)?,
        previous_colour: parse_col(row, 14)?,
        previous_tag: row.get(15)?,
        previous_digest: row.get(16)?,
        previous_address: row.get(17)?,
        failed_step: row.get(18)?,
        error: row.get(19)?,
        exit_code: row.get(20)?,
        log_tail: row.get(21)?,
        pushed_at: row.get(22)?,
        delivery: row.get(23)?,
        created_at: row.get(24)?,
        updated_at: row.get(25)?,
        finished_at: row.get(26)?,
        steps: Vec::new(),
    })
}

fn live_from_row(row: &Row) -> rusqlite::Result<Live> {
    Ok(Live {
        service: row.get(0)?,
        colour: parse_col(row, 1)?.unwrap_or(Colour::Blue),
        tag: row.get(2)?,
        digest: row.get(3)?,
        image: row.get(4)?,
        image_id: row.get(5)?,
        container_id: row.get(6)?,
        address: row.get(7)?,
        deployment_id: row.get(8)?,
        since: row.get(9)?,
        previous_tag: row.get(10)?,
        previous_digest: row.get(11)?,
        previous_image_id: row.get(12)?,
        pushed_at: row.get(13)?,
    })
}

impl Store {
    pub fn open(path: &Path) -> Result<Store> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::Dir {
                path: path.display().to_string(),
                source,
            })?;
        }
        let conn = Connection::open(path)?;
        Self::init(conn)
    }

    pub fn in_memory() -> Result<Store> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(conn: Connection) -> Result<Store> {
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // FULL: each commit is on disk (the WAL fsynced) before it returns, so a
        // delivery answered 202 survives a power loss too, not only a crash of
        // greenlight. Webhook deliveries are group-committed (ledger.rs), so
        // concurrent ones share one fsync; measured, it costs them nothing visible.
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        // Checkpoint every WAL_AUTOCHECKPOINT pages instead of SQLite's 1000. The
        // checkpoint runs inside a commit, and under a burst of webhooks that
        // commit is the ledger writer's, which every waiting delivery's answer
        // depends on: a small WAL keeps each checkpoint (copy, then fsync the
        // database) short. Measured with 50 concurrent deliveries (BENCHMARKS.md):
        // p99 12-13 ms at 1000 pages, 6-8 ms at 100-400, throughput no lower.
        conn.pragma_update(None, "wal_autocheckpoint", WAL_AUTOCHECKPOINT)?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::NewerSchema { found: version });
        }
        if version < SCHEMA_VERSION {
            // One transaction: a crash half way leaves the file as it was.
            let upgrade = if version == 1 {
                "ALTER TABLE deliveries ADD COLUMN body_codec TEXT;"
            } else {
                ""
            };
            conn.execute_batch(&format!(
                "BEGIN IMMEDIATE; {upgrade} {SCHEMA}; PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
            ))?;
        }
        Ok(Store {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    pub(crate) fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite itself consistent.
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn create_deployment(&self, new: &NewDeployment) -> Result<i64> {
        let conn = self.conn();
        let now = now_ms();
        conn.execute(
            "INSERT INTO deployments (service, state, trigger, trigger_detail, requested_tag, \
             requested_digest, tag, digest, pushed_at, delivery, created_at, updated_at) \
             VALUES (?1, 'received', ?2, ?3, ?4, ?5, ?4, ?5, ?6, ?7, ?8, ?8)",
            params![
                new.service,
                new.trigger,
                new.trigger_detail.as_ref().map(|v| v.to_string()),
                new.tag,
                new.digest,
                new.pushed_at,
                new.delivery,
                now
            ],
        )?;
        let id = conn.last_insert_rowid();
        conn.execute(
            "INSERT INTO steps (deployment_id, seq, step, started_at) VALUES (?1, 0, 'received', ?2)",
            params![id, now],
        )?;
        Ok(id)
    }

    /// Records `to` as the current step: closes the open step as `ok` and opens
    /// one for `to` (a terminal state closes immediately).
    pub fn transition(&self, id: i64, to: State) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let now = now_ms();
        Self::close_step(&tx, id, now)?;
        Self::open_step(&tx, id, to, now, None)?;
        let finished = to.is_terminal().then_some(now);
        let n = tx.execute(
            "UPDATE deployments SET state = ?2, updated_at = ?3, finished_at = COALESCE(?4, finished_at) WHERE id = ?1",
            params![id, to.as_str(), now, finished],
        )?;
        if n == 0 {
            return Err(StoreError::NotFound(id));
        }
        tx.commit()?;
        Ok(())
    }

    /// Closes the deployment's open step as `ok`.
    fn close_step(tx: &rusqlite::Transaction, id: i64, now: i64) -> Result<()> {
        tx.execute(
            "UPDATE steps SET finished_at = ?2, outcome = 'ok' \
             WHERE deployment_id = ?1 AND finished_at IS NULL",
            params![id, now],
        )?;
        Ok(())
    }

    fn open_step(
        tx: &rusqlite::Transaction,
        id: i64,
        step: State,
        now: i64,
        detail: Option<&str>,
    ) -> Result<()> {
        let seq: i64 = tx.query_row(
            "SELECT COALESCE(MAX(seq) + 1, 0) FROM steps WHERE deployment_id = ?1",
            [id],
            |r| r.get(0),
        )?;
        let (finished, outcome) = if step.is_terminal() {
            (Some(now), Some(step.as_str()))
        } else {
            (None, None)
        };
        tx.execute(
            "INSERT INTO steps (deployment_id, seq, step, started_at, finished_at, outcome, detail) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![id, seq, step.as_str(), now, finished, outcome, detail],
        )?;
        Ok(())
    }

    /// Ends a deployment in a non-success terminal state; the open step is closed
    /// with the error as its outcome.
    pub fn finish(&self, id: i64, end: State, failure: &Failure) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let now = now_ms();
        tx.execute(
            "UPDATE steps SET finished_at = ?2, outcome = 'error', detail = ?3 \
             WHERE deployment_id = ?1 AND finished_at IS NULL",
            params![id, now, failure.error],
        )?;
        Self::open_step(&tx, id, end, now, Some(&failure.error))?;
        tx.execute(
            "UPDATE deployments SET state = ?2, failed_step = ?3, error = ?4, exit_code = ?5, \
             log_tail = ?6, updated_at = ?7, finished_at = ?7 WHERE id = ?1",
            params![
                id,
                end.as_str(),
                failure.step.map(|s| s.as_str()),
                failure.error,
                failure.exit_code,
                failure.log_tail,
                now
            ],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Adds a note to the open step (what was decided, what was waited for),
    /// after what it noted so far.
    pub fn note(&self, id: i64, detail: &str) -> Result<()> {
        self.conn().execute(
            "UPDATE steps SET detail = CASE WHEN detail IS NULL OR detail = '' THEN ?2 \
             ELSE detail || '; ' || ?2 END WHERE deployment_id = ?1 AND finished_at IS NULL",
            params![id, detail],
        )?;
        Ok(())
    }

    pub fn set_target(
        &self,
        id: i64,
        tag: Option<&str>,
        digest: &str,
        image: &str,
        previous: Option<&Live>,
    ) -> Result<()> {
        self.conn().execute(
            "UPDATE deployments SET tag = ?2, digest = ?3, image = ?4, previous_colour = ?5, \
             previous_tag = ?6, previous_digest = ?7, previous_address = ?8, updated_at = ?9 WHERE id = ?1",
            params![
                id,
                tag,
                digest,
                image,
                previous.map(|l| l.colour.as_str()),
                previous.and_then(|l| l.tag.clone()),
                previous.map(|l| l.digest.clone()),
                previous.map(|l| l.address.clone()),
                now_ms()
            ],
        )?;
        Ok(())
    }

    pub fn set_image_id(&self, id: i64, image_id: &str) -> Result<()> {
        self.conn().execute(
            "UPDATE deployments SET image_id = ?2, updated_at = ?3 WHERE id = ?1",
            params![id, image_id, now_ms()],
        )?;
        Ok(())
    }

    pub fn set_container(
        &self,
        id: i64,
        colour: Colour,
        container_id: &str,
        address: Option<&str>,
    ) -> Result<()> {
        self.conn().execute(
            "UPDATE deployments SET colour = ?2, container_id = ?3, address = COALESCE(?4, address), \
             updated_at = ?5 WHERE id = ?1",
            params![id, colour.as_str(), container_id, address, now_ms()],
        )?;
        Ok(())
    }

    pub fn deployment(&self, id: i64) -> Result<Option<Deployment>> {
        let conn = self.conn();
        let d = conn
            .query_row(
                &format!("SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE id = ?1"),
                [id],
                deployment_from_row,
            )
            .optional()?;
        let Some(mut d) = d else { return Ok(None) };
        let mut stmt = conn.prepare(
            "SELECT step, started_at, finished_at, outcome, detail FROM steps \
             WHERE deployment_id = ?1 ORDER BY seq",
        )?;
        d.steps = stmt
            .query_map([id], |r| {
                Ok(Step {
                    step: r.get(0)?,
                    started_at: r.get(1)?,
                    finished_at: r.get(2)?,
                    outcome: r.get(3)?,
                    detail: r.get(4)?,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(Some(d))
    }

    /// Newest first.
    pub fn deployments(&self, service: Option<&str>, limit: usize) -> Result<Vec<Deployment>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE (?1 IS NULL OR service = ?1) \
             ORDER BY id DESC LIMIT ?2"
        ))?;
        let rows = stmt
            .query_map(params![service, limit as i64], deployment_from_row)?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// Deployments that have not reached a terminal state, oldest first.
    pub fn unfinished(&self) -> Result<Vec<Deployment>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE finished_at IS NULL ORDER BY id"
        ))?;
        let rows = stmt
            .query_map([], deployment_from_row)?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// Moves a queued deployment to `to` only if it is still `received` (it may
    /// have been superseded meanwhile). Returns whether it was claimed.
    pub fn claim(&self, id: i64, to: State) -> Result<bool> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let now = now_ms();
        let n = tx.execute(
            "UPDATE deployments SET state = ?2, updated_at = ?3 WHERE id = ?1 AND state = 'received'",
            params![id, to.as_str(), now],
        )?;
        if n == 1 {
            Self::close_step(&tx, id, now)?;
            Self::open_step(&tx, id, to, now, None)?;
        }
        tx.commit()?;
        Ok(n == 1)
    }

    /// Ends a still-queued deployment as superseded by `by`; false if a worker
    /// already claimed it.
    pub fn supersede(&self, id: i64, by: i64) -> Result<bool> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let now = now_ms();
        let error = format!("superseded by deployment {by} (a newer push)");
        let n = tx.execute(
            "UPDATE deployments SET state = 'superseded', error = ?2, updated_at = ?3, finished_at = ?3 \
             WHERE id = ?1 AND state = 'received'",
            params![id, error, now],
        )?;
        if n == 1 {
            Self::close_step(&tx, id, now)?;
            Self::open_step(&tx, id, State::Superseded, now, Some(&error))?;
        }
        tx.commit()?;
        Ok(n == 1)
    }

    /// Deployments of a service not yet finished, oldest first.
    pub fn active(&self, service: &str) -> Result<Vec<Deployment>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE service = ?1 AND finished_at IS NULL ORDER BY id"
        ))?;
        let rows = stmt
            .query_map([service], deployment_from_row)?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    pub fn live(&self, service: &str) -> Result<Option<Live>> {
        Ok(self
            .conn()
            .query_row(
                "SELECT service, colour, tag, digest, image, image_id, container_id, address, \
                 deployment_id, since, previous_tag, previous_digest, previous_image_id, pushed_at \
                 FROM live WHERE service = ?1",
                [service],
                live_from_row,
            )
            .optional()?)
    }

    pub fn set_live(&self, live: &Live) -> Result<()> {
        self.conn().execute(
            "INSERT INTO live (service, colour, tag, digest, image, image_id, container_id, address, \
             deployment_id, since, previous_tag, previous_digest, previous_image_id, pushed_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14) \
             ON CONFLICT(service) DO UPDATE SET colour = ?2, tag = ?3, digest = ?4, image = ?5, \
             image_id = ?6, container_id = ?7, address = ?8, deployment_id = ?9, since = ?10, \
             previous_tag = ?11, previous_digest = ?12, previous_image_id = ?13, pushed_at = ?14",
            params![
                live.service,
                live.colour.as_str(),
                live.tag,
                live.digest,
                live.image,
                live.image_id,
                live.container_id,
                live.address,
                live.deployment_id,
                live.since,
                live.previous_tag,
                live.previous_digest,
                live.previous_image_id,
                live.pushed_at
            ],
        )?;
        Ok(())
    }

    pub fn clear_live(&self, service: &str) -> Result<()> {
        self.conn()
            .execute("DELETE FROM live WHERE service = ?1", [service])?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ledger written by schema version 1 (bodies stored as received) opens
    /// under version 2: its column is added, its old rows read back whole, and
    /// new rows are packed beside them.
    #[test]
    fn a_version_1_state_file_is_migrated_and_its_raw_bodies_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let raw = br#"{"action":"published","package":{"name":"www"}}"#;
        {
            let conn = Connection::open(&path).unwrap();
            let v1 = SCHEMA.replace("    body_codec    TEXT,\n", "");
            assert_ne!(v1, SCHEMA, "the version 1 schema has no body_codec");
            conn.execute_batch(&v1).unwrap();
            conn.pragma_update(None, "user_version", 1).unwrap();
            conn.execute(
                "INSERT INTO deliveries (source, delivery_id, received_at, headers, body, verdict) \
                 VALUES ('github', 'old-guid', 1, '{}', ?1, 'ignored')",
                [&raw[..]],
            )
            .unwrap();
        }
        let store = Store::open(&path).unwrap();
        let version: i64 = store
            .conn()
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        let old = store.delivery("old-guid").unwrap().unwrap();
        assert_eq!(old.raw_body, raw);
        store
            .insert_delivery(&crate::ledger::NewDelivery::new(
                "github",
                "new-guid".into(),
                None,
                &[],
                raw,
            ))
            .unwrap();
        assert_eq!(store.delivery("new-guid").unwrap().unwrap().raw_body, raw);
        let codecs: Vec<Option<String>> = store
            .conn()
            .prepare("SELECT body_codec FROM deliveries ORDER BY id")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(codecs, [None, Some("lz4".to_string())]);
        drop(store);
        // Opening it again changes nothing (no second ALTER).
        Store::open(&path).unwrap();
    }

    #[test]
    fn a_state_file_from_a_newer_greenlight_is_refused_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        drop(Store::open(&path).unwrap());
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        let err = Store::open(&path).err().expect("refused").to_string();
        assert!(err.contains("newer greenlight"), "{err}");
        let version: i64 = Connection::open(&path)
            .unwrap()
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION + 1);
    }

    fn new(service: &str) -> NewDeployment {
        NewDeployment {
            service: service.into(),
            trigger: "operator".into(),
            trigger_detail: Some(serde_json::json!({"command": "deploy"})),
            tag: Some("v1".into()),
            digest: None,
            pushed_at: None,
            delivery: None,
        }
    }

    #[test]
    fn transitions_are_recorded_as_timed_steps() {
        let store = Store::in_memory().unwrap();
        let id = store.create_deployment(&new("web")).unwrap();
        store.transition(id, State::Resolving).unwrap();
        store.note(id, "v1 -> sha256:abc").unwrap();
        store.transition(id, State::Pulling).unwrap();
        store
            .finish(
                id,
                State::Failed,
                &Failure {
                    step: Some(State::Pulling),
                    error: "manifest unknown".into(),
                    ..Default::default()
                },
            )
            .unwrap();
        let d = store.deployment(id).unwrap().unwrap();
        assert_eq!(d.state, State::Failed);
        assert_eq!(d.failed_step.as_deref(), Some("pulling"));
        let steps: Vec<_> = d
            .steps
            .iter()
            .map(|s| (s.step.as_str(), s.outcome.as_deref()))
            .collect();
        assert_eq!(
            steps,
            vec![
                ("received", Some("ok")),
                ("resolving", Some("ok")),
                ("pulling", Some("error")),
                ("failed", Some("failed"))
            ]
        );
        assert_eq!(d.steps[1].detail.as_deref(), Some("v1 -> sha256:abc"));
        assert!(d.steps.iter().all(|s| s.finished_at.is_some()));
        assert!(d.finished_at.is_some());
        assert!(store.unfinished().unwrap().is_empty());
    }

    #[test]
    fn unfinished_and_history_are_per_service_newest_first() {
        let store = Store::in_memory().unwrap();
        let a = store.create_deployment(&new("web")).unwrap();
        let b = store.create_deployment(&new("api")).unwrap();
        let c = store.create_deployment(&new("web")).unwrap();
        store.transition(a, State::Succeeded).unwrap();
        let web: Vec<_> = store
            .deployments(Some("web"), 10)
            .unwrap()
            .iter()
            .map(|d| d.id)
            .collect();
        assert_eq!(web, vec![c, a]);
        let open: Vec<_> = store.unfinished().unwrap().iter().map(|d| d.id).collect();
        assert_eq!(open, vec![b, c]);
    }

    #[test]
    fn live_state_is_upserted_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/state.db");
        let live = Live {
            service: "web".into(),
            colour: Colour::Green,
            tag: Some("v2".into()),
            digest: "sha256:2".into(),
            image: "r/web@sha256:2".into(),
            image_id: Some("sha256:i2".into()),
            container_id: Some("c2".into()),
            address: "172.18.0.3:8080".into(),
            deployment_id: Some(2),
            since: 5,
            previous_tag: Some("v1".into()),
            previous_digest: Some("sha256:1".into()),
            previous_image_id: None,
            pushed_at: Some(7),
        };
        {
            let store = Store::open(&path).unwrap();
            store
                .set_live(&Live {
                    colour: Colour::Blue,
                    ..live.clone()
                })
                .unwrap();
            store.set_live(&live).unwrap();
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.live("web").unwrap(), Some(live));
        assert_eq!(store.live("api").unwrap(), None);
    }
}
