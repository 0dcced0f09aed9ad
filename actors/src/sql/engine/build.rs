//! Building a snapshot: the session every statement of a generation is planned in, its
//! published and static tables (coalesced, and keyed by machine where they can be:
//! `machine_keys`) and its views, planned in rounds.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use datafusion::catalog::TableProvider;
use datafusion::datasource::provider_as_source;
use datafusion::execution::context::{SessionConfig, SessionContext};
use datafusion::execution::SessionStateBuilder;
use datafusion::logical_expr::TableSource;
use datafusion::optimizer::{Analyzer, AnalyzerRule};

use super::{Origin, Snapshot, TableUse, SQL_DIALECT};
use crate::generation::Generation;
use crate::sql::casts::RoundFloatToInteger;
use crate::sql::coalesced::CoalescedTable;
use crate::sql::division::NullOnDivideByZero;
use crate::sql::eager_aggregate::EagerAggregate;
use crate::sql::guarded::guard_functions;
use crate::sql::kept_aggregates::{
    KeptAggregatePlanner, KeptAggregates, DEFAULT_AGGREGATE_CACHE_MB,
};
use crate::sql::machine_keys::{keyed_name, KeyedTables, Keying, MachineKeyJoins};
use crate::sql::physical_rules;
use crate::sql::plans::{self, PlanCache, DEFAULT_PLAN_CACHE_ENTRIES};
use crate::sql::spread::{partitioned, partitioned_after, SpreadTable};
use crate::sql::subquery::DecorrelateScalarAggregates;
use crate::sql::utc_date_trunc::UtcDateTrunc;
use crate::sql::views::{ViewProvider, ViewsFile};
use crate::static_tables::StaticCatalog;

/// How a snapshot is built, beyond what it holds.
#[derive(Clone)]
pub struct BuildOptions {
    pub copies: TableCopies,
    /// Optimized plans of statements and views met before, on this snapshot or an earlier
    /// one: the node's, shared by its snapshots (`[sql] plan_cache_entries`).
    pub plans: Arc<PlanCache>,
    /// Bytes of aggregates' results each snapshot keeps (`[sql] aggregate_cache_mb`).
    pub aggregate_cache_bytes: usize,
    /// The snapshot served while this one is built, whose copies of published tables this
    /// one's may share columns with (`spread::Before`). Held only while building.
    pub before: Option<Arc<Snapshot>>,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            copies: TableCopies::Eager,
            plans: Arc::new(PlanCache::new(DEFAULT_PLAN_CACHE_ENTRIES)),
            aggregate_cache_bytes: DEFAULT_AGGREGATE_CACHE_MB << 20,
            before: None,
        }
    }
}

/// When a snapshot makes the coalesced copy of a published table (see `partitioned`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TableCopies {
    /// At build: no query pays for it (a SQL node).
    #[default]
    Eager,
    /// At a table's first scan: a node that rarely answers holds one copy, not two.
    OnFirstScan,
}

impl Snapshot {
    /// Registers the generation's tables, the static tables and the views. Name clashes are
    /// resolved published > static > view, and the loser is reported as an error.
    pub async fn build(
        generation: Arc<Generation>,
        statics: Arc<StaticCatalog>,
        views: &ViewsFile,
        partitions: usize,
        max_value_bytes: usize,
        view_computations_total: Arc<AtomicU64>,
    ) -> Snapshot {
        Self::build_with(
            generation,
            statics,
            views,
            partitions,
            max_value_bytes,
            view_computations_total,
            BuildOptions::default(),
        )
        .await
    }

    /// A snapshot of an empty generation, no static tables and no views (unit tests).
    #[cfg(test)]
    pub(crate) async fn empty_for_tests() -> Snapshot {
        let generation = crate::generation::GenerationBuilder::default().seal(
            1,
            1,
            std::time::SystemTime::now(),
        );
        Snapshot::build(
            generation,
            Arc::default(),
            &ViewsFile::default(),
            1,
            super::DEFAULT_MAX_RESULT_BYTES,
            Arc::new(AtomicU64::new(0)),
        )
        .await
    }

