//! `GET /metrics`: Prometheus text (prometheus-client's encoder), derived at
//! scrape time from the store (deployments and their steps, deliveries,
//! notification attempts, what is live) and the webhook endpoints' in-memory
//! refusal counters. Nothing on the deploy path calls into this module.
//!
//! A scrape stays cheap however large the store grows. Rows that never change
//! again (a finished deployment with its steps, a delivery with its verdict, a
//! notification attempt) are folded into running totals once; a scrape reads
//! only the rows added since the previous one (a rowid range) and the few that
//! were still in flight. Nothing is ever deleted from those tables, so the totals
//! only grow: they are counters in Prometheus's sense, and they survive restarts
//! (the first scrape after a start reads the whole store once).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use rusqlite::{OptionalExtension, Transaction};

use crate::domain::deployment::State;
use crate::domain::routing::Routing;
use crate::store::{Result, Store};

/// Upper bounds of the step-duration buckets, in milliseconds: 10 ms to 10 min.
pub const BUCKETS_MS: [i64; 15] = [
    10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000, 120_000, 300_000,
    600_000,
];

/// The terminal states a deployment is counted under.
pub const OUTCOMES: [State; 8] = State::OUTCOMES;

/// What became of a delivery (the ledger's verdict without its free text).
pub const VERDICTS: [&str; 5] = ["queued", "ignored", "duplicate", "stale", "already_live"];

/// The webhook sources, as labels.
pub const SOURCES: [&str; 3] = ["github", "dockerhub", "registry"];

/// A verdict as a bounded label value: `ignored: no service for r/x` is
/// `ignored`; anything unknown is `other`, never free text.
pub fn verdict_kind(verdict: &str) -> &'static str {
    let kind = verdict.split(':').next().unwrap_or("").trim();
    VERDICTS
        .iter()
        .find(|v| **v == kind)
        .copied()
        .unwrap_or("other")
}

/// A classic histogram over `BUCKETS_MS`, with exact integer sums.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    /// Per bucket (not cumulative); the last one is above the largest bound.
    pub buckets: [u64; BUCKETS_MS.len() + 1],
    pub sum_ms: i64,
    pub count: u64,
}

impl Histogram {
    pub fn observe(&mut self, ms: i64) {
        let ms = ms.max(0);
        let i = BUCKETS_MS
            .iter()
            .position(|b| ms <= *b)
            .unwrap_or(BUCKETS_MS.len());
        self.buckets[i] += 1;
        self.sum_ms += ms;
        self.count += 1;
    }
}

type Key = (String, String);

/// Running totals over the rows that can no longer change, and where to go on.
#[derive(Debug, Clone, Default)]
struct Totals {
    /// The highest deployment id looked at; those above are new.
    deployments_seen: i64,
    /// Deployments at or below `deployments_seen` not finished when last looked at.
    deployments_open: BTreeSet<i64>,
    /// (service, outcome) of finished deployments.
    outcomes: BTreeMap<Key, u64>,
    /// (service, step) durations of the steps of finished deployments.
    steps: BTreeMap<Key, Histogram>,
    /// Long-lived connections finished deployments cut, by service.
    connections_cut: BTreeMap<String, u64>,
    deliveries_seen: i64,
    /// Deliveries still `received` (no verdict yet) when last looked at.
    deliveries_open: BTreeSet<i64>,
    /// (source, verdict kind).
    verdicts: BTreeMap<Key, u64>,
    notifications_seen: i64,
    /// (channel, outcome).
    attempts: BTreeMap<Key, u64>,
}

fn count(map: &mut BTreeMap<Key, u64>, a: &str, b: &str, n: u64) {
    *map.entry((a.to_string(), b.to_string())).or_default() += n;
}

/// The step-duration histograms of the closed steps of deployments picked by
/// `filter` (over `d`, the deployment), aggregated in SQLite: one row per
/// (service, step) however many steps there are. The zero-length rows that
/// record an end state are not steps.
fn histogram_sql(filter: &str) -> String {
    let buckets: Vec<String> = BUCKETS_MS
        .iter()
        .map(|b| format!("SUM(s.finished_at - s.started_at <= {b})"))
        .collect();
    let terminal: Vec<String> = OUTCOMES
        .iter()
        .map(|o| format!("'{}'", o.as_str()))
        .collect();
    format!(
        "SELECT d.service, s.step, COUNT(*), SUM(MAX(s.finished_at - s.started_at, 0)), {} \
         FROM deployments d JOIN steps s ON s.deployment_id = d.id \
         WHERE {filter} AND s.finished_at IS NOT NULL AND s.step NOT IN ({}) \
         GROUP BY d.service, s.step",
        buckets.join(", "),
        terminal.join(", ")
    )
}

