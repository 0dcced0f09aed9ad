//! `GET /health`: 200 once the node serves a generation, 503 before. Says what the node is
//! and what it sees below (a TLA advertises how many clusters it sees; a SQL node shows the
//! TLA it uses and what every candidate advertised).

use std::time::SystemTime;

use actix_web::{web, HttpResponse};
use query_actors::node::NodeHandle;
use query_actors::sql::Snapshot;
use serde_json::json;

use super::{generation_json, rfc3339};

pub async fn get_health(node: web::Data<NodeHandle>) -> HttpResponse {
    let children = node.children.as_ref().map(|c| {
        let all = c.snapshot();
        json!({
            "configured": all.len(),
            "connected": all.values().filter(|s| s.connected).count(),
        })
    });
    let now = SystemTime::now();
    let tla = node.selection.as_ref().map(|s| {
        let s = s.lock().unwrap_or_else(|p| p.into_inner()).clone();
        json!({
            "current": s.current,
            "since": s.since.map(rfc3339),
            "switches": s.switches,
            "reason": s.last_reason,
            "candidates": s.candidates.iter().map(|(address, c)| json!({
                "address": address,
                "node": c.node,
                "clusters": c.clusters,
                "machines": c.machines,
                "failed_probes": c.failures,
                "last_error": c.last_error,
                "bonus": c.bonus,
                "allowed": c.allowed,
            })).collect::<Vec<_>>(),
        })
    });
    match node.snapshot() {
        Some(snap) => {
            let degraded = degraded(&node, &snap, now);
            HttpResponse::Ok().json(json!({
                "status": if degraded.is_empty() { "ok" } else { "degraded" },
                "degraded": degraded,
                "queries": {
                    "running": node.queries.admission.running(),
                    "queued": node.queries.admission.queued(),
                    "quarantined": node.queries.quarantine.quarantined(),
                },
                "node": node.name,
                "role": node.config.role.name(),
                "generation": generation_json(&snap, now),
                "clusters": snap.generation.clusters,
                "machines": snap.generation.machines,
                "completeness": super::completeness::json(&node.completeness(&snap)),
                "children": children,
                "tla": tla,
                "parents": node.parents.snapshot().len(),
                "requested_tables": node.wanted.borrow().iter().cloned().collect::<Vec<_>>(),
                "history": history_json(&node),
            }))
        }
        None => HttpResponse::ServiceUnavailable().json(json!({
            "status": "starting",
            "node": node.name,
            "role": node.config.role.name(),
            "tla": tla,
        })),
    }
}

/// Why the node serves worse than it should: a generation older than a few intervals
/// (sealing or the tier below is behind), or the query queue full.
fn degraded(node: &NodeHandle, snap: &Snapshot, now: SystemTime) -> Vec<String> {
    let mut why = Vec::new();
    let interval = node.config.generation.interval;
    let age = snap.generation.age(now);
    if age > interval * STALE_INTERVALS {
        why.push(format!(
            "the generation served is {}s old, more than {STALE_INTERVALS} intervals of {}s",
            age.as_secs(),
            interval.as_secs_f64()
        ));
    }
    if node.queries.admission.saturated() {
        why.push("the query queue is full: queries that find no free place get 503 busy".into());
    }
    if let Some(paused) = node.history.as_ref().and_then(|h| h.lock().paused.clone()) {
        why.push(format!("history is paused: {paused}"));
    }
    why
}

/// What history does: paused or writing, bytes kept, damaged files found at start.
fn history_json(node: &NodeHandle) -> serde_json::Value {
    let Some(h) = &node.history else {
        return serde_json::Value::Null;
    };
    let bytes = h.index.bytes();
    let s = h.lock();
    json!({
        "state": if s.paused.is_some() { "paused" } else { "writing" },
        "paused": s.paused,
        "bytes": bytes,
        "skipped": s.skipped,
        "damaged": s.damaged.iter().map(|(file, why)| json!({ "file": file, "error": why })).collect::<Vec<_>>(),
        "definitions_error": s.kept_error,
        "reports_error": s.reports_error,
    })
}

/// A generation older than this many intervals makes the node `degraded`.
const STALE_INTERVALS: u32 = 3;
