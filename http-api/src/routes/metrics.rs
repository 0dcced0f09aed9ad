//! `GET /metrics`: Prometheus text format.

use std::fmt::Write;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use actix_web::{web, HttpResponse};
use query_actors::node::NodeHandle;

pub async fn get_metrics(node: web::Data<NodeHandle>) -> HttpResponse {
    let snap = node.snapshot();
    let mut body = node.metrics.render(snap.as_deref(), SystemTime::now());
    let q = &node.queries;
    let gauges: [(&str, &str, &str, u64); 12] = [
        (
            "query_queries_running",
            "gauge",
            "Queries executing now.",
            q.admission.running() as u64,
        ),
        (
            "query_queries_queued",
            "gauge",
            "Queries waiting for a place now.",
            q.admission.queued() as u64,
        ),
        (
            "query_queries_busy_total",
            "counter",
            "Queries refused as busy (admission control).",
            q.admission.busy_total.load(Ordering::Relaxed),
        ),
        (
            "query_queries_quarantined",
            "gauge",
            "Queries refused now for hitting limits too often.",
            q.quarantine.quarantined() as u64,
        ),
        (
            "query_queries_quarantined_total",
            "counter",
            "Queries put in quarantine since start.",
            node.metrics.queries_quarantined.load(Ordering::Relaxed),
        ),
        (
            "query_queries_moved_to_heavy_total",
            "counter",
            "Queries stopped on the light pool after heavy_query_after and run on the heavy one.",
            node.metrics.queries_moved_to_heavy.load(Ordering::Relaxed),
        ),
        (
            "query_queries_incomplete_total",
            "counter",
            "Answers refused (503 incomplete) for fewer clusters or machines than min_clusters or min_machines asked.",
            node.metrics.queries_incomplete.load(Ordering::Relaxed),
        ),
        (
            "query_answer_cache_hits_total",
            "counter",
            "Answers served again from the answer cache (the same statement on the same snapshot; [sql] answer_cache_mb).",
            node.metrics.answer_cache_hits.load(Ordering::Relaxed),
        ),
        (
            "query_plans_reused_total",
            "counter",
            "Statements run on an optimized plan kept from an earlier run, in this generation or an earlier one ([sql] plan_cache_entries).",
            node.metrics.plans_reused.load(Ordering::Relaxed),
        ),
        (
            "query_physical_plans_reused_total",
            "counter",
            "Statements run on a physical plan kept with their kept plan, bound to the generation's tables ([sql] plan_cache_entries).",
            node.metrics.physical_plans_reused.load(Ordering::Relaxed),
        ),
        (
            "query_aggregates_read_total",
            "counter",
            "Aggregates read from their results kept for the snapshot, not run ([sql] aggregate_cache_mb).",
            node.metrics.aggregates_read.load(Ordering::Relaxed),
        ),
        (
            "query_memory_reserved_bytes",
            "gauge",
            "Memory reserved by running queries' operators.",
            q.limits.memory.reserved() as u64,
        ),
    ];
    for (name, kind, help, v) in gauges {
        let _ = writeln!(
            body,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
        );
    }
    // Where the running queries' places are: a climb in heavy places and clients under a
    // steady mix is the first thing to read when queries are refused busy.
    let classes = q.admission.classes();
    let _ = writeln!(
        body,
        "# HELP query_queries_running_by_class Queries executing now, by their client's class when admitted ([sql] max_concurrent_queries for light clients, max_heavy_queries for heavy ones and as many for new ones).\n# TYPE query_queries_running_by_class gauge"
    );
    for (class, n) in [
        ("light", classes.light),
        ("heavy", classes.heavy),
        ("new", classes.new),
    ] {
        let _ = writeln!(
            body,
            "query_queries_running_by_class{{class=\"{class}\"}} {n}"
        );
    }
    let _ = writeln!(
        body,
        "# HELP query_clients_heavy Clients known as heavy now (a query of theirs held its place [sql] heavy_query_after or longer recently; the cost halves every 30 s).\n# TYPE query_clients_heavy gauge\nquery_clients_heavy {}",
        classes.heavy_clients
    );
    let _ = writeln!(
        body,
        "# HELP query_http_refusals_total HTTP requests refused before their endpoint (token, domain, Host, Origin) or for a table the token may not read.\n# TYPE query_http_refusals_total counter"
    );
    for (reason, n) in node.auth.refusals() {
        let _ = writeln!(body, "query_http_refusals_total{{reason=\"{reason}\"}} {n}");
    }
    if let Some(store) = &node.auth.tokens {
        let _ = writeln!(
            body,
            "# HELP query_auth_tokens Tokens in force (the last good copy of the tokens file).\n# TYPE query_auth_tokens gauge\nquery_auth_tokens {}",
            store.tokens().len()
        );
    }
    if let Some(alerts) = &node.alerts {
        alerts.render_metrics(&mut body);
    }
    if let Some(history) = &node.history {
        history.render_metrics(&mut body);
    }
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(body)
}