/// Adds the rows of a `histogram_sql` query to `steps`.
fn add_histograms(
    tx: &Transaction,
    filter: &str,
    args: impl rusqlite::Params,
    steps: &mut BTreeMap<Key, Histogram>,
) -> Result<()> {
    let mut stmt = tx.prepare_cached(&histogram_sql(filter))?;
    let mut rows = stmt.query(args)?;
    while let Some(r) = rows.next()? {
        let h = steps.entry((r.get(0)?, r.get(1)?)).or_default();
        let count: u64 = r.get(2)?;
        h.count += count;
        h.sum_ms += r.get::<_, i64>(3)?;
        // SQLite counts cumulatively (<= bound); the histogram keeps per bucket.
        let mut below = 0;
        for i in 0..BUCKETS_MS.len() {
            let upto: u64 = r.get(4 + i)?;
            h.buckets[i] += upto - below;
            below = upto;
        }
        h.buckets[BUCKETS_MS.len()] += count - below;
    }
    Ok(())
}

impl Totals {
    /// Deployments in flight at the last look that have finished since.
    fn fold_open_deployments(&mut self, tx: &Transaction) -> Result<()> {
        let open = std::mem::take(&mut self.deployments_open);
        for id in open {
            let row: Option<(String, String, bool, i64)> = tx
                .prepare_cached(
                    "SELECT service, state, finished_at IS NOT NULL, COALESCE(connections_cut, 0) \
                     FROM deployments WHERE id = ?1",
                )?
                .query_row([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                .optional()?;
            match row {
                Some((service, state, true, cut)) => {
                    count_outcome(&mut self.outcomes, &service, &state, 1);
                    *self.connections_cut.entry(service.clone()).or_default() += cut as u64;
                    add_histograms(tx, "d.id = ?1", [id], &mut self.steps)?;
                }
                Some((_, _, false, _)) => {
                    self.deployments_open.insert(id);
                }
                None => {}
            }
        }
        Ok(())
    }

    /// Up to `CHUNK` new deployments: finished ones are folded, the others
    /// looked at again at the next scrape. Whether more remain.
    fn fold_new_deployments(&mut self, tx: &Transaction) -> Result<bool> {
        let from = self.deployments_seen;
        let Some((upto, more)) = next_range(tx, "deployments", from)? else {
            return Ok(false);
        };
        let range = [from, upto];
        {
            let mut stmt = tx.prepare_cached(
                "SELECT id FROM deployments WHERE id > ?1 AND id <= ?2 AND finished_at IS NULL",
            )?;
            for id in stmt.query_map(range, |r| r.get(0))? {
                self.deployments_open.insert(id?);
            }
            let mut stmt = tx.prepare_cached(
                "SELECT service, state, COUNT(*), SUM(COALESCE(connections_cut, 0)) FROM deployments \
                 WHERE id > ?1 AND id <= ?2 AND finished_at IS NOT NULL GROUP BY service, state",
            )?;
            let mut rows = stmt.query(range)?;
            while let Some(r) = rows.next()? {
                let service: String = r.get(0)?;
                let state: String = r.get(1)?;
                count_outcome(&mut self.outcomes, &service, &state, r.get(2)?);
                let cut: i64 = r.get(3)?;
                *self.connections_cut.entry(service).or_default() += cut as u64;
            }
        }
        add_histograms(
            tx,
            "d.id > ?1 AND d.id <= ?2 AND d.finished_at IS NOT NULL",
            range,
            &mut self.steps,
        )?;
        self.deployments_seen = upto;
        Ok(more)
    }

    /// Deliveries that had no verdict yet at the last look.
    fn fold_open_deliveries(&mut self, tx: &Transaction) -> Result<()> {
        let open = std::mem::take(&mut self.deliveries_open);
        for id in open {
            let row: Option<(String, String)> = tx
                .prepare_cached("SELECT source, verdict FROM deliveries WHERE id = ?1")?
                .query_row([id], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            match row {
                Some((_, verdict)) if verdict == "received" => {
                    self.deliveries_open.insert(id);
                }
                Some((source, verdict)) => {
                    count(&mut self.verdicts, &source, verdict_kind(&verdict), 1)
                }
                None => {}
            }
        }
        Ok(())
    }

    /// Up to `CHUNK` new deliveries. Whether more remain.
    fn fold_new_deliveries(&mut self, tx: &Transaction) -> Result<bool> {
        let from = self.deliveries_seen;
        let Some((upto, more)) = next_range(tx, "deliveries", from)? else {
            return Ok(false);
        };
        let range = [from, upto];
        let mut stmt = tx.prepare_cached(
            "SELECT id FROM deliveries WHERE id > ?1 AND id <= ?2 AND verdict = 'received'",
        )?;
        for id in stmt.query_map(range, |r| r.get(0))? {
            self.deliveries_open.insert(id?);
        }
        let mut stmt = tx.prepare_cached(
            "SELECT source, verdict, COUNT(*) FROM deliveries \
             WHERE id > ?1 AND id <= ?2 AND verdict != 'received' GROUP BY source, verdict",
        )?;
        let mut rows = stmt.query(range)?;
        while let Some(r) = rows.next()? {
            let source: String = r.get(0)?;
            let verdict: String = r.get(1)?;
            count(
                &mut self.verdicts,
                &source,
                verdict_kind(&verdict),
                r.get(2)?,
            );
        }
        self.deliveries_seen = upto;
        Ok(more)
    }

    /// Up to `CHUNK` new notification attempts. Whether more remain.
    fn fold_new_notifications(&mut self, tx: &Transaction) -> Result<bool> {
        let from = self.notifications_seen;
        let Some((upto, more)) = next_range(tx, "notifications", from)? else {
            return Ok(false);
        };
        let mut stmt = tx.prepare_cached(
            "SELECT channel, outcome, COUNT(*) FROM notifications \
             WHERE id > ?1 AND id <= ?2 GROUP BY channel, outcome",
        )?;
        let mut rows = stmt.query([from, upto])?;
        while let Some(r) = rows.next()? {
            let channel: String = r.get(0)?;
            let outcome: String = r.get(1)?;
            count(&mut self.attempts, &channel, &outcome, r.get(2)?);
        }
        self.notifications_seen = upto;
        Ok(more)
    }

    /// The totals' histograms plus the closed steps of deployments still in
    /// flight: those are read at each scrape, and folded for good once the
    /// deployment has finished.
    fn with_in_flight_steps(&self, tx: &Transaction) -> Result<BTreeMap<Key, Histogram>> {
        let mut steps = self.steps.clone();
        for &id in &self.deployments_open {
            add_histograms(tx, "d.id = ?1", [id], &mut steps)?;
        }
        Ok(steps)
    }
}

/// Rows read in one transaction at most, per table: the first scrape after a
/// start reads the whole store, in steps that each hold the store's lock briefly.
const CHUNK: i64 = 500;

/// The next id range `(from, upto]` of `table` to read, and whether rows
/// remain beyond it; `None` when nothing is new. Ids only grow (AUTOINCREMENT).
fn next_range(tx: &Transaction, table: &str, from: i64) -> Result<Option<(i64, bool)>> {
    let max: Option<i64> =
        tx.query_row(&format!("SELECT MAX(id) FROM {table}"), [], |r| r.get(0))?;
    Ok(match max {
        Some(max) if max > from => Some((max.min(from + CHUNK), max > from + CHUNK)),
        _ => None,
    })
}

/// Counts a finished deployment under its end state.
fn count_outcome(outcomes: &mut BTreeMap<Key, u64>, service: &str, state: &str, n: u64) {
    if state.parse::<State>().is_ok_and(State::is_terminal) {
        count(outcomes, service, state, n);
    }
}

/// What is live for a service, as the info gauge's labels.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveInfo {
    pub service: String,
    /// Empty when the replicas do not share one colour.
    pub colour: String,
    pub digest: String,
    pub tag: String,
    /// Replicas nginx routes to, by digest (a rolling update mixes versions).
    pub replicas: Vec<(String, u64)>,
}

/// One scrape's values, owned, ready to encode.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub outcomes: BTreeMap<Key, u64>,
    pub steps: BTreeMap<Key, Histogram>,
    pub verdicts: BTreeMap<Key, u64>,
    pub auth_failures: Vec<(String, u64)>,
    pub queue: BTreeMap<String, i64>,
    pub attempts: BTreeMap<Key, u64>,
    pub live: Vec<LiveInfo>,
    /// The running canaries (from memory, not the store).
    pub canaries: Vec<crate::deploy::canary::Status>,
    /// Long-lived connections cut by finished deployments, by service.
    pub connections_cut: BTreeMap<String, u64>,
}

/// The running totals behind `/metrics`, shared by the server's workers.
#[derive(Debug, Default)]
pub struct Metrics {
    totals: Mutex<Totals>,
}

impl Metrics {
    /// Reads what changed since the last scrape and returns every value.
    /// `services` are the configured ones (each gets zero-valued series);
    /// `auth_failures` is (source, refused deliveries) from the hook counters.
    pub fn snapshot(
        &self,
        store: &Store,
        services: &[String],
        auth_failures: Vec<(String, u64)>,
    ) -> Result<Snapshot> {
        let mut totals = self.totals.lock().unwrap_or_else(|e| e.into_inner());
        // Folded into a copy: an error halfway must not count anything twice.
        let mut next = totals.clone();
        // New rows, a chunk per transaction (many only on the first scrape).
        loop {
            let mut conn = store.conn();
            let tx = conn.transaction()?;
            let more = next.fold_new_deployments(&tx)?
                | next.fold_new_deliveries(&tx)?
                | next.fold_new_notifications(&tx)?;
            tx.commit()?;
            drop(conn);
            if !more {
                break;
            }
            // Let a waiting webhook or deploy step have the store first.
            std::thread::yield_now();
        }
        let mut conn = store.conn();
        // One read transaction: every query below sees the same state.
        let tx = conn.transaction()?;
        next.fold_open_deployments(&tx)?;
        next.fold_open_deliveries(&tx)?;
        let steps = next.with_in_flight_steps(&tx)?;

        let mut queue: BTreeMap<String, i64> = services.iter().map(|s| (s.clone(), 0)).collect();
        {
            let mut stmt = tx.prepare_cached(
                "SELECT service, COUNT(*) FROM deployments WHERE state = 'received' GROUP BY service",
            )?;
            for row in stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))? {
                let (service, n): (String, i64) = row?;
                queue.insert(service, n);
            }
        }
        let live = {
            let mut stmt = tx.prepare_cached(
                "SELECT service, COALESCE(colour, ''), digest, COALESCE(tag, ''), routing \
                 FROM live ORDER BY service",
            )?;
            let rows = stmt.query_map([], |r| {
                let routing: Option<String> = r.get(4)?;
                let routing: Option<Routing> = routing.and_then(|t| serde_json::from_str(&t).ok());
                let mut replicas: Vec<(String, u64)> = Vec::new();
                for b in routing.map(|r| r.backends).unwrap_or_default() {
                    match replicas.iter_mut().find(|(d, _)| *d == b.digest) {
                        Some((_, n)) => *n += 1,
                        None => replicas.push((b.digest, 1)),
                    }
                }
                Ok(LiveInfo {
                    service: r.get(0)?,
                    colour: r.get(1)?,
                    digest: r.get(2)?,
                    tag: r.get(3)?,
                    replicas,
                })
            })?;
            rows.collect::<rusqlite::Result<Vec<_>>>()?
        };
        tx.commit()?;
        *totals = next;

