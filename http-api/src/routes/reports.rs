//! `GET /reports`: every report with how to draw it and its last run (the console's Graphs
//! page reads it, then the answers kept in `report.<name>` through `/sql`). A token with a
//! table list sees the reports whose tables it may read (`report.<name>` named in its list).

use std::collections::BTreeSet;

use actix_web::{web, HttpRequest, HttpResponse};
use query_actors::node::NodeHandle;
use serde_json::json;

use super::rfc3339;
use crate::error::ApiError;
use crate::guard::principal_of;

pub async fn get_reports(
    req: HttpRequest,
    node: web::Data<NodeHandle>,
) -> Result<HttpResponse, ApiError> {
    let shared = node.history.as_ref().ok_or_else(|| {
        ApiError::NotFound("this node keeps no reports (no [history] in its config)".into())
    })?;
    let who = principal_of(&req);
    let files = shared.index.all();
    let s = shared.lock();
    let mut reports = Vec::new();
    for r in &s.reports.report {
        let table = format!("report.{}", r.name);
        if !who.may_read(&BTreeSet::from([table.clone()])) {
            continue;
        }
        let status = s.report_status.get(&r.name).cloned().unwrap_or_default();
        let kept = files.get(&table);
        let range = kept.and_then(|t| t.range());
        reports.push(json!({
            "name": r.name,
            "title": r.title.clone().unwrap_or_else(|| r.name.clone()),
            "sql": r.sql,
            "every_ms": r.every.as_millis() as u64,
            "retention_ms": r.retention.as_millis() as u64,
            "series": r.series,
            "values": r.values,
            "unit": r.unit,
            "table": table,
            "runs": status.runs,
            "failures": status.failures,
            "last_run": status.last_run.map(rfc3339),
            "last_error": status.last_error.or_else(|| s.table_errors.get(&table).cloned()),
            "rows": status.rows,
            "kept_rows": kept.map(|t| t.rows()).unwrap_or(0),
            "oldest_ms": range.map(|r| r.0),
            "newest_ms": range.map(|r| r.1),
        }));
    }
    let file_error = match who.tables {
        Some(_) => None,
        None => s.reports_error.clone(),
    };
    Ok(HttpResponse::Ok().json(json!({ "reports": reports, "file_error": file_error })))
}
