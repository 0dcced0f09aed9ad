//! Aggregates' results kept for the snapshot they were computed on. A generation is
//! immutable, so an aggregate over it (the subtree of an optimized plan rooted at an
//! `Aggregate`) gives the same rows each time it runs on the same snapshot. Dashboards and
//! alerts ask for the same aggregate again and again with another threshold above it
//! (`HAVING COUNT(*) > 10`, then `> 20`): the answer cache cannot serve them (the texts
//! differ), but the aggregate under the threshold is the same.
//!
//! This module owns:
//! - [`KeptAggregates`], one per snapshot: results by their aggregate's logical plan. An
//!   aggregate is kept the second time it is met on the snapshot (one met once is likely a
//!   one-off), if its result is small enough (an eighth of the budget, `[sql]
//!   aggregate_cache_mb`); once the budget is spent nothing more is kept for the snapshot.
//! - [`KeptAggregates::substitute`], run on a statement's optimized plan just before
//!   physical planning: each outermost aggregate whose result is kept is replaced by a
//!   node reading it, one met before by a node that runs it and keeps its result.
//! - [`KeptAggregatePlanner`], which plans those nodes: a scan of the kept batches, or
//!   [`exec::KeepExec`] over the aggregate's own plan.
//!
//! Only statements whose answers may be kept (`QueryOutput::cacheable`: they read only the
//! snapshot and call only immutable functions) go through it, so every kept result depends
//! on the snapshot alone. A result is kept only when every partition of the aggregate ran
//! to its end: an answer cut short (a `LIMIT` above, an error, a cancelled query) keeps
//! nothing.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::Session;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{internal_err, DFSchemaRef, Result};
use datafusion::execution::context::QueryPlanner;
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{
    Expr, Extension, LogicalPlan, UserDefinedLogicalNode, UserDefinedLogicalNodeCore,
};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_planner::{DefaultPhysicalPlanner, ExtensionPlanner, PhysicalPlanner};

mod exec;

/// The default of `[sql] aggregate_cache_mb`: per snapshot, so a node holds it about
/// twice (the snapshot served, and the one queries still hold while the next is built).
pub const DEFAULT_AGGREGATE_CACHE_MB: usize = 32;

/// A kept result is at most this share of the budget.
const LARGEST_SHARE: usize = 8;

/// Aggregates met once, remembered by hash: past this many the memory is cleared.
const MAX_MET_ONCE: usize = 4096;

/// The results kept for one snapshot.
pub(crate) struct KeptAggregates {
    budget: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Hashes of aggregates met once on this snapshot.
    met: HashSet<u64>,
    /// Results by their aggregate's hash (equal plans checked: a hash can collide).
    kept: HashMap<u64, Vec<(LogicalPlan, Arc<Kept>)>>,
    bytes: usize,
}

/// One aggregate's result: every partition's batches, in one partition.
#[derive(Debug)]
pub(crate) struct Kept {
    schema: SchemaRef,
    batches: Vec<RecordBatch>,
}

impl KeptAggregates {
    /// `budget` bytes of results at most; 0 keeps none.
    pub(crate) fn new(budget: usize) -> Arc<KeptAggregates> {
        Arc::new(KeptAggregates {
            budget,
            inner: Mutex::default(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every critical section leaves the maps consistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The largest result kept.
    fn largest(&self) -> usize {
        self.budget / LARGEST_SHARE
    }

    /// `plan` with each outermost aggregate whose result is kept read from it, and each
    /// met before run and kept; how many were read from kept results.
    pub(crate) fn substitute(self: &Arc<Self>, plan: LogicalPlan) -> Result<(LogicalPlan, usize)> {
        if self.budget == 0 {
            return Ok((plan, 0));
        }
        let mut read = 0;
        let plan = plan
            .transform_down(|node| {
                let LogicalPlan::Aggregate(aggregate) = &node else {
                    return Ok(Transformed::no(node));
                };
                let schema = aggregate.schema.clone();
                let hash = hash_of(&node);
                let mut inner = self.lock();
                let step = if let Some(kept) = inner.find(hash, &node) {
                    read += 1;
                    Step::Read(kept)
                } else if inner.met.contains(&hash) {
                    Step::Keep(Arc::new(Keeper {
                        cache: self.clone(),
                        key: node.clone(),
                        hash,
                    }))
                } else {
                    if inner.met.len() >= MAX_MET_ONCE {
                        inner.met.clear();
                    }
                    inner.met.insert(hash);
                    // Met once: the aggregates inside it may be met again.
                    return Ok(Transformed::no(node));
                };
                let input = match step {
                    Step::Read(_) => None,
                    Step::Keep(_) => Some(node),
                };
                let replaced = LogicalPlan::Extension(Extension {
                    node: Arc::new(KeptAggregateNode {
                        schema,
                        input,
                        step,
                    }),
                });
                Ok(Transformed::new(replaced, true, TreeNodeRecursion::Jump))
            })?
            .data;
        Ok((plan, read))
    }

    /// Keeps `batches` as the result of `key` if there is room (see the module).
    fn keep(&self, hash: u64, key: &LogicalPlan, schema: SchemaRef, batches: Vec<RecordBatch>) {
        let bytes: usize = batches.iter().map(|b| b.get_array_memory_size()).sum();
        if bytes > self.largest() {
            return;
        }
        let mut inner = self.lock();
        if inner.bytes + bytes > self.budget || inner.find(hash, key).is_some() {
            return;
        }
        inner.bytes += bytes;
        let kept = Arc::new(Kept { schema, batches });
        inner
            .kept
            .entry(hash)
            .or_default()
            .push((key.clone(), kept));
    }
}

impl Inner {
    fn find(&self, hash: u64, plan: &LogicalPlan) -> Option<Arc<Kept>> {
        self.kept
            .get(&hash)?
            .iter()
            .find(|(p, _)| p == plan)
            .map(|(_, k)| k.clone())
    }
}

fn hash_of(plan: &LogicalPlan) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    plan.hash(&mut h);
    h.finish()
}

/// Where a result that runs goes once it is complete.
#[derive(Debug)]
struct Keeper {
    cache: Arc<KeptAggregates>,
    key: LogicalPlan,
    hash: u64,
}

impl fmt::Debug for KeptAggregates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeptAggregates")
            .field("budget", &self.budget)
            .finish()
    }
}

impl Keeper {
    fn keep(&self, schema: SchemaRef, batches: Vec<RecordBatch>) {
        self.cache.keep(self.hash, &self.key, schema, batches);
    }

