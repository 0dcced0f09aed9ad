//! Aggregates' results kept for the snapshot they were computed on. A generation is
//! immutable, so an aggregate over it (the subtree of an optimized plan rooted at an
//! `Aggregate`) gives the same rows each time it runs on the same snapshot. Dashboards and
//! alerts ask for the same aggregate again and again with another threshold above it
//! (`HAVING COUNT(*) > 10`, then `> 20`): the answer cache cannot serve them (the texts
//! differ), but the aggregate under the threshold is the same.
//!
//! The same holds for the top rows of each window partition (`ROW_NUMBER() OVER (PARTITION
//! BY cluster ORDER BY rss DESC) AS rn ... WHERE rn <= 3`, then `<= 5`): the window's rows
//! with `rn` up to a bound, kept for the window, serve every bound up to it, the filter
//! above them picking the rows asked for.
//!
//! This module owns:
//! - [`KeptAggregates`], one per snapshot: results by their aggregate's logical plan (a
//!   top-k's by its window's, with the bound its rows were kept for). An
//!   aggregate is kept the second time it is met on the snapshot (one met once is likely a
//!   one-off), if its result is small enough (an eighth of the budget, `[sql]
//!   aggregate_cache_mb`); once the budget is spent nothing more is kept for the snapshot.
//!   A top-k kept for a higher bound replaces the rows kept for a lower one.
//! - [`KeptAggregates::substitute`], run on a statement's optimized plan just before
//!   physical planning: each outermost aggregate or top-k whose result is kept is replaced
//!   by a node reading it, one met before by a node that runs it and keeps its result.
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
use datafusion::common::{internal_err, DFSchemaRef, Result, ScalarValue};
use datafusion::execution::context::QueryPlanner;
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{
    BinaryExpr, Expr, Extension, Filter, LogicalPlan, Operator, UserDefinedLogicalNode,
    UserDefinedLogicalNodeCore,
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

/// One aggregate's result (or a top-k window's rows up to `rank`): every partition's
/// batches, in one partition.
#[derive(Debug)]
pub(crate) struct Kept {
    schema: SchemaRef,
    batches: Vec<RecordBatch>,
    rank: Option<Rank>,
    bytes: usize,
}

/// Which rank column of a window a top-k's rows were kept (or are asked) for, and up to
/// which rank. Rows kept for one rank column serve only that column: `ROW_NUMBER() <= 3`
/// drops ties that `RANK() <= 3` over the same window passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Rank {
    /// The window expression's position in its window.
    column: usize,
    bound: u64,
}

