//! Top-k per window partition: `ROW_NUMBER() OVER (PARTITION BY p ORDER BY o) <= k` keeps
//! the k first rows of each partition instead of sorting the whole input.
//!
//! Why: "the three largest processes of each cluster" sorted all 840,000 process rows at
//! 70,000 machines (about 175 ms, half of the fleet benchmark's mix; BENCHMARKS.md,
//! `fleet`). DataFusion 55 finds the pattern (rule `WindowTopN`, behind
//! `datafusion.optimizer.enable_window_topn`, off by default) and plans its
//! `PartitionedTopKExec`, which is twice as fast as the sort with 1,400 partitions
//! (clusters) but more than twice as slow with 70,000 (machines): it copies a sub-batch
//! per partition per input batch and allocates a key per row. We switch the rule on and
//! put our own operator where it put DataFusion's ([`exec::TopKPerPartitionExec`]: one
//! hash lookup per row, no copy until the end), measured faster than the sort at both.
//! On more than one partition, [`PartialTopKBelowRepartition`] also puts a partial one
//! below the repartition that feeds it, so only kept rows are repartitioned.
//!
//! The rule is left undone (the plan sorts, as before) for `RANK`, whose ties our operator
//! does not keep, and for `rn < 1`: a heap of zero rows, which DataFusion 55.2 builds and
//! panics on when the query runs (fixed upstream after 55, apache/datafusion#24405).

mod exec;

use std::sync::Arc;

use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::config::ConfigOptions;
use datafusion::error::Result;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::sorts::partitioned_topk::{PartitionedTopKExec, WindowFnKind};
use datafusion::physical_plan::{ExecutionPlan, Partitioning};

use super::physical_rules::replace_each;

pub use exec::{TopKMode, TopKPerPartitionExec};

/// DataFusion's `WindowTopN`, with our operator for `ROW_NUMBER` and the rewrite undone
/// elsewhere.
#[derive(Debug)]
pub struct OurWindowTopN {
    inner: Arc<dyn PhysicalOptimizerRule + Send + Sync>,
}

impl OurWindowTopN {
    pub fn new(inner: Arc<dyn PhysicalOptimizerRule + Send + Sync>) -> Self {
        Self { inner }
    }
}

impl PhysicalOptimizerRule for OurWindowTopN {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let rewritten = self.inner.optimize(plan.clone(), config)?;
        if Arc::ptr_eq(&rewritten, &plan) {
            return Ok(plan);
        }
        let mut undo = false;
        rewritten.apply(|node| {
            if let Some(topk) = node.downcast_ref::<PartitionedTopKExec>() {
                undo |= topk.fetch() == 0 || topk.fn_kind() != WindowFnKind::RowNumber;
            }
            Ok(if undo {
                TreeNodeRecursion::Stop
            } else {
                TreeNodeRecursion::Continue
            })
        })?;
        if undo {
            return Ok(plan);
        }
        rewritten
            .transform_up(|node| {
                let Some(topk) = node.downcast_ref::<PartitionedTopKExec>() else {
                    return Ok(Transformed::no(node));
                };
                let ours = TopKPerPartitionExec::try_new(
                    topk.input().clone(),
                    topk.expr().clone(),
                    topk.partition_prefix_len(),
                    topk.fetch(),
                    TopKMode::Final,
                )?;
                Ok(Transformed::yes(Arc::new(ours) as Arc<dyn ExecutionPlan>))
            })
            .map(|t| t.data)
    }

    fn name(&self) -> &str {
        // The same name, so that EXPLAIN VERBOSE and rule lists read as DataFusion's.
        self.inner.name()
    }

    fn schema_check(&self) -> bool {
        self.inner.schema_check()
    }
}

/// Puts a partial top-k below the hash repartition that feeds each final one, so that
/// only the rows it keeps cross the repartition rather than all of them.
///
/// Why: at 70,000 machines on two partitions, `report_top_rss_per_cluster`'s join gives
/// 840,000 rows, which the repartition by `cluster` hashed and copied again (its
/// `repartition_time` as much as the top-k's own `elapsed_compute`) to keep 4,200.
/// Runs after `EnsureRequirements`, which places the repartition.
#[derive(Debug, Default)]
pub struct PartialTopKBelowRepartition;

