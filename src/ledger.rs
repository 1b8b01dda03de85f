//! The delivery ledger: every authenticated webhook delivery with its raw body,
//! its non-secret headers and what became of it, so any delivery can be looked
//! at and redelivered.
//!
//! One path writes it: [`GroupCommit`], a writer thread that takes every
//! delivery waiting, decides what each means ([`intake::admit`]) and records
//! it, its deployments and its verdict in one transaction. A repeated delivery
//! costs what a new one costs: its attempt number is a counter (never a count
//! of earlier rows), and a body already stored is referenced, not stored again.

use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::deploy::intake::{self, Admitted};
use crate::store::{Result, Store};
use crate::webhook::{Item, Source};

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

/// A delivery ready for the ledger.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    pub source: Source,
    pub delivery_id: String,
    pub redelivery_of: Option<i64>,
    /// The non-secret headers as the JSON object stored.
    headers: String,
    body: PackedBody,
    /// SHA-256 of the raw body: a body already stored is not stored again.
    digest: [u8; 32],
}

impl NewDelivery {
    /// Prepares a delivery on the caller's thread (the request's worker): the
    /// secret headers dropped, the rest as JSON, the body hashed and packed.
    /// The ledger's writer thread, which every concurrent delivery waits for,
    /// then only copies bytes.
    pub fn new(
        source: Source,
        delivery_id: String,
        redelivery_of: Option<i64>,
        headers: &[(String, String)],
        raw_body: &[u8],
    ) -> NewDelivery {
        NewDelivery {
            source,
            delivery_id,
            redelivery_of,
            headers: headers_json(headers),
            body: PackedBody::pack(raw_body),
            digest: Sha256::digest(raw_body).into(),
        }
    }
}

/// A delivery's raw body as the ledger keeps it: LZ4-compressed (block format,
/// its length first), which makes a registry's JSON ~3.5x smaller. Packing runs
/// where the delivery is received, so the ledger writer only copies bytes.
#[derive(Clone)]
struct PackedBody(Vec<u8>);

/// `body_codec` of a packed body; rows written before packing have none.
const LZ4: &str = "lz4";

impl PackedBody {
    fn pack(raw: &[u8]) -> PackedBody {
        PackedBody(lz4_flex::compress_prepend_size(raw))
    }
}

impl std::fmt::Debug for PackedBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedBody({} bytes)", self.0.len())
    }
}

/// The raw body of a stored row: unpacked when its codec says so, or why it
/// cannot be (a damaged database file, or a codec this version does not know).
fn unpack(stored: Vec<u8>, codec: Option<&str>) -> std::result::Result<Vec<u8>, String> {
    match codec {
        None => Ok(stored),
        Some(LZ4) => {
            // LZ4 expands at most ~255x: a larger stated length is damage, and
            // is not allocated.
            let stated = stored
                .first_chunk::<4>()
                .map_or(0, |n| u32::from_le_bytes(*n) as usize);
            if stated > stored.len().saturating_mul(255) {
                return Err(format!(
                    "its stored body is damaged (states {stated} bytes from {})",
                    stored.len()
                ));
            }
            lz4_flex::decompress_size_prepended(&stored)
                .map_err(|e| format!("its stored body is damaged ({e})"))
        }
        Some(other) => Err(format!("its stored body uses an unknown codec {other:?}")),
    }
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
    /// Why a stored body could not be read back, when it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_error: Option<String>,
}

/// A row's columns; the body is kept inline by rows of schema 1 and 2, in
/// `delivery_bodies` (shared by identical bodies) from schema 3 on.
const COLUMNS: &str = "d.id, d.source, d.delivery_id, d.attempt, d.redelivery_of, d.received_at, \
     d.verdict, d.detail, d.services, d.events, d.headers, \
     CASE WHEN d.body_ref IS NULL THEN d.body ELSE b.body END, \
     CASE WHEN d.body_ref IS NULL THEN d.body_codec ELSE b.codec END \
     FROM deliveries d LEFT JOIN delivery_bodies b ON b.id = d.body_ref";

