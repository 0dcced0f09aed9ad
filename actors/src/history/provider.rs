//! History as SQL: the schemas `history` and `report`, whose tables are the kept files of
//! the index. A scan keeps only the files whose generation times can match the query's
//! predicates, then reads them with DataFusion's Parquet reader, which prunes row groups
//! and pages with the same predicates (rows are sorted by machine, so `machine_ip = '…'`
//! reads a few pages per file).

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, BooleanArray, TimestampMillisecondArray, UInt64Array};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::SchemaProvider;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::pruning::PruningStatistics;
use datafusion::common::{Column, DFSchema, ScalarValue};
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::datasource::TableType;
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_optimizer::pruning::PruningPredicateBuilder;
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::ExecutionPlan;

use super::files::{FileEntry, GENERATION_TIME};
use super::index::HistoryIndex;

/// `history` (kept published tables) or `report` (reports' answers).
#[derive(Debug)]
pub struct HistorySchema {
    kind: &'static str,
    index: Arc<HistoryIndex>,
}

impl HistorySchema {
    pub fn new(kind: &'static str, index: Arc<HistoryIndex>) -> Self {
        HistorySchema { kind, index }
    }

    fn qualified(&self, name: &str) -> String {
        format!("{}.{name}", self.kind)
    }
}

#[async_trait]
impl SchemaProvider for HistorySchema {
    fn table_names(&self) -> Vec<String> {
        let prefix = format!("{}.", self.kind);
        self.index
            .names()
            .into_iter()
            .filter_map(|n| n.strip_prefix(&prefix).map(String::from))
            .collect()
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        let qualified = self.qualified(name);
        Ok(self.index.schema(&qualified).map(|schema| {
            Arc::new(HistoryTable {
                name: qualified,
                schema,
                index: self.index.clone(),
            }) as Arc<dyn TableProvider>
        }))
    }

    fn table_exist(&self, name: &str) -> bool {
        self.index.schema(&self.qualified(name)).is_some()
    }
}

/// One kept table.
#[derive(Debug)]
pub struct HistoryTable {
    name: String,
    schema: SchemaRef,
    index: Arc<HistoryIndex>,
}

#[async_trait]
impl TableProvider for HistoryTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DfResult<Vec<TableProviderFilterPushDown>> {
        // Used to choose files, row groups and pages; rows are still filtered after.
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let files = self
            .index
            .get(&self.name)
            .map(|t| t.files)
            .unwrap_or_default();
        let files = self.matching(state, filters, files);
        if files.is_empty() {
            let schema = match projection {
                Some(p) => Arc::new(self.schema.project(p)?),
                None => self.schema.clone(),
            };
            return Ok(Arc::new(EmptyExec::new(schema)));
        }
        let urls = files
            .iter()
            .map(|f| ListingTableUrl::parse(f.path.to_string_lossy()))
            .collect::<DfResult<Vec<_>>>()?;
        let options = ListingOptions::new(Arc::new(
            ParquetFormat::default().with_options(state.table_options().parquet.clone()),
        ))
        .with_file_extension(".parquet");
        let config = ListingTableConfig::new_with_multi_paths(urls)
            .with_listing_options(options)
            .with_schema(self.schema.clone());
        ListingTable::try_new(config)?
            .scan(state, projection, filters, limit)
            .await
    }
}

impl HistoryTable {
    /// The files whose generation times can satisfy `filters` (all of them if the filters
    /// say nothing usable about time).
    fn matching(
        &self,
        state: &dyn Session,
        filters: &[Expr],
        files: Vec<FileEntry>,
    ) -> Vec<FileEntry> {
        let Some(predicate) = conjunction(filters.to_vec()) else {
            return files;
        };
        let keep = || -> DfResult<Vec<bool>> {
            let df_schema = DFSchema::try_from(self.schema.as_ref().clone())?;
            let physical = state.create_physical_expr(predicate, &df_schema)?;
            PruningPredicateBuilder::new()
                .with_file_schema(self.schema.clone())
                .try_build(physical)?
                .prune(&FileTimes(&files))
        };
        match keep() {
            Ok(keep) if keep.len() == files.len() => files
                .into_iter()
                .zip(keep)
                .filter_map(|(f, k)| k.then_some(f))
                .collect(),
            Ok(_) => files,
            Err(e) => {
                tracing::debug!(table = %self.name, error = %e, "file pruning not possible; every file is read");
                files
            }
        }
    }
}

