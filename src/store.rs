//! Persistent state in one SQLite file (rusqlite, bundled): deployments with
//! their steps, and what is live per service.
//!
//! Every call is short; the connection sits behind a mutex and calls run on the
//! caller's thread. Times are Unix milliseconds.

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::Serialize;

use crate::domain::deployment::{Colour, FailureKind, State, Trigger};
use crate::domain::plan::{Step as PlanStep, Strategy};
use crate::domain::routing::Routing;

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
/// 3: replicas and plans: `deployments.{step, strategy, replicas, plan,
///    failure_kind, resume_of, resume_depth}`, `steps.{batch, replicas}`, and
///    `live.routing` (every backend) in place of one container and address;
///    `delivery_bodies` (one row per distinct body, `deliveries.body_ref`) and
///    `delivery_attempts` (the attempt counter per delivery id).
/// 4: `deployments.connections_cut` (long-lived connections to the old
///    version still open when its replicas stopped).
const SCHEMA_VERSION: i64 = 4;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS deployments (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    service          TEXT NOT NULL,
    -- received, running, unwinding, or the outcome (domain::deployment::State).
    state            TEXT NOT NULL,
    -- The step of the plan in progress, while running or unwinding.
    step             TEXT,
    trigger          TEXT NOT NULL,
    -- What the trigger said, for people (command, delivery, pusher); never read for control.
    trigger_detail   TEXT,
    strategy         TEXT,
    replicas         INTEGER,
    -- The planned steps (JSON), set when a worker claims the deployment.
    plan             TEXT,
    requested_tag    TEXT,
    requested_digest TEXT,
    tag              TEXT,
    digest           TEXT,
    image            TEXT,
    image_id         TEXT,
    colour           TEXT,
    previous_colour  TEXT,
    previous_tag     TEXT,
    previous_digest  TEXT,
    failed_step      TEXT,
    failure_kind     TEXT,
    error            TEXT,
    exit_code        INTEGER,
    log_tail         TEXT,
    pushed_at        INTEGER,
    delivery         INTEGER,
    -- The interrupted deployment this one re-runs, and how many re-runs in a row.
    resume_of        INTEGER,
    resume_depth     INTEGER NOT NULL DEFAULT 0,
    -- Long-lived connections (WebSockets, SSE) to the old version still open
    -- when its replicas were stopped (NULL: none counted).
    connections_cut  INTEGER,
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
    -- The batch of a rolling update (NULL: none), and the replicas acted on.
    batch         INTEGER,
    replicas      TEXT,
    started_at    INTEGER NOT NULL,
    finished_at   INTEGER,
    outcome       TEXT,
    detail        TEXT,
    PRIMARY KEY (deployment_id, seq)
);

CREATE TABLE IF NOT EXISTS live (
    service           TEXT PRIMARY KEY,
    -- The colour every replica shares (NULL when they do not).
    colour            TEXT,
    tag               TEXT,
    digest            TEXT NOT NULL,
    image             TEXT NOT NULL,
    image_id          TEXT,
    deployment_id     INTEGER,
    since             INTEGER NOT NULL,
    previous_tag      TEXT,
    previous_digest   TEXT,
    previous_image_id TEXT,
    pushed_at         INTEGER,
    -- What nginx routes to (domain::routing::Routing as JSON), mirrored from
    -- the rendered file, which stays the truth.
    routing           TEXT
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
    services      TEXT,
    -- From schema 3 on the body is in delivery_bodies (body is then empty).
    body_ref      INTEGER REFERENCES delivery_bodies(id)
);
CREATE INDEX IF NOT EXISTS deliveries_delivery_id ON deliveries(delivery_id);
CREATE INDEX IF NOT EXISTS deliveries_body_ref ON deliveries(body_ref);

-- Each distinct delivery body once (a replayed delivery refers to it again).
CREATE TABLE IF NOT EXISTS delivery_bodies (
    id     INTEGER PRIMARY KEY,
    digest BLOB NOT NULL UNIQUE,  -- SHA-256 of the raw body
    body   BLOB NOT NULL,
    codec  TEXT                   -- as deliveries.body_codec
);

-- How many attempts of each delivery id were recorded: the next one's number
-- without counting rows.
CREATE TABLE IF NOT EXISTS delivery_attempts (
    delivery_id TEXT PRIMARY KEY,
    attempts    INTEGER NOT NULL
) WITHOUT ROWID;

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

/// From schema 3: the long-lived connections a deployment cut.
const UPGRADE_3_TO_4: &str = "ALTER TABLE deployments ADD COLUMN connections_cut INTEGER;";

/// From schema 2: one column per fact that rode in `trigger_detail`, the step
/// apart from the state, the routing in place of one container, and each
/// delivery body referred to instead of stored again.
const UPGRADE_2_TO_3: &str = r#"
ALTER TABLE deployments ADD COLUMN step TEXT;
ALTER TABLE deployments ADD COLUMN strategy TEXT;
ALTER TABLE deployments ADD COLUMN replicas INTEGER;
ALTER TABLE deployments ADD COLUMN plan TEXT;
ALTER TABLE deployments ADD COLUMN failure_kind TEXT;
ALTER TABLE deployments ADD COLUMN resume_of INTEGER;
ALTER TABLE deployments ADD COLUMN resume_depth INTEGER NOT NULL DEFAULT 0;
UPDATE deployments SET step = state, state = 'running'
    WHERE state NOT IN ('received', 'succeeded', 'failed', 'rolled_back', 'superseded',
                        'already_live', 'interrupted', 'stale');
