//! The node's own counters, rendered in the Prometheus text format by `GET /metrics`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::sql::Snapshot;

/// Upper bounds of the query duration histogram, seconds.
const BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

#[derive(Debug, Default)]
pub struct Metrics {
    /// Queries by outcome: "ok" or the error code.
    queries: Mutex<BTreeMap<&'static str, u64>>,
    query_buckets: [AtomicU64; 13],
    query_count: AtomicU64,
    query_micros: AtomicU64,
    pub generations_sealed: AtomicU64,
    pub seals_skipped: AtomicU64,
    pub last_seal_micros: AtomicU64,
    /// Of the last seal: from every child's round being in (or the grace running out) to
    /// the generation sealed: a TLA's critical path.
    pub last_seal_critical_micros: AtomicU64,
    /// Arrow memory of the last generation sealed (buffers shared within a part counted
    /// once): what `query_resident_bytes` is compared with.
    pub generation_arrow_bytes: AtomicU64,
    /// Of the last snapshot installed: bytes its coalesced published tables copied, and
    /// bytes they share with the snapshot before (`sql::spread::Before`).
    pub snapshot_copied_bytes: AtomicU64,
    pub snapshot_shared_bytes: AtomicU64,
    pub snapshots_built: AtomicU64,
    pub static_reloads: AtomicU64,
    pub view_reloads: AtomicU64,
    pub config_errors: AtomicU64,
    /// Supervised parts (actors, accept loops, DNS watchers, link sessions) restarted
    /// after they ended or panicked; by part in `actor_restarts_by`.
    pub actor_restarts: AtomicU64,
    actor_restarts_by: Mutex<BTreeMap<String, u64>>,
    /// A SQL node's switches from one TLA to another.
    pub tla_switches: AtomicU64,
    /// A TLA's children failing (link lost, merge late or refused): the TLA took their share.
    pub tla_child_failures: AtomicU64,
    /// Queries put in quarantine since start.
    pub queries_quarantined: AtomicU64,
    /// Queries stopped on the light pool after `heavy_query_after` and run again on the
    /// heavy one (their client was not yet known as heavy).
    pub queries_moved_to_heavy: AtomicU64,
    /// Answers refused for covering fewer clusters or machines than their query asked.
    pub queries_incomplete: AtomicU64,
    /// Answers served from the answer cache (the same statement on the same snapshot).
    pub answer_cache_hits: AtomicU64,
    /// Statements run on a plan kept from an earlier run (`[sql] plan_cache_entries`).
    pub plans_reused: AtomicU64,
    /// Statements run on a physical plan kept from an earlier run (`kept_physical`).
    pub physical_plans_reused: AtomicU64,
    /// Aggregates read from their results kept on the snapshot (`[sql] aggregate_cache_mb`).
    pub aggregates_read: AtomicU64,
    /// Connections to `[link] listen` closed at once: past the session caps.
    pub link_refused: AtomicU64,
    /// Failed accepts at `[link] listen` (out of descriptors, ...).
    pub link_accept_errors: AtomicU64,
    /// Parent sessions closed for going past a listener limit (hello deadline, frame
    /// size, compression ratio, request budget).
    pub link_limit_errors: AtomicU64,
    /// View computations since start, all generations.
    pub view_computations_total: Arc<AtomicU64>,
    /// HTTP responses by status code.
    http: Mutex<BTreeMap<u16, u64>>,
    /// Publish-socket connections accepted since start (Unix socket and TCP).
    pub publish_connections: AtomicU64,
    /// Publish-socket connections and publishes refused or closed, by the `[edge]` limit.
    publish_refusals: Mutex<BTreeMap<&'static str, u64>>,
    /// Failed TLS handshakes at `[link] listen`, by reason.
    link_tls_refused: Mutex<BTreeMap<&'static str, u64>>,
    /// Alert receivers, by name (kept by the notification dispatcher).
    alert_receivers: Mutex<BTreeMap<String, AlertReceiverStats>>,
    /// Postgres protocol (`[pg]`): connections open now, refused at `max_connections`,
    /// statements run, and errors sent by SQLSTATE.
    pub pg_connections: AtomicU64,
    pub pg_refused: AtomicU64,
    pub pg_statements: AtomicU64,
    pg_errors: Mutex<BTreeMap<String, u64>>,
}

/// One alert receiver's figures in /metrics.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct AlertReceiverStats {
    /// Undelivered notifications in the outbox.
    pub depth: u64,
    /// False from a failed attempt until the next success.
    pub down: bool,
    /// Notifications delivered, attempts failed (per notification), and notifications
    /// dropped (outbox bound or refused by the receiver; since the database was created).
    pub ok: u64,
    pub retry: u64,
    pub dropped: u64,
}