/// Each file's generation-time range as pruning statistics.
struct FileTimes<'a>(&'a [FileEntry]);

impl FileTimes<'_> {
    fn times(&self, column: &Column, pick: impl Fn(&FileEntry) -> i64) -> Option<ArrayRef> {
        (column.name == GENERATION_TIME).then(|| {
            Arc::new(
                TimestampMillisecondArray::from_iter_values(self.0.iter().map(pick))
                    .with_timezone("UTC"),
            ) as ArrayRef
        })
    }
}

impl PruningStatistics for FileTimes<'_> {
    fn min_values(&self, column: &Column) -> Option<ArrayRef> {
        self.times(column, |f| f.from_ms)
    }

    fn max_values(&self, column: &Column) -> Option<ArrayRef> {
        self.times(column, |f| f.to_ms)
    }

    fn num_containers(&self) -> usize {
        self.0.len()
    }

    fn null_counts(&self, column: &Column) -> Option<ArrayRef> {
        (column.name == GENERATION_TIME)
            .then(|| Arc::new(UInt64Array::from(vec![0u64; self.0.len()])) as ArrayRef)
    }

    fn row_counts(&self) -> Option<ArrayRef> {
        Some(Arc::new(UInt64Array::from_iter_values(
            self.0.iter().map(|f| f.rows),
        )))
    }

    fn contained(
        &self,
        _column: &Column,
        _values: &std::collections::HashSet<ScalarValue>,
    ) -> Option<BooleanArray> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::files::{open_dir, stamp, write_file};
    use datafusion::arrow::array::{Array, Float64Array, Int64Array, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::arrow::record_batch::RecordBatch;
    use datafusion::arrow::util::pretty::pretty_format_batches;
    use datafusion::prelude::SessionContext;

    /// Three generations of two machines, one file each, in a context with `history`.
    async fn context(dir: &std::path::Path) -> SessionContext {
        let schema = Arc::new(Schema::new(vec![
            Field::new("machine_ip", DataType::Utf8, false),
            Field::new("load1", DataType::Float64, true),
        ]));
        for (i, at) in [1_000i64, 2_000, 3_000].into_iter().enumerate() {
            let b = RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(StringArray::from(vec!["10.0.0.1", "10.0.0.2"])),
                    Arc::new(Float64Array::from(vec![i as f64, 10.0 + i as f64])),
                ],
            )
            .expect("batch");
            let stamped = stamp(&schema, &[b], at, i as u64).expect("stamp");
            write_file(dir, "history.sys", &stamped, at, at).expect("write");
        }
        let index = Arc::new(HistoryIndex::new(open_dir(dir).expect("open").tables));
        let ctx = SessionContext::new();
        ctx.catalog("datafusion")
            .expect("catalog")
            .register_schema("history", Arc::new(HistorySchema::new("history", index)))
            .expect("schema");
        ctx
    }

    #[tokio::test]
    async fn time_predicates_choose_files_and_answers_stay_right() {
        let dir = tempfile::tempdir().expect("tmp");
        let ctx = context(dir.path()).await;
        let sql = "SELECT count(*), sum(load1) FROM history.sys \
                   WHERE generation_time >= to_timestamp_millis(2500) AND machine_ip = '10.0.0.2'";
        let out = ctx
            .sql(sql)
            .await
            .expect("plan")
            .collect()
            .await
            .expect("run");
        let n = out[0]
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .expect("count");
        let s = out[0]
            .column(1)
            .as_any()
            .downcast_ref::<Float64Array>()
            .expect("sum");
        assert_eq!((n.value(0), s.value(0)), (1, 12.0));
        let plan = ctx
            .sql(&format!("EXPLAIN {sql}"))
            .await
            .expect("plan")
            .collect()
            .await
            .expect("explain");
        let text = pretty_format_batches(&plan).expect("text").to_string();
        assert_eq!(
            text.matches(".parquet").count(),
            1,
            "one file of three read:\n{text}"
        );
        // `now()` folds to a literal before the scan sees it: files are chosen by it too.
        let all = ctx
            .sql(
                "SELECT count(*) FROM history.sys WHERE generation_time > now() - INTERVAL '1 day'",
            )
            .await
            .expect("plan")
            .collect()
            .await
            .expect("run");
        let n = all[0]
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .expect("count");
        assert_eq!(n.value(0), 0);
        assert_eq!(n.null_count(), 0);
    }
}
