//! `POST /sql`: one read-only statement against the generation served now.
//!
//! The SQL comes as the raw body (text/plain, or what `curl -d` sends), as the form field
//! `sql` (the console without JavaScript), or as JSON `{"sql": "..."}`.

use std::time::SystemTime;

use actix_web::http::header::{self, ContentType};
use actix_web::web::Bytes;
use actix_web::{web, HttpRequest, HttpResponse};
use datafusion::arrow::record_batch::RecordBatch;
use futures::StreamExt;
use query_actors::node::{Answer, Completeness, NodeHandle};
use query_actors::sql::{QueryOutput, SqlPool};
use query_actors::QueryError;
use serde::Deserialize;
use serde_json::json;

use super::{age_ms, completeness, generation_json};
use crate::encode;
use crate::error::ApiError;
use crate::guard::principal_of;

#[derive(Debug, Deserialize)]
pub struct SqlParams {
    #[serde(default)]
    format: Option<String>,
    /// The least coverage accepted (else 503 `incomplete`): see `completeness.rs`.
    #[serde(default)]
    min_clusters: Option<String>,
    #[serde(default)]
    min_machines: Option<String>,
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
    let min = completeness::asked(
        &req,
        params.min_clusters.as_deref(),
        params.min_machines.as_deref(),
    )?;
    let body = read_body(payload, node.config.http.max_body_bytes).await?;
    let sql = sql_from_body(&req, &body)?;
    let who = principal_of(&req);
    let answer = match node.query(sql, &who).await {
        Err(QueryError::Forbidden(m)) => {
            node.auth.refused("table", &m, &who.name);
            return Err(QueryError::Forbidden(m).into());
        }
        Err(error @ QueryError::OtherPartition { .. }) => {
            let scheme = if node.config.http.tls.is_some() {
                "https"
            } else {
                "http"
            };
            return Err(ApiError::Redirect { scheme, error });
        }
        other => other?,
    };
    // Judged on the generation the answer was computed on, not the one served now.
    let coverage = node.completeness(&answer.snapshot);
    if let Err(message) = coverage.check(&min) {
        node.count_incomplete();
        tracing::info!(client = %who.name, %message, "answer refused as incomplete");
        return Err(ApiError::Incomplete(message));
    }
    respond(answer, format, &coverage)
}