    /// [`Snapshot::build`], coalescing published tables when built or on first scan, and
    /// keeping plans where `options` says.
    pub async fn build_with(
        generation: Arc<Generation>,
        statics: Arc<StaticCatalog>,
        views: &ViewsFile,
        partitions: usize,
        max_value_bytes: usize,
        view_computations_total: Arc<AtomicU64>,
        options: BuildOptions,
    ) -> Snapshot {
        let BuildOptions {
            copies,
            plans,
            aggregate_cache_bytes,
            before,
        } = options;
        let keyed = KeyedTables::default();
        let rows = table_rows(&generation, &statics);
        let ctx = new_context_sized(session_config(partitions), rows, keyed.clone());
        guard_functions(&ctx, max_value_bytes);
        let Tables {
            taken,
            mut sources,
            coalesced,
        } = register_tables(
            &ctx,
            (&generation, &statics),
            (copies, before.as_deref()),
            partitions,
            &keyed,
        );
        drop(before);
        let catalog = plans::catalog_fingerprint(
            generation
                .tables
                .iter()
                .map(|(n, t)| (n.as_str(), &t.schema, t.rows()))
                .chain(
                    statics
                        .tables
                        .iter()
                        .map(|(n, t)| (n.as_str(), t.batch.schema_ref(), t.batch.num_rows())),
                ),
            views.view.iter().map(|v| (v.name.as_str(), v.sql.as_str())),
            &[partitions, max_value_bytes, copies as usize],
        );
        let scope = ViewScope {
            ctx: &ctx,
            plans: &plans,
            catalog,
            sources: &mut sources,
            total: &view_computations_total,
        };
        let (providers, view_errors) = register_views(scope, views, &taken, generation.id).await;
        let view_sql = views
            .view
            .iter()
            .map(|v| (v.name.clone(), v.sql.clone()))
            .collect();
        let published = published_uses(&generation);
        let wide = ctx.state();
        let mut narrow = wide.clone();
        narrow
            .config_mut()
            .options_mut()
            .execution
            .target_partitions = 1;
        Snapshot {
            generation,
            statics,
            view_sql,
            views: providers,
            view_errors,
            views_file_error: None,
            published,
            node_tables: BTreeSet::new(),
            descriptions: Arc::default(),
            ctx,
            wide,
            narrow,
            sources,
            catalog,
            plans,
            aggregates: KeptAggregates::new(aggregate_cache_bytes),
            coalesced,
        }
    }
}

/// The session's settings: the dialect, and where DataFusion's defaults do not suit.
fn session_config(partitions: usize) -> SessionConfig {
    let mut config = SessionConfig::new()
        .with_information_schema(true)
        .with_target_partitions(partitions.max(1));
    // PostgreSQL's dialect: the generic one reserves words operators use as column
    // names (`cluster`), and clients will later speak the Postgres wire protocol.
    config.options_mut().sql_parser.dialect = SQL_DIALECT;
    // TopK aggregation reserves a hash table of LIMIT x 10 entries up front: a query
    // ending `GROUP BY g ORDER BY g LIMIT 100000000` would reserve tens of GB (found by
    // the fuzzer, FUZZING.md). Without it the same queries sort and cut.
    config.options_mut().optimizer.enable_topk_aggregation = false;
    // A heap of k rows per window partition for `ROW_NUMBER() ... <= k` (`window_topn`).
    config.options_mut().optimizer.enable_window_topn = true;
    // A join whose smaller side is at most this large builds one hash table that every
    // partition probes, rather than hash-splitting both sides: DataFusion's 1 MiB put
    // `sys` (70,000 machines, 2.7 MB) on the split side, and splitting the 840,000
    // process rows it joins cost more than it saved (`BENCH_EXPLAIN=all cargo bench
    // --bench sql` at 70,000 machines, median of 7, the threshold set by a scratch
    // switch not kept: paper_dns_rss 15.3 -> 13.0 ms, report_top_rss_per_cluster
    // 32.6 -> 26.9 ms). Its row limit (128k rows) stays.
    config
        .options_mut()
        .optimizer
        .hash_join_single_partition_threshold = 32 << 20;
    // No dynamic filters (a hash join's build-side bounds, a top-k's threshold, pushed
    // toward the scans): they serve file scans, never in-memory batches, and a plan
    // holding one cannot be kept (`kept_physical`). A statement that reads Query History's
    // Parquet files turns them on (`Snapshot::statement_state`).
    set_dynamic_filters(&mut config, false);
    config
}

/// Dynamic filter pushdown on or off (all three kinds: DataFusion's umbrella option sets
/// them only when set by name).
pub(super) fn set_dynamic_filters(config: &mut SessionConfig, on: bool) {
    let optimizer = &mut config.options_mut().optimizer;
    optimizer.enable_dynamic_filter_pushdown = on;
    optimizer.enable_join_dynamic_filter_pushdown = on;
    optimizer.enable_topk_dynamic_filter_pushdown = on;
    optimizer.enable_aggregate_dynamic_filter_pushdown = on;
}

