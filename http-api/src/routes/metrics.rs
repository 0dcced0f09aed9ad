//! `GET /metrics`: Prometheus text format.

use std::time::SystemTime;

use actix_web::{web, HttpResponse};
use query_actors::node::NodeHandle;

pub async fn get_metrics(node: web::Data<NodeHandle>) -> HttpResponse {
    let snap = node.snapshot();
    let body = node.metrics.render(snap.as_deref(), SystemTime::now());
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(body)
}
