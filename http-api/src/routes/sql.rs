//! `POST /sql`: one read-only statement against the generation served now.
//!
//! The SQL comes as the raw body (text/plain, or what `curl -d` sends), as the form field
//! `sql` (the console without JavaScript), or as JSON `{"sql": "..."}`.

use std::time::SystemTime;

use actix_web::http::header::{self, ContentType};
use actix_web::{web, HttpRequest, HttpResponse};
use futures::StreamExt;
use query_actors::node::{Answer, NodeHandle};
use serde::Deserialize;
use serde_json::json;

use super::{age_ms, generation_json};
use crate::encode;
use crate::error::ApiError;

#[derive(Debug, Deserialize)]
pub struct SqlParams {
    #[serde(default)]
    format: Option<String>,
}

#[derive(Deserialize)]
struct JsonBody {
    sql: String,
}

pub async fn post_sql(
    req: HttpRequest,
    payload: web::Payload,
    params: web::Query<SqlParams>,
    node: web::Data<NodeHandle>,
) -> Result<HttpResponse, ApiError> {
    let format = params.format.as_deref().unwrap_or("json");
    if !matches!(format, "json" | "csv" | "ndjson") {
        return Err(ApiError::BadRequest(format!(
            "unknown format '{format}': use json, csv or ndjson"
        )));
    }
    let body = read_body(payload, node.config.http.max_body_bytes).await?;
    let sql = sql_from_body(&req, &body)?;
    let answer = node.query(sql).await?;
    respond(answer, format)
}

async fn read_body(mut payload: web::Payload, limit: usize) -> Result<web::BytesMut, ApiError> {
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::BadRequest(format!("reading the request body: {e}")))?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::PayloadTooLarge(limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn sql_from_body(req: &HttpRequest, body: &[u8]) -> Result<String, ApiError> {
    let text = std::str::from_utf8(body)
        .map_err(|_| ApiError::BadRequest("the request body is not UTF-8".into()))?;
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    if content_type.starts_with("application/json") {
        let parsed: JsonBody = serde_json::from_str(text).map_err(|e| {
            ApiError::BadRequest(format!("expected a JSON object {{\"sql\": \"...\"}}: {e}"))
        })?;
        return Ok(parsed.sql);
    }
    if content_type.starts_with("application/x-www-form-urlencoded") {
        // A browser form sends `sql=...`; `curl -d 'SELECT ...'` sends the bare statement
        // with this same content type, so anything without a `sql` field is taken as is.
        if let Ok(fields) = serde_urlencoded::from_str::<Vec<(String, String)>>(text) {
            if let Some((_, sql)) = fields.into_iter().find(|(k, _)| k == "sql") {
                return Ok(sql);
            }
        }
    }
    Ok(text.to_string())
}

fn respond(answer: Answer, format: &str) -> Result<HttpResponse, ApiError> {
    let Answer {
        snapshot,
        output,
        elapsed,
    } = answer;
    let now = SystemTime::now();
    let g = &snapshot.generation;
    let mut resp = HttpResponse::Ok();
    resp.insert_header(("X-Query-Generation", g.id.to_string()))
        .insert_header((
            "X-Query-Generation-Age-Ms",
            g.age(now).as_millis().to_string(),
        ))
        .insert_header(("X-Query-Truncated", output.truncated.to_string()));
    match format {
        "csv" => {
            let body = encode::csv(&output.schema, &output.batches)
                .map_err(|e| ApiError::Query(query_actors::QueryError::Internal(e)))?;
            Ok(resp.content_type("text/csv; charset=utf-8").body(body))
        }
        "ndjson" => Ok(resp
            .content_type("application/x-ndjson")
            .body(encode::ndjson(&output.batches))),
        _ => {
            let columns: Vec<_> = output
                .schema
                .fields()
                .iter()
                .map(|f| json!({ "name": f.name(), "type": encode::type_name(f.data_type()) }))
                .collect();
            let tables: Vec<_> = output
                .tables
                .iter()
                .map(|t| {
                    json!({
                        "name": t.name,
                        "origin": t.origin,
                        "rows": t.rows,
                        "sources": t.sources,
                        "oldest_source_age_ms": age_ms(t.oldest_publish, now),
                        "newest_source_age_ms": age_ms(t.newest_publish, now),
                    })
                })
                .collect();
            let body = json!({
                "columns": columns,
                "rows": encode::json_rows(&output.batches),
                "row_count": output.rows(),
                "truncated": output.truncated,
                "generation": generation_json(&snapshot, now),
                "tables": tables,
                "elapsed_ms": elapsed.as_secs_f64() * 1000.0,
            });
            Ok(resp
                .insert_header(ContentType::json())
                .body(body.to_string()))
        }
    }
}
