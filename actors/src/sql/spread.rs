//! A table held in batches of about `COALESCE_ROWS` rows dealt over the cores
//! ([`partitioned`]), scanned on every partition by a wide session and as one partition by
//! a one-partition session (`Snapshot`'s narrow state): a plan over a two-partition scan
//! with one target partition still merges, and hash-repartitions into one partition below
//! a window or an aggregate (about 10 ms for 840,000 rows), which a busy node must not
//! spend.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::{MemTable, Session, TableProvider};
use datafusion::datasource::TableType;
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;

use super::engine::SINGLE_PARTITION_ROWS;
use super::whole_table_min_max::{bounds_of, ColumnBounds};

/// The same batches two ways (the batches are shared, not copied), and the bounds of their
/// columns (`whole_table_min_max`).
#[derive(Debug)]
pub(crate) struct SpreadTable {
    wide: MemTable,
    /// Every batch in one partition; absent when `wide` is one partition already.
    narrow: Option<MemTable>,
    /// Per column of the schema.
    bounds: Vec<Option<ColumnBounds>>,
}

impl SpreadTable {
    /// `bounds`: per column of `schema`.
    fn new(
        schema: SchemaRef,
        parts: Vec<Vec<RecordBatch>>,
        bounds: Vec<Option<ColumnBounds>>,
    ) -> DfResult<Self> {
        let narrow = if parts.len() > 1 {
            let one: Vec<RecordBatch> = parts.iter().flatten().cloned().collect();
            Some(MemTable::try_new(schema.clone(), vec![one])?)
        } else {
            None
        };
        Ok(SpreadTable {
            wide: MemTable::try_new(schema, parts)?,
            narrow,
            bounds,
        })
    }

    /// The smallest and largest value of column `column` over every row, if known.
    pub(super) fn bounds(&self, column: usize) -> Option<&ColumnBounds> {
        self.bounds.get(column)?.as_ref()
    }

    /// The same partitions, every batch through `f` (`machine_keys`' keyed copy, which
    /// appends columns and keeps the others, and so their bounds); None if `f` gives none
    /// for one.
    pub(super) fn map_batches(
        &self,
        schema: SchemaRef,
        mut f: impl FnMut(&RecordBatch) -> Option<RecordBatch>,
    ) -> Option<SpreadTable> {
        let parts = self
            .wide_partitions()?
            .iter()
            .map(|p| p.iter().map(&mut f).collect::<Option<Vec<_>>>())
            .collect::<Option<Vec<_>>>()?;
        debug_assert!(
            self.wide
                .schema()
                .fields()
                .iter()
                .zip(schema.fields())
                .all(|(a, b)| a.name() == b.name()),
            "a mapped table appends columns and keeps the others"
        );
        let mut bounds = self.bounds.clone();
        bounds.resize(schema.fields().len(), None);
        SpreadTable::new(schema, parts, bounds).ok()
    }

    /// The partitions a wide scan reads (shared batches); None if one is being written,
    /// which nothing does.
    fn wide_partitions(&self) -> Option<Vec<Vec<RecordBatch>>> {
        self.wide
            .batches
            .iter()
            .map(|p| p.try_read().ok().map(|b| b.clone()))
            .collect()
    }
}

#[async_trait]
impl TableProvider for SpreadTable {
    fn schema(&self) -> SchemaRef {
        self.wide.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let table = match &self.narrow {
            Some(narrow) if state.config().target_partitions() == 1 => narrow,
            _ => &self.wide,
        };
        table.scan(state, projection, filters, limit).await
    }
}

