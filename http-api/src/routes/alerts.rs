//! `GET /alerts`: every alert with its last evaluation and instances (firing, error and
//! unknown first); `POST /alerts/test`: one alert evaluated once on the current generation,
//! showing what would fire, without writing or notifying anything. A token with a table
//! list sees only the alerts that read nothing else, and tests run with its rights.

use actix_web::{web, HttpRequest, HttpResponse};
use query_actors::alerts::config::AlertDef;
use query_actors::alerts::evaluator::test_alert;
use query_actors::alerts::AlertsShared;
use query_actors::node::NodeHandle;
use query_actors::sql::{parse_checked, referenced_tables_of};
use serde::Deserialize;

use crate::error::ApiError;
use crate::guard::principal_of;

fn alerts_of(node: &NodeHandle) -> Result<&std::sync::Arc<AlertsShared>, ApiError> {
    node.alerts.as_ref().ok_or_else(|| {
        ApiError::NotFound("this node evaluates no alerts (no [alerts] in its config)".into())
    })
}

/// `?instances=N`: instances listed per alert (default 500, at most 100,000); the counts
/// per state are always complete.
#[derive(Debug, Deserialize)]
pub struct ReportQuery {
    instances: Option<usize>,
}

const DEFAULT_INSTANCES: usize = 500;
const MAX_INSTANCES: usize = 100_000;

pub async fn get_alerts(
    req: HttpRequest,
    query: web::Query<ReportQuery>,
    node: web::Data<NodeHandle>,
) -> Result<HttpResponse, ApiError> {
    let shared = alerts_of(&node)?;
    let who = principal_of(&req);
    let limit = query
        .instances
        .unwrap_or(DEFAULT_INSTANCES)
        .min(MAX_INSTANCES);
    let mut report = shared.report(limit);
    if who.tables.is_some() {
        // Alert SQL is the operator's, not the client's: parsed here, not on the query pool.
        let views = node.snapshot().map(|s| s.view_sql()).unwrap_or_default();
        let limits = node.queries.limits.parse;
        report.alerts.retain(|a| {
            parse_checked(&a.sql, &limits)
                .map(|st| who.may_read(&referenced_tables_of(&st, &views)))
                .unwrap_or(false)
        });
        report.file_error = None;
    }
    Ok(HttpResponse::Ok().json(report))
}

/// An alert given whole (`name`, `sql`, `key`, and any other field of an alert), or the
/// name of one defined. The whole form is tried first: a bare name does not parse as one.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum TestRequest {
    Given(Box<AlertDef>),
    Named { name: String },
}

pub async fn test(
    req: HttpRequest,
    body: web::Json<TestRequest>,
    node: web::Data<NodeHandle>,
) -> Result<HttpResponse, ApiError> {
    let shared = alerts_of(&node)?;
    let who = principal_of(&req);
    let def = match body.into_inner() {
        TestRequest::Given(def) => *def,
        TestRequest::Named { name } => shared
            .lock()
            .defs
            .alert
            .iter()
            .find(|a| a.name == name)
            .cloned()
            .ok_or_else(|| ApiError::NotFound(format!("no alert named '{name}'")))?,
    };
    let report = test_alert(&node, shared, &def, &who).await?;
    Ok(HttpResponse::Ok().json(report))
}
