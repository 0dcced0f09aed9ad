//! Memory a query may take: a limit per query inside a limit for all queries of the node,
//! through DataFusion's memory pool. Operators that buffer (sorts, hash joins, aggregates)
//! reserve what they hold; when a reservation fails, those that can spill to disk do, the
//! others fail the query with a message naming the limit. What the pool cannot see (a
//! scalar function's output) is bounded by the answer-size cap and the guarded functions
//! (`sql::guarded`).

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use datafusion::common::{resources_datafusion_err, Result as DfResult};
use datafusion::execution::memory_pool::{
    GreedyMemoryPool, MemoryConsumer, MemoryLimit, MemoryPool, MemoryReservation,
};

/// The node's memory budget for queries; cheap to clone.
#[derive(Debug, Clone)]
pub struct MemoryBudget {
    node: Arc<GreedyMemoryPool>,
    node_bytes: usize,
    per_query: usize,
}

impl MemoryBudget {
    pub fn new(node_bytes: usize, per_query: usize) -> Self {
        MemoryBudget {
            node: Arc::new(GreedyMemoryPool::new(node_bytes)),
            node_bytes,
            per_query: per_query.min(node_bytes),
        }
    }

    /// A pool for one query: its own limit, drawing on the node's.
    pub fn for_query(&self) -> Arc<dyn MemoryPool> {
        Arc::new(QueryPool {
            node: self.node.clone(),
            node_bytes: self.node_bytes,
            limit: self.per_query,
            used: AtomicUsize::new(0),
        })
    }

    /// Bytes reserved by all running queries now.
    pub fn reserved(&self) -> usize {
        self.node.reserved()
    }
}

impl Default for MemoryBudget {
    fn default() -> Self {
        MemoryBudget::new(4 << 30, 1 << 30)
    }
}

#[derive(Debug)]
struct QueryPool {
    node: Arc<GreedyMemoryPool>,
    node_bytes: usize,
    limit: usize,
    used: AtomicUsize,
}

impl fmt::Display for QueryPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "query pool ({} of {} bytes)",
            self.reserved(),
            self.limit
        )
    }
}

fn mib(bytes: usize) -> String {
    if bytes < 1 << 20 {
        format!("{} KiB", bytes >> 10)
    } else {
        format!("{:.0} MiB", bytes as f64 / (1 << 20) as f64)
    }
}

impl MemoryPool for QueryPool {
    fn name(&self) -> &str {
        "query"
    }

    fn register(&self, consumer: &MemoryConsumer) {
        self.node.register(consumer)
    }

    fn unregister(&self, consumer: &MemoryConsumer) {
        self.node.unregister(consumer)
    }

    fn grow(&self, reservation: &MemoryReservation, additional: usize) {
        self.used.fetch_add(additional, Ordering::Relaxed);
        self.node.grow(reservation, additional);
    }

    fn shrink(&self, reservation: &MemoryReservation, shrink: usize) {
        self.used.fetch_sub(shrink, Ordering::Relaxed);
        self.node.shrink(reservation, shrink);
    }

    fn try_grow(&self, reservation: &MemoryReservation, additional: usize) -> DfResult<()> {
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                let new = used.saturating_add(additional);
                (new <= self.limit).then_some(new)
            })
            .map_err(|_| {
                resources_datafusion_err!(
                    "the query exceeded its memory limit of {} ([sql] query_memory_limit_mb) in {}",
                    mib(self.limit),
                    reservation.consumer().name()
                )
            })?;
        if self.node.try_grow(reservation, additional).is_err() {
            self.used.fetch_sub(additional, Ordering::Relaxed);
            return Err(resources_datafusion_err!(
                "the node's queries together reached their memory limit of {} \
                 ([sql] node_query_memory_mb); retry shortly",
                mib(self.node_bytes)
            ));
        }
        Ok(())
    }

    fn reserved(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn memory_limit(&self) -> MemoryLimit {
        MemoryLimit::Finite(self.limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_is_held_to_its_limit_and_all_to_the_node_limit() {
        let budget = MemoryBudget::new(250, 200);
        let a = budget.for_query();
        let b = budget.for_query();
        let ra = MemoryConsumer::new("a").register(&a);
        let rb = MemoryConsumer::new("b").register(&b);
        ra.try_grow(150).expect("within the query limit");
        let e = ra.try_grow(100).expect_err("past the query limit");
        assert!(e.to_string().contains("query_memory_limit_mb"), "{e}");
        rb.try_grow(150).expect_err("past the node limit");
        rb.try_grow(100).expect("within both");
        assert_eq!(budget.reserved(), 250);
        drop(ra);
        assert_eq!(budget.reserved(), 100);
    }

    /// A query under a small limit: a sort spills to disk and answers; a hash join, which
    /// cannot spill, fails with the limit named.
    #[tokio::test]
    async fn operators_spill_or_fail_within_the_query_limit() {
        use datafusion::execution::runtime_env::RuntimeEnvBuilder;
        use datafusion::prelude::{SessionConfig, SessionContext};
        let budget = MemoryBudget::new(1 << 30, 16 << 20);
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_pool(budget.for_query())
            .build_arc()
            .expect("runtime");
        let config = SessionConfig::new().with_target_partitions(1);
        let ctx = SessionContext::new_with_config_rt(config, runtime);
        let rows = "SELECT value AS v, value * 7 % 1000 AS k FROM generate_series(1, 2000000)";
        let sorted = ctx
            .sql(&format!("SELECT v FROM ({rows}) ORDER BY k, v DESC"))
            .await
            .expect("plans")
            .collect()
            .await
            .expect("the sort spills instead of failing");
        assert_eq!(
            sorted.iter().map(|b| b.num_rows()).sum::<usize>(),
            2_000_000
        );
        let joined = ctx
            .sql(&format!(
                "SELECT COUNT(*) FROM ({rows}) a JOIN ({rows}) b ON a.v = b.v"
            ))
            .await
            .expect("plans")
            .collect()
            .await;
        let e = joined.expect_err("the join's build side is over the limit");
        assert!(e.to_string().contains("query_memory_limit_mb"), "{e}");
        assert_eq!(budget.reserved(), 0, "everything given back");
    }
}
