//! The handle through which the HTTP layer reads a node: the snapshot served now, queries,
//! the hierarchy's state, metrics.
//!
//! A query's way: quarantine check, the front door (parse and check, on the query pool:
//! its threads have the stacks for it), the tables it needs, then execution on the query
//! pool, all in one place from admission control (given back while the query waits for
//! tables). The deadline is kept here, on the caller's runtime, not in the pool: a
//! CPU-bound plan cannot delay its own timeout, and dropping the pool's task cancels it
//! at its next yield (plans are time-sliced, so within milliseconds). Limits hit count
//! towards the query's quarantine.
//!
//! On a SQL node a query first names the published tables it reads (directly or through
//! views): they are requested below (kept for the ttl), and if the served generation lacks
//! one, the query waits for the first generation that holds them all, up to
//! `[requests] wait`.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::dev::ToEnvelope;
use actix::{Actor, Addr, Handler};

use super::messages::GenerationInstalled;
use arc_swap::ArcSwapOption;
use tokio::sync::watch;

use super::admission::{Admission, AdmissionLimits, Admitted, Class};
use super::config::NodeConfig;
use super::quarantine::{normalise, Quarantine};
use crate::aggregator_sets::Routing;
use crate::alerts::AlertsShared;
use crate::auth::{Auth, Principal};
use crate::error::ConfigError;
use crate::error::QueryError;
use crate::history::HistoryShared;
use crate::metrics::Metrics;
use crate::sql::{
    parse_checked, referenced_tables_of, AnswerCache, AnswerKey, MemoryBudget, QueryLimits,
    QueryOutput, Snapshot, SqlPool,
};
use crate::table::SchemaRegistry;
use crate::tier::messages::UseTables;
use crate::tier::parent_links::ParentSessions;
use crate::tier::tla_selection::SharedSelection;
use crate::tier::{Children, RequestBook};
use datafusion::sql::parser::Statement as DfStatement;

/// What queries share: their pool, admission, limits and quarantine.
#[derive(Clone)]
pub struct Queries {
    pub pool: SqlPool,
    /// Where clients of heavy queries run: threads of their own at a lower priority
    /// (`heavy_query_nice`), so the kernel gives the cores to light queries first.
    pub heavy_pool: SqlPool,
    pub admission: Arc<Admission>,
    pub quarantine: Arc<Quarantine>,
    pub limits: QueryLimits,
    /// Answers kept for the snapshot served (`[sql] answer_cache_mb`).
    pub answers: Arc<AnswerCache>,
}

impl Queries {
    /// Where a query of a client of this class runs.
    fn pool_for(&self, class: Class) -> &SqlPool {
        match class {
            Class::Light => &self.pool,
            Class::New | Class::Heavy => &self.heavy_pool,
        }
    }

    pub fn new(config: &NodeConfig) -> Result<Self, ConfigError> {
        let sql = &config.sql;
        let start = |name: &str, nice: i32| {
            SqlPool::niced(sql.query_threads, name, nice).map_err(|e| ConfigError::Invalid {
                what: "[sql] query_threads".into(),
                message: format!("cannot start the query pool: {e}"),
            })
        };
        let pool = start("query-sql", 0)?;
        let heavy_pool = start("query-heavy", sql.heavy_query_nice)?;
        let max_concurrent = match sql.max_concurrent_queries {
            0 => 2 * pool.threads(),
            n => n,
        };
        let running_per_client = match sql.max_running_per_client {
            0 => (max_concurrent / 2).max(1),
            n => n,
        };
        Ok(Queries {
            admission: Admission::new(AdmissionLimits {
                max_concurrent,
                max_queued: sql.max_queued_queries,
                per_client: sql.max_queries_per_client,
                running_per_client,
                max_heavy: match sql.max_heavy_queries {
                    0 => heavy_pool.threads(),
                    n => n,
                },
                heavy_after: sql.heavy_query_after,
                queue_timeout: sql.queue_timeout,
                cores: pool.threads(),
            }),
            quarantine: Quarantine::new(sql.quarantine.clone()),
            limits: QueryLimits {
                max_rows: config.http.max_result_rows,
                max_result_bytes: config.http.max_result_bytes,
                parse: sql.parse_limits(),
                memory: MemoryBudget::new(
                    sql.node_query_memory_bytes(),
                    sql.query_memory_limit_mb << 20,
                ),
                parallel: true,
            },
            answers: Arc::new(AnswerCache::new(sql.answer_cache_mb << 20)),
            pool,
            heavy_pool,
        })
    }
}

