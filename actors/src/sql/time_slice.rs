//! Time slices for running plans: every operator's output stream gives its thread back to
//! the query pool at least every `SLICE` of work.
//!
//! A tokio task runs until it returns `Pending`, and DataFusion's operators only do so when
//! an input is not ready. A join that emits millions of pairs, or an aggregate over it,
//! finds its input always ready: it would hold a pool thread for seconds, so light queries
//! queued behind it wait that long, and an expired query's abort (which takes effect at
//! the task's next yield) would not stop it. Wrapping each operator's output in
//! [`TimeSlicedExec`] bounds both: any loop over batches passes through a wrapper, which
//! yields (waking itself, so the task goes to the back of the pool's queue) once `SLICE`
//! has passed since it last did.
//!
//! What one step of an operator does between its input and output batches is not sliced:
//! a nested-loop join joins one input batch with the whole other side per step, and a
//! hash join one probe batch with all its matches, so a join whose filter rejects nearly
//! every pair of a huge product holds its thread for that long (the deadline still
//! answers the client on time, and the query keeps its admission place until it stops).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::Result;
use datafusion::execution::TaskContext;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::execution_plan::replace_children_if_necessary;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties, RecordBatchStream,
    SendableRecordBatchStream,
};
use futures::{Stream, StreamExt};

/// The most a query task computes before giving its thread to the next task in the pool's
/// queue. A yield costs a reschedule (about a microsecond), so 2 ms costs well under 1%.
const SLICE: Duration = Duration::from_millis(2);

/// Wraps every operator of `plan` (and the plan itself) in a [`TimeSlicedExec`]. Applied
/// to the optimised plan just before it runs, so EXPLAIN shows the plan as planned.
pub fn time_sliced(plan: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
    let wrapped = plan
        .transform_up(|node| {
            if node.children().is_empty() {
                return Ok(Transformed::no(node));
            }
            let children = node
                .children()
                .into_iter()
                .map(|c| TimeSlicedExec::wrap(c.clone()))
                .collect();
            Ok(Transformed::yes(replace_children_if_necessary(
                node, children,
            )?))
        })?
        .data;
    Ok(TimeSlicedExec::wrap(wrapped))
}

/// The one child of an operator of ours that takes exactly one (`with_new_children`).
pub(crate) fn only_child(
    mut children: Vec<Arc<dyn ExecutionPlan>>,
    operator: &str,
) -> Result<Arc<dyn ExecutionPlan>> {
    match (children.pop(), children.is_empty()) {
        (Some(input), true) => Ok(input),
        _ => datafusion::common::internal_err!("{operator} takes exactly one child"),
    }
}

/// Passes its input through unchanged, giving the thread back every [`SLICE`].
#[derive(Debug)]
pub struct TimeSlicedExec {
    input: Arc<dyn ExecutionPlan>,
}

impl TimeSlicedExec {
    fn wrap(input: Arc<dyn ExecutionPlan>) -> Arc<dyn ExecutionPlan> {
        if input.downcast_ref::<TimeSlicedExec>().is_some() {
            return input;
        }
        Arc::new(TimeSlicedExec { input })
    }
}

impl DisplayAs for TimeSlicedExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TimeSlicedExec")
    }
}

impl ExecutionPlan for TimeSlicedExec {
    fn name(&self) -> &str {
        "TimeSlicedExec"
    }

    fn schema(&self) -> SchemaRef {
        self.input.schema()
    }

    /// The input's own properties (the same allocation), so a parent sees no change.
    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
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
        let input = only_child(children, "TimeSlicedExec")?;
        Ok(Arc::new(TimeSlicedExec { input }))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let inner = self.input.execute(partition, context)?;
        Ok(Box::pin(TimeSlicedStream {
            inner,
            since: Instant::now(),
        }))
    }
}

struct TimeSlicedStream {
    inner: SendableRecordBatchStream,
    /// When this stream last gave its thread back (or found its input not ready, which
    /// gives it back as well).
    since: Instant,
}

impl Stream for TimeSlicedStream {
    type Item = Result<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let now = Instant::now();
        if now.duration_since(self.since) >= SLICE {
            self.since = now;
            // Woken at once: the task is queued behind the others, not parked.
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let polled = self.inner.poll_next_unpin(cx);
        if polled.is_pending() {
            self.since = Instant::now();
        }
        polled
    }
}

impl RecordBatchStream for TimeSlicedStream {
    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::SessionContext;

    /// A plan that never waits for input (an aggregate over a join of generated rows with
    /// 20 billion matching pairs) still yields: a task on the same single thread runs
    /// meanwhile, and aborting the query stops it at once instead of after the whole
    /// computation (minutes; without the slices the light task waits for all of it).
    #[test]
    fn a_cpu_bound_plan_shares_its_thread_and_stops_when_aborted() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let ctx = SessionContext::new_with_config(
                datafusion::prelude::SessionConfig::new().with_target_partitions(1),
            );
            let df = ctx
                .sql(
                    "SELECT COUNT(*) FROM generate_series(1, 200000) a \
                     JOIN generate_series(1, 200000) b ON a.value % 2 = b.value % 2",
                )
                .await
                .expect("planned");
            let plan =
                time_sliced(df.create_physical_plan().await.expect("plan")).expect("wrapped");
            let task = ctx.task_ctx();
            let heavy = tokio::spawn(async move {
                let mut s = datafusion::physical_plan::execute_stream(plan, task)?;
                while s.next().await.transpose()?.is_some() {}
                Ok::<_, datafusion::error::DataFusionError>(())
            });
            // The other task gets the single thread while the heavy plan runs.
            let started = Instant::now();
            tokio::time::sleep(Duration::from_millis(50)).await;
            let light = tokio::spawn(async { Instant::now() }).await.expect("light");
            assert!(
                light.duration_since(started) < Duration::from_secs(1),
                "the light task waited {:?}",
                light.duration_since(started)
            );
            assert!(
                !heavy.is_finished(),
                "20 billion pairs take longer than this"
            );
            heavy.abort();
            let stopped = Instant::now();
            let joined = heavy.await;
            assert!(joined.is_err_and(|e| e.is_cancelled()), "aborted");
            assert!(
                stopped.elapsed() < Duration::from_secs(1),
                "abort took {:?}",
                stopped.elapsed()
            );
        });
    }
}
