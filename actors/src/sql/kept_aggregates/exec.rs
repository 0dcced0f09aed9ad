//! The two physical sides of a kept aggregate: a scan of its kept batches ([`read`]), and
//! [`KeepExec`], which passes the aggregate's batches on and keeps them once every
//! partition has ended.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::Result;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::execution::{RecordBatchStream, TaskContext};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, PlanProperties,
    SendableRecordBatchStream,
};
use futures::{Stream, StreamExt};

use super::{Keeper, Kept};

/// A scan of a kept result: one partition, no order claimed.
pub(super) fn read(kept: &Kept) -> Result<Arc<dyn ExecutionPlan>> {
    Ok(MemorySourceConfig::try_new_exec(
        std::slice::from_ref(&kept.batches),
        kept.schema.clone(),
        None,
    )?)
}

/// Runs an aggregate and keeps its result (`Keeper`) if every partition ends.
///
/// It claims the input's partitioning but no order, and keeps its input's order for no
/// one: so no rule pushes a sort, a limit or a filter through it into the aggregate,
/// which would then give fewer rows than the aggregate's whole result.
#[derive(Debug)]
pub(super) struct KeepExec {
    input: Arc<dyn ExecutionPlan>,
    properties: Arc<PlanProperties>,
    /// Each partition's batches once it has ended.
    run: Arc<Run>,
}

impl KeepExec {
    pub(super) fn new(input: Arc<dyn ExecutionPlan>, keeper: Arc<Keeper>) -> Self {
        let partitions = input.output_partitioning().partition_count();
        let properties = PlanProperties::new(
            EquivalenceProperties::new(input.schema()),
            input.output_partitioning().clone(),
            input.pipeline_behavior(),
            input.boundedness(),
        );
        KeepExec {
            run: Arc::new(Run {
                keeper,
                schema: input.schema(),
                parts: Mutex::new(vec![None; partitions]),
                bytes: AtomicUsize::new(0),
            }),
            input,
            properties: Arc::new(properties),
        }
    }
}

impl DisplayAs for KeepExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeepAggregateExec")
    }
}

impl ExecutionPlan for KeepExec {
    fn name(&self) -> &str {
        "KeepAggregateExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![false]
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    #[allow(deprecated)]
    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let input = crate::sql::time_slice::only_child(children, "KeepAggregateExec")?;
        Ok(Arc::new(KeepExec::new(input, self.run.keeper.clone())))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let input = self.input.execute(partition, context)?;
        Ok(Box::pin(Keeping {
            input,
            held: Some(Vec::new()),
            partition,
            run: self.run.clone(),
        }))
    }
}

/// One execution's partitions, gathered as they end.
#[derive(Debug)]
struct Run {
    keeper: Arc<Keeper>,
    schema: SchemaRef,
    parts: Mutex<Vec<Option<Vec<RecordBatch>>>>,
    /// What every partition holds so far: past what would be kept, they hold nothing more.
    bytes: AtomicUsize,
}

impl Run {
    /// `partition` ended with `batches`; the last to end hands the whole result on.
    fn ended(&self, partition: usize, batches: Vec<RecordBatch>) {
        let mut parts = self.parts.lock().unwrap_or_else(|p| p.into_inner());
        match parts.get_mut(partition) {
            Some(slot @ None) => *slot = Some(batches),
            // Run twice, or a partition the plan does not have: keep nothing.
            _ => return,
        }
        if parts.iter().all(Option::is_some) {
            let all = parts.iter_mut().flat_map(|p| p.take().unwrap_or_default());
            let batches: Vec<RecordBatch> = all.filter(|b| b.num_rows() > 0).collect();
            drop(parts);
            self.keeper.keep(self.schema.clone(), batches);
        }
    }
}

/// One partition's stream: the input's batches passed on, and held (shared, not copied)
/// until its end, unless they grow past what would be kept.
struct Keeping {
    input: SendableRecordBatchStream,
    /// None once this partition can keep nothing (too large, or an error).
    held: Option<Vec<RecordBatch>>,
    partition: usize,
    run: Arc<Run>,
}

impl Stream for Keeping {
    type Item = Result<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let next = ready!(self.input.poll_next_unpin(cx));
        let this = &mut *self;
        match &next {
            Some(Ok(batch)) => {
                let size = batch.get_array_memory_size();
                let all = this.run.bytes.fetch_add(size, Ordering::Relaxed) + size;
                if all > this.run.keeper.largest() {
                    this.held = None;
                } else if let Some(held) = &mut this.held {
                    held.push(batch.clone());
                }
            }
            Some(Err(_)) => this.held = None,
            None => {
                if let Some(held) = this.held.take() {
                    this.run.ended(this.partition, held);
                }
            }
        }
        Poll::Ready(next)
    }
}

impl RecordBatchStream for Keeping {
    fn schema(&self) -> SchemaRef {
        self.input.schema()
    }
}