#[derive(Clone)]
pub struct NodeHandle {
    pub queries: Queries,
    current: Arc<ArcSwapOption<Snapshot>>,
    installed: watch::Receiver<u64>,
    pub metrics: Arc<Metrics>,
    pub pool: SqlPool,
    pub config: Arc<NodeConfig>,
    schemas: SchemaRegistry,
    book: Addr<RequestBook>,
    /// Tables requested of this node now.
    pub wanted: watch::Receiver<BTreeSet<String>>,
    pub children: Option<Arc<Children>>,
    pub parents: Arc<ParentSessions>,
    /// How this node names itself (`role@address`).
    pub name: String,
    /// Partition redirects, on a node of a partitioned aggregator set (swapped when the
    /// sets file is edited).
    routing: Arc<ArcSwapOption<Routing>>,
    /// A SQL node's choice of TLA.
    pub selection: Option<SharedSelection>,
    /// Who may use the HTTP API.
    pub auth: Arc<Auth>,
    /// The alerts this node evaluates (`[alerts]`).
    pub alerts: Option<Arc<AlertsShared>>,
    /// The history and reports this node keeps (`[history]`).
    pub history: Option<Arc<HistoryShared>>,
    /// The node's supervised parts (`query_actors`, the test-only fault hook).
    pub supervisor: super::supervisor::Supervisor,
    /// What the sourced tables of the last generation asked about expect (computed once
    /// per generation, not per answer).
    pub(super) sourced_expectation:
        Arc<std::sync::Mutex<Option<super::completeness::SourcedExpectation>>>,
}

pub(super) struct Parts {
    pub queries: Queries,
    pub current: Arc<ArcSwapOption<Snapshot>>,
    pub installed: watch::Receiver<u64>,
    pub metrics: Arc<Metrics>,
    pub pool: SqlPool,
    pub config: Arc<NodeConfig>,
    pub schemas: SchemaRegistry,
    pub book: Addr<RequestBook>,
    pub wanted: watch::Receiver<BTreeSet<String>>,
    pub children: Option<Arc<Children>>,
    pub parents: Arc<ParentSessions>,
    pub name: String,
    pub routing: Arc<ArcSwapOption<Routing>>,
    pub selection: Option<SharedSelection>,
    pub auth: Arc<Auth>,
    pub alerts: Option<Arc<AlertsShared>>,
    pub history: Option<Arc<HistoryShared>>,
    pub supervisor: super::supervisor::Supervisor,
}

/// A query's answer with the snapshot it was computed on.
pub struct Answer {
    pub snapshot: Arc<Snapshot>,
    pub output: QueryOutput,
    pub elapsed: Duration,
    /// The query's place among the running ones, held until the answer has been sent (a
    /// client that does not read its answer keeps its place, not a free one).
    pub place: Admitted,
    /// The pool the query ran on: the answer is encoded there too, off the HTTP workers.
    pub pool: SqlPool,
    /// How long the query waited for a place to run.
    pub queued: Duration,
}

impl NodeHandle {
    pub(super) fn new(p: Parts) -> Self {
        NodeHandle {
            queries: p.queries,
            current: p.current,
            installed: p.installed,
            metrics: p.metrics,
            pool: p.pool,
            config: p.config,
            schemas: p.schemas,
            book: p.book,
            wanted: p.wanted,
            children: p.children,
            parents: p.parents,
            name: p.name,
            routing: p.routing,
            selection: p.selection,
            auth: p.auth,
            alerts: p.alerts,
            history: p.history,
            supervisor: p.supervisor,
            sourced_expectation: Default::default(),
        }
    }

    /// The schemas of the published tables.
    pub fn schemas(&self) -> &SchemaRegistry {
        &self.schemas
    }

