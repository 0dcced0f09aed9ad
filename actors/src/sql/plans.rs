//! Plans kept from one snapshot to the next. Alerts, reports and dashboards send the same
//! statements every generation, and at a thousand machines turning a statement into an
//! optimized logical plan (SQL to plan, analyzer, optimizer) is close to half its time
//! (BENCHMARKS.md, "Where a statement's time goes"). A statement met again on a snapshot
//! with the same catalog (`catalog_fingerprint`: every table's name and columns, its size
//! class, every view's SQL) takes the optimized plan kept for it; only physical planning
//! and execution run again.
//!
//! A kept plan holds no data: its table scans point at schema-only sources, and each use
//! binds them to the snapshot's own tables and views by name (`bind`). A plan that cannot
//! be bound in full is planned afresh. Only plans whose answer would be kept too are kept
//! (`QueryOutput::cacheable`): nothing computed when read, and no function that is not
//! `Immutable` (the optimizer folds `now()` into a constant). A plan is kept the second
//! time its statement is met (`PlanCache::met_before`): statements sent once, such as a mix
//! of ad-hoc queries, then cost only hashing their text, and do not push out the plans of
//! statements that come back every generation. Statements that differ only in the
//! constants they filter by and their row limit share one plan, kept for their shape
//! (`shapes`). Bounded by entries (`[sql] plan_cache_entries`), least recently used
//! first out.

use std::collections::{BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::execution::context::SessionContext;
use datafusion::logical_expr::{Expr, LogicalPlan, LogicalTableSource, TableScan, TableSource};
use datafusion::sql::parser::Statement as DfStatement;

use super::engine::{plan_read_only, scanned_tables};
use super::front_door::ParseLimits;
use super::kept_physical::Slot;
use super::machine_keys::{provider_of, registered};
use super::met_once::MetOnce;
use super::views::{KeptView, ViewDef, ViewPlan};
use crate::error::QueryError;

/// A statement (its canonical text) on a catalog (`catalog_fingerprint`), alone on the
/// node or not (`QueryLimits::parallel`: a busy node plans everything on one partition).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PlanKey {
    sql: String,
    catalog: u64,
    parallel: bool,
    /// The text is a statement's shape (`shapes`), not a statement with placeholders of
    /// its own.
    shape: bool,
}

impl PlanKey {
    pub fn new(statement: &DfStatement, catalog: u64, parallel: bool) -> PlanKey {
        PlanKey {
            sql: statement.to_string(),
            catalog,
            parallel,
            shape: false,
        }
    }

    /// The key of a statement's shape if `shape`.
    pub fn shaped(self, shape: bool) -> PlanKey {
        PlanKey { shape, ..self }
    }

    /// The statement's canonical text.
    pub fn sql(&self) -> &str {
        &self.sql
    }

    /// A view's plan, by its name and SQL.
    pub fn view(name: &str, sql: &str, catalog: u64) -> PlanKey {
        PlanKey {
            sql: format!("CREATE VIEW {name} AS {sql}"),
            catalog,
            parallel: true,
            shape: false,
        }
    }
}

/// What planning a statement produced, without the data it was planned on.
#[derive(Debug)]
pub struct KeptPlan {
    /// Optimized, its scans on schema-only sources (`unbind`).
    pub optimized: LogicalPlan,
    /// The plan's output schema, and the names shown to the user if they differ.
    pub schema: SchemaRef,
    pub shown: Option<SchemaRef>,
    /// The tables it reads (`engine::scanned_tables`).
    pub scanned: BTreeSet<String>,
    /// Whether it was optimized for one partition.
    pub single_partition: bool,
    /// The types of its parameters, `$1` first, when planned from a statement's shape
    /// (`shapes`); None for one the optimizer removed.
    pub parameters: Vec<Option<DataType>>,
    /// Its physical plan for the last parameter values met (`kept_physical`).
    pub physical: Slot,
}

/// The most bytes of statement text and literals a kept plan may hold: the optimizer folds
/// functions of literals into constants (`repeat('y', 20000000)` is 20 MB), and the cache
/// is bounded by entries. Larger plans are planned every time.
pub const MAX_KEPT_PLAN_BYTES: usize = 64 << 10;