/// The same without bodies, for listings.
const LIST_COLUMNS: &str = "d.id, d.source, d.delivery_id, d.attempt, d.redelivery_of, \
     d.received_at, d.verdict, d.detail, d.services, d.events, d.headers, NULL, NULL \
     FROM deliveries d";

fn from_row(row: &Row, with_body: bool) -> rusqlite::Result<Delivery> {
    let services: Option<String> = row.get(8)?;
    let events: Option<String> = row.get(9)?;
    let headers: String = row.get(10)?;
    let (body, body_error) = if with_body {
        let codec: Option<String> = row.get(12)?;
        let stored: Option<Vec<u8>> = row.get(11)?;
        match unpack(stored.unwrap_or_default(), codec.as_deref()) {
            Ok(body) => (body, None),
            Err(why) => (Vec::new(), Some(why)),
        }
    } else {
        (Vec::new(), None)
    };
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
        raw_body: body,
        body_error,
    })
}

/// The non-secret headers as a JSON object with lowercased names.
fn headers_json(headers: &[(String, String)]) -> String {
    let map: std::collections::BTreeMap<String, &str> = headers
        .iter()
        .filter(|(k, _)| storable_header(k))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.as_str()))
        .collect();
    serde_json::to_string(&map).unwrap_or_else(|_| "{}".into())
}

/// An authenticated, parsed delivery waiting for the writer.
#[derive(Debug)]
pub struct Entry {
    pub delivery: NewDelivery,
    pub received_at: i64,
    pub items: Vec<Item>,
    /// GitHub's hello: recorded, answered `pong`.
    pub ping: bool,
}

/// A delivery as recorded, with what it came to.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub delivery_id: String,
    pub row: i64,
    pub attempt: i64,
    pub admitted: Admitted,
}

/// The next attempt number of a delivery id (GitHub redelivers with the same
/// GUID): a counter per id, one index lookup however many attempts came before.
fn next_attempt(conn: &Connection, delivery_id: &str) -> rusqlite::Result<i64> {
    conn.prepare_cached(
        "INSERT INTO delivery_attempts (delivery_id, attempts) VALUES (?1, 1) \
         ON CONFLICT(delivery_id) DO UPDATE SET attempts = attempts + 1 RETURNING attempts",
    )?
    .query_row([delivery_id], |r| r.get(0))
}

/// The row of `body` in `delivery_bodies`, stored now unless an identical body
/// (same SHA-256) already is: a replayed delivery adds no body.
fn body_row(conn: &Connection, d: &NewDelivery) -> rusqlite::Result<i64> {
    let found = conn
        .prepare_cached("SELECT id FROM delivery_bodies WHERE digest = ?1")?
        .query_row([&d.digest[..]], |r| r.get(0))
        .optional()?;
    if let Some(id) = found {
        return Ok(id);
    }
    conn.prepare_cached("INSERT INTO delivery_bodies (digest, body, codec) VALUES (?1, ?2, ?3)")?
        .execute(params![&d.digest[..], d.body.0, LZ4])?;
    Ok(conn.last_insert_rowid())
}

/// Records one delivery on `conn` (the caller's transaction): its row, what
/// intake decides about each of its pushes (and the deployments that
/// creates), its verdict and its links.
fn record_on(conn: &rusqlite::Transaction, config: &Config, e: &Entry) -> Result<Recorded> {
    let d = &e.delivery;
    let attempt = next_attempt(conn, &d.delivery_id)?;
    let body = body_row(conn, d)?;
    // The row first: the deployments a push creates refer to it.
    let row: i64 = conn
        .prepare_cached(
            "INSERT INTO deliveries (source, delivery_id, attempt, redelivery_of, received_at, \
             headers, body, body_ref, verdict) VALUES (?1, ?2, ?3, ?4, ?5, ?6, X'', ?7, 'received') \
             RETURNING id",
        )?
        .query_row(
            params![
                d.source.as_str(),
                d.delivery_id,
                attempt,
                d.redelivery_of,
                e.received_at,
                d.headers,
                body
            ],
            |r| r.get(0),
        )?;
    let admitted = intake::admit(config, conn, &e.items, e.ping, row, e.received_at)?;
    conn.prepare_cached(
        "UPDATE deliveries SET verdict = ?2, detail = ?3, events = ?4, services = ?5 WHERE id = ?1",
    )?
    .execute(params![
        row,
        admitted.verdict.as_str(),
        admitted.detail,
        serde_json::to_string(&admitted.outcomes).unwrap_or_else(|_| "null".into()),
        admitted.services.join(","),
    ])?;
    for deployment in &admitted.deployments {
        link(conn, row, *deployment)?;
    }
    Ok(Recorded {
        delivery_id: d.delivery_id.clone(),
        row,
        attempt,
        admitted,
    })
}