    /// Keeps `tables` requested from below (for their ttl), as a query using them would.
    pub fn keep_requested(&self, tables: BTreeSet<String>) {
        if !tables.is_empty() {
            self.book.do_send(UseTables(tables));
        }
    }

    /// The snapshot served now (None until the first generation is sealed).
    pub fn snapshot(&self) -> Option<Arc<Snapshot>> {
        self.current.load_full()
    }

    /// Runs `sql` for `who` on the current snapshot, if `who` may read every table it
    /// reads. The snapshot is taken once, so the whole query reads one generation even if
    /// the node switches meanwhile.
    pub async fn query(&self, sql: String, who: &Principal) -> Result<Answer, QueryError> {
        self.query_pinned(sql, who, None).await
    }

    /// Runs `sql` for `who` on `snapshot` (an alert evaluates the generation it was due
    /// on, not whichever is served when its turn comes). Its tables are requested below
    /// like any query's; a table the snapshot lacks is `TablesNotReady` at once, not
    /// waited for.
    pub async fn query_on(
        &self,
        sql: String,
        who: &Principal,
        snapshot: Arc<Snapshot>,
    ) -> Result<Answer, QueryError> {
        self.query_pinned(sql, who, Some(snapshot)).await
    }

    /// Sends [`GenerationInstalled`] to `actor` now (a generation may be served already)
    /// and after every new snapshot, for as long as both live.
    pub fn follow_generations<A>(&self, actor: Addr<A>)
    where
        A: Actor + Handler<GenerationInstalled>,
        A::Context: ToEnvelope<A, GenerationInstalled>,
    {
        let mut installed = self.installed();
        let me = actor.clone();
        actix::spawn(async move {
            while installed.changed().await.is_ok() {
                me.do_send(GenerationInstalled);
            }
        });
        actor.do_send(GenerationInstalled);
    }

    /// Every new snapshot's generation id, as it is installed.
    pub fn installed(&self) -> watch::Receiver<u64> {
        self.installed.clone()
    }