UPDATE deployments SET
    resume_of = json_extract(trigger_detail, '$.resumes'),
    resume_depth = COALESCE(json_extract(trigger_detail, '$.resume_depth'), 0)
    WHERE json_valid(trigger_detail);
ALTER TABLE deployments DROP COLUMN container_id;
ALTER TABLE deployments DROP COLUMN address;
ALTER TABLE deployments DROP COLUMN previous_address;
ALTER TABLE deliveries ADD COLUMN body_ref INTEGER REFERENCES delivery_bodies(id);
ALTER TABLE steps ADD COLUMN batch INTEGER;
ALTER TABLE steps ADD COLUMN replicas TEXT;
CREATE TABLE live_v3 (
    service TEXT PRIMARY KEY, colour TEXT, tag TEXT, digest TEXT NOT NULL, image TEXT NOT NULL,
    image_id TEXT, deployment_id INTEGER, since INTEGER NOT NULL, previous_tag TEXT,
    previous_digest TEXT, previous_image_id TEXT, pushed_at INTEGER, routing TEXT
);
INSERT INTO live_v3 (service, colour, tag, digest, image, image_id, deployment_id, since,
                     previous_tag, previous_digest, previous_image_id, pushed_at)
    SELECT service, colour, tag, digest, image, image_id, deployment_id, since,
           previous_tag, previous_digest, previous_image_id, pushed_at FROM live;
DROP TABLE live;
ALTER TABLE live_v3 RENAME TO live;
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

/// What a deployment asks for and who asked.
#[derive(Debug, Clone)]
pub struct NewDeployment {
    pub service: String,
    pub trigger: Trigger,
    /// What the trigger said, for people (command, delivery, pusher).
    pub trigger_detail: Option<serde_json::Value>,
    pub tag: Option<String>,
    pub digest: Option<String>,
    /// The tag shown when only a digest is asked for (a rollback names the
    /// tag it goes back to).
    pub shown_tag: Option<String>,
    /// When the image was pushed (webhooks), for the out-of-order guard.
    pub pushed_at: Option<i64>,
    /// The ledger row of the delivery that asked for it.
    pub delivery: Option<i64>,
    /// The interrupted deployment this one runs again.
    pub resume_of: Option<i64>,
    pub resume_depth: u32,
    /// The strategy asked for this deployment alone (`deploy --strategy`);
    /// `None`: the service's.
    pub strategy: Option<Strategy>,
}

impl NewDeployment {
    /// An operator's request for `tag` or `digest` of `service`.
    pub fn operator(service: &str, command: &str) -> NewDeployment {
        NewDeployment {
            service: service.to_string(),
            trigger: Trigger::Operator,
            trigger_detail: Some(serde_json::json!({ "command": command })),
            tag: None,
            digest: None,
            shown_tag: None,
            pushed_at: None,
            delivery: None,
            resume_of: None,
            resume_depth: 0,
            strategy: None,
        }
    }
}

/// One recorded step of a deployment.
#[derive(Debug, Clone, Serialize)]
pub struct StepRecord {
    pub step: String,
    /// The batch of a rolling update it belongs to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch: Option<u32>,
    /// The replicas it acted on (`-name`: taken out of the routing).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replicas: Option<String>,
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
    /// The step in progress, while running or unwinding.
    pub step: Option<String>,
    pub trigger: Trigger,
    pub trigger_detail: Option<serde_json::Value>,
    pub strategy: Option<Strategy>,
    pub replicas: Option<u32>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub plan: Vec<PlanStep>,
    pub requested_tag: Option<String>,
    pub requested_digest: Option<String>,
    pub tag: Option<String>,
    pub digest: Option<String>,
    pub image: Option<String>,
    pub image_id: Option<String>,
    pub colour: Option<Colour>,
    pub previous_colour: Option<Colour>,
    pub previous_tag: Option<String>,
    pub previous_digest: Option<String>,
    pub failed_step: Option<String>,
    pub failure_kind: Option<FailureKind>,
    pub error: Option<String>,
    pub exit_code: Option<i64>,
    pub log_tail: Option<String>,
    pub pushed_at: Option<i64>,
    pub delivery: Option<i64>,
    pub resume_of: Option<i64>,
    pub resume_depth: u32,
    pub created_at: i64,
    pub updated_at: i64,
    pub finished_at: Option<i64>,
    /// Long-lived connections to the old version still open when its replicas
    /// were stopped (`None`: none were counted).
    pub connections_cut: Option<i64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<StepRecord>,
}