    /// The largest result worth collecting.
    fn largest(&self) -> usize {
        self.cache.largest()
    }
}

#[derive(Debug, Clone)]
enum Step {
    /// Read the kept result.
    Read(Arc<Kept>),
    /// Run the aggregate (the node's input) and keep its result.
    Keep(Arc<Keeper>),
}

/// An aggregate read from its kept result, or run and kept (a logical node that exists
/// only between `substitute` and physical planning).
#[derive(Debug, Clone)]
struct KeptAggregateNode {
    /// The aggregate's own schema (its qualifiers too: the plan above refers to them).
    schema: DFSchemaRef,
    /// The aggregate, when it runs.
    input: Option<LogicalPlan>,
    step: Step,
}

impl KeptAggregateNode {
    fn identity(&self) -> usize {
        match &self.step {
            Step::Read(k) => Arc::as_ptr(k) as usize,
            Step::Keep(k) => Arc::as_ptr(k) as usize,
        }
    }
}

impl PartialEq for KeptAggregateNode {
    fn eq(&self, other: &Self) -> bool {
        self.identity() == other.identity() && self.input == other.input
    }
}

impl Eq for KeptAggregateNode {}

impl Hash for KeptAggregateNode {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.identity().hash(state);
    }
}

impl PartialOrd for KeptAggregateNode {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        self.identity().partial_cmp(&other.identity())
    }
}

impl UserDefinedLogicalNodeCore for KeptAggregateNode {
    fn name(&self) -> &str {
        "KeptAggregate"
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        self.input.iter().collect()
    }

    fn schema(&self) -> &DFSchemaRef {
        &self.schema
    }

    fn expressions(&self) -> Vec<Expr> {
        Vec::new()
    }

    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self.step {
            Step::Read(_) => write!(f, "KeptAggregate: read"),
            Step::Keep(_) => write!(f, "KeptAggregate: keep"),
        }
    }

    fn with_exprs_and_inputs(
        &self,
        exprs: Vec<Expr>,
        mut inputs: Vec<LogicalPlan>,
    ) -> Result<Self> {
        if !exprs.is_empty() || inputs.len() != self.input.iter().count() {
            return internal_err!("KeptAggregate takes no expressions and keeps its inputs");
        }
        Ok(KeptAggregateNode {
            schema: self.schema.clone(),
            input: inputs.pop(),
            step: self.step.clone(),
        })
    }
}

/// The snapshot's physical planner: DataFusion's, with [`KeptAggregateNode`]s planned.
#[derive(Debug, Default)]
pub(crate) struct KeptAggregatePlanner;

#[async_trait]
impl QueryPlanner for KeptAggregatePlanner {
    async fn create_physical_plan(
        &self,
        logical_plan: &LogicalPlan,
        session: &dyn Session,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        DefaultPhysicalPlanner::with_extension_planners(vec![Arc::new(PlanKeptAggregates)])
            .create_physical_plan(logical_plan, session)
            .await
    }
}

struct PlanKeptAggregates;

#[async_trait]
impl ExtensionPlanner for PlanKeptAggregates {
    async fn plan_extension(
        &self,
        _planner: &dyn PhysicalPlanner,
        node: &dyn UserDefinedLogicalNode,
        _logical_inputs: &[&LogicalPlan],
        physical_inputs: &[Arc<dyn ExecutionPlan>],
        _session: &dyn Session,
        _planning_ctx: &PhysicalPlanningContext,
    ) -> Result<Option<Arc<dyn ExecutionPlan>>> {
        let Some(node) = node.as_any().downcast_ref::<KeptAggregateNode>() else {
            return Ok(None);
        };
        Ok(Some(match (&node.step, physical_inputs) {
            (Step::Read(kept), []) => exec::read(kept)?,
            (Step::Keep(keeper), [input]) => {
                Arc::new(exec::KeepExec::new(input.clone(), keeper.clone()))
            }
            _ => return internal_err!("KeptAggregate planned with the wrong inputs"),
        }))
    }
}

#[cfg(test)]
mod tests;