    async fn query_pinned(
        &self,
        sql: String,
        who: &Principal,
        pinned: Option<Arc<Snapshot>>,
    ) -> Result<Answer, QueryError> {
        let client = who.name.as_str();
        let started = Instant::now();
        let key = normalise(&sql);
        let result = match self.queries.quarantine.check(&key) {
            Ok(()) => self.query_inner(sql.clone(), who, started, pinned).await,
            Err(e) => Err(e),
        };
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) => e.code(),
        };
        if let Err(e) = &result {
            if let Some(limit) = e.limit_hit() {
                if self.queries.quarantine.strike(&key, &sql, client, limit) {
                    self.metrics
                        .queries_quarantined
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        self.metrics.record_query(outcome, started.elapsed());
        result
    }

    async fn query_inner(
        &self,
        sql: String,
        who: &Principal,
        started: Instant,
        pinned: Option<Arc<Snapshot>>,
    ) -> Result<Answer, QueryError> {
        let client = who.name.as_str();
        let q = &self.queries;
        let limits = q.limits.clone();
        let parse = limits.parse;
        // One deadline for the query's work, kept here on the caller's runtime (a wait for
        // tables from below has its own, `[requests] wait`, and restarts it).
        let timeout = self.config.http.query_timeout;
        let mut deadline = tokio::time::Instant::now() + timeout;
        let late = |_| QueryError::Timeout(timeout);
        // One place for parsing and running; a query that must wait for its tables to
        // arrive from below gives it back meanwhile. The place moves into each task it
        // admits, so it is given back when the work stops (an aborted task stops at its
        // next yield), not when the client is answered.
        let mut queued = Duration::ZERO;
        let place = self.place(client, false, deadline, &mut queued).await?;
        let parsed = q
            .pool
            .run(async move { parse_checked(&sql, &parse).map(|statement| (statement, place)) });
        let (statement, place) = tokio::time::timeout_at(deadline, parsed)
            .await
            .map_err(late)???;
        // What it reads, views followed: the token's tables are checked before anything is
        // requested below or planned.
        let reads = referenced_tables_of(&statement, &self.view_sql());
        who.check_tables(&reads)?;
        let (snapshot, place) = if let Some(snapshot) = pinned {
            let needed = self.request_tables(reads)?;
            let missing: Vec<String> = needed
                .into_iter()
                .filter(|t| !snapshot.generation.tables.contains_key(t))
                .collect();
            if !missing.is_empty() {
                return Err(QueryError::TablesNotReady {
                    missing,
                    waited: Duration::ZERO,
                });
            }
            (snapshot, place)
        } else {
            // Every role requests what a query reads, an edge agent from its own publishers
            // too (with an empty prewarm it would otherwise never collect the table).
            let needed = self.request_tables(reads)?;
            match self.snapshot_holding(&needed) {
                Some(snapshot) => (snapshot, place),
                None if needed.is_empty() => return Err(QueryError::NoGeneration),
                None => {
                    drop(place);
                    let snapshot = self.wait_for_tables(needed).await?;
                    deadline = tokio::time::Instant::now() + timeout;
                    let place = self.place(client, false, deadline, &mut queued).await?;
                    (snapshot, place)
                }
            }
        };
        // Known light clients run on the light pool, others on the heavy one. A query of a
        // client not known as heavy (a new one, or one whose queries changed) runs for
        // `heavy_query_after` at most in its place; past that it is stopped and starts
        // again in a heavy place, so it neither keeps a light or new client's place nor
        // shares the light pool's threads for long.
        // The same statement answered on this snapshot already: the same answer.
        let key = q
            .answers
            .enabled()
            .then(|| AnswerKey::new(&statement, &limits));
        if let Some(output) = key.as_ref().and_then(|k| q.answers.get(&snapshot, k)) {
            self.metrics
                .answer_cache_hits
                .fetch_add(1, Ordering::Relaxed);
            return Ok(Answer {
                snapshot,
                output,
                elapsed: started.elapsed(),
                pool: q.pool_for(place.class()).clone(),
                place,
                queued,
            });
        }
        let pool = q.pool_for(place.class());
        let share = place.share();
        let until = match place.class() {
            Class::Heavy => deadline,
            // `heavy_query_after` of its share of the cores, as its cost counts.
            _ => deadline.min(
                tokio::time::Instant::now()
                    + self
                        .config
                        .sql
                        .heavy_query_after
                        .mul_f64(q.admission.slowdown()),
            ),
        };
        // Other queries running keep the cores busy: this one runs on one partition.
        let mut limits = limits;
        limits.parallel = q.admission.running() <= 1;
        let (output, place) = match run_on(pool, &snapshot, &statement, &limits, place, until).await
        {
            Ok(done) => done?,
            Err(_) if until < deadline => {
                // The client is heavy now (for a while, so that a client whose heavy
                // queries are refused does not fade back to light at once): the new place
                // is a heavy one. Its stopped run's place records its real time as the task
                // stops, maybe only later, and the heavy run its own.
                q.admission.mark_heavy(client);
                // The stopped run holds its place until its task stops (a long operator
                // step may delay that); its class's share is free for others now.
                share.give_back();
                self.metrics
                    .queries_moved_to_heavy
                    .fetch_add(1, Ordering::Relaxed);
                let place = self.place(client, true, deadline, &mut queued).await?;
                let pool = q.pool_for(place.class());
                run_on(pool, &snapshot, &statement, &limits, place, deadline)
                    .await
                    .map_err(late)??
            }
            Err(e) => return Err(late(e)),
        };
        if output.phases.plan_reused {
            self.metrics.plans_reused.fetch_add(1, Ordering::Relaxed);
        }
        if output.phases.physical_reused {
            self.metrics
                .physical_plans_reused
                .fetch_add(1, Ordering::Relaxed);
        }
        self.metrics
            .aggregates_read
            .fetch_add(output.phases.aggregates_read as u64, Ordering::Relaxed);
        if let Some(key) = key {
            q.answers.put(&snapshot, key, &output);
        }
        // The answer is encoded where the query ran.
        let pool = q.pool_for(place.class()).clone();
        Ok(Answer {
            snapshot,
            output,
            elapsed: started.elapsed(),
            place,
            pool,
            queued,
        })
    }

    /// A place for `client`'s query (`moving` to the heavy pool, see
    /// `Admission::admit_moving`), waited for until `deadline` at most (then 503 `busy`:
    /// the query never ran, so it is no strike towards its quarantine); the wait is added
    /// to `queued`.
    async fn place(
        &self,
        client: &str,
        moving: bool,
        deadline: tokio::time::Instant,
        queued: &mut Duration,
    ) -> Result<Admitted, QueryError> {
        let since = Instant::now();
        let admission = &self.queries.admission;
        let admit = async {
            if moving {
                admission.admit_moving(client).await
            } else {
                admission.admit(client).await
            }
        };
        let place = tokio::time::timeout_at(deadline, admit).await;
        *queued += since.elapsed();
        place.map_err(|_| {
            self.queries.admission.count_busy();
            QueryError::Busy(format!(
                "no place to run in {:?} ([http] query_timeout; [sql] max_concurrent_queries)",
                self.config.http.query_timeout
            ))
        })?
    }

    fn view_sql(&self) -> std::collections::BTreeMap<String, String> {
        self.snapshot().map(|s| s.view_sql()).unwrap_or_default()
    }

    /// The published ones of `tables` (what a query reads, views followed), requested
    /// below so that they are collected (and kept for the ttl).
    fn request_tables(&self, tables: BTreeSet<String>) -> Result<BTreeSet<String>, QueryError> {
        let needed: BTreeSet<String> = tables
            .into_iter()
            .filter(|t| self.schemas.get(t).is_some())
            .collect();
        if let Some(routing) = self.routing.load().as_deref() {
            // Another partition's tables are not fetched here: the client goes there.
            routing.check(&needed)?;
        }
        if !needed.is_empty() {
            self.book.do_send(UseTables(needed.clone()));
        }
        Ok(needed)
    }

    /// The snapshot served now if it holds every one of `needed`.
    fn snapshot_holding(&self, needed: &BTreeSet<String>) -> Option<Arc<Snapshot>> {
        self.snapshot()
            .filter(|s| needed.iter().all(|t| s.generation.tables.contains_key(t)))
    }

    /// Waits, up to `[requests] wait`, for a snapshot that holds every one of `needed`.
    async fn wait_for_tables(&self, needed: BTreeSet<String>) -> Result<Arc<Snapshot>, QueryError> {
        let wait = self.config.requests.wait;
        let deadline = Instant::now() + wait;
        let mut installed = self.installed.clone();
        loop {
            installed.borrow_and_update();
            if let Some(s) = self.snapshot_holding(&needed) {
                return Ok(s);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let missing = match self.snapshot() {
                    Some(s) => needed
                        .iter()
                        .filter(|t| !s.generation.tables.contains_key(*t))
                        .cloned()
                        .collect(),
                    None => needed.into_iter().collect(),
                };
                return Err(QueryError::TablesNotReady {
                    missing,
                    waited: wait,
                });
            }
            // Woken by each new snapshot; the timeout ends the wait at the deadline.
            let _ = tokio::time::timeout(left, installed.changed()).await;
        }
    }
}

/// Runs `statement` on `snapshot` in `pool`, holding `place`, until `until`: on expiry the
/// task is aborted (its plan is time-sliced, so it stops within a slice) and the place is
/// given back as it stops.
async fn run_on(
    pool: &SqlPool,
    snapshot: &Arc<Snapshot>,
    statement: &DfStatement,
    limits: &QueryLimits,
    place: Admitted,
    until: tokio::time::Instant,
) -> Result<Result<(QueryOutput, Admitted), QueryError>, tokio::time::error::Elapsed> {
    let (snap, statement, limits) = (snapshot.clone(), statement.clone(), limits.clone());
    let run = pool.run(async move {
        let output = snap.query_statement(statement, &limits).await;
        output.map(|o| (o, place))
    });
    tokio::time::timeout_at(until, run)
        .await
        .map(|r| r.and_then(|r| r))
}