/// The version a service runs, and where nginx sends its traffic.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Live {
    pub service: String,
    /// The colour every replica shares, if they share one.
    pub colour: Option<Colour>,
    pub tag: Option<String>,
    pub digest: String,
    pub image: String,
    pub image_id: Option<String>,
    pub deployment_id: Option<i64>,
    pub since: i64,
    pub previous_tag: Option<String>,
    pub previous_digest: Option<String>,
    pub previous_image_id: Option<String>,
    pub pushed_at: Option<i64>,
    /// Every backend nginx routes to, as the rendered file says (the API
    /// shows them as the service's replicas, with their status).
    #[serde(skip_serializing)]
    pub routing: Option<Routing>,
}

/// How a deployment ended, when it did not succeed.
#[derive(Debug, Clone)]
pub struct Failure {
    pub step: Option<String>,
    pub kind: FailureKind,
    pub error: String,
    pub exit_code: Option<i64>,
    pub log_tail: Option<String>,
}

impl Failure {
    pub fn new(kind: FailureKind, error: impl Into<String>) -> Failure {
        Failure {
            step: None,
            kind,
            error: error.into(),
            exit_code: None,
            log_tail: None,
        }
    }
}

const DEPLOYMENT_COLUMNS: &str =
    "id, service, state, step, trigger, trigger_detail, strategy, replicas, plan, requested_tag, \
     requested_digest, tag, digest, image, image_id, colour, previous_colour, previous_tag, \
     previous_digest, failed_step, failure_kind, error, exit_code, log_tail, pushed_at, \
     delivery, resume_of, resume_depth, created_at, updated_at, finished_at, connections_cut";

fn parse_col<T: std::str::FromStr>(row: &Row, i: usize) -> rusqlite::Result<Option<T>> {
    let text: Option<String> = row.get(i)?;
    Ok(text.and_then(|t| t.parse().ok()))
}

fn json_col<T: serde::de::DeserializeOwned>(row: &Row, i: usize) -> rusqlite::Result<Option<T>> {
    let text: Option<String> = row.get(i)?;
    Ok(text.and_then(|t| serde_json::from_str(&t).ok()))
}

fn deployment_from_row(row: &Row) -> rusqlite::Result<Deployment> {
    Ok(Deployment {
        id: row.get(0)?,
        service: row.get(1)?,
        state: parse_col(row, 2)?.unwrap_or(State::Failed),
        step: row.get(3)?,
        trigger: parse_col(row, 4)?.unwrap_or(Trigger::Operator),
        trigger_detail: json_col(row, 5)?,
        strategy: parse_col(row, 6)?,
        replicas: row.get(7)?,
        plan: json_col(row, 8)?.unwrap_or_default(),
        requested_tag: row.get(9)?,
        requested_digest: row.get(10)?,
        tag: row.get(11)?,
        digest: row.get(12)?,
        image: row.get(13)?,
        image_id: row.get(14)?,
        colour: parse_col(row, 15)?,
        previous_colour: parse_col(row, 16)?,
        previous_tag: row.get(17)?,
        previous_digest: row.get(18)?,
        failed_step: row.get(19)?,
        failure_kind: parse_col(row, 20)?,
        error: row.get(21)?,
        exit_code: row.get(22)?,
        log_tail: row.get(23)?,
        pushed_at: row.get(24)?,
        delivery: row.get(25)?,
        resume_of: row.get(26)?,
        resume_depth: row.get(27)?,
        created_at: row.get(28)?,
        updated_at: row.get(29)?,
        finished_at: row.get(30)?,
        connections_cut: row.get(31)?,
        steps: Vec::new(),
    })
}

const LIVE_COLUMNS: &str = "service, colour, tag, digest, image, image_id, deployment_id, since, \
     previous_tag, previous_digest, previous_image_id, pushed_at, routing";

fn live_from_row(row: &Row) -> rusqlite::Result<Live> {
    Ok(Live {
        service: row.get(0)?,
        colour: parse_col(row, 1)?,
        tag: row.get(2)?,
        digest: row.get(3)?,
        image: row.get(4)?,
        image_id: row.get(5)?,
        deployment_id: row.get(6)?,
        since: row.get(7)?,
        previous_tag: row.get(8)?,
        previous_digest: row.get(9)?,
        previous_image_id: row.get(10)?,
        pushed_at: row.get(11)?,
        routing: json_col(row, 12)?,
    })
}

