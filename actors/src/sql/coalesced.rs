//! A published table registered without its coalesced copy: at a node that rarely
//! answers queries (TLA, proxy, edge, TLA child) the copy is made on the first scan, on
//! the query's thread, and cached for the snapshot's life. Coalescing eagerly is a second
//! copy of every table (the generation's parts stay: the links and the next merge need
//! them), so a TLA held its generation twice (three times across a switch) for queries
//! that never came. A SQL node coalesces when it builds the snapshot
//! (`SnapshotKeeper::with_lazy_tables`), so no answer pays for it.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableProvider};
use datafusion::datasource::TableType;
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;
use tokio::sync::OnceCell;

use super::spread::SpreadTable;
use crate::generation::Generation;

#[derive(Debug)]
pub(crate) struct CoalescedTable {
    generation: Arc<Generation>,
    name: String,
    schema: SchemaRef,
    partitions: usize,
    cache: OnceCell<Arc<SpreadTable>>,
}

impl CoalescedTable {
    /// `name` must be a table of `generation`.
    pub(crate) fn new(
        generation: Arc<Generation>,
        name: String,
        partitions: usize,
    ) -> Option<Self> {
        let schema = generation.tables.get(&name)?.schema.clone();
        Some(CoalescedTable {
            generation,
            name,
            schema,
            partitions,
            cache: OnceCell::new(),
        })
    }

    /// Coalesces once; concurrent scans wait for that one copy.
    async fn table(&self) -> DfResult<Arc<SpreadTable>> {
        self.cache
            .get_or_try_init(|| async {
                let table = self.generation.tables.get(&self.name);
                let batches = table.into_iter().flat_map(|t| t.batches());
                let rows = table.map_or(0, |t| t.rows());
                super::spread::partitioned(self.schema.clone(), batches, self.partitions, rows)
                    .map(Arc::new)
            })
            .await
            .cloned()
    }

    /// The coalesced copy, if a scan made it already.
    pub(super) fn coalesced(&self) -> Option<Arc<SpreadTable>> {
        self.cache.get().cloned()
    }
}

#[async_trait]
impl TableProvider for CoalescedTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
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
        self.table()
            .await?
            .scan(state, projection, filters, limit)
            .await
    }
}