impl Metrics {
    pub fn record_query(&self, outcome: &'static str, took: Duration) {
        if let Ok(mut q) = self.queries.lock() {
            *q.entry(outcome).or_default() += 1;
        }
        let secs = took.as_secs_f64();
        for (i, le) in BUCKETS.iter().enumerate() {
            if secs <= *le {
                self.query_buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.query_count.fetch_add(1, Ordering::Relaxed);
        self.query_micros
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    pub fn record_http(&self, status: u16) {
        if let Ok(mut h) = self.http.lock() {
            *h.entry(status).or_default() += 1;
        }
    }

    pub fn record_actor_restart(&self, actor: &str) {
        if let Ok(mut r) = self.actor_restarts_by.lock() {
            *r.entry(actor.to_string()).or_default() += 1;
        }
    }

    pub fn record_publish_refusal(&self, limit: &'static str) {
        if let Ok(mut r) = self.publish_refusals.lock() {
            *r.entry(limit).or_default() += 1;
        }
    }

    pub fn record_pg_error(&self, sqlstate: &str) {
        if let Ok(mut e) = self.pg_errors.lock() {
            // SQLSTATEs are five characters; anything else would be a label of our making.
            if e.len() < 64 || e.contains_key(sqlstate) {
                *e.entry(sqlstate.to_string()).or_default() += 1;
            }
        }
    }

    pub fn record_link_tls_refused(&self, reason: &'static str) {
        if let Ok(mut r) = self.link_tls_refused.lock() {
            *r.entry(reason).or_default() += 1;
        }
    }

    /// Changes one alert receiver's figures (creating them).
    pub fn update_alert_receiver(&self, name: &str, f: impl FnOnce(&mut AlertReceiverStats)) {
        if let Ok(mut r) = self.alert_receivers.lock() {
            f(r.entry(name.to_string()).or_default());
        }
    }

    /// A receiver removed from the configuration.
    pub fn forget_alert_receiver(&self, name: &str) {
        if let Ok(mut r) = self.alert_receivers.lock() {
            r.remove(name);
        }
    }

    pub fn alert_receiver(&self, name: &str) -> Option<AlertReceiverStats> {
        self.alert_receivers.lock().ok()?.get(name).cloned()
    }

    /// Prometheus text exposition, with gauges describing the snapshot now served.
    pub fn render(&self, snapshot: Option<&Snapshot>, now: SystemTime) -> String {
        let mut out = String::new();
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        };
        counter(
            &mut out,
            "query_generations_sealed_total",
            "Generations sealed by this node.",
            load(&self.generations_sealed),
        );
        counter(
            &mut out,
            "query_generation_seals_skipped_total",
            "Ticks skipped because the previous seal was still running.",
            load(&self.seals_skipped),
        );
        counter(
            &mut out,
            "query_snapshots_built_total",
            "Snapshots (generation + static tables + views) installed.",
            load(&self.snapshots_built),
        );
        counter(
            &mut out,
            "query_static_reloads_total",
            "Static table catalog changes applied.",
            load(&self.static_reloads),
        );
        counter(
            &mut out,
            "query_view_reloads_total",
            "views.toml changes applied.",
            load(&self.view_reloads),
        );
        counter(
            &mut out,
            "query_config_errors_total",
            "Static table or view files rejected (last good copy kept).",
            load(&self.config_errors),
        );
        counter(
            &mut out,
            "query_actor_restarts_total",
            "Supervised parts (actors, accept loops, DNS watchers, link sessions) restarted after they ended or panicked.",
            load(&self.actor_restarts),
        );
        let _ = writeln!(out, "# HELP query_actor_restarts_by_actor_total Restarts of each supervised part (query_actors).\n# TYPE query_actor_restarts_by_actor_total counter");
        if let Ok(r) = self.actor_restarts_by.lock() {
            for (actor, n) in r.iter() {
                let _ = writeln!(
                    out,
                    "query_actor_restarts_by_actor_total{{actor=\"{}\"}} {n}",
                    label(actor)
                );
            }
        }
        counter(
            &mut out,
            "query_tla_child_failures_total",
            "Times a TLA child failed and this TLA merged its deferred tables itself.",
            load(&self.tla_child_failures),
        );
        counter(
            &mut out,
            "query_tla_switches_total",
            "Times this SQL node switched to another TLA.",
            load(&self.tla_switches),
        );
        counter(
            &mut out,
            "query_link_connections_refused_total",
            "Connections to [link] listen closed at once (max_parent_sessions, max_sessions_per_address).",
            load(&self.link_refused),
        );
        counter(
            &mut out,
            "query_link_accept_errors_total",
            "Failed accepts at [link] listen (out of descriptors, ...); the listener retries.",
            load(&self.link_accept_errors),
        );
        counter(
            &mut out,
            "query_link_limit_errors_total",
            "Parent sessions closed for a listener limit (hello_timeout, max_request_frame_bytes, ratio, budget).",
            load(&self.link_limit_errors),
        );
        counter(
            &mut out,
            "query_view_computations_total",
            "View computations since start, all generations.",
            load(&self.view_computations_total),
        );
        let _ = writeln!(out, "# HELP query_last_seal_seconds Time to seal the last generation.\n# TYPE query_last_seal_seconds gauge\nquery_last_seal_seconds {}", load(&self.last_seal_micros) as f64 / 1e6);
        let _ = writeln!(out, "# HELP query_generation_arrow_bytes Arrow memory of the generation served (its parts' buffers; coalesced copies for queries not counted), measured once its snapshot is installed.\n# TYPE query_generation_arrow_bytes gauge\nquery_generation_arrow_bytes {}", load(&self.generation_arrow_bytes));
        let _ = writeln!(out, "# HELP query_snapshot_copied_bytes Bytes the last snapshot installed copied to coalesce its published tables.\n# TYPE query_snapshot_copied_bytes gauge\nquery_snapshot_copied_bytes {}", load(&self.snapshot_copied_bytes));
        let _ = writeln!(out, "# HELP query_snapshot_shared_bytes Bytes of the last snapshot's coalesced tables shared with the snapshot before it (columns whose parts did not change), not copied again.\n# TYPE query_snapshot_shared_bytes gauge\nquery_snapshot_shared_bytes {}", load(&self.snapshot_shared_bytes));
        if let Some(rss) = crate::heap::resident_bytes() {
            let _ = writeln!(out, "# HELP query_resident_bytes Resident memory of this process.\n# TYPE query_resident_bytes gauge\nquery_resident_bytes {rss}");
        }
        let _ = writeln!(out, "# HELP query_last_seal_critical_seconds Of the last seal, from the children's round being in to the generation sealed.\n# TYPE query_last_seal_critical_seconds gauge\nquery_last_seal_critical_seconds {}", load(&self.last_seal_critical_micros) as f64 / 1e6);

        let _ = writeln!(out, "# HELP query_queries_total SQL queries by outcome.\n# TYPE query_queries_total counter");
        if let Ok(q) = self.queries.lock() {
            for (outcome, n) in q.iter() {
                let _ = writeln!(out, "query_queries_total{{outcome=\"{outcome}\"}} {n}");
            }
        }
        let _ = writeln!(out, "# HELP query_query_duration_seconds Time to answer SQL queries.\n# TYPE query_query_duration_seconds histogram");
        for (i, le) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "query_query_duration_seconds_bucket{{le=\"{le}\"}} {}",
                load(&self.query_buckets[i])
            );
        }
        let count = load(&self.query_count);
        let _ = writeln!(
            out,
            "query_query_duration_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            out,
            "query_query_duration_seconds_sum {}",
            load(&self.query_micros) as f64 / 1e6
        );
        let _ = writeln!(out, "query_query_duration_seconds_count {count}");

        let _ = writeln!(out, "# HELP query_http_responses_total HTTP responses by status.\n# TYPE query_http_responses_total counter");
        if let Ok(h) = self.http.lock() {
            for (status, n) in h.iter() {
                let _ = writeln!(out, "query_http_responses_total{{status=\"{status}\"}} {n}");
            }
        }

        let _ = writeln!(out, "# HELP query_link_tls_refused_total Failed TLS handshakes at [link] listen, by reason.\n# TYPE query_link_tls_refused_total counter");
        if let Ok(r) = self.link_tls_refused.lock() {
            for (reason, n) in r.iter() {
                let _ = writeln!(
                    out,
                    "query_link_tls_refused_total{{reason=\"{reason}\"}} {n}"
                );
            }
        }

        let _ = writeln!(out, "# HELP query_pg_connections Postgres protocol connections open.\n# TYPE query_pg_connections gauge\nquery_pg_connections {}", load(&self.pg_connections));
        counter(
            &mut out,
            "query_pg_refused_total",
            "Postgres protocol connections refused at [pg] max_connections.",
            load(&self.pg_refused),
        );
        counter(
            &mut out,
            "query_pg_statements_total",
            "Statements received over the Postgres protocol.",
            load(&self.pg_statements),
        );
        let _ = writeln!(out, "# HELP query_pg_errors_total Errors sent over the Postgres protocol, by SQLSTATE.\n# TYPE query_pg_errors_total counter");
        if let Ok(e) = self.pg_errors.lock() {
            for (code, n) in e.iter() {
                let _ = writeln!(
                    out,
                    "query_pg_errors_total{{sqlstate=\"{}\"}} {n}",
                    label(code)
                );
            }
        }

        let _ = writeln!(out, "# HELP query_publish_connections_total Publish-socket connections accepted (Unix socket and TCP).\n# TYPE query_publish_connections_total counter\nquery_publish_connections_total {}", load(&self.publish_connections));
        let _ = writeln!(out, "# HELP query_publish_refusals_total Publish-socket connections and publishes refused or closed, by [edge] limit.\n# TYPE query_publish_refusals_total counter");
        if let Ok(r) = self.publish_refusals.lock() {
            for (limit, n) in r.iter() {
                let _ = writeln!(out, "query_publish_refusals_total{{limit=\"{limit}\"}} {n}");
            }
        }

        if let Ok(r) = self.alert_receivers.lock() {
            let _ = writeln!(out, "# HELP query_alert_outbox_depth Undelivered alert notifications, by receiver.\n# TYPE query_alert_outbox_depth gauge");
            for (name, s) in r.iter() {
                let _ = writeln!(
                    out,
                    "query_alert_outbox_depth{{receiver=\"{}\"}} {}",
                    label(name),
                    s.depth
                );
            }
            let _ = writeln!(out, "# HELP query_alert_receiver_up 1 unless the receiver's last attempt failed.\n# TYPE query_alert_receiver_up gauge");
            for (name, s) in r.iter() {
                let _ = writeln!(
                    out,
                    "query_alert_receiver_up{{receiver=\"{}\"}} {}",
                    label(name),
                    u8::from(!s.down)
                );
            }
            let _ = writeln!(out, "# HELP query_alert_deliveries_total Alert notifications by receiver and outcome (retry: failed attempts; dropped: outbox_max_items or refused).\n# TYPE query_alert_deliveries_total counter");
            for (name, s) in r.iter() {
                for (outcome, n) in [("ok", s.ok), ("retry", s.retry), ("dropped", s.dropped)] {
                    let _ = writeln!(
                        out,
                        "query_alert_deliveries_total{{receiver=\"{}\",outcome=\"{outcome}\"}} {n}",
                        label(name)
                    );
                }
            }
        }

        let Some(s) = snapshot else { return out };
        let g = &s.generation;
        let _ = writeln!(out, "# HELP query_generation_id Id of the generation served.\n# TYPE query_generation_id gauge\nquery_generation_id {}", g.id);
        let _ = writeln!(out, "# HELP query_generation_age_seconds Age of the generation served.\n# TYPE query_generation_age_seconds gauge\nquery_generation_age_seconds {}", g.age(now).as_secs_f64());
        let _ = writeln!(out, "# HELP query_table_rows Rows of each table in the generation served.\n# TYPE query_table_rows gauge");
        for t in s.tables() {
            if let Some(rows) = t.rows {
                let origin = serde_json::to_value(t.origin)
                    .ok()
                    .and_then(|v| v.as_str().map(String::from))
                    .unwrap_or_default();
                let _ = writeln!(
                    out,
                    "query_table_rows{{table=\"{}\",origin=\"{origin}\"}} {rows}",
                    t.name
                );
            }
        }
        let _ = writeln!(out, "# HELP query_view_computations Computations of each view in the generation served (1 once used, however many queries used it).\n# TYPE query_view_computations gauge");
        for (view, n) in s.view_computations() {
            let _ = writeln!(
                out,
                "query_view_computations{{view=\"{view}\",generation=\"{}\"}} {n}",
                g.id
            );
        }
        let _ = writeln!(out, "# HELP query_view_errors Views that cannot be planned in the generation served.\n# TYPE query_view_errors gauge\nquery_view_errors {}", s.view_errors.len());
        let _ = writeln!(out, "# HELP query_static_table_errors Static table files currently rejected.\n# TYPE query_static_table_errors gauge\nquery_static_table_errors {}", s.statics.errors.len());
        out
    }
}

/// A label value in the text format: backslash, quote and newline escaped.
pub(crate) fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
