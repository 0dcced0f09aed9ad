//! Physical plans kept with a kept plan (`plans::KeptPlan`) and bound to each new
//! snapshot. A statement met again on a new snapshot takes its optimized plan from
//! `plans`, but physical planning (DataFusion's physical rules and ours) was still a
//! third to a half of a small statement's time (0.35-0.85 ms at a thousand machines in
//! BENCHMARKS.md's "Where a statement's time goes" on 716203b; 0.42-0.69 ms at 70,000 with
//! `BENCH_EXPLAIN`).
//!
//! This module owns:
//! - [`Slot`], one per kept plan: the physical plan kept for one set of the plan's
//!   parameter values. It is kept the second time those values are met in a row (a mix
//!   whose values vary keeps nothing, and pays only comparing them), forgotten when other
//!   values come, and not kept again for its values once it fails to bind.
//! - [`Template`]: a planned, time-sliced physical plan whose every table scan (a scan of
//!   in-memory batches) is replaced by an [`UnboundScan`] naming the snapshot's table
//!   and holding no data, so a kept plan does not keep a generation alive.
//! - [`Template::bind`]: each unbound scan replaced by its table's scan on this snapshot,
//!   with the same columns, limit, order and partitions (anything else, and the statement
//!   is planned afresh), and every other operator rebuilt with its properties kept and its
//!   run state reset (`ExecutionPlan::reset_state`): a hash join's collected build side, a
//!   repartition's channels, metrics.
//!
//! Only plans made of operators known to hold no other run state are kept: no dynamic
//! filter (shared between a join or a top-k and the scan it filters), no scalar subquery
//! (its results are shared with the expressions that read them), no nested-loop join, no
//! operator this module does not know. The statement's plan must be the kept plan as it
//! is, or with this snapshot's bounds put in (`whole_table_min_max`), which then join the
//! values it is kept for: a snapshot with the same bounds binds it, one with others plans
//! it. One that read kept aggregates (`kept_aggregates`) depends on the snapshot beyond
//! its tables and is planned each time.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use datafusion::arrow::array::ArrayRef;
use datafusion::arrow::datatypes::SchemaRef;

use datafusion::catalog::default_table_source::source_as_provider;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::{internal_err, Result, ScalarValue};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::source::{DataSource, DataSourceExec};
use datafusion::execution::session_state::SessionState;
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{LogicalPlan, TableSource};
use datafusion::physical_expr::expressions::DynamicFilterPhysicalExpr;
use datafusion::physical_expr::scalar_subquery::ScalarSubqueryExpr;
use datafusion::physical_expr::{LexOrdering, PhysicalExpr};
use datafusion::physical_plan::{
    ChildrenPropertiesMode, DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties,
    PlanProperties, ReplaceChildrenOptions, SendableRecordBatchStream,
};

use super::machine_keys::registered_entry;

/// Operators whose rebuild with `replace_children` and `reset_state` leaves no state
/// shared with the plan rebuilt (checked in DataFusion 55's sources, and for ours).
const STATELESS_ONCE_REBUILT: &[&str] = &[
    "AggregateExec",
    "BoundedWindowAggExec",
    "CoalesceBatchesExec",
    "CoalescePartitionsExec",
    "CooperativeExec",
    "CrossJoinExec",
    "EmptyExec",
    "FilterExec",
    "GlobalLimitExec",
    "HashJoinExec",
    "LocalLimitExec",
    "MachineIdJoinExec",
    "PlaceholderRowExec",
    "ProjectionExec",
    "RepartitionExec",
    "SortExec",
    "SortPreservingMergeExec",
    "TimeSlicedExec",
    "TopKPerPartitionExec",
    "UnionExec",
    "WindowAggExec",
];

/// Operators that keep run state through `replace_children`, and reset it in
/// `reset_state`.
const RESET_AFTER_REBUILD: &[&str] = &["CrossJoinExec", "HashJoinExec", "SortExec"];

/// A kept plan's physical plan, for the parameter values it was planned with.
#[derive(Debug, Default)]
pub struct Slot(Mutex<State>);

#[derive(Debug, Default)]
enum State {
    #[default]
    Empty,
    /// Met once with these values.
    Met(Vec<ScalarValue>),
    Kept(Vec<ScalarValue>, Arc<Template>),
    /// Its plan cannot be kept (`Template::of`), or did not bind (`Template::bind`).
    Refused(Vec<ScalarValue>),
}

