//! The handle through which the HTTP layer reads a node: the snapshot served now, queries
//! (run on the compute pool with the node's time limit), and metrics.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;

use super::config::NodeConfig;
use crate::error::QueryError;
use crate::metrics::Metrics;
use crate::sql::{QueryLimits, QueryOutput, Snapshot, SqlPool};

#[derive(Clone)]
pub struct NodeHandle {
    current: Arc<ArcSwapOption<Snapshot>>,
    pub metrics: Arc<Metrics>,
    pub pool: SqlPool,
    pub config: Arc<NodeConfig>,
}

/// A query's answer with the snapshot it was computed on.
pub struct Answer {
    pub snapshot: Arc<Snapshot>,
    pub output: QueryOutput,
    pub elapsed: Duration,
}

impl NodeHandle {
    pub(crate) fn new(
        current: Arc<ArcSwapOption<Snapshot>>,
        metrics: Arc<Metrics>,
        pool: SqlPool,
        config: Arc<NodeConfig>,
    ) -> Self {
        NodeHandle {
            current,
            metrics,
            pool,
            config,
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
        let snapshot = self.snapshot().ok_or(QueryError::NoGeneration)?;
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
}
