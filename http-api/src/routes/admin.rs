//! `POST /admin/quarantine/lift`: an operator lifts the quarantine of one query (its SQL as
//! the body) or of every query (empty body). Until the authentication issue gives admin
//! endpoints their own permission, only loopback peers may call it.

use actix_web::{web, HttpRequest, HttpResponse};
use query_actors::node::NodeHandle;
use serde_json::json;

use crate::error::ApiError;

pub async fn lift_quarantine(
    req: HttpRequest,
    body: web::Bytes,
    node: web::Data<NodeHandle>,
) -> Result<HttpResponse, ApiError> {
    if !req.peer_addr().is_some_and(|a| a.ip().is_loopback()) {
        return Err(ApiError::Forbidden(
            "admin endpoints answer loopback clients only".into(),
        ));
    }
    let text = std::str::from_utf8(&body)
        .map_err(|_| ApiError::BadRequest("the request body is not UTF-8".into()))?
        .trim();
    let lifted = node
        .queries
        .quarantine
        .lift((!text.is_empty()).then_some(text));
    Ok(HttpResponse::Ok().json(json!({ "lifted": lifted })))
}