fn link(conn: &Connection, delivery: i64, deployment: i64) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT OR IGNORE INTO delivery_deployments (delivery, deployment_id) VALUES (?1, ?2)",
    )?
    .execute(params![delivery, deployment])?;
    Ok(())
}

/// Most deliveries written in one transaction.
const MAX_BATCH: usize = 128;

struct Job {
    entry: Entry,
    done: tokio::sync::oneshot::Sender<Result<Recorded>>,
}

/// What runs after a delivery's transaction committed, on the writer thread
/// (in the Tokio runtime's context): hands the deployments it created to their
/// service queues, so none is lost when the request that brought it is gone.
pub type AfterCommit = Box<dyn Fn(&Recorded) + Send>;

/// The ledger's writer: one thread takes every delivery waiting while it wrote
/// the previous batch, decides and records them in one transaction, then
/// answers each. Concurrent requests share a commit instead of queueing for
/// one each; each still gets its answer only after its row is committed.
pub struct GroupCommit {
    jobs: std::sync::mpsc::Sender<Job>,
}

/// The writer thread is gone (it only stops when the ledger is dropped).
#[derive(Debug, thiserror::Error)]
#[error("the ledger writer has stopped")]
pub struct WriterGone;

impl GroupCommit {
    /// Starts the writer thread (from within a Tokio runtime, whose context
    /// `after_commit` runs in); it ends when the `GroupCommit` is dropped.
    pub fn start(
        store: Store,
        config: crate::config::live::Live,
        after_commit: AfterCommit,
    ) -> std::io::Result<GroupCommit> {
        let (jobs, queue) = std::sync::mpsc::channel::<Job>();
        let runtime = tokio::runtime::Handle::try_current().ok();
        std::thread::Builder::new()
            .name("ledger-writer".into())
            .spawn(move || {
                let _context = runtime.as_ref().map(|r| r.enter());
                while let Ok(first) = queue.recv() {
                    let mut batch = vec![first];
                    while batch.len() < MAX_BATCH {
                        match queue.try_recv() {
                            Ok(job) => batch.push(job),
                            Err(_) => break,
                        }
                    }
                    let (entries, answers): (Vec<Entry>, Vec<_>) =
                        batch.into_iter().map(|j| (j.entry, j.done)).unzip();
                    // The config as it is at this batch (a reload may have changed it).
                    let results = store.record_deliveries(&config.get(), &entries);
                    for (done, result) in answers.into_iter().zip(results) {
                        if let Ok(recorded) = &result {
                            after_commit(recorded);
                        }
                        // The request may have gone away; its row stays recorded.
                        let _ = done.send(result);
                    }
                }
            })?;
        Ok(GroupCommit { jobs })
    }

    /// Records `entry` and waits until its transaction has committed.
    pub async fn record(&self, entry: Entry) -> std::result::Result<Result<Recorded>, WriterGone> {
        let (done, committed) = tokio::sync::oneshot::channel();
        self.jobs
            .send(Job { entry, done })
            .map_err(|_| WriterGone)?;
        committed.await.map_err(|_| WriterGone)
    }
}