impl PhysicalOptimizerRule for PartialTopKBelowRepartition {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        replace_each(plan, |topk: &TopKPerPartitionExec| {
            let Some(repartition) = topk.input().downcast_ref::<RepartitionExec>() else {
                return Ok(None);
            };
            if topk.mode() != TopKMode::Final
                || !matches!(repartition.partitioning(), Partitioning::Hash(..))
            {
                return Ok(None);
            }
            let partial = topk.over(repartition.input().clone(), TopKMode::Partial)?;
            // Not order-preserving: the partial's output is in no order.
            let repartition =
                RepartitionExec::try_new(Arc::new(partial), repartition.partitioning().clone())?;
            let node = topk.over(Arc::new(repartition), TopKMode::Final)?;
            Ok(Some(Arc::new(node) as Arc<dyn ExecutionPlan>))
        })
    }

    fn name(&self) -> &str {
        "PartialTopKBelowRepartition"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Int64Array, RecordBatch, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::arrow::util::pretty::pretty_format_batches;
    use datafusion::catalog::MemTable;
    use datafusion::execution::context::{SessionConfig, SessionContext};
    use datafusion::physical_plan::displayable;

    /// A table of 40 batches of 500 rows: `g` has `groups` values (some NULL), `v` repeats
    /// and is sometimes NULL, `id` is unique.
    fn context(groups: u64) -> SessionContext {
        context_of(groups, 40)
    }

    /// [`context`] with `batches` batches.
    fn context_of(groups: u64, batches: i64) -> SessionContext {
        let schema = Arc::new(Schema::new(vec![
            Field::new("g", DataType::Utf8, true),
            Field::new("v", DataType::Int64, true),
            Field::new("id", DataType::Int64, false),
        ]));
        let mut seed = 7u64;
        let mut next = move || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            seed >> 33
        };
        let batches = (0..batches)
            .map(|b| {
                let (mut g, mut v, mut id) = (vec![], vec![], vec![]);
                for i in 0..500 {
                    let r = next();
                    g.push((r % 50 != 0).then(|| format!("g{}", r % groups)));
                    v.push((r % 37 != 0).then_some((next() % 1000) as i64));
                    id.push(b * 500 + i);
                }
                RecordBatch::try_new(
                    schema.clone(),
                    vec![
                        Arc::new(StringArray::from(g)),
                        Arc::new(Int64Array::from(v)),
                        Arc::new(Int64Array::from(id)),
                    ],
                )
                .expect("batch")
            })
            .collect();
        let mut config = SessionConfig::new().with_target_partitions(2);
        config.options_mut().optimizer.enable_window_topn = true;
        let ctx = crate::sql::engine::new_context(config);
        let table = MemTable::try_new(schema, vec![batches]).expect("table");
        ctx.register_table("t", Arc::new(table)).expect("register");
        ctx
    }

    async fn plan_and_rows(ctx: &SessionContext, sql: &str) -> (String, Vec<String>) {
        let df = ctx.sql(sql).await.expect("plan");
        let physical = df.clone().create_physical_plan().await.expect("physical");
        let shown = displayable(physical.as_ref()).indent(false).to_string();
        let batches = df.collect().await.expect("run");
        let text = pretty_format_batches(&batches).expect("format").to_string();
        let mut rows: Vec<String> = text.lines().map(str::to_string).collect();
        rows.sort();
        (shown, rows)
    }

    #[tokio::test]
    async fn row_number_at_most_k_gives_what_the_sort_gives_at_any_cardinality() {
        for groups in [3, 300, 5000] {
            let ctx = context(groups);
            // A first order key of fixed width, the same NULLs first, a unique one, and one
            // of variable width (the rows turned away on it alone).
            for (order, k) in [
                ("v DESC, id", 3),
                ("v NULLS FIRST, id DESC", 1),
                ("id", 40),
                ("CAST(v AS VARCHAR) DESC NULLS LAST, id", 2),
            ] {
                let ranked = format!(
                    "SELECT g, v, id, rn FROM (SELECT g, v, id, ROW_NUMBER() OVER \
                     (PARTITION BY g ORDER BY {order}) AS rn FROM t) WHERE rn"
                );
                let (plan, ours) = plan_and_rows(&ctx, &format!("{ranked} <= {k}")).await;
                assert!(plan.contains("TopKPerPartitionExec"), "{plan}");
                // `AND rn > 0` hides the pattern from the rule: the plan sorts.
                let (plan, sorted) =
                    plan_and_rows(&ctx, &format!("{ranked} <= {k} AND rn > 0")).await;
                assert!(!plan.contains("TopK"), "{plan}");
                assert_eq!(ours, sorted, "{groups} groups, ORDER BY {order}, k {k}");
                let (_, shown) =
                    plan_and_rows(&ctx, &format!("EXPLAIN ANALYZE {ranked} <= {k}")).await;
                let line = shown.iter().find(|l| l.contains("TopKPerPartitionExec"));
                assert!(
                    line.is_some_and(|l| l.contains("output_rows=")),
                    "its metrics: {shown:?}"
                );
                assert!(ours.len() >= 8, "rows besides the frame: {ours:?}");
            }
        }
    }

    #[tokio::test]
    async fn a_partial_top_k_below_the_repartition_passes_rows_through_where_it_keeps_most() {
        // 50,000 rows: more than a partial top-k judges by, on either partition.
        for (groups, passes) in [(300, false), (1 << 40, true)] {
            let ctx = context_of(groups, 100);
            let ranked = "SELECT g, v, id, rn FROM (SELECT g, v, id, ROW_NUMBER() OVER \
                          (PARTITION BY g ORDER BY v DESC, id) AS rn FROM t) WHERE rn";
            let (plan, ours) = plan_and_rows(&ctx, &format!("{ranked} <= 3")).await;
            let lines: Vec<&str> = plan.lines().map(str::trim_start).collect();
            let at = |prefix: &str| lines.iter().position(|l| l.starts_with(prefix));
            let (last, repartition, partial) = (
                at("TopKPerPartitionExec: k=3"),
                at("RepartitionExec: partitioning=Hash([g@0], 2)"),
                at("TopKPerPartitionExec: mode=Partial, k=3"),
            );
            assert!(
                last.is_some() && last.map(|l| l + 1) == repartition,
                "final top-k on the repartition: {plan}"
            );
            assert_eq!(repartition.map(|r| r + 1), partial, "{plan}");
            let (_, sorted) = plan_and_rows(&ctx, &format!("{ranked} <= 3 AND rn > 0")).await;
            assert_eq!(ours, sorted, "{groups} groups");
            let (_, shown) = plan_and_rows(&ctx, &format!("EXPLAIN ANALYZE {ranked} <= 3")).await;
            let line = shown.iter().find(|l| l.contains("mode=Partial"));
            let line = line.expect("the partial top-k").as_str();
            assert!(line.contains("passed_rows="), "{line}");
            let none = line.contains("passed_rows=0,") || line.contains("passed_rows=0]");
            assert_eq!(!none, passes, "{groups} groups: {line}");
        }
    }

    /// `ROW_NUMBER() OVER (PARTITION BY g)` has no order key: any k rows of each group,
    /// as many as the sort keeps.
    #[tokio::test]
    async fn a_window_with_no_order_keeps_k_rows_of_each_partition() {
        let ctx = context(300);
        let counted = |more: &str| {
            format!(
                "SELECT g, COUNT(*) AS n FROM (SELECT g, ROW_NUMBER() OVER (PARTITION BY g) \
                 AS rn FROM t) WHERE rn <= 2{more} GROUP BY g"
            )
        };
        let (plan, ours) = plan_and_rows(&ctx, &counted("")).await;
        assert!(plan.contains("TopKPerPartitionExec"), "{plan}");
        let (plan, sorted) = plan_and_rows(&ctx, &counted(" AND rn > 0")).await;
        assert!(!plan.contains("TopK"), "{plan}");
        assert_eq!(ours, sorted);
        assert!(ours.len() > 100, "{ours:?}");
    }

    #[tokio::test]
    async fn below_one_and_rank_keep_the_sort() {
        let ctx = context(10);
        let ranked = |f: &str| {
            format!("SELECT * FROM (SELECT g, {f}() OVER (PARTITION BY g ORDER BY v) AS r FROM t) WHERE r")
        };
        // `rn < 1` would be a heap of zero rows, which DataFusion 55.2 panics on.
        let (plan, rows) = plan_and_rows(&ctx, &format!("{} < 1", ranked("ROW_NUMBER"))).await;
        assert!(!plan.contains("TopK"), "{plan}");
        assert_eq!(rows.len(), 2, "a header and a frame: {rows:?}");
        let (plan, _) = plan_and_rows(&ctx, &format!("{} <= 2", ranked("RANK"))).await;
        assert!(!plan.contains("TopK"), "{plan}");
    }
}