/// What a statement with a kept plan does about its physical plan.
enum Meet {
    /// Bind this one; if it does not bind, plan, and keep none for these values.
    Bind(Arc<Template>),
    /// Plan, then keep it: its values were met just before.
    Keep,
    /// Plan only.
    Plan,
}

impl Slot {
    /// The step for a statement whose plan has parameters `values`.
    fn meet(&self, values: &[ScalarValue]) -> Meet {
        let mut state = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match &*state {
            State::Kept(v, template) if v == values => Meet::Bind(template.clone()),
            State::Met(v) if v == values => Meet::Keep,
            State::Refused(v) if v == values => Meet::Plan,
            _ => {
                *state = State::Met(values.to_vec());
                Meet::Plan
            }
        }
    }

    /// The physical plan kept, if one is.
    #[cfg(test)]
    fn template(&self) -> Option<Arc<Template>> {
        match &*self.0.lock().unwrap_or_else(|p| p.into_inner()) {
            State::Kept(_, t) => Some(t.clone()),
            _ => None,
        }
    }

    /// Keeps `template` for `values`, or remembers that their plan cannot be kept.
    fn keep(&self, values: &[ScalarValue], template: Option<Template>) {
        let mut state = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *state = match template {
            Some(t) => State::Kept(values.to_vec(), Arc::new(t)),
            None => State::Refused(values.to_vec()),
        };
    }
}

/// `optimized`'s physical plan made ready to run by `ready` (the engine time-slices it):
/// bound from the template `slot` keeps for `values` where it has one, else planned, and
/// kept if the same values were met just before. True if bound.
pub async fn physical_plan(
    optimized: &LogicalPlan,
    state: &SessionState,
    sources: &HashMap<String, Arc<dyn TableSource>>,
    slot: Option<(&Slot, &[ScalarValue])>,
    ready: impl FnOnce(Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>>,
) -> Result<(Arc<dyn ExecutionPlan>, bool)> {
    let mut keep = None;
    if let Some((slot, values)) = slot {
        match slot.meet(values) {
            Meet::Bind(template) => {
                if let Some(plan) = template.bind(sources, state).await? {
                    return Ok((plan, true));
                }
                // It does not bind to this snapshot (a scan spread otherwise): not kept
                // again for these values, rather than planned and kept on every run.
                slot.keep(values, None);
            }
            Meet::Keep => keep = Some((slot, values)),
            Meet::Plan => {}
        }
    }
    let physical = ready(
        state
            .query_planner()
            .create_physical_plan(optimized, state)
            .await?,
    )?;
    if let Some((slot, values)) = keep {
        slot.keep(
            values,
            Template::of(&physical, optimized, sources, state).await,
        );
    }
    Ok((physical, false))
}

/// A physical plan without data: its table scans are [`UnboundScan`]s.
pub struct Template {
    plan: Arc<dyn ExecutionPlan>,
}

impl fmt::Debug for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Template({})", self.plan.name())
    }
}

impl Template {
    /// The template of `physical`, planned from `optimized` on the snapshot of `sources`
    /// with `state`; None if it has an operator that may hold state beyond a rebuild, or
    /// a scan that is not one of the plan's tables (see the module).
    pub async fn of(
        physical: &Arc<dyn ExecutionPlan>,
        optimized: &LogicalPlan,
        sources: &HashMap<String, Arc<dyn TableSource>>,
        state: &SessionState,
    ) -> Option<Template> {
        if !keepable(physical) {
            return None;
        }
        let tables = TableBatches::of(optimized, sources, state).await?;
        let mut unknown = false;
        let mut scans = 0;
        let plan = rebuilt(physical, &mut |node| {
            let config = memory_source(node)?;
            scans += 1;
            let rows: usize = config
                .partitions()
                .iter()
                .flatten()
                .map(|b| b.num_rows())
                .sum();
            let Some(table) = tables.name_of(config).filter(|_| rows > 0) else {
                unknown = true;
                return None;
            };
            Some(Arc::new(UnboundScan {
                table,
                projection: config.projection().clone(),
                fetch: DataSource::fetch(config),
                schema: config.original_schema(),
                sort_information: config.sort_information().to_vec(),
                show_sizes: config.show_sizes(),
                properties: node.properties().clone(),
            }))
        })
        .ok()?;
        // A scan the physical rules answered from its table's row count (`COUNT(*)` from
        // exact statistics, a limit dropped over no rows) holds this snapshot's rows in
        // the plan: a plan with fewer scans than its logical plan, or a scan of no rows,
        // is not kept.
        if unknown || scans != tables.scans {
            return None;
        }
        Some(Template { plan })
    }

