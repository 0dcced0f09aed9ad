//! A snapshot: the one generation a node currently answers from, with its static tables
//! and views, registered in a DataFusion context (built in `build`), and how it runs a
//! statement. Installing the next generation builds a new snapshot; queries that hold the
//! old one finish on it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::{SchemaProvider, TableProvider};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::config::Dialect;
use datafusion::execution::context::{SQLOptions, SessionContext};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::session_state::SessionState;
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{LogicalPlan, TableSource};
use datafusion::physical_plan::execute_stream;
use datafusion::sql::parser::Statement as DfStatement;
use futures::StreamExt;

use super::describe::Descriptions;
use super::front_door::{parse_checked, ParseLimits};
use super::kept_aggregates::KeptAggregates;
use super::kept_physical::physical_plan;
use super::memory::MemoryBudget;
use super::names;
use super::plans::{self, KeptPlan, PlanCache, PlanKey};
use super::shapes::Shape;
use super::spread::{Before, CopyBytes, SpreadTable};
use super::time_slice::time_sliced;
use super::views::ViewProvider;
use super::whole_table_min_max::answer_from_bounds;
use crate::error::QueryError;
use crate::generation::Generation;
use crate::static_tables::StaticCatalog;

mod build;

#[cfg(test)]
pub(crate) use build::{new_context, new_context_sized};
pub use build::{BuildOptions, TableCopies};

pub(crate) const SQL_DIALECT: Dialect = Dialect::PostgreSQL;

/// Where a table of a snapshot comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    Published,
    Static,
    View,
    /// About this node, computed when read (`query_quarantine`).
    #[serde(rename = "self")]
    Node,
}

/// What a query used, or what `GET /tables` lists.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TableUse {
    pub name: String,
    pub origin: Origin,
    /// Rows; for a view only once it has been computed in this generation.
    pub rows: Option<usize>,
    /// Machines (or publishers) that contributed to a published table.
    pub sources: usize,
    /// Publish time of the oldest source, for published tables.
    #[serde(skip)]
    pub oldest_publish: Option<SystemTime>,
    /// Publish time of the newest source, for published tables.
    #[serde(skip)]
    pub newest_publish: Option<SystemTime>,
}

#[derive(Debug, Clone)]
pub struct QueryLimits {
    /// Rows returned at most; more are cut and the answer says it was truncated.
    pub max_rows: usize,
    /// Bytes (Arrow memory) of the answer at most; past it the query fails.
    pub max_result_bytes: usize,
    /// Size and depth of the statement, checked before planning.
    pub parse: ParseLimits,
    /// Memory the query's operators may reserve, inside the node's budget.
    pub memory: MemoryBudget,
    /// Whether the statement may spread over every core. A node already running other
    /// queries sets false: they keep the cores busy, and one partition spends nothing on
    /// repartitioning (hash-splitting 840,000 rows for a join costs about as much as
    /// probing them), so the node answers more queries per second.
    pub parallel: bool,
}

impl Default for QueryLimits {
    fn default() -> Self {
        QueryLimits {
            max_rows: 100_000,
            max_result_bytes: DEFAULT_MAX_RESULT_BYTES,
            parse: ParseLimits::default(),
            memory: MemoryBudget::default(),
            parallel: true,
        }
    }
}

/// Default of `[http] max_result_bytes`, and the cap of the guarded functions' output.
pub const DEFAULT_MAX_RESULT_BYTES: usize = 64 << 20;

#[derive(Debug, Clone)]
pub struct QueryOutput {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
    pub truncated: bool,
    pub tables: Vec<TableUse>,
    /// The same statement on the same snapshot gives this answer again (`answers`).
    pub cacheable: bool,
    /// Where the statement's time went (benchmarks, the slow-query log).
    pub phases: Phases,
}