impl KeptPlan {
    /// What to keep of an optimized plan of `sql` (with its output schema and the names
    /// shown): only one whose every scan reads this snapshot's own table or view of that
    /// name (`sources`: not `information_schema`, nor a recursive query's work table or a
    /// table function that shares a table's name and columns), that is not an EXPLAIN, and
    /// whose text and literals take at most `MAX_KEPT_PLAN_BYTES`. Binding it to another
    /// snapshot with the same catalog then gives the plan this one would make.
    pub fn of(
        sql: &str,
        optimized: &LogicalPlan,
        (schema, shown): (SchemaRef, Option<SchemaRef>),
        scanned: &BTreeSet<String>,
        (single_partition, parameters): (bool, Vec<Option<DataType>>),
        sources: &HashMap<String, Arc<dyn TableSource>>,
    ) -> Option<KeptPlan> {
        if matches!(
            optimized,
            LogicalPlan::Explain(_) | LogicalPlan::Analyze(_) | LogicalPlan::DescribeTable(_)
        ) {
            return None;
        }
        if !scans_only(optimized, sources)
            || sql.len() + literal_bytes(optimized) > MAX_KEPT_PLAN_BYTES
        {
            return None;
        }
        Some(KeptPlan {
            optimized: unbind(optimized.clone())?,
            schema,
            shown,
            scanned: scanned.clone(),
            single_partition,
            parameters,
            physical: Slot::default(),
        })
    }
}

pub struct PlanCache {
    capacity: usize,
    inner: Mutex<Lru>,
}

#[derive(Default)]
struct Lru {
    plans: HashMap<PlanKey, (Arc<KeptPlan>, u64)>,
    /// Bumped by every use; an entry's stamp is its last use.
    clock: u64,
    /// Keys met once (`met_before`), and those not to keep (`refuse`); emptied when it
    /// holds `SEEN_PER_ENTRY` times the capacity.
    seen: MetOnce,
}

/// Keys remembered as met once, per plan kept.
const SEEN_PER_ENTRY: usize = 8;

/// The default of `[sql] plan_cache_entries`, and the cache of a snapshot built without
/// the node's (`BuildOptions::default`).
pub const DEFAULT_PLAN_CACHE_ENTRIES: usize = 512;

impl PlanCache {
    /// At most `capacity` plans; 0 turns the cache off.
    pub fn new(capacity: usize) -> PlanCache {
        PlanCache {
            capacity,
            inner: Mutex::default(),
        }
    }

    pub fn enabled(&self) -> bool {
        self.capacity > 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Lru> {
        // Every critical section leaves the map consistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, key: &PlanKey) -> Option<Arc<KeptPlan>> {
        if !self.enabled() {
            return None;
        }
        let mut lru = self.lock();
        lru.clock += 1;
        let now = lru.clock;
        lru.plans.get_mut(key).map(|(plan, used)| {
            *used = now;
            plan.clone()
        })
    }

    /// Whether `key` was met before (its plan is then worth keeping) and not refused;
    /// remembers it if not met.
    pub fn met_before(&self, key: &PlanKey) -> bool {
        self.remember(key, false)
    }

    /// Remembers that `key`'s plan cannot be kept (a shape that does not plan, `shapes`),
    /// so that it is not planned again to find out.
    pub fn refuse(&self, key: &PlanKey) {
        self.remember(key, true);
    }

    /// Whether `key` was met before and not refused; records it (as refused if `refuse`).
    fn remember(&self, key: &PlanKey, refuse: bool) -> bool {
        if !self.enabled() {
            return false;
        }
        let limit = self.capacity.saturating_mul(SEEN_PER_ENTRY);
        self.lock().seen.met_before(key, refuse, limit)
    }

    pub fn put(&self, key: PlanKey, plan: KeptPlan) {
        if !self.enabled() {
            return;
        }
        let mut lru = self.lock();
        if lru.plans.len() >= self.capacity && !lru.plans.contains_key(&key) {
            // A scan of at most `capacity` entries, once per plan made: far less than
            // planning the statement did.
            let oldest = lru
                .plans
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                lru.plans.remove(&oldest);
            }
        }
        lru.clock += 1;
        let now = lru.clock;
        lru.plans.insert(key, (Arc::new(plan), now));
    }