/// Row counts for the optimizer's choice to aggregate before small joins: published
/// tables, then static ones (a published table hides a static one of its name).
fn table_rows(generation: &Generation, statics: &StaticCatalog) -> HashMap<String, usize> {
    let mut rows: HashMap<String, usize> = statics
        .tables
        .iter()
        .map(|(name, t)| (name.clone(), t.batch.num_rows()))
        .collect();
    rows.extend(generation.tables.iter().map(|(n, t)| (n.clone(), t.rows())));
    rows
}

/// The tables registered: their names, and the sources plans bind to (keyed copies
/// included, under `keyed_name`).
#[derive(Default)]
struct Tables {
    taken: BTreeSet<String>,
    sources: HashMap<String, Arc<dyn TableSource>>,
    /// The published tables coalesced at build (`Snapshot::coalesced`).
    coalesced: HashMap<String, Arc<SpreadTable>>,
}

impl Tables {
    /// Registers `provider` as `name`; false if the context refused it.
    fn register(
        &mut self,
        ctx: &SessionContext,
        name: &str,
        provider: Arc<dyn TableProvider>,
    ) -> bool {
        if ctx.register_table(name, provider.clone()).is_err() {
            return false;
        }
        self.sources
            .insert(name.to_string(), provider_as_source(provider));
        self.taken.insert(name.to_string());
        true
    }

    /// Registers a coalesced table, and its keyed copy if `keying` and it has one.
    fn register_spread(
        &mut self,
        ctx: &SessionContext,
        name: &str,
        spread: Arc<SpreadTable>,
        keying: Option<&mut Keying>,
    ) -> bool {
        let keyed = keying.and_then(|k| k.add(&spread));
        let registered = self.register(ctx, name, spread);
        if registered {
            if let Some(keyed) = keyed {
                self.sources.insert(keyed_name(name), keyed);
            }
        }
        registered
    }
}

/// Registers the generation's tables, coalesced now (sharing columns with `before`'s
/// copies where the inputs are the same) or on first scan (`copies`), then the static
/// tables no published one hides; the keyed copies of those coalesced now go to `keyed`.
fn register_tables(
    ctx: &SessionContext,
    (generation, statics): (&Arc<Generation>, &StaticCatalog),
    (copies, before): (TableCopies, Option<&Snapshot>),
    partitions: usize,
    keyed: &KeyedTables,
) -> Tables {
    let mut tables = Tables::default();
    // Keyed copies only where tables are coalesced at build: a SQL node.
    let mut keying = (copies == TableCopies::Eager).then(Keying::default);
    for (name, table) in &generation.tables {
        if copies == TableCopies::OnFirstScan {
            if let Some(lazy) = CoalescedTable::new(generation.clone(), name.clone(), partitions) {
                tables.register(ctx, name, Arc::new(lazy));
            }
            continue;
        }
        let batches: Vec<_> = table.batches().collect();
        let old = before.and_then(|b| b.copy_before(name));
        match partitioned_after(
            table.schema.clone(),
            &batches,
            partitions,
            table.rows(),
            old.as_ref(),
        ) {
            Ok(spread) => {
                let spread = Arc::new(spread);
                if tables.register_spread(ctx, name, spread.clone(), keying.as_mut()) {
                    tables.coalesced.insert(name.clone(), spread);
                }
            }
            Err(e) => {
                tracing::error!(table = %name, error = %e, "cannot register published table")
            }
        }
    }
    for (name, table) in &statics.tables {
        if tables.taken.contains(name) {
            tracing::warn!(table = %name, "static table shadowed by a published table of the same name");
            continue;
        }
        // Static tables too are spread by size (a large Parquet file is one batch).
        let batch = &table.batch;
        match partitioned(
            batch.schema(),
            std::iter::once(batch),
            partitions,
            batch.num_rows(),
        ) {
            Ok(spread) => {
                tables.register_spread(ctx, name, Arc::new(spread), keying.as_mut());
            }
            Err(e) => {
                tracing::error!(table = %name, error = %e, "cannot register static table")
            }
        }
    }
    if keying.is_some() {
        let _ = keyed.set(tables.sources.clone());
    }
    tables
}

/// What `Snapshot::tables` says of each published table.
fn published_uses(generation: &Generation) -> Vec<TableUse> {
    generation
        .tables
        .iter()
        .map(|(name, t)| TableUse {
            name: name.clone(),
            origin: Origin::Published,
            rows: Some(t.rows()),
            sources: t.source_count(),
            oldest_publish: t.oldest_publish(),
            newest_publish: t.newest_publish(),
        })
        .collect()
}

