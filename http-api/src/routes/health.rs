//! `GET /health`: 200 once the node serves a generation, 503 before. Says what the node is
//! and what it sees below (a TLA advertises how many clusters it sees; a SQL node shows the
//! TLA it uses and what every candidate advertised).

use std::time::SystemTime;

use actix_web::{web, HttpResponse};
use query_actors::node::NodeHandle;
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
        Some(snap) => HttpResponse::Ok().json(json!({
            "status": "ok",
            "node": node.name,
            "role": node.config.role.name(),
            "generation": generation_json(&snap, now),
            "clusters": snap.generation.clusters,
            "machines": snap.generation.machines,
            "children": children,
            "tla": tla,
            "parents": node.parents.snapshot().len(),
            "requested_tables": node.wanted.borrow().iter().cloned().collect::<Vec<_>>(),
        })),
        None => HttpResponse::ServiceUnavailable().json(json!({
            "status": "starting",
            "node": node.name,
            "role": node.config.role.name(),
            "tla": tla,
        })),
    }
}
