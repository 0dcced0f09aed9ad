//! `GET /health`: 200 once the node serves a generation, 503 before.

use std::time::SystemTime;

use actix_web::{web, HttpResponse};
use query_actors::node::NodeHandle;
use serde_json::json;

use super::generation_json;

pub async fn get_health(node: web::Data<NodeHandle>) -> HttpResponse {
    match node.snapshot() {
        Some(snap) => HttpResponse::Ok().json(json!({
            "status": "ok",
            "generation": generation_json(&snap, SystemTime::now()),
        })),
        None => HttpResponse::ServiceUnavailable().json(json!({ "status": "starting" })),
    }
}
