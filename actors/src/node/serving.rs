//! The snapshot keeper: owns what the node serves (the latest generation, static tables,
//! views) and swaps in a new snapshot whenever one of them changes. Snapshots are built on
//! the compute pool; the swap is atomic, and queries holding the old snapshot finish on it.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use actix::prelude::*;
use arc_swap::ArcSwapOption;
use datafusion::catalog::{SchemaProvider, TableProvider};

use super::messages::{InstallGeneration, InstallStatics, InstallViews};
use crate::generation::Generation;
use crate::metrics::Metrics;
use crate::sql::{describe, BuildOptions, PlanCache, Snapshot, SqlPool, TableCopies, ViewsFile};
use crate::static_tables::StaticCatalog;
use crate::table::SchemaRegistry;

pub struct SnapshotKeeper {
    current: Arc<ArcSwapOption<Snapshot>>,
    pool: SqlPool,
    metrics: Arc<Metrics>,
    generation: Option<Arc<Generation>>,
    statics: Arc<StaticCatalog>,
    views: Arc<ViewsFile>,
    views_error: Option<String>,
    /// Builds may finish out of order; only a newer one replaces what is served.
    build_seq: u64,
    installed_seq: u64,
    /// The generation id served now, for queries waiting on a table to arrive.
    installed: tokio::sync::watch::Sender<u64>,
    /// The largest output of one guarded function call (`[http] max_result_bytes`).
    max_value_bytes: usize,
    /// Tables about this node, computed when read, added to every snapshot.
    node_tables: Vec<(&'static str, Arc<dyn TableProvider>)>,
    /// Schemas about this node (`history`, `report`), added to every snapshot.
    node_schemas: Vec<(&'static str, Arc<dyn SchemaProvider>)>,
    /// Published tables' definitions, for their descriptions (`query_columns`).
    schemas: SchemaRegistry,
    /// When snapshots coalesce published tables (a SQL node at build, others on use), and
    /// the plans every snapshot shares (`[sql] plan_cache_entries`), and the bytes of
    /// aggregates' results each keeps (`[sql] aggregate_cache_mb`).
    options: BuildOptions,
}

impl SnapshotKeeper {
    pub fn new(
        current: Arc<ArcSwapOption<Snapshot>>,
        pool: SqlPool,
        metrics: Arc<Metrics>,
        installed: tokio::sync::watch::Sender<u64>,
        max_value_bytes: usize,
        node_tables: Vec<(&'static str, Arc<dyn TableProvider>)>,
        node_schemas: Vec<(&'static str, Arc<dyn SchemaProvider>)>,
    ) -> Self {
        SnapshotKeeper {
            schemas: SchemaRegistry::default(),
            options: BuildOptions::default(),
            node_schemas,
            installed,
            max_value_bytes,
            node_tables,
            current,
            pool,
            metrics,
            generation: None,
            statics: Arc::new(StaticCatalog::default()),
            views: Arc::new(ViewsFile::default()),
            views_error: None,
            build_seq: 0,
            installed_seq: 0,
        }
    }

    /// The published tables' definitions whose descriptions `query_columns` serves.
    pub fn with_schemas(mut self, schemas: SchemaRegistry) -> Self {
        self.schemas = schemas;
        self
    }

    /// The plan cache every snapshot shares (`[sql] plan_cache_entries`).
    pub fn with_plans(mut self, plans: Arc<PlanCache>) -> Self {
        self.options.plans = plans;
        self
    }

    /// Bytes of aggregates' results each snapshot keeps (`[sql] aggregate_cache_mb`).
    pub fn with_aggregate_cache(mut self, bytes: usize) -> Self {
        self.options.aggregate_cache_bytes = bytes;
        self
    }

    /// Coalesce published tables on their first scan, not when a snapshot is built: for
    /// nodes that seldom answer queries (one copy of the generation held, not two).
    pub fn with_lazy_tables(mut self, lazy: bool) -> Self {
        self.options.copies = match lazy {
            true => TableCopies::OnFirstScan,
            false => TableCopies::Eager,
        };
        self
    }

    fn rebuild(&mut self, ctx: &mut Context<Self>) {
        let Some(generation) = self.generation.clone() else {
            return;
        };
        self.build_seq += 1;
        let seq = self.build_seq;
        let statics = self.statics.clone();
        let views = self.views.clone();
        let views_error = self.views_error.clone();
        let total = self.metrics.view_computations_total.clone();
        let partitions = self.pool.threads();
        let max_value_bytes = self.max_value_bytes;
        let node_tables = self.node_tables.clone();
        let node_schemas = self.node_schemas.clone();
        let schemas = self.schemas.clone();
        let mut options = self.options.clone();
        // The new copies share what is unchanged with the ones served now.
        options.before = self.current.load_full();
        let work = self.pool.spawn(async move {
            let started = std::time::Instant::now();
            let mut snap = Snapshot::build_with(
                generation,
                statics,
                &views,
                partitions,
                max_value_bytes,
                total,
                options,
            )
            .await;
            snap.views_file_error = views_error;
            for (name, table) in node_tables {
                snap.add_node_table(name, table);
            }
            for (name, schema) in node_schemas {
                snap.add_node_schema(name, schema);
            }
            describe::install(&mut snap, &schemas, &views).await;
            tracing::debug!(id = snap.generation.id, took = ?started.elapsed(), "snapshot built");
            snap
        });
        ctx.spawn(actix::fut::wrap_future::<_, Self>(work).map(move |res, act, _| match res {
            Ok(snap) if seq > act.installed_seq => {
                act.installed_seq = seq;
                act.metrics.snapshots_built.fetch_add(1, Ordering::Relaxed);
                let bytes = snap.copy_bytes();
                act.metrics.snapshot_copied_bytes.store(bytes.copied as u64, Ordering::Relaxed);
                act.metrics.snapshot_shared_bytes.store(bytes.shared as u64, Ordering::Relaxed);
                let id = snap.generation.id;
                let generation = snap.generation.clone();
                let old = act.current.swap(Some(Arc::new(snap)));
                act.installed.send_replace(id);
                // Once the snapshot serves, not beside its build (at a SQL node's cold start
                // that took one of the two cores its copies are made on): the generation's
                // Arrow size for /metrics, and what C code (zstd) freed in glibc's arenas
                // back to the system (Rust's allocations go through mimalloc).
                // Once per generation: a rebuild for new statics or views keeps the size.
                let same = old.as_ref().is_some_and(|o| Arc::ptr_eq(&o.generation, &generation));
                if !same {
                    let metrics = act.metrics.clone();
                    drop(act.pool.spawn(async move {
                        let bytes = generation.arrow_bytes() as u64;
                        metrics.generation_arrow_bytes.store(bytes, Ordering::Relaxed);
                        crate::heap::trim();
                    }));
                }
                // The snapshot replaced (at 70,000 machines, that many parts per table) is
                // freed on the pool, not on this mailbox's thread; a query still reading
                // it keeps it until it ends.
                if let Some(old) = old {
                    drop(act.pool.spawn(async move { drop(old) }));
                }
            }
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "building a snapshot failed; the previous one stays"),
        }));
    }
}

impl Actor for SnapshotKeeper {
    type Context = Context<Self>;
}

/// Restarted in place: what it serves stays installed; a build lost with the panic is
/// made again.
impl Supervised for SnapshotKeeper {
    fn restarting(&mut self, ctx: &mut Context<Self>) {
        if self.installed_seq < self.build_seq {
            self.rebuild(ctx);
        }
    }
}

impl Handler<InstallGeneration> for SnapshotKeeper {
    type Result = ();
    fn handle(&mut self, msg: InstallGeneration, ctx: &mut Context<Self>) {
        self.generation = Some(msg.0);
        self.rebuild(ctx);
    }
}

impl Handler<InstallStatics> for SnapshotKeeper {
    type Result = ();
    fn handle(&mut self, msg: InstallStatics, ctx: &mut Context<Self>) {
        self.statics = msg.0;
        self.rebuild(ctx);
    }
}

impl Handler<InstallViews> for SnapshotKeeper {
    type Result = ();
    fn handle(&mut self, msg: InstallViews, ctx: &mut Context<Self>) {
        match msg.0 {
            Ok(views) => {
                self.views = views;
                self.views_error = None;
            }
            Err(e) => self.views_error = Some(e),
        }
        self.rebuild(ctx);
    }
}
