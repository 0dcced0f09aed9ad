//! `query_alerts` (every current instance) and `query_alert_events` (every transition, for
//! `[alerts] keep_events`) as tables of the node that evaluates alerts: computed when read,
//! so they join with everything else (firing alerts per cluster, say).

use std::path::PathBuf;
use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, BooleanArray, Int64Array, StringArray, TimestampMillisecondArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::error::{DataFusionError, Result as DfResult};

use super::status::AlertsShared;
use super::store;
use crate::sql::Computed;
use crate::table::unix_millis;

/// Events read at most (the newest), whatever `keep_events` holds.
const MAX_EVENTS: usize = 100_000;

fn ts(name: &str, nullable: bool) -> Field {
    Field::new(
        name,
        DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
        nullable,
    )
}

fn timestamps(v: impl IntoIterator<Item = Option<i64>>) -> ArrayRef {
    Arc::new(TimestampMillisecondArray::from_iter(v).with_timezone("UTC"))
}

fn strings<'a>(v: impl IntoIterator<Item = Option<&'a str>>) -> ArrayRef {
    Arc::new(StringArray::from_iter(v))
}

#[derive(Debug)]
pub struct AlertsTable {
    shared: Arc<AlertsShared>,
    schema: SchemaRef,
}

impl AlertsTable {
    pub const NAME: &'static str = "query_alerts";

    pub fn new(shared: Arc<AlertsShared>) -> Self {
        let schema = Arc::new(Schema::new(vec![
            Field::new("alert", DataType::Utf8, false),
            Field::new("key", DataType::Utf8, false),
            Field::new("key_json", DataType::Utf8, false),
            Field::new("state", DataType::Utf8, false),
            ts("since", false),
            ts("changed", false),
            Field::new("last_round", DataType::Int64, false),
            Field::new("priority", DataType::Utf8, false),
            Field::new("owner", DataType::Utf8, false),
            Field::new("values_json", DataType::Utf8, false),
            Field::new("error", DataType::Utf8, true),
        ]));
        AlertsTable { shared, schema }
    }
}

impl Computed for AlertsTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn batch(&self) -> DfResult<RecordBatch> {
        let s = self.shared.lock();
        let mut rows = Vec::new();
        for d in &s.defs.alert {
            for i in s
                .instances
                .get(&d.name)
                .iter()
                .flat_map(|i| i.by_key.values())
            {
                rows.push((d, i));
            }
        }
        let json = |m: &std::collections::BTreeMap<String, String>| {
            serde_json::to_string(m).unwrap_or_default()
        };
        let keys: Vec<String> = rows.iter().map(|(_, i)| json(&i.key)).collect();
        let values: Vec<String> = rows.iter().map(|(_, i)| json(&i.values)).collect();
        let cols: Vec<ArrayRef> = vec![
            strings(rows.iter().map(|(d, _)| Some(d.name.as_str()))),
            strings(rows.iter().map(|(_, i)| Some(i.key_text.as_str()))),
            strings(keys.iter().map(|k| Some(k.as_str()))),
            strings(rows.iter().map(|(_, i)| Some(i.state.as_str()))),
            timestamps(rows.iter().map(|(_, i)| Some(unix_millis(i.since)))),
            timestamps(rows.iter().map(|(_, i)| Some(unix_millis(i.changed)))),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|(_, i)| {
                i64::try_from(i.last_seen_round).unwrap_or(i64::MAX)
            }))),
            strings(rows.iter().map(|(d, _)| Some(d.priority.as_str()))),
            strings(rows.iter().map(|(d, _)| Some(d.owner.as_str()))),
            strings(values.iter().map(|v| Some(v.as_str()))),
            strings(rows.iter().map(|(_, i)| i.error.as_deref())),
        ];
        Ok(RecordBatch::try_new(self.schema.clone(), cols)?)
    }
}

#[derive(Debug)]
pub struct AlertEventsTable {
    state_file: PathBuf,
    schema: SchemaRef,
}

impl AlertEventsTable {
    pub const NAME: &'static str = "query_alert_events";

    pub fn new(state_file: PathBuf) -> Self {
        let schema = Arc::new(Schema::new(vec![
            ts("at", false),
            Field::new("alert", DataType::Utf8, false),
            Field::new("key", DataType::Utf8, false),
            Field::new("from_state", DataType::Utf8, true),
            Field::new("to_state", DataType::Utf8, false),
            Field::new("generation", DataType::Int64, false),
            Field::new("notified", DataType::Boolean, false),
            Field::new("detail", DataType::Utf8, true),
        ]));
        AlertEventsTable { state_file, schema }
    }
}

impl Computed for AlertEventsTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn batch(&self) -> DfResult<RecordBatch> {
        let read = || -> rusqlite::Result<Vec<store::Event>> {
            let conn = rusqlite::Connection::open_with_flags(
                &self.state_file,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
            )?;
            conn.busy_timeout(std::time::Duration::from_secs(2))?;
            store::events(&conn, MAX_EVENTS)
        };
        let ev = read().map_err(|e| DataFusionError::External(Box::new(e)))?;
        let cols: Vec<ArrayRef> = vec![
            timestamps(ev.iter().map(|e| Some(unix_millis(e.at)))),
            strings(ev.iter().map(|e| Some(e.alert.as_str()))),
            strings(ev.iter().map(|e| Some(e.key_text.as_str()))),
            strings(ev.iter().map(|e| e.from.as_deref())),
            strings(ev.iter().map(|e| Some(e.to.as_str()))),
            Arc::new(Int64Array::from_iter_values(
                ev.iter()
                    .map(|e| i64::try_from(e.generation).unwrap_or(i64::MAX)),
            )),
            Arc::new(BooleanArray::from_iter(ev.iter().map(|e| Some(e.notified)))),
            strings(ev.iter().map(|e| e.detail.as_deref())),
        ];
        Ok(RecordBatch::try_new(self.schema.clone(), cols)?)
    }
}
