//! `GET /health`: 200 once the node serves a generation, 503 before. Says what the node is
//! and what it sees below (a TLA advertises how many clusters it sees).

use std::time::SystemTime;

use actix_web::{web, HttpResponse};
use query_actors::node::NodeHandle;
use serde_json::json;

use super::generation_json;

pub async fn get_health(node: web::Data<NodeHandle>) -> HttpResponse {
    let children = node.children.as_ref().map(|c| {
        let all = c.snapshot();
        json!({
            "configured": all.len(),
            "connected": all.values().filter(|s| s.connected).count(),
        })
    });
    match node.snapshot() {
        Some(snap) => HttpResponse::Ok().json(json!({
            "status": "ok",
            "node": node.name,
            "role": node.config.role.name(),
            "generation": generation_json(&snap, SystemTime::now()),
            "clusters": snap.generation.clusters,
            "machines": snap.generation.machines,
            "children": children,
            "parents": node.parents.snapshot().len(),
            "requested_tables": node.wanted.borrow().iter().cloned().collect::<Vec<_>>(),
        })),
        None => HttpResponse::ServiceUnavailable().json(json!({
            "status": "starting",
            "node": node.name,
            "role": node.config.role.name(),
        })),
    }
}