/// Whether rows kept for `kept` hold every row asked for `asked` (both None: an
/// aggregate's whole result).
fn covers(kept: Option<Rank>, asked: Option<Rank>) -> bool {
    match (kept, asked) {
        (None, None) => true,
        (Some(k), Some(a)) => k.column == a.column && k.bound >= a.bound,
        _ => false,
    }
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

    /// `plan` with each outermost aggregate (or top-k window) whose result is kept read
    /// from it, and each met before run and kept (`transformed` if any was); how many were
    /// read from kept results.
    pub(crate) fn substitute(
        self: &Arc<Self>,
        plan: LogicalPlan,
    ) -> Result<(Transformed<LogicalPlan>, usize)> {
        if self.budget == 0 || recursive(&plan) {
            return Ok((Transformed::no(plan), 0));
        }
        let mut read = 0;
        let plan = plan.transform_down(|node| {
            let replaced = match &node {
                LogicalPlan::Aggregate(_) => self.aggregate(node, &mut read),
                LogicalPlan::Filter(filter) => match top_k(filter) {
                    Some(top) => self.top_k(node, top, &mut read)?,
                    None => Transformed::no(node),
                },
                _ => Transformed::no(node),
            };
            Ok(replaced)
        })?;
        Ok((plan, read))
    }

    /// An aggregate read from its result, run and kept, or as it is (met for the first
    /// time: the aggregates inside it may be met again).
    fn aggregate(
        self: &Arc<Self>,
        node: LogicalPlan,
        read: &mut usize,
    ) -> Transformed<LogicalPlan> {
        let schema = node.schema().clone();
        match self.step(&node, None) {
            Some(Step::Read(kept)) => {
                *read += 1;
                Transformed::new(
                    extension(schema, None, Step::Read(kept)),
                    true,
                    TreeNodeRecursion::Jump,
                )
            }
            Some(keep) => Transformed::new(
                extension(schema, Some(node), keep),
                true,
                TreeNodeRecursion::Jump,
            ),
            None => Transformed::no(node),
        }
    }

    /// `filter` (`rn <= bound` over a window, see [`top_k`]) over its window's kept rows,
    /// run and kept, or as it is. The key is the window: rows kept for a bound serve every
    /// bound up to it, the filter above them picking the rows the statement asks for.
    fn top_k(
        self: &Arc<Self>,
        node: LogicalPlan,
        TopK { rank, whole }: TopK,
        read: &mut usize,
    ) -> Result<Transformed<LogicalPlan>> {
        let LogicalPlan::Filter(filter) = &node else {
            return Ok(Transformed::no(node));
        };
        let window = filter.input.as_ref();
        let schema = node.schema().clone();
        Ok(match self.step(window, Some(rank)) {
            Some(Step::Read(kept)) => {
                *read += 1;
                let rows = extension(schema, None, Step::Read(kept));
                let above = Filter::try_new(filter.predicate.clone(), Arc::new(rows))?;
                Transformed::new(LogicalPlan::Filter(above), true, TreeNodeRecursion::Jump)
            }
            // `rn = 5` passes only some of the rows up to 5: it cannot keep them.
            Some(keep) if whole => Transformed::new(
                extension(schema, Some(node), keep),
                true,
                TreeNodeRecursion::Jump,
            ),
            _ => Transformed::no(node),
        })
    }

    /// Read `key`'s result if one is kept (for a top-k, for `rank`'s column and bound or
    /// more), keep it if `key` was met before on this snapshot, or None (now met once).
    fn step(self: &Arc<Self>, key: &LogicalPlan, rank: Option<Rank>) -> Option<Step> {
        let hash = hash_of(key);
        let mut inner = self.lock();
        if let Some(kept) = inner.find(hash, key, rank) {
            return Some(Step::Read(kept));
        }
        if inner.met.contains(&hash) {
            return Some(Step::Keep(Arc::new(Keeper {
                cache: self.clone(),
                key: key.clone(),
                hash,
                rank,
            })));
        }
        if inner.met.len() >= MAX_MET_ONCE {
            inner.met.clear();
        }
        inner.met.insert(hash);
        None
    }

    /// Keeps `batches` as the result of `key` (for a top-k, its rows up to `rank`) if
    /// there is room (see the module); they replace rows kept for a lower bound.
    fn keep(&self, keeper: &Keeper, schema: SchemaRef, batches: Vec<RecordBatch>) {
        let bytes: usize = batches.iter().map(|b| b.get_array_memory_size()).sum();
        if bytes > self.largest() {
            return;
        }
        let mut inner = self.lock();
        if inner.find(keeper.hash, &keeper.key, keeper.rank).is_some() {
            return;
        }
        // Rows kept for a lower bound of the same rank column give way: where, and their
        // bytes.
        let column = |rank: Option<Rank>| rank.map(|r| r.column);
        let lower = inner.kept.get(&keeper.hash).and_then(|same| {
            let at = same
                .iter()
                .position(|(p, k)| *p == keeper.key && column(k.rank) == column(keeper.rank))?;
            Some((at, same[at].1.bytes))
        });
        let freed = lower.map_or(0, |(_, b)| b);
        if inner.bytes - freed + bytes > self.budget {
            return;
        }
        let inner = &mut *inner;
        inner.bytes = inner.bytes - freed + bytes;
        let same = inner.kept.entry(keeper.hash).or_default();
        if let Some((at, _)) = lower {
            same.remove(at);
        }
        let kept = Arc::new(Kept {
            schema,
            batches,
            rank: keeper.rank,
            bytes,
        });
        same.push((keeper.key.clone(), kept));
    }
}