/// What views are planned against while a snapshot is built: its context, the plans kept
/// (`plans`) and the tables and views registered so far.
struct ViewScope<'a> {
    ctx: &'a SessionContext,
    plans: &'a PlanCache,
    catalog: u64,
    sources: &'a mut HashMap<String, Arc<dyn TableSource>>,
    total: &'a Arc<AtomicU64>,
}

/// Registers every view whose name no table has taken, in rounds (views may use views)
/// until no further view can be planned. Returns the views and, for the others, why not;
/// a view waiting for a table this generation does not hold is left out of the errors.
async fn register_views(
    scope: ViewScope<'_>,
    views: &ViewsFile,
    taken: &BTreeSet<String>,
    generation: u64,
) -> (
    BTreeMap<String, Arc<ViewProvider>>,
    BTreeMap<String, String>,
) {
    // Views may use views: plan in rounds until no further view can be planned.
    let mut providers = BTreeMap::new();
    let mut view_errors = BTreeMap::new();
    let mut pending: Vec<_> = Vec::new();
    for v in &views.view {
        if taken.contains(&v.name) {
            view_errors.insert(
                v.name.clone(),
                "a published or static table has this name".to_string(),
            );
        } else {
            pending.push(v);
        }
    }
    loop {
        let mut progressed = false;
        let mut still = Vec::new();
        for v in pending {
            match plans::view_plan(scope.ctx, v, scope.plans, scope.catalog, scope.sources).await {
                Ok(planned) => {
                    let provider = Arc::new(ViewProvider::new(
                        v.name.clone(),
                        planned,
                        scope.total.clone(),
                    ));
                    match scope.ctx.register_table(v.name.as_str(), provider.clone()) {
                        Ok(_) => {
                            scope
                                .sources
                                .insert(v.name.clone(), provider_as_source(provider.clone()));
                            providers.insert(v.name.clone(), provider);
                            view_errors.remove(&v.name);
                            progressed = true;
                        }
                        Err(e) => {
                            view_errors.insert(v.name.clone(), e.to_string());
                        }
                    }
                }
                Err(e) => {
                    view_errors.insert(v.name.clone(), e.to_string());
                    still.push(v);
                }
            }
        }
        pending = still;
        if pending.is_empty() || !progressed {
            break;
        }
    }
    // A view over a table this generation does not hold (not requested yet, or not
    // collected at this tier) is waiting, not broken: it is left out of the errors.
    view_errors.retain(|name, err| {
        let waiting = err.contains("not found");
        if waiting {
            tracing::debug!(view = %name, error = %err, generation, "view waits for its tables");
        } else {
            tracing::warn!(view = %name, error = %err, generation, "view unavailable in this generation");
        }
        !waiting
    });
    (providers, view_errors)
}

/// [`new_context_sized`] knowing no table's rows (no aggregate goes below a join) and no
/// keyed table.
#[cfg(test)]
pub(crate) fn new_context(config: SessionConfig) -> SessionContext {
    new_context_sized(config, HashMap::new(), KeyedTables::default())
}

/// A context whose analyzer first makes division by zero NULL (see `division`), then runs
/// DataFusion's own rules, whose optimizer truncates UTC timestamps fast
/// (`utc_date_trunc`), aggregates before joins with small tables (`eager_aggregate`,
/// knowing each table's `rows`) and joins `keyed` tables on machine ids (`machine_keys`),
/// and whose physical rules are ours too (`physical_rules`).
pub(crate) fn new_context_sized(
    config: SessionConfig,
    rows: HashMap<String, usize>,
    keyed: KeyedTables,
) -> SessionContext {
    let mut rules: Vec<Arc<dyn AnalyzerRule + Send + Sync>> = vec![Arc::new(NullOnDivideByZero)];
    rules.extend(Analyzer::new().rules);
    // After DataFusion's rules: it sees coerced types, and runs before the optimizer's own
    // decorrelation, which leaves equality correlations alone.
    rules.push(Arc::new(DecorrelateScalarAggregates));
    rules.push(Arc::new(RoundFloatToInteger));
    let state = SessionStateBuilder::new()
        .with_config(config)
        .with_default_features()
        .with_analyzer_rules(rules)
        .with_optimizer_rule(Arc::new(UtcDateTrunc))
        .with_optimizer_rule(Arc::new(EagerAggregate::new(rows)))
        // Last: it rewrites the joins as the rules before it left them.
        .with_optimizer_rule(Arc::new(MachineKeyJoins::new(keyed)))
        .with_physical_optimizer_rules(physical_rules::all())
        .with_query_planner(Arc::new(KeptAggregatePlanner))
        .build();
    SessionContext::new_with_state(state)
}