/// The time of each step of one statement in `Snapshot::query_statement` (and the parse
/// in `Snapshot::query`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Phases {
    /// Text to statement, with the front door's checks (`Snapshot::query` only).
    pub parse: Duration,
    /// Statement to logical plan, with the read-only check and the tables it scans.
    pub plan: Duration,
    /// DataFusion's analyzer rules and ours (coercion, division, subqueries, casts).
    pub analyze: Duration,
    /// The logical optimizer.
    pub optimize: Duration,
    /// Physical planning (physical optimizer rules, time slicing) and the task's memory
    /// pool.
    pub physical: Duration,
    /// Executing the plan and collecting its batches.
    pub execute: Duration,
    /// True if the statement ran on one partition (`SINGLE_PARTITION_ROWS`, or
    /// `QueryLimits::parallel` false).
    pub single_partition: bool,
    /// True if the optimized plan was kept from an earlier run of the statement (`plans`):
    /// `plan` is then binding it to this snapshot, and analyze and optimize are zero.
    pub plan_reused: bool,
    /// True if the physical plan was kept from an earlier run of the statement with the
    /// same values (`kept_physical`): `physical` is then binding it to this snapshot.
    pub physical_reused: bool,
    /// Aggregates read from their results kept on this snapshot (`[sql]
    /// aggregate_cache_mb`) rather than run.
    pub aggregates_read: usize,
}

impl QueryOutput {
    pub fn rows(&self) -> usize {
        self.batches.iter().map(|b| b.num_rows()).sum()
    }
}

pub struct Snapshot {
    pub generation: Arc<Generation>,
    pub statics: Arc<StaticCatalog>,
    views: BTreeMap<String, Arc<ViewProvider>>,
    /// Every view's SQL (planned or not): what a query needs through a view.
    view_sql: BTreeMap<String, String>,
    /// Views that could not be planned in this snapshot, with the reason.
    pub view_errors: BTreeMap<String, String>,
    /// Why the last edit of views.toml was rejected, if it was (the views before it stay).
    pub views_file_error: Option<String>,
    /// Size and freshness of each published table, counted once: a table of a 70k-machine
    /// generation has 70k parts, and every answer reports its tables.
    published: Vec<TableUse>,
    /// Tables about this node (`add_node_table`).
    node_tables: BTreeSet<String>,
    /// Every table's columns and descriptions (`describe::install`).
    pub descriptions: Arc<Descriptions>,
    ctx: SessionContext,
    /// The context's state, made once per snapshot: `SessionContext::state()` copies it
    /// (every function registry and option) and a statement used to take four copies.
    /// Tables registered later (`add_node_table`) are seen: the catalogs are shared.
    wide: SessionState,
    /// The same with one target partition, for statements over small tables
    /// (`SINGLE_PARTITION_ROWS`).
    narrow: SessionState,
    /// Every published and static table and view, by name, as plans scan them (`plans`).
    sources: HashMap<String, Arc<dyn TableSource>>,
    /// What a plan kept from another snapshot depends on (`plans::catalog_fingerprint`).
    catalog: u64,
    /// Optimized plans of statements met before, on this snapshot or an earlier one.
    plans: Arc<PlanCache>,
    /// Aggregates' results computed on this snapshot (`kept_aggregates`).
    aggregates: Arc<KeptAggregates>,
    /// The published tables coalesced when it was built, by name: what the next snapshot's
    /// copies may share columns with (`spread::Before`).
    coalesced: HashMap<String, Arc<SpreadTable>>,
}

/// A statement whose scanned tables (views followed to theirs) hold at most this many
/// rows in all is planned on one partition, and tables this small are registered as one:
/// spreading 20k rows over the cores (repartition, coalesce, a task per partition) costs
/// more than the parallel work saves (BENCHMARKS.md, "SQL").
pub const SINGLE_PARTITION_ROWS: usize = 100_000;

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("generation", &self.generation.id)
            .finish()
    }
}