    /// The plan on this snapshot (`sources`, `state`), ready to run; None if a table's
    /// scan differs from the kept one in anything but its rows.
    pub async fn bind(
        &self,
        sources: &HashMap<String, Arc<dyn TableSource>>,
        state: &SessionState,
    ) -> Result<Option<Arc<dyn ExecutionPlan>>> {
        let mut unbound = Vec::new();
        self.plan.apply(|node| {
            if let Some(scan) = node.downcast_ref::<UnboundScan>() {
                unbound.push(scan);
            }
            Ok(TreeNodeRecursion::Continue)
        })?;
        let mut scans = HashMap::new();
        for scan in unbound {
            let Some(source) = sources.get(&scan.table) else {
                return Ok(None);
            };
            let provider = source_as_provider(source)?;
            let mut new = provider
                .scan(state, scan.projection.as_ref(), &[], scan.fetch)
                .await?;
            // A limit pushed into the scan by the physical rules (`MemTable` takes none).
            if scan.fetch.is_some() {
                match new.with_fetch(scan.fetch) {
                    Some(limited) => new = limited,
                    None => return Ok(None),
                }
            }
            if !memory_source(&new).is_some_and(|c| scan.matches(c, &new)) {
                return Ok(None);
            }
            scans.insert(scan as *const UnboundScan as usize, new);
        }
        let bound = rebuilt(&self.plan, &mut |node| {
            let scan = node.downcast_ref::<UnboundScan>()?;
            scans.get(&(scan as *const UnboundScan as usize)).cloned()
        });
        match bound {
            Ok(plan) => Ok(Some(plan)),
            Err(e) => {
                tracing::debug!(error = %e, "a kept physical plan does not rebuild");
                Ok(None)
            }
        }
    }
}

/// `node` rebuilt from the leaves up: a leaf `leaf` gives a replacement for replaced,
/// every other operator given its new children with its properties kept (the new leaves
/// have the same) and its run state reset. DataFusion's `transform_up` would recompute
/// every operator's properties, most of what keeping the plan saves.
fn rebuilt(
    node: &Arc<dyn ExecutionPlan>,
    leaf: &mut impl FnMut(&Arc<dyn ExecutionPlan>) -> Option<Arc<dyn ExecutionPlan>>,
) -> Result<Arc<dyn ExecutionPlan>> {
    let children = node.children();
    if children.is_empty() {
        // A leaf that is not a table's scan (one empty row, no row) keeps no state.
        return Ok(leaf(node).unwrap_or_else(|| node.clone()));
    }
    let children = children
        .into_iter()
        .map(|c| rebuilt(c, leaf))
        .collect::<Result<Vec<_>>>()?;
    let node = node.clone().replace_children(
        children,
        ReplaceChildrenOptions::new(ChildrenPropertiesMode::Keep),
    )?;
    // `replace_children` gives the others fresh state (their metrics, a repartition's
    // channels); these keep some through it (a hash join its collected build side).
    if RESET_AFTER_REBUILD.contains(&node.name()) {
        node.reset_state()
    } else {
        Ok(node)
    }
}

/// Whether every operator of `plan` is one a rebuild leaves without shared run state, and
/// every scan reads in-memory batches.
fn keepable(plan: &Arc<dyn ExecutionPlan>) -> bool {
    let mut ok = true;
    let _ = plan.apply(|node| {
        let known = match node.name() {
            "DataSourceExec" => memory_source(node).is_some(),
            name => STATELESS_ONCE_REBUILT.contains(&name),
        };
        ok = known
            && node.dynamic_expressions_produced().is_empty()
            && !holds_shared_expression(node.as_ref());
        Ok(if ok {
            TreeNodeRecursion::Continue
        } else {
            TreeNodeRecursion::Stop
        })
    });
    ok
}

/// Whether an expression `node` evaluates is shared beyond the plan: a dynamic filter, or a
/// scalar subquery's result.
fn holds_shared_expression(node: &dyn ExecutionPlan) -> bool {
    let mut shared = false;
    let _ = node.apply_expressions(&mut |root| {
        root.apply(|e| {
            shared = e.downcast_ref::<DynamicFilterPhysicalExpr>().is_some()
                || e.downcast_ref::<ScalarSubqueryExpr>().is_some();
            Ok(if shared {
                TreeNodeRecursion::Stop
            } else {
                TreeNodeRecursion::Continue
            })
        })
    });
    shared
}