        let mut outcomes = totals.outcomes.clone();
        for s in services {
            for o in OUTCOMES {
                outcomes
                    .entry((s.clone(), o.as_str().to_string()))
                    .or_default();
            }
        }
        let mut verdicts = totals.verdicts.clone();
        for s in SOURCES {
            for v in VERDICTS {
                verdicts.entry((s.to_string(), v.to_string())).or_default();
            }
        }
        Ok(Snapshot {
            outcomes,
            steps,
            verdicts,
            auth_failures,
            queue,
            attempts: totals.attempts.clone(),
            live,
            canaries: Vec::new(),
            connections_cut: services
                .iter()
                .map(|s| (s.clone(), 0))
                .chain(totals.connections_cut.clone())
                .collect(),
        })
    }

    /// The Prometheus text of a scrape.
    pub fn render(
        &self,
        store: &Store,
        services: &[String],
        auth_failures: Vec<(String, u64)>,
        canaries: Vec<crate::deploy::canary::Status>,
    ) -> Result<String> {
        let mut snapshot = self.snapshot(store, services, auth_failures)?;
        snapshot.canaries = canaries;
        Ok(encode(snapshot))
    }
}

/// Encodes a snapshot in the Prometheus text format (version 0.0.4).
pub fn encode(snapshot: Snapshot) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(snapshot));
    let mut text = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut text, &registry)
        .expect("writing to a String cannot fail");
    text
}

