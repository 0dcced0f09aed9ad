//! Tables about the node computed when read (`query_quarantine`, `query_alerts`,
//! `query_alert_events`): a schema and the rows built at each scan, served as an in-memory
//! table, so every scan sees the state of that moment.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::{MemTable, Session, TableProvider};
use datafusion::datasource::TableType;
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;

/// What a computed table is: its schema and, at each scan, its rows.
pub trait Computed: std::fmt::Debug + Send + Sync + 'static {
    fn schema(&self) -> SchemaRef;
    fn batch(&self) -> DfResult<RecordBatch>;
}

/// A [`Computed`] as a table of the snapshot.
#[derive(Debug)]
pub struct ComputedTable<T>(pub T);

impl<T: Computed> ComputedTable<T> {
    pub fn provider(t: T) -> Arc<dyn TableProvider> {
        Arc::new(ComputedTable(t))
    }
}

#[async_trait]
impl<T: Computed> TableProvider for ComputedTable<T> {
    fn schema(&self) -> SchemaRef {
        self.0.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Temporary
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        MemTable::try_new(self.0.schema(), vec![vec![self.0.batch()?]])?
            .scan(state, projection, filters, limit)
            .await
    }
}
