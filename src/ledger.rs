//! The delivery ledger: every authenticated webhook delivery with its raw body,
//! its non-secret headers and what became of it, so any delivery can be looked
//! at and redelivered.

use rusqlite::{params, Connection, OptionalExtension, Row};
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

/// A delivery ready for the ledger.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    pub source: String,
    pub delivery_id: String,
    pub redelivery_of: Option<i64>,
    /// The non-secret headers as the JSON object stored.
    headers: String,
    body: PackedBody,
}

impl NewDelivery {
    /// Prepares a delivery on the caller's thread (the request's worker): the
    /// secret headers dropped, the rest as JSON, the body packed. The ledger's
    /// writer thread, which every concurrent delivery waits for, then only
    /// copies bytes.
    pub fn new(
        source: &str,
        delivery_id: String,
        redelivery_of: Option<i64>,
        headers: &[(String, String)],
        raw_body: &[u8],
    ) -> NewDelivery {
        NewDelivery {
            source: source.to_string(),
            delivery_id,
            redelivery_of,
            headers: headers_json(headers),
            body: PackedBody::pack(raw_body),
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

const COLUMNS: &str = "id, source, delivery_id, attempt, redelivery_of, received_at, verdict, detail, services, events, headers, body, body_codec";

fn from_row(row: &Row, with_body: bool) -> rusqlite::Result<Delivery> {
    let services: Option<String> = row.get(8)?;
    let events: Option<String> = row.get(9)?;
    let headers: String = row.get(10)?;
    let (body, body_error) = if with_body {
        let codec: Option<String> = row.get(12)?;
        match unpack(row.get(11)?, codec.as_deref()) {
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

/// What became of a delivery, written together with it.
#[derive(Debug, Clone, Default)]
pub struct Verdict {
    pub verdict: String,
    pub detail: String,
    /// The outcomes of its events, as JSON text.
    pub events: String,
    pub services: Vec<String>,
    pub deployments: Vec<i64>,
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

/// Inserts one delivery with its verdict (`received` when `verdict` is `None`) and
/// its links to deployments, in one statement per row, on `conn` (the caller
/// owns the transaction). The attempt number counts earlier deliveries with the
/// same id (GitHub redelivers with the same GUID). Returns (row, attempt).
fn insert(
    conn: &Connection,
    d: &NewDelivery,
    received_at: i64,
    verdict: Option<&Verdict>,
) -> rusqlite::Result<(i64, i64)> {
    let (row, attempt) = conn
        .prepare_cached(
            "INSERT INTO deliveries (source, delivery_id, attempt, redelivery_of, received_at, \
             headers, body, body_codec, verdict, detail, events, services) \
             SELECT ?1, ?2, COUNT(*) + 1, ?3, ?4, ?5, ?6, ?11, ?7, ?8, ?9, ?10 \
             FROM deliveries WHERE delivery_id = ?2 \
             RETURNING id, attempt",
        )?
        .query_row(
            params![
                d.source,
                d.delivery_id,
                d.redelivery_of,
                received_at,
                d.headers,
                d.body.0,
                verdict.map_or("received", |v| v.verdict.as_str()),
                verdict.map(|v| v.detail.as_str()),
                verdict.map(|v| v.events.as_str()),
                verdict.map(|v| v.services.join(",")),
                LZ4,
            ],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
    for deployment in verdict.map(|v| v.deployments.as_slice()).unwrap_or(&[]) {
        link(conn, row, *deployment)?;
    }
    Ok((row, attempt))
}

fn link(conn: &Connection, delivery: i64, deployment: i64) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT OR IGNORE INTO delivery_deployments (delivery, deployment_id) VALUES (?1, ?2)",
    )?
    .execute(params![delivery, deployment])?;
    Ok(())
}

/// A decided delivery waiting for its group commit.
#[derive(Debug)]
pub struct Entry {
    pub delivery: NewDelivery,
    pub received_at: i64,
    pub verdict: Verdict,
}

/// Most deliveries written in one transaction.
const MAX_BATCH: usize = 128;

struct Job {
    entry: Entry,
    done: tokio::sync::oneshot::Sender<Result<(i64, i64)>>,
}

/// Group commit of the ledger: one writer thread takes every delivery waiting
/// while it wrote the previous batch and writes them in one transaction, then
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
    /// Starts the writer thread; it ends when the `GroupCommit` is dropped.
    pub fn start(store: Store) -> std::io::Result<GroupCommit> {
        let (jobs, queue) = std::sync::mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("ledger-writer".into())
            .spawn(move || {
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
                    let results = store.record_deliveries(&entries);
                    for (done, result) in answers.into_iter().zip(results) {
                        // The request may have gone away; its row stays recorded.
                        let _ = done.send(result);
                    }
                }
            })?;
        Ok(GroupCommit { jobs })
    }

    /// Records `entry` and waits until its transaction has committed.
    pub async fn record(
        &self,
        entry: Entry,
    ) -> std::result::Result<Result<(i64, i64)>, WriterGone> {
        let (done, committed) = tokio::sync::oneshot::channel();
        self.jobs
            .send(Job { entry, done })
            .map_err(|_| WriterGone)?;
        committed.await.map_err(|_| WriterGone)
    }
}

impl Store {
    /// Records a delivery as `received`, before anything is decided about it;
    /// [`Store::set_delivery_verdict`] completes it. Returns (row, attempt).
    pub fn insert_delivery(&self, d: &NewDelivery) -> Result<(i64, i64)> {
        Ok(insert(&self.conn(), d, now_ms(), None)?)
    }

    /// Records a delivery that is already decided, with its verdict and links,
    /// in one transaction. Returns (row, attempt).
    pub fn record_delivery(
        &self,
        d: &NewDelivery,
        received_at: i64,
        verdict: &Verdict,
    ) -> Result<(i64, i64)> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let recorded = insert(&tx, d, received_at, Some(verdict))?;
        tx.commit()?;
        Ok(recorded)
    }

    /// Group commit: records decided deliveries in one transaction, in order.
    /// When that fails, each is tried again in its own transaction, so one bad
    /// entry cannot fail the others. A result is only `Ok` once committed.
    pub fn record_deliveries(&self, batch: &[Entry]) -> Vec<Result<(i64, i64)>> {
        let mut conn = self.conn();
        let together = (|| -> rusqlite::Result<Vec<(i64, i64)>> {
            let tx = conn.transaction()?;
            let rows = batch
                .iter()
                .map(|e| insert(&tx, &e.delivery, e.received_at, Some(&e.verdict)))
                .collect::<rusqlite::Result<Vec<_>>>()?;
            tx.commit()?;
            Ok(rows)
        })();
        match together {
            Ok(rows) => rows.into_iter().map(Ok).collect(),
            Err(_) if batch.len() > 1 => batch
                .iter()
                .map(|e| {
                    let tx = conn.transaction()?;
                    let row = insert(&tx, &e.delivery, e.received_at, Some(&e.verdict))?;
                    tx.commit()?;
                    Ok(row)
                })
                .collect(),
            Err(e) => vec![Err(e.into())],
        }
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
        self.complete_delivery(
            row,
            &Verdict {
                verdict: verdict.into(),
                detail: detail.into(),
                events: events.to_string(),
                services: services.to_vec(),
                deployments: deployments.to_vec(),
            },
        )
    }

    /// Writes the verdict of a delivery recorded as `received`, with its links.
    pub fn complete_delivery(&self, row: i64, v: &Verdict) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.prepare_cached(
            "UPDATE deliveries SET verdict = ?2, detail = ?3, events = ?4, services = ?5 WHERE id = ?1",
        )?
        .execute(params![row, v.verdict, v.detail, v.events, v.services.join(",")])?;
        for d in &v.deployments {
            link(&tx, row, *d)?;
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

    /// Drops the raw body and headers of deliveries received before `before`
    /// (epoch ms); their rows, verdicts and links stay. Returns how many.
    pub fn prune_bodies(&self, before: i64) -> Result<usize> {
        Ok(self.conn().execute(
            "UPDATE deliveries SET body = X'', body_codec = NULL, headers = '{}' \
             WHERE received_at < ?1 AND length(body) > 0",
            params![before],
        )?)
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
        Ok(link(&self.conn(), delivery, deployment)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new(id: &str) -> NewDelivery {
        NewDelivery::new(
            "github",
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

    #[test]
    fn bodies_are_stored_packed_and_read_back_byte_for_byte() {
        let store = Store::in_memory().unwrap();
        let raw = include_bytes!("../tests/fixtures/webhooks/github-package-published.json");
        let d = NewDelivery::new("github", "packed".into(), None, &[], raw);
        store.insert_delivery(&d).unwrap();
        let (stored, codec): (i64, String) = store
            .conn()
            .query_row(
                "SELECT length(body), body_codec FROM deliveries WHERE delivery_id = 'packed'",
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

    fn decided(verdict: &str, services: &[&str], deployments: &[i64]) -> Verdict {
        Verdict {
            verdict: verdict.into(),
            detail: format!("{verdict} because"),
            events: r#"[{"verdict":"ignored"}]"#.into(),
            services: services.iter().map(|s| s.to_string()).collect(),
            deployments: deployments.to_vec(),
        }
    }

    fn deployment(store: &Store) -> i64 {
        store
            .create_deployment(&crate::store::NewDeployment {
                tag: Some("v1".into()),
                ..crate::store::NewDeployment::operator("web", "deploy")
            })
            .unwrap()
    }

    #[test]
    fn a_decided_delivery_is_one_row_with_its_verdict_and_links() {
        let store = Store::in_memory().unwrap();
        let dep = deployment(&store);
        let (row, attempt) = store
            .record_delivery(&new("guid"), 1234, &decided("duplicate", &["web"], &[dep]))
            .unwrap();
        assert_eq!(attempt, 1);
        let d = store.delivery("guid").unwrap().unwrap();
        assert_eq!(d.row, row);
        assert_eq!(d.received_at, 1234);
        assert_eq!(d.verdict, "duplicate");
        assert_eq!(d.detail.as_deref(), Some("duplicate because"));
        assert_eq!(d.services, vec!["web".to_string()]);
        assert_eq!(d.deployments, vec![dep]);
        assert_eq!(d.events.unwrap()[0]["verdict"], "ignored");
        assert_eq!(d.body.as_deref(), Some("{\"a\":1}"));
        let headers = d.headers.unwrap();
        assert_eq!(headers["x-github-delivery"], "guid");
        assert!(headers.get("x-hub-signature-256").is_none());
        assert!(headers.get("authorization").is_none());
        let (_, again) = store
            .record_delivery(&new("guid"), 1235, &decided("ignored", &[], &[]))
            .unwrap();
        assert_eq!(again, 2, "a redelivery with the same GUID is attempt 2");
    }

    #[test]
    fn a_group_commit_writes_its_batch_in_order_and_counts_attempts_within_it() {
        let store = Store::in_memory().unwrap();
        let entry = |id: &str| Entry {
            delivery: new(id),
            received_at: 1,
            verdict: decided("ignored", &[], &[]),
        };
        let results = store.record_deliveries(&[entry("a"), entry("b"), entry("a")]);
        let rows: Vec<(i64, i64)> = results.into_iter().map(|r| r.unwrap()).collect();
        assert_eq!(rows[0].1, 1);
        assert_eq!(rows[1].1, 1);
        assert_eq!(rows[2], (rows[1].0 + 1, 2));
        assert_eq!(store.deliveries(None, 10).unwrap().len(), 3);
        // A link to a deployment that does not exist fails its entry alone.
        let mut bad = entry("c");
        bad.verdict.deployments = vec![999_999];
        let results = store.record_deliveries(&[entry("d"), bad, entry("e")]);
        assert!(results[0].is_ok() && results[2].is_ok());
        assert!(results[1].is_err());
        assert!(
            store.delivery("c").unwrap().is_none(),
            "nothing half-written"
        );
        assert_eq!(store.deliveries(None, 10).unwrap().len(), 5);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_deliveries_through_the_writer_are_each_answered_after_their_commit() {
        let store = Store::in_memory().unwrap();
        let writer = std::sync::Arc::new(GroupCommit::start(store.clone()).unwrap());
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..200 {
            let writer = writer.clone();
            let store = store.clone();
            tasks.spawn(async move {
                let id = format!("d{i}");
                let (row, attempt) = writer
                    .record(Entry {
                        delivery: new(&id),
                        received_at: i,
                        verdict: decided("ignored", &[], &[]),
                    })
                    .await
                    .unwrap()
                    .unwrap();
                // Answered only once it is there to be read.
                let d = store.delivery(&id).unwrap().unwrap();
                assert_eq!((d.row, attempt, d.received_at), (row, 1, i));
            });
        }
        while let Some(t) = tasks.join_next().await {
            t.unwrap();
        }
        assert_eq!(store.deliveries(None, 500).unwrap().len(), 200);
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

    #[test]
    fn pruning_drops_old_bodies_and_keeps_the_record() {
        let store = Store::in_memory().unwrap();
        let (old, _) = store.insert_delivery(&new("old")).unwrap();
        let (fresh, _) = store.insert_delivery(&new("fresh")).unwrap();
        store
            .conn()
            .execute(
                "UPDATE deliveries SET received_at = received_at - 3600000 WHERE id = ?1",
                params![old],
            )
            .unwrap();
        let cutoff = crate::store::now_ms() - 60_000;
        assert_eq!(store.prune_bodies(cutoff).unwrap(), 1);
        assert_eq!(store.prune_bodies(cutoff).unwrap(), 0, "idempotent");
        let d = store.delivery("old").unwrap().unwrap();
        assert!(d.raw_body.is_empty());
        assert_eq!(d.row, old);
        let f = store.delivery("fresh").unwrap().unwrap();
        assert_eq!(f.row, fresh);
        assert_eq!(f.body.as_deref(), Some("{\"a\":1}"));
    }
}
