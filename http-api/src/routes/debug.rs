//! `POST /debug/panic?actor=NAME`: a test-only fault hook. With `QUERYD_FAULT_INJECTION=1`
//! in the environment it makes the named supervised part (a `query_actors.actor`) panic on
//! its own task or event loop, so tests can show the node keeps serving and the part comes
//! back; without it the endpoint does not exist (404). Admin only (as the admin endpoints).

use actix_web::{web, HttpRequest, HttpResponse};
use query_actors::node::NodeHandle;
use serde::Deserialize;
use serde_json::json;

use crate::error::ApiError;

/// The variable that turns the hook on (tests only; never in production).
pub const FAULT_INJECTION_ENV: &str = "QUERYD_FAULT_INJECTION";

pub fn enabled() -> bool {
    std::env::var(FAULT_INJECTION_ENV).is_ok_and(|v| v == "1")
}

#[derive(Deserialize)]
pub struct Target {
    actor: String,
}

pub async fn inject_panic(
    req: HttpRequest,
    target: web::Query<Target>,
    node: web::Data<NodeHandle>,
) -> Result<HttpResponse, ApiError> {
    super::admin::require_admin(&req, &node, "debug")?;
    if !node.supervisor.inject_panic(&target.actor) {
        return Err(ApiError::NotFound(format!(
            "no supervised part named '{}' (see query_actors)",
            target.actor
        )));
    }
    Ok(HttpResponse::Ok().json(json!({ "injected": target.actor })))
}
