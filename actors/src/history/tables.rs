//! `query_history`: one row per kept table and per report, with its files, time range,
//! whether history is paused and why, and a report's last error, computed when read. Alerts
//! (`history_paused`, `report_failing` in ops/alerts.toml) are written over it. A node
//! without `[history]` has the table too, empty, so the same alerts run everywhere.

use std::collections::BTreeSet;
use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, BooleanArray, Int64Array, StringArray, TimestampMillisecondArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::error::Result as DfResult;

use super::keeper::ms_since_epoch;
use super::status::HistoryShared;
use crate::sql::Computed;

#[derive(Debug)]
pub struct HistoryTable {
    shared: Option<Arc<HistoryShared>>,
    schema: SchemaRef,
}

impl HistoryTable {
    pub const NAME: &'static str = "query_history";

    pub fn new(shared: Option<Arc<HistoryShared>>) -> Self {
        let ts = |name: &str| {
            Field::new(
                name,
                DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
                true,
            )
        };
        let schema = Arc::new(Schema::new(vec![
            Field::new("name", DataType::Utf8, false),
            Field::new("kind", DataType::Utf8, false),
            Field::new("configured", DataType::Boolean, false),
            Field::new("files", DataType::Int64, false),
            Field::new("rows", DataType::Int64, false),
            Field::new("bytes", DataType::Int64, false),
            ts("oldest"),
            ts("newest"),
            Field::new("paused", DataType::Boolean, false),
            Field::new("reason", DataType::Utf8, true),
            ts("last_run"),
            Field::new("error", DataType::Utf8, true),
        ]));
        HistoryTable { shared, schema }
    }
}

fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Computed for HistoryTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn batch(&self) -> DfResult<RecordBatch> {
        let Some(shared) = &self.shared else {
            return Ok(RecordBatch::new_empty(self.schema.clone()));
        };
        let files = shared.index.all();
        let s = shared.lock();
        let mut names: BTreeSet<String> = files.keys().cloned().collect();
        names.extend(s.kept.table.iter().map(|t| format!("history.{}", t.name)));
        names.extend(
            s.reports
                .report
                .iter()
                .map(|r| format!("report.{}", r.name)),
        );
        let configured = |n: &str| match n.split_once('.') {
            Some(("history", t)) => s.kept.table.iter().any(|k| k.name == t),
            Some(("report", r)) => s.reports.report.iter().any(|k| k.name == r),
            _ => false,
        };
        let n = names.len();
        let (mut name, mut kind, mut conf) = (Vec::new(), Vec::new(), Vec::new());
        let (mut nfiles, mut rows, mut bytes) = (Vec::new(), Vec::new(), Vec::new());
        let (mut oldest, mut newest, mut last_run, mut error) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for t in &names {
            let f = files.get(t);
            let report = t
                .strip_prefix("report.")
                .and_then(|r| s.report_status.get(r));
            name.push(t.clone());
            kind.push(t.split_once('.').map(|(k, _)| k).unwrap_or("").to_string());
            conf.push(configured(t));
            nfiles.push(f.map(|f| f.files.len() as i64).unwrap_or(0));
            rows.push(int(f.map(|f| f.rows()).unwrap_or(0)));
            bytes.push(int(f.map(|f| f.bytes()).unwrap_or(0)));
            oldest.push(f.and_then(|f| f.range()).map(|r| r.0));
            newest.push(f.and_then(|f| f.range()).map(|r| r.1));
            last_run.push(report.and_then(|r| r.last_run).map(ms_since_epoch));
            error.push(
                report
                    .and_then(|r| r.last_error.clone())
                    .or_else(|| s.table_errors.get(t).cloned()),
            );
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(name)),
            Arc::new(StringArray::from(kind)),
            Arc::new(BooleanArray::from(conf)),
            Arc::new(Int64Array::from(nfiles)),
            Arc::new(Int64Array::from(rows)),
            Arc::new(Int64Array::from(bytes)),
            Arc::new(TimestampMillisecondArray::from(oldest).with_timezone("UTC")),
            Arc::new(TimestampMillisecondArray::from(newest).with_timezone("UTC")),
            Arc::new(BooleanArray::from(vec![s.paused.is_some(); n])),
            Arc::new(StringArray::from(vec![s.paused.clone(); n])),
            Arc::new(TimestampMillisecondArray::from(last_run).with_timezone("UTC")),
            Arc::new(StringArray::from(error)),
        ];
        Ok(RecordBatch::try_new(self.schema.clone(), columns)?)
    }
}
