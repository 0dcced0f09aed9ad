//! The handle through which the HTTP layer reads a node: the snapshot served now, queries
//! (run on the compute pool with the node's time limit), the hierarchy's state, metrics.
//!
//! On a SQL node a query first names the published tables it reads (directly or through
//! views): they are requested below (kept for the ttl), and if the served generation lacks
//! one, the query waits for the first generation that holds them all, up to
//! `[requests] wait`.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::Addr;
use arc_swap::ArcSwapOption;
use tokio::sync::watch;

use super::config::NodeConfig;
use crate::aggregator_sets::Routing;
use crate::error::QueryError;
use crate::metrics::Metrics;
use crate::sql::{referenced_tables, QueryLimits, QueryOutput, Snapshot, SqlPool};
use crate::table::SchemaRegistry;
use crate::tier::messages::UseTables;
use crate::tier::parent_links::ParentSessions;
use crate::tier::tla_selection::SharedSelection;
use crate::tier::{Children, RequestBook};

#[derive(Clone)]
pub struct NodeHandle {
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
    /// Partition redirects, on a node of a partitioned aggregator set.
    routing: Option<Routing>,
    /// A SQL node's choice of TLA.
    pub selection: Option<SharedSelection>,
}

pub(super) struct Parts {
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
    pub routing: Option<Routing>,
    pub selection: Option<SharedSelection>,
}

/// A query's answer with the snapshot it was computed on.
pub struct Answer {
    pub snapshot: Arc<Snapshot>,
    pub output: QueryOutput,
    pub elapsed: Duration,
}

impl NodeHandle {
    pub(super) fn new(p: Parts) -> Self {
        NodeHandle {
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
        }
    }

    /// The snapshot served now (None until the first generation is sealed).
    pub fn snapshot(&self) -> Option<Arc<Snapshot>> {
        self.current.load_full()
    }

    /// Runs `sql` on the current snapshot. The snapshot is taken once, so the whole query
    /// reads one generation even if the node switches meanwhile.
    pub async fn query(&self, sql: String) -> Result<Answer, QueryError> {
        let started = Instant::now();
        let result = self.query_inner(sql, started).await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) => e.code(),
        };
        self.metrics.record_query(outcome, started.elapsed());
        result
    }

    async fn query_inner(&self, sql: String, started: Instant) -> Result<Answer, QueryError> {
        let snapshot = if self.config.role.answers_sql() {
            self.with_tables_of(&sql).await?
        } else {
            self.snapshot().ok_or(QueryError::NoGeneration)?
        };
        let limits = QueryLimits {
            max_rows: self.config.http.max_result_rows,
        };
        let timeout = self.config.http.query_timeout;
        let snap = snapshot.clone();
        let output = self
            .pool
            .run(async move {
                tokio::time::timeout(timeout, snap.query(&sql, &limits))
                    .await
                    .map_err(|_| QueryError::Timeout(timeout))?
            })
            .await??;
        Ok(Answer {
            snapshot,
            output,
            elapsed: started.elapsed(),
        })
    }

    /// Requests the published tables `sql` reads and returns a snapshot that holds them
    /// all, waiting for one if needed.
    async fn with_tables_of(&self, sql: &str) -> Result<Arc<Snapshot>, QueryError> {
        let snapshot = self.snapshot();
        let views = snapshot.as_ref().map(|s| s.view_sql()).unwrap_or_default();
        let needed: BTreeSet<String> = referenced_tables(sql, &views)
            .into_iter()
            .filter(|t| self.schemas.get(t).is_some())
            .collect();
        if let Some(routing) = &self.routing {
            // Another partition's tables are not fetched here: the client goes there.
            routing.check(&needed)?;
        }
        if needed.is_empty() {
            return snapshot.ok_or(QueryError::NoGeneration);
        }
        self.book.do_send(UseTables(needed.clone()));
        let wait = self.config.requests.wait;
        let deadline = Instant::now() + wait;
        let mut installed = self.installed.clone();
        loop {
            let missing: Vec<String> = match self.snapshot() {
                Some(s) => {
                    let missing: Vec<String> = needed
                        .iter()
                        .filter(|t| !s.generation.tables.contains_key(*t))
                        .cloned()
                        .collect();
                    if missing.is_empty() {
                        return Ok(s);
                    }
                    missing
                }
                None => needed.iter().cloned().collect(),
            };
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(QueryError::TablesNotReady {
                    missing,
                    waited: wait,
                });
            }
            installed.borrow_and_update();
            // Woken by each new snapshot; the timeout ends the wait at the deadline.
            let _ = tokio::time::timeout(left, installed.changed()).await;
        }
    }
}