impl Snapshot {
    /// Table `name`'s copy in this snapshot and the parts it was made from, for the next
    /// snapshot's copy to share columns with.
    pub(crate) fn copy_before(&self, name: &str) -> Option<Before<'_>> {
        Some(Before {
            table: self.coalesced.get(name)?,
            batches: self.generation.tables.get(name)?.batches().collect(),
        })
    }

    /// Bytes coalescing its published tables copied, and shared with the snapshot before.
    pub fn copy_bytes(&self) -> CopyBytes {
        let mut bytes = CopyBytes::default();
        for t in self.coalesced.values() {
            bytes += t.copy_bytes;
        }
        bytes
    }

    /// Runs one read-only statement on this snapshot.
    pub async fn query(&self, sql: &str, limits: &QueryLimits) -> Result<QueryOutput, QueryError> {
        let start = Instant::now();
        let statement = parse_checked(sql, &limits.parse)?;
        let parse = start.elapsed();
        let mut out = self.query_statement(statement, limits).await?;
        out.phases.parse = parse;
        Ok(out)
    }

    /// Runs a statement that passed the front door (`parse_checked`). Operators reserve
    /// memory from a pool of the query's own inside the node's; the answer is read batch by
    /// batch up to the row and byte limits, and dropping the stream cancels the rest.
    pub async fn query_statement(
        &self,
        statement: DfStatement,
        limits: &QueryLimits,
    ) -> Result<QueryOutput, QueryError> {
        let mut phases = Phases::default();
        let mut lap = Lap(Instant::now());
        // Statements of one shape (`shapes`) share a kept plan.
        let mut shape = self.plans.enabled().then(|| Shape::of(&statement));
        let key_of = |shape: &Shape| {
            PlanKey::new(shape.statement(&statement), self.catalog, limits.parallel)
                .shaped(shape.parameterized())
        };
        let mut key = shape.as_ref().map(key_of);
        let mut kept = key.as_ref().and_then(|k| self.plans.get(k));
        // Its values, converted once for the kept plan's parameters.
        let mut values = Vec::new();
        if let (Some(s), Some(k)) = (&shape, &kept) {
            match s.values_for(&k.parameters) {
                Some(converted) => values = converted,
                None => {
                    // They do not fit its shape's plan (a string against a timestamp): it
                    // goes by its own text, as a statement without a shape.
                    let own = Shape::own();
                    key = Some(key_of(&own));
                    kept = key.as_ref().and_then(|k| self.plans.get(k));
                    shape = Some(own);
                }
            }
        }
        let bound = kept.and_then(|kept| {
            // A kept plan reads only the snapshot (`KeptPlan::of`).
            let tables = self.tables_used(kept.scanned.clone());
            // Kept for the other partitioning: the optimizer's choices may differ.
            if one_partition(&tables, true, limits) != kept.single_partition {
                return None;
            }
            let plan = plans::bind(&kept.optimized, &self.sources)?;
            let plan = shape.as_ref()?.apply(plan, values.clone())?;
            Some((kept, plan, tables))
        });
        // The kept plan and its values, whose physical plan may be kept too.
        let mut physical_slot = None;
        let (planned, state) = match bound {
            Some((kept, optimized, tables)) => {
                phases.plan_reused = true;
                physical_slot = Some((kept.clone(), values));
                let state = self.statement_state(kept.single_partition, true);
                phases.plan = lap.lap();
                let planned = Planned {
                    optimized,
                    schema: kept.schema.clone(),
                    shown: kept.shown.clone(),
                    scanned: kept.scanned.clone(),
                    tables,
                    single_partition: kept.single_partition,
                    // Only plans whose answers may be kept are kept.
                    cacheable: true,
                };
                (planned, state)
            }
            None => {
                let planned = self
                    .plan_new(statement, shape.zip(key), limits, &mut phases)
                    .await?;
                lap.lap();
                planned
            }
        };
        let Planned {
            optimized,
            schema,
            shown,
            tables,
            single_partition,
            cacheable,
            ..
        } = planned;
        phases.single_partition = single_partition;
        // MIN and MAX of whole tables from this snapshot's bounds (`whole_table_min_max`);
        // EXPLAIN's physical plan shows them as they run (its logical plan, as optimized).
        // A physical plan kept for the plan is kept for the bounds too: they join its values.
        let (optimized, bounds) = answer_from_bounds(optimized)?;
        if let Some((_, values)) = &mut physical_slot {
            values.extend(bounds);
        }
        // An answer that depends on the snapshot alone has aggregates that do too. EXPLAIN
        // shows the plan as planned.
        let explained = matches!(optimized, LogicalPlan::Explain(_) | LogicalPlan::Analyze(_));
        let (optimized, read_kept_aggregates) = if cacheable && !explained {
            let (plan, read) = self.aggregates.substitute(optimized)?;
            phases.aggregates_read = read;
            (plan.data, plan.transformed)
        } else {
            (optimized, false)
        };
        // The kept plan (no kept aggregates of this snapshot in it) may have its physical
        // plan kept too (`kept_physical`).
        let slot = physical_slot.filter(|_| !read_kept_aggregates && !explained);
        // Time-sliced: a plan that never waits for input still gives its thread to other
        // queries and stops soon after its deadline aborts it.
        let (physical, reused) = physical_plan(
            &optimized,
            &state,
            &self.sources,
            slot.as_ref()
                .map(|(kept, values)| (&kept.physical, values.as_slice())),
            time_sliced,
        )
        .await?;
        phases.physical_reused = reused;
        let runtime = RuntimeEnvBuilder::from_runtime_env(state.runtime_env())
            .with_memory_pool(limits.memory.for_query())
            .build_arc()?;
        let task = Arc::new(TaskContext::from(&state).with_runtime(runtime));
        phases.physical = lap.lap();
        let mut stream = execute_stream(physical, task)?;
        let mut batches = Vec::new();
        let mut rows = 0usize;
        let mut bytes = 0usize;
        while let Some(batch) = stream.next().await {
            let batch = batch?;
            rows += batch.num_rows();
            bytes += batch.get_array_memory_size();
            if bytes > limits.max_result_bytes {
                return Err(QueryError::AnswerTooLarge(limits.max_result_bytes));
            }
            batches.push(batch);
            if rows > limits.max_rows {
                break;
            }
        }
        drop(stream);
        phases.execute = lap.lap();
        let truncated = truncate(&mut batches, limits.max_rows);
        // The names the user wrote, repeated if they repeat (see `names`).
        let schema = match shown {
            Some(shown) => {
                batches = batches
                    .into_iter()
                    .map(|b| names::renamed(b, &shown))
                    .collect();
                shown
            }
            None => schema,
        };
        Ok(QueryOutput {
            schema,
            batches,
            truncated,
            tables,
            cacheable,
            phases,
        })
    }

    /// Plans a statement no kept plan serves. Met before, its plan is kept: planned from
    /// its shape if it has one (the request's values then put in), else from its text.
    async fn plan_new(
        &self,
        statement: DfStatement,
        shaped: Option<(Shape, PlanKey)>,
        limits: &QueryLimits,
        phases: &mut Phases,
    ) -> Result<(Planned, SessionState), QueryError> {
        let again = shaped
            .as_ref()
            .filter(|(_, key)| self.plans.met_before(key));
        if let Some((shape, key)) = again.filter(|(shape, _)| shape.parameterized()) {
            if let Some(planned) = self
                .plan_shape(shape, &statement, key, limits, phases)
                .await
            {
                return Ok(planned);
            }
            return self.plan_afresh(statement, limits, phases).await;
        }
        let (planned, state) = self.plan_afresh(statement, limits, phases).await?;
        if let Some((_, key)) = again.filter(|_| planned.cacheable) {
            if let Some(kept) = planned.keep(key.sql(), &self.sources, Vec::new()) {
                self.plans.put(key.clone(), kept);
            }
        }
        Ok((planned, state))
    }

    /// Plans `own`'s shape and keeps the plan, then puts `own`'s values in. None if the
    /// shape does not plan or cannot be kept (refused from then on, `PlanCache::refuse`),
    /// or if a value does not fit its parameter.
    async fn plan_shape(
        &self,
        shape: &Shape,
        own: &DfStatement,
        key: &PlanKey,
        limits: &QueryLimits,
        phases: &mut Phases,
    ) -> Option<(Planned, SessionState)> {
        let planned = self
            .plan_afresh(shape.statement(own).clone(), limits, phases)
            .await
            .ok();
        let kept = planned.as_ref().and_then(|(planned, _)| {
            let types = shape.parameter_types(&planned.optimized)?;
            planned.cacheable.then_some(())?;
            let kept = planned.keep(key.sql(), &self.sources, types.clone())?;
            Some((kept, types))
        });
        let (Some((mut planned, state)), Some((kept, types))) = (planned, kept) else {
            self.plans.refuse(key);
            return None;
        };
        self.plans.put(key.clone(), kept);
        planned.optimized = shape.apply(planned.optimized, shape.values_for(&types)?)?;
        Some((planned, state))
    }

    /// Plans `statement` on this snapshot: SQL to plan, analyzer, optimizer, each timed.
    /// Returns the state it was optimized with, for the rest of the statement's run.
    async fn plan_afresh(
        &self,
        statement: DfStatement,
        limits: &QueryLimits,
        phases: &mut Phases,
    ) -> Result<(Planned, SessionState), QueryError> {
        let mut lap = Lap(Instant::now());
        // Kept for a second planning with renamed columns if the output names clash.
        let mut retry = statement.clone();
        let plan = match plan_statement(&self.wide, statement).await {
            Err(e) if names::is_name_clash(&e.to_string()) && names::rename_clashes(&mut retry) => {
                plan_statement(&self.wide, retry).await?
            }
            other => other?,
        };
        let scanned = scanned_tables(&plan);
        let snapshot_only = self.reads_only_the_snapshot(&scanned);
        let cacheable = snapshot_only && super::answers::immutable(&plan);
        let tables = self.tables_used(scanned.clone());
        let single_partition = one_partition(&tables, snapshot_only, limits);
        let state = self.statement_state(single_partition, snapshot_only);
        let schema: SchemaRef = Arc::new(plan.schema().as_arrow().clone());
        let shown = names::user_schema(&schema);
        phases.plan = lap.lap();
        let optimized = if matches!(plan, LogicalPlan::Explain(_)) {
            // EXPLAIN collects each rule's output; DataFusion's own path does that.
            state.optimize(&plan)?
        } else {
            let analyzed =
                state
                    .analyzer()
                    .execute_and_check(plan, state.config_options(), |_, _| {})?;
            phases.analyze = lap.lap();
            state.optimizer().optimize(analyzed, &state, |_, _| {})?
        };
        phases.optimize = lap.lap();
        let planned = Planned {
            optimized,
            schema,
            shown,
            scanned,
            tables,
            single_partition,
            cacheable,
        };
        Ok((planned, state))
    }

    /// One copy of the state per statement: it carries the statement's start time
    /// (`now()`), which must not be shared with other statements. A statement that reads
    /// more than the snapshot's in-memory tables (Query History's Parquet files) pushes
    /// dynamic filters toward its scans, which the snapshot's session does not
    /// (`build::session_config`).
    fn statement_state(&self, single_partition: bool, snapshot_only: bool) -> SessionState {
        let mut state = if single_partition {
            self.narrow.clone()
        } else {
            self.wide.clone()
        };
        if !snapshot_only {
            build::set_dynamic_filters(state.config_mut(), true);
        }
        state.mark_start_execution();
        state
    }

    /// Adds a table computed when read (about this node, not the generation).
    pub fn add_node_table(&mut self, name: &str, provider: Arc<dyn TableProvider>) {
        if self.ctx.register_table(name, provider).is_ok() {
            self.node_tables.insert(name.to_string());
        }
    }

    /// Adds a schema of tables about this node (`history`, `report`): its tables are looked
    /// up when a query names them.
    pub fn add_node_schema(&mut self, name: &str, provider: Arc<dyn SchemaProvider>) {
        let state = self.ctx.state();
        let catalog = state.config_options().catalog.default_catalog.clone();
        match self.ctx.catalog(&catalog) {
            Some(c) => {
                if let Err(e) = c.register_schema(name, provider) {
                    tracing::error!(schema = name, error = %e, "cannot register a schema");
                }
            }
            None => tracing::error!(schema = name, "no default catalog to register a schema in"),
        }
    }

    /// The tables of the node schema `schema` (`history`, `report`) and their columns.
    pub async fn schema_tables(&self, schema: &str) -> Vec<(String, SchemaRef)> {
        let state = self.ctx.state();
        let catalog = &state.config_options().catalog.default_catalog;
        let Some(provider) = self.ctx.catalog(catalog).and_then(|c| c.schema(schema)) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for name in provider.table_names() {
            if let Ok(Some(t)) = provider.table(&name).await {
                out.push((name, t.schema()));
            }
        }
        out
    }

    /// The SQL of every view, by name.
    pub fn view_sql(&self) -> BTreeMap<String, String> {
        self.view_sql.clone()
    }

    /// Every table a client can query, with its origin, size and sources.
    pub fn tables(&self) -> Vec<TableUse> {
        let mut out = self.published.clone();
        for (name, t) in &self.statics.tables {
            if !self.generation.tables.contains_key(name) {
                out.push(TableUse {
                    name: name.clone(),
                    origin: Origin::Static,
                    rows: Some(t.batch.num_rows()),
                    sources: 1,
                    oldest_publish: Some(t.loaded_at),
                    newest_publish: Some(t.loaded_at),
                });
            }
        }
        for name in &self.node_tables {
            out.push(TableUse {
                name: name.clone(),
                origin: Origin::Node,
                rows: None,
                sources: 1,
                oldest_publish: None,
                newest_publish: None,
            });
        }
        for (name, v) in &self.views {
            out.push(TableUse {
                name: name.clone(),
                origin: Origin::View,
                rows: v.cached_rows(),
                sources: 0,
                oldest_publish: None,
                newest_publish: None,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Columns of a table (name, Arrow type) for the console and `GET /tables`.
    pub async fn columns(&self, table: &str) -> Option<SchemaRef> {
        self.ctx
            .table_provider(table)
            .await
            .ok()
            .map(|p| p.schema())
    }

    /// (view, computations in this generation) for every view.
    pub fn view_computations(&self) -> Vec<(String, u64)> {
        self.views
            .iter()
            .map(|(n, v)| {
                (
                    n.clone(),
                    v.stats
                        .computations
                        .load(std::sync::atomic::Ordering::Relaxed),
                )
            })
            .collect()
    }

    /// Whether every table a plan scans (`scanned`) is the generation's, static or a view (not one
    /// computed when read: the node's own tables, history).
    fn reads_only_the_snapshot(&self, scanned: &BTreeSet<String>) -> bool {
        scanned.iter().all(|t| {
            self.generation.tables.contains_key(t)
                || self.statics.tables.contains_key(t)
                || self.views.contains_key(t)
        })
    }

    /// The tables a plan reads (`scanned`), views expanded to what they read, each once.
    fn tables_used(&self, scanned: BTreeSet<String>) -> Vec<TableUse> {
        let mut names = BTreeSet::new();
        let mut stack: Vec<String> = scanned.into_iter().collect();
        while let Some(name) = stack.pop() {
            if names.insert(name.clone()) {
                if let Some(v) = self.views.get(&name) {
                    stack.extend(v.depends_on.iter().cloned());
                }
            }
        }
        let all = self.tables();
        all.into_iter()
            .filter(|t| names.contains(&t.name))
            .collect()
    }
}

/// Parses, checks (`front_door`) and plans one statement.
pub(super) async fn plan_read_only(
    ctx: &SessionContext,
    sql: &str,
    limits: &ParseLimits,
) -> Result<LogicalPlan, QueryError> {
    plan_statement(&ctx.state(), parse_checked(sql, limits)?).await
}

/// Plans a statement that passed the front door.
async fn plan_statement(
    state: &SessionState,
    statement: DfStatement,
) -> Result<LogicalPlan, QueryError> {
    let plan = state.statement_to_plan(statement).await?;
    // Defence in depth: the planner agrees that nothing here writes or changes state.
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
        .verify_plan(&plan)
        .map_err(|e| QueryError::NotReadOnly(e.message().to_string()))?;
    Ok(plan)
}

/// Names of the tables a plan scans (subqueries included), information_schema excluded;
/// tables of the history schemas keep their schema (`history.sys` is not `sys`).
pub(super) fn scanned_tables(plan: &LogicalPlan) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let _ = plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node {
            let (schema, table) = (scan.table_name.schema(), scan.table_name.table());
            if schema != Some("information_schema") {
                names.insert(
                    crate::history::qualified_name(schema, table)
                        .unwrap_or_else(|| table.to_string()),
                );
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
    names
}

/// Whether a statement reading `tables` (`Snapshot::tables_used`; `snapshot_only` if
/// they are all the snapshot's) runs on one partition. Small inputs do, and so does
/// everything while other queries run (`QueryLimits::parallel`). Sizes are known for the
/// generation's and the static tables (a view is counted by the tables it reads); a
/// statement over the node's own tables or history (sizes unknown) keeps every partition
/// when alone.
fn one_partition(tables: &[TableUse], snapshot_only: bool, limits: &QueryLimits) -> bool {
    if !limits.parallel {
        return true;
    }
    if !snapshot_only {
        return false;
    }
    let rows: usize = tables
        .iter()
        .filter(|t| t.origin != Origin::View)
        .filter_map(|t| t.rows)
        .sum();
    rows <= SINGLE_PARTITION_ROWS
}

/// A statement's optimized plan and what the run needs to know of it.
struct Planned {
    optimized: LogicalPlan,
    schema: SchemaRef,
    shown: Option<SchemaRef>,
    scanned: BTreeSet<String>,
    /// What it reads, views followed to their tables (`Snapshot::tables_used`).
    tables: Vec<TableUse>,
    single_partition: bool,
    /// Its answer may be kept (`answers`), and so may its plan (`plans`).
    cacheable: bool,
}

impl Planned {
    /// What to keep of it for later snapshots (`KeptPlan::of`).
    fn keep(
        &self,
        sql: &str,
        sources: &HashMap<String, Arc<dyn TableSource>>,
        parameters: Vec<Option<DataType>>,
    ) -> Option<KeptPlan> {
        KeptPlan::of(
            sql,
            &self.optimized,
            (self.schema.clone(), self.shown.clone()),
            &self.scanned,
            (self.single_partition, parameters),
            sources,
        )
    }
}

/// The time since the last lap.
struct Lap(Instant);

impl Lap {
    fn lap(&mut self) -> Duration {
        let now = Instant::now();
        let took = now - self.0;
        self.0 = now;
        took
    }
}

/// Keeps at most `max` rows; true if rows were cut.
fn truncate(batches: &mut Vec<RecordBatch>, max: usize) -> bool {
    let mut seen = 0usize;
    let mut cut = false;
    batches.retain_mut(|b| {
        if seen >= max {
            cut |= b.num_rows() > 0;
            return false;
        }
        let take = (max - seen).min(b.num_rows());
        if take < b.num_rows() {
            *b = b.slice(0, take);
            cut = true;
        }
        seen += take;
        true
    });
    cut
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use datafusion::arrow::array::{Array, Int64Array, TimestampNanosecondArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::catalog::MemTable;

    /// `sql` run on `ctx`, its answer as a text table (`pretty_format_batches`): how the
    /// rules' tests compare answers.
    pub(in crate::sql) async fn answer_text(
        ctx: &datafusion::prelude::SessionContext,
        sql: &str,
    ) -> datafusion::error::Result<String> {
        let batches = ctx.sql(sql).await?.collect().await?;
        Ok(datafusion::arrow::util::pretty::pretty_format_batches(&batches)?.to_string())
    }

    /// One Int64 column `n`, 0 to `rows`.
    pub(in crate::sql) fn batch(rows: i64) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
        RecordBatch::try_new(
            schema,
            vec![Arc::new(Int64Array::from_iter_values(0..rows))],
        )
        .expect("batch")
    }

    /// A SQL node's snapshot (tables coalesced at build and keyed, `TableCopies::Eager`) of
    /// the generation `builder` seals, keeping plans in `plans`.
    pub(in crate::sql) async fn sql_node_snapshot(
        builder: crate::generation::GenerationBuilder,
        plans: Arc<PlanCache>,
    ) -> Snapshot {
        sql_node_snapshot_with(
            builder,
            BuildOptions {
                plans,
                ..BuildOptions::default()
            },
        )
        .await
    }

    /// [`sql_node_snapshot`] built with `options` (its `copies` set to `Eager`).
    pub(in crate::sql) async fn sql_node_snapshot_with(
        builder: crate::generation::GenerationBuilder,
        options: BuildOptions,
    ) -> Snapshot {
        let options = BuildOptions {
            copies: TableCopies::Eager,
            ..options
        };
        Snapshot::build_with(
            builder.seal(1, 1, SystemTime::now()),
            Arc::new(StaticCatalog::default()),
            &crate::sql::views::ViewsFile::default(),
            2,
            DEFAULT_MAX_RESULT_BYTES,
            Arc::new(std::sync::atomic::AtomicU64::new(0)),
            options,
        )
        .await
    }

    #[tokio::test]
    async fn a_snapshot_shares_unchanged_columns_with_the_one_served_before() {
        use crate::generation::{GenerationBuilder, Part};
        use datafusion::arrow::array::{ArrayRef, StringArray};
        let schema = Arc::new(Schema::new(vec![
            Field::new("machine_ip", DataType::Utf8, false),
            Field::new("v", DataType::Int64, false),
        ]));
        let part = |ip: ArrayRef, v: i64| {
            let batch = RecordBatch::try_new(
                schema.clone(),
                vec![ip, Arc::new(Int64Array::from(vec![v]))],
            )
            .expect("batch");
            Arc::new(Part::new(format!("{v}"), batch, vec![]))
        };
        let ip = |i: u8| -> ArrayRef { Arc::new(StringArray::from(vec![format!("10.0.0.{i}")])) };
        let parts: Vec<Arc<Part>> = (0..3).map(|i| part(ip(i), i64::from(i))).collect();
        let mut builder = GenerationBuilder::default();
        for p in &parts {
            builder.add("t", p.clone()).expect("part");
        }
        let first = Arc::new(sql_node_snapshot_with(builder, BuildOptions::default()).await);
        // The second machine's value moves (its address is the same array, as a patch
        // leaves it); the other parts are the very ones of the first generation.
        let mut builder = GenerationBuilder::default();
        builder.add("t", parts[0].clone()).expect("part");
        builder
            .add("t", part(parts[1].batch.column(0).clone(), 10))
            .expect("part");
        builder.add("t", parts[2].clone()).expect("part");
        let options = BuildOptions {
            before: Some(first.clone()),
            ..BuildOptions::default()
        };
        let second = sql_node_snapshot_with(builder, options).await;
        let copy = |s: &Snapshot| s.coalesced.get("t").expect("copy").copied_batches();
        let (was, now) = (copy(&first), copy(&second));
        assert_eq!((was.len(), now.len()), (1, 1));
        let same = |c: usize| {
            std::ptr::addr_eq(Arc::as_ptr(was[0].column(c)), Arc::as_ptr(now[0].column(c)))
        };
        assert!(same(0), "the addresses are shared");
        assert!(!same(1), "the values are copied anew");
        let bytes = second.copy_bytes();
        assert!(bytes.shared > 0 && bytes.copied > 0, "{bytes:?}");
        assert_eq!(first.copy_bytes().shared, 0, "nothing before the first");
        let out = second
            .query(
                "SELECT v FROM t ORDER BY machine_ip",
                &QueryLimits::default(),
            )
            .await
            .expect("answer");
        let v = out.batches[0]
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .expect("v")
            .values()
            .to_vec();
        assert_eq!(v, vec![0, 10, 2]);
    }

    #[tokio::test]
    async fn small_statements_run_on_one_partition_and_each_has_its_own_start_time() {
        let mut snap = Snapshot::empty_for_tests().await;
        let limits = QueryLimits::default();
        let out = snap.query("SELECT 1", &limits).await.expect("answer");
        assert!(out.phases.single_partition);
        let now = |out: &QueryOutput| {
            out.batches[0]
                .column(0)
                .as_any()
                .downcast_ref::<TimestampNanosecondArray>()
                .map(|a| a.value(0))
        };
        let first = snap.query("SELECT now()", &limits).await.expect("now");
        std::thread::sleep(std::time::Duration::from_millis(5));
        let second = snap.query("SELECT now()", &limits).await.expect("now");
        assert!(now(&second) > now(&first), "now() is the statement's start");
        // A table of the node's own (size unknown) keeps every partition.
        let mem = MemTable::try_new(batch(3).schema(), vec![vec![batch(3)]]).expect("table");
        snap.add_node_table("query_test", Arc::new(mem));
        let out = snap
            .query("SELECT COUNT(*) FROM query_test", &limits)
            .await
            .expect("answer");
        assert!(!out.phases.single_partition);
        assert_eq!(out.rows(), 1);
        // While other queries run, the same statement takes one partition, same answer.
        let busy = QueryLimits {
            parallel: false,
            ..QueryLimits::default()
        };
        let out = snap
            .query("SELECT COUNT(*) FROM query_test", &busy)
            .await
            .expect("answer");
        assert!(out.phases.single_partition);
        assert_eq!(out.rows(), 1);
    }
}