    pub fn len(&self) -> usize {
        self.lock().plans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every plan kept.
    #[cfg(test)]
    pub(crate) fn all(&self) -> Vec<Arc<KeptPlan>> {
        self.lock().plans.values().map(|(k, _)| k.clone()).collect()
    }
}

/// What a kept plan depends on besides its statement: every table's name and columns, its
/// size class (`EagerAggregate` chooses by row counts; a power of two is close enough for
/// that choice and stays put while a fleet's tables grow and shrink a little), every
/// view's SQL, and the node's settings that shape plans.
pub fn catalog_fingerprint<'a>(
    tables: impl Iterator<Item = (&'a str, &'a SchemaRef, usize)>,
    views: impl Iterator<Item = (&'a str, &'a str)>,
    settings: &[usize],
) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    for (name, schema, rows) in tables {
        (name, schema.as_ref(), usize::BITS - rows.leading_zeros()).hash(&mut h);
    }
    for view in views {
        view.hash(&mut h);
    }
    settings.hash(&mut h);
    h.finish()
}

/// A view's plan: the one kept for it on this catalog, bound to this snapshot's tables
/// (and the views registered before it), or else planned from its SQL and, when plans are
/// kept and nothing in it changes from call to call (`now()` is folded into a constant by
/// the optimizer, and must be read when the view is computed), optimized and kept.
pub(super) async fn view_plan(
    ctx: &SessionContext,
    view: &ViewDef,
    plans: &PlanCache,
    catalog: u64,
    sources: &HashMap<String, Arc<dyn TableSource>>,
) -> Result<ViewPlan, QueryError> {
    let key = plans
        .enabled()
        .then(|| PlanKey::view(&view.name, &view.sql, catalog));
    if let Some(kept) = key.as_ref().and_then(|k| plans.get(k)) {
        if let Some(plan) = bind(&kept.optimized, sources) {
            return Ok(ViewPlan {
                plan,
                optimized: true,
                depends_on: kept.scanned.iter().cloned().collect(),
                kept: Some(KeptView {
                    plan: kept.clone(),
                    sources: sources.clone(),
                }),
            });
        }
    }
    let plan = plan_read_only(ctx, &view.sql, &ParseLimits::default()).await?;
    let scanned = scanned_tables(&plan);
    // Not kept: optimized when first computed, as a generation in which it is not used
    // need not optimize it at all.
    if key.is_none() || !super::answers::immutable(&plan) {
        return Ok(ViewPlan {
            plan,
            optimized: false,
            depends_on: scanned.into_iter().collect(),
            kept: None,
        });
    }
    let optimized = ctx.state().optimize(&plan)?;
    if let Some(key) = key.filter(|k| plans.met_before(k)) {
        let schema = Arc::new(optimized.schema().as_arrow().clone());
        let kept = KeptPlan::of(
            &view.sql,
            &optimized,
            (schema, None),
            &scanned,
            (false, Vec::new()),
            sources,
        );
        if let Some(kept) = kept {
            plans.put(key, kept);
        }
    }
    Ok(ViewPlan {
        plan: optimized,
        optimized: true,
        depends_on: scanned.into_iter().collect(),
        kept: None,
    })
}

/// Whether every table scan of `plan` (subqueries included) reads the very provider
/// registered under its unqualified name in `sources`.
fn scans_only(plan: &LogicalPlan, sources: &HashMap<String, Arc<dyn TableSource>>) -> bool {
    let mut own = true;
    let _ = plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node {
            let registered = match scan.table_name.schema() {
                Some(_) => None,
                None => registered(sources, scan),
            };
            own = registered
                .and_then(provider_of)
                .is_some_and(|p| provider_of(&scan.source) == Some(p));
        }
        Ok(if own {
            TreeNodeRecursion::Continue
        } else {
            TreeNodeRecursion::Stop
        })
    });
    own
}

/// Bytes of the literals in `plan` (subqueries included).
fn literal_bytes(plan: &LogicalPlan) -> usize {
    let mut bytes = 0;
    let _ = plan.apply_with_subqueries(|node| {
        node.apply_expressions(|e| {
            e.apply(|e| {
                if let Expr::Literal(v, _) = e {
                    bytes += v.size();
                }
                Ok(TreeNodeRecursion::Continue)
            })
        })
    });
    bytes
}