fn memory_source(node: &Arc<dyn ExecutionPlan>) -> Option<&MemorySourceConfig> {
    node.downcast_ref::<DataSourceExec>()?
        .data_source()
        .downcast_ref::<MemorySourceConfig>()
}

/// The tables a plan reads, by their batches: the address of a batch's first column
/// (shared by every scan of the table on one snapshot) names its table.
struct TableBatches {
    batches: Vec<(usize, String, SchemaRef)>,
    /// The logical plan's table scans, subqueries included.
    scans: usize,
}

impl TableBatches {
    async fn of(
        optimized: &LogicalPlan,
        sources: &HashMap<String, Arc<dyn TableSource>>,
        state: &SessionState,
    ) -> Option<TableBatches> {
        let mut names = Vec::new();
        optimized
            .apply_with_subqueries(|node| {
                if let LogicalPlan::TableScan(scan) = node {
                    match registered_entry(sources, scan) {
                        Some((name, source)) => names.push((name.clone(), source.clone())),
                        None => return internal_err!("a scan of no table of the snapshot"),
                    }
                }
                Ok(TreeNodeRecursion::Continue)
            })
            .ok()?;
        let scans = names.len();
        // A table scanned twice (a self-join) is looked at once.
        names.sort_by(|a, b| a.0.cmp(&b.0));
        names.dedup_by(|a, b| a.0 == b.0);
        let mut batches = Vec::new();
        for (name, source) in names {
            let provider = source_as_provider(&source).ok()?;
            let scan = provider.scan(state, None, &[], None).await.ok()?;
            let config = memory_source(&scan)?;
            for batch in config.partitions().iter().flatten() {
                if let Some(column) = batch.columns().first() {
                    batches.push((address(column), name.clone(), config.original_schema()));
                }
            }
        }
        Some(TableBatches { batches, scans })
    }

    /// The table whose batches `config` scans; None if none is, or more than one with
    /// its columns (a view passing a table's column on), or it has no batch.
    fn name_of(&self, config: &MemorySourceConfig) -> Option<String> {
        let first = config
            .partitions()
            .iter()
            .flatten()
            .next()?
            .columns()
            .first()?;
        let schema = config.original_schema();
        let mut names = self
            .batches
            .iter()
            .filter(|(a, _, s)| *a == address(first) && *s == schema)
            .map(|(_, n, _)| n);
        let name = names.next()?;
        names.all(|n| n == name).then(|| name.clone())
    }
}

fn address(column: &ArrayRef) -> usize {
    Arc::as_ptr(column) as *const () as usize
}

/// A table scan of a kept physical plan: which table, and how the scan was made; no
/// data. It never runs: binding replaces it.
#[derive(Debug)]
pub struct UnboundScan {
    /// Its name among the snapshot's sources (a keyed copy's name for a keyed copy).
    table: String,
    projection: Option<Vec<usize>>,
    fetch: Option<usize>,
    schema: SchemaRef,
    sort_information: Vec<LexOrdering>,
    show_sizes: bool,
    properties: Arc<PlanProperties>,
}

impl UnboundScan {
    /// Whether `config` (of the scan `new`) reads the same columns with the same limit,
    /// order and partitions, so the operators above keep their properties.
    fn matches(&self, config: &MemorySourceConfig, new: &Arc<dyn ExecutionPlan>) -> bool {
        config.projection() == &self.projection
            && DataSource::fetch(config) == self.fetch
            && config.original_schema() == self.schema
            && config.sort_information() == self.sort_information.as_slice()
            && config.show_sizes() == self.show_sizes
            && new.output_partitioning().partition_count()
                == self.properties.output_partitioning().partition_count()
            && new.properties().eq_properties.output_ordering()
                == self.properties.eq_properties.output_ordering()
    }
}

impl DisplayAs for UnboundScan {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UnboundScan: {}", self.table)
    }
}

impl ExecutionPlan for UnboundScan {
    fn name(&self) -> &str {
        "UnboundScan"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        Vec::new()
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        _children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn execute(
        &self,
        _partition: usize,
        _context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        internal_err!("a kept plan's scan of {} ran unbound", self.table)
    }
}

#[cfg(test)]
mod tests;