/// Spreads a table's batches over `partitions` so scans run on every core. A table made of
/// many small parts (one per machine at a proxy or TLA) is coalesced into batches of about
/// `COALESCE_ROWS`: executing thousands of tiny batches costs more than copying them once.
/// A batch larger than that (a table published or loaded whole: `queryd demo`, an edge, a
/// Parquet static table) is cut into zero-copy slices of `COALESCE_ROWS`, so it too is
/// spread rather than scanned on one partition and dealt round-robin by the plan.
/// A table of at most `SINGLE_PARTITION_ROWS` rows (`rows`) is one partition.
pub(super) fn partitioned<'a>(
    schema: SchemaRef,
    batches: impl Iterator<Item = &'a RecordBatch>,
    partitions: usize,
    rows: usize,
) -> DfResult<SpreadTable> {
    let partitions = if rows <= SINGLE_PARTITION_ROWS {
        1
    } else {
        partitions
    };
    let mut groups: Vec<Vec<RecordBatch>> = Vec::new();
    let mut open_rows = COALESCE_ROWS;
    for b in batches.filter(|b| b.num_rows() > 0) {
        if b.num_rows() >= COALESCE_ROWS {
            groups.extend(slices(b, COALESCE_ROWS).into_iter().map(|s| vec![s]));
            open_rows = COALESCE_ROWS;
            continue;
        }
        if open_rows >= COALESCE_ROWS {
            groups.push(Vec::new());
            open_rows = 0;
        }
        open_rows += b.num_rows();
        if let Some(g) = groups.last_mut() {
            g.push(b.clone());
        }
    }
    let n = partitions.clamp(1, groups.len().max(1));
    let mut parts: Vec<Vec<RecordBatch>> = vec![Vec::new(); n];
    for (i, group) in groups.into_iter().enumerate() {
        let batch = match group.as_slice() {
            [one] => one.clone(),
            many => concat_batches(&schema, many)?,
        };
        parts[i % n].push(batch);
    }
    let bounds = bounds_of(&schema, parts.iter().flatten());
    SpreadTable::new(schema, parts, bounds)
}

/// Batches of about `COALESCE_ROWS` rows a table is cut into.
const COALESCE_ROWS: usize = 8192;

/// `batch` as zero-copy slices of at most `rows` rows.
fn slices(batch: &RecordBatch, rows: usize) -> Vec<RecordBatch> {
    (0..batch.num_rows())
        .step_by(rows.max(1))
        .map(|at| batch.slice(at, rows.min(batch.num_rows() - at)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::engine::tests::batch;
    use datafusion::prelude::{SessionConfig, SessionContext};

    #[test]
    fn small_tables_are_one_partition_and_large_ones_spread() {
        // One batch, as `queryd demo` or a Parquet static table gives it.
        let table = |rows: i64| {
            let b = batch(rows);
            partitioned(b.schema(), std::iter::once(&b), 2, b.num_rows()).expect("table")
        };
        assert_eq!(
            table(20_000).wide_partitions().expect("partitions").len(),
            1
        );
        assert_eq!(table(0).wide_partitions().expect("partitions").len(), 1);
        let big = table(SINGLE_PARTITION_ROWS as i64 + 1);
        assert_eq!(big.wide_partitions().expect("partitions").len(), 2);
        // Cut into slices of `COALESCE_ROWS`, every row kept, dealt to both partitions.
        let held: Vec<RecordBatch> = big
            .wide_partitions()
            .expect("partitions")
            .into_iter()
            .flatten()
            .collect();
        assert_eq!(
            held.iter().map(|b| b.num_rows()).sum::<usize>(),
            SINGLE_PARTITION_ROWS + 1
        );
        assert!(held.iter().all(|b| b.num_rows() <= COALESCE_ROWS));
        assert!(big
            .wide_partitions()
            .expect("partitions")
            .iter()
            .all(|p| !p.is_empty()));
    }
    #[tokio::test]
    async fn a_one_partition_session_scans_one_partition_with_every_row() {
        let b = batch(SINGLE_PARTITION_ROWS as i64 + 1);
        let table = partitioned(b.schema(), std::iter::once(&b), 2, b.num_rows()).expect("table");
        for (partitions, want) in [(2, 2), (1, 1)] {
            let ctx = SessionContext::new_with_config(
                SessionConfig::new().with_target_partitions(partitions),
            );
            let state = ctx.state();
            let scan = table.scan(&state, None, &[], None).await.expect("scan");
            assert_eq!(
                scan.properties().output_partitioning().partition_count(),
                want
            );
            let rows: usize = datafusion::physical_plan::collect(scan, ctx.task_ctx())
                .await
                .expect("rows")
                .iter()
                .map(|b| b.num_rows())
                .sum();
            assert_eq!(rows, SINGLE_PARTITION_ROWS + 1);
        }
    }
}