fn to_json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("plain data serialises")
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
            // One transaction: a crash half way leaves the file as it was. A new
            // file (version 0) gets the schema as it is; an older one each
            // upgrade from its version on.
            let mut before = String::new();
            let mut after = String::new();
            if version == 1 {
                before.push_str("ALTER TABLE deliveries ADD COLUMN body_codec TEXT;");
            }
            if (1..=2).contains(&version) {
                before.push_str(UPGRADE_2_TO_3);
            }
            if (1..=3).contains(&version) {
                before.push_str(UPGRADE_3_TO_4);
            }
            if (1..=2).contains(&version) {
                after.push_str(
                    "INSERT INTO delivery_attempts (delivery_id, attempts) \
                     SELECT delivery_id, MAX(attempt) FROM deliveries GROUP BY delivery_id;",
                );
            }
            conn.execute_batch(&format!(
                "BEGIN IMMEDIATE; {before} {SCHEMA}; {after} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
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
        create_deployment_on(&self.conn(), new)
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

    /// Closes the open step as `error`, its detail ending with `error`.
    fn fail_step_on(tx: &rusqlite::Transaction, id: i64, now: i64, error: &str) -> Result<()> {
        tx.execute(
            "UPDATE steps SET finished_at = ?2, outcome = 'error', detail = CASE \
             WHEN detail IS NULL OR detail = '' THEN ?3 ELSE detail || '; ' || ?3 END \
             WHERE deployment_id = ?1 AND finished_at IS NULL",
            params![id, now, error],
        )?;
        Ok(())
    }

    /// Closes the open step with the error that failed it (before the
    /// `on_failure` hook is recorded after it).
    pub fn fail_step(&self, id: i64, error: &str) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        Self::fail_step_on(&tx, id, now_ms(), error)?;
        tx.commit()?;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn open_step(
        tx: &rusqlite::Transaction,
        id: i64,
        step: &str,
        batch: Option<u32>,
        replicas: Option<&str>,
        now: i64,
        end: Option<(&str, Option<&str>)>,
    ) -> Result<()> {
        let seq: i64 = tx.query_row(
            "SELECT COALESCE(MAX(seq) + 1, 0) FROM steps WHERE deployment_id = ?1",
            [id],
            |r| r.get(0),
        )?;
        let (finished, outcome, detail) = match end {
            Some((outcome, detail)) => (Some(now), Some(outcome), detail),
            None => (None, None, None),
        };
        tx.execute(
            "INSERT INTO steps (deployment_id, seq, step, batch, replicas, started_at, finished_at, \
             outcome, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![id, seq, step, batch, replicas, now, finished, outcome, detail],
        )?;
        Ok(())
    }

    /// A worker takes a queued deployment with its plan, only if it is still
    /// `received` (a newer push may have superseded it). Returns whether it
    /// was claimed.
    pub fn claim(
        &self,
        id: i64,
        strategy: Strategy,
        replicas: u32,
        plan: &[PlanStep],
    ) -> Result<bool> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let now = now_ms();
        let n = tx.execute(
            "UPDATE deployments SET state = 'running', strategy = ?2, replicas = ?3, plan = ?4, \
             updated_at = ?5 WHERE id = ?1 AND state = 'received'",
            params![id, strategy.as_str(), replicas, to_json(&plan), now],
        )?;
        if n == 1 {
            Self::close_step(&tx, id, now)?;
        }
        tx.commit()?;
        Ok(n == 1)
    }

    /// Replaces the rest of the plan (a rolling update rolling back plans its
    /// way back when it fails).
    pub fn set_plan(&self, id: i64, plan: &[PlanStep]) -> Result<()> {
        self.conn().execute(
            "UPDATE deployments SET plan = ?2, updated_at = ?3 WHERE id = ?1",
            params![id, to_json(&plan), now_ms()],
        )?;
        Ok(())
    }

    /// Records `step` as the one in progress: closes the open step as `ok`
    /// and opens one for it.
    pub fn begin_step(&self, id: i64, step: &PlanStep, service: &str) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let now = now_ms();
        Self::close_step(&tx, id, now)?;
        let replicas = step.replicas(service);
        let replicas = (!replicas.is_empty()).then(|| replicas.join(","));
        let batch = Some(step.batch()).filter(|b| *b > 0);
        Self::open_step(&tx, id, step.name(), batch, replicas.as_deref(), now, None)?;
        let n = tx.execute(
            "UPDATE deployments SET step = ?2, updated_at = ?3 WHERE id = ?1",
            params![id, step.name(), now],
        )?;
        if n == 0 {
            return Err(StoreError::NotFound(id));
        }
        tx.commit()?;
        Ok(())
    }

    /// The deployment failed and now undoes what it did: the open step is
    /// closed with the error; the steps that follow are the way back.
    pub fn begin_unwinding(&self, id: i64, failure: &Failure) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let now = now_ms();
        Self::fail_step_on(&tx, id, now, &failure.error)?;
        tx.execute(
            "UPDATE deployments SET state = 'unwinding', failed_step = ?2, failure_kind = ?3, \
             error = ?4, exit_code = ?5, log_tail = ?6, updated_at = ?7 WHERE id = ?1",
            params![
                id,
                failure.step,
                failure.kind.as_str(),
                failure.error,
                failure.exit_code,
                failure.log_tail,
                now
            ],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Ends a deployment. The open step is closed as `ok`, or with the
    /// failure's error when the failure happened in it; the end state is
    /// recorded as a last, zero-length step.
    pub fn finish(&self, id: i64, end: State, failure: Option<&Failure>) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let now = now_ms();
        let unwinding: bool = tx
            .query_row(
                "SELECT state = 'unwinding' FROM deployments WHERE id = ?1",
                [id],
                |r| r.get(0),
            )
            .optional()?
            .ok_or(StoreError::NotFound(id))?;
        match failure.filter(|_| !unwinding) {
            // The failure is the open step's own.
            Some(f) => {
                Self::fail_step_on(&tx, id, now, &f.error)?;
            }
            None => Self::close_step(&tx, id, now)?,
        }
        let error = failure.map(|f| f.error.as_str());
        Self::open_step(
            &tx,
            id,
            end.as_str(),
            None,
            None,
            now,
            Some((end.as_str(), error)),
        )?;
        match failure {
            Some(f) => tx.execute(
                "UPDATE deployments SET state = ?2, step = NULL, failed_step = COALESCE(failed_step, ?3), \
                 failure_kind = COALESCE(failure_kind, ?4), error = ?5, \
                 exit_code = COALESCE(exit_code, ?6), log_tail = COALESCE(log_tail, ?7), \
                 updated_at = ?8, finished_at = ?8 WHERE id = ?1",
                params![
                    id,
                    end.as_str(),
                    f.step,
                    f.kind.as_str(),
                    f.error,
                    f.exit_code,
                    f.log_tail,
                    now
                ],
            )?,
            None => tx.execute(
                "UPDATE deployments SET state = ?2, step = NULL, updated_at = ?3, finished_at = ?3 \
                 WHERE id = ?1",
                params![id, end.as_str(), now],
            )?,
        };
        tx.commit()?;
        Ok(())
    }

    /// Closes the open step now: `ok`, or `error` (a hook that failed
    /// without failing the deployment, a failed step before its way back).
    pub fn end_step(&self, id: i64, ok: bool) -> Result<()> {
        self.conn().execute(
            "UPDATE steps SET finished_at = ?2, outcome = ?3 \
             WHERE deployment_id = ?1 AND finished_at IS NULL",
            params![id, now_ms(), if ok { "ok" } else { "error" }],
        )?;
        Ok(())
    }

    /// The deployment this one re-runs (or one before it, along the chain of
    /// re-runs after interruptions) that finished the release of `digest`.
    pub fn release_done(&self, id: i64, digest: &str) -> Result<Option<i64>> {
        Ok(self
            .conn()
            .query_row(
                "WITH RECURSIVE chain(id) AS ( \
                   SELECT resume_of FROM deployments WHERE id = ?1 AND resume_of IS NOT NULL \
                   UNION SELECT d.resume_of FROM deployments d JOIN chain c ON d.id = c.id \
                   WHERE d.resume_of IS NOT NULL) \
                 SELECT s.deployment_id FROM steps s JOIN deployments d ON d.id = s.deployment_id \
                 WHERE s.deployment_id IN chain AND s.step = 'releasing' AND s.outcome = 'ok' \
                 AND d.digest = ?2 ORDER BY s.deployment_id DESC LIMIT 1",
                params![id, digest],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Adds `n` to the long-lived connections the deployment cut.
    pub fn add_connections_cut(&self, id: i64, n: i64) -> Result<()> {
        self.conn().execute(
            "UPDATE deployments SET connections_cut = COALESCE(connections_cut, 0) + ?2 WHERE id = ?1",
            params![id, n],
        )?;
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

    /// What the deployment resolved to deploy, and what was live before it.
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
             previous_tag = ?6, previous_digest = ?7, updated_at = ?8 WHERE id = ?1",
            params![
                id,
                tag,
                digest,
                image,
                previous.and_then(|l| l.colour).map(|c| c.as_str()),
                previous.and_then(|l| l.tag.clone()),
                previous.map(|l| l.digest.clone()),
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

    /// The images deployments of `service` have run (what pruning may
    /// consider: never an image greenlight did not deploy).
    pub fn deployed_image_ids(&self, service: &str) -> Result<HashSet<String>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT DISTINCT image_id FROM deployments WHERE service = ?1 AND image_id IS NOT NULL",
        )?;
        let ids = stmt
            .query_map([service], |r| r.get::<_, String>(0))?
            .collect::<rusqlite::Result<HashSet<String>>>()?;
        Ok(ids)
    }

    /// The colour of the deployment's new replicas.
    pub fn set_colour(&self, id: i64, colour: Colour) -> Result<()> {
        self.conn().execute(
            "UPDATE deployments SET colour = ?2, updated_at = ?3 WHERE id = ?1",
            params![id, colour.as_str(), now_ms()],
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
            "SELECT step, batch, replicas, started_at, finished_at, outcome, detail FROM steps \
             WHERE deployment_id = ?1 ORDER BY seq",
        )?;
        d.steps = stmt
            .query_map([id], |r| {
                Ok(StepRecord {
                    step: r.get(0)?,
                    batch: r.get(1)?,
                    replicas: r.get(2)?,
                    started_at: r.get(3)?,
                    finished_at: r.get(4)?,
                    outcome: r.get(5)?,
                    detail: r.get(6)?,
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

    /// Ends a still-queued deployment as superseded by `by`; false if a worker
    /// already claimed it.
    pub fn supersede(&self, id: i64, by: i64) -> Result<bool> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let done = supersede_on(&tx, id, by)?;
        tx.commit()?;
        Ok(done)
    }

    /// Deployments of a service not yet finished, oldest first.
    pub fn active(&self, service: &str) -> Result<Vec<Deployment>> {
        active_on(&self.conn(), service)
    }

    pub fn live(&self, service: &str) -> Result<Option<Live>> {
        live_on(&self.conn(), service)
    }

    pub fn set_live(&self, live: &Live) -> Result<()> {
        self.conn().execute(
            &format!(
                "INSERT INTO live ({LIVE_COLUMNS}) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13) \
                 ON CONFLICT(service) DO UPDATE SET colour = ?2, tag = ?3, digest = ?4, image = ?5, \
                 image_id = ?6, deployment_id = ?7, since = ?8, previous_tag = ?9, \
                 previous_digest = ?10, previous_image_id = ?11, pushed_at = ?12, routing = ?13"
            ),
            params![
                live.service,
                live.colour.map(|c| c.as_str()),
                live.tag,
                live.digest,
                live.image,
                live.image_id,
                live.deployment_id,
                live.since,
                live.previous_tag,
                live.previous_digest,
                live.previous_image_id,
                live.pushed_at,
                live.routing.as_ref().map(to_json)
            ],
        )?;
        Ok(())
    }

    /// Mirrors what nginx now routes `service` to (a rolling update changes the
    /// routing many times before the version it deploys is live).
    pub fn set_routing(&self, routing: &Routing) -> Result<()> {
        self.conn().execute(
            "UPDATE live SET routing = ?2, colour = ?3 WHERE service = ?1",
            params![
                routing.service,
                to_json(routing),
                routing.colour().map(|c| c.as_str())
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

/// See [`Store::create_deployment`]; on the caller's connection (intake
/// creates a delivery's deployments in the transaction that records it).
pub fn create_deployment_on(conn: &Connection, new: &NewDeployment) -> Result<i64> {
    let now = now_ms();
    conn.execute(
        "INSERT INTO deployments (service, state, trigger, trigger_detail, requested_tag, \
         requested_digest, tag, digest, pushed_at, delivery, resume_of, resume_depth, \
         created_at, updated_at, strategy) \
         VALUES (?1, 'received', ?2, ?3, ?4, ?5, COALESCE(?4, ?6), ?5, ?7, ?8, ?9, ?10, ?11, ?11, ?12)",
        params![
            new.service,
            new.trigger.as_str(),
            new.trigger_detail.as_ref().map(|v| v.to_string()),
            new.tag,
            new.digest,
            new.shown_tag,
            new.pushed_at,
            new.delivery,
            new.resume_of,
            new.resume_depth,
            now,
            new.strategy.map(|s| s.as_str())
        ],
    )?;
    let id = conn.last_insert_rowid();
    conn.execute(
        "INSERT INTO steps (deployment_id, seq, step, started_at) VALUES (?1, 0, 'received', ?2)",
        params![id, now],
    )?;
    Ok(id)
}

/// See [`Store::supersede`]; on the caller's transaction.
pub fn supersede_on(tx: &rusqlite::Transaction, id: i64, by: i64) -> Result<bool> {
    let now = now_ms();
    let error = format!("superseded by deployment {by} (a newer push)");
    let n = tx.execute(
        "UPDATE deployments SET state = 'superseded', error = ?2, updated_at = ?3, finished_at = ?3 \
         WHERE id = ?1 AND state = 'received'",
        params![id, error, now],
    )?;
    if n == 1 {
        Store::close_step(tx, id, now)?;
        Store::open_step(
            tx,
            id,
            State::Superseded.as_str(),
            None,
            None,
            now,
            Some((State::Superseded.as_str(), Some(&error))),
        )?;
    }
    Ok(n == 1)
}

/// See [`Store::active`]; on the caller's connection.
pub fn active_on(conn: &Connection, service: &str) -> Result<Vec<Deployment>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE service = ?1 AND finished_at IS NULL ORDER BY id"
    ))?;
    let rows = stmt
        .query_map([service], deployment_from_row)?
        .collect::<rusqlite::Result<_>>()?;
    Ok(rows)
}

/// See [`Store::live`]; on the caller's connection.
pub fn live_on(conn: &Connection, service: &str) -> Result<Option<Live>> {
    Ok(conn
        .query_row(
            &format!("SELECT {LIVE_COLUMNS} FROM live WHERE service = ?1"),
            [service],
            live_from_row,
        )
        .optional()?)
}

/// A finished deployment of `web` for tests of what shows one (the page, the
/// messages); tests override what they are about.
#[cfg(test)]
pub(crate) fn sample_deployment(state: State) -> Deployment {
    Deployment {
        id: 7,
        service: "web".into(),
        state,
        step: None,
        trigger: Trigger::Github,
        trigger_detail: None,
        strategy: Some(Strategy::BlueGreen),
        replicas: Some(1),
        plan: Vec::new(),
        requested_tag: Some("v2".into()),
        requested_digest: None,
        tag: Some("v2".into()),
        digest: Some(format!("sha256:{}", "ab".repeat(32))),
        image: None,
        image_id: None,
        colour: Some(Colour::Green),
        previous_colour: None,
        previous_tag: None,
        previous_digest: None,
        failed_step: None,
        failure_kind: None,
        error: None,
        exit_code: None,
        log_tail: None,
        pushed_at: None,
        delivery: None,
        resume_of: None,
        resume_depth: 0,
        created_at: 1_000,
        updated_at: 3_000,
        finished_at: Some(3_000),
        connections_cut: None,
        steps: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::routing::{Backend, Role};

    /// The schema as version 2 wrote it, frozen: upgrades are tested from it.
    const SCHEMA_2: &str = r#"
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

    /// A ledger written by schema version 1 (bodies stored as received) opens
    /// under the current one: its columns are added, its old rows read back
    /// whole, and new rows are packed beside them.
    #[test]
    fn a_version_1_state_file_is_migrated_and_its_raw_bodies_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let raw = br#"{"action":"published","package":{"name":"www"}}"#;
        {
            let conn = Connection::open(&path).unwrap();
            let v1 = SCHEMA_2.replace("    body_codec    TEXT,\n", "");
            assert_ne!(v1, SCHEMA_2, "the version 1 schema has no body_codec");
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
        store.record_for_test(crate::webhook::Source::Github, "new-guid", raw);
        assert_eq!(store.delivery("new-guid").unwrap().unwrap().raw_body, raw);
        let stored: Vec<(Option<String>, bool)> = store
            .conn()
            .prepare("SELECT body_codec, body_ref IS NOT NULL FROM deliveries ORDER BY id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(stored, [(None, false), (None, true)]);
        drop(store);
        // Opening it again changes nothing (no second ALTER).
        Store::open(&path).unwrap();
    }

    /// A version 2 state file (bodies packed inline, attempts counted by rows)
    /// opens: its bodies read back, and the next attempt of a delivery id
    /// continues its count.
    #[test]
    fn a_version_2_state_file_opens_and_its_attempts_continue() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let raw = br#"{"action":"published"}"#;
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(SCHEMA_2).unwrap();
            conn.pragma_update(None, "user_version", 2).unwrap();
            for attempt in [1, 2] {
                conn.execute(
                    "INSERT INTO deliveries (source, delivery_id, attempt, received_at, headers, \
                     body, body_codec, verdict) VALUES ('github', 'guid', ?1, 1, '{}', ?2, 'lz4', 'stale')",
                    params![attempt, lz4_flex::compress_prepend_size(raw)],
                )
                .unwrap();
            }
        }
        let store = Store::open(&path).unwrap();
        let old = store.delivery("guid").unwrap().unwrap();
        assert_eq!((old.attempt, old.raw_body.as_slice()), (2, &raw[..]));
        let next = store.record_for_test(crate::webhook::Source::Github, "guid", raw);
        assert_eq!(next.attempt, 3);
        let (bodies, version): (i64, i64) = store
            .conn()
            .query_row(
                "SELECT (SELECT count(*) FROM delivery_bodies), (SELECT user_version FROM pragma_user_version)",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!((bodies, version), (1, SCHEMA_VERSION));
    }

    /// Deployments and live state written by version 2 (one container, control
    /// data in trigger_detail) read back under version 3.
    #[test]
    fn a_version_2_state_file_keeps_its_deployments_and_live_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(SCHEMA_2).unwrap();
            conn.pragma_update(None, "user_version", 2).unwrap();
            conn.execute_batch(
                r#"INSERT INTO deployments (service, state, trigger, trigger_detail, requested_tag,
                       tag, digest, colour, container_id, address, created_at, updated_at, finished_at)
                   VALUES ('web', 'succeeded', 'operator', '{"command":"deploy"}', 'v1', 'v1',
                       'sha256:1', 'blue', 'c1', '172.18.0.2:80', 1, 2, 2);
                   INSERT INTO deployments (service, state, trigger, trigger_detail, requested_tag,
                       created_at, updated_at)
                   VALUES ('web', 'health_gate', 'github',
                       '{"resumes": 1, "resume_depth": 1, "delivery_id": "g"}', 'v2', 3, 4);
                   INSERT INTO live (service, colour, tag, digest, image, container_id, address,
                       deployment_id, since)
                   VALUES ('web', 'blue', 'v1', 'sha256:1', 'r/web@sha256:1', 'c1',
                       '172.18.0.2:80', 1, 2);"#,
            )
            .unwrap();
        }
        let store = Store::open(&path).unwrap();
        let done = store.deployment(1).unwrap().unwrap();
        assert_eq!(done.state, State::Succeeded);
        assert_eq!(done.trigger, Trigger::Operator);
        assert_eq!(done.colour, Some(Colour::Blue));
        let running = store.deployment(2).unwrap().unwrap();
        assert_eq!(running.state, State::Running);
        assert_eq!(running.step.as_deref(), Some("health_gate"));
        assert_eq!(running.trigger, Trigger::Github);
        assert_eq!((running.resume_of, running.resume_depth), (Some(1), 1));
        let live = store.live("web").unwrap().unwrap();
        assert_eq!(live.digest, "sha256:1");
        assert_eq!(live.colour, Some(Colour::Blue));
        assert_eq!(
            live.routing, None,
            "reconcile fills it from the rendered file"
        );
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
            tag: Some("v1".into()),
            ..NewDeployment::operator(service, "deploy")
        }
    }

    #[test]
    fn steps_are_recorded_as_timed_rows_with_their_batch_and_replicas() {
        let store = Store::in_memory().unwrap();
        let id = store.create_deployment(&new("web")).unwrap();
        let plan = [PlanStep::Resolving, PlanStep::Pulling];
        assert!(store.claim(id, Strategy::Rolling, 3, &plan).unwrap());
        assert!(
            !store.claim(id, Strategy::Rolling, 3, &plan).unwrap(),
            "once"
        );
        store.begin_step(id, &PlanStep::Resolving, "web").unwrap();
        store.note(id, "v1 -> sha256:abc").unwrap();
        let slot = crate::domain::plan::Slot {
            colour: Colour::Green,
            index: 2,
        };
        store
            .begin_step(
                id,
                &PlanStep::Starting {
                    batch: 2,
                    slots: vec![slot],
                },
                "web",
            )
            .unwrap();
        let failure = Failure {
            step: Some("starting".into()),
            ..Failure::new(FailureKind::Runtime, "no such network")
        };
        store.finish(id, State::Failed, Some(&failure)).unwrap();
        let d = store.deployment(id).unwrap().unwrap();
        assert_eq!(d.state, State::Failed);
        assert_eq!(d.step, None);
        assert_eq!(d.strategy, Some(Strategy::Rolling));
        assert_eq!(d.plan, plan);
        assert_eq!(d.failed_step.as_deref(), Some("starting"));
        assert_eq!(d.failure_kind, Some(FailureKind::Runtime));
        let steps: Vec<_> = d
            .steps
            .iter()
            .map(|s| (s.step.as_str(), s.outcome.as_deref(), s.batch))
            .collect();
        assert_eq!(
            steps,
            vec![
                ("received", Some("ok"), None),
                ("resolving", Some("ok"), None),
                ("starting", Some("error"), Some(2)),
                ("failed", Some("failed"), None)
            ]
        );
        assert_eq!(d.steps[1].detail.as_deref(), Some("v1 -> sha256:abc"));
        assert_eq!(d.steps[2].replicas.as_deref(), Some("web-green-2"));
        assert!(d.steps.iter().all(|s| s.finished_at.is_some()));
        assert!(d.finished_at.is_some());
        assert!(store.unfinished().unwrap().is_empty());
    }

    #[test]
    fn a_failure_while_unwinding_belongs_to_the_step_that_failed_first() {
        let store = Store::in_memory().unwrap();
        let id = store.create_deployment(&new("web")).unwrap();
        store.claim(id, Strategy::BlueGreen, 1, &[]).unwrap();
        store.begin_step(id, &PlanStep::Soaking, "web").unwrap();
        let failure = Failure {
            step: Some("soaking".into()),
            ..Failure::new(FailureKind::Unhealthy, "web-green-1 exited")
        };
        store.begin_unwinding(id, &failure).unwrap();
        assert_eq!(
            store.deployment(id).unwrap().unwrap().state,
            State::Unwinding
        );
        store
            .begin_step(id, &PlanStep::Draining { batch: 0 }, "web")
            .unwrap();
        store.finish(id, State::RolledBack, Some(&failure)).unwrap();
        let d = store.deployment(id).unwrap().unwrap();
        let steps: Vec<_> = d
            .steps
            .iter()
            .map(|s| (s.step.as_str(), s.outcome.as_deref()))
            .collect();
        assert_eq!(
            steps,
            vec![
                ("received", Some("ok")),
                ("soaking", Some("error")),
                ("draining", Some("ok")),
                ("rolled_back", Some("rolled_back"))
            ]
        );
        assert_eq!(d.failed_step.as_deref(), Some("soaking"));
    }

    #[test]
    fn unfinished_and_history_are_per_service_newest_first() {
        let store = Store::in_memory().unwrap();
        let a = store.create_deployment(&new("web")).unwrap();
        let b = store.create_deployment(&new("api")).unwrap();
        let c = store.create_deployment(&new("web")).unwrap();
        store.finish(a, State::Succeeded, None).unwrap();
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
        let routing = Routing {
            service: "web".into(),
            generation: 4,
            split: None,
            backends: vec![Backend {
                id: "c2".into(),
                name: "web-green-1".into(),
                address: "172.18.0.3:8080".into(),
                colour: Colour::Green,
                deployment: 2,
                digest: "sha256:2".into(),
                role: Role::New,
                weight: 1,
                since: 5,
            }],
        };
        let live = Live {
            service: "web".into(),
            colour: Some(Colour::Green),
            tag: Some("v2".into()),
            digest: "sha256:2".into(),
            image: "r/web@sha256:2".into(),
            image_id: Some("sha256:i2".into()),
            deployment_id: Some(2),
            since: 5,
            previous_tag: Some("v1".into()),
            previous_digest: Some("sha256:1".into()),
            previous_image_id: None,
            pushed_at: Some(7),
            routing: Some(routing.clone()),
        };
        {
            let store = Store::open(&path).unwrap();
            store
                .set_live(&Live {
                    colour: Some(Colour::Blue),
                    ..live.clone()
                })
                .unwrap();
            store.set_live(&live).unwrap();
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.live("web").unwrap(), Some(live));
        assert_eq!(store.live("api").unwrap(), None);
        // A rolling update moves the routing before the version is live.
        let mixed = routing.next(Vec::new());
        store.set_routing(&mixed).unwrap();
        let after = store.live("web").unwrap().unwrap();
        assert_eq!(after.routing, Some(mixed));
        assert_eq!(after.colour, None);
        assert_eq!(after.digest, "sha256:2");
    }
}
