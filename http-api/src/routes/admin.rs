//! `POST /admin/quarantine/lift`: an operator lifts the quarantine of one query (its SQL as
//! the body) or of every query (empty body). It needs a token (or client certificate) with
//! `admin = true`; on a node without tokens, a loopback peer (`Principal::anonymous`).

use actix_web::{web, HttpRequest, HttpResponse};
use query_actors::auth::Credential;
use query_actors::node::NodeHandle;
use serde_json::json;

use crate::error::ApiError;
use crate::guard::principal_of;

pub async fn lift_quarantine(
    req: HttpRequest,
    body: web::Bytes,
    node: web::Data<NodeHandle>,
) -> Result<HttpResponse, ApiError> {
    require_admin(&req, &node, "admin")?;
    let text = std::str::from_utf8(&body)
        .map_err(|_| ApiError::BadRequest("the request body is not UTF-8".into()))?
        .trim();
    let lifted = node
        .queries
        .quarantine
        .lift((!text.is_empty()).then_some(text));
    Ok(HttpResponse::Ok().json(json!({ "lifted": lifted })))
}

/// Refuses a client without `admin = true` (on a node without tokens: a non-loopback one),
/// counted and logged like any refusal; `kind` names the endpoints in the message.
pub fn require_admin(req: &HttpRequest, node: &NodeHandle, kind: &str) -> Result<(), ApiError> {
    let who = principal_of(req);
    if who.admin {
        return Ok(());
    }
    let m = if who.credential != Credential::Anonymous {
        format!(
            "{} may not call {kind} endpoints (admin = false)",
            who.describe()
        )
    } else {
        format!("{kind} endpoints answer loopback clients only on a node without tokens")
    };
    node.auth.refused("forbidden", &m, &who.name);
    Err(ApiError::Forbidden(m))
}