/// Who a query is from, for admission fairness and quarantine: the token's name, or the
/// peer's address on a node without tokens.
pub fn client_of(req: &HttpRequest) -> String {
    principal_of(req).name
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

fn respond(
    answer: Answer,
    format: &str,
    coverage: &Completeness,
) -> Result<HttpResponse, ApiError> {
    let Answer {
        snapshot,
        output,
        elapsed,
        place,
        pool,
        queued,
    } = answer;
    let now = SystemTime::now();
    let g = &snapshot.generation;
    let mut resp = HttpResponse::Ok();
    resp.insert_header(("X-Query-Generation", g.id.to_string()))
        .insert_header((
            "X-Query-Generation-Age-Ms",
            g.age(now).as_millis().to_string(),
        ))
        .insert_header(("X-Query-Truncated", output.truncated.to_string()))
        .insert_header(("X-Query-Queued-Ms", queued.as_millis().to_string()));
    for header in completeness::headers(coverage) {
        resp.insert_header(header);
    }
    let QueryOutput {
        schema,
        batches,
        truncated,
        tables,
        ..
    } = output;
    if format == "csv" {
        if let Some(f) = schema.fields().iter().find(|f| f.data_type().is_nested()) {
            // Checked before the 200 goes out: the CSV writer fails on these mid-answer.
            return Err(ApiError::BadRequest(format!(
                "column '{}' is a {}, which CSV cannot hold: use format=json or ndjson",
                f.name(),
                encode::type_name(f.data_type())
            )));
        }
    }
    let row_count: usize = batches.iter().map(|b| b.num_rows()).sum();
    let inline = batches
        .iter()
        .map(|b| b.get_array_memory_size())
        .sum::<usize>()
        <= INLINE_ANSWER_BYTES;
    // Each batch is encoded when the response body asks for it.
    let chunks: Box<dyn Iterator<Item = Result<Bytes, ApiError>> + Send> = match format {
        "csv" => {
            let first = match batches.first() {
                Some(_) => None,
                None => Some(RecordBatch::new_empty(schema.clone())),
            };
            let encoded = first.into_iter().chain(batches).enumerate().map(|(i, b)| {
                encode::csv(&b, i == 0)
                    .map(Bytes::from)
                    .map_err(|e| ApiError::Query(QueryError::Internal(e)))
            });
            resp.content_type("text/csv; charset=utf-8");
            Box::new(encoded)
        }
        "ndjson" => {
            resp.content_type("application/x-ndjson");
            Box::new(
                batches
                    .into_iter()
                    .map(|b| Ok(Bytes::from(encode::ndjson(&b)))),
            )
        }
        _ => {
            let columns: Vec<_> = schema
                .fields()
                .iter()
                .map(|f| json!({ "name": f.name(), "type": encode::type_name(f.data_type()) }))
                .collect();
            let tables: Vec<_> = tables
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
            let head = format!("{{\"columns\":{},\"rows\":[", json!(columns));
            let tail = format!(
                "],\"row_count\":{row_count},\"truncated\":{truncated},\"generation\":{},\"completeness\":{},\"tables\":{},\"elapsed_ms\":{},\"queued_ms\":{}}}",
                generation_json(&snapshot, now),
                completeness::json(coverage),
                json!(tables),
                json!(elapsed.as_secs_f64() * 1000.0),
                json!(queued.as_secs_f64() * 1000.0),
            );
            let mut first = true;
            let rows = batches
                .into_iter()
                .filter(|b| b.num_rows() > 0)
                .map(move |b| {
                    let chunk = encode::json_rows(&b, first);
                    first = false;
                    Ok(Bytes::from(chunk))
                });
            resp.insert_header(ContentType::json());
            Box::new(
                std::iter::once(Ok(Bytes::from(head)))
                    .chain(rows)
                    .chain(std::iter::once(Ok(Bytes::from(tail)))),
            )
        }
    };
    if inline {
        // A small answer is encoded here at once, in one piece: each chunk sent to the
        // pool costs a hand-over between threads, more than encoding a few rows.
        let mut body = Vec::new();
        for chunk in chunks {
            body.extend_from_slice(&chunk?);
        }
        drop(place);
        return Ok(resp.body(body));
    }
    // The place goes with the body: released when the last chunk is sent or the client
    // goes away.
    let chunks = chunks.chain(std::iter::from_fn(move || {
        let _ = &place;
        None
    }));
    Ok(resp.streaming(encoded_on(pool, chunks)))
}

/// Answers of at most this much Arrow memory are encoded on the HTTP worker in one
/// piece (microseconds of work); larger ones stream, a batch at a time, from the pool.
const INLINE_ANSWER_BYTES: usize = 256 << 10;

/// Streams `chunks`, each computed on `pool` (where the query ran: encoding 100,000 rows
/// is CPU work that would hold an HTTP worker, and every connection on it, meanwhile).
fn encoded_on<I>(pool: SqlPool, chunks: I) -> impl futures::Stream<Item = Result<Bytes, ApiError>>
where
    I: Iterator<Item = Result<Bytes, ApiError>> + Send + 'static,
{
    futures::stream::unfold(Some(chunks), move |chunks| {
        let pool = pool.clone();
        async move {
            let mut chunks = chunks?;
            match pool.run(async move { (chunks.next(), chunks) }).await {
                Ok((Some(chunk), chunks)) => Some((chunk, Some(chunks))),
                Ok((None, _)) => None,
                // The encoding task was lost (a panic): end the body with the error.
                Err(e) => Some((Err(ApiError::Query(e)), None)),
            }
        }
    })
}