fn counters(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    labels: (&str, &str),
    values: &BTreeMap<Key, u64>,
) -> std::fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for ((a, b), n) in values {
        let set = [(labels.0, a.as_str()), (labels.1, b.as_str())];
        ConstCounter::new(*n).encode(metric.encode_family(&set)?)?;
    }
    Ok(())
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let up = encoder.encode_descriptor(
            "greenlight_up",
            "1 while greenlight answers",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(1i64).encode(up)?;
        let mut build = encoder.encode_descriptor(
            "greenlight_build",
            "The running greenlight's version",
            None,
            MetricType::Info,
        )?;
        build.encode_info(&[("version", env!("CARGO_PKG_VERSION"))])?;

        counters(
            &mut encoder,
            "greenlight_deployments",
            "Finished deployments by service and terminal state",
            ("service", "outcome"),
            &self.outcomes,
        )?;

        let mut steps = encoder.encode_descriptor(
            "greenlight_step_duration_seconds",
            "How long each pipeline step took (received: time queued), by service and step",
            None,
            MetricType::Histogram,
        )?;
        for ((service, step), h) in &self.steps {
            let set = [("service", service.as_str()), ("step", step.as_str())];
            let buckets: Vec<(f64, u64)> = BUCKETS_MS
                .iter()
                .map(|b| *b as f64 / 1000.0)
                .chain([f64::INFINITY])
                .zip(h.buckets)
                .collect();
            steps.encode_family(&set)?.encode_histogram::<NoLabelSet>(
                h.sum_ms as f64 / 1000.0,
                h.count,
                &buckets,
                None,
            )?;
        }

        counters(
            &mut encoder,
            "greenlight_deliveries",
            "Authenticated webhook deliveries by source and what became of them",
            ("source", "verdict"),
            &self.verdicts,
        )?;

        let mut auth = encoder.encode_descriptor(
            "greenlight_webhook_auth_failures",
            "Webhook deliveries refused for a bad signature or token since greenlight started",
            None,
            MetricType::Counter,
        )?;
        for (source, n) in &self.auth_failures {
            ConstCounter::new(*n).encode(auth.encode_family(&[("source", source.as_str())])?)?;
        }

        let mut cut = encoder.encode_descriptor(
            "greenlight_connections_cut",
            "Long-lived connections (WebSockets, server-sent events) to an old version still open \
             when its replicas stopped, after rollout.long_lived_timeout, by service",
            None,
            MetricType::Counter,
        )?;
        for (service, n) in &self.connections_cut {
            ConstCounter::new(*n).encode(cut.encode_family(&[("service", service.as_str())])?)?;
        }

        let mut queue = encoder.encode_descriptor(
            "greenlight_queue_depth",
            "Deployments waiting (received) per service",
            None,
            MetricType::Gauge,
        )?;
        for (service, n) in &self.queue {
            ConstGauge::new(*n).encode(queue.encode_family(&[("service", service.as_str())])?)?;
        }

        counters(
            &mut encoder,
            "greenlight_notification_attempts",
            "Attempts to send a deployment notification by channel and outcome",
            ("channel", "outcome"),
            &self.attempts,
        )?;

        let mut live = encoder.encode_descriptor(
            "greenlight_live",
            "What nginx routes to per service (always 1)",
            None,
            MetricType::Info,
        )?;
        for l in &self.live {
            live.encode_info(&[
                ("service", l.service.as_str()),
                ("colour", l.colour.as_str()),
                ("digest", l.digest.as_str()),
                ("tag", l.tag.as_str()),
            ])?;
        }

        let mut replicas = encoder.encode_descriptor(
            "greenlight_replicas",
            "Replicas nginx routes to, per service and version (digest)",
            None,
            MetricType::Gauge,
        )?;
        for l in &self.live {
            for (digest, n) in &l.replicas {
                ConstGauge::new(*n as i64).encode(replicas.encode_family(&[
                    ("service", l.service.as_str()),
                    ("digest", digest.as_str()),
                ])?)?;
            }
        }
        encode_canaries(&mut encoder, &self.canaries)
    }
}