/// `plan` with every table scan on a schema-only source, so that keeping it keeps no data.
pub fn unbind(plan: LogicalPlan) -> Option<LogicalPlan> {
    rescan(plan, |scan| {
        Some(Arc::new(LogicalTableSource::new(scan.source.schema())) as Arc<dyn TableSource>)
    })
}

/// `plan` with every table scan on the source of that name in `sources` (a table's keyed
/// copy, `machine_keys`, by its own name); None if a scan
/// names a table not there, or one whose columns differ.
pub fn bind(
    plan: &LogicalPlan,
    sources: &HashMap<String, Arc<dyn TableSource>>,
) -> Option<LogicalPlan> {
    rescan(plan.clone(), |scan| {
        // Only unqualified names are bound: a qualified one may name another catalog.
        if scan.table_name.schema().is_some() {
            return None;
        }
        let source = registered(sources, scan)?;
        (source.schema() == scan.source.schema()).then(|| source.clone())
    })
}

/// Replaces the source of every table scan (subqueries included) by `with`'s; None if it
/// gives none for one.
fn rescan(
    plan: LogicalPlan,
    mut with: impl FnMut(&TableScan) -> Option<Arc<dyn TableSource>>,
) -> Option<LogicalPlan> {
    let mut complete = true;
    let rebuilt = plan
        .transform_up_with_subqueries(|node| match node {
            LogicalPlan::TableScan(scan) => match with(&scan) {
                Some(source) => Ok(Transformed::yes(LogicalPlan::TableScan(TableScan {
                    source,
                    ..scan
                }))),
                None => {
                    complete = false;
                    Ok(Transformed::no(LogicalPlan::TableScan(scan)))
                }
            },
            other => Ok(Transformed::no(other)),
        })
        .ok()?
        .data;
    complete.then_some(rebuilt)
}

#[cfg(test)]
pub(in crate::sql) mod tests {
    use super::*;
    use crate::generation::{Generation, GenerationBuilder, Part};
    use crate::sql::engine::tests::batch;
    use crate::sql::engine::{BuildOptions, QueryLimits, QueryOutput, Snapshot, TableCopies};
    use crate::sql::views::ViewsFile;
    use crate::sql::DEFAULT_MAX_RESULT_BYTES;
    use crate::static_tables::StaticCatalog;
    use datafusion::arrow::array::Int64Array;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use std::sync::atomic::AtomicU64;
    use std::time::SystemTime;

    fn key(sql: &str) -> PlanKey {
        PlanKey {
            sql: sql.into(),
            catalog: 1,
            parallel: true,
            shape: false,
        }
    }

    fn kept() -> KeptPlan {
        KeptPlan {
            optimized: LogicalPlan::EmptyRelation(datafusion::logical_expr::EmptyRelation {
                produce_one_row: true,
                schema: Arc::new(datafusion::common::DFSchema::empty()),
            }),
            schema: Arc::new(Schema::empty()),
            shown: None,
            scanned: BTreeSet::new(),
            single_partition: true,
            parameters: Vec::new(),
            physical: Slot::default(),
        }
    }

