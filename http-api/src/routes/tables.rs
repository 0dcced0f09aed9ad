//! `GET /tables`: every table a query can use, where it comes from, how big and how old,
//! and the static-table and view files that are currently rejected. A token with a table
//! list sees the tables (and views over them) it may read, and no file errors. Tables and
//! columns carry their descriptions (those of `query_columns`).

use std::time::SystemTime;

use actix_web::{web, HttpRequest, HttpResponse};
use query_actors::node::NodeHandle;
use query_actors::sql::describe::Descriptions;
use query_actors::sql::tables_behind;
use query_actors::QueryError;
use serde_json::json;

use super::{age_ms, generation_json, rfc3339};

fn ms_rfc3339(ms: i64) -> String {
    rfc3339(
        SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0)),
    )
}
use crate::encode::type_name;
use crate::error::ApiError;
use crate::guard::principal_of;

/// A column's description from the snapshot's `query_columns` ("" if none).
fn column_description<'a>(described: &'a Descriptions, table: &str, column: &str) -> &'a str {
    described
        .table(table)
        .and_then(|t| t.columns.iter().find(|c| c.name == column))
        .map_or("", |c| c.description.as_str())
}

pub async fn get_tables(
    req: HttpRequest,
    node: web::Data<NodeHandle>,
) -> Result<HttpResponse, ApiError> {
    let snap = node.snapshot().ok_or(QueryError::NoGeneration)?;
    let who = principal_of(&req);
    let views = snap.view_sql();
    let now = SystemTime::now();
    let mut tables = Vec::new();
    let described = &snap.descriptions;
    for t in snap.tables() {
        if !who.may_read(&tables_behind(&t.name, &views)) {
            continue;
        }
        let columns: Vec<_> = match snap.columns(&t.name).await {
            Some(schema) => schema
                .fields()
                .iter()
                .map(|f| {
                    json!({
                        "name": f.name(),
                        "type": type_name(f.data_type()),
                        "nullable": f.is_nullable(),
                        "description": column_description(described, &t.name, f.name()),
                    })
                })
                .collect(),
            None => Vec::new(),
        };
        tables.push(json!({
            "name": t.name,
            "origin": t.origin,
            "description": described.table(&t.name).map_or("", |d| d.description.as_str()),
            "rows": t.rows,
            "sources": t.sources,
            "age_ms": age_ms(t.oldest_publish, now),
            "columns": columns,
        }));
    }
    if let Some(history) = &node.history {
        for (name, kept) in history.index.all() {
            if !who.may_read(&std::collections::BTreeSet::from([name.clone()])) {
                continue;
            }
            let range = kept.range();
            let columns: Vec<_> = kept
                .schema
                .fields()
                .iter()
                .map(|f| {
                    json!({
                        "name": f.name(),
                        "type": type_name(f.data_type()),
                        "nullable": f.is_nullable(),
                        "description": column_description(described, &name, f.name()),
                    })
                })
                .collect();
            tables.push(json!({
                "name": name,
                "origin": "history",
                "description": described.table(&name).map_or("", |d| d.description.as_str()),
                "rows": kept.rows(),
                "files": kept.files.len(),
                "bytes": kept.bytes(),
                "from": range.map(|r| ms_rfc3339(r.0)),
                "to": range.map(|r| ms_rfc3339(r.1)),
                "columns": columns,
            }));
        }
    }
    let mut errors: Vec<_> = snap
        .statics
        .errors
        .iter()
        .map(|(file, message)| json!({ "kind": "static_table", "file": file, "message": message }))
        .collect();
    errors.extend(
        snap.view_errors
            .iter()
            .map(|(view, message)| json!({ "kind": "view", "view": view, "message": message })),
    );
    errors.extend(snap.generation.errors.iter().map(
        |(source, message)| json!({ "kind": "publisher", "source": source, "message": message }),
    ));
    if let Some(message) = &snap.views_file_error {
        errors.push(json!({ "kind": "views_file", "message": message }));
    }
    if who.tables.is_some() {
        // They name other tables' files, views and publishers.
        errors.clear();
    }
    Ok(HttpResponse::Ok().json(json!({
        "generation": generation_json(&snap, now),
        "tables": tables,
        "errors": errors,
    })))
}