impl Store {
    /// Group commit: decides and records deliveries in one transaction, in
    /// order. When that fails, each is tried again in its own transaction, so
    /// one bad entry cannot fail the others. A result is only `Ok` once
    /// committed.
    pub fn record_deliveries(&self, config: &Config, batch: &[Entry]) -> Vec<Result<Recorded>> {
        let mut conn = self.conn();
        let together = (|| -> Result<Vec<Recorded>> {
            let tx = conn.transaction()?;
            let rows = batch
                .iter()
                .map(|e| record_on(&tx, config, e))
                .collect::<Result<Vec<_>>>()?;
            tx.commit()?;
            Ok(rows)
        })();
        match together {
            Ok(rows) => rows.into_iter().map(Ok).collect(),
            Err(_) if batch.len() > 1 => batch
                .iter()
                .map(|e| {
                    let tx = conn.transaction()?;
                    let row = record_on(&tx, config, e)?;
                    tx.commit()?;
                    Ok(row)
                })
                .collect(),
            Err(e) => vec![Err(e)],
        }
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
                "SELECT {LIST_COLUMNS} \
                 WHERE (?1 IS NULL OR ',' || d.services || ',' LIKE '%,' || ?1 || ',%') \
                 ORDER BY d.id DESC LIMIT ?2"
            ))?;
            let rows = stmt
                .query_map(params![service, limit as i64], |r| from_row(r, false))?
                .collect::<rusqlite::Result<_>>()?;
            rows
        };
        self.attach_deployments(&mut list)?;
        Ok(list)
    }

    /// Drops the raw body and headers of deliveries received before `before`
    /// (epoch ms), and the stored bodies no delivery refers to any more; their
    /// rows, verdicts and links stay. Returns how many deliveries lost theirs.
    pub fn prune_bodies(&self, before: i64) -> Result<usize> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let n = tx.execute(
            "UPDATE deliveries SET body = X'', body_codec = NULL, body_ref = NULL, headers = '{}' \
             WHERE received_at < ?1 AND (length(body) > 0 OR body_ref IS NOT NULL)",
            params![before],
        )?;
        if n > 0 {
            tx.execute(
                "DELETE FROM delivery_bodies WHERE NOT EXISTS \
                 (SELECT 1 FROM deliveries WHERE body_ref = delivery_bodies.id)",
                [],
            )?;
        }
        tx.commit()?;
        Ok(n)
    }

    /// The newest attempt of a delivery id (or a ledger row number), with its body.
    pub fn delivery(&self, id: &str) -> Result<Option<Delivery>> {
        let found = {
            let conn = self.conn();
            let by_id = conn
                .query_row(
                    &format!(
                        "SELECT {COLUMNS} WHERE d.delivery_id = ?1 ORDER BY d.id DESC LIMIT 1"
                    ),
                    [id],
                    |r| from_row(r, true),
                )
                .optional()?;
            match (by_id, id.parse::<i64>()) {
                (Some(d), _) => Some(d),
                (None, Ok(row)) => conn
                    .query_row(&format!("SELECT {COLUMNS} WHERE d.id = ?1"), [row], |r| {
                        from_row(r, true)
                    })
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
        Ok(link(&self.conn(), delivery, deployment)?)
    }
}

/// For tests of what reads the ledger: deliveries recorded through the one path.
#[cfg(test)]
impl Store {
    /// A delivery of `source` with body `body` and no events (`ignored`).
    pub(crate) fn record_for_test(&self, source: Source, id: &str, body: &[u8]) -> Recorded {
        let entry = Entry {
            delivery: NewDelivery::new(source, id.into(), None, &[], body),
            received_at: crate::store::now_ms(),
            items: Vec::new(),
            ping: false,
        };
        self.record_deliveries(&crate::webhook::tests::config(), &[entry])
            .remove(0)
            .expect("recorded")
    }

    /// Sets a recorded delivery's verdict, as metrics would read it.
    pub(crate) fn set_verdict_for_test(&self, row: i64, verdict: &str) {
        self.conn()
            .execute(
                "UPDATE deliveries SET verdict = ?2 WHERE id = ?1",
                params![row, verdict],
            )
            .expect("updated");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webhook::tests::config;

    fn new(id: &str) -> NewDelivery {
        NewDelivery::new(
            Source::Github,
            id.into(),
            None,
            &[
                ("X-GitHub-Delivery".into(), id.into()),
                ("X-Hub-Signature-256".into(), "sha256=secretish".into()),
                ("Authorization".into(), "Bearer nope".into()),
            ],
            b"{\"a\":1}",
        )
    }

    fn entry(delivery: NewDelivery) -> Entry {
        Entry {
            delivery,
            received_at: 1,
            items: vec![Item::Ignored("a blob".into())],
            ping: false,
        }
    }

    fn record(store: &Store, delivery: NewDelivery) -> Recorded {
        store
            .record_deliveries(&config(), &[entry(delivery)])
            .remove(0)
            .unwrap()
    }

    #[test]
    fn bodies_are_stored_packed_and_read_back_byte_for_byte() {
        let store = Store::in_memory().unwrap();
        let raw = include_bytes!("../tests/fixtures/webhooks/github-package-published.json");
        record(
            &store,
            NewDelivery::new(Source::Github, "packed".into(), None, &[], raw),
        );
        let (stored, codec): (i64, String) = store
            .conn()
            .query_row(
                "SELECT length(b.body), b.codec FROM deliveries d \
                 JOIN delivery_bodies b ON b.id = d.body_ref WHERE d.delivery_id = 'packed'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!(codec, "lz4");
        assert!(
            (stored as usize) < raw.len() / 2,
            "{stored} bytes stored for {}",
            raw.len()
        );
        let back = store.delivery("packed").unwrap().unwrap();
        assert_eq!(back.raw_body, raw);
        assert_eq!(back.body.as_deref(), std::str::from_utf8(raw).ok());
        // Listings leave bodies out.
        let listed = store.deliveries(None, 10).unwrap();
        assert!(listed[0].raw_body.is_empty() && listed[0].body.is_none());
    }

    #[test]
    fn a_damaged_packed_body_says_so_instead_of_reading_as_something_else() {
        // A stated length far past what LZ4 can expand to.
        let err = unpack(vec![0xff, 0xff, 0xff, 0x7f, 1, 2], Some(LZ4)).unwrap_err();
        assert!(err.contains("damaged"), "{err}");
        // A plausible length, then garbage.
        let mut cut = PackedBody::pack(&[b'x'; 4000]).0;
        cut.truncate(cut.len() - 3);
        assert!(unpack(cut, Some(LZ4)).unwrap_err().contains("damaged"));
        assert!(unpack(vec![1], Some("zstd"))
            .unwrap_err()
            .contains("unknown codec"));
        assert_eq!(unpack(b"{}".to_vec(), None).unwrap(), b"{}");
    }

    #[test]
    fn a_delivery_is_one_row_with_its_verdict_its_body_and_no_secrets() {
        let store = Store::in_memory().unwrap();
        let r = record(&store, new("guid"));
        assert_eq!(r.attempt, 1);
        let d = store.delivery("guid").unwrap().unwrap();
        assert_eq!(d.row, r.row);
        assert_eq!(d.verdict, "ignored");
        assert_eq!(d.detail.as_deref(), Some("a blob"));
        assert_eq!(d.body.as_deref(), Some("{\"a\":1}"));
        assert_eq!(d.events.unwrap()[0]["verdict"], "ignored");
        let headers = d.headers.unwrap();
        assert_eq!(headers["x-github-delivery"], "guid");
        assert!(headers.get("x-hub-signature-256").is_none());
        assert!(headers.get("authorization").is_none());
        assert_eq!(
            store.delivery(&r.row.to_string()).unwrap().unwrap().row,
            r.row
        );
        let again = record(&store, new("guid"));
        assert_eq!(
            again.attempt, 2,
            "a redelivery with the same GUID is attempt 2"
        );
    }

    #[test]
    fn a_group_commit_writes_its_batch_in_order_and_counts_attempts_within_it() {
        let store = Store::in_memory().unwrap();
        let results = store.record_deliveries(
            &config(),
            &[entry(new("a")), entry(new("b")), entry(new("a"))],
        );
        let rows: Vec<(i64, i64)> = results
            .into_iter()
            .map(|r| r.map(|r| (r.row, r.attempt)).unwrap())
            .collect();
        assert_eq!(rows[0].1, 1);
        assert_eq!(rows[1].1, 1);
        assert_eq!(rows[2], (rows[1].0 + 1, 2));
        assert_eq!(store.deliveries(None, 10).unwrap().len(), 3);
    }

    /// Replays of one signed delivery (finding 10): each is recorded as an
    /// attempt, costs what a new delivery costs, and adds no body.
    #[test]
    fn a_replayed_delivery_costs_what_a_new_one_costs_and_stores_no_body_again() {
        const N: usize = 4000;
        let timed = |ids: &dyn Fn(usize) -> String| {
            let store = Store::in_memory().unwrap();
            let config = config();
            let entries: Vec<Entry> = (0..N).map(|i| entry(new(&ids(i)))).collect();
            let started = std::time::Instant::now();
            for chunk in entries.chunks(MAX_BATCH) {
                for r in store.record_deliveries(&config, chunk) {
                    r.unwrap();
                }
            }
            (started.elapsed(), store)
        };
        let (distinct, _) = timed(&|i| format!("guid-{i}"));
        let (replayed, store) = timed(&|_| "guid-replayed".to_string());
        let newest = store.delivery("guid-replayed").unwrap().unwrap();
        assert_eq!(newest.attempt, N as i64);
        assert_eq!(newest.raw_body, b"{\"a\":1}");
        let (bodies, inline): (i64, i64) = store
            .conn()
            .query_row(
                "SELECT (SELECT count(*) FROM delivery_bodies), \
                 (SELECT coalesce(sum(length(body)), 0) FROM deliveries)",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!((bodies, inline), (1, 0), "one body for {N} attempts");
        // Counting earlier attempts would make this quadratic: ~30x at N = 4000.
        assert!(
            replayed < distinct * 3,
            "{N} replays took {replayed:?}, {N} distinct deliveries {distinct:?}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_deliveries_through_the_writer_are_each_answered_after_their_commit() {
        let store = Store::in_memory().unwrap();
        let committed = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = committed.clone();
        let writer = std::sync::Arc::new(
            GroupCommit::start(
                store.clone(),
                crate::config::live::Live::new(crate::config::live::Loaded::in_memory(config())),
                Box::new(move |_| {
                    seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }),
            )
            .unwrap(),
        );
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..200 {
            let writer = writer.clone();
            let store = store.clone();
            tasks.spawn(async move {
                let id = format!("d{i}");
                let mut e = entry(new(&id));
                e.received_at = i;
                let r = writer.record(e).await.unwrap().unwrap();
                // Answered only once it is there to be read.
                let d = store.delivery(&id).unwrap().unwrap();
                assert_eq!((d.row, r.attempt, d.received_at), (r.row, 1, i));
            });
        }
        while let Some(t) = tasks.join_next().await {
            t.unwrap();
        }
        assert_eq!(store.deliveries(None, 500).unwrap().len(), 200);
        assert_eq!(committed.load(std::sync::atomic::Ordering::SeqCst), 200);
    }

    #[test]
    fn pruning_drops_old_bodies_and_keeps_the_record() {
        let store = Store::in_memory().unwrap();
        let old = record(&store, new("old")).row;
        let shared = record(&store, new("shared-body")).row;
        let other = NewDelivery::new(Source::Github, "fresh".into(), None, &[], b"{\"b\":2}");
        let fresh = record(&store, other).row;
        store
            .conn()
            .execute(
                "UPDATE deliveries SET received_at = received_at - 3600000 WHERE id = ?1",
                params![old],
            )
            .unwrap();
        store
            .conn()
            .execute(
                "UPDATE deliveries SET received_at = ?2 WHERE id IN (?1, ?3)",
                params![shared, crate::store::now_ms(), fresh],
            )
            .unwrap();
        let cutoff = crate::store::now_ms() - 60_000;
        assert_eq!(store.prune_bodies(cutoff).unwrap(), 1);
        assert_eq!(store.prune_bodies(cutoff).unwrap(), 0, "idempotent");
        let d = store.delivery("old").unwrap().unwrap();
        assert!(d.raw_body.is_empty());
        assert_eq!(d.row, old);
        // The body it shared with a newer delivery stays for that one.
        let s = store.delivery("shared-body").unwrap().unwrap();
        assert_eq!(s.body.as_deref(), Some("{\"a\":1}"));
        let f = store.delivery("fresh").unwrap().unwrap();
        assert_eq!(f.row, fresh);
        assert_eq!(f.body.as_deref(), Some("{\"b\":2}"));
    }
}