    #[test]
    fn the_least_recently_used_plan_goes_first() {
        let cache = PlanCache::new(2);
        cache.put(key("a"), kept());
        cache.put(key("b"), kept());
        assert!(cache.get(&key("a")).is_some());
        cache.put(key("c"), kept());
        assert!(cache.get(&key("b")).is_none(), "b was used least recently");
        assert!(cache.get(&key("a")).is_some() && cache.get(&key("c")).is_some());
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn a_key_is_met_before_from_its_second_time_and_the_memory_is_bounded() {
        let cache = PlanCache::new(1);
        assert!(!cache.met_before(&key("a")));
        assert!(cache.met_before(&key("a")));
        for i in 0..SEEN_PER_ENTRY {
            cache.met_before(&key(&format!("other {i}")));
        }
        assert!(
            !cache.met_before(&key("a")),
            "forgotten when the memory filled"
        );
        assert!(cache.lock().seen.len() <= SEEN_PER_ENTRY);
    }

    #[test]
    fn a_refused_key_is_not_met_before_again() {
        let cache = PlanCache::new(4);
        cache.refuse(&key("shape"));
        assert!(!cache.met_before(&key("shape")), "refused when first met");
        assert!(!cache.met_before(&key("shape")));
        assert!(!cache.met_before(&key("other")));
        assert!(cache.met_before(&key("other")));
        cache.refuse(&key("other"));
        assert!(!cache.met_before(&key("other")), "refused after it was met");
    }

    #[test]
    fn a_cache_of_no_entries_keeps_nothing() {
        let cache = PlanCache::new(0);
        cache.put(key("a"), kept());
        assert!(cache.get(&key("a")).is_none() && cache.is_empty());
    }

    #[test]
    fn the_fingerprint_follows_columns_size_class_and_views() {
        let schema = |t: DataType| Arc::new(Schema::new(vec![Field::new("x", t, true)]));
        let (int, text) = (schema(DataType::Int64), schema(DataType::Utf8));
        let print = |s: &SchemaRef, rows: usize, view: &str| {
            catalog_fingerprint(
                [("sys", s, rows)].into_iter(),
                [("v", view)].into_iter(),
                &[1],
            )
        };
        let base = print(&int, 70_000, "SELECT 1");
        assert_eq!(base, print(&int, 69_000, "SELECT 1"), "same power of two");
        assert_ne!(base, print(&int, 140_000, "SELECT 1"));
        assert_ne!(base, print(&text, 70_000, "SELECT 1"));
        assert_ne!(base, print(&int, 70_000, "SELECT 2"));
    }

    /// A generation of one table `t` (`batch(rows)`), with the view `v` (its even `n`), `x`
    /// (`n` made nullable: a recursive query's work table named `x` has its columns) and
    /// `late`, keeping plans in `plans`; its tables are copied on first scan, so the snapshot's
    /// providers hold the generation itself.
    pub(in crate::sql) async fn snapshot_of(
        rows: i64,
        plans: &Arc<PlanCache>,
    ) -> (Snapshot, std::sync::Weak<Generation>) {
        let mut builder = GenerationBuilder::default();
        let part = Part::new("m1".into(), batch(rows), vec![]);
        builder.add("t", part).expect("part");
        let generation = builder.seal(rows as u64, 1, SystemTime::now());
        let weak = Arc::downgrade(&generation);
        let view = |name: &str, sql: &str| ViewDef {
            name: name.into(),
            sql: sql.into(),
            description: String::new(),
        };
        let views = ViewsFile {
            view: vec![
                view("v", "SELECT n FROM t WHERE n % 2 = 0"),
                // Its values (100 and up) end a recursive term bound to it at once.
                view("x", "SELECT NULLIF(n, -1) + 100 AS n FROM t"),
                // now() is read when the view is computed: neither optimized at build nor kept.
                view(
                    "late",
                    "SELECT n FROM t WHERE now() > TIMESTAMP '2000-01-01'",
                ),
            ],
        };
        let options = BuildOptions {
            copies: TableCopies::OnFirstScan,
            plans: plans.clone(),
            ..BuildOptions::default()
        };
        let snap = Snapshot::build_with(
            generation,
            Arc::new(StaticCatalog::default()),
            &views,
            2,
            DEFAULT_MAX_RESULT_BYTES,
            Arc::new(AtomicU64::new(0)),
            options,
        )
        .await;
        (snap, weak)
    }

    /// (count, sum) of the answer's one row.
    pub(in crate::sql) fn two_numbers(out: &QueryOutput) -> (i64, i64) {
        let col = |i: usize| {
            out.batches[0]
                .column(i)
                .as_any()
                .downcast_ref::<Int64Array>()
                .map(|a| a.value(0))
                .expect("an Int64 column")
        };
        (col(0), col(1))
    }

    #[tokio::test]
    async fn a_plan_kept_from_one_generation_answers_from_the_next() {
        let plans = Arc::new(PlanCache::new(16));
        let limits = QueryLimits::default();
        let sql = "SELECT COUNT(*) AS c, SUM(n) AS s FROM t WHERE n IN (SELECT n FROM v)";
        // Views and statements are kept the second time they are met.
        let (met_once, _) = snapshot_of(10, &plans).await;
        assert!(plans.is_empty());
        drop(met_once);
        let (first, first_generation) = snapshot_of(10, &plans).await;
        assert_eq!(
            plans.len(),
            2,
            "the views v's and x's plans are kept, late's is not"
        );
        for _ in 0..2 {
            let out = first.query(sql, &limits).await.expect("answer");
            assert!(!out.phases.plan_reused);
            assert_eq!(two_numbers(&out), (5, 20));
        }
        let again = first.query(sql, &limits).await.expect("answer");
        assert!(again.phases.plan_reused && again.cacheable);
        assert_eq!(two_numbers(&again), (5, 20));
        // The kept plan holds none of the first generation's data.
        drop((again, first));
        assert!(
            first_generation.upgrade().is_none(),
            "the plan cache keeps a generation alive"
        );

        // The next generation, same columns and size class: the kept plan, its data.
        let (next, _) = snapshot_of(12, &plans).await;
        assert_eq!(
            plans.len(),
            3,
            "the views' kept plans served the next snapshot"
        );
        let out = next.query(sql, &limits).await.expect("answer");
        assert!(out.phases.plan_reused);
        assert_eq!(two_numbers(&out), (6, 30));
        assert_eq!(
            out.tables
                .iter()
                .map(|t| t.name.as_str())
                .collect::<Vec<_>>(),
            ["t", "v"]
        );
        // A larger table (another size class) is planned afresh.
        let (larger, _) = snapshot_of(100, &plans).await;
        let out = larger.query(sql, &limits).await.expect("answer");
        assert!(!out.phases.plan_reused);
        assert_eq!(two_numbers(&out), (50, 2450));
        assert_eq!(plans.len(), 3, "a catalog met once keeps nothing");
        let late = "SELECT COUNT(*) AS c, SUM(n) AS s FROM late";
        assert_eq!(
            two_numbers(&larger.query(late, &limits).await.expect("answer")),
            (100, 4950)
        );
        // Not kept: a plan with now() (the optimizer makes it a constant), and one that
        // scans information_schema.
        for sql in [
            "SELECT COUNT(*) AS c, CAST(date_part('second', now()) AS BIGINT) AS s FROM t",
            "SELECT COUNT(*) AS c, COUNT(*) AS s FROM information_schema.tables",
        ] {
            for _ in 0..2 {
                next.query(sql, &limits).await.expect("answer");
            }
            let out = next.query(sql, &limits).await.expect("answer");
            assert!(!out.phases.plan_reused, "{sql}");
        }
        // Off: nothing kept.
        let off = Arc::new(PlanCache::new(0));
        let (snap, _) = snapshot_of(10, &off).await;
        for _ in 0..2 {
            snap.query(sql, &limits).await.expect("answer");
        }
        assert!(
            !snap
                .query(sql, &limits)
                .await
                .expect("answer")
                .phases
                .plan_reused
        );
    }

    #[tokio::test]
    async fn a_work_table_or_a_large_literal_is_never_kept() {
        let plans = Arc::new(PlanCache::new(16));
        let limits = QueryLimits::default();
        let (snap, _) = snapshot_of(10, &plans).await;
        // The work table `x` has the view x's name and columns; bound to the view, the
        // recursive term would read it.
        let recursive = "WITH RECURSIVE x AS (SELECT 1 AS n UNION ALL \
                         SELECT n + 1 FROM x WHERE n < 3) SELECT COUNT(*) AS c, SUM(n) AS s FROM x";
        // The optimizer folds repeat() into a literal of 100,000 bytes.
        let large = "SELECT COUNT(*) AS c, \
                     SUM(length(concat(CAST(n AS VARCHAR), repeat('y', 100000)))) AS s FROM t";
        for (sql, answer) in [(recursive, (3, 6)), (large, (10, 1_000_010))] {
            for _ in 0..3 {
                let out = snap.query(sql, &limits).await.expect("answer");
                assert!(!out.phases.plan_reused, "{sql}");
                assert_eq!(two_numbers(&out), answer, "{sql}");
            }
        }
    }
}