impl Inner {
    /// The result kept for `plan` (for a top-k: for `rank`'s column and bound or more).
    fn find(&self, hash: u64, plan: &LogicalPlan, rank: Option<Rank>) -> Option<Arc<Kept>> {
        self.kept
            .get(&hash)?
            .iter()
            .find(|(p, k)| p == plan && covers(k.rank, rank))
            .map(|(_, k)| k.clone())
    }
}

/// Whether `plan` (subqueries included) has a recursive query: its recursive term scans a
/// work table under the query's name, which a scan of a table of that name would equal
/// (`TableScan` equality leaves its source out), and an aggregate there has another result
/// at each iteration.
fn recursive(plan: &LogicalPlan) -> bool {
    let mut found = false;
    let _ = plan.apply_with_subqueries(|node| {
        found = matches!(node, LogicalPlan::RecursiveQuery(_));
        Ok(if found {
            TreeNodeRecursion::Stop
        } else {
            TreeNodeRecursion::Continue
        })
    });
    found
}

/// A logical node for `step`: reading a kept result (no input), or running `input` and
/// keeping its result.
fn extension(schema: DFSchemaRef, input: Option<LogicalPlan>, step: Step) -> LogicalPlan {
    LogicalPlan::Extension(Extension {
        node: Arc::new(KeptAggregateNode {
            schema,
            input,
            step,
        }),
    })
}

/// A filter over a window's rank (see [`top_k`]).
#[derive(Debug, Clone, Copy)]
struct TopK {
    /// The rows the filter passes are among those whose rank (in this column) is at most
    /// its bound.
    rank: Rank,
    /// It passes all of those (`rn <= b`, `rn < b + 1`; not `rn = b`): what it passes can
    /// be kept for `bound`.
    whole: bool,
}

/// The bound `b` of a filter `rn <= b` (or `rn < b + 1`, `rn = b`) directly over the
/// window that computes `rn` as `ROW_NUMBER()`, `RANK()` or `DENSE_RANK()`: the rows it
/// passes are among the window's rows whose `rn` is at most `b`, and those rows with
/// their values do not depend on `b` (each window value is computed over its whole
/// partition).
fn top_k(filter: &Filter) -> Option<TopK> {
    let LogicalPlan::Window(window) = filter.input.as_ref() else {
        return None;
    };
    let Expr::BinaryExpr(BinaryExpr { left, op, right }) = &filter.predicate else {
        return None;
    };
    let (column, op, value) = match (left.as_ref(), right.as_ref()) {
        (Expr::Column(c), Expr::Literal(v, _)) => (c, *op, v),
        (Expr::Literal(v, _), Expr::Column(c)) => (c, op.swap()?, v),
        _ => return None,
    };
    let value = match value {
        ScalarValue::UInt64(Some(v)) => i128::from(*v),
        ScalarValue::Int64(Some(v)) => i128::from(*v),
        ScalarValue::UInt32(Some(v)) => i128::from(*v),
        ScalarValue::Int32(Some(v)) => i128::from(*v),
        _ => return None,
    };
    let (bound, whole) = match op {
        Operator::LtEq => (value, true),
        Operator::Lt => (value - 1, true),
        Operator::Eq => (value, false),
        _ => return None,
    };
    // A window's output is its input's columns, then one per window expression.
    let at = window.schema.index_of_column(column).ok()?;
    let first = window.input.schema().fields().len();
    let column = at.checked_sub(first)?;
    let expr = window.window_expr.get(column)?;
    let Expr::WindowFunction(f) = expr.clone().unalias_nested().data else {
        return None;
    };
    let ranked = matches!(f.fun.name(), "row_number" | "rank" | "dense_rank");
    let bound = u64::try_from(bound).ok().filter(|b| ranked && *b >= 1)?;
    Some(TopK {
        rank: Rank { column, bound },
        whole,
    })
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
    /// For a top-k window, the rank column and bound its rows are kept for.
    rank: Option<Rank>,
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
        self.cache.keep(self, schema, batches);
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