/// Each running canary: its share of users, and per variant its requests,
/// errors and latency over the deployment so far.
fn encode_canaries(
    encoder: &mut DescriptorEncoder,
    canaries: &[crate::deploy::canary::Status],
) -> std::fmt::Result {
    use crate::canary::{Totals, LATENCY_BUCKETS_MS};
    let mut weight = encoder.encode_descriptor(
        "greenlight_canary_weight_percent",
        "The running canary's share of users, per service",
        None,
        MetricType::Gauge,
    )?;
    for c in canaries {
        ConstGauge::new(i64::from(c.percent))
            .encode(weight.encode_family(&[("service", c.service.as_str())])?)?;
    }
    let variants = |c: &crate::deploy::canary::Status| -> [(&'static str, Totals); 2] {
        [
            ("canary", c.canary_totals.clone()),
            ("stable", c.stable_totals.clone()),
        ]
    };
    for (name, help, errors) in [
        (
            "greenlight_canary_requests",
            "Requests answered during the running canary, per service and variant",
            false,
        ),
        (
            "greenlight_canary_errors",
            "5xx answered during the running canary, per service and variant",
            true,
        ),
    ] {
        let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
        for c in canaries {
            for (variant, t) in variants(c) {
                let n = if errors { t.errors } else { t.requests };
                ConstCounter::new(n).encode(
                    metric
                        .encode_family(&[("service", c.service.as_str()), ("variant", variant)])?,
                )?;
            }
        }
    }
    let mut latency = encoder.encode_descriptor(
        "greenlight_canary_latency_seconds",
        "Upstream response time during the running canary, per service and variant",
        None,
        MetricType::Histogram,
    )?;
    for c in canaries {
        for (variant, t) in variants(c) {
            // Per bucket, as for the step durations: the encoder accumulates.
            let buckets: Vec<(f64, u64)> = LATENCY_BUCKETS_MS
                .iter()
                .map(|b| b / 1000.0)
                .chain([f64::INFINITY])
                .zip(t.buckets)
                .collect();
            let count = t.buckets.iter().sum();
            latency
                .encode_family(&[("service", c.service.as_str()), ("variant", variant)])?
                .encode_histogram::<NoLabelSet>(t.sum_ms / 1000.0, count, &buckets, None)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::time::Instant;

    use rusqlite::params;

    use super::*;
    use crate::domain::deployment::FailureKind;
    use crate::domain::plan::{Step, Strategy};
    use crate::notify::record::Outcome as Sent;
    use crate::store::{Failure, NewDeployment};

    fn new(service: &str) -> NewDeployment {
        NewDeployment {
            tag: Some("v1".into()),
            ..NewDeployment::operator(service, "deploy")
        }
    }

    /// What nginx routes to: two replicas of sha256:1.
    fn two_replicas() -> crate::domain::routing::Routing {
        let backend = |n: u32| {
            crate::domain::routing::Backend::example(
                &format!("web-green-{n}"),
                n,
                crate::domain::deployment::Colour::Green,
                "sha256:1",
            )
        };
        crate::domain::routing::Routing {
            service: "web".into(),
            generation: 1,
            split: None,
            backends: vec![backend(1), backend(2)],
        }
    }

    /// Claims `id` and records `steps` as walked, the last one open.
    fn walk(store: &Store, id: i64, steps: &[Step]) {
        store.claim(id, Strategy::BlueGreen, 1, steps).unwrap();
        for s in steps {
            store.begin_step(id, s, "web").unwrap();
        }
    }

    fn delivery(store: &Store, source: &str, verdict: Option<&str>) -> i64 {
        let source = source.parse().unwrap();
        let id = format!("d-{}-{}", crate::store::now_ms(), rand::random::<u32>());
        let row = store.record_for_test(source, &id, b"{}").row;
        store.set_verdict_for_test(row, verdict.unwrap_or("received"));
        row
    }

    fn services() -> Vec<String> {
        vec!["web".into(), "api".into()]
    }

    #[test]
    fn a_running_canary_is_shown_per_variant() {
        use crate::canary::{Summary, Totals};
        use crate::traffic::{Outcome, Request};
        let mut canary_totals = Totals::default();
        for (outcome, ms) in [(Outcome::Answered, 4.0), (Outcome::ServerError, 300.0)] {
            canary_totals.add(&Request {
                at_ms: 0,
                peer: "10.0.0.2:80".into(),
                unreachable: Vec::new(),
                outcome,
                response_ms: Some(ms),
            });
        }
        let status = crate::deploy::canary::Status {
            service: "web".into(),
            deployment: 3,
            digest: "sha256:b".into(),
            stage: 1,
            stages: 3,
            percent: 5,
            state: "baking",
            reason: None,
            step_started_ms: 0,
            bake_ends_ms: 0,
            extension_ends_ms: 0,
            canary: Summary::default(),
            stable: Summary::default(),
            checks: Vec::new(),
            canary_totals,
            stable_totals: Totals::default(),
        };
        let text = encode(Snapshot {
            canaries: vec![status],
            ..Snapshot::default()
        });
        for line in [
            "greenlight_canary_weight_percent{service=\"web\"} 5",
            "greenlight_canary_requests_total{service=\"web\",variant=\"canary\"} 2",
            "greenlight_canary_errors_total{service=\"web\",variant=\"canary\"} 1",
            "greenlight_canary_errors_total{service=\"web\",variant=\"stable\"} 0",
            "greenlight_canary_latency_seconds_bucket{service=\"web\",variant=\"canary\",le=\"0.005\"} 1",
            "greenlight_canary_latency_seconds_bucket{service=\"web\",variant=\"canary\",le=\"0.5\"} 2",
            "greenlight_canary_latency_seconds_count{service=\"web\",variant=\"canary\"} 2",
        ] {
            assert!(text.contains(line), "{line}\nnot in\n{text}");
        }
    }

    /// A scrape from a fresh cache: everything read from the store.
    fn from_scratch(store: &Store) -> Snapshot {
        Metrics::default()
            .snapshot(store, &services(), vec![])
            .unwrap()
    }

    fn outcome(s: &Snapshot, service: &str, outcome: &str) -> u64 {
        s.outcomes[&(service.to_string(), outcome.to_string())]
    }

    fn steps_count(s: &Snapshot, service: &str, step: &str) -> u64 {
        s.steps
            .get(&(service.to_string(), step.to_string()))
            .map_or(0, |h| h.count)
    }

    fn assert_same(a: &Snapshot, b: &Snapshot) {
        assert_eq!(a.outcomes, b.outcomes);
        assert_eq!(a.steps, b.steps);
        assert_eq!(a.verdicts, b.verdicts);
        assert_eq!(a.attempts, b.attempts);
        assert_eq!(a.queue, b.queue);
        assert_eq!(a.live, b.live);
    }

    #[test]
    fn buckets_are_upper_bounds_in_milliseconds() {
        let mut h = Histogram::default();
        for ms in [0, 10, 11, 1_000, 600_000, 600_001, -5] {
            h.observe(ms);
        }
        assert_eq!(h.count, 7);
        assert_eq!(h.sum_ms, 10 + 11 + 1_000 + 600_000 + 600_001);
        assert_eq!(
            h.buckets[0], 3,
            "0, 10 and a negative (clock step) are <= 10 ms"
        );
        assert_eq!(h.buckets[1], 1, "11 ms is <= 25 ms");
        assert_eq!(h.buckets[6], 1, "1 s");
        assert_eq!(h.buckets[BUCKETS_MS.len() - 1], 1, "10 min");
        assert_eq!(h.buckets[BUCKETS_MS.len()], 1, "above 10 min");
    }

    #[test]
    fn the_outcomes_are_the_terminal_states() {
        let terminal: Vec<State> = State::ALL.into_iter().filter(|s| s.is_terminal()).collect();
        assert_eq!(terminal, OUTCOMES);
    }

    #[test]
    fn verdicts_lose_their_free_text() {
        assert_eq!(verdict_kind("ignored: no service for r/x"), "ignored");
        assert_eq!(verdict_kind("ignored"), "ignored");
        assert_eq!(verdict_kind("already_live"), "already_live");
        assert_eq!(verdict_kind("something new: with text"), "other");
    }

    /// Scraping as things happen gives the same numbers as reading the whole
    /// store at once, and in-flight deployments' finished steps count at once.
    #[test]
    fn incremental_scrapes_agree_with_a_full_read() {
        let store = Store::in_memory().unwrap();
        let metrics = Metrics::default();
        let scrape = || metrics.snapshot(&store, &services(), vec![]).unwrap();

        let empty = scrape();
        assert_eq!(outcome(&empty, "web", "succeeded"), 0);
        assert_eq!(empty.queue["web"], 0);
        assert!(empty.steps.is_empty());

        // One succeeds, one is running, one waits.
        let a = store.create_deployment(&new("web")).unwrap();
        walk(&store, a, &[Step::Resolving, Step::Pulling]);
        store.finish(a, State::Succeeded, None).unwrap();
        let b = store.create_deployment(&new("web")).unwrap();
        walk(&store, b, &[Step::Resolving, Step::Pulling]);
        let c = store.create_deployment(&new("api")).unwrap();
        let queued = delivery(&store, "github", None);
        delivery(&store, "registry", Some("ignored: no matching service"));
        store
            .record_notification(a, "slack", "succeeded", 1, Sent::Failed, Some("HTTP 500"))
            .unwrap();

        let first = scrape();
        assert_same(&first, &from_scratch(&store));
        assert_eq!(outcome(&first, "web", "succeeded"), 1);
        assert_eq!(first.queue["api"], 1);
        assert_eq!(first.queue["web"], 0);
        // a: received, resolving, pulling; b: received, resolving (pulling is open).
        assert_eq!(steps_count(&first, "web", "received"), 2);
        assert_eq!(steps_count(&first, "web", "resolving"), 2);
        assert_eq!(steps_count(&first, "web", "pulling"), 1);
        assert_eq!(steps_count(&first, "web", "succeeded"), 0);
        let kind = |s: &Snapshot, src: &str, v: &str| s.verdicts[&(src.to_string(), v.to_string())];
        assert_eq!(kind(&first, "registry", "ignored"), 1);
        assert_eq!(
            first.verdicts.values().sum::<u64>(),
            1,
            "a delivery without verdict is not counted"
        );

        // b fails, c is superseded by d, the queued delivery gets its verdict.
        store
            .finish(
                b,
                State::Failed,
                Some(&Failure {
                    step: Some("pulling".into()),
                    ..Failure::new(FailureKind::RegistryRefused, "manifest unknown")
                }),
            )
            .unwrap();
        let d = store.create_deployment(&new("api")).unwrap();
        assert!(store.supersede(c, d).unwrap());
        store.set_verdict_for_test(queued, "queued");
        store
            .record_notification(a, "slack", "succeeded", 2, Sent::Sent, None)
            .unwrap();
        store
            .set_live(&crate::store::Live {
                service: "web".into(),
                colour: Some(crate::domain::deployment::Colour::Green),
                tag: Some("v1".into()),
                digest: "sha256:1".into(),
                image: "r/web@sha256:1".into(),
                image_id: None,
                deployment_id: Some(a),
                since: 1,
                previous_tag: None,
                previous_digest: None,
                previous_image_id: None,
                pushed_at: None,
                routing: Some(two_replicas()),
            })
            .unwrap();

        let second = scrape();
        assert_same(&second, &from_scratch(&store));
        assert_eq!(outcome(&second, "web", "failed"), 1);
        assert_eq!(outcome(&second, "api", "superseded"), 1);
        assert_eq!(second.queue["api"], 1);
        assert_eq!(steps_count(&second, "web", "pulling"), 2);
        assert_eq!(kind(&second, "github", "queued"), 1);
        let attempts = |o: &str| second.attempts[&("slack".to_string(), o.to_string())];
        assert_eq!((attempts("failed"), attempts("sent")), (1, 1));
        assert_eq!(second.live.len(), 1);
        assert_eq!(second.live[0].colour, "green");
        assert_eq!(second.live[0].replicas, [("sha256:1".to_string(), 2)]);

        // Nothing new: the same numbers again, nothing counted twice.
        assert_same(&scrape(), &second);
    }

    #[test]
    fn the_text_is_prometheus_and_says_what_it_counts() {
        let store = Store::in_memory().unwrap();
        let a = store.create_deployment(&new("web")).unwrap();
        walk(&store, a, &[Step::Resolving]);
        store.finish(a, State::Succeeded, None).unwrap();
        let text = Metrics::default()
            .render(&store, &services(), vec![("github".into(), 2)], vec![])
            .unwrap();
        for line in [
            "# TYPE greenlight_deployments_total counter",
            "greenlight_deployments_total{service=\"web\",outcome=\"succeeded\"} 1",
            "greenlight_deployments_total{service=\"api\",outcome=\"failed\"} 0",
            "# TYPE greenlight_step_duration_seconds histogram",
            "greenlight_step_duration_seconds_bucket{service=\"web\",step=\"resolving\",le=\"600\"} 1",
            "greenlight_step_duration_seconds_count{service=\"web\",step=\"resolving\"} 1",
            "greenlight_webhook_auth_failures_total{source=\"github\"} 2",
            "greenlight_deliveries_total{source=\"dockerhub\",verdict=\"stale\"} 0",
            "# TYPE greenlight_queue_depth gauge",
            "greenlight_queue_depth{service=\"web\"} 0",
            "greenlight_up 1",
            "greenlight_build_info{version=\"",
        ] {
            assert!(text.contains(line), "{line:?} missing from:\n{text}");
        }
    }

    /// Fills a store file with `n` finished deployments (ten steps each), as
    /// many deliveries with a 2 KiB body, and one notification per deployment.
    fn fill(store: &Store, n: i64) {
        let mut conn = store.conn();
        let tx = conn.transaction().unwrap();
        let steps = [
            "received",
            "resolving",
            "pulling",
            "starting",
            "health_gate",
            "switching",
            "verifying",
            "draining",
            "stopping_old",
            "pruning",
        ];
        let body = vec![b'x'; 2048];
        for i in 0..n {
            let service = ["web", "api"][(i % 2) as usize];
            let state = if i % 10 == 0 { "failed" } else { "succeeded" };
            let t0 = 1_700_000_000_000 + i * 60_000;
            tx.execute(
                "INSERT INTO deployments (service, state, trigger, created_at, updated_at, finished_at, log_tail) \
                 VALUES (?1, ?2, 'webhook', ?3, ?3, ?4, ?5)",
                params![service, state, t0, t0 + 30_000, "log line\n".repeat(50)],
            )
            .unwrap();
            let id = tx.last_insert_rowid();
            for (seq, step) in steps.iter().enumerate() {
                let start = t0 + seq as i64 * 3_000;
                tx.execute(
                    "INSERT INTO steps (deployment_id, seq, step, started_at, finished_at, outcome) \
                     VALUES (?1, ?2, ?3, ?4, ?5, 'ok')",
                    params![id, seq as i64, step, start, start + (i * 37 + seq as i64 * 911) % 20_000],
                )
                .unwrap();
            }
            tx.execute(
                "INSERT INTO steps (deployment_id, seq, step, started_at, finished_at, outcome) \
                 VALUES (?1, 10, ?2, ?3, ?3, ?2)",
                params![id, state, t0 + 30_000],
            )
            .unwrap();
            tx.execute(
                "INSERT INTO deliveries (source, delivery_id, received_at, headers, body, verdict) \
                 VALUES ('registry', ?1, ?2, '{}', ?3, 'queued')",
                params![format!("d{i}"), t0, body],
            )
            .unwrap();
            tx.execute(
                "INSERT INTO notifications (deployment_id, channel, event, attempt, at, outcome) \
                 VALUES (?1, 'slack', ?2, 1, ?3, 'sent')",
                params![id, state, t0 + 31_000],
            )
            .unwrap();
        }
        tx.commit().unwrap();
    }

    /// The cost of a scrape against 10,000 deployments (110,000 step rows),
    /// 10,000 deliveries and 10,000 notification attempts: the first scrape
    /// reads them all once; later ones only what is new.
    #[test]
    fn a_scrape_of_a_large_store_stays_cheap() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state.db")).unwrap();
        fill(&store, 10_000);
        let metrics = Metrics::default();
        let scrape = || {
            let t = Instant::now();
            let text = metrics.render(&store, &services(), vec![], vec![]).unwrap();
            (t.elapsed(), text)
        };
        // Meanwhile the store is used as a webhook would: how long does it wait?
        let stop = std::sync::atomic::AtomicBool::new(false);
        let (cold, text, longest_wait) = std::thread::scope(|s| {
            let waiter = s.spawn(|| {
                let mut longest = std::time::Duration::ZERO;
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    store.live("web").unwrap();
                    longest = longest.max(t.elapsed());
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                longest
            });
            let (cold, text) = scrape();
            stop.store(true, Ordering::Relaxed);
            (cold, text, waiter.join().unwrap())
        });
        let mut warm = Vec::new();
        for _ in 0..20 {
            warm.push(scrape().0);
        }
        // A new deployment between scrapes: read and counted.
        let id = store.create_deployment(&new("web")).unwrap();
        walk(&store, id, &[Step::Resolving]);
        store.finish(id, State::Succeeded, None).unwrap();
        let (after_new, text2) = scrape();
        warm.sort();
        let median = warm[warm.len() / 2];
        eprintln!(
            "scrape of 10,000 deployments / 110,000 steps / 10,000 deliveries: \
             first {cold:?} (a store call waited at most {longest_wait:?} meanwhile), \
             then median {median:?} (max {:?}), with one new deployment {after_new:?}; {} bytes",
            warm.last().unwrap(),
            text.len()
        );
        assert!(text
            .contains("greenlight_deployments_total{service=\"web\",outcome=\"succeeded\"} 4000"));
        assert!(
            text.contains("greenlight_deployments_total{service=\"web\",outcome=\"failed\"} 1000")
        );
        assert!(text
            .contains("greenlight_deliveries_total{source=\"registry\",verdict=\"queued\"} 10000"));
        assert!(text.contains(
            "greenlight_step_duration_seconds_count{service=\"api\",step=\"pulling\"} 5000"
        ));
        assert!(text2
            .contains("greenlight_deployments_total{service=\"web\",outcome=\"succeeded\"} 4001"));
        // Generous bounds for a debug build on a shared machine; the figures
        // printed above are the measurement.
        assert!(median.as_millis() < 50, "warm scrape took {median:?}");
        assert!(after_new.as_millis() < 100, "scrape took {after_new:?}");
        assert!(
            longest_wait.as_millis() < 1_000,
            "the first scrape held the store for {longest_wait:?}"
        );
    }
}
