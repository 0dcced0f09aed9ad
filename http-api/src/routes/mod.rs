//! The endpoints: `POST /sql`, `GET /tables`, `GET /health`, `GET /metrics`, `GET /` (console
//! and its assets), `GET /alerts`, `POST /alerts/test`, `GET /reports`,
//! `POST /admin/quarantine/lift`; for tests only, `POST /debug/panic` (with
//! `QUERYD_FAULT_INJECTION=1`).

pub mod admin;
pub mod alerts;
pub mod completeness;
pub mod console;
pub mod debug;
pub mod health;
pub mod metrics;
pub mod reports;
pub mod sql;
pub mod tables;

use std::time::SystemTime;

use query_actors::sql::Snapshot;
use serde_json::{json, Value};

/// The generation block every answer carries.
pub fn generation_json(snap: &Snapshot, now: SystemTime) -> Value {
    let g = &snap.generation;
    json!({
        "id": g.id,
        "round": g.tla_round,
        "sealed_at": rfc3339(g.sealed_at),
        "age_ms": g.age(now).as_millis() as u64,
    })
}

pub fn age_ms(t: Option<SystemTime>, now: SystemTime) -> Option<u64> {
    t.map(|t| now.duration_since(t).unwrap_or_default().as_millis() as u64)
}

/// RFC 3339 in UTC with milliseconds, from Arrow's timestamp formatting.
pub fn rfc3339(t: SystemTime) -> String {
    use datafusion::arrow::array::TimestampMillisecondArray;
    use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
    let ms = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let arr = TimestampMillisecondArray::from(vec![ms]).with_timezone("UTC");
    ArrayFormatter::try_new(&arr, &FormatOptions::default())
        .map(|f| f.value(0).to_string())
        .unwrap_or_default()
}
